"""What a trace is conditioned on: the scenario, workload knobs measured from the traffic, and link parameters.

Knobs are measured from a trace, not read from the testbench that produced it (``phantom`` does not import
``tb``), so any trace, of any capture tool, has them: the TX/RX frame ratio, the mean frame size, the fraction of
small frames (<= 128 B) and the offered load (frames per microsecond of trace time). A condition becomes a fixed
vector for the models (``ConditionSpace.vector``); a scenario the model was not trained on is the "unknown"
slot, which training also shows (scenario dropout), so knobs and link parameters alone still condition.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from phantom.memmap import MemoryMap, RegionKind
from phantom.trace import SemClass, TraceColumns

MPS_VALUES = (128, 256, 512, 1024, 2048, 4096)
MRRS_VALUES = (128, 256, 512, 1024, 2048, 4096)
RCB_VALUES = (64, 128)
TAG_WIDTHS = (5, 8, 10)
# the NIC's own limits (rtl/: MPS up to 512); the header allows more, the device does not
NIC_MPS_VALUES = (128, 256, 512)


@dataclass(frozen=True)
class Link:
    """Link parameters a trace obeys (and a generated trace is asked to obey)."""

    mps: int = 256          # Max_Payload_Size, bytes
    mrrs: int = 512         # Max_Read_Request_Size, bytes
    rcb: int = 64           # Read Completion Boundary, bytes
    tag_width: int = 8      # tag bits (5, 8 or 10)

    def __post_init__(self) -> None:
        if self.mps not in NIC_MPS_VALUES:
            raise ValueError(f"link parameter mps must be one of {list(NIC_MPS_VALUES)} (the NIC's range), got {self.mps!r}")
        if self.mrrs not in MRRS_VALUES:
            raise ValueError(f"link parameter mrrs must be one of {list(MRRS_VALUES)}, got {self.mrrs!r}")
        if self.rcb not in RCB_VALUES:
            raise ValueError(f"link parameter rcb must be one of {list(RCB_VALUES)}, got {self.rcb!r}")
        if self.tag_width not in TAG_WIDTHS:
            raise ValueError(f"link parameter tag_width must be one of {list(TAG_WIDTHS)}, got {self.tag_width!r}")


@dataclass(frozen=True)
class Knobs:
    """Workload knobs, as measured from a trace's completion records and time span."""

    tx_fraction: float = 0.5        # TX frames / all frames
    frame_bytes: float = 700.0      # mean frame length, bytes
    small_fraction: float = 0.5     # fraction of frames of at most 128 bytes
    load: float = 5.0               # frames per microsecond of trace time

    def __post_init__(self) -> None:
        for name, lo, hi in (("tx_fraction", 0.0, 1.0), ("frame_bytes", 1.0, 16384.0), ("small_fraction", 0.0, 1.0),
                             ("load", 0.0, 1e4)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"workload knob {name} must be a number in [{lo:g}, {hi:g}], got {v!r}")


@dataclass(frozen=True)
class Condition:
    scenario: str = ""              # "" or a name the model knows nothing about: the unknown slot
    knobs: Knobs = field(default_factory=Knobs)
    link: Link = field(default_factory=Link)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "knobs": asdict(self.knobs), "link": asdict(self.link)}

    @classmethod
    def from_json(cls, d: Any) -> "Condition":
        if not isinstance(d, dict):
            raise ValueError(f"condition: expected an object, got {d!r}")
        return cls(str(d.get("scenario", "")), Knobs(**d.get("knobs", {})), Link(**d.get("link", {})))

    def with_link(self, **kw: Any) -> "Condition":
        return replace(self, link=replace(self.link, **{k: v for k, v in kw.items() if v is not None}))

    def with_knobs(self, **kw: Any) -> "Condition":
        return replace(self, knobs=replace(self.knobs, **{k: v for k, v in kw.items() if v is not None}))


def measure(tc: TraceColumns) -> Condition:
    """The condition of a trace: its scenario name, link parameters from the header, knobs from its records."""
    h = tc.header
    link = Link(mps=min(h.mps, 512), mrrs=h.mrrs, rcb=h.rcb, tag_width=h.tag_width)
    lens = {"tx": [], "rx": []}
    if h.memory_map:
        mm = MemoryMap.from_json(h.memory_map)
        rings = {q: mm.of_kind(k) for q, k in (("tx", RegionKind.TX_CPL_RING), ("rx", RegionKind.RX_CPL_RING))}
        sel = np.flatnonzero(tc["cls"] == SemClass.CPL_WRITE)
        addr = tc["address"]
        o0 = int(tc.payload_off[0]) if len(tc.payload_off) else 0
        for i in sel.tolist():
            a = int(addr[i])
            q = next((q for q, rs in rings.items() if rs and rs[0].base <= a < rs[0].end), None)
            if q is None or not tc.payload_present[i]:
                continue
            p = tc.payload_data[int(tc.payload_off[i]) - o0:int(tc.payload_off[i + 1]) - o0].tobytes()
            if len(p) >= 8:
                lens[q].append(struct.unpack_from("<I", p, 4)[0])
    n_tx, n_rx = len(lens["tx"]), len(lens["rx"])
    frames = lens["tx"] + lens["rx"]
    t = tc["t_ps"]
    span_us = (int(t.max()) - int(t.min())) / 1e6 if len(t) > 1 else 0.0
    if not frames:
        knobs = Knobs()
    else:
        arr = np.asarray(frames, dtype=np.float64)
        knobs = Knobs(tx_fraction=n_tx / (n_tx + n_rx), frame_bytes=float(min(max(arr.mean(), 1.0), 16384.0)),
                      small_fraction=float((arr <= 128).mean()),
                      load=float(min(len(frames) / span_us, 1e4)) if span_us > 0 else 0.0)
    return Condition(h.scenario, knobs, link)


