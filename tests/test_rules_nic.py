"""The NIC causality machine (phantom.rules.nic) on small conversations written out by hand: the boundaries of
its timeout, quarantine and interrupt accounting, queue resets, completion-ring slots, both checkers alike.

Each conversation is legal PCIe built by a tiny host/device script (``Conv``); a test changes one thing and the
NIC rule that must (or must not) fire is asserted on the reference checker, the columnar one and a chunked run.
"""

import struct

import pytest

from phantom.memmap import Region, RegionKind
from phantom.rules import RULES, check_records
from phantom.rules.columnar import check_chunks, check_columns
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceColumns, TraceHeader

US = 1_000_000          # ps
BAR = 0x1_0000_0000
TX_RING, RX_RING = 0x2_0000_0000, 0x2_0001_0000
TX_CPL, RX_CPL = 0x2_0002_0000, 0x2_0003_0000
TX_BUF, RX_BUF = 0x2_0010_0000, 0x2_0020_0000
MSIX = 0xFEE0_0000
DB = {"tx": BAR + 0x100, "rx": BAR + 0x140}
QCTRL = {"tx": BAR + 0x118, "rx": BAR + 0x158}
ENTRIES = 16
DEV, HOST = 0x0100, 0x0000


def header(timeout_ns=20_000.0, tag_width=8, tag_hold_ns=None, cpl_rings=True):
    regions = [Region(BAR, 0x10000, RegionKind.BAR), Region(TX_RING, ENTRIES * 16, RegionKind.TX_RING),
               Region(RX_RING, ENTRIES * 16, RegionKind.RX_RING), Region(TX_BUF, 0x10000, RegionKind.TX_DATA),
               Region(RX_BUF, 0x10000, RegionKind.RX_DATA), Region(MSIX, 4, RegionKind.MSIX),
               Region(DB["tx"], 4, RegionKind.TX_DOORBELL), Region(DB["rx"], 4, RegionKind.RX_DOORBELL),
               Region(QCTRL["tx"], 4, RegionKind.TX_QCTRL), Region(QCTRL["rx"], 4, RegionKind.RX_QCTRL)]
    if cpl_rings:
        regions += [Region(TX_CPL, ENTRIES * 16, RegionKind.TX_CPL_RING),
                    Region(RX_CPL, ENTRIES * 16, RegionKind.RX_CPL_RING)]
    dev = {"tag_hold_ns": tag_hold_ns} if tag_hold_ns is not None else {}
    return TraceHeader(mps=256, mrrs=512, rcb=64, tag_width=tag_width, cpl_timeout_ns=timeout_ns,
                       memory_map=[r.to_json() for r in regions], device=dev)


class Conv:
    """A legal conversation, record by record (times in ps, strictly increasing unless given)."""

    def __init__(self, h):
        self.h = h
        self.recs: list[TlpRecord] = []
        self.t = 0
        self.tag = 0
        self.cpl_slot = {"tx": 0, "rx": 0}
        self.lap = {"tx": 0, "rx": 0}

    def _add(self, dt, **kw):
        self.t += dt
        r = TlpRecord(seq=len(self.recs), t_ps=self.t, **kw)
        self.recs.append(r)
        return r

    def host_write(self, addr, value, dt=50_000):
        return self._add(dt, dir=Direction.DOWN, type=TlpType.MWr64, length=1, address=addr, first_be=0xF,
                         requester_id=HOST, payload_len=4, payload=struct.pack("<I", value),
                         cls=SemClass.DOORBELL if addr in DB.values() else SemClass.MMIO_WRITE)

    def doorbell(self, q, prod, dt=50_000):
        return self.host_write(DB[q], prod, dt)

    def read(self, addr, nbytes, cls, dt=20_000, tag=None):
        tag = self.tag if tag is None else tag
        self.tag = (self.tag + 1) % (1 << self.h.tag_width)
        dw = nbytes // 4
        self._add(dt, dir=Direction.UP, type=TlpType.MRd64, length=dw, address=addr, first_be=0xF,
                  last_be=0xF if dw > 1 else 0, tag=tag, requester_id=DEV, cls=cls)
        return tag

    def complete(self, tag, payload: bytes, dt=500_000, status=CplStatus.SC):
        n = len(payload)
        if status != CplStatus.SC:
            return self._add(dt, dir=Direction.DOWN, type=TlpType.Cpl, tag=tag, requester_id=DEV, completer_id=HOST,
                             status=status, byte_count=n, cls=SemClass.COMPLETION)
        return self._add(dt, dir=Direction.DOWN, type=TlpType.CplD, length=n // 4, tag=tag, requester_id=DEV,
                         completer_id=HOST, byte_count=n, payload_len=n, payload=payload, cls=SemClass.COMPLETION)

    def fetch(self, q, start, descs, dt=20_000):
        """A descriptor read of len(descs) entries from ring index start, answered with their bytes."""
        ring = TX_RING if q == "tx" else RX_RING
        tag = self.read(ring + start * 16, 16 * len(descs), SemClass.DESC_READ, dt)
        self.complete(tag, b"".join(struct.pack("<QIxxxx", a, n) for a, n in descs))

    def tx_data(self, addr, n):
        tag = self.read(addr, n, SemClass.DATA_READ)
        self.complete(tag, bytes(n))

    def rx_data(self, addr, n, dt=20_000):
        self._add(dt, dir=Direction.UP, type=TlpType.MWr64, length=n // 4, address=addr, first_be=0xF,
                  last_be=0xF if n > 4 else 0, requester_id=DEV, payload_len=n, cls=SemClass.DATA_WRITE)

    def record(self, q, idx, length, dt=20_000, slot=None):
        base = TX_CPL if q == "tx" else RX_CPL
        slot = self.cpl_slot[q] if slot is None else slot
        payload = struct.pack("<IIII", idx, length, 0, 1 << 31 | self.lap[q] & 1)
        self.cpl_slot[q] = (self.cpl_slot[q] + 1) % ENTRIES
        if self.cpl_slot[q] == 0:
            self.lap[q] += 1
        return self._add(dt, dir=Direction.UP, type=TlpType.MWr64, length=4, address=base + slot * 16,
                         first_be=0xF, last_be=0xF, requester_id=DEV, payload_len=16, payload=payload,
                         cls=SemClass.CPL_WRITE)

    def irq(self, dt=20_000):
        return self._add(dt, dir=Direction.UP, type=TlpType.MWr32, length=1, address=MSIX, first_be=0xF,
                         requester_id=DEV, payload_len=4, payload=b"\0\0\0\0", cls=SemClass.INTERRUPT)

    def tx_frame(self, idx, n=256):
        """The whole TX conversation of one frame in slot idx: doorbell, fetch, data, record."""
        self.doorbell("tx", (idx + 1) % ENTRIES)
        self.fetch("tx", idx, [(TX_BUF + idx * 2048, n)])
        self.tx_data(TX_BUF + idx * 2048, n)
        self.record("tx", idx, n)

    def check(self, **kw):
        h, recs = self.h, self.recs
        ref = check_records(h, recs, **kw)
        fast = check_columns(TraceColumns.from_records(h, recs), **kw)
        assert fast.counts == ref.counts, {r: (ref.counts[r], fast.counts[r]) for r in RULES
                                           if ref.counts[r] != fast.counts[r]}
        chunks = [TraceColumns.from_records(h, recs[i:i + 5]) for i in range(0, len(recs), 5)]
        assert check_chunks(h, chunks, **kw).counts == ref.counts
        return {r: n for r, n in ref.counts.items() if n and r.startswith("nic_")}


