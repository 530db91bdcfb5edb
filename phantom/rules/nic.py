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
        self.mm = memmap
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
                self.queues[q] = _Queue(q, ring[0].base, ring[0].size // DESC_BYTES, cpl[0].base if cpl else None)
        self.doorbell = {r.base: self.queues[r.kind.queue] for r in memmap.regions
                         if r.kind.is_doorbell and r.kind.queue in self.queues}
        self.qctrl = {r.base: self.queues[r.kind.queue] for r in memmap.regions
                      if r.kind in (RegionKind.TX_QCTRL, RegionKind.RX_QCTRL) and r.kind.queue in self.queues}
        # per-queue regions by address, for the hot lookup (bisect over region starts)
        spans = sorted((r.base, r.end, self.queues[r.kind.queue]) for r in memmap.regions
                       if not r.kind.is_register and r.kind.queue in self.queues)
        self._starts = [b for b, _, _ in spans]
        self._spans = spans
        self.reads: dict[tuple[int, int], _Read] = {}     # outstanding device reads, oldest first
        self.expired: dict[tuple[int, int], _Read] = {}   # timed out, not answered late
        self.news = 0      # completion records since the previous interrupt
        self.errors = 0    # error events since the previous interrupt
        self.now = -1

    # ---------------------------------------------------------------------------------------------
    def _error(self) -> None:
        self.errors += 1

    def _expire(self, t: int) -> None:
        """Reads past their deadline at the latest arrival time: moved to ``expired`` (an error event each)."""
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
        # timeouts are applied lazily, by the handlers that depend on them (same outcome, far less work)
        if t > self.now:
            self.now = t
        if direction == _DOWN:
            if ttype in _CPL_TYPES:
                self._completion(i, t, ttype, rid, tag, status, byte_count, length, ep, payload)
            elif ttype in _MWR_TYPES:
                self._expire(t)
                self._mmio_write(i, t, address, payload)
            return
        if ttype in _MRD_TYPES:
            self._device_read(i, t, cls, address, length, first_be, last_be, tag, rid)
        elif ttype in _MWR_TYPES:
            if cls == _DATA_WRITE:
                self._data_write(i, t, address, length, first_be, last_be)
            elif cls == _CPL_WRITE:
                self._cpl_record(i, t, address, payload)
            elif cls == _INTERRUPT:
                self._expire(t)
                self._interrupt(i, t)

    # host side -----------------------------------------------------------------------------------
    def _mmio_write(self, i: int, t: int, address: int, payload: bytes | None) -> None:
        a = address & ~3
        q = self.doorbell.get(a)
        if q is not None:
            if payload is not None and len(payload) >= 2:
                q.prod = int.from_bytes(payload[:2], "little") % max(q.entries, 1)
            if q.quarantined >= self.quar_limit:
                self._error()  # the device refuses to run a queue whose tags are exhausted: an error interrupt
            return
        q = self.qctrl.get(a)
        if q is not None and payload:
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
    def _queue_of(self, address: int) -> _Queue | None:
        k = bisect_right(self._starts, address) - 1
        if k >= 0:
            b, e, q = self._spans[k]
            if address < e:
                return q
        return None

    def _device_read(self, i: int, t: int, cls: int, address: int, length: int, fbe: int, lbe: int,
                     tag: int, rid: int) -> None:
        q = self._queue_of(address)
        if q is None:
            return
        nbytes = request_bytes(length, fbe, lbe)
        if cls == _DESC_READ:
            start = (address - q.ring_base) // DESC_BYTES
            n = nbytes // DESC_BYTES
            avail = (q.prod - q.fetch) % max(q.entries, 1)
            if start != q.fetch or n > avail or n == 0:
                self.emit("nic_desc_doorbell", i, t,
                          f"{q.name} descriptor read of entries {start}..{start + n - 1}: the device should fetch "
                          f"from {q.fetch}, {avail} posted (producer index {q.prod})")
            q.fetch = (start + n) % max(q.entries, 1)
            self.reads[(rid, tag)] = _Read(q, "desc", start, nbytes, t)
        elif cls == _DATA_READ:
            d = q.expect.pop(address, None)
            if d is None or d.addr is None:
                if d is None and not self._unknown_desc(q):
                    self.emit("nic_data_desc", i, t, f"{q.name} data read at {address:#x}+{nbytes} is not the next "
                                                     f"data of any fetched descriptor")
                self.reads[(rid, tag)] = _Read(q, "data", -1, nbytes, t)
                return
            if d.requested + nbytes > d.length:
                self.emit("nic_data_desc", i, t, f"{q.name} data read at {address:#x}+{nbytes} runs past descriptor "
                                                 f"{d.idx} ({d.addr:#x}+{d.length})")
            d.requested += nbytes
            if d.requested < d.length:
                q.expect[address + nbytes] = d
            self.reads[(rid, tag)] = _Read(q, "data", d.idx, nbytes, t, d)

    def _unknown_desc(self, q: _Queue) -> bool:
        return any(d.addr is None for d in q.descs.values())

    def _completion(self, i: int, t: int, ctype: int, rid: int, tag: int, status: int, bc: int,
                    length: int, ep: bool, payload: bytes | None) -> None:
        key = (rid, tag)
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
        off = rd.total - bc
        carried = min(length * 4, bc) if ctype & 0x40 else 0
        rd.got += carried
        done = rd.got >= rd.total or not ctype & 0x40
        if rd.kind == "desc" and payload is not None:
            q = rd.queue
            for k in range(0, len(payload) - DESC_BYTES + 1, DESC_BYTES):
                if (off + k) % DESC_BYTES:
                    continue
                idx = (rd.start + (off + k) // DESC_BYTES) % max(q.entries, 1)
                addr, dlen = struct.unpack_from("<QI", payload, k)
                self._new_desc(q, idx, addr, dlen)
        elif rd.kind == "desc" and done:
            q = rd.queue
            for k in range(rd.total // DESC_BYTES):
                idx = (rd.start + k) % max(q.entries, 1)
                q.descs[idx] = _Desc(idx, None, 0)
        elif rd.kind == "data" and rd.desc is not None:
            rd.desc.completed += carried
        if done:
            del self.reads[key]

    def _new_desc(self, q: _Queue, idx: int, addr: int, dlen: int) -> None:
        bad = dlen == 0 or addr & 3 or (q.name == "tx" and dlen > MAX_TX_FRAME)
        if bad:
            self._error()  # the device stops the queue with DESC_ERR and raises an error interrupt
        d = _Desc(idx, addr, dlen)
        q.descs[idx] = d
        if not bad:
            q.expect[addr] = d

    # device writes -------------------------------------------------------------------------------
    def _data_write(self, i: int, t: int, address: int, length: int, fbe: int, lbe: int) -> None:
        q = self._queue_of(address)
        if q is None:
            return
        nbytes = request_bytes(length, fbe, lbe)
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
        q.expect[address + nbytes] = d

    def _cpl_record(self, i: int, t: int, address: int, payload: bytes | None) -> None:
        q = self._queue_of(address)
        if q is None:
            return
        self.news += 1
        if payload is None or len(payload) < CPL_BYTES:
            q.next_cpl = (q.next_cpl + 1) % max(q.entries, 1)
            return
        dw0, rlen, _, dw3 = struct.unpack_from("<IIII", payload, 0)
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
            for a, dd in list(q.expect.items()):
                if dd is d:
                    del q.expect[a]
        q.next_cpl = (idx + 1) % max(q.entries, 1)
        if q.next_cpl == 0:
            q.lap += 1

    def _interrupt(self, i: int, t: int) -> None:
        if self.news == 0 and self.errors == 0 and not self._read_overdue(t):
            self.emit("nic_irq_cpl", i, t, "interrupt announces nothing: no completion record and no error since "
                                           "the previous interrupt")
        self.news = 0
        self.errors = 0

    def _read_overdue(self, t: int) -> bool:
        """A device read close to its timeout: the device may already have timed it out (an error interrupt)."""
        if not self.reads:
            return False
        rd = next(iter(self.reads.values()))
        return t - rd.t_ps >= self.timeout_ps - self.margin_ps
