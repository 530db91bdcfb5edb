"""Functional coverage of what a run exercised on the PCIe link: bins over TLP records, merged across runs.

Bins (each either hit or not; counts kept):
* ``type/<dir>/<type>``                  every TLP type in each direction;
* ``len/<class>/<bin>``                  device request sizes: 1 DW, 2-3 DW, 4-15, 16-63, 64-127, 128-255, 256+;
* ``align/<class>/<bin>``                device request start alignment: 4, 8-32, 64, 128-2048, 4096 B;
* ``4k/<class>/<bin>``                   near a 4 KB boundary: a request that ends on one without starting page
                                         aligned (a 4 KB split), one that starts in the last 64 B of a page;
* ``tags/<bin>``                         device reads in flight reached: 1, 2-7, 8-31, 32-63, 64-127, 128+;
* ``tags/extended``                      a tag above 31 used (8-bit extended tags);
* ``split/<n>``                          device reads answered by 1, 2, 3+ completions;
* ``wrap/<queue>``                       a completion record for the ring's last entry (the ring wrapped);
* ``irq/<bin>``                          completion records announced by one interrupt: 1, 2-7, 8+;
* ``error/<kind>``                       UR, CA, poisoned, request unanswered at the end, malformed descriptor;
* ``link/<param>/<value>``               MPS, MRRS, RCB and tag width the run used.
"""

from __future__ import annotations

import struct
from collections import Counter

from phantom.memmap import MemoryMap, RegionKind
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceHeader

_LEN_BINS = ((1, "1dw"), (3, "2-3dw"), (15, "4-15dw"), (63, "16-63dw"), (127, "64-127dw"), (255, "128-255dw"),
             (1 << 30, "256dw+"))
_TAG_BINS = ((1, "1"), (7, "2-7"), (31, "8-31"), (63, "32-63"), (127, "64-127"), (1 << 30, "128+"))
_DEV_CLASSES = (SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE, SemClass.CPL_WRITE, SemClass.INTERRUPT)


def _bin(v: int, bins) -> str:
    for hi, name in bins:
        if v <= hi:
            return name
    return bins[-1][1]


def all_bins(header: TraceHeader | None = None) -> set[str]:
    """The bins a full run could hit (the denominator of the coverage fraction; link bins excluded)."""
    out = set()
    for c in _DEV_CLASSES[:3]:
        n = c.name.lower()
        out |= {f"len/{n}/{b}" for _, b in _LEN_BINS}
        out |= {f"align/{n}/{b}" for b in ("4", "8-32", "64", "128-2048", "4096")}
        out |= {f"4k/{n}/split", f"4k/{n}/last64"}
    out |= {f"tags/{b}" for _, b in _TAG_BINS} | {"tags/extended"}
    out |= {"split/1", "split/2", "split/3+", "wrap/tx", "wrap/rx", "irq/1", "irq/2-7", "irq/8+"}
    out |= {"error/ur", "error/ca", "error/poisoned", "error/open_at_end", "error/bad_descriptor"}
    for d in ("down", "up"):
        for t in (TlpType.MRd32, TlpType.MRd64, TlpType.MWr32, TlpType.MWr64, TlpType.CplD, TlpType.Cpl):
            out.add(f"type/{d}/{t.name}")
    return out


