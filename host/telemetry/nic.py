"""NIC source: the PCIe link utilisation of the NIC's device model.

Two ways in, one output (``pcie_util``: the busier direction's share of the link, and bytes/s each way):

  * ``NicStatsSource`` - live, from a running co-simulation's statistics registers. A coroutine of the
    testbench awaits ``poll(driver.stats, t_s)`` (host.driver.NicDriver.stats reads the REG_STAT_* counters
    through the PCIe access object) at simulated time ``t_s``; ``read()`` gives the utilisation between the
    last two polls. The counters count frames, bytes and TLPs, not wire bytes, so link bytes are estimated:
    payload plus a fixed per-TLP overhead (header, sequence number, LCRC, framing) and the 16-byte descriptors
    and completion records each frame costs. 32-bit counters wrap; a wrap between polls is taken as one wrap.
  * ``NicTraceSource`` - from a captured trace: the JSON report of ``python -m phantom stats TRACE --json``
    (link utilisation per direction and payload bytes over time). The report is read as a file, not computed
    here: ``host`` may import phantom's trace schema only (ARCHITECTURE.md), and the statistics belong to
    ``phantom.stats``, so phantom computes them once and this source replays its timeline (looping) on the
    daemon's clock, at ``speed`` trace-seconds per second.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Awaitable, Callable

from host.telemetry import DeviceSample, Sample, TelemetryError, TelemetrySource

# usable bytes/s per lane after line encoding (8b/10b for Gen1/2, 128b/130b for Gen3+)
LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9}
TLP_OVERHEAD_3DW = 20   # 12 B header + 2 B sequence + 4 B LCRC + 2 B framing (approximate, Gen3 framing tokens)
TLP_OVERHEAD_4DW = 24   # 16 B header + the same
DESC_BYTES = 16         # a ring descriptor or completion record (rtl/nic_regs.vh CPL_BYTES)
COUNTER_WRAP = 1 << 32


def link_bytes_per_s(gen: int, width: int) -> float:
    if gen not in LANE_BYTES_PER_S:
        raise TelemetryError(f"nic: unknown PCIe generation {gen!r} (known: {sorted(LANE_BYTES_PER_S)})")
    if width not in (1, 2, 4, 8, 16, 32):
        raise TelemetryError(f"nic: link width must be 1, 2, 4, 8, 16 or 32 lanes, got {width!r}")
    return LANE_BYTES_PER_S[gen] * width


def link_bytes(c: dict[str, int]) -> tuple[float, float]:
    """(down, up) estimated link bytes from the NIC's counters (names as NicDriver.stats() gives them)."""
    frames = c["tx_pkts"] + c["rx_pkts"]
    down = (c["tx_bytes"] + DESC_BYTES * frames                   # frame data and descriptors, as completions
            + TLP_OVERHEAD_3DW * c["tlp_cpl_rx"]                    # the completions' overhead
            + (TLP_OVERHEAD_4DW + 4) * c["tlp_req_rx"])             # MMIO requests (doorbells, register reads)
    up = (c["rx_bytes"] + DESC_BYTES * frames + 4 * c["irqs"]       # frame data, completion records, MSI-X
          + TLP_OVERHEAD_4DW * (c["tlp_mem_wr"] + c["tlp_mem_rd"])  # the device's requests
          + (TLP_OVERHEAD_3DW + 4) * c["tlp_cpl_tx"])               # its completions of register reads
    return float(down), float(up)


STAT_KEYS = ("tx_pkts", "rx_pkts", "tx_bytes", "rx_bytes", "tlp_mem_rd", "tlp_mem_wr", "tlp_cpl_tx", "tlp_req_rx",
             "tlp_cpl_rx", "irqs")