@dataclass(frozen=True)
class ConditionSpace:
    """Turns conditions into the models' fixed-size vectors; the scenario vocabulary is the training set's."""

    scenarios: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.scenarios) + 1 + 4 + 4

    def index(self, scenario: str) -> int:
        """Position of the scenario's one-hot slot (the last slot: unknown)."""
        try:
            return self.scenarios.index(scenario)
        except ValueError:
            return len(self.scenarios)

    def check_scenario(self, scenario: str) -> None:
        if scenario not in self.scenarios:
            raise ValueError(f"unknown scenario: {scenario!r} (the model knows: {', '.join(self.scenarios)}; "
                             f"give workload knobs and link parameters without --scenario for others)")

    def vector(self, c: Condition, drop_scenario: bool = False) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        v[len(self.scenarios) if drop_scenario else self.index(c.scenario)] = 1.0
        o = len(self.scenarios) + 1
        L, K = c.link, c.knobs
        v[o:o + 4] = (math.log2(L.mps) - 8.0, (math.log2(L.mrrs) - 9.0) / 2.0, 1.0 if L.rcb == 128 else 0.0,
                      (L.tag_width - 8) / 3.0)
        v[o + 4:o + 8] = (K.tx_fraction * 2 - 1, math.log(max(K.frame_bytes, 1.0) / 700.0), K.small_fraction * 2 - 1,
                          math.log1p(K.load) - 1.5)
        return v

    def to_json(self) -> dict[str, Any]:
        return {"scenarios": list(self.scenarios)}

    @classmethod
    def from_json(cls, d: Any) -> "ConditionSpace":
        return cls(tuple(d.get("scenarios", ())))


@dataclass(frozen=True)
class HostSetup:
    """How the host of a generated conversation is set up, beyond what the model learned (the regression's
    stimulus, ``tb/stimulus.py``): the root-complex model the replay builds (``header.host["model"]``, e.g. a
    host profile's ``to_json()``), register values the driver programs at initialisation (names of the device's
    register map: ``REG_IRQ_COAL_COUNT``, ``REG_DMA_CREDITS``, ...), and how many bytes past the start of each
    buffer slot the host puts a packet buffer (a multiple of 4 below 4096: buffers that straddle a 4 KB page or
    sit at odd DWORD alignments, which captures never have since the driver page-aligns every slot).
    ``ring_entries``: descriptor rings smaller than the captures' (queue "tx"/"rx" -> entries, a power of two from
    2 up to the learned ring's size): the ring, its completion ring and its buffers keep their bases and per-entry
    sizes and shrink to that many entries (``memory_map``), so the producer index wraps sooner and, below the
    device's 16-entry descriptor cache, the ring's end bounds a fetch."""

    model: dict[str, Any] | None = None
    registers: dict[str, int] = field(default_factory=dict)
    buffer_offset: int = 0
    ring_entries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, dict):
            raise ValueError(f"host model must be a dict (a host profile's to_json()), got {type(self.model).__name__}")
        for k, v in self.registers.items():
            if not isinstance(k, str) or not k.startswith("REG_"):
                raise ValueError(f"host register {k!r}: expected a register name of the device map (REG_...)")
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 32:
                raise ValueError(f"host register {k}: value must be a 32-bit unsigned integer, got {v!r}")
        if not isinstance(self.buffer_offset, int) or not 0 <= self.buffer_offset < 4096 or self.buffer_offset % 4:
            raise ValueError(f"buffer_offset must be a multiple of 4 in [0, 4096), got {self.buffer_offset!r}")
        for q, n in self.ring_entries.items():
            if q not in _RING_KINDS:
                raise ValueError(f"ring_entries: unknown queue {q!r} (expected 'tx' or 'rx')")
            if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n & (n - 1):
                raise ValueError(f"ring_entries {q}: expected a power of two >= 2, got {n!r}")

    def memory_map(self, regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A header's memory map with the rings of ``ring_entries`` shrunk (bases and per-entry sizes kept)."""
        mm = MemoryMap.from_json(regions)
        size: dict[str, int] = {}
        for q, n in self.ring_entries.items():
            ring_kind = _RING_KINDS[q][0]
            rings = mm.of_kind(ring_kind)
            if not rings:
                raise ValueError(f"ring_entries {q}: the memory map has no {ring_kind.value} region")
            have = rings[0].size // 16
            if n > have:
                raise ValueError(f"ring_entries {q}: {n} entries is more than the learned ring's {have}")
            for kind in _RING_KINDS[q]:
                for g in mm.of_kind(kind):
                    size[kind.value] = g.size // have * n
        return [dict(g, size=size[g["kind"]]) if g["kind"] in size else dict(g) for g in regions]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "registers": dict(self.registers), "buffer_offset": self.buffer_offset,
                "ring_entries": dict(self.ring_entries)}


# a queue's regions that scale with its entries: the descriptor ring, the completion ring, the packet buffers
_RING_KINDS = {"tx": (RegionKind.TX_RING, RegionKind.TX_CPL_RING, RegionKind.TX_DATA),
               "rx": (RegionKind.RX_RING, RegionKind.RX_CPL_RING, RegionKind.RX_DATA)}