def test_a_clean_conversation_fires_nothing():
    c = Conv(header())
    for i in range(3):
        c.tx_frame(i)
    c.irq()
    c.doorbell("rx", 2)
    c.fetch("rx", 0, [(RX_BUF, 2048), (RX_BUF + 2048, 2048)])
    c.rx_data(RX_BUF, 256)
    c.rx_data(RX_BUF + 256, 64)
    c.record("rx", 0, 320)
    c.irq()
    assert c.check() == {}


def test_rx_buffers_back_to_back_a_full_buffer_does_not_claim_the_next():
    """Buffer 0 filled to its last byte, buffer 1 starts where it ends and is written before record 0 (legal: a
    false positive of the checker once, found by calibrated jumbo traces); a write past a full buffer that no
    other descriptor claims is still flagged."""
    c = Conv(header())
    c.doorbell("rx", 3)
    c.fetch("rx", 0, [(RX_BUF, 512), (RX_BUF + 512, 512), (RX_BUF + 4096, 512)])
    c.rx_data(RX_BUF, 256)
    c.rx_data(RX_BUF + 256, 256)
    c.rx_data(RX_BUF + 512, 256)          # buffer 1's first bytes, before record 0
    c.record("rx", 0, 512)
    c.rx_data(RX_BUF + 768, 256)
    c.record("rx", 1, 512)
    c.irq()
    assert c.check() == {}
    c.rx_data(RX_BUF + 4096, 512)
    c.rx_data(RX_BUF + 4096 + 512, 64)    # past buffer 2's end, nothing starts there
    assert c.check() == {"nic_data_desc": 1}


def test_interrupt_before_any_record_announces_nothing():
    c = Conv(header())
    c.irq()
    assert c.check() == {"nic_irq_cpl": 1}


def test_every_interrupt_needs_news_of_its_own():
    c = Conv(header())
    c.tx_frame(0)
    c.irq()
    c.irq()
    assert c.check() == {"nic_irq_cpl": 1}


def test_completion_record_in_the_wrong_slot_of_the_completion_ring():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    c.tx_data(TX_BUF, 256)
    c.record("tx", 0, 256, slot=3)
    assert c.check() == {"nic_cpl_order": 1}


def test_without_completion_rings_the_record_index_is_trusted():
    c = Conv(header(cpl_rings=False))
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    c.tx_data(TX_BUF, 256)
    assert c.check() == {}   # records cannot be placed without the ring; the data chain still holds


