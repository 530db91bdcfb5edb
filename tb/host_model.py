"""The simulated host: memory latency, link delay, completion shape, driver think time, interrupt latency.

cocotbext-pcie's root complex answers a memory read at once (12-15 ns of link time, no memory time) and its
driver-side calls cost no CPU time, so a capture would show an idealised host. A ``HostModel`` makes the
timing realistic and configurable, and is recorded in the trace header's provenance (``TraceHeader.host``).

Defaults and where they come from:
* DMA read latency: lognormal, median 600 ns, sigma 0.25 (p1 ~ 335 ns, p99 ~ 1.07 us), floor 250 ns.
  pcie-bench (Neugebauer et al., "Understanding PCIe performance for end host networking", SIGCOMM 2018)
  measured DMA read latencies of several hundred nanoseconds up to about a microsecond on server CPUs (higher
  with IOMMU misses or a remote NUMA node); the default sits in the middle of that range.
* Link/port delay: 20 ns per port (PHY + data-link pipeline of each side), on top of serialisation.
* Driver think time (CPU work the driver does between device accesses; a real CPU spends it itself):
  uncached MMIO store ~60 ns, MMIO read stall ~150 ns beyond the link round trip, ~250 ns per TX frame
  (skb handling, DMA mapping, descriptor fill) and ~200 ns per RX frame, ~1.5 us from MSI-X to the handler.
  These are order-of-magnitude figures for a modern Linux host, stated as such: change them per scenario.
* Completions of different reads return out of order (each read waits its own sampled latency); the
  completions of one read keep their address order (PCIe 2.4.1, D5b). ``split_on_all_rcb`` splits every
  completion on RCB boundaries, as some root complexes do.
* 64-bit BAR above 4 GB (MRd64/MWr64 downstream), host DMA memory above 4 GB (MRd64/MWr64 upstream),
  Extended Tag Field Enable and Enable Relaxed Ordering set in Device Control, as Linux does by default.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

import cocotb
from cocotb.triggers import Timer
from cocotbext.pcie.core.tlp import TlpType


@dataclass(frozen=True)
class Lognormal:
    """A duration in nanoseconds: lognormal around ``median_ns`` with shape ``sigma``, never below ``min_ns``."""

    median_ns: float = 0.0
    sigma: float = 0.0
    min_ns: float = 0.0

    def __post_init__(self) -> None:
        for name in ("median_ns", "sigma", "min_ns"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"Lognormal.{name} must be a finite number >= 0, got {v!r}")

    def sample(self, rng: random.Random) -> float:
        if self.median_ns <= 0:
            return self.min_ns
        v = self.median_ns * math.exp(self.sigma * rng.gauss(0.0, 1.0)) if self.sigma else self.median_ns
        return max(v, self.min_ns)

    def quantile(self, q: float) -> float:
        """Analytic quantile (for documentation and tests)."""
        from statistics import NormalDist

        if self.median_ns <= 0:
            return self.min_ns
        return max(self.median_ns * math.exp(self.sigma * NormalDist().inv_cdf(q)), self.min_ns)

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "Lognormal":
        if not isinstance(d, dict):
            raise ValueError(f"expected a {{median_ns, sigma, min_ns}} object, got {d!r}")
        unknown = set(d) - {"median_ns", "sigma", "min_ns"}
        if unknown:
            raise ValueError(f"unknown Lognormal field(s): {sorted(unknown)}")
        return cls(**d)


_THINK = ("mmio_write", "mmio_read", "tx_frame", "rx_frame", "irq")


@dataclass(frozen=True)
class HostModel:
    """Timing and configuration of the simulated host (root complex, memory, CPU running the driver)."""

    name: str = "realistic"
    read_latency: Lognormal = Lognormal(600.0, 0.25, 250.0)   # host memory read, request in to first completion out
    port_delay_ns: float = 20.0             # per link end, on top of serialisation
    split_on_all_rcb: bool = False          # completions split at every RCB (else: largest legal TLPs)
    bar64: bool = True                      # BAR0 is a 64-bit prefetchable BAR placed above 4 GB
    dma_above_4g: bool = True               # host DMA memory above 4 GB (64-bit addressing upstream)
    ext_tags: bool = True                   # Extended Tag Field Enable (256 tags)
    relaxed_ordering: bool = True           # Device Control: Enable Relaxed Ordering
    no_snoop: bool = False                  # Device Control: Enable No Snoop
    mmio_write: Lognormal = Lognormal(60.0, 0.2)   # CPU cost of an uncached posted store
    mmio_read: Lognormal = Lognormal(150.0, 0.2)   # CPU stall of an MMIO read beyond the link round trip
    tx_frame: Lognormal = Lognormal(250.0, 0.3)    # driver work per TX frame before its descriptor is written
    rx_frame: Lognormal = Lognormal(200.0, 0.3)    # driver work per received frame
    irq: Lognormal = Lognormal(1500.0, 0.3)        # MSI-X write to the driver's handler running
    fix_cfg_write_byte_count: bool = True   # cocotbext-pcie answers config writes with byte count 0; PCIe 2.2.9: 4
    cpl_buffer: tuple[int, int] | None = None  # the hard IP's completion buffer (CplH, CplD credits); None: 256/2048
    rc_throttle: int = 0                    # of every 4 user-clock cycles, this many the completion interface pauses
    seed: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"HostModel.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.port_delay_ns, (int, float)) or not 0 <= self.port_delay_ns <= 1e6:
            raise ValueError(f"HostModel.port_delay_ns must be in [0, 1e6], got {self.port_delay_ns!r}")
        for f in dataclasses.fields(self):
            if f.type in ("Lognormal",) and not isinstance(getattr(self, f.name), Lognormal):
                raise ValueError(f"HostModel.{f.name} must be a Lognormal, got {getattr(self, f.name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"HostModel.seed must be an integer, got {self.seed!r}")
        if self.cpl_buffer is not None:
            if (not isinstance(self.cpl_buffer, (tuple, list)) or len(self.cpl_buffer) != 2
                    or not 1 <= self.cpl_buffer[0] <= 256 or not 1 <= self.cpl_buffer[1] <= 2048):
                raise ValueError(f"HostModel.cpl_buffer must be (1..256 CplH, 1..2048 CplD), got {self.cpl_buffer!r}")
            object.__setattr__(self, "cpl_buffer", (int(self.cpl_buffer[0]), int(self.cpl_buffer[1])))
        if self.rc_throttle not in (0, 1, 2, 3):
            raise ValueError(f"HostModel.rc_throttle must be 0..3 (paused cycles of 4), got {self.rc_throttle!r}")

    def replace(self, **kw: Any) -> "HostModel":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_json() if isinstance(v, Lognormal) else v
        return d

    @classmethod
    def from_json(cls, d: Any) -> "HostModel":
        if not isinstance(d, dict):
            raise ValueError(f"host model: expected an object, got {type(d).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"host model: unknown field(s) {sorted(unknown)}")
        kw = {k: (Lognormal.from_json(v) if known[k].type == "Lognormal" else v) for k, v in d.items()}
        return cls(**kw)


HOST_PROFILES: dict[str, HostModel] = {
    "realistic": HostModel(),
    "realistic-rcb": HostModel(name="realistic-rcb", split_on_all_rcb=True),
    "remote-numa": HostModel(name="remote-numa", read_latency=Lognormal(900.0, 0.3, 400.0)),
    # a root complex that withholds completion space: a small buffer, drained slowly, completions split on RCB
    "tight-cpl": HostModel(name="tight-cpl", split_on_all_rcb=True, cpl_buffer=(16, 160), rc_throttle=3),
    # the old testbench: no memory time, no CPU time, 32-bit BAR and DMA memory, 5-bit tags
    "ideal": HostModel(name="ideal", read_latency=Lognormal(), port_delay_ns=5.0, bar64=False, dma_above_4g=False,
                       ext_tags=False, relaxed_ordering=False, mmio_write=Lognormal(), mmio_read=Lognormal(),
                       tx_frame=Lognormal(), rx_frame=Lognormal(), irq=Lognormal()),
}


def get_host_profile(name: str) -> HostModel:
    try:
        return HOST_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown host profile: {name!r} (known: {', '.join(HOST_PROFILES)})") from None


class HostTiming:
    """Draws the model's durations from separate, seeded streams (memory vs CPU), so runs are reproducible."""

    def __init__(self, model: HostModel):
        self.model = model
        self._mem = random.Random(f"{model.seed}:memory")
        self._cpu = random.Random(f"{model.seed}:cpu")
        self.reads_delayed = 0

    def read_latency_ns(self) -> float:
        return self.model.read_latency.sample(self._mem)

    def think_ns(self, what: str) -> float:
        if what not in _THINK:
            raise ValueError(f"unknown think-time kind: {what!r} (known: {', '.join(_THINK)})")
        return getattr(self.model, what).sample(self._cpu)

    async def think(self, what: str) -> None:
        ns = self.think_ns(what)
        if ns > 0:
            await Timer(round(ns * 1000), "ps")


