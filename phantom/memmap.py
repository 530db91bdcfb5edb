"""The host memory map a trace header carries, and the semantic classes it gives TLPs.

A NIC trace means little without knowing which addresses are descriptor rings, packet buffers, completion
rings, the MSI-X target and the device's doorbells. Capture records that map in the trace header
(``TraceHeader.memory_map``): a list of regions ``{"base", "size", "kind"}``. From it any tool can assign
the semantic class of a TLP (``MemoryMap.classify``) and the queue it belongs to, so classes can be
re-derived for a trace that lacks them (generated traces, other capture tools).

Region kinds (a NIC of descriptor rings, the usual shape):
``tx_ring``/``rx_ring`` descriptor rings the device reads, ``tx_data`` packet buffers the device reads,
``rx_data`` packet buffers the device writes, ``tx_cpl_ring``/``rx_cpl_ring`` completion records the device
writes, ``msix`` the MSI-X message target, ``bar`` a device BAR window (host MMIO), ``tx_doorbell``/
``rx_doorbell`` a BAR register that is a queue's producer index (host writes to it are doorbells),
``tx_qctrl``/``rx_qctrl`` a queue's control register (writing its enable bit 0 resets the queue).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from typing import Any, Iterable

from phantom.trace import Direction, SemClass, TlpType


class RegionKind(str, enum.Enum):
    TX_RING = "tx_ring"
    RX_RING = "rx_ring"
    TX_DATA = "tx_data"
    RX_DATA = "rx_data"
    TX_CPL_RING = "tx_cpl_ring"
    RX_CPL_RING = "rx_cpl_ring"
    MSIX = "msix"
    BAR = "bar"
    TX_DOORBELL = "tx_doorbell"
    RX_DOORBELL = "rx_doorbell"
    TX_QCTRL = "tx_qctrl"
    RX_QCTRL = "rx_qctrl"

    @property
    def is_doorbell(self) -> bool:
        return self in (RegionKind.TX_DOORBELL, RegionKind.RX_DOORBELL)

    @property
    def is_register(self) -> bool:
        """A single BAR register (inside a BAR region, so it may overlap it)."""
        return self in (RegionKind.TX_DOORBELL, RegionKind.RX_DOORBELL, RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)

    @property
    def queue(self) -> str | None:
        """'tx' or 'rx' for per-queue regions."""
        return self.value[:2] if self.value[:3] in ("tx_", "rx_") else None


# what a device request into a region of each kind means
_UP_READ = {RegionKind.TX_RING: SemClass.DESC_READ, RegionKind.RX_RING: SemClass.DESC_READ,
            RegionKind.TX_DATA: SemClass.DATA_READ}
_UP_WRITE = {RegionKind.RX_DATA: SemClass.DATA_WRITE, RegionKind.TX_CPL_RING: SemClass.CPL_WRITE,
             RegionKind.RX_CPL_RING: SemClass.CPL_WRITE, RegionKind.MSIX: SemClass.INTERRUPT}


@dataclass(frozen=True, slots=True)
class Region:
    base: int
    size: int
    kind: RegionKind

    @property
    def end(self) -> int:
        return self.base + self.size

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "size": self.size, "kind": self.kind.value}


def parse_regions(items: Any, where: str = "memory_map") -> list[Region]:
    """Validate a header's memory map: a list of {base, size, kind}; raises ValueError naming the entry."""
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list of regions, got {type(items).__name__}")
    out = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise ValueError(f"{where}[{i}]: expected an object, got {type(d).__name__}")
        unknown = set(d) - {"base", "size", "kind"}
        if unknown:
            raise ValueError(f"{where}[{i}]: unknown field(s) {sorted(unknown)}")
        for k in ("base", "size"):
            v = d.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (k == "size" and v == 0) or v >= 1 << 64:
                raise ValueError(f"{where}[{i}].{k}: expected a {'positive' if k == 'size' else 'non-negative'} "
                                 f"64-bit integer, got {v!r}")
        try:
            kind = RegionKind(d.get("kind"))
        except ValueError:
            raise ValueError(f"{where}[{i}].kind: unknown region kind {d.get('kind')!r} "
                             f"(known: {', '.join(k.value for k in RegionKind)})") from None
        out.append(Region(d["base"], d["size"], kind))
    return out


def coalesce(regions: Iterable[Region]) -> list[Region]:
    """Adjacent regions of one kind merged (a driver's many buffers become one entry per run)."""
    out: list[Region] = []
    for r in sorted(regions, key=lambda r: (r.base, r.size)):
        if out and out[-1].kind == r.kind and out[-1].end == r.base:
            out[-1] = Region(out[-1].base, out[-1].size + r.size, r.kind)
        else:
            out.append(r)
    return out


class MemoryMap:
    """Address lookup over a memory map (regions must not overlap, except doorbells inside a BAR)."""

    def __init__(self, regions: Iterable[Region]):
        self.regions = sorted(regions, key=lambda r: r.base)
        self.doorbells = {r.base: r for r in self.regions if r.kind.is_doorbell}
        self.registers = {r.base: r for r in self.regions if r.kind.is_register}
        plain = [r for r in self.regions if not r.kind.is_register]
        for a, b in zip(plain, plain[1:]):
            if b.base < a.end:
                raise ValueError(f"memory_map: regions {a.to_json()} and {b.to_json()} overlap")
        self._plain = plain
        self._starts = [r.base for r in plain]

    @classmethod
    def from_json(cls, items: Any) -> "MemoryMap":
        return cls(parse_regions(items))

    def __bool__(self) -> bool:
        return bool(self.regions)

    def find(self, addr: int) -> Region | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._plain[i].end:
            return self._plain[i]
        return None

    def of_kind(self, *kinds: RegionKind) -> list[Region]:
        return [r for r in self.regions if r.kind in kinds]

    def classify(self, t: TlpType, direction: Direction, address: int) -> SemClass:
        """The semantic class of a TLP from its type, direction and address."""
        if t.is_config:
            return SemClass.CONFIG
        if t.is_completion:
            return SemClass.COMPLETION
        if direction == Direction.DOWN:
            if t.is_mem_read:
                return SemClass.MMIO_READ
            if t.is_mem_write:
                return SemClass.DOORBELL if (address & ~3) in self.doorbells else SemClass.MMIO_WRITE
            return SemClass.OTHER
        r = self.find(address)
        if r is None:
            return SemClass.OTHER
        if t.is_mem_read:
            return _UP_READ.get(r.kind, SemClass.OTHER)
        if t.is_mem_write:
            return _UP_WRITE.get(r.kind, SemClass.OTHER)
        return SemClass.OTHER

    def queue_of(self, address: int) -> str | None:
        """'tx' or 'rx' for an address in a per-queue region or at a queue's doorbell."""
        d = self.registers.get(address & ~3)
        if d is not None:
            return d.kind.queue
        r = self.find(address)
        return r.kind.queue if r is not None else None