def _stalled_read(c, wait_ps):
    """A data read that stays unanswered for wait_ps, then an interrupt with no record before it."""
    c.tx_frame(0)
    c.irq()
    c.doorbell("tx", 2)
    c.fetch("tx", 1, [(TX_BUF + 2048, 256)])
    tag = c.read(TX_BUF + 2048, 256, SemClass.DATA_READ)
    t_read = c.t
    c.t = t_read + wait_ps - 20_000
    c.irq(dt=20_000)
    return tag


@pytest.mark.parametrize("late_ps,flagged", [(0, 0), (1, 1)])
def test_a_completion_after_the_deadline_is_late_and_delivers_nothing(late_ps, flagged):
    """The device times a read out just after the header's timeout: data arriving later is dropped, so a TX
    record for the frame then reports data the device never received."""
    h = header(timeout_ns=20_000.0)
    c = Conv(h)
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF, 256, SemClass.DATA_READ)
    t_read = c.t
    c.t = t_read + int(h.cpl_timeout_ns * 1000) + late_ps - 10_000
    c.complete(tag, bytes(256), dt=10_000)
    c.record("tx", 0, 256)
    assert c.check().get("nic_cpl_data", 0) == flagged


def test_interrupt_with_a_read_well_inside_its_deadline_is_flagged():
    h = header(timeout_ns=20_000.0)
    c = Conv(h)
    timeout = int(h.cpl_timeout_ns * 1000)
    margin = 1_000_000 + timeout // 100
    _stalled_read(c, timeout - margin - 1)
    assert c.check().get("nic_irq_cpl") == 1


def test_interrupt_at_the_margin_before_the_deadline_is_not_flagged():
    h = header(timeout_ns=20_000.0)
    c = Conv(h)
    timeout = int(h.cpl_timeout_ns * 1000)
    margin = 1_000_000 + timeout // 100
    _stalled_read(c, timeout - margin)
    assert c.check().get("nic_irq_cpl", 0) == 0


def test_error_completion_is_an_event_too():
    c = Conv(header())
    c.tx_frame(0)
    c.irq()
    c.doorbell("tx", 2)
    c.fetch("tx", 1, [(TX_BUF + 2048, 256)])
    tag = c.read(TX_BUF + 2048, 256, SemClass.DATA_READ)
    c.complete(tag, bytes(256), status=CplStatus.UR)
    c.irq()
    assert c.check() == {}


def _quarantine(c, n, timeout_ps):
    """n data reads of the TX queue that time out (tags left quarantined), then the queue's doorbell rung."""
    c.tx_frame(0)
    c.irq()
    for k in range(n):
        c.read(TX_BUF + 4096 + 64 * k, 64, SemClass.DATA_READ)
    c.t += timeout_ps + 2_000_000
    c.irq()          # the timeouts: errors, announced
    c.doorbell("tx", 1)
    c.irq()          # legal only if the doorbell met an exhausted queue (an error interrupt)


@pytest.mark.parametrize("n,flagged", [(15, 1), (16, 0)])
def test_doorbell_on_a_queue_with_half_its_tags_quarantined_is_an_error(n, flagged):
    """5-bit tags: 16 quarantined tags exhaust a queue; ringing its doorbell then raises an error interrupt."""
    h = header(tag_width=5)
    c = Conv(h)
    _quarantine(c, n, int(h.cpl_timeout_ns * 1000))
    assert c.check().get("nic_irq_cpl", 0) == flagged


def test_late_completion_frees_a_quarantined_tag():
    h = header(tag_width=5)
    c = Conv(h)
    c.tx_frame(0)
    c.irq()
    tags = [c.read(TX_BUF + 4096 + 64 * k, 64, SemClass.DATA_READ) for k in range(16)]
    c.t += int(h.cpl_timeout_ns * 1000) + 2_000_000
    c.irq()
    c.complete(tags[0], bytes(64), dt=10_000)   # late: frees its tag (15 quarantined: not exhausted)
    c.doorbell("tx", 1)
    c.irq()
    assert c.check(nic_rules=True).get("nic_irq_cpl", 0) == 1


@pytest.mark.parametrize("hold_us,flagged", [(3.0, 1), (30.0, 0)])
def test_queue_reset_releases_quarantined_tags_older_than_the_hold(hold_us, flagged):
    """After a queue reset the device frees quarantined tags held longer than REG_TAG_HOLD (header tag_hold_ns)."""
    h = header(tag_width=5, tag_hold_ns=hold_us * 1000)
    c = Conv(h)
    c.tx_frame(0)
    c.irq()
    for k in range(16):
        c.read(TX_BUF + 4096 + 64 * k, 64, SemClass.DATA_READ)
    c.t += int(h.cpl_timeout_ns * 1000) + 2_000_000   # about 22 us after the reads
    c.irq()
    c.host_write(QCTRL["tx"], 0)        # disable: the queue resets, old enough tags are released
    c.host_write(QCTRL["tx"], 1)
    c.doorbell("tx", 1)
    c.irq()                             # an error only if the tags were still held
    assert c.check().get("nic_irq_cpl", 0) == flagged