def set_port_delays(model: HostModel, *ports) -> None:
    """Per-port link delay; must be set before the ports are connected (cocotbext folds it in at connect)."""
    for p in ports:
        p.port_delay = model.port_delay_ns * 1e-9


def install_memory_latency(rc, timing: HostTiming) -> None:
    """Each memory read waits its own sampled latency before the root complex reads memory and answers.

    The wait runs in its own coroutine, so the receive path is never blocked and completions of different
    reads leave in the order their latencies expire (out of order, as PCIe allows); the completions of one
    read are still sent together, in address order.
    """
    rc.split_on_all_rcb = timing.model.split_on_all_rcb
    if timing.model.read_latency.median_ns <= 0 and timing.model.read_latency.min_ns <= 0:
        return
    for t in (TlpType.MEM_READ, TlpType.MEM_READ_64):
        orig = rc.rx_tlp_handler[t]

        async def delayed(tlp, _orig=orig):
            await Timer(round(timing.read_latency_ns() * 1000), "ps")
            await _orig(tlp)

        async def handler(tlp, _delayed=delayed):
            timing.reads_delayed += 1
            cocotb.start_soon(_delayed(tlp))

        rc.register_rx_tlp_handler(t, handler)


def fix_config_write_completions(device) -> int:
    """Answer type-0 configuration writes with Byte Count 4 (PCIe 2.2.9), as the hard IP does.

    cocotbext-pcie's ``Function.handle_config_0_write_tlp`` leaves the completion's byte count at 0 (which
    means 4096). The installed package is not edited: each function's handler is wrapped, and during the
    call the function's ``upstream_send`` fixes exactly that completion. Returns the functions wrapped.
    """
    n = 0
    for fn in device.functions:
        orig = fn.rx_tlp_handler.get(TlpType.CFG_WRITE_0)
        if orig is None:
            continue

        async def handler(tlp, _fn=fn, _orig=orig):
            send = _fn.upstream_send

            async def fixed(cpl, _send=send):
                if cpl.fmt_type == TlpType.CPL and cpl.byte_count == 0:
                    cpl.byte_count = 4
                await _send(cpl)

            _fn.upstream_send = fixed
            try:
                await _orig(tlp)
            finally:
                del _fn.upstream_send  # back to the class method

        fn.register_rx_tlp_handler(TlpType.CFG_WRITE_0, handler)
        n += 1
    return n


@dataclass
class HostProvenance:
    """What the trace header records about the host (``TraceHeader.host``)."""

    model: HostModel
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "notes": list(self.notes)}
