"""Checker state shared by the reference and the vectorised checker: the report, outstanding requests, and the
one function that judges a completion against the request it answers.

Both checkers call ``Pending.take`` for every completion whose request is outstanding, so the completion rules
(type, status, byte count, lower address, RCB, overrun, address order of the pieces) have a single definition.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from phantom.rules.spec import RULE_IDS, RULES, Severity, first_byte_offset, request_bytes

_RULE_POS = {r: i for i, r in enumerate(RULE_IDS)}
from phantom.trace import CplStatus, SemClass, TlpType


@dataclass(slots=True)
class Violation:
    rule: str
    index: int      # record position in the trace (0-based)
    t_ps: int
    message: str


@dataclass
class Report:
    """Per-rule counts and rates, the first offending records, waivers and notes."""

    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {r: 0 for r in RULES})
    first_n: int = 20
    waived: dict[str, str] = field(default_factory=dict)   # rule -> reason (counted, never an error)
    notes: list[str] = field(default_factory=list)
    _keep: list = field(default_factory=list, repr=False)  # max-heap of the first_n lowest (index, rule)
    _tick: int = field(default=0, repr=False)

    def add(self, v: Violation) -> None:
        """Count a violation; keep it if it is among the first_n lowest by (record index, rule order)."""
        self.counts[v.rule] += 1
        key = (-v.index, -_RULE_POS[v.rule], self._tick)
        self._tick += 1
        if len(self._keep) < self.first_n:
            heapq.heappush(self._keep, (key, v))
        elif key > self._keep[0][0]:
            heapq.heapreplace(self._keep, (key, v))

    @property
    def first(self) -> list[Violation]:
        """The first offending records (lowest record index first), at most first_n."""
        return [v for _, v in sorted(self._keep, reverse=True)]

    def _sev(self, rule: str) -> Severity:
        return RULES[rule].severity

    @property
    def errors(self) -> int:
        return sum(n for r, n in self.counts.items() if self._sev(r) == Severity.ERROR and r not in self.waived)

    @property
    def warnings(self) -> int:
        return sum(n for r, n in self.counts.items() if self._sev(r) == Severity.WARNING and r not in self.waived)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def violated(self) -> set[str]:
        """Rules with at least one occurrence (waived ones included)."""
        return {r for r, n in self.counts.items() if n}

    def unwaived(self) -> set[str]:
        return {r for r, n in self.counts.items() if n and r not in self.waived}

    def to_json(self) -> dict:
        return {
            "total_tlps": self.total, "errors": self.errors, "warnings": self.warnings,
            "waived": {r: {"reason": why, "count": self.counts[r]} for r, why in self.waived.items()},
            "notes": list(self.notes),
            "rules": {r: {"count": n, "rate": (n / self.total if self.total else 0.0), "spec": RULES[r].spec,
                          "severity": RULES[r].severity.name.lower(), "group": RULES[r].group.value,
                          "description": RULES[r].sentence, "waived": r in self.waived}
                      for r, n in self.counts.items()},
            "first": [{"rule": v.rule, "index": v.index, "t_ps": v.t_ps, "message": v.message} for v in self.first],
        }

    def format(self) -> str:
        lines = [f"{self.total} TLPs checked: {self.errors} errors, {self.warnings} warnings"]
        for r, n in self.counts.items():
            if n and r not in self.waived:
                rule = RULES[r]
                sev = "" if rule.severity == Severity.ERROR else " (warning)"
                lines.append(f"  {r:<18} {n:>8}  ({n / max(self.total, 1):.2e}/TLP)  [{rule.spec}]{sev} {rule.sentence}")
        for r, why in self.waived.items():
            lines.append(f"  waived {r}: {self.counts[r]} occurrence(s) not counted; reason: {why}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for v in self.first:
            tag = " (waived)" if v.rule in self.waived else ""
            lines.append(f"  #{v.index} t={v.t_ps / 1000:.3f} ns {v.rule}{tag}: {v.message}")
        return "\n".join(lines)


_READS = (TlpType.MRd32, TlpType.MRd64, TlpType.MRdLk32, TlpType.MRdLk64)
_DATA_REQ = _READS + (TlpType.IORd, TlpType.CfgRd0, TlpType.CfgRd1, TlpType.FetchAdd32, TlpType.FetchAdd64,
                      TlpType.Swap32, TlpType.Swap64, TlpType.CAS32, TlpType.CAS64)


@dataclass(slots=True)
class Pending:
    """An outstanding non-posted request and what its completions have delivered so far."""

    seq: int               # record index of the request
    t_ps: int
    type: TlpType
    tc: int
    attr: int
    cls: SemClass
    total: int             # bytes the request asks for (memory reads), else 4
    addr0: int             # address of the first requested byte (memory reads)
    got: int = 0           # bytes delivered in address order so far
    early: list[tuple[int, int]] | None = None   # pieces that arrived ahead of a lower one: (offset, end)
    last_t: int = -1

    @classmethod
    def of(cls, seq: int, t_ps: int, t: TlpType, length: int, address: int, first_be: int, last_be: int,
           tc: int, attr: int, sem: SemClass) -> "Pending":
        if t in _READS:
            return cls(seq, t_ps, t, tc, attr, sem, request_bytes(length, first_be, last_be),
                       address + first_byte_offset(first_be))
        return cls(seq, t_ps, t, tc, attr, sem, 4, 0)

    @property
    def is_mem_read(self) -> bool:
        return self.type in _READS

    def take(self, ctype: TlpType, status: int, length: int, byte_count: int, lower_address: int, tc: int,
             attr: int, rcb: int, out: list) -> bool:
        """Judge one completion; append (rule, message) pairs to ``out``; True if it ends the request."""
        if tc != self.tc or attr != self.attr:
            out.append(("cpl_fields", f"TC/Attr {tc}/{attr} differ from the request's {self.tc}/{self.attr}"))
        has_data = ctype in (TlpType.CplD, TlpType.CplDLk)
        if status == CplStatus.CRS and not self.type.is_config:
            out.append(("cpl_status", f"CRS completion answers {self.type.name}, not a configuration request"))
        if status != CplStatus.SC:
            if has_data:
                out.append(("cpl_type", f"{ctype.name} with status {CplStatus(status).name} carries data"))
            if status in (CplStatus.UR, CplStatus.CA):
                out.append(("cpl_error", f"{self.type.name} #{self.seq} answered with {CplStatus(status).name}"))
            return True
        wants_data = self.type in _DATA_REQ
        if has_data != wants_data:
            out.append(("cpl_type", f"{ctype.name} answers {self.type.name} #{self.seq} "
                                    f"({'a read needs CplD' if wants_data else 'a write is answered by Cpl'})"))
        if not self.is_mem_read:
            if byte_count != 4:
                out.append(("cpl_byte_count", f"byte count {byte_count} for a {self.type.name} completion (4)"))
            if lower_address != 0:
                out.append(("cpl_lower_addr", f"lower address {lower_address:#x} for a {self.type.name} "
                                              f"completion (0)"))
            return True
        if not has_data:
            return True  # reported as cpl_type; nothing delivered
        return self._piece(length, byte_count, lower_address, rcb, out)

    def _piece(self, length: int, bc: int, la: int, rcb: int, out: list) -> bool:
        total, a0, got = self.total, self.addr0, self.got
        off = total - bc                       # position the completion claims by its byte count
        exp_la = (a0 + got) & 0x7F
        own_ok = 0 <= off < total and la == ((a0 + off) & 0x7F)
        if off == got:
            if la != exp_la:
                out.append(("cpl_lower_addr", f"lower address {la:#x}, expected {exp_la:#x}"))
        elif own_ok and off > got:
            # ahead of a piece still to come (a later completion of lower address): kept until the gap fills
            end = off + length * 4 - ((a0 + off) & 3)
            self._check_end(end, rcb, out)
            if self.early is None:
                self.early = []
            self.early.append((off, end))
            return False
        elif own_ok:
            out.append(("cpl_byte_count", f"byte count {bc} repeats bytes already delivered "
                                          f"({got} of {total} delivered)"))
            return False
        else:
            out.append(("cpl_byte_count", f"byte count {bc}, request #{self.seq} still owes {total - got}"))
        end = got + length * 4 - ((a0 + got) & 3)
        if self.early:
            out.append(("ord_cpl_cpl", f"completion of request #{self.seq} at offset {got} arrived after one "
                                       f"at offset {min(o for o, _ in self.early)} (address order)"))
        if self._check_end(end, rcb, out):
            return True
        self.got = end
        if self.early:
            self.early.sort()
            while self.early and self.early[0][0] <= self.got:
                o, e = self.early.pop(0)
                if o == self.got:
                    self.got = e
            if self.got >= total:
                return True
        return False

    def _check_end(self, end: int, rcb: int, out: list) -> bool:
        """RCB / overrun of a piece ending at byte offset ``end``; True when it reaches the request's end."""
        if end >= self.total:
            if end - self.total >= 4:
                out.append(("cpl_overrun", f"{end} bytes delivered, request #{self.seq} asked for {self.total}"))
            return True
        if (self.addr0 + end) % rcb:
            out.append(("cpl_rcb", f"partial completion ends at {self.addr0 + end:#x}, not on a {rcb} B boundary"))
        return False