def test_queue_reset_restarts_fetching_at_entry_zero():
    c = Conv(header())
    c.tx_frame(0)
    c.tx_frame(1)
    c.host_write(QCTRL["tx"], 0)
    c.host_write(QCTRL["tx"], 1)
    c.cpl_slot["tx"] = 0
    c.tx_frame(0)                       # fetched from 0 again: legal after the reset, not before
    assert c.check() == {}
    d = Conv(header())
    d.tx_frame(0)
    d.tx_frame(1)
    d.tx_frame(0)
    assert d.check().get("nic_desc_doorbell") == 1


def desc_doorbell_violations(c):
    return [v for v in check_records(c.h, c.recs).first if v.rule == "nic_desc_doorbell"]


@pytest.mark.parametrize("split,flagged", [((4, 2), None), ((6,), "12..17"), ((5, 1), "12..16")])
def test_a_descriptor_read_stops_at_the_ring_end(split, flagged):
    """Entries 12..15 and 0..1 posted: the device reads up to the last entry and wraps with a new read
    (rtl/nic_tx.v caps a fetch at the ring end); a read running past entry 15 reads no descriptor."""
    c = Conv(header())
    for k in range(12):
        c.tx_frame(k)
    c.doorbell("tx", 2)
    start, descs = 12, [(TX_BUF + k % ENTRIES * 2048, 64) for k in range(12, 18)]
    first = len(c.recs)
    for n in split:
        c.fetch("tx", start, descs[:n])
        start, descs = (start + n) % ENTRIES, descs[n:]
    assert c.check().get("nic_desc_doorbell", 0) == (flagged is not None)
    if flagged:
        (v,) = desc_doorbell_violations(c)
        assert (v.index, v.t_ps) == (first, c.recs[first].t_ps)     # the read itself, at its time
        assert v.message == f"tx descriptor read of entries {flagged} runs past the ring's last entry 15"


@pytest.mark.parametrize("n,flagged", [(2, False), (3, True), (0, True)])
def test_a_descriptor_read_fetches_only_what_is_posted(n, flagged):
    """Entries 0 and 1 posted: a read of both is legal; one more (the device fetching past the producer index,
    NIC_FAULT_PREFETCH_PAST_PROD) or an empty read is not."""
    c = Conv(header())
    c.doorbell("tx", 2)
    first = len(c.recs)
    ring = TX_RING
    tag = c.read(ring, 16 * n if n else 4, SemClass.DESC_READ)
    c.complete(tag, bytes(16 * n if n else 4))
    assert c.check().get("nic_desc_doorbell", 0) == flagged
    if flagged:
        (v,) = desc_doorbell_violations(c)
        assert (v.index, v.t_ps) == (first, c.recs[first].t_ps)
        assert v.message == (f"tx descriptor read of entries 0..{n - 1}: the device should fetch from 0, 2 posted "
                             "(producer index 2)")


def test_rx_queue_control_resets_only_the_rx_queue():
    c = Conv(header())
    c.tx_frame(0)
    c.host_write(QCTRL["rx"], 0)
    c.tx_frame(0)                       # the TX queue was not reset: fetching 0 again is not what it was told
    assert c.check().get("nic_desc_doorbell") == 1


def test_poisoned_completion_is_an_error_event():
    c = Conv(header())
    c.tx_frame(0)
    c.irq()
    c.doorbell("tx", 2)
    c.fetch("tx", 1, [(TX_BUF + 2048, 256)])
    tag = c.read(TX_BUF + 2048, 256, SemClass.DATA_READ)
    c.complete(tag, bytes(256)).ep = True
    c.irq()                              # announces the poisoned data (the device stops the queue)
    got = c.check()
    assert got == {}


def test_completion_without_data_ends_the_read():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF, 256, SemClass.DATA_READ)
    r = c.complete(tag, bytes(256))
    r.type, r.length, r.payload, r.payload_len = TlpType.Cpl, 0, None, 0   # an SC Cpl: ends the read, no data
    c.record("tx", 0, 256)
    assert c.check() == {"nic_cpl_data": 1}
    c.irq()
    c.t += 100 * US          # the read ended: nothing left to time out, so this interrupt announces nothing
    c.irq()
    assert c.check() == {"nic_cpl_data": 1, "nic_irq_cpl": 1}


@pytest.mark.parametrize("addr", [0x1000, TX_RING + ENTRIES * 16, TX_BUF + 0x10000, RX_CPL + ENTRIES * 16])
def test_device_requests_outside_every_queue_region_are_not_the_machine_s(addr):
    """Below all regions, exactly at a region's end, between regions: not a queue's ring or buffer."""
    c = Conv(header())
    c.tx_frame(0)
    c.rx_data(addr, 64)
    c._add(20_000, dir=Direction.UP, type=TlpType.MWr64, length=4, address=addr, first_be=0xF, last_be=0xF,
           requester_id=DEV, payload_len=16, payload=bytes(16), cls=SemClass.CPL_WRITE)
    tag = c.read(addr, 64, SemClass.DESC_READ)
    c.complete(tag, bytes(64))
    assert c.check() == {}


def test_just_inside_a_region_is_the_queue_s():
    c = Conv(header())
    c.tx_frame(0)
    c.rx_data(RX_BUF + 0x10000 - 64, 64)      # the last bytes of the RX buffers: no descriptor expects them
    assert c.check() == {"nic_data_desc": 1}


