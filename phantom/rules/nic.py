"""NIC causality: per-queue chains doorbell -> descriptor read -> data -> completion record -> interrupt.

The rules of this project's NIC (rtl/nic_regs.vh): 16-byte descriptors ([63:0] buffer address, [95:64] length)
in a ring the device fetches in order up to the producer index the host writes to the queue's doorbell; TX
data read from the buffer a descriptor names, RX data written into it; a 16-byte completion record per
descriptor, in ring order (DW0 index | status << 16, DW1 length, DW3 valid << 31 | phase); MSI-X interrupts that
announce records or errors. Which address is which ring, buffer or register comes from the trace header's memory
map (``phantom.memmap``); without one these rules cannot run (the report says so).

One machine, fed record by record by both checkers (the columnar one feeds only the records these rules look at,
in trace order), so the two agree by construction.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable

from phantom.memmap import MemoryMap, RegionKind
from phantom.rules.spec import request_bytes
from phantom.trace import CplStatus, Direction, SemClass, TlpType, TraceHeader

DESC_BYTES = 16
CPL_BYTES = 16
MAX_TX_FRAME = 16384
_DESC = struct.Struct("<QI")   # a descriptor's buffer address and length
_REC = struct.Struct("<IIII")
QCTRL_ENABLE_BIT = 0

_DOWN = int(Direction.DOWN)
_CPL_TYPES = frozenset(int(x) for x in (TlpType.Cpl, TlpType.CplD, TlpType.CplLk, TlpType.CplDLk))
_MWR_TYPES = frozenset(int(x) for x in (TlpType.MWr32, TlpType.MWr64))
_MRD_TYPES = frozenset(int(x) for x in (TlpType.MRd32, TlpType.MRd64, TlpType.MRdLk32, TlpType.MRdLk64))
_DATA_WRITE, _CPL_WRITE, _INTERRUPT = int(SemClass.DATA_WRITE), int(SemClass.CPL_WRITE), int(SemClass.INTERRUPT)
_DESC_READ, _DATA_READ = int(SemClass.DESC_READ), int(SemClass.DATA_READ)
_SC = int(CplStatus.SC)

# classes and kinds whose records the machine looks at (the columnar checker pre-filters on these)
NIC_CLASSES = frozenset({SemClass.DOORBELL, SemClass.MMIO_WRITE, SemClass.DESC_READ, SemClass.DATA_READ,
                         SemClass.DATA_WRITE, SemClass.CPL_WRITE, SemClass.INTERRUPT, SemClass.COMPLETION})


@dataclass(slots=True)
class _Desc:
    idx: int
    addr: int | None       # None: the payload was not kept (nothing to check against)
    length: int
    requested: int = 0     # TX: bytes of data read requested; RX: bytes written
    completed: int = 0     # TX: bytes of data read completions received
    next_addr: int = -1    # the address its next data is expected at (its key in the queue's ``expect``)


@dataclass(slots=True)
class _Queue:
    name: str
    ring_base: int
    entries: int
    cpl_base: int | None
    prod: int = 0
    fetch: int = 0                     # next ring index the device should fetch
    next_cpl: int = 0                  # next ring index a completion record should name
    lap: int = 0                       # completion-ring laps (phase bit)
    descs: dict[int, _Desc] = field(default_factory=dict)     # fetched, not yet completed
    expect: dict[int, _Desc] = field(default_factory=dict)    # next data address -> descriptor
    quarantined: int = 0

    def reset(self) -> None:
        self.prod = self.fetch = self.next_cpl = self.lap = 0
        self.descs.clear()
        self.expect.clear()


@dataclass(slots=True)
class _Read:
    queue: _Queue
    kind: str              # "desc" or "data"
    start: int             # desc: first ring index; data: descriptor index
    total: int             # bytes asked
    t_ps: int
    desc: _Desc | None = None
    got: int = 0           # bytes its completions have delivered (in any order)


class NicChains:
    """Feed ``record(...)`` in trace order; violations go to ``emit(rule, index, t_ps, message)``."""

    def __init__(self, header: TraceHeader, memmap: MemoryMap, emit: Callable[[str, int, int, str], None],
                 timeout_ps: int):
        self.emit = emit
        self.timeout_ps = timeout_ps
        self.margin_ps = 1_000_000 + timeout_ps // 100   # device timeout runs from issue, the trace from arrival
        self.quar_limit = (1 << header.tag_width) // 2
        dev = header.device or {}
        self.tag_hold_ps = int(dev["tag_hold_ns"] * 1000) if isinstance(dev.get("tag_hold_ns"), (int, float)) else None
        self.queues: dict[str, _Queue] = {}
        for q in ("tx", "rx"):
            ring = memmap.of_kind(RegionKind.TX_RING if q == "tx" else RegionKind.RX_RING)
            cpl = memmap.of_kind(RegionKind.TX_CPL_RING if q == "tx" else RegionKind.RX_CPL_RING)
            if ring:
                # a ring too small for one descriptor still gets one entry (indices stay defined)
                self.queues[q] = _Queue(q, ring[0].base, max(ring[0].size // DESC_BYTES, 1), cpl[0].base if cpl else None)
        self.doorbell = {r.base: self.queues[r.kind.queue] for r in memmap.regions
                         if r.kind.is_doorbell and r.kind.queue in self.queues}
        self.qctrl = {r.base: self.queues[r.kind.queue] for r in memmap.regions
                      if r.kind in (RegionKind.TX_QCTRL, RegionKind.RX_QCTRL) and r.kind.queue in self.queues}
        # per-queue regions by address, for the hot lookup (bisect over region starts)
        spans = sorted((r.base, r.end, self.queues[r.kind.queue]) for r in memmap.regions
                       if not r.kind.is_register and r.kind.queue in self.queues)
        self._starts = [b for b, _, _ in spans]
        self._spans = spans
        self.span_starts = self._starts                      # the same for the columnar checker's numpy lookup
        self.span_ends = [e for _, e, _ in spans]
        self.span_queues = [q for _, _, q in spans]
        self.watched = set(self.doorbell) | set(self.qctrl)  # the host writes the machine looks at
        self.reads: dict[tuple[int, int], _Read] = {}     # outstanding device reads, oldest first
        self.expired: dict[tuple[int, int], _Read] = {}   # timed out, not answered late
        self.news = False    # a completion record since the previous interrupt
        self.errors = False  # an error event since the previous interrupt (what the device raises one for)
        self.now = -1

    # ---------------------------------------------------------------------------------------------
    def _error(self) -> None:
        self.errors = True

    def _expire(self, t: int) -> None:
        """Reads past their deadline at the latest arrival time: moved to ``expired`` (an error event each)."""
        if t > self.now:
            self.now = t
        while self.reads:
            key, rd = next(iter(self.reads.items()))
            if self.now - rd.t_ps <= self.timeout_ps:
                break
            del self.reads[key]
            self.expired[key] = rd
            rd.queue.quarantined += 1
            self._error()

    def record(self, i: int, t: int, direction: int, ttype: int, cls: int, address: int, length: int,
               first_be: int, last_be: int, tag: int, rid: int, status: int, byte_count: int, ep: bool,
               payload: bytes | None) -> None:
        """One record in trace order (the reference checker's entry). The columnar checker computes the same
        derived fields with numpy and calls the kind handlers below directly."""
        if direction == _DOWN:
            if ttype in _CPL_TYPES:
                carried = min(length * 4, byte_count) if ttype & 0x40 else 0
                self.completion(i, t, rid << 16 | tag, status, byte_count, carried, bool(ttype & 0x40), ep,
                                payload, 0, len(payload) if payload is not None else 0)
            elif ttype in _MWR_TYPES:
                self.mmio_write(i, t, address, payload)
            return
        if ttype in _MRD_TYPES:
            if cls == _DESC_READ or cls == _DATA_READ:
                q = self.queue_of(address)
                if q is not None:
                    self.device_read(i, t, q, cls, address, request_bytes(length, first_be, last_be), rid << 16 | tag)
        elif ttype in _MWR_TYPES:
            if cls == _DATA_WRITE:
                q = self.queue_of(address)
                if q is not None:
                    self.data_write(i, t, q, address, request_bytes(length, first_be, last_be))
            elif cls == _CPL_WRITE:
                q = self.queue_of(address)
                if q is not None:
                    self.cpl_record(i, t, q, address, payload)
            elif cls == _INTERRUPT:
                self.interrupt(i, t)

    # host side -----------------------------------------------------------------------------------
    def mmio_write(self, i: int, t: int, address: int, payload: bytes | None) -> None:
        """A host write to the device (only doorbells and queue controls matter: ``watched`` lists them)."""
        a = address & ~3
        q = self.doorbell.get(a)
        if q is not None:
            self._expire(t)
            if payload is not None and len(payload) >= 2:
                q.prod = int.from_bytes(payload[:2], "little") % q.entries
            if q.quarantined >= self.quar_limit:
                self._error()  # the device refuses to run a queue whose tags are exhausted: an error interrupt
            return
        q = self.qctrl.get(a)
        if q is not None and payload:
            self._expire(t)
            if not payload[0] >> QCTRL_ENABLE_BIT & 1:
                q.reset()
                self._release_quarantine(q, t)

    def _release_quarantine(self, q: _Queue, t: int) -> None:
        if self.tag_hold_ps is None:
            return
        for key in [k for k, rd in self.expired.items() if rd.queue is q and t - rd.t_ps >= self.tag_hold_ps]:
            del self.expired[key]
            q.quarantined -= 1

    # device reads --------------------------------------------------------------------------------
    def queue_of(self, address: int) -> _Queue | None:
        """The queue whose ring, completion ring or buffers hold this address (None: no queue's)."""
        k = bisect_right(self._starts, address) - 1
        if k >= 0:
            b, e, q = self._spans[k]
            if address < e:
                return q
        return None

    def device_read(self, i: int, t: int, q: _Queue, cls: int, address: int, nbytes: int, key: int) -> None:
        """A descriptor or data read of queue q (key: requester ID << 16 | tag)."""
        if cls == _DESC_READ:
            start = (address - q.ring_base) // DESC_BYTES
            n = nbytes // DESC_BYTES
            avail = (q.prod - q.fetch) % q.entries
            if start + n > q.entries:    # past the last entry: the device wraps to entry 0 with a new read
                self.emit("nic_desc_doorbell", i, t,
                          f"{q.name} descriptor read of entries {start}..{start + n - 1} runs past the ring's last "
                          f"entry {q.entries - 1}")
            elif start != q.fetch or n > avail or n == 0:
                self.emit("nic_desc_doorbell", i, t,
                          f"{q.name} descriptor read of entries {start}..{start + n - 1}: the device should fetch "
                          f"from {q.fetch}, {avail} posted (producer index {q.prod})")
            q.fetch = (start + n) % q.entries
            self.reads[key] = _Read(q, "desc", start, nbytes, t)
        elif cls == _DATA_READ:
            d = q.expect.pop(address, None)
            if d is None or d.addr is None:
                if d is None and not self._unknown_desc(q):
                    self.emit("nic_data_desc", i, t, f"{q.name} data read at {address:#x}+{nbytes} is not the next "
                                                     f"data of any fetched descriptor")
                self.reads[key] = _Read(q, "data", -1, nbytes, t)
                return
            if d.requested + nbytes > d.length:
                self.emit("nic_data_desc", i, t, f"{q.name} data read at {address:#x}+{nbytes} runs past descriptor "
                                                 f"{d.idx} ({d.addr:#x}+{d.length})")
            d.requested += nbytes
            if d.requested < d.length:
                d.next_addr = address + nbytes
                q.expect[d.next_addr] = d
            self.reads[key] = _Read(q, "data", d.idx, nbytes, t, d)

    def _unknown_desc(self, q: _Queue) -> bool:
        return any(d.addr is None for d in q.descs.values())

    def completion(self, i: int, t: int, key: int, status: int, bc: int, carried: int, has_data: bool, ep: bool,
                   buf: bytes | None, lo: int, hi: int) -> None:
        """A completion to the device (key: requester ID << 16 | tag; carried: data bytes it delivers;
        its payload is buf[lo:hi], read only for descriptor reads)."""
        if t > self.now:
            self.now = t
        if status != _SC or ep:
            self._error()   # the device stops the queue (DMA_ERR) and raises an error interrupt
        rd = self.reads.get(key)
        if rd is not None and self.now - rd.t_ps > self.timeout_ps:
            self._expire(t)  # answered after its deadline: timed out first, then a late completion
            rd = None
        if rd is None:
            late = self.expired.pop(key, None)
            if late is not None:
                late.queue.quarantined -= 1
            return
        if status != _SC:
            del self.reads[key]
            return
        self._deliver(rd, key, bc, carried, has_data, buf, lo, hi)

    def completion_ok(self, t: int, key: int, bc: int, carried: int, buf: bytes | None, lo: int, hi: int) -> None:
        """``completion`` of a successful, unpoisoned completion with data (the common case, fewer arguments)."""
        if t > self.now:
            self.now = t
        rd = self.reads.get(key)
        if rd is None or self.now - rd.t_ps > self.timeout_ps:
            self.completion(-1, t, key, _SC, bc, carried, True, False, buf, lo, hi)
            return
        if rd.kind == "data":   # the hot path, _deliver inlined
            rd.got += carried
            if rd.desc is not None:
                rd.desc.completed += carried
            if rd.got >= rd.total:
                del self.reads[key]
            return
        self._deliver(rd, key, bc, carried, True, buf, lo, hi)

    def _deliver(self, rd: _Read, key: int, bc: int, carried: int, has_data: bool, buf: bytes | None, lo: int,
                 hi: int) -> None:
        rd.got += carried
        done = rd.got >= rd.total or not has_data
        if rd.kind == "data":
            if rd.desc is not None:
                rd.desc.completed += carried
        elif buf is not None and hi > lo:
            q = rd.queue
            off = rd.total - bc
            k0 = -off % DESC_BYTES   # the first whole descriptor in this completion's data
            idx = (rd.start + (off + k0) // DESC_BYTES) % q.entries
            tx = q.name == "tx"
            for k in range(lo + k0, hi - DESC_BYTES + 1, DESC_BYTES):
                addr, dlen = _DESC.unpack_from(buf, k)
                d = _Desc(idx, addr, dlen, next_addr=addr)
                q.descs[idx] = d
                if dlen == 0 or addr & 3 or (tx and dlen > MAX_TX_FRAME):
                    self._error()  # the device stops the queue with DESC_ERR and raises an error interrupt
                else:
                    q.expect[addr] = d
                idx = idx + 1 if idx + 1 < q.entries else 0
        elif done:
            q = rd.queue
            for k in range(rd.total // DESC_BYTES):
                idx = (rd.start + k) % q.entries
                q.descs[idx] = _Desc(idx, None, 0)
        if done:
            del self.reads[key]

    # device writes -------------------------------------------------------------------------------
    def data_write(self, i: int, t: int, q: _Queue, address: int, nbytes: int) -> None:
        """An RX data write into a buffer of queue q."""
        d = q.expect.pop(address, None)
        if d is None:
            if not self._unknown_desc(q):
                self.emit("nic_data_desc", i, t, f"{q.name} data write at {address:#x}+{nbytes} is not the next data "
                                                 f"of any fetched descriptor")
            return
        if d.requested + nbytes > d.length:
            self.emit("nic_data_desc", i, t, f"{q.name} data write at {address:#x}+{nbytes} runs past descriptor "
                                             f"{d.idx} ({d.addr:#x}+{d.length})")
        d.requested += nbytes
        d.next_addr = address + nbytes
        # a full buffer expects nothing more where the next one may start (buffers back to back): a write past its
        # end is then flagged only when no other descriptor's buffer starts there
        if d.requested < d.length or d.next_addr not in q.expect:
            q.expect[d.next_addr] = d

    def cpl_record(self, i: int, t: int, q: _Queue, address: int, payload: bytes | None) -> None:
        """A completion record written to queue q's completion ring."""
        self.news = True
        if payload is None or len(payload) < CPL_BYTES:
            q.next_cpl = (q.next_cpl + 1) % q.entries
            return
        dw0, rlen, _, dw3 = _REC.unpack_from(payload, 0)
        idx = dw0 & 0xFFFF
        valid, phase = dw3 >> 31, dw3 & 1
        at = (address - q.cpl_base) // CPL_BYTES if q.cpl_base is not None else idx
        if idx != q.next_cpl or at != idx or not valid or phase != (q.lap & 1):
            self.emit("nic_cpl_order", i, t, f"{q.name} completion record for entry {idx} at slot {at} "
                                             f"(valid {valid}, phase {phase}): expected entry {q.next_cpl}, "
                                             f"phase {q.lap & 1}")
        d = q.descs.pop(idx, None)
        if d is None:
            self.emit("nic_cpl_order", i, t, f"{q.name} completion record for entry {idx}, which was never fetched")
        elif d.addr is not None:
            if q.name == "tx" and (d.requested != d.length or d.completed < d.length or rlen != d.length):
                self.emit("nic_cpl_data", i, t, f"tx completion record for entry {idx} ({rlen} B) before its data "
                                                f"was read: {d.requested} B requested, {d.completed} B received "
                                                f"of {d.length}")
            elif q.name == "rx" and (d.requested < rlen or rlen > d.length):
                self.emit("nic_cpl_data", i, t, f"rx completion record for entry {idx} reports {rlen} B, "
                                                f"{d.requested} B written to its {d.length} B buffer")
            if q.expect.get(d.next_addr) is d:   # a descriptor is expected at one address at a time
                del q.expect[d.next_addr]
        q.next_cpl = (idx + 1) % q.entries
        if q.next_cpl == 0:
            q.lap += 1

    def interrupt(self, i: int, t: int) -> None:
        """An MSI-X write."""
        self._expire(t)
        if not self.news and not self.errors and not self._read_overdue(t):
            self.emit("nic_irq_cpl", i, t, "interrupt announces nothing: no completion record and no error since "
                                           "the previous interrupt")
        self.news = False
        self.errors = False

    def _read_overdue(self, t: int) -> bool:
        """A device read close to its timeout: the device may already have timed it out (an error interrupt)."""
        if not self.reads:
            return False
        rd = next(iter(self.reads.values()))
        return t - rd.t_ps >= self.timeout_ps - self.margin_ps
