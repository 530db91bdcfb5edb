"""Rule checker: a mutation test per rule on a real captured trace, clean traces, and a property test."""

import copy
import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from phantom.rules import RULES, Checker, check_records
from phantom.rules_fast import check_chunks, check_columns
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceColumns, TraceHeader, read_trace
from tb.runner import run

MS = 1_000_000_000  # ps


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A real capture: the mixed scenario, shortened, through Verilator."""
    d = tmp_path_factory.mktemp("cap")
    trace = d / "mixed.jsonl.gz"
    run("run_scenario", sim="verilator", data_width=256, module="test_scenario", test_dir=d,
        env={"NIC_SCENARIO": "mixed", "NIC_FRAMES": "80", "NIC_TRACE": str(trace), "NIC_PROGRESS": "0"})
    return read_trace(trace)


def chunked(h, recs, size):
    return [TraceColumns.from_records(h, recs[i:i + size]) for i in range(0, len(recs), size)]


def rules_hit(header, recs):
    return check_records(header, recs).violated()


def reads_with_cpls(recs, n_cpl=None, cls=None):
    """(request index, [completion indices]) for device memory reads."""
    out, open_ = [], {}
    for i, r in enumerate(recs):
        if r.type.is_mem_read:
            open_[(r.requester_id, r.tag)] = (i, [])
        elif r.type.is_completion and (r.requester_id, r.tag) in open_:
            open_[(r.requester_id, r.tag)][1].append(i)
            if r.byte_count <= r.length * 4 - (r.lower_address & 3):
                i0, cl = open_.pop((r.requester_id, r.tag))
                if (n_cpl is None or len(cl) == n_cpl) and (cls is None or recs[i0].cls == cls):
                    out.append((i0, cl))
    return out


def first(recs, pred):
    return next(i for i, r in enumerate(recs) if pred(r))


def up_write(r, cls=SemClass.DATA_WRITE):
    return r.dir == Direction.UP and r.type.is_mem_write and r.cls == cls


# each mutation edits a deep copy of the clean trace to break exactly one rule
def m_len_range(h, R):
    i = first(R, lambda r: r.dir == Direction.DOWN and r.type.is_mem_write and r.length == 1)
    R[i].length = 0


def m_addr_align(h, R):
    i = first(R, lambda r: r.dir == Direction.DOWN and r.type.is_mem_write and r.cls == SemClass.MMIO_WRITE)
    R[i].address |= 2


def m_mem_4kb(h, R):
    i = first(R, lambda r: up_write(r) and r.length >= 2)
    R[i].address = (R[i].address & ~0xFFF) | 0xFFC


def m_wr_mps(h, R):
    i = first(R, lambda r: up_write(r) and (r.address & 0xFFF) + h.mps + 4 <= 4096)
    R[i].length = h.mps // 4 + 1
    R[i].payload_len = R[i].length * 4


def m_rd_mrrs(h, R):
    r = dataclasses.replace(R[first(R, lambda r: r.dir == Direction.UP and r.type.is_mem_read)])
    r.length, r.address, r.tag, r.cls, r.t_ps = h.mrrs // 4 + 1, 0x10000, 7, SemClass.OTHER, R[-1].t_ps
    R.append(r)


def m_be_1dw(h, R):
    i = first(R, lambda r: r.dir == Direction.DOWN and r.type.is_mem_write and r.length == 1)
    R[i].last_be = 0xF


def m_be_multi(h, R):
    i = first(R, lambda r: up_write(r) and r.length >= 2)
    R[i].last_be = 0


def m_be_contig(h, R):
    i = first(R, lambda r: up_write(r) and r.length >= 3)
    R[i].first_be = 0x5


def m_addr_fmt(h, R):
    i = first(R, lambda r: up_write(r))
    R[i].type = TlpType.MWr64


def m_cfg_io_len(h, R):
    i = first(R, lambda r: r.type == TlpType.CfgRd0)
    R[i].length = 2


def m_tag_dup(h, R):
    i, _ = reads_with_cpls(R, cls=SemClass.DATA_READ)[0]
    R.insert(i + 1, dataclasses.replace(R[i]))


def m_tag_width(h, R):
    i, cl = reads_with_cpls(R, cls=SemClass.DATA_READ)[0]
    for k in [i] + cl:
        R[k].tag = 40


def m_cpl_unexpected(h, R):
    c = dataclasses.replace(R[reads_with_cpls(R)[0][1][0]])
    c.tag, c.t_ps = 29, R[-1].t_ps
    R.append(c)


def m_cpl_fields(h, R):
    _, cl = reads_with_cpls(R)[0]
    R[cl[0]].tc = 1


def m_cpl_byte_count(h, R):
    _, cl = reads_with_cpls(R)[0]
    R[cl[-1]].byte_count += 4


def m_cpl_lower_addr(h, R):
    _, cl = reads_with_cpls(R)[0]
    R[cl[0]].lower_address ^= 0x4


def m_cpl_overrun(h, R):
    _, cl = reads_with_cpls(R, n_cpl=1, cls=SemClass.DESC_READ)[0]
    R[cl[0]].length += 1
    R[cl[0]].payload_len += 4


def m_cpl_rcb(h, R):
    for _, cl in reads_with_cpls(R, n_cpl=2):
        a, b = R[cl[0]], R[cl[1]]
        if b.length * 4 < h.mps and a.length > 1:
            a.length -= 1
            b.length += 1
            b.byte_count += 4
            b.lower_address = (b.lower_address - 4) & 0x7F
            return
    raise AssertionError("no two-completion read to mutate")


def m_cpl_mps(h, R):
    for _, cl in reads_with_cpls(R, n_cpl=2):
        a, b = R[cl[0]], R[cl[1]]
        if (a.length + b.length) * 4 > h.mps:
            a.length += b.length
            a.payload_len = a.length * 4
            del R[cl[1]]
            return
    raise AssertionError("no read to merge")


def m_cpl_timeout(h, R):
    # a read that is never answered, then traffic 60 ms later
    r = dataclasses.replace(R[first(R, lambda r: r.dir == Direction.UP and r.type.is_mem_read)])
    r.address, r.tag, r.cls, r.t_ps = 0x10000, 7, SemClass.OTHER, R[-1].t_ps
    w = dataclasses.replace(R[first(R, lambda r: r.cls == SemClass.MMIO_WRITE)])
    w.t_ps = r.t_ps + 60 * MS
    R.extend([r, w])


def m_ord_posted(h, R):
    for i in range(1, len(R)):
        a, b = R[i - 1], R[i]
        if a.dir == b.dir == Direction.UP and a.type.is_posted and b.type.is_posted and b.t_ps > a.t_ps:
            b.t_ps = a.t_ps - 1
            return
    raise AssertionError("no posted pair")


def m_ord_cpl_posted(h, R):
    last_posted = None
    for r in R:
        if r.dir == Direction.UP and r.type.is_posted:
            last_posted = r.t_ps
        elif r.dir == Direction.UP and r.type.is_completion and last_posted is not None and r.t_ps > last_posted:
            r.t_ps = last_posted - 1
            return
    raise AssertionError("no completion after a posted write")


def m_ord_cpl_cpl(h, R):
    for _, cl in reads_with_cpls(R, n_cpl=2):
        a, b = R[cl[0]], R[cl[1]]
        down_posted = max((r.t_ps for r in R[:cl[1]] if r.dir == Direction.DOWN and r.type.is_posted), default=-1)
        if a.t_ps - 1 > down_posted:
            b.t_ps = a.t_ps - 1
            return
    raise AssertionError("no two-completion read")


def m_nic_desc_doorbell(h, R):
    for r in R:
        if r.cls == SemClass.DOORBELL:
            r.cls = SemClass.MMIO_WRITE


def m_nic_data_desc(h, R):
    i = first(R, lambda r: r.cls == SemClass.DATA_READ)
    R[i].address += 0x100000


def m_nic_cpl_data(h, R):
    c = dataclasses.replace(R[first(R, lambda r: r.cls == SemClass.CPL_WRITE)])
    c.t_ps = R[0].t_ps
    R.insert(0, c)


def m_nic_irq_cpl(h, R):
    c = dataclasses.replace(R[first(R, lambda r: r.cls == SemClass.INTERRUPT)])
    c.t_ps = R[0].t_ps
    R.insert(0, c)


MUTATIONS = {name[2:]: fn for name, fn in globals().items() if name.startswith("m_")}


def test_every_rule_has_a_mutation():
    assert set(MUTATIONS) == set(RULES)


@pytest.mark.sim  # uses a capture from the simulator
def test_captured_trace_is_clean(captured):
    h, recs = captured
    rep = check_records(h, recs)
    assert rep.total == len(recs) > 500
    assert rep.ok and not rep.violated(), rep.format()


@pytest.mark.sim  # uses a capture from the simulator
@pytest.mark.parametrize("rule", sorted(RULES))
def test_mutation_caught(captured, rule):
    h, clean = captured
    recs = copy.deepcopy(clean)
    MUTATIONS[rule](h, recs)
    hit = rules_hit(h, recs)
    assert hit == {rule}, f"injected {rule}, checker reported {sorted(hit)}"
    # the columnar checker counts exactly what the per-record one counts, whole or in chunks
    ref = check_records(h, recs).counts
    assert check_columns(TraceColumns.from_records(h, recs)).counts == ref
    assert check_chunks(h, chunked(h, recs, 97)).counts == ref


@pytest.mark.sim  # uses a capture from the simulator
def test_report_names_first_offender(captured):
    h, clean = captured
    recs = copy.deepcopy(clean)
    m_be_1dw(h, recs)
    rep = check_records(h, recs, first_n=3)
    assert rep.first and rep.first[0].rule == "be_1dw"
    assert recs[rep.first[0].index].last_be == 0xF
    assert rep.to_json()["rules"]["be_1dw"]["count"] == 1


# property test: legal request/completion streams raise nothing ---------------------------------
H = TraceHeader(mps=256, mrrs=512, rcb=64)


@st.composite
def legal_stream(draw):
    """Device reads split at MRRS/4 KB, RC completions split at RCB/MPS, posted writes split at MPS/4 KB."""
    recs, t, tag = [], 0, 0
    for _ in range(draw(st.integers(1, 12))):
        addr = draw(st.integers(0, (1 << 20) - 1)) * 4
        length = draw(st.integers(1, 3000))
        write = draw(st.booleans())
        while length > 0:
            n = min(length, (H.mrrs if not write else H.mps), 0x1000 - (addr & 0xFFF))
            dw = (n + 3) // 4
            lbe = (0xF >> ((4 - n % 4) % 4)) if dw > 1 else 0
            fbe = 0xF if dw > 1 else (0xF >> ((4 - n % 4) % 4))
            t += draw(st.integers(1, 5000))
            typ = TlpType.MWr32 if write else TlpType.MRd32
            recs.append(TlpRecord(t_ps=t, dir=Direction.UP, type=typ, length=dw, address=addr, first_be=fbe,
                                  last_be=lbe, tag=tag, requester_id=0x100, payload_len=dw * 4 if write else 0))
            if not write:
                a, owed = addr, n
                while owed > 0:
                    room = H.mps - (a % 64 if a % 64 else 0) if owed > H.mps else owed
                    chunk = min(owed, room)
                    cdw = (chunk + (a & 3) + 3) // 4
                    t += draw(st.integers(1, 5000))
                    recs.append(TlpRecord(t_ps=t, dir=Direction.DOWN, type=TlpType.CplD, length=cdw, tag=tag,
                                          requester_id=0x100, byte_count=owed, lower_address=a & 0x7F,
                                          payload_len=cdw * 4, status=CplStatus.SC))
                    owed -= chunk
                    a += chunk
                tag = (tag + 1) % 32
            addr += n
            length -= n
    for i, r in enumerate(recs):
        r.seq = i
    return recs


@settings(max_examples=150, deadline=None)
@given(legal_stream())
def test_no_false_positives(recs):
    rep = Checker(H, nic_rules=False).feed_all(recs)
    assert not rep.violated(), rep.format()


@pytest.mark.sim  # uses a capture from the simulator
def test_columnar_equals_reference_on_capture(captured):
    h, recs = captured
    assert check_columns(TraceColumns.from_records(h, recs)).counts == check_records(h, recs).counts


_TYPES = [TlpType.MRd32, TlpType.MRd64, TlpType.MWr32, TlpType.MWr64, TlpType.CplD, TlpType.Cpl, TlpType.CfgRd0,
          TlpType.IORd, TlpType.MsgD, TlpType.FetchAdd32]


@st.composite
def messy_stream(draw):
    """Arbitrary, mostly illegal streams: every rule gets exercised, so both checkers must agree on all."""
    n = draw(st.integers(0, 60))
    recs, t = [], 0
    for i in range(n):
        t += draw(st.integers(-2000, 20000))
        recs.append(TlpRecord(
            seq=i, t_ps=max(t, 0), dir=Direction(draw(st.integers(0, 1))), type=draw(st.sampled_from(_TYPES)),
            length=draw(st.sampled_from([0, 1, 2, 3, 4, 16, 64, 128, 129, 1024, 1100])),
            address=draw(st.sampled_from([0, 4, 6, 0xFFC, 0x1000, 0x1040, 0x2FF0, 1 << 33, 0xFFFFFFFC])),
            first_be=draw(st.integers(0, 15)), last_be=draw(st.integers(0, 15)), tag=draw(st.sampled_from([0, 1, 2, 3, 33])),
            requester_id=draw(st.sampled_from([0x100, 0x0])),
            status=draw(st.sampled_from([CplStatus.SC, CplStatus.SC, CplStatus.SC, CplStatus.UR])),
            byte_count=draw(st.sampled_from([4, 16, 64, 256, 512, 4096])), lower_address=draw(st.integers(0, 127)),
            tc=draw(st.integers(0, 1)), attr=draw(st.integers(0, 3)),
            cls=draw(st.sampled_from(list(SemClass))),
            payload=draw(st.sampled_from([None, b"", bytes(16), (0x1040).to_bytes(8, "little") + (64).to_bytes(4, "little") + bytes(4)])),
        ))
    return recs


@settings(max_examples=400, deadline=None)
@given(messy_stream(), st.sampled_from([10.0, 50e6]), st.integers(1, 12))
def test_columnar_equals_reference_on_random_streams(recs, timeout_ns, chunk):
    h = TraceHeader(mps=128, mrrs=256, rcb=64)
    ref = Checker(h, timeout_ns=timeout_ns).feed_all(recs)
    fast = check_columns(TraceColumns.from_records(h, recs), timeout_ns=timeout_ns)
    assert fast.counts == ref.counts
    assert check_chunks(h, chunked(h, recs, chunk), timeout_ns=timeout_ns).counts == ref.counts
    # the first offenders listed are the same records
    assert [v.index for v in fast.first] == sorted(v.index for v in ref.first)