def test_a_memory_map_without_rings_skips_the_nic_rules_with_a_note():
    h = header()
    h.memory_map = [m for m in h.memory_map if m["kind"] in ("bar", "msix", "tx_data", "rx_data")]
    c = Conv(h)
    c.tx_frame(0)
    c.irq()
    c.irq()
    assert c.check() == {}
    assert any("NIC causality rules not run" in n for n in check_records(h, c.recs).notes)


def test_a_queue_missing_from_the_map_is_ignored_the_other_checked():
    h = header()
    h.memory_map = [m for m in h.memory_map if not m["kind"].startswith("rx_")]
    c = Conv(h)
    c.tx_frame(0)
    c.rx_data(RX_BUF, 64)                 # no RX queue in the map: not the machine's
    c.tx_frame(0)                         # TX is still checked: entry 0 fetched again without a reset
    assert c.check() == {"nic_desc_doorbell": 1, "nic_cpl_order": 1}


def nic_first(c):
    """The NIC violations as (rule, record index, t_ps, message), the same from the reference and the columnar
    checker (the record's own index and time: a violation is reported where it happens)."""
    ref = [(v.rule, v.index, v.t_ps, v.message) for v in check_records(c.h, c.recs).first if v.rule.startswith("nic_")]
    fast = [(v.rule, v.index, v.t_ps, v.message)
            for v in check_columns(TraceColumns.from_records(c.h, c.recs)).first if v.rule.startswith("nic_")]
    assert fast == ref
    return ref


def test_the_nic_violations_name_their_record_its_time_and_what_was_wrong():
    c = Conv(header())
    c.irq()
    irq = len(c.recs) - 1
    c.tx_frame(0)
    c.rx_data(RX_BUF + 0x100, 64)            # no RX descriptor was fetched
    stray = len(c.recs) - 1
    assert nic_first(c) == [
        ("nic_irq_cpl", irq, c.recs[irq].t_ps,
         "interrupt announces nothing: no completion record and no error since the previous interrupt"),
        ("nic_data_desc", stray, c.recs[stray].t_ps,
         f"rx data write at {RX_BUF + 0x100:#x}+64 is not the next data of any fetched descriptor")]


def test_a_write_past_a_full_buffer_runs_past_its_descriptor():
    """The full buffer still expects its next address when no other buffer starts there: a write there is named
    as running past that descriptor, not as data of no descriptor."""
    c = Conv(header())
    c.doorbell("rx", 1)
    c.fetch("rx", 0, [(RX_BUF + 4096, 512)])
    c.rx_data(RX_BUF + 4096, 512)
    c.rx_data(RX_BUF + 4096 + 512, 64)
    past = len(c.recs) - 1
    assert nic_first(c) == [("nic_data_desc", past, c.recs[past].t_ps,
                             f"rx data write at {RX_BUF + 4608:#x}+64 runs past descriptor 0 "
                             f"({RX_BUF + 4096:#x}+512)")]


@pytest.mark.parametrize("payload", [None, bytes(8)])
def test_a_completion_record_without_its_bytes_still_takes_its_slot(payload):
    """A record whose payload was not kept (or is cut short) cannot be read, but it is news and it fills its
    slot: the next record is expected in the slot after it."""
    c = Conv(header())
    c.tx_frame(0)
    r = c.recs[-1]
    r.payload = payload
    r.payload_len = 16
    c.irq()                                 # announces the unreadable record: legal
    c.tx_frame(1)
    c.irq()
    assert c.check() == {}
    assert nic_first(c) == []


def _quarantine_old_and_young(c, old, young, old_age_ps):
    """`old` TX data reads, `young` more 5 us later, all timed out (20 us); then a queue reset when the old ones
    are old_age_ps old, the doorbell, and an interrupt that is legal only if the doorbell met an exhausted queue
    (5-bit tags: 16 quarantined)."""
    c.tx_frame(0)
    c.irq()
    t_old = c.t + 10_000
    for k in range(old):
        c.read(TX_BUF + 4096 + 64 * k, 64, SemClass.DATA_READ, dt=10_000 if k == 0 else 0)
    c.t = t_old + 5 * US
    for k in range(young):
        c.read(TX_BUF + 8192 + 64 * k, 64, SemClass.DATA_READ, dt=10_000)
    assert c.t - t_old < 6 * US
    c.t = t_old + old_age_ps - 2 * US
    c.irq()                                           # every read has timed out: errors, announced
    c.t = t_old + old_age_ps - 1
    c.host_write(QCTRL["tx"], 0, dt=1)                # at t_old + old_age_ps: the reset releases what is old enough
    assert c.recs[-1].t_ps - t_old == old_age_ps
    c.host_write(QCTRL["tx"], 1)
    c.doorbell("tx", 1)
    c.irq()


@pytest.mark.parametrize("old,young,age_us,flagged", [
    (1, 15, 30.0, 1),    # held exactly the hold: released, 15 left, not exhausted: the interrupt announces nothing
    (2, 16, 31.0, 0),    # the two old released, the 16 young (25 us, under the hold) stay: still exhausted
])
def test_a_queue_reset_releases_exactly_the_tags_held_long_enough(old, young, age_us, flagged):
    h = header(tag_width=5, tag_hold_ns=30_000.0)
    c = Conv(h)
    _quarantine_old_and_young(c, old, young, int(age_us * US))
    assert c.check().get("nic_irq_cpl", 0) == flagged


