"""Simulated-engine source: the engine model's own utilisation, pushed by the engine (the fallback).

The simulated engine (serving's ``sim`` backend, or the model of an upstream replica when nothing measures it)
calls ``record()`` after each iteration with the iteration's busy seconds (the GPU ran a kernel) and its
compute seconds (tensor cores busy, from the cost model). ``read()`` turns what was recorded since the previous
read into utilisation over that interval: ``gpu_util`` the busy share (what NVML's utilization.gpu would say),
``pcie_util`` is not modelled (None). Nothing is imported from serving: the engine pushes, this only sums.
"""

from __future__ import annotations

import threading
import time

from host.telemetry import DeviceSample, Sample, TelemetryError, TelemetrySource


class SimSource(TelemetrySource):
    name = "sim"

    def __init__(self, device: str = "sim0", clock=time.monotonic):
        self.device = device
        self.clock = clock
        self._lock = threading.Lock()      # the engine records from the event loop, reads may come from a thread
        self._last = clock()
        self._busy = 0.0
        self._compute = 0.0
        self._kv: float | None = None
        self._running: int | None = None
        self._waiting: int | None = None
        self.sm_util: float | None = None  # tensor-core share over the last read interval (cost model)

    def record(self, busy_s: float, compute_s: float, kv_usage: float | None = None, running: int | None = None,
               waiting: int | None = None) -> None:
        """One iteration (or several) of the engine model: seconds busy, seconds of tensor-core work."""
        if not (busy_s >= 0 and 0 <= compute_s <= busy_s + 1e-12):
            raise TelemetryError(f"sim: bad iteration record busy {busy_s!r} s, compute {compute_s!r} s")
        with self._lock:
            self._busy += busy_s
            self._compute += compute_s
            if kv_usage is not None:
                self._kv = kv_usage
            if running is not None:
                self._running = running
            if waiting is not None:
                self._waiting = waiting

    def read(self) -> Sample:
        now = self.clock()
        with self._lock:
            interval = now - self._last
            busy, comp = self._busy, self._compute
            self._busy = self._compute = 0.0
            self._last = now
            kv, running, waiting = self._kv, self._running, self._waiting
        # the engine records seconds of its own (possibly time-scaled) clock: clip to the interval
        util = min(busy / interval, 1.0) if interval > 0 else None
        self.sm_util = min(comp / interval, 1.0) if interval > 0 else None
        dev = DeviceSample(self.device, gpu_util=util, kv_usage=None if kv is None else min(max(kv, 0.0), 1.0),
                           running=running, waiting=waiting)
        return Sample(self.name, now, interval, (dev,))
