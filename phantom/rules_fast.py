"""The rule checker over columns: the same rules and counts as ``phantom.rules.Checker``, vectorised with numpy.

``Checker`` (one record at a time) is the reference and the one that runs live in testbenches; this module
checks whole files fast. tests/test_rules.py runs both on every clean and mutated trace and on random streams
and requires identical per-rule counts.

How the stateful rules become array operations:
* requests and completions are grouped by (requester ID, tag); each completion belongs to the latest request
  of its group before it;
* a request's deadline passes at the first record whose running-maximum arrival time exceeds its time plus
  the limit (a search in the prefix maximum); completions from then on are unexpected;
* within a request, completion k carries ``length*4`` bytes (less the first byte offset for k = 0); exclusive
  cumulative sums give the bytes still owed and the address of the first byte, so byte count, lower address,
  RCB and overrun are element-wise tests; the first completion that finishes the request (or an error status)
  ends it, and any later one is unexpected;
* ordering rules compare each record with the prefix maximum of posted-request times of its direction and TC.
The NIC descriptor rule needs descriptor payloads in order, so it walks only the descriptor completions and
packet data reads in a short Python loop.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from phantom.rules import Checker, Report, Violation, _Pending
from phantom.trace import CplStatus, Direction, SemClass, TlpType, TraceColumns

_T = TlpType
_CPL = [_T.Cpl, _T.CplD, _T.CplLk, _T.CplDLk]
_POSTED = [_T.MWr32, _T.MWr64, _T.Msg, _T.MsgD]
_MEM = [_T.MRd32, _T.MRd64, _T.MRdLk32, _T.MRdLk64, _T.MWr32, _T.MWr64, _T.FetchAdd32, _T.FetchAdd64,
        _T.Swap32, _T.Swap64, _T.CAS32, _T.CAS64]
_MEM32 = [_T.MRd32, _T.MWr32, _T.MRdLk32, _T.FetchAdd32, _T.Swap32, _T.CAS32]
_MEM64 = [_T.MRd64, _T.MWr64, _T.MRdLk64, _T.FetchAdd64, _T.Swap64, _T.CAS64]
_MEM_RD = [_T.MRd32, _T.MRd64, _T.MRdLk32, _T.MRdLk64]
_MEM_WR = [_T.MWr32, _T.MWr64]
_CFG_IO = [_T.CfgRd0, _T.CfgWr0, _T.CfgRd1, _T.CfgWr1, _T.IORd, _T.IOWr]
_IO = [_T.IORd, _T.IOWr]

# lookup tables over a 4-bit byte-enable value
_LEAD0 = np.array([0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0], dtype=np.int64)
_TRAIL0 = np.array([0, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)
_CONTIG_FIRST = np.zeros(16, bool)
_CONTIG_FIRST[[0xF, 0xE, 0xC, 0x8]] = True
_CONTIG_LAST = np.zeros(16, bool)
_CONTIG_LAST[[0x1, 0x3, 0x7, 0xF]] = True


def _isin(a: np.ndarray, types) -> np.ndarray:
    return np.isin(a, np.asarray([int(t) for t in types], dtype=a.dtype))


def _excl_cumsum_by_group(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of x restarting where start is True (x in group order)."""
    excl = np.cumsum(x) - x
    return excl - excl[start][np.cumsum(start) - 1]


class _Collector:
    """Counts violations; keeps the first few with their global record index."""

    def __init__(self, rep: Report, t: np.ndarray, nv: int, base: int):
        self.rep = rep
        self.t = t
        self.nv = nv      # virtual (carried) records at the front of the arrays
        self.base = base  # global index of the chunk's first real record

    def add(self, rule: str, mask_or_idx, msg) -> None:
        idx = np.flatnonzero(mask_or_idx) if getattr(mask_or_idx, "dtype", None) == bool else np.asarray(mask_or_idx)
        if len(idx) == 0:
            return
        self.rep.counts[rule] += int(len(idx))
        for i in np.sort(idx)[: self.rep.first_n]:
            self.rep.first.append(Violation(rule, self.base + int(i) - self.nv, int(self.t[i]), msg(int(i))))