def _split_completions(c, tag, payload, piece):
    """Completions of one read in `piece`-byte parts (RCB-aligned: the read starts on a 64-byte boundary)."""
    n = len(payload)
    for off in range(0, n, piece):
        part = payload[off:off + piece]
        c._add(50_000, dir=Direction.DOWN, type=TlpType.CplD, length=len(part) // 4, tag=tag, requester_id=DEV,
               completer_id=HOST, byte_count=n - off, lower_address=off & 0x7F, payload_len=len(part),
               payload=part, cls=SemClass.COMPLETION)


def test_a_data_read_answered_in_parts_ends_with_its_last_part():
    """The read is answered in full by two completions: nothing is left outstanding, so no timeout error is
    pending when a later interrupt comes, and that interrupt announces nothing."""
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 512)])
    tag = c.read(TX_BUF, 512, SemClass.DATA_READ)
    _split_completions(c, tag, bytes(512), 256)
    c.record("tx", 0, 512)
    c.irq()
    assert c.check() == {}
    c.t += 100 * US                       # long past any deadline: a read still outstanding would have timed out
    c.irq()
    assert c.check() == {"nic_irq_cpl": 1}


def _frames_from_a_split_descriptor_read(c, n, stride, piece):
    """n TX frames whose n descriptors (buffers `stride` apart) come in one read from entry 0, answered in
    `piece`-byte completions; then each frame's data and record, and an interrupt."""
    c.doorbell("tx", n)
    descs = [(TX_BUF + k * stride, 256) for k in range(n)]
    tag = c.read(TX_RING, 16 * n, SemClass.DESC_READ)
    _split_completions(c, tag, b"".join(struct.pack("<QIxxxx", a, m) for a, m in descs), piece)
    for k in range(n):
        c.tx_data(TX_BUF + k * stride, 256)
        c.record("tx", k, 256)
    c.irq()


def test_a_descriptor_read_answered_in_parts_delivers_every_descriptor():
    """Eight descriptors in two 64-byte completions (RCB 64): the four of the second part are fetched too."""
    c = Conv(header())
    _frames_from_a_split_descriptor_read(c, 8, 2048, 64)
    assert c.check() == {}


def _one(c, rule):
    """The single NIC violation of `rule`, as nic_first gives it."""
    (v,) = [x for x in nic_first(c) if x[0] == rule]
    return v


def test_completion_record_in_the_wrong_slot_names_slot_entry_and_phase():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    c.tx_data(TX_BUF, 256)
    c.record("tx", 0, 256, slot=3)
    r = c.recs[-1]
    assert _one(c, "nic_cpl_order") == ("nic_cpl_order", len(c.recs) - 1, r.t_ps,
                                        "tx completion record for entry 0 at slot 3 (valid 1, phase 0): expected "
                                        "entry 0, phase 0")


def test_a_record_without_its_valid_bit_on_the_second_lap_of_the_ring():
    """Lap 1 expects phase 1: a record with the phase right and the valid bit clear is still out of order."""
    c = Conv(header())
    for k in range(ENTRIES):
        c.tx_frame(k)
    c.tx_frame(0)
    r = c.recs[-1]
    r.payload = r.payload[:12] + struct.pack("<I", 1)          # DW3: valid 0, phase 1
    assert _one(c, "nic_cpl_order") == ("nic_cpl_order", len(c.recs) - 1, r.t_ps,
                                        "tx completion record for entry 0 at slot 0 (valid 0, phase 1): expected "
                                        "entry 0, phase 1")


def test_a_record_for_an_entry_never_fetched():
    c = Conv(header())
    c.record("tx", 0, 256)
    r = c.recs[-1]
    assert _one(c, "nic_cpl_order") == ("nic_cpl_order", 0, r.t_ps,
                                        "tx completion record for entry 0, which was never fetched")


def test_a_tx_record_before_its_data_says_how_much_was_read():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF, 128, SemClass.DATA_READ)
    c.complete(tag, bytes(128))
    c.record("tx", 0, 256)
    r = c.recs[-1]
    assert _one(c, "nic_cpl_data") == ("nic_cpl_data", len(c.recs) - 1, r.t_ps,
                                       "tx completion record for entry 0 (256 B) before its data was read: 128 B "
                                       "requested, 128 B received of 256")


def test_an_rx_record_reporting_more_than_was_written():
    c = Conv(header())
    c.doorbell("rx", 1)
    c.fetch("rx", 0, [(RX_BUF, 2048)])
    c.rx_data(RX_BUF, 256)
    c.record("rx", 0, 512)
    r = c.recs[-1]
    assert _one(c, "nic_cpl_data") == ("nic_cpl_data", len(c.recs) - 1, r.t_ps,
                                       "rx completion record for entry 0 reports 512 B, 256 B written to its 2048 B "
                                       "buffer")


