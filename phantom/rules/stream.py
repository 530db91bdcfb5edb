"""The reference rule checker: one record at a time, usable live (``Checker.feed`` on each captured TLP).

Memory is proportional to the outstanding requests (plus the NIC machine's descriptor window), not to the
trace. Trace conventions: records are in link arrival order, ``t_ps`` is the arrival time at the receiving
port, so arrival times never decrease (``trace_time``).

Ordering: on a single link recorded in arrival order a TLP cannot be seen to pass another (that happens inside a
transmitter's queues), so the timestamp-based "posted may not pass posted" checks of the first version could
never fire on a capture and are gone. What ordering leaves visible on the link is checked instead: the address
order of the completions of one read (``ord_cpl_cpl``, 2.4.1 D5b) and producer/consumer safety of the
attributes a device sets (``ord_ro_flag``: a flag or interrupt write must not be allowed to pass its data).
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Iterable

from phantom.memmap import MemoryMap, RegionKind
from phantom.rules.nic import NicChains
from phantom.rules.spec import CONTIG_FIRST, CONTIG_LAST, DEFAULT_TIMEOUT_NS, RULES, Severity
from phantom.rules.state import Pending, Report, Violation
from phantom.trace import Direction, SemClass, TlpRecord, TlpType, TraceHeader, TraceReader

_ADDR_32 = frozenset({TlpType.MRd32, TlpType.MWr32, TlpType.MRdLk32, TlpType.FetchAdd32, TlpType.Swap32,
                      TlpType.CAS32})
_ADDR_64 = frozenset({TlpType.MRd64, TlpType.MWr64, TlpType.MRdLk64, TlpType.FetchAdd64, TlpType.Swap64,
                      TlpType.CAS64})


def validate_waivers(waive: dict[str, str] | None) -> dict[str, str]:
    """{rule: reason}; unknown rules and empty reasons are refused (a waiver is explicit and explained)."""
    out = {}
    for rule, why in (waive or {}).items():
        if rule not in RULES:
            raise ValueError(f"cannot waive unknown rule {rule!r} (known: {', '.join(RULES)})")
        if not isinstance(why, str) or not why.strip():
            raise ValueError(f"waiver of {rule!r} needs a reason (--waive {rule}=REASON)")
        out[rule] = why.strip()
    return out


def timeout_ps_for(header: TraceHeader, timeout_ns: float | None) -> int:
    """The completion-timeout limit: given, else the device's from the header, else PCIe's 50 ms default."""
    if timeout_ns is None:
        timeout_ns = header.cpl_timeout_ns or DEFAULT_TIMEOUT_NS
    if not timeout_ns > 0:
        raise ValueError(f"completion timeout must be positive, got {timeout_ns!r} ns")
    return int(timeout_ns * 1000)


def nic_machine(header: TraceHeader, nic_rules: bool, emit, timeout_ps: int, rep: Report) -> NicChains | None:
    if not nic_rules:
        return None
    mm = MemoryMap.from_json(header.memory_map) if header.memory_map else None
    if mm is None or not mm.of_kind(RegionKind.TX_RING, RegionKind.RX_RING):
        rep.notes.append("NIC causality rules not run: the trace header has no memory map with descriptor rings")
        return None
    return NicChains(header, mm, emit, timeout_ps)


class Checker:
    """Feed records in trace order; ``report()`` at any time, ``finish()`` at the end of the trace."""

    def __init__(self, header: TraceHeader, *, timeout_ns: float | None = None, first_n: int = 20,
                 nic_rules: bool = True, waive: dict[str, str] | None = None):
        self.h = header
        self.timeout_ps = timeout_ps_for(header, timeout_ns)
        self.rep = Report(first_n=first_n, waived=validate_waivers(waive))
        self.pending: dict[tuple[int, int], Pending] = {}
        self._deadlines: list[tuple[int, int, tuple[int, int]]] = []  # (t_ps, request index, key), lazy heap
        self.now = -1          # latest arrival time seen
        self.tag_limit = 1 << header.tag_width
        self.index = 0
        self._finished = False
        self.nic = nic_machine(header, nic_rules, self._emit, self.timeout_ps, self.rep)

    # ------------------------------------------------------------------------------------------
    def _emit(self, rule: str, index: int, t_ps: int, msg: str) -> None:
        self.rep.add(Violation(rule, index, t_ps, msg))

    def _v(self, rule: str, r: TlpRecord, msg: str) -> None:
        self._emit(rule, self.index, r.t_ps, msg)

    def feed(self, r: TlpRecord) -> None:
        t = r.type
        if r.t_ps < self.now:
            self._v("trace_time", r, f"arrival time {r.t_ps} ps is before the previous record's {self.now} ps")
        want = r.length * 4 if t.has_data else 0
        if r.payload_len != want:
            self._v("trace_payload_len", r, f"payload_len {r.payload_len} for a {t.name} of length {r.length} "
                                            f"(expected {want})")
        if r.ep:
            self._v("tlp_poisoned", r, f"{t.name} with EP set")
        self._expire(r)
        if t.is_completion:
            self._completion(r)
        else:
            self._request(r, t)
        if self.nic is not None:
            self.nic.record(self.index, r.t_ps, int(r.dir), int(t), int(r.cls), r.address, r.length, r.first_be,
                            r.last_be, r.tag, r.requester_id, int(r.status), r.byte_count, r.ep, r.payload)
        self.rep.total += 1
        self.index += 1

    def feed_all(self, records: Iterable[TlpRecord]) -> Report:
        for r in records:
            self.feed(r)
        return self.finish()

    def finish(self) -> Report:
        """End of the trace: requests still open are reported (``cpl_open_end``). Idempotent."""
        if not self._finished:
            self._finished = True
            for key, p in sorted(self.pending.items(), key=lambda kv: kv[1].seq):
                self._emit("cpl_open_end", p.seq, p.t_ps, f"{p.type.name} #{p.seq} (requester {key[0]:#06x}, tag "
                                                          f"{key[1]}) still unanswered at the end of the trace")
        return self.rep

    def snapshot(self) -> Report:
        """The report as if the trace ended now, without ending it (for a live checker)."""
        import copy

        rep = copy.deepcopy(self.rep)
        for key, p in sorted(self.pending.items(), key=lambda kv: kv[1].seq):
            rep.add(Violation("cpl_open_end", p.seq, p.t_ps, f"{p.type.name} #{p.seq} still unanswered"))
        return rep

    def report(self) -> Report:
        return self.rep

    # ------------------------------------------------------------------------------------------
    def _expire(self, r: TlpRecord) -> None:
        """Requests still outstanding when the latest arrival time passes their deadline time out."""
        if r.t_ps > self.now:
            self.now = r.t_ps
        dl = self._deadlines
        while dl and self.now - dl[0][0] > self.timeout_ps:
            _, seq, key = heapq.heappop(dl)
            p = self.pending.get(key)
            if p is None or p.seq != seq:
                continue  # already answered or replaced
            del self.pending[key]
            self._v("cpl_timeout", r, f"request #{p.seq} ({p.type.name}, tag {key[1]}) unanswered after "
                                      f"{(self.now - p.t_ps) / 1e6:.3f} us")

    def _request(self, r: TlpRecord, t: TlpType) -> None:
        h = self.h
        length = r.length
        if not 1 <= length <= 1024:
            self._v("len_range", r, f"{t.name} length {length} DW")
            length = max(1, min(length, 1024))
        if r.dir == Direction.UP:
            if r.attr & 0x2 and not h.relaxed_ordering:
                self._v("attr_ro", r, f"{t.name} sets Relaxed Ordering, which Device Control does not enable")
            if r.attr & 0x1 and not h.no_snoop:
                self._v("attr_ns", r, f"{t.name} sets No Snoop, which Device Control does not enable")
            if r.attr & 0x2 and t.is_mem_write and r.cls in (SemClass.CPL_WRITE, SemClass.INTERRUPT):
                self._v("ord_ro_flag", r, f"{r.cls.name.lower()} write with Relaxed Ordering may pass the data it "
                                          f"announces")
        is_mem = t in _ADDR_32 or t in _ADDR_64
        if (is_mem or t.is_io) and r.address & 3:
            self._v("addr_align", r, f"address {r.address:#x} not DWORD aligned")
        if is_mem:
            if (r.address & 0xFFF) + length * 4 > 0x1000:
                self._v("mem_4kb", r, f"{t.name} {r.address:#x}+{length * 4} crosses a 4 KB boundary")
            if t in _ADDR_32 and r.address >= 1 << 32:
                self._v("addr_fmt", r, f"3-DW header with address {r.address:#x} above 4 GB")
            elif t in _ADDR_64 and r.address < 1 << 32:
                self._v("addr_fmt", r, f"4-DW header with address {r.address:#x} below 4 GB")
            if length == 1:
                if r.last_be != 0:
                    self._v("be_1dw", r, f"1-DW request with last BE {r.last_be:#x}")
            elif r.first_be == 0 or r.last_be == 0:
                self._v("be_multi", r, f"{length}-DW request with BEs {r.first_be:#x}/{r.last_be:#x}")
            elif length >= 3 and (r.first_be not in CONTIG_FIRST or r.last_be not in CONTIG_LAST):
                self._v("be_contig", r, f"{length}-DW request with non-contiguous BEs {r.first_be:#x}/{r.last_be:#x}")
            if t.is_mem_write and length * 4 > h.mps:
                self._v("wr_mps", r, f"write of {length * 4} B exceeds MPS {h.mps}")
            if t.is_mem_read and r.dir == Direction.UP and length * 4 > h.mrrs:
                self._v("rd_mrrs", r, f"read of {length * 4} B exceeds MRRS {h.mrrs}")
        if (t.is_config or t.is_io) and (length != 1 or r.last_be != 0):
            self._v("cfg_io_len", r, f"{t.name} length {length} last BE {r.last_be:#x}")
        if t.is_non_posted:
            if r.tag >= self.tag_limit:
                self._v("tag_width", r, f"tag {r.tag} needs more than {h.tag_width} bits")
            key = (r.requester_id, r.tag)
            if key in self.pending:
                self._v("tag_dup", r, f"tag {r.tag} of requester {r.requester_id:#06x} reused while request "
                                      f"#{self.pending[key].seq} is outstanding")
            self.pending[key] = Pending.of(self.index, r.t_ps, t, length, r.address, r.first_be, r.last_be, r.tc,
                                           r.attr, r.cls)
            heapq.heappush(self._deadlines, (r.t_ps, self.index, key))
            if len(self._deadlines) > 2 * len(self.pending) + 64:
                # drop entries of answered requests so memory follows the outstanding requests, not the trace
                self._deadlines = [(p.t_ps, p.seq, k) for k, p in self.pending.items()]
                heapq.heapify(self._deadlines)

    def _completion(self, r: TlpRecord) -> None:
        t = r.type
        length = r.length
        if t.has_data:
            if not 1 <= length <= 1024:
                self._v("len_range", r, f"{t.name} length {length} DW")
                length = max(1, min(length, 1024))
            if length * 4 > self.h.mps:
                self._v("cpl_mps", r, f"completion payload {length * 4} B exceeds MPS {self.h.mps}")
        key = (r.requester_id, r.tag)
        p = self.pending.get(key)
        if p is None:
            self._v("cpl_unexpected", r, f"no outstanding request for requester {r.requester_id:#06x} tag {r.tag}")
            return
        out: list[tuple[str, str]] = []
        if p.take(t, int(r.status), length if t.has_data else 0, r.byte_count, r.lower_address, r.tc, r.attr,
                  self.h.rcb, out):
            del self.pending[key]
        for rule, msg in out:
            self._v(rule, r, msg)


def check_records(header: TraceHeader, records: Iterable[TlpRecord], **kw) -> Report:
    return Checker(header, **kw).feed_all(records)


def check_file(path: str | Path, **kw) -> Report:
    """Check a trace file (JSON lines streamed through the reference checker; npz in columns, vectorised)."""
    path = Path(path)
    if path.suffix == ".npz":
        from phantom.rules.columnar import check_chunks
        from phantom.trace import iter_column_chunks, load_columns_header

        return check_chunks(load_columns_header(path), iter_column_chunks(path), **kw)
    with TraceReader(path) as rd:
        return Checker(rd.header, **kw).feed_all(rd)


__all__ = ["Checker", "check_records", "check_file", "validate_waivers", "timeout_ps_for", "RULES", "Severity"]