def check_columns(tc: TraceColumns, *, timeout_ns: float = 50e6, first_n: int = 20, nic_rules: bool = True) -> Report:
    """Check a whole trace held as columns."""
    return check_chunks(tc.header, [tc], timeout_ns=timeout_ns, first_n=first_n, nic_rules=nic_rules)


def check_chunks(header, chunks, *, timeout_ns: float = 50e6, first_n: int = 20, nic_rules: bool = True) -> Report:
    """Check a trace given as consecutive column chunks; memory depends on the chunk size, not the trace length.

    The state between chunks is exactly the reference Checker's (outstanding requests with the bytes they
    still owe, the latest arrival time, posted-request time maxima, NIC counters and descriptor window).
    """
    state = Checker(header, timeout_ns=timeout_ns, first_n=first_n, nic_rules=nic_rules)
    for tc in chunks:
        _check_chunk(tc, state)
    rep = state.rep
    rep.first = sorted(rep.first, key=lambda v: (v.index, v.rule))[:first_n]
    return rep


def _check_chunk(tc: TraceColumns, S: Checker) -> None:
    h = S.h
    nr = len(tc)
    if nr == 0:
        return
    # carried outstanding requests become virtual records in front of the chunk
    pend = list(S.pending.items())
    nv = len(pend)
    vt = np.array([p.t_ps for _, p in pend], dtype=np.int64)

    def col(name, dtype, virtual):
        return np.concatenate([np.asarray(virtual, dtype=dtype), tc[name].astype(dtype)])

    t = col("t_ps", np.int64, vt)
    typ = col("type", np.int64, [int(p.type) for _, p in pend])
    dirs = col("dir", np.int64, [0] * nv)
    length = col("length", np.int64, [1] * nv)
    addr = col("address", np.uint64, [0] * nv)
    fbe = col("first_be", np.int64, [0] * nv) & 0xF
    lbe = col("last_be", np.int64, [0] * nv) & 0xF
    tag = col("tag", np.int64, [k[1] for k, _ in pend])
    rid = col("requester_id", np.int64, [k[0] for k, _ in pend])
    status = col("status", np.int64, [0] * nv)
    bc = col("byte_count", np.int64, [0] * nv)
    la = col("lower_address", np.int64, [0] * nv)
    tcls = col("tc", np.int64, [p.tc for _, p in pend])
    attr = col("attr", np.int64, [p.attr for _, p in pend])
    cls = col("cls", np.int64, [int(p.cls) for _, p in pend])
    n = nv + nr
    real = np.arange(n) >= nv
    ro = (attr & 2) != 0
    V = _Collector(S.rep, t, nv, S.index)
    a_lo = (addr & np.uint64(0xFFF)).astype(np.int64)

    is_cpl = _isin(typ, _CPL)
    is_req = ~is_cpl
    posted = _isin(typ, _POSTED)
    nonposted = is_req & ~posted
    has_data = (typ & 0x40) != 0
    rreq = is_req & real

    # request rules -------------------------------------------------------------------------
    V.add("len_range", rreq & ((length < 1) | (length > 1024)), lambda i: f"{TlpType(int(typ[i])).name} length {length[i]} DW")
    clen = np.clip(length, 1, 1024)
    is_mem = rreq & _isin(typ, _MEM)
    is_io = rreq & _isin(typ, _IO)
    V.add("addr_align", (is_mem | is_io) & ((addr & np.uint64(3)) != 0),
          lambda i: f"address {int(addr[i]):#x} not DWORD aligned")
    V.add("mem_4kb", is_mem & (a_lo + clen * 4 > 0x1000),
          lambda i: f"{TlpType(int(typ[i])).name} {int(addr[i]):#x}+{clen[i] * 4} crosses a 4 KB boundary")
    above = addr >= np.uint64(1 << 32)
    V.add("addr_fmt", is_mem & ((_isin(typ, _MEM32) & above) | (_isin(typ, _MEM64) & ~above)),
          lambda i: f"{TlpType(int(typ[i])).name} header with address {int(addr[i]):#x}")
    one = clen == 1
    V.add("be_1dw", is_mem & one & (lbe != 0), lambda i: f"1-DW request with last BE {lbe[i]:#x}")
    multi_bad = is_mem & ~one & ((fbe == 0) | (lbe == 0))
    V.add("be_multi", multi_bad, lambda i: f"{clen[i]}-DW request with BEs {fbe[i]:#x}/{lbe[i]:#x}")
    V.add("be_contig", is_mem & ~one & ~multi_bad & (clen >= 3) & (~_CONTIG_FIRST[fbe] | ~_CONTIG_LAST[lbe]),
          lambda i: f"{clen[i]}-DW request with non-contiguous BEs {fbe[i]:#x}/{lbe[i]:#x}")
    V.add("wr_mps", is_mem & _isin(typ, _MEM_WR) & (clen * 4 > h.mps),
          lambda i: f"write of {clen[i] * 4} B exceeds MPS {h.mps}")
    V.add("rd_mrrs", is_mem & _isin(typ, _MEM_RD) & (dirs == Direction.UP) & (clen * 4 > h.mrrs),
          lambda i: f"read of {clen[i] * 4} B exceeds MRRS {h.mrrs}")
    V.add("cfg_io_len", rreq & _isin(typ, _CFG_IO) & ((clen != 1) | (lbe != 0)),
          lambda i: f"{TlpType(int(typ[i])).name} length {clen[i]} last BE {lbe[i]:#x}")
    V.add("tag_width", nonposted & real & (tag >= (1 << h.tag_width)),
          lambda i: f"tag {tag[i]} needs more than {h.tag_width} bits")
    V.add("len_range", is_cpl & has_data & ((length < 1) | (length > 1024)),
          lambda i: f"{TlpType(int(typ[i])).name} length {length[i]} DW")
    V.add("cpl_mps", is_cpl & has_data & (length * 4 > h.mps),
          lambda i: f"completion payload {length[i] * 4} B exceeds MPS {h.mps}")

    # ordering against posted requests, per (direction, TC), continuing the carried maxima ------
    grp = dirs * 8 + tcls
    for g in np.unique(grp[real]):
        d_, tc_ = divmod(int(g), 8)
        init = S.max_posted_t.get((d_, tc_), -1)
        in_g = (grp == g) & real
        P = np.flatnonzero(in_g & posted)
        pm = np.maximum.accumulate(np.concatenate([[init], t[P]]))  # pm[k]: max over init and first k posted
        V.add("ord_posted", P[~ro[P] & (t[P] < pm[:-1])],
              lambda i: f"posted request arrived at {t[i]} ps, before an earlier posted request")
        C = np.flatnonzero(in_g & is_cpl & ~ro)
        k = np.searchsorted(P, C)
        V.add("ord_cpl_posted", C[t[C] < pm[k]],
              lambda i: f"completion arrived at {t[i]} ps, before an earlier posted request")
        if len(P):
            S.max_posted_t[(d_, tc_)] = int(pm[-1])

    # request/completion matching -----------------------------------------------------------
    ev = np.flatnonzero(nonposted | is_cpl)
    key = rid[ev] * 1024 + tag[ev]
    order = np.lexsort((ev, key))
    ev, key = ev[order], key[order]
    m = len(ev)
    pos = np.arange(m)
    gstart = np.ones(m, bool)
    gstart[1:] = key[1:] != key[:-1]
    gid = np.cumsum(gstart) - 1
    ev_req = nonposted[ev]
    # latest request at or before each event; groups are contiguous, so it is this group's if it is in it
    last_req_pos = np.maximum.accumulate(np.where(ev_req, pos, -1))
    valid_fill = (last_req_pos >= 0) & (gid[np.maximum(last_req_pos, 0)] == gid)
    owner_pos = np.where(valid_fill, last_req_pos, -1)
    nxt = np.full(m, n, dtype=np.int64)
    req_positions = pos[ev_req]
    if len(req_positions):
        same = np.zeros(len(req_positions), bool)
        same[:-1] = gid[req_positions[:-1]] == gid[req_positions[1:]]
        following = np.append(req_positions[1:], req_positions[-1])
        nxt[req_positions] = np.where(same, ev[following], n)
    # deadlines: first later record whose running-maximum arrival time passes the request's time + limit
    PM = np.maximum.accumulate(np.where(real, np.maximum(t, S.now), S.now))
    req_idx = ev[ev_req]
    e = np.maximum(np.searchsorted(PM, t[req_idx] + S.timeout_ps, side="right"), req_idx + 1)
    expire = np.full(m, n, dtype=np.int64)
    expire[ev_req] = e

    cpl_pos = pos[~ev_req]
    cpl_idx = ev[cpl_pos]
    own = owner_pos[cpl_pos]
    has_owner = own >= 0
    own_c = np.maximum(own, 0)
    in_time = has_owner & (cpl_idx < expire[own_c])
    cand = cpl_idx[in_time]
    r_pos = own_c[in_time]
    r_idx = ev[r_pos]
    virt_r = r_idx < nv
    r_memrd = _isin(typ[r_idx], _MEM_RD)
    r_fbe, r_lbe, r_len = fbe[r_idx], lbe[r_idx], clen[r_idx]
    owed0 = np.where(r_len == 1, np.where(r_fbe == 0, 1, 4 - _LEAD0[r_fbe] - _TRAIL0[r_fbe]),
                     r_len * 4 - _LEAD0[r_fbe] - _TRAIL0[r_lbe])
    addr0 = (addr[r_idx] & np.uint64((1 << 62) - 1)).astype(np.int64) + np.where(r_fbe != 0, _LEAD0[r_fbe], 0)
    owed0 = np.where(r_memrd, owed0, 4)
    addr0 = np.where(r_memrd, addr0, 0)
    if nv:  # carried requests continue from what they still owe
        v_rem = np.array([p.remaining for _, p in pend], dtype=np.int64)
        v_addr = np.array([p.addr for _, p in pend], dtype=np.int64)
        v_mem = np.array([p.is_mem for _, p in pend], dtype=bool)
        owed0 = np.where(virt_r, v_rem[np.minimum(r_idx, nv - 1)], owed0)
        addr0 = np.where(virt_r, v_addr[np.minimum(r_idx, nv - 1)], addr0)
        r_memrd = np.where(virt_r, v_mem[np.minimum(r_idx, nv - 1)], r_memrd)
    first_of_r = np.ones(len(cand), bool)
    first_of_r[1:] = r_pos[1:] != r_pos[:-1]
    carried = length[cand] * 4 - np.where(first_of_r, addr0 & 3, 0)
    before = _excl_cumsum_by_group(carried, first_of_r)
    remaining = owed0 - before
    a_k = addr0 + before
    err = status[cand] != CplStatus.SC
    ends = err | ~r_memrd | (carried >= remaining)
    ended_before = _excl_cumsum_by_group(ends.astype(np.int64), first_of_r) > 0
    matched = ~ended_before
    finishing = matched & ends
    V.add("cpl_unexpected", np.concatenate([cpl_idx[~in_time], cand[ended_before]]),
          lambda i: f"no outstanding request for requester {rid[i]:#06x} tag {tag[i]}")
    mc = cand[matched]
    mr = r_idx[matched]
    mpos = r_pos[matched]
    V.add("cpl_fields", mc[(tcls[mc] != tcls[mr]) | (attr[mc] != attr[mr])],
          lambda i: "TC/Attr differ from the request's")
    prev_t = np.concatenate([[-1], t[mc][:-1]])
    first_m = np.ones(len(mc), bool)
    first_m[1:] = mpos[1:] != mpos[:-1]
    v_last = np.array([p.last_t for _, p in pend] + [-1], dtype=np.int64)
    prev_t[first_m] = np.where(mr[first_m] < nv, v_last[np.minimum(mr[first_m], nv)], -1)
    V.add("ord_cpl_cpl", mc[t[mc] < prev_t], lambda i: "completion arrived before the previous one of its request")
    chk = matched & ~err & r_memrd
    V.add("cpl_byte_count", cand[chk & (bc[cand] != remaining)], lambda i: f"byte count {bc[i]} differs from bytes owed")
    V.add("cpl_lower_addr", cand[chk & (la[cand] != (a_k & 0x7F))], lambda i: f"lower address {la[i]:#x} wrong")
    fin = chk & (carried >= remaining)
    V.add("cpl_overrun", cand[fin & (carried - remaining >= 4)], lambda i: "more data carried than owed")
    V.add("cpl_rcb", cand[chk & ~fin & (((a_k + carried) % h.rcb) != 0)],
          lambda i: f"partial completion does not end on a {h.rcb} B boundary")
    finished_r = np.zeros(m, bool)
    finished_r[r_pos[finishing]] = True
    rp = pos[ev_req]
    pending_at_next = ~finished_r[rp] & (expire[rp] > nxt[rp]) & (nxt[rp] < n)
    V.add("tag_dup", nxt[rp][pending_at_next], lambda i: f"tag {tag[i]} reused while a request is outstanding")
    timed_out = ~finished_r[rp] & (expire[rp] <= nxt[rp]) & (expire[rp] < n)
    V.add("cpl_timeout", expire[rp][timed_out], lambda i: "request unanswered past the completion timeout")

    # NIC causality -------------------------------------------------------------------------
    if S.nic_rules:
        _nic(tc, V, S, rreq, cls, cand, r_idx, finishing & ~err & r_memrd, err, matched, n, nv)

    # carry the state into the next chunk ---------------------------------------------------
    still = ~finished_r[rp] & (expire[rp] == n) & (nxt[rp] == n)
    sum_carried = np.zeros(m, np.int64)
    np.add.at(sum_carried, r_pos[matched], carried[matched])
    last_t = np.full(m, -1, np.int64)  # arrival time of each request's latest matched completion
    is_last = np.ones(len(mpos), bool)
    is_last[:-1] = mpos[:-1] != mpos[1:]
    last_t[mpos[is_last]] = t[mc[is_last]]
    new_pending = {}
    deadlines = []
    for q in rp[still]:
        i = int(ev[q])
        k = (int(rid[i]), int(tag[i]))
        if i < nv:
            old = S.pending[k]
            base_rem, base_addr, seq, last = old.remaining, old.addr, old.seq, old.last_t
            memrd, ptype = old.is_mem, old.type
        else:
            memrd = bool(_isin(typ[i:i + 1], _MEM_RD)[0])
            f, l_, L = int(fbe[i]), int(lbe[i]), int(clen[i])
            if memrd:
                base_rem = (1 if f == 0 else 4 - int(_LEAD0[f]) - int(_TRAIL0[f])) if L == 1 else \
                    L * 4 - int(_LEAD0[f]) - int(_TRAIL0[l_])
                base_addr = int(addr[i]) + (int(_LEAD0[f]) if f else 0)
            else:
                base_rem, base_addr = 4, 0
            seq, last, ptype = S.index + i - nv, -1, TlpType(int(typ[i]))
        done = int(sum_carried[q])
        p = _Pending(seq, int(t[i]), ptype, int(tcls[i]), int(attr[i]), SemClass(int(cls[i])),
                     base_rem - done, base_addr + done, memrd, int(last_t[q]) if last_t[q] >= 0 else last)
        new_pending[k] = p
        deadlines.append((p.t_ps, p.seq, k))
    S.pending = new_pending
    heapq.heapify(deadlines)
    S._deadlines = deadlines
    S.now = int(PM[-1])
    S.index += nr
    S.rep.total += nr
    S.rep.first = sorted(S.rep.first, key=lambda v: (v.index, v.rule))[: S.rep.first_n]