def test_a_two_byte_doorbell_write_sets_the_producer_index():
    """The producer index is the low 16 bits of the doorbell: a 2-byte write (byte enables 0x3) carries it."""
    c = Conv(header())
    d = c.doorbell("tx", 1)
    d.first_be, d.payload, d.payload_len = 0x3, struct.pack("<H", 1), 2
    c.fetch("tx", 0, [(TX_BUF, 256)])
    c.tx_data(TX_BUF, 256)
    c.record("tx", 0, 256)
    c.irq()
    assert c.check() == {}


def test_a_doorbell_whose_payload_was_not_kept_leaves_the_producer_index():
    """Without its bytes the write cannot move the producer index: the entry fetched after it is reported as not
    posted (the checker does not guess), and nothing fails."""
    c = Conv(header())
    d = c.doorbell("tx", 1)
    d.payload = None
    c.fetch("tx", 0, [(TX_BUF, 256)])
    assert c.check() == {"nic_desc_doorbell": 1}


def test_a_tx_data_read_past_its_descriptor_names_the_descriptor():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF, 512, SemClass.DATA_READ)
    at = len(c.recs) - 1
    c.complete(tag, bytes(512))
    assert _one(c, "nic_data_desc") == ("nic_data_desc", at, c.recs[at].t_ps,
                                        f"tx data read at {TX_BUF:#x}+512 runs past descriptor 0 ({TX_BUF:#x}+256)")


def test_a_tx_data_read_of_no_descriptor_names_itself():
    c = Conv(header())
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF + 4096, 64, SemClass.DATA_READ)
    at = len(c.recs) - 1
    c.complete(tag, bytes(64))
    assert _one(c, "nic_data_desc") == ("nic_data_desc", at, c.recs[at].t_ps,
                                        f"tx data read at {TX_BUF + 4096:#x}+64 is not the next data of any fetched "
                                        f"descriptor")


def test_tx_buffers_back_to_back_a_fully_read_buffer_does_not_claim_the_next():
    c = Conv(header())
    c.doorbell("tx", 2)
    c.fetch("tx", 0, [(TX_BUF, 256), (TX_BUF + 256, 256)])
    c.tx_data(TX_BUF, 128)
    c.tx_data(TX_BUF + 128, 128)
    c.tx_data(TX_BUF + 256, 256)
    c.record("tx", 0, 256)
    c.record("tx", 1, 256)
    c.irq()
    assert c.check() == {}


def test_data_reads_are_not_judged_while_a_descriptor_s_contents_are_unknown():
    """A descriptor read of entries 1..3 completed without its bytes kept: the buffers they name are unknown, so
    no data read can be called a read of no descriptor (the checker does not guess), and each entry is fetched:
    its completion record is in order."""
    c = Conv(header())
    c.tx_frame(0)
    c.doorbell("tx", 4)
    tag = c.read(TX_RING + 16, 48, SemClass.DESC_READ)
    r = c.complete(tag, bytes(48))
    r.payload = None
    c.tx_data(TX_BUF + 4096, 256)
    for k in (1, 2, 3):
        c.record("tx", k, 256)
    c.irq()
    assert c.check() == {}


def test_enabling_a_queue_does_not_reset_it():
    """Only a write that clears the enable bit resets the queue; writing it set (again) changes nothing."""
    c = Conv(header())
    c.tx_frame(0)
    c.host_write(QCTRL["tx"], 1)
    c.tx_frame(0)                       # entry 0 fetched again, without a reset
    assert c.check().get("nic_desc_doorbell") == 1


def test_the_answer_to_a_stray_data_read_is_data_not_descriptors():
    """A data read of no descriptor is flagged, and its completion (zeros) is data: not parsed as descriptors
    (which would be invalid ones, error events that a following interrupt could announce)."""
    c = Conv(header())
    c.tx_frame(0)
    c.irq()
    c.tx_data(TX_BUF + 4096, 64)
    c.irq()
    assert c.check() == {"nic_data_desc": 1, "nic_irq_cpl": 1}


def test_a_late_completion_frees_exactly_one_tag():
    """17 tags quarantined, one answered late: 16 remain, the queue is still exhausted and its doorbell is an
    error (the interrupt after it is legal)."""
    h = header(tag_width=5)
    c = Conv(h)
    c.tx_frame(0)
    c.irq()
    tags = [c.read(TX_BUF + 4096 + 64 * k, 64, SemClass.DATA_READ) for k in range(17)]
    c.t += int(h.cpl_timeout_ns * 1000) + 2_000_000
    c.irq()
    c.complete(tags[0], bytes(64), dt=10_000)
    c.doorbell("tx", 1)
    c.irq()
    assert c.check().get("nic_irq_cpl", 0) == 0


