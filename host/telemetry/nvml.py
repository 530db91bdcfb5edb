"""NVML source (nvidia-ml-py): GPU utilisation, memory used and PCIe TX/RX throughput, per device.

The NVML module is passed in (``nvml=``) so tests can put a fake exactly at the NVML boundary; by default it is
``pynvml`` from nvidia-ml-py. ``make check-gpu`` (sim_scripts/check_gpu.py) exercises the real path.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from host.telemetry import DeviceSample, Sample, TelemetryError, TelemetrySource

log = logging.getLogger(__name__)

# usable bytes/s per lane after line encoding (PCIe Base Spec: 2.5/5 GT/s 8b/10b, 8/16/32/64 GT/s 128b/130b)
LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}


class NvmlSource(TelemetrySource):
    name = "nvml"

    def __init__(self, devices: list[int] | None = None, nvml: Any = None, clock=time.monotonic):
        self.nvml = nvml if nvml is not None else _import_pynvml()
        self.clock = clock
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as e:
            raise TelemetryError(f"nvml: NVML unusable (nvmlInit failed: {e})") from None
        self._open = True
        try:
            count = self.nvml.nvmlDeviceGetCount()
            idx = list(range(count)) if devices is None else list(devices)
            for i in idx:
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
                    raise TelemetryError(f"nvml: device index {i!r} out of range (this host has {count} GPUs)")
            if not idx:
                raise TelemetryError("nvml: no GPU devices found")
            self.handles = [(i, self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in idx]
        except self.nvml.NVMLError as e:
            self.close()
            raise TelemetryError(f"nvml: cannot open devices: {e}") from None
        except TelemetryError:
            self.close()
            raise
        self._last = self.clock()

    def read(self) -> Sample:
        if not self._open:
            raise TelemetryError("nvml: source is closed")
        n = self.nvml
        now = self.clock()
        out = []
        for i, h in self.handles:
            try:
                util = n.nvmlDeviceGetUtilizationRates(h)
                mem = n.nvmlDeviceGetMemoryInfo(h)
                # NVML reports PCIe throughput in KB/s over a 20 ms sample
                tx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) * 1024.0
                rx = n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES) * 1024.0
            except n.NVMLError as e:
                raise TelemetryError(f"nvml: reading gpu{i} failed: {e}") from None
            cap = self._link_capacity(h)
            out.append(DeviceSample(
                device=f"gpu{i}", gpu_util=min(max(util.gpu / 100.0, 0.0), 1.0), mem_used_bytes=int(mem.used),
                mem_total_bytes=int(mem.total), pcie_tx_bps=tx, pcie_rx_bps=rx,
                pcie_util=min(max(tx, rx) / cap, 1.0) if cap else None))
        interval, self._last = now - self._last, now
        return Sample(self.name, now, interval, tuple(out))

    def _link_capacity(self, h) -> float | None:
        """Bytes/s one direction of the device's current link carries (None: NVML cannot tell)."""
        n = self.nvml
        try:
            gen = n.nvmlDeviceGetCurrPcieLinkGeneration(h)
            width = n.nvmlDeviceGetCurrPcieLinkWidth(h)
        except n.NVMLError:
            return None
        per_lane = LANE_BYTES_PER_S.get(int(gen))
        return per_lane * int(width) if per_lane and width else None

    def describe(self) -> list[dict]:
        """Name, memory and link of each device (for check-gpu and the daemon's start-up log)."""
        n = self.nvml
        rows = []
        for i, h in self.handles:
            name = n.nvmlDeviceGetName(h)
            rows.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "link_bytes_per_s": self._link_capacity(h)})
        return rows

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as e:  # nothing to do but say so
                log.warning("nvmlShutdown failed: %s", e)


def _import_pynvml():
    try:
        return importlib.import_module("pynvml")
    except ImportError as e:
        raise TelemetryError(f"nvml: nvidia-ml-py is not installed ({e})") from None
