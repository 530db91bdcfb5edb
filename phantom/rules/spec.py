"""The rule table (id, PCIe Base Specification section, the sentence each rule enforces) and byte-enable arithmetic.

Shared by the reference checker (``phantom.rules.stream``) and the vectorised one (``phantom.rules.columnar``):
the scalar functions and the numpy tables here are the one definition of how many bytes a request asks for
and where its first byte is. Section numbers follow the PCI Express Base Specification, Rev. 5.0/6.0 (the
numbering of these sections did not change between them); sentences are paraphrased, not quoted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Severity(enum.IntEnum):
    WARNING = 1   # legal but worth a look (error responses, poisoned data, requests open at the end)
    ERROR = 2     # the trace is not legal PCIe (or not a coherent NIC conversation)


class Group(str, enum.Enum):
    TRACE = "trace"        # integrity of the trace file itself
    REQUEST = "request"    # one request's header fields
    COMPLETION = "completion"
    ORDERING = "ordering"
    NIC = "nic"            # causality of this project's NIC (descriptor rings, records, MSI-X)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    group: Group
    spec: str               # where the rule comes from
    sentence: str           # what it enforces, as one sentence
    severity: Severity = Severity.ERROR

    @property
    def description(self) -> str:
        return self.sentence


_E, _W = Severity.ERROR, Severity.WARNING
RULES: dict[str, Rule] = {r.id: r for r in (
    # trace integrity
    Rule("trace_time", Group.TRACE, "trace format",
         "Records are in link arrival order: arrival times never decrease."),
    Rule("trace_payload_len", Group.TRACE, "trace format",
         "A record's payload_len is Length x 4 for a TLP with data and 0 for a TLP without."),
    # requests
    Rule("len_range", Group.REQUEST, "2.2.2, 2.2.7",
         "The Length field of a request or data completion encodes 1 to 1024 DW."),
    Rule("addr_align", Group.REQUEST, "2.2.4.1",
         "A memory or IO request's address is DWORD aligned (the low two bits are given by the byte enables)."),
    Rule("mem_4kb", Group.REQUEST, "2.2.7",
         "A memory request must not cross a 4 KB address boundary."),
    Rule("wr_mps", Group.REQUEST, "2.2.2, 7.5.3.4",
         "A memory write's payload is no larger than Max_Payload_Size."),
    Rule("rd_mrrs", Group.REQUEST, "7.5.3.4",
         "A device's memory read asks for no more than Max_Read_Request_Size."),
    Rule("be_1dw", Group.REQUEST, "2.2.5",
         "A request of Length 1 DW has Last DW BE 0000b."),
    Rule("be_multi", Group.REQUEST, "2.2.5",
         "A request longer than 1 DW has non-zero First DW BE and Last DW BE."),
    Rule("be_contig", Group.REQUEST, "2.2.5",
         "A request of 3 DW or more has contiguous byte enables (First BE high-packed, Last BE low-packed)."),
    Rule("addr_fmt", Group.REQUEST, "2.2.4.1",
         "Addresses below 4 GB use the 3-DW header; the 4-DW header is used only for addresses at or above 4 GB."),
    Rule("cfg_io_len", Group.REQUEST, "2.2.7",
         "Configuration and IO requests have Length 1 and Last DW BE 0000b."),
    Rule("tag_dup", Group.REQUEST, "2.2.6.2",
         "Requester ID and Tag identify one outstanding non-posted request: a tag is not reused before its "
         "request is complete."),
    Rule("tag_width", Group.REQUEST, "2.2.6.2, 7.5.3.4",
         "A tag fits the tag width the function may use (5 bits unless Extended Tag Field Enable is set)."),
    Rule("attr_ro", Group.REQUEST, "2.2.6.4, 7.5.3.4",
         "A device sets the Relaxed Ordering attribute only if Enable Relaxed Ordering is set in Device Control."),
    Rule("attr_ns", Group.REQUEST, "2.2.6.5, 7.5.3.4",
         "A device sets the No Snoop attribute only if Enable No Snoop is set in Device Control."),
    # completions
    Rule("cpl_unexpected", Group.COMPLETION, "2.3.2",
         "Every completion answers an outstanding request (same Requester ID and Tag)."),
    Rule("cpl_type", Group.COMPLETION, "2.2.9, 2.3.1",
         "A successful completion of a read carries data (CplD); completions of writes and completions with "
         "a status other than SC carry none (Cpl)."),
    Rule("cpl_status", Group.COMPLETION, "2.2.9, 2.3.1",
         "Configuration Request Retry Status (CRS) answers only configuration requests."),
    Rule("cpl_fields", Group.COMPLETION, "2.2.9",
         "A completion's TC and Attr equal those of its request."),
    Rule("cpl_byte_count", Group.COMPLETION, "2.2.9",
         "Byte Count is the number of bytes the request still owes, this completion included (4 for "
         "configuration and IO completions)."),
    Rule("cpl_lower_addr", Group.COMPLETION, "2.2.9",
         "Lower Address is address[6:0] of the completion's first byte (0 for completions of requests other "
         "than memory reads)."),
    Rule("cpl_overrun", Group.COMPLETION, "2.3.1.1",
         "The completions of a read carry exactly the requested data, no whole DWORD more."),
    Rule("cpl_rcb", Group.COMPLETION, "2.3.1.1",
         "A completion that does not finish its read ends on a Read Completion Boundary."),
    Rule("cpl_mps", Group.COMPLETION, "2.2.2",
         "A completion's payload is no larger than Max_Payload_Size."),
    Rule("cpl_timeout", Group.COMPLETION, "2.8",
         "No request waits longer than the completion timeout (the device's programmed value when the trace "
         "header carries it)."),
    Rule("cpl_error", Group.COMPLETION, "2.2.9, 2.3.1",
         "A request was answered with Unsupported Request or Completer Abort (legal; reported).", _W),
    Rule("tlp_poisoned", Group.COMPLETION, "2.7.2",
         "A TLP carries poisoned data (EP set; legal, the receiver must handle it; reported).", _W),
    Rule("cpl_open_end", Group.COMPLETION, "2.8",
         "A non-posted request is still unanswered when the trace ends (reported).", _W),
    # ordering
    Rule("ord_cpl_cpl", Group.ORDERING, "2.4.1 (D5b), 2.3.1.1",
         "The completions of one read arrive in increasing address order: a completion never arrives after "
         "a completion of higher address of the same request."),
    Rule("ord_ro_flag", Group.ORDERING, "2.4.1 (A2b), Appendix A (producer/consumer)",
         "A device's completion-record or interrupt write does not carry Relaxed Ordering: it would be "
         "permitted to pass the data writes it announces."),
    # NIC causality (this project's NIC: descriptor rings, completion records, MSI-X; needs the memory map)
    Rule("nic_desc_doorbell", Group.NIC, "device (rtl/nic_regs.vh)",
         "A descriptor read fetches, in ring order, only descriptors the host has posted (between the "
         "device's fetch position and the producer index last written to the queue's doorbell), and never "
         "runs past the ring's last entry (it wraps to entry 0 with a new read)."),
    Rule("nic_data_desc", Group.NIC, "device (rtl/nic_regs.vh)",
         "A packet data read lies within the buffer of a descriptor the device has fetched and not yet "
         "completed."),
    Rule("nic_cpl_data", Group.NIC, "device (rtl/nic_regs.vh)",
         "A completion record for descriptor k is written only after all data of k moved: TX reads of its "
         "buffer completed, RX writes of the recorded length issued."),
    Rule("nic_cpl_order", Group.NIC, "device (rtl/nic_regs.vh)",
         "Completion records of a queue are written in ring order, one per fetched descriptor."),
    Rule("nic_irq_cpl", Group.NIC, "device (rtl/nic_regs.vh)",
         "An interrupt announces something new since the previous one: a completion record, or an error "
         "(error completion, poisoned data, completion timeout, malformed descriptor)."),
)}

RULE_IDS = tuple(RULES)


# byte-enable arithmetic (2.2.5, 2.2.9) -----------------------------------------------------------

def lead0(be: int) -> int:
    """Disabled bytes before the first enabled byte of a DWORD (0 when none is enabled)."""
    for i in range(4):
        if be >> i & 1:
            return i
    return 0


def trail0(be: int) -> int:
    """Disabled bytes after the last enabled byte of a DWORD (0 when none is enabled)."""
    for i in range(3, -1, -1):
        if be >> i & 1:
            return 3 - i
    return 0


_LEAD0_L = [lead0(b) for b in range(16)]
_TRAIL0_L = [trail0(b) for b in range(16)]


def request_bytes(length: int, first_be: int, last_be: int) -> int:
    """Bytes a memory read asks for: a zero-length read (Length 1, First BE 0) is answered with 1 byte (2.2.9)."""
    if length == 1:
        if first_be == 0:
            return 1
        return 4 - _LEAD0_L[first_be & 15] - _TRAIL0_L[first_be & 15]
    return length * 4 - _LEAD0_L[first_be & 15] - _TRAIL0_L[last_be & 15]


def first_byte_offset(first_be: int) -> int:
    """Offset of the first requested byte from the DWORD-aligned address."""
    return lead0(first_be) if first_be else 0


CONTIG_FIRST = frozenset({0xF, 0xE, 0xC, 0x8})
CONTIG_LAST = frozenset({0x1, 0x3, 0x7, 0xF})

# the same as lookup tables over a 4-bit byte enable, for the vectorised checker
LEAD0 = np.array([lead0(b) for b in range(16)], dtype=np.int64)
TRAIL0 = np.array([trail0(b) for b in range(16)], dtype=np.int64)
CONTIG_FIRST_T = np.array([b in CONTIG_FIRST for b in range(16)], dtype=bool)
CONTIG_LAST_T = np.array([b in CONTIG_LAST for b in range(16)], dtype=bool)


def request_bytes_v(length: np.ndarray, fbe: np.ndarray, lbe: np.ndarray) -> np.ndarray:
    """``request_bytes`` element-wise."""
    one = np.where(fbe == 0, 1, 4 - LEAD0[fbe] - TRAIL0[fbe])
    return np.where(length == 1, one, length * 4 - LEAD0[fbe] - TRAIL0[lbe])


DEFAULT_TIMEOUT_NS = 50e6  # PCIe default completion timeout range tops out at 50 ms (2.8, Device Control 2)


def rules_markdown() -> str:
    """docs/rules.md: every rule with its group, severity, spec section and the sentence it enforces."""
    lines = ["# PCIe rules checked by `phantom check`", "",
             "Generated from `phantom/rules/spec.py` (`python -m phantom rules`; tests/test_rules.py keeps this file",
             "equal to the table). Section numbers: PCI Express Base Specification Rev. 5.0/6.0; sentences",
             "paraphrase the requirement. Errors make `phantom check` exit 1; warnings are reported only.",
             "`--waive RULE=REASON` counts a rule without failing and prints the reason (for artefacts of a model",
             "a user cannot fix); nothing is ever accepted silently.", ""]
    for g in Group:
        rows = [r for r in RULES.values() if r.group == g]
        lines += [f"## {g.value}", "", "| rule | severity | spec | enforces |", "| --- | --- | --- | --- |"]
        lines += [f"| `{r.id}` | {r.severity.name.lower()} | {r.spec} | {r.sentence} |" for r in rows]
        lines.append("")
    lines += ["## Not checked, and why", "",
              "- *A posted request does not pass a posted request* and *a completion does not pass a posted request*",
              "  (2.4.1 A2a, D2a) as timestamp comparisons: a trace records one link in arrival order, so no TLP can",
              "  be seen to pass another (passing happens inside a transmitter's queues). They could never fire on",
              "  a capture and were removed; what ordering leaves visible on a link is checked instead",
              "  (`ord_cpl_cpl`, `ord_ro_flag`), and the NIC rules check the producer/consumer chains end to end.",
              "- Byte count and lower address of completions with a status other than SC are not checked: PCIe",
              "  leaves them to the completer for error completions of memory reads.", ""]
    return "\n".join(lines)