class Coverage:
    """Feed records (a tap listener, or a trace file); ``to_json()``; ``merge`` runs."""

    def __init__(self, header: TraceHeader):
        self.h = header
        self.mm = MemoryMap.from_json(header.memory_map) if header.memory_map else None
        self.hits: Counter = Counter()
        self.open: dict[tuple[int, int], list[int]] = {}   # device read -> [completions so far]
        self.records_since_irq = 0
        self.entries = {}
        if self.mm is not None:
            for q, k in (("tx", RegionKind.TX_RING), ("rx", RegionKind.RX_RING)):
                rings = self.mm.of_kind(k)
                if rings:
                    self.entries[q] = rings[0].size // 16
        for k, v in (("mps", header.mps), ("mrrs", header.mrrs), ("rcb", header.rcb), ("tag_width", header.tag_width)):
            self.hits[f"link/{k}/{v}"] += 1

    def feed(self, r: TlpRecord) -> None:
        h = self.hits
        d = "up" if r.dir == Direction.UP else "down"
        h[f"type/{d}/{r.type.name}"] += 1
        if r.ep:
            h["error/poisoned"] += 1
        if r.dir == Direction.UP and not r.type.is_completion:
            n = r.cls.name.lower()
            if r.cls in (SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE):
                h[f"len/{n}/{_bin(r.length, _LEN_BINS)}"] += 1
                a = r.address & 0xFFF
                low = a & -a if a else 4096
                h[f"align/{n}/{'4' if low == 4 else '8-32' if low <= 32 else '64' if low == 64 else '4096' if low == 4096 else '128-2048'}"] += 1
                end = a + r.length * 4
                if end == 4096 and a != 0:
                    h[f"4k/{n}/split"] += 1
                if a >= 4096 - 64:
                    h[f"4k/{n}/last64"] += 1
            if r.type.is_mem_read:
                self.open[(r.requester_id, r.tag)] = [0]
                h[f"tags/{_bin(len(self.open), _TAG_BINS)}"] += 1
                if r.tag > 31:
                    h["tags/extended"] += 1
            if r.cls == SemClass.CPL_WRITE:
                self.records_since_irq += 1
                self._record(r)
            elif r.cls == SemClass.INTERRUPT:
                k = self.records_since_irq
                if k:
                    h[f"irq/{'1' if k == 1 else '2-7' if k < 8 else '8+'}"] += 1
                self.records_since_irq = 0
        elif r.dir == Direction.DOWN and r.type.is_completion:
            key = (r.requester_id, r.tag)
            if r.status == CplStatus.UR:
                h["error/ur"] += 1
            elif r.status == CplStatus.CA:
                h["error/ca"] += 1
            st = self.open.get(key)
            if st is not None:
                st[0] += 1
                if r.status != CplStatus.SC or r.byte_count <= r.length * 4 - (r.lower_address & 3):
                    h[f"split/{st[0] if st[0] < 3 else '3+'}"] += 1
                    del self.open[key]
        if r.dir == Direction.DOWN and r.type.is_completion and r.payload and len(r.payload) >= 16 and r.cls in (
                SemClass.COMPLETION,):
            # descriptors arriving: a malformed one (length 0, unaligned buffer) exercises the DESC_ERR path
            for off in range(0, len(r.payload) - 15, 16):
                addr, ln = struct.unpack_from("<QI", r.payload, off)
                if self.mm is not None and self.mm.find(addr) is None and (ln == 0 or addr & 3):
                    h["error/bad_descriptor"] += 1

    def _record(self, r: TlpRecord) -> None:
        if self.mm is None or not r.payload or len(r.payload) < 16:
            return
        q = self.mm.queue_of(r.address)
        idx = struct.unpack_from("<I", r.payload)[0] & 0xFFFF
        if q in self.entries and idx == self.entries[q] - 1:
            self.hits[f"wrap/{q}"] += 1

    def finish(self) -> "Coverage":
        if self.open:
            self.hits["error/open_at_end"] += len(self.open)
        return self

    def hit(self) -> set[str]:
        return {k for k, v in self.hits.items() if v}

    def to_json(self, universe: set[str] | None = None) -> dict:
        u = universe or all_bins(self.h)
        hit = self.hit()
        return {"bins": dict(sorted(self.hits.items())), "bins_total": len(u), "bins_hit": len(hit & u),
                "fraction": len(hit & u) / len(u) if u else 0.0, "missing": sorted(u - hit)}


def coverage_of(path) -> Coverage:
    """Coverage of a trace file."""
    from phantom.trace import TraceReader

    with TraceReader(path) as rd:
        cov = Coverage(rd.header)
        for r in rd:
            cov.feed(r)
    return cov.finish()


def merge(covs: list[Coverage]) -> dict:
    """Bins hit over several runs (the regression's union), with the universe of all bins plus link bins seen."""
    total: Counter = Counter()
    for c in covs:
        total.update(c.hits)
    u = all_bins()
    hit = {k for k, v in total.items() if v}
    return {"bins": dict(sorted(total.items())), "bins_total": len(u), "bins_hit": len(hit & u),
            "fraction": len(hit & u) / len(u), "link": sorted(k for k in hit if k.startswith("link/")),
            "missing": sorted(u - hit)}