@pytest.mark.parametrize("q,addr,length,error", [
    ("tx", TX_BUF, 256, False),
    ("tx", TX_BUF, 0, True),                 # zero length: DESC_ERR
    ("tx", TX_BUF + 2, 256, True),           # buffer address not DWORD aligned
    ("tx", TX_BUF, 16384, False),            # the largest TX frame
    ("tx", TX_BUF, 16385, True),             # longer than that
    ("rx", RX_BUF, 16385, False),            # an RX buffer may be that long
])
def test_an_invalid_descriptor_is_an_error_event(q, addr, length, error):
    """The device stops the queue on a descriptor it cannot use and raises an error interrupt: an interrupt right
    after the fetch is legal exactly then."""
    c = Conv(header())
    c.tx_frame(0)
    c.irq()
    c.doorbell(q, 2 if q == "tx" else 1)
    c.fetch(q, 1 if q == "tx" else 0, [(addr, length)])
    c.irq()
    assert c.check().get("nic_irq_cpl", 0) == (not error)


def test_a_recorded_rx_descriptor_expects_no_more_data():
    """Record 0 closes descriptor 0 (nothing was written into it): a later write into its buffer is no
    descriptor's data."""
    c = Conv(header())
    c.doorbell("rx", 1)
    c.fetch("rx", 0, [(RX_BUF, 2048)])
    c.record("rx", 0, 0)
    c.rx_data(RX_BUF, 64)
    assert c.check() == {"nic_data_desc": 1}


def test_a_descriptor_completion_that_starts_inside_a_descriptor():
    """Completions split off RCB boundaries (illegal PCIe, possible in a generated trace): the machine reads the
    whole descriptors of each part only. Three descriptors in parts of 4 and 44 bytes: entries 1 and 2 are
    known, entry 0 is not."""
    c = Conv(header())
    c.doorbell("tx", 3)
    descs = [(TX_BUF + k * 2048, 256) for k in range(3)]
    tag = c.read(TX_RING, 48, SemClass.DESC_READ)
    data = b"".join(struct.pack("<QIxxxx", a, n) for a, n in descs)
    for part, bc in ((data[:4], 48), (data[4:], 44)):
        c._add(50_000, dir=Direction.DOWN, type=TlpType.CplD, length=len(part) // 4, tag=tag, requester_id=DEV,
               completer_id=HOST, byte_count=bc, lower_address=48 - bc, payload_len=len(part), payload=part,
               cls=SemClass.COMPLETION)
    c.tx_data(TX_BUF + 2048, 256)
    c.tx_data(TX_BUF + 4096, 256)
    c.record("tx", 0, 256)
    c.record("tx", 1, 256)
    c.record("tx", 2, 256)
    assert c.check() == {"nic_cpl_order": 1}
    assert [m for _, _, _, m in nic_first(c)] == ["tx completion record for entry 0, which was never fetched"]


def test_a_descriptor_completion_with_an_empty_payload_leaves_its_descriptors_unknown():
    c = Conv(header())
    c.doorbell("tx", 1)
    tag = c.read(TX_RING, 16, SemClass.DESC_READ)
    r = c.complete(tag, bytes(16))
    r.payload = b""
    c.tx_data(TX_BUF + 4096, 256)
    assert c.check() == {}


def test_the_descriptors_of_a_read_past_the_ring_end_wrap_to_entry_zero():
    """A read of entries 12..17 of a 16-entry ring is flagged once; its descriptors are taken as the device would
    number them (12..15, then 0 and 1), so the data and records that follow are in order."""
    c = Conv(header())
    for k in range(12):
        c.tx_frame(k)
    c.doorbell("tx", 2)
    descs = [(TX_BUF + k % ENTRIES * 2048, 64) for k in range(12, 18)]
    c.fetch("tx", 12, descs)
    for k in range(12, 18):
        c.tx_data(TX_BUF + k % ENTRIES * 2048, 64)
        c.record("tx", k % ENTRIES, 64)
    c.irq()
    assert c.check() == {"nic_desc_doorbell": 1}


def test_an_interrupt_at_the_read_s_deadline_does_not_time_it_out():
    """The device times a read out only after the timeout: at exactly the deadline the read is still outstanding,
    and its completion at that time is delivered (the TX record after it is in order)."""
    h = header(timeout_ns=20_000.0)
    c = Conv(h)
    c.doorbell("tx", 1)
    c.fetch("tx", 0, [(TX_BUF, 256)])
    tag = c.read(TX_BUF, 256, SemClass.DATA_READ)
    t_read = c.t
    c.t = t_read + int(h.cpl_timeout_ns * 1000)
    c.irq(dt=0)                       # at the deadline: the read is about to time out (legal, overdue)
    c.complete(tag, bytes(256), dt=0)
    c.record("tx", 0, 256)
    c.irq()
    assert c.check() == {}


def test_the_phase_bit_flips_on_every_lap_of_the_completion_ring():
    """Three laps of a 16-entry ring: records carry phase 0, 1, 0 (the device flips it at each wrap)."""
    c = Conv(header())
    for k in range(3 * ENTRIES):
        c.tx_frame(k % ENTRIES)
    c.irq()
    assert c.check() == {}


def test_a_descriptor_read_over_an_rcb_boundary_needs_both_parts():
    """RCB 128: nine descriptors (144 B) from entry 0 come as 128 B and 16 B; the first part, though most of the
    read, does not finish it, and descriptor 8 arrives with the second."""
    h = header()
    h.rcb = 128
    c = Conv(h)
    _frames_from_a_split_descriptor_read(c, 9, 1024, 128)
    assert c.check() == {}