def _nic(tc, V, S, rreq, cls, cand, r_idx, ok_fin, err, matched, n, nv) -> None:
    def cum(idx: np.ndarray) -> np.ndarray:
        """Count of events at or before each record."""
        c = np.zeros(n + 1, np.int64)
        np.add.at(c, np.asarray(idx, dtype=np.int64) + 1, 1)
        return np.cumsum(c)[1:]

    req_cls = np.where(rreq, cls, 255)
    door = np.flatnonzero(req_cls == SemClass.DOORBELL)
    first_door = -1 if S.doorbells else (door[0] if len(door) else n)
    desc_reads = np.flatnonzero(req_cls == SemClass.DESC_READ)
    V.add("nic_desc_doorbell", desc_reads[desc_reads < first_door], lambda i: "descriptor read before any doorbell")
    fin_idx, fin_req = cand[ok_fin], r_idx[ok_fin]
    data_done = fin_idx[cls[fin_req] == SemClass.DATA_READ]
    data_units = S.data_units + cum(np.concatenate([np.flatnonzero(req_cls == SemClass.DATA_WRITE), data_done]))
    cplw = np.flatnonzero(req_cls == SemClass.CPL_WRITE)
    cw = S.cpl_writes + cum(cplw)
    V.add("nic_cpl_data", cplw[cw[cplw] > data_units[cplw]], lambda i: "more completion records than data transfers")
    irq = np.flatnonzero(req_cls == SemClass.INTERRUPT)
    errors = S.errors_seen + cum(cand[matched & err])
    iq = S.interrupts + cum(irq)
    V.add("nic_irq_cpl", irq[iq[irq] > cw[irq] + errors[irq]], lambda i: "interrupt announces nothing")
    S.doorbells += len(door)
    S.data_units, S.cpl_writes, S.errors_seen, S.interrupts = int(data_units[-1]), int(cw[-1]), int(errors[-1]), int(iq[-1])
    # descriptor window walk: descriptor completions and data reads in trace order
    desc_fin = fin_idx[cls[fin_req] == SemClass.DESC_READ]
    data_reads = np.flatnonzero(req_cls == SemClass.DATA_READ)
    events = sorted([(int(i), 0) for i in desc_fin] + [(int(i), 1) for i in data_reads])
    off, present, pdata = tc.payload_off, tc.payload_present, tc.payload_data
    off0 = int(off[0]) if len(off) else 0
    address = tc["address"]
    bad = []
    for i, kind in events:
        j = i - nv  # index within the chunk's own columns
        if kind == 0:
            S.desc_done += 1
            lo, hi = int(off[j]) - off0, int(off[j + 1]) - off0
            if present[j] and hi - lo >= 12:
                p = pdata[lo:hi].tobytes()
                for o in range(0, len(p) - 11, 16):
                    a, ln = struct.unpack_from("<QI", p, o)
                    S.descs[a] = ln
                    if len(S.descs) > Checker.DESC_WINDOW:
                        S.descs.popitem(last=False)
        else:
            a = int(address[j])
            if S.desc_done == 0 or (S.descs and not S._in_descriptor(a)):
                bad.append(i)
    V.add("nic_data_desc", np.asarray(bad, dtype=np.int64), lambda i: "packet data read outside every descriptor read")