class NicStatsSource(TelemetrySource):
    """Live PCIe link utilisation of a running co-simulation. The interface (kept stable for tb/ tests):

    * ``NicStatsSource(link_gen=3, link_width=8)``: the link the utilisation is a fraction of;
    * ``await src.poll(stats, t_s)``: ``stats`` is any coroutine function returning the NIC's statistics
      counters as a dict with at least the ``STAT_KEYS`` (32-bit values; extra keys are kept and ignored),
      which is what ``host.driver.NicDriver.stats`` returns (REG_STAT_* names, lower case, without the prefix);
      ``t_s`` is the simulated time of the read in seconds (e.g. ``cocotb.utils.get_sim_time("ns") * 1e-9``),
      strictly increasing from poll to poll;
    * ``src.record(counters, t_s)``: the same without the await, for counters already read;
    * ``src.read() -> Sample``: one device "nic" with ``pcie_rx_bps`` (downstream, to the device),
      ``pcie_tx_bps`` (upstream) and ``pcie_util`` (the busier direction over the link capacity) between the
      last two polls; TelemetryError before the second poll.
    """

    name = "nic"

    def __init__(self, link_gen: int = 3, link_width: int = 8):
        self.capacity = link_bytes_per_s(link_gen, link_width)
        self._raw: dict[str, int] | None = None                 # the counters as last read (32-bit)
        self._hist: list[tuple[float, dict[str, int]]] = []     # the last two (t, counters unwrapped to 64 bits)

    async def poll(self, stats: Callable[[], Awaitable[dict[str, int]]], t_s: float) -> None:
        """Read the statistics registers now (``t_s``: simulated seconds)."""
        self.record(await stats(), t_s)

    def record(self, raw: dict[str, int], t_s: float) -> None:
        missing = [k for k in STAT_KEYS if k not in raw]
        if missing:
            raise TelemetryError(f"nic: statistics lack {', '.join(missing)}")
        if self._hist and t_s <= self._hist[-1][0]:
            raise TelemetryError(f"nic: poll at t={t_s!r} s is not after the previous one at {self._hist[-1][0]!r} s")
        if self._raw is None:
            acc = dict(raw)
        else:
            last = self._hist[-1][1]
            acc = {k: last[k] + ((raw[k] - self._raw[k]) % COUNTER_WRAP) for k in raw}
        self._raw = dict(raw)
        self._hist = self._hist[-1:] + [(t_s, acc)]

    def read(self) -> Sample:
        hist = self._hist
        if len(hist) < 2:
            raise TelemetryError("nic: needs two polls of the statistics registers before it can tell utilisation")
        (t0, c0), (t1, c1) = hist
        d0, u0 = link_bytes(c0)
        d1, u1 = link_bytes(c1)
        dt = t1 - t0
        rx, tx = (d1 - d0) / dt, (u1 - u0) / dt   # the device receives downstream, sends upstream
        dev = DeviceSample("nic", pcie_tx_bps=tx, pcie_rx_bps=rx, pcie_util=min(max(tx, rx) / self.capacity, 1.0))
        return Sample(self.name, t1, dt, (dev,))


class NicTraceSource(TelemetrySource):
    name = "nic"

    def __init__(self, stats_json: str | Path, speed: float = 1e-6, clock=time.monotonic):
        """speed: trace seconds replayed per second of ``clock`` (default: one trace microsecond a second)."""
        path = Path(stats_json)
        try:
            rep = json.loads(path.read_text())
        except FileNotFoundError:
            raise TelemetryError(f"nic: {path}: no such file (write it with `python -m phantom stats TRACE --json`)") from None
        except json.JSONDecodeError as e:
            raise TelemetryError(f"nic: {path}:{e.lineno}: not JSON ({e.msg})") from None
        if not (isinstance(speed, (int, float)) and speed > 0 and math.isfinite(speed)):
            raise TelemetryError(f"nic: speed must be a positive number, got {speed!r}")
        try:
            util = rep["link_utilization"]
            tl = rep["timeline"]
            bin_s = float(tl["bin_us"]) * 1e-6
            down, up = [float(x) for x in tl["down_bytes"]], [float(x) for x in tl["up_bytes"]]
            hdr = rep["header"]
            cap = link_bytes_per_s(int(hdr["link_speed"]), int(hdr["link_width"]))
            u_down, u_up = float(util["down"]), float(util["up"])
        except (KeyError, TypeError, ValueError) as e:
            raise TelemetryError(f"nic: {path}: not a `phantom stats --json` report (missing or bad {e})") from None
        if not down or len(down) != len(up) or bin_s <= 0:
            raise TelemetryError(f"nic: {path}: the report's timeline is empty")
        self.path, self.speed, self.clock = path, float(speed), clock
        self.bin_s = bin_s
        self.capacity = cap
        # the timeline counts payload bytes; phantom's utilisation includes TLP overhead. Scale each bin so the
        # replayed mean equals phantom's figure, keeping the timeline's shape.
        self.down = self._scaled(down, u_down)
        self.up = self._scaled(up, u_up)
        self.mean_util = max(u_down, u_up)
        self._t0 = clock()
        self._last = self._t0

    def _scaled(self, payload: list[float], util: float) -> list[float]:
        mean = sum(payload) / len(payload)
        if not mean:   # no payload at all (reads, doorbells): the link was busy all the same, evenly as far as we know
            return [util * self.capacity] * len(payload)
        return [util * self.capacity * b / mean for b in payload]   # bytes/s per bin

    def _window(self, a: float, b: float, series: list[float]) -> float:
        """Mean of the looping series over trace time [a, b)."""
        n, w = len(series), self.bin_s
        if b - a >= n * w:
            return sum(series) / n
        total, t = 0.0, a
        while t < b - 1e-15:
            i = int(t // w)
            end = min((i + 1) * w, b)
            total += series[i % n] * (end - t)
            t = end
        return total / (b - a)

    def read(self) -> Sample:
        now = self.clock()
        a, b = (self._last - self._t0) * self.speed, (now - self._t0) * self.speed
        self._last = now
        if b <= a:
            i = int(a // self.bin_s) % len(self.down)
            rx, tx = self.down[i], self.up[i]
        else:
            rx, tx = self._window(a, b, self.down), self._window(a, b, self.up)
        dev = DeviceSample("nic", pcie_tx_bps=tx, pcie_rx_bps=rx, pcie_util=min(max(tx, rx) / self.capacity, 1.0))
        return Sample(self.name, now, (b - a) / self.speed, (dev,))
