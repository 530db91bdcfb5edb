"""PCIe rule checker for TLP traces: the precise meaning of "PCIe-specific constraints" in this project.

One pass, memory proportional to outstanding requests (plus a bounded descriptor window), usable live
(``Checker.feed`` on each captured TLP) or over a file (``check_file``). Each rule has an id, a one-line
description, the PCIe Base Specification (rev. 5.0/6.0) section it comes from, and a severity.

Trace conventions: records are in transmit order (``seq``); ``t_ps`` is the arrival time at the receiver.
Ordering rules compare the two: a TLP that was sent later but arrived earlier "passed" the earlier one.
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceHeader, TraceReader


class Severity(enum.IntEnum):
    WARNING = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    spec: str
    severity: Severity = Severity.ERROR


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("len_range", "Length field within 1..1024 DW for requests and data completions", "2.2.2, 2.2.7"),
    Rule("addr_align", "Memory/IO request address is DWORD aligned (low 2 bits are BE-encoded)", "2.2.4.1"),
    Rule("mem_4kb", "A memory request does not cross a 4 KB address boundary", "2.2.7"),
    Rule("wr_mps", "A write's payload is no larger than Max_Payload_Size", "2.2.2, 7.5.3.4"),
    Rule("rd_mrrs", "A device read request is no larger than Max_Read_Request_Size", "7.5.3.4"),
    Rule("be_1dw", "A 1-DW request has Last DW BE = 0000b", "2.2.5"),
    Rule("be_multi", "A request longer than 1 DW has non-zero First and Last DW BE", "2.2.5"),
    Rule("be_contig", "Requests of 3+ DW have contiguous byte enables (first BE high-packed, last BE low-packed)", "2.2.5"),
    Rule("addr_fmt", "3-DW headers for addresses below 4 GB, 4-DW headers only above", "2.2.4.1"),
    Rule("cfg_io_len", "Configuration and IO requests have Length 1 and Last BE 0000b", "2.2.7"),
    Rule("tag_dup", "Requester ID + Tag is unique among outstanding non-posted requests", "2.2.6.2"),
    Rule("tag_width", "Tag fits the negotiated tag width (5 bits without Extended Tags)", "2.2.6.2, 7.5.3.4"),
    Rule("cpl_unexpected", "Every completion matches an outstanding request (Requester ID + Tag)", "2.3.2"),
    Rule("cpl_fields", "A completion's TC and Attr equal its request's", "2.2.9"),
    Rule("cpl_byte_count", "Byte Count equals the bytes still owed by the request", "2.2.9"),
    Rule("cpl_lower_addr", "Lower Address equals the address of the completion's first byte", "2.2.9"),
    Rule("cpl_overrun", "Completions carry exactly the requested data (no more)", "2.3.1.1"),
    Rule("cpl_rcb", "A completion other than the last ends on a Read Completion Boundary", "2.3.1.1"),
    Rule("cpl_mps", "A completion's payload is no larger than Max_Payload_Size", "2.2.2"),
    Rule("cpl_timeout", "No request waits longer than the completion timeout", "2.8"),
    Rule("ord_posted", "A posted request does not pass a posted request (same direction, TC; unless RO)", "2.4.1 (A2a)"),
    Rule("ord_cpl_posted", "A completion does not pass a posted request (same direction, TC; unless RO)", "2.4.1 (D2a)"),
    Rule("ord_cpl_cpl", "Completions of one request arrive in address order", "2.4.1 (D2b note), 2.3.1.1"),
    Rule("nic_desc_doorbell", "NIC: a descriptor read follows a doorbell", "device (NIC causality)"),
    Rule("nic_data_desc", "NIC: a packet data read targets a buffer named by a descriptor already read", "device (NIC causality)"),
    Rule("nic_cpl_data", "NIC: completion-record writes never outnumber the data transfers they report", "device (NIC causality)"),
    Rule("nic_irq_cpl", "NIC: interrupts never outnumber the completion records and errors they announce", "device (NIC causality)"),
)}


@dataclass(slots=True)
class Violation:
    rule: str
    index: int      # record position in the trace (0-based)
    t_ps: int
    message: str


@dataclass
class Report:
    """Per-rule counts and rates, and the first offending records."""

    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {r: 0 for r in RULES})
    first: list[Violation] = field(default_factory=list)
    first_n: int = 20

    @property
    def errors(self) -> int:
        return sum(n for r, n in self.counts.items() if RULES[r].severity == Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(n for r, n in self.counts.items() if RULES[r].severity == Severity.WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def violated(self) -> set[str]:
        return {r for r, n in self.counts.items() if n}

    def to_json(self) -> dict:
        return {
            "total_tlps": self.total, "errors": self.errors, "warnings": self.warnings,
            "rules": {r: {"count": n, "rate": (n / self.total if self.total else 0.0), "spec": RULES[r].spec,
                          "severity": RULES[r].severity.name.lower(), "description": RULES[r].description}
                      for r, n in self.counts.items()},
            "first": [{"rule": v.rule, "index": v.index, "t_ps": v.t_ps, "message": v.message} for v in self.first],
        }

    def format(self) -> str:
        lines = [f"{self.total} TLPs checked: {self.errors} errors, {self.warnings} warnings"]
        for r, n in self.counts.items():
            if n:
                rule = RULES[r]
                lines.append(f"  {r:<18} {n:>8}  ({n / max(self.total, 1):.2e}/TLP)  [{rule.spec}] {rule.description}")
        for v in self.first:
            lines.append(f"  #{v.index} t={v.t_ps / 1000:.3f} ns {v.rule}: {v.message}")
        return "\n".join(lines)


def _lead0(be: int) -> int:
    for i in range(4):
        if be >> i & 1:
            return i
    return 0


def _trail0(be: int) -> int:
    for i in range(3, -1, -1):
        if be >> i & 1:
            return 3 - i
    return 0


def request_bytes(length: int, first_be: int, last_be: int) -> int:
    """Bytes a memory read asks for (a zero-length read, first BE 0, counts 1: 2.2.9)."""
    if length == 1:
        if first_be == 0:
            return 1
        return 4 - _lead0(first_be) - _trail0(first_be)
    return length * 4 - _lead0(first_be) - _trail0(last_be)


_CONTIG_FIRST = {0xF, 0xE, 0xC, 0x8}
_CONTIG_LAST = {0x1, 0x3, 0x7, 0xF}
_ADDR_TYPES_32 = {TlpType.MRd32, TlpType.MWr32, TlpType.MRdLk32, TlpType.FetchAdd32, TlpType.Swap32, TlpType.CAS32}
_ADDR_TYPES_64 = {TlpType.MRd64, TlpType.MWr64, TlpType.MRdLk64, TlpType.FetchAdd64, TlpType.Swap64, TlpType.CAS64}


@dataclass(slots=True)
class _Pending:
    seq: int
    t_ps: int
    type: TlpType
    tc: int
    attr: int
    cls: SemClass
    remaining: int      # bytes still owed
    addr: int           # address of the next byte owed
    is_mem: bool
    last_t: int = -1


class Checker:
    """Feed records in trace order; ``report()`` at any time."""

    DESC_WINDOW = 4096   # descriptors remembered for nic_data_desc (bounded memory)

    def __init__(self, header: TraceHeader, *, timeout_ns: float = 50e6, first_n: int = 20,
                 nic_rules: bool = True):
        self.h = header
        self.timeout_ps = int(timeout_ns * 1000)
        self.nic_rules = nic_rules
        self.rep = Report(first_n=first_n)
        self.pending: dict[tuple[int, int], _Pending] = {}
        self._deadlines: list[tuple[int, int, tuple[int, int]]] = []  # (t_ps, request index, key), lazy heap
        self.now = -1  # latest arrival time seen (trace time only moves forward for the timeout)
        self.max_posted_t: dict[tuple[int, int], int] = defaultdict(lambda: -1)
        self.tag_limit = 1 << header.tag_width
        # NIC causality state
        self.doorbells = 0
        self.desc_done = 0
        self.descs: OrderedDict[int, int] = OrderedDict()  # buffer address -> length
        self.data_units = 0       # DATA_WRITE TLPs + completed DATA_READ requests
        self.cpl_writes = 0
        self.errors_seen = 0
        self.interrupts = 0
        self.index = 0

    # ------------------------------------------------------------------------------------------
    def _v(self, rule: str, r: TlpRecord, msg: str) -> None:
        self.rep.counts[rule] += 1
        if len(self.rep.first) < self.rep.first_n:
            self.rep.first.append(Violation(rule, self.index, r.t_ps, msg))

    def feed(self, r: TlpRecord) -> None:
        t = r.type
        h = self.h
        self._expire(r)
        if t.is_completion:
            self._completion(r)
        else:
            self._request(r, t, h)
        self.rep.total += 1
        self.index += 1

    def feed_all(self, records: Iterable[TlpRecord]) -> "Report":
        for r in records:
            self.feed(r)
        return self.finish()

    def finish(self) -> Report:
        return self.rep

    def report(self) -> Report:
        return self.rep

    # ------------------------------------------------------------------------------------------
    def _expire(self, r: TlpRecord) -> None:
        """Requests still outstanding when the latest arrival time passes their deadline time out."""
        if r.t_ps > self.now:
            self.now = r.t_ps
        dl = self._deadlines
        while dl and self.now - dl[0][0] > self.timeout_ps:
            t0, seq, key = heapq.heappop(dl)
            p = self.pending.get(key)
            if p is None or p.seq != seq:
                continue  # already answered or replaced
            del self.pending[key]
            self._v("cpl_timeout", r, f"request #{p.seq} ({p.type.name}, tag {key[1]}) unanswered after "
                                      f"{(self.now - p.t_ps) / 1e6:.3f} us")

    def _request(self, r: TlpRecord, t: TlpType, h: TraceHeader) -> None:
        length = r.length
        if not 1 <= length <= 1024:
            self._v("len_range", r, f"{t.name} length {length} DW")
            length = max(1, min(length, 1024))
        ro = r.attr & 0x2
        key_ord = (r.dir, r.tc)
        if t.is_posted:
            if not ro and r.t_ps < self.max_posted_t[key_ord]:
                self._v("ord_posted", r, f"{t.name} arrived at {r.t_ps} ps, before an earlier posted request "
                                         f"({self.max_posted_t[key_ord]} ps)")
            if r.t_ps > self.max_posted_t[key_ord]:
                self.max_posted_t[key_ord] = r.t_ps
        is_mem = t in _ADDR_TYPES_32 or t in _ADDR_TYPES_64
        if is_mem or t.is_io:
            if r.address & 3:
                self._v("addr_align", r, f"address {r.address:#x} not DWORD aligned")
        if is_mem:
            if (r.address & 0xFFF) + length * 4 > 0x1000:
                self._v("mem_4kb", r, f"{t.name} {r.address:#x}+{length * 4} crosses a 4 KB boundary")
            if t in _ADDR_TYPES_32 and r.address >= 1 << 32:
                self._v("addr_fmt", r, f"3-DW header with address {r.address:#x} above 4 GB")
            elif t in _ADDR_TYPES_64 and r.address < 1 << 32:
                self._v("addr_fmt", r, f"4-DW header with address {r.address:#x} below 4 GB")
            if length == 1:
                if r.last_be != 0:
                    self._v("be_1dw", r, f"1-DW request with last BE {r.last_be:#x}")
            else:
                if r.first_be == 0 or r.last_be == 0:
                    self._v("be_multi", r, f"{length}-DW request with BEs {r.first_be:#x}/{r.last_be:#x}")
                elif length >= 3 and (r.first_be not in _CONTIG_FIRST or r.last_be not in _CONTIG_LAST):
                    self._v("be_contig", r, f"{length}-DW request with non-contiguous BEs {r.first_be:#x}/{r.last_be:#x}")
            if t.is_mem_write and length * 4 > h.mps:
                self._v("wr_mps", r, f"write of {length * 4} B exceeds MPS {h.mps}")
            if t.is_mem_read and r.dir == Direction.UP and length * 4 > h.mrrs:
                self._v("rd_mrrs", r, f"read of {length * 4} B exceeds MRRS {h.mrrs}")
        if t.is_config or t.is_io:
            if length != 1 or r.last_be != 0:
                self._v("cfg_io_len", r, f"{t.name} length {length} last BE {r.last_be:#x}")
        if t.is_non_posted:
            if r.tag >= self.tag_limit:
                self._v("tag_width", r, f"tag {r.tag} needs more than {self.h.tag_width} bits")
            key = (r.requester_id, r.tag)
            if key in self.pending:
                self._v("tag_dup", r, f"tag {r.tag} of requester {r.requester_id:#06x} reused while request "
                                      f"#{self.pending[key].seq} is outstanding")
                del self.pending[key]
            if t.is_mem_read:
                owed = request_bytes(length, r.first_be, r.last_be)
                addr = r.address + (_lead0(r.first_be) if r.first_be else 0)
            else:
                owed, addr = 4, 0
            self.pending[key] = _Pending(self.index, r.t_ps, t, r.tc, r.attr, r.cls, owed, addr, t.is_mem_read)
            heapq.heappush(self._deadlines, (r.t_ps, self.index, key))
            if len(self._deadlines) > 2 * len(self.pending) + 64:
                # drop entries of answered requests so memory follows the outstanding requests, not the trace
                self._deadlines = [(p.t_ps, p.seq, k) for k, p in self.pending.items()]
                heapq.heapify(self._deadlines)
        if self.nic_rules:
            self._nic_request(r, t)

    def _completion(self, r: TlpRecord) -> None:
        key = (r.requester_id, r.tag)
        ro = r.attr & 0x2
        if not ro and r.t_ps < self.max_posted_t[(r.dir, r.tc)]:
            self._v("ord_cpl_posted", r, f"completion arrived at {r.t_ps} ps, before an earlier posted request")
        if r.type.has_data:
            if not 1 <= r.length <= 1024:
                self._v("len_range", r, f"{r.type.name} length {r.length} DW")
            if r.length * 4 > self.h.mps:
                self._v("cpl_mps", r, f"completion payload {r.length * 4} B exceeds MPS {self.h.mps}")
        p = self.pending.get(key)
        if p is None:
            self._v("cpl_unexpected", r, f"no outstanding request for requester {r.requester_id:#06x} tag {r.tag}")
            return
        if r.tc != p.tc or r.attr != p.attr:
            self._v("cpl_fields", r, f"TC/Attr {r.tc}/{r.attr} differ from the request's {p.tc}/{p.attr}")
        if r.t_ps < p.last_t:
            self._v("ord_cpl_cpl", r, f"completion of request #{p.seq} arrived before the previous one")
        p.last_t = r.t_ps
        if r.status != CplStatus.SC:
            del self.pending[key]
            self.errors_seen += 1
            return
        if not p.is_mem:
            del self.pending[key]
            return
        if r.byte_count != p.remaining:
            self._v("cpl_byte_count", r, f"byte count {r.byte_count}, request #{p.seq} still owes {p.remaining}")
        if r.lower_address != (p.addr & 0x7F):
            self._v("cpl_lower_addr", r, f"lower address {r.lower_address:#x}, expected {p.addr & 0x7F:#x}")
        carried = r.length * 4 - (p.addr & 3)
        if carried >= p.remaining:
            if r.length * 4 - (p.addr & 3) - p.remaining >= 4:
                self._v("cpl_overrun", r, f"{carried} B carried, only {p.remaining} owed by request #{p.seq}")
            del self.pending[key]
            if self.nic_rules:
                self._nic_read_done(r, p)
            return
        end = p.addr + carried
        if end % self.h.rcb:
            self._v("cpl_rcb", r, f"partial completion ends at {end:#x}, not on a {self.h.rcb} B boundary")
        p.remaining -= carried
        p.addr = end

    # NIC causality ----------------------------------------------------------------------------
    def _nic_request(self, r: TlpRecord, t: TlpType) -> None:
        c = r.cls
        if c == SemClass.DOORBELL:
            self.doorbells += 1
        elif c == SemClass.DESC_READ:
            if self.doorbells == 0:
                self._v("nic_desc_doorbell", r, "descriptor read before any doorbell")
        elif c == SemClass.DATA_READ:
            if self.desc_done == 0:
                self._v("nic_data_desc", r, "packet data read before any descriptor was read")
            elif self.descs and not self._in_descriptor(r.address):
                self._v("nic_data_desc", r, f"packet data read at {r.address:#x} is in no descriptor read so far")
        elif c == SemClass.DATA_WRITE:
            self.data_units += 1
        elif c == SemClass.CPL_WRITE:
            self.cpl_writes += 1
            if self.cpl_writes > self.data_units:
                self._v("nic_cpl_data", r, f"{self.cpl_writes} completion records for {self.data_units} data transfers")
        elif c == SemClass.INTERRUPT:
            self.interrupts += 1
            if self.interrupts > self.cpl_writes + self.errors_seen:
                self._v("nic_irq_cpl", r, f"interrupt {self.interrupts} announces nothing "
                                          f"({self.cpl_writes} completion records, {self.errors_seen} errors)")

    def _in_descriptor(self, addr: int) -> bool:
        for base, length in reversed(self.descs.items()):
            if base <= addr < base + max(length, 1):
                return True
        return False

    def _nic_read_done(self, r: TlpRecord, p: _Pending) -> None:
        if p.cls == SemClass.DESC_READ:
            self.desc_done += 1
            if r.payload and len(r.payload) >= 12:
                # descriptors: [63:0] buffer address, [95:64] length (host/driver.py, rtl/nic_regs.vh)
                for off in range(0, len(r.payload) - 11, 16):
                    addr, length = struct.unpack_from("<QI", r.payload, off)
                    self.descs[addr] = length
                    if len(self.descs) > self.DESC_WINDOW:
                        self.descs.popitem(last=False)
        elif p.cls == SemClass.DATA_READ:
            self.data_units += 1


def check_records(header: TraceHeader, records: Iterable[TlpRecord], **kw) -> Report:
    return Checker(header, **kw).feed_all(records)


def check_file(path: str | Path, **kw) -> Report:
    """Check a trace file (JSON lines streamed; npz from columns)."""
    path = Path(path)
    if path.suffix == ".npz":
        from phantom.rules_fast import check_chunks
        from phantom.trace import iter_column_chunks, load_columns_header

        return check_chunks(load_columns_header(path), iter_column_chunks(path), **kw)
    with TraceReader(path) as rd:
        return Checker(rd.header, **kw).feed_all(rd)
