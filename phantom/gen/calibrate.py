"""Calibration: turn any backbone's TLP stream into a legal, coherent and replayable NIC trace, changing little.

The heart of Phantom (arXiv 2411.06376 couples a generative backbone with a PCIe-aware post-processing stage; its
formulas are not public). This one is a streaming repair machine that mirrors the rule checker (``phantom.rules``)
and the NIC's causality chains, and takes each generated record as the *intention* of a TLP:

1. **snap** every field to the nearest legal value given the state: the header format follows the address, lengths
   fit MPS / MRRS / the 4 KB boundary / what a read still owes, byte enables fit the length, attributes fit Device
   Control, tags are free (requests) or outstanding (completions), byte count and lower address are what the read
   still owes;
2. **bind** every completion to an outstanding request (its own tag, else the oldest), split at RCB, in address
   order; every data read/write to the next bytes of the buffer of a fetched descriptor; every completion record
   to the oldest unfinished descriptor of its queue, in ring order, and only once its data moved;
3. **reorder** only where the rules demand: a TX completion record generated before its data completed waits
   for the last completion of that data;
4. **insert** what the conversation implies and the stream lacks, counted by reason: the host's initialisation of
   the queues (MMIO writes consistent with the memory map), a doorbell before a descriptor read that has nothing
   posted, the completions of reads the stream never answers (after a deadline drawn from the training traces'
   latencies, long before the completion timeout), completion records of finished frames, and at the end the
   drain that leaves the device idle;
5. **drop** what cannot be repaired (a completion with nothing outstanding, an interrupt that announces nothing,
   a completion record with no data behind it), counted;
6. write the **host side** every replay needs: descriptor bytes in descriptor-read completions (buffer address and
   the length of the frame the data reads that follow move), producer indices in doorbells, completion-record
   payloads, frame bytes in data completions and writes, and the MAC sidecar (RX frames offered, TX frames sent).

Descriptor bytes depend on data reads that come later in the stream, so records wait in a bounded hold-back
queue until the descriptors they carry are known (memory stays flat: at most ``hold_max`` records).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import logging
import random
import struct
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from phantom.memmap import MemoryMap, RegionKind
from phantom.rules.spec import request_bytes
from phantom.trace import (CplStatus, Direction, MacFrame, MacPort, SemClass, TlpRecord, TlpType, TraceColumns,
                           TraceHeader)

log = logging.getLogger(__name__)

DESC_BYTES = 16
CPL_BYTES = 16
MAX_TX_FRAME = 16384
_MRD = (TlpType.MRd32, TlpType.MRd64)
_MWR = (TlpType.MWr32, TlpType.MWr64)
# enum members by value: a dict lookup costs a fraction of an Enum call, which _R.record makes per output TLP
# (the values are the calibrator's own, always valid)
_TYPE_OF = {m.value: m for m in TlpType}
_DIR_OF = {m.value: m for m in Direction}
_STATUS_OF = {m.value: m for m in CplStatus}
_CLS_OF = {m.value: m for m in SemClass}
_HAS_DATA = {m.value: m.has_data for m in TlpType}
_FIELDS = ("time", "address", "length", "first_be", "last_be", "tag", "byte_count", "lower_address", "status", "attr",
           "tc", "ep", "requester_id", "completer_id")   # the fields _account compares, in its order
_PATTERN = bytes(range(256)) * 66   # frame bytes: byte k of frame f is (7 f + k) mod 256

# ----------------------------------------------------------------------------------------------------------------
# priors: what inserted records look like (times, sizes, register values), measured on the training traces


def _q(a: Iterable[float], n: int = 33) -> list[float]:
    a = np.asarray(list(a), dtype=np.float64)
    if len(a) == 0:
        return []
    return [float(x) for x in np.percentile(a, np.linspace(0, 100, n))]


@dataclass
class Priors:
    """Distributions and constants calibration draws inserted records from (JSON-serialisable)."""

    read_latency_ns: list[float] = field(default_factory=lambda: [400.0, 600.0, 900.0])  # quantiles, first cpl
    mmio_latency_ns: list[float] = field(default_factory=lambda: [40.0, 50.0, 70.0])   # host read -> completion
    cpl_gap_ns: float = 40.0            # between the completions of one read
    tx_cplw_gap_ns: list[float] = field(default_factory=lambda: [30.0, 200.0, 2000.0])  # TX frame's data done -> record
    rx_cplw_gap_ns: list[float] = field(default_factory=lambda: [10.0, 20.0, 60.0])     # RX last data write -> record
    irq_wait_ns: list[float] = field(default_factory=lambda: [100.0, 1000.0, 2500.0])  # first news -> interrupt
    doorbell_read_ns: list[float] = field(default_factory=lambda: [60.0, 100.0, 1200.0])  # doorbell -> its desc read
    frame_bytes: list[float] = field(default_factory=lambda: [60.0, 64.0, 580.0, 1500.0])  # TX frame lengths
    rx_lead_ns: float = 300.0           # RX frame offered on the MAC -> its first data write
    tx_lag_ns: float = 200.0            # TX frame's last data completion -> frame on the MAC
    mmio_gap_ns: float = 60.0           # between the host's MMIO writes
    # the device's descriptor prefetch (rtl/nic_tx.v, nic_rx.v: DESC_BATCH 8, DESC_CACHE 16): at most desc_batch
    # descriptors per read, and at most desc_cache fetched whose frame has not started. Measured as calibration
    # counts it, a frame starting at its first data move on the link: a little after the device takes its
    # descriptor from the cache, so every capture shows 17 for the RTL's 16 (the defaults are those readings)
    desc_batch: int = 8
    desc_cache: int = 17
    dt_max_ns: float = 20000.0          # longest gap calibration lets through
    reg_write: dict[str, int] = field(default_factory=dict)   # register -> value written at initialisation
    reg_read: dict[str, int] = field(default_factory=dict)    # register -> value first read
    msix_table: list[int] = field(default_factory=list)       # MSI-X entry 0: address lo, hi, data, control
    msi_data: int = 0
    host_id: int = 0x0000
    device_id: int = 0x0100

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "Priors":
        if not isinstance(d, dict):
            raise ValueError(f"priors: expected an object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    # Deadlines after which calibration inserts what a stream owes: well past anything a capture shows (1.5 x the
    # training maximum, with floors for conditions slower than any trained on), far below the completion timeout.
    @property
    def overdue_read_ns(self) -> float:
        """A device read still unanswered this long after it was issued gets its completions inserted."""
        return max((self.read_latency_ns[-1] if self.read_latency_ns else 1000.0) * 1.5, 5000.0)

    @property
    def overdue_mmio_ns(self) -> float:
        return max((self.mmio_latency_ns[-1] if self.mmio_latency_ns else 100.0) * 2.0, 1000.0)

    @property
    def overdue_tx_record_ns(self) -> float:
        """A TX frame whose data completed this long ago without a completion record gets one inserted."""
        return max((self.tx_cplw_gap_ns[-1] if self.tx_cplw_gap_ns else 2000.0) * 1.5, 100_000.0)

    @property
    def overdue_rx_record_ns(self) -> float:
        return max((self.rx_cplw_gap_ns[-1] if self.rx_cplw_gap_ns else 100.0) * 1.5, 20_000.0)

    @property
    def overdue_irq_ns(self) -> float:
        return max((self.irq_wait_ns[-1] if self.irq_wait_ns else 2500.0) * 1.5, 50_000.0)


def _sample(qs: list[float], rng: random.Random, default: float) -> float:
    """Draw from a distribution given by equally spaced quantiles (linear between them)."""
    if not qs:
        return default
    u = rng.random() * (len(qs) - 1)
    i = int(u)
    if i >= len(qs) - 1:
        return qs[-1]
    return qs[i] + (qs[i + 1] - qs[i]) * (u - i)


def priors_from_traces(traces: list[tuple[TraceColumns, list[MacFrame]]]) -> Priors:
    """Measure the priors on real traces (columns + their MAC frames)."""
    lat, mlat, gaps, txg, rxg, irq, fb, lead, lag, mmg, dts, dbl, batch, cache = ([] for _ in range(14))
    irq_first = None
    reg_write: dict[str, int] = {}
    reg_read: dict[str, int] = {}
    msix: dict[int, int] = {}
    msi_data = None
    host_id, dev_id = None, None
    for tc, mac in traces:
        h = tc.header
        regs = (h.device or {}).get("registers") or {}
        by_off = {v: k for k, v in regs.items()}
        mm = MemoryMap.from_json(h.memory_map) if h.memory_map else None
        bar = mm.of_kind(RegionKind.BAR)[0].base if mm and mm.of_kind(RegionKind.BAR) else None
        recs = list(tc.records())
        t = [r.t_ps for r in recs]
        if len(t) > 1:
            dts.extend(np.diff(t).tolist())
        open_: dict[tuple[int, int], TlpRecord] = {}
        first_seen: dict[tuple[int, int], bool] = {}
        txd = mm.of_kind(RegionKind.TX_DATA)[0] if mm and mm.of_kind(RegionKind.TX_DATA) else None
        txr = mm.of_kind(RegionKind.TX_RING)[0] if mm and mm.of_kind(RegionKind.TX_RING) else None
        stride = (txd.size // max(txr.size // DESC_BYTES, 1)) if txd and txr else 0
        data_done: dict[int, int] = {}   # TX buffer slot -> time its latest data read completed
        irq_first = None
        last_cpl_t = None
        last_dw_t = None
        last_mmio_w = None
        rx_writes = []
        msix_base = regs.get("REG_MSIX_TABLE")
        db_queue = {g.base: g.kind.queue for g in mm.regions if g.kind.is_doorbell} if mm else {}
        ring_of = [(g.base, g.base + g.size, g.kind.queue) for g in mm.regions
                   if g.kind in (RegionKind.TX_RING, RegionKind.RX_RING)] if mm else []
        db_pending: dict[str, int] = {}  # queue -> time of its oldest doorbell not yet followed by a descriptor read
        # descriptor prefetch per queue: fetched, frames started (a data move into a buffer slot other than the
        # last one's), the last slot
        rxd = mm.of_kind(RegionKind.RX_DATA)[0] if mm and mm.of_kind(RegionKind.RX_DATA) else None
        rxr = mm.of_kind(RegionKind.RX_RING)[0] if mm and mm.of_kind(RegionKind.RX_RING) else None
        bufs = {"tx": (txd, stride), "rx": (rxd, (rxd.size // max(rxr.size // DESC_BYTES, 1)) if rxd and rxr else 0)}
        fetched = {"tx": 0, "rx": 0}
        started = {"tx": 0, "rx": 0}
        last_slot: dict[str, int | None] = {"tx": None, "rx": None}
        for r in recs:
            if r.dir == Direction.UP and r.cls in (SemClass.DATA_READ, SemClass.DATA_WRITE):
                qn = "tx" if r.cls == SemClass.DATA_READ else "rx"
                d, st = bufs[qn]
                if d is not None and st and d.base <= r.address < d.base + d.size:
                    slot = (r.address - d.base) // st
                    if slot != last_slot[qn]:
                        last_slot[qn] = slot
                        started[qn] += 1
            elif r.dir == Direction.UP and r.cls == SemClass.DESC_READ:
                qn = next((qq for lo, hi, qq in ring_of if lo <= r.address < hi), None)
                if qn in fetched:
                    n = request_bytes(max(r.length, 1), r.first_be, r.last_be) // DESC_BYTES
                    fetched[qn] += n
                    batch.append(n)
                    cache.append(fetched[qn] - started[qn])
            if r.type.is_completion:
                k = (r.requester_id, r.tag)
                q = open_.get(k)
                if q is not None:
                    if not first_seen.get(k):
                        first_seen[k] = True
                        (lat if q.dir == Direction.UP else mlat).append((r.t_ps - q.t_ps) / 1000)
                    elif last_cpl_t is not None:
                        gaps.append((r.t_ps - last_cpl_t) / 1000)
                    if q.dir == Direction.DOWN and q.type in _MRD and bar is not None and r.payload:
                        name = by_off.get(q.address - bar)
                        if name and name not in reg_read:
                            reg_read[name] = int.from_bytes(r.payload[:4], "little")
                    if r.byte_count <= r.length * 4 - (r.lower_address & 3) or r.type == TlpType.Cpl:
                        open_.pop(k, None)
                        if r.dir == Direction.DOWN and q.cls == SemClass.DATA_READ and stride:
                            data_done[(q.address - txd.base) // stride] = r.t_ps
                    last_cpl_t = r.t_ps
                if host_id is None and r.dir == Direction.DOWN:
                    dev_id, host_id = r.requester_id, r.completer_id
                continue
            if r.type.is_non_posted:
                open_[(r.requester_id, r.tag)] = r
                first_seen[(r.requester_id, r.tag)] = False
            if r.cls == SemClass.DOORBELL and (r.address & ~3) in db_queue:
                db_pending.setdefault(db_queue[r.address & ~3], r.t_ps)
            elif r.cls == SemClass.DESC_READ and db_pending:
                qn = next((qq for lo, hi, qq in ring_of if lo <= r.address < hi), None)
                if qn in db_pending:
                    dbl.append((r.t_ps - db_pending.pop(qn)) / 1000)
            if r.dir == Direction.DOWN and r.type in _MWR and bar is not None:
                off = r.address - bar
                if r.cls != SemClass.DOORBELL and r.payload is not None and len(r.payload) >= 4:
                    val = int.from_bytes(r.payload[:4], "little")
                    if msix_base is not None and msix_base <= off < msix_base + 16:
                        msix[off - msix_base] = val
                    elif off in by_off and by_off[off] not in reg_write:
                        reg_write[by_off[off]] = val        # the value the driver initialised it with
                if last_mmio_w is not None and r.t_ps - last_mmio_w < 2e6:
                    mmg.append((r.t_ps - last_mmio_w) / 1000)
                last_mmio_w = r.t_ps
            if r.cls == SemClass.DATA_WRITE:
                last_dw_t = r.t_ps
                rx_writes.append(r.t_ps)
            elif r.cls == SemClass.CPL_WRITE and mm is not None:
                reg = mm.find(r.address)
                if reg is not None and reg.kind == RegionKind.TX_CPL_RING:
                    if r.payload and len(r.payload) >= 8:
                        slot, flen = struct.unpack_from("<II", r.payload, 0)
                        fb.append(flen)
                        if (slot & 0xFFFF) in data_done:
                            txg.append((r.t_ps - data_done.pop(slot & 0xFFFF)) / 1000)
                elif reg is not None and last_dw_t is not None:
                    rxg.append((r.t_ps - last_dw_t) / 1000)
                if irq_first is None:
                    irq_first = r.t_ps
            elif r.cls == SemClass.INTERRUPT:
                if irq_first is not None:
                    irq.append((r.t_ps - irq_first) / 1000)
                    irq_first = None
                if r.payload and msi_data is None:
                    msi_data = int.from_bytes(r.payload[:4], "little")
        # MAC lead/lag: each RX frame to the first data write at or after it; each TX frame to the data before it
        rx_t = sorted(f.t_ps for f in mac if f.port == MacPort.RX)
        j = 0
        for ft in rx_t:
            j = bisect.bisect_left(rx_writes, ft, j)
            if j < len(rx_writes):
                lead.append((rx_writes[j] - ft) / 1000)
        dcpl = [r.t_ps for r in recs if r.dir == Direction.DOWN and r.type == TlpType.CplD]
        for f in mac:
            if f.port == MacPort.TX:
                k = bisect.bisect_right(dcpl, f.t_ps) - 1
                if k >= 0:
                    lag.append((f.t_ps - dcpl[k]) / 1000)
    med = lambda a, d: float(np.median(a)) if len(a) else d  # noqa: E731
    p = Priors()
    p.read_latency_ns = _q(lat) or p.read_latency_ns
    p.mmio_latency_ns = _q(mlat) or p.mmio_latency_ns
    p.cpl_gap_ns = med([g for g in gaps if g >= 0], p.cpl_gap_ns)
    p.tx_cplw_gap_ns = _q([g for g in txg if g >= 0]) or p.tx_cplw_gap_ns
    p.rx_cplw_gap_ns = _q([g for g in rxg if g >= 0]) or p.rx_cplw_gap_ns
    p.irq_wait_ns = _q([g for g in irq if g >= 0]) or p.irq_wait_ns
    p.doorbell_read_ns = _q([g for g in dbl if g >= 0]) or p.doorbell_read_ns
    p.frame_bytes = _q(fb) or p.frame_bytes
    p.rx_lead_ns = med([g for g in lead if g >= 0], p.rx_lead_ns)
    p.tx_lag_ns = med([g for g in lag if g >= 0], p.tx_lag_ns)
    p.mmio_gap_ns = med(mmg, p.mmio_gap_ns)
    if batch:
        p.desc_batch = max(batch)
        p.desc_cache = max(max(cache), p.desc_batch)
    p.dt_max_ns = float(np.percentile(dts, 99.99) / 1000) * 2 if dts else p.dt_max_ns
    p.reg_write, p.reg_read = reg_write, reg_read
    p.msix_table = [msix.get(o, 0) for o in (0, 4, 8, 12)] if msix else []
    p.msi_data = msi_data or 0
    if host_id is not None:
        p.host_id, p.device_id = host_id, dev_id
    return p


# ----------------------------------------------------------------------------------------------------------------
# accounting

CHANGE_FIELDS = ("kind", "time", "address", "length", "first_be", "last_be", "tag", "byte_count", "lower_address",
                 "status", "attr", "tc", "ep", "requester_id", "completer_id")


@dataclass
class CalibrationStats:
    """What calibration did to its input: per record kept / changed / dropped, per field changed, inserted."""

    records_in: int = 0
    records_out: int = 0
    unchanged: int = 0
    changed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    deferred: int = 0                     # records moved later (a completion record waiting for its data)
    field_changes: dict[str, int] = field(default_factory=lambda: {f: 0 for f in CHANGE_FIELDS})

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_inserted(self) -> int:
        return sum(self.inserted.values())

    def fractions(self) -> dict[str, float]:
        n = max(self.records_in, 1)
        kept = self.unchanged + self.changed
        return {"unchanged": self.unchanged / n, "changed": self.changed / n, "dropped": self.n_dropped / n,
                "inserted": self.n_inserted / max(self.records_out, 1),
                "fields_changed": sum(self.field_changes.values()) / max(kept * len(CHANGE_FIELDS), 1)}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fractions"] = self.fractions()
        return d

    def format(self) -> str:
        f = self.fractions()
        top = sorted(((v, k) for k, v in self.field_changes.items() if v), reverse=True)[:6]
        return (f"calibration: {self.records_in} records in, {self.records_out} out; unchanged {f['unchanged']:.1%}, "
                f"changed {f['changed']:.1%} (fields {f['fields_changed']:.1%}: "
                + ", ".join(f"{k} {v}" for v, k in top) + f"), dropped {f['dropped']:.1%} {dict(self.dropped)}, "
                f"inserted {self.n_inserted} ({f['inserted']:.1%} of output) {dict(self.inserted)}, "
                f"deferred {self.deferred}")


# ----------------------------------------------------------------------------------------------------------------
# calibrator state


class _R:
    """A record on its way out (mutable: descriptor payloads are filled in when the frames they describe are known)."""

    __slots__ = ("t", "dir", "type", "length", "addr", "fbe", "lbe", "tag", "rid", "cid", "status", "bc", "la",
                 "tc", "attr", "ep", "cls", "payload", "pend", "src")

    def __init__(self, t, d, ty, length, addr, fbe, lbe, tag, rid, cid, cls, attr=0, bc=0, la=0, payload=None,
                 src=None):
        self.t = t
        self.dir = d
        self.type = ty
        self.length = length
        self.addr = addr
        self.fbe = fbe
        self.lbe = lbe
        self.tag = tag
        self.rid = rid
        self.cid = cid
        self.status = 0
        self.bc = bc
        self.la = la
        self.tc = 0
        self.attr = attr
        self.ep = False
        self.cls = cls
        self.payload = payload
        self.pend = None
        self.src = src

    def record(self, seq: int) -> TlpRecord:
        ty = self.type
        return TlpRecord(seq=seq, t_ps=self.t, dir=_DIR_OF[self.dir], type=_TYPE_OF[ty], length=self.length,
                         address=self.addr, first_be=self.fbe, last_be=self.lbe, tag=self.tag,
                         requester_id=self.rid, completer_id=self.cid, status=_STATUS_OF[self.status],
                         byte_count=self.bc, lower_address=self.la, tc=self.tc, attr=self.attr, ep=self.ep,
                         payload_len=self.length * 4 if _HAS_DATA[ty] else 0, cls=_CLS_OF[self.cls],
                         payload=self.payload)


class _Frame:
    __slots__ = ("idx", "slot", "buf", "read", "delivered", "length", "moved", "completed", "closed", "want_cplw",
                 "done", "t_last", "t_first", "desc_len", "fid", "src", "data")

    def __init__(self, idx: int, slot: int, buf: int, read, desc_len: int):
        self.idx = idx              # absolute descriptor number (ring index = idx % entries)
        self.slot = slot
        self.buf = buf              # buffer address the descriptor names
        self.read = read            # the descriptor read that fetches it
        self.delivered = False      # its descriptor bytes have arrived at the device
        self.length = None          # TX: frame length once known; RX: bytes written once closed
        self.moved = 0              # TX: bytes of data read requested; RX: bytes written
        self.completed = 0          # TX: bytes of data read completions received
        self.closed = False
        self.want_cplw = False      # TX: the stream asked for its completion record before its data completed
        self.done = False           # completion record written
        self.t_last = 0
        self.t_first = None
        self.desc_len = desc_len    # RX: buffer length the descriptor gives
        self.fid = idx
        self.src = None             # TX: the input completion record waiting for the data (deferred)
        self.data = None            # frame bytes the input stream carried (kept payloads), overlaid on the pattern

    def put(self, off: int, b: bytes) -> None:
        """Bytes of the frame the input stream carried, at offset ``off``."""
        if not b:
            return
        if self.data is None:
            self.data = bytearray()
        end = off + len(b)
        if len(self.data) < end:
            self.data.extend(_pattern_slice(self.fid, len(self.data), end - len(self.data)))
        self.data[off:end] = b

    def content(self, n: int) -> bytes:
        """The whole frame: the carried bytes where the stream had them, the pattern elsewhere."""
        if self.data is None:
            return _frame_bytes(self.fid, n)
        d = bytes(self.data[:n])
        return d + _pattern_slice(self.fid, len(d), n - len(d))

    def slice(self, off: int, n: int) -> bytes:
        if self.data is not None and off < len(self.data):
            d = bytes(self.data[off:off + n])
            return d + _pattern_slice(self.fid, off + len(d), n - len(d))
        return _pattern_slice(self.fid, off, n)


class _Read:
    __slots__ = ("kind", "q", "tag", "t", "addr0", "total", "got", "attr", "tc", "start", "n", "frame", "foff", "frames",
                 "early", "src_addr")

    def __init__(self, kind, q, tag, t, addr0, total, attr, tc=0, start=0, n=0, frame=None, foff=0):
        self.kind = kind            # "desc" | "data"
        self.q = q
        self.tag = tag
        self.t = t
        self.addr0 = addr0
        self.total = total
        self.got = 0
        self.attr = attr
        self.tc = tc
        self.start = start          # desc: first absolute descriptor number
        self.n = n                  # desc: descriptors
        self.frame = frame          # data: the frame it reads
        self.foff = foff            # data: offset of its first byte in the frame
        self.frames = []            # desc: the frames whose descriptors it fetches
        self.early = False          # answered by calibration before the stream answered it
        self.src_addr = None        # the address the stream's request had


class _HostReq:
    __slots__ = ("kind", "tag", "t", "addr", "reg", "fbe", "attr", "tc")

    def __init__(self, kind, tag, t, addr, reg, fbe, attr=0, tc=0):
        self.kind = kind            # "cfgrd" | "cfgwr" | "mmio"
        self.tag = tag
        self.t = t
        self.addr = addr
        self.reg = reg
        self.fbe = fbe
        self.attr = attr
        self.tc = tc


class _Queue:
    def __init__(self, name: str, ring, cpl, data, offset: int = 0):
        self.name = name
        self.ring_base = ring.base
        self.entries = max(ring.size // DESC_BYTES, 2)
        self.cpl_base = cpl.base if cpl is not None else None
        self.data_base = data.base if data is not None else None
        self.stride = (data.size // self.entries) if data is not None else 0
        self.stride = self.stride - self.stride % 4
        self.offset = offset                    # a buffer starts this far into its slot (HostSetup.buffer_offset)
        self.room = self.stride - offset        # the bytes a buffer holds
        if data is not None and self.room < 64:
            raise ValueError(f"{name} buffers: a buffer offset of {offset} B leaves {self.room} B of a "
                             f"{self.stride} B slot")
        self.posted = 0
        self.fetched = 0
        self.completed = 0
        self.frames: deque[_Frame] = deque()   # fetched, completion record not yet written, in ring order
        self.initialised = False
        self.model_prod = 0                     # the stream's own producer index (to read a doorbell's delta)
        self.credit = 0                         # descriptors posted by inserted doorbells, not yet by the stream
        self.bytes = 0

    def buf(self, idx: int) -> int:
        return self.data_base + (idx % self.entries) * self.stride + self.offset


# ----------------------------------------------------------------------------------------------------------------


class Calibrator:
    """Feed records in stream order (``feed``), then ``finish()``; calibrated records go to ``sink`` in order,
    MAC frames to ``mac_sink``. ``stats`` counts what was changed, dropped, inserted."""

    def __init__(self, header: TraceHeader, priors: Priors | None = None, *, sink: Callable[[TlpRecord], None],
                 mac_sink: Callable[[MacFrame], None] | None = None, seed: int = 0, hold_max: int = 4096,
                 preamble: bool = True, host: Any = None):
        """``host``: a ``phantom.gen.condition.HostSetup`` (registers the driver programs, a buffer offset)."""
        self.h = header
        self.p = priors or Priors()
        self.sink = sink
        self.mac_sink = mac_sink or (lambda f: None)
        self.rng = random.Random(seed)
        # doorbell-to-read latencies draw from a stream of their own: re-timing doorbells leaves every other draw
        # (completion latencies, frame lengths, record gaps) what it was, so the stimulus differs only there
        self.rng_doorbell = random.Random(f"doorbell-{seed}")
        self.hold_max = hold_max
        self.want_preamble = preamble
        self.stats = CalibrationStats()
        if not header.memory_map:
            raise ValueError("calibration needs a trace header with a memory map (rings, buffers, doorbells)")
        mm = MemoryMap.from_json(header.memory_map)
        self.mm = mm
        buffer_offset = int(getattr(host, "buffer_offset", 0) or 0)
        one = lambda k: (mm.of_kind(k) or [None])[0]  # noqa: E731
        self.q: dict[str, _Queue] = {}
        for qn, rk, ck, dk in (("tx", RegionKind.TX_RING, RegionKind.TX_CPL_RING, RegionKind.TX_DATA),
                               ("rx", RegionKind.RX_RING, RegionKind.RX_CPL_RING, RegionKind.RX_DATA)):
            ring = one(rk)
            if ring is None or one(dk) is None:
                raise ValueError(f"calibration needs the {qn} ring and its buffers in the memory map")
            self.q[qn] = _Queue(qn, ring, one(ck), one(dk), buffer_offset)
        bar = one(RegionKind.BAR)
        if bar is None:
            raise ValueError("calibration needs the device's BAR in the memory map")
        self.bar = bar
        self.msix = one(RegionKind.MSIX)
        self.regs: dict[str, int] = dict((header.device or {}).get("registers") or {})
        self.reg_by_off = {v: k for k, v in self.regs.items()}
        # registers the host set-up pins: written at initialisation, and every write of the stream to them keeps
        # the pinned value (the stream learned the captured drivers' values)
        self.pinned: dict[str, int] = dict(getattr(host, "registers", None) or {})
        for name in self.pinned:
            if name not in self.regs:
                raise ValueError(f"host register {name}: not in the device's register map (header device.registers)")
        if self.pinned:
            self.p = dataclasses.replace(self.p, reg_write={**self.p.reg_write, **self.pinned})
        self.pinned_left = list(self.pinned)
        self.reg_offs = sorted(self.reg_by_off)
        self.doorbell = {r.base: r.kind.queue for r in mm.regions if r.kind.is_doorbell}
        self.doorbell_of = {q: a for a, q in self.doorbell.items()}
        self.qctrl = {r.base: r.kind.queue for r in mm.regions if r.kind in (RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)}
        self.special = set(self.doorbell) | set(self.qctrl)
        self.queue_regs = {}
        for qn, pre in (("tx", "REG_TXQ_"), ("rx", "REG_RXQ_")):
            for suffix in ("BASE_LO", "BASE_HI", "SIZE", "CPL_BASE_LO", "CPL_BASE_HI", "CTRL", "PROD"):
                off = self.regs.get(pre + suffix)
                if off is not None:
                    self.queue_regs[bar.base + off] = (qn, suffix)
        msix_off = self.regs.get("REG_MSIX_TABLE")
        self.msix_table = (bar.base + msix_off, bar.base + msix_off + 16) if msix_off is not None else None
        self.safe_reg = next((bar.base + self.regs[n] for n in ("REG_SCRATCH",) if n in self.regs), None)
        self.tag_limit = 1 << header.tag_width
        self.host_tag_limit = min(self.tag_limit, 32)
        self.mps, self.mrrs, self.rcb = header.mps, header.mrrs, header.rcb
        hm = (header.host or {}).get("model") or {}
        self.split_all = bool(hm.get("split_on_all_rcb", False))
        self.keep = header.payload_bytes_kept
        self.ro_ok = header.relaxed_ordering
        self.ns_ok = header.no_snoop
        self.attr_mask = (2 if self.ro_ok else 0) | (1 if self.ns_ok else 0) | 4
        dev = header.device or {}
        self.clk = float(dev.get("user_clk_ns") or 4.0)
        self.host_id, self.dev_id = self.p.host_id, self.p.device_id
        # state
        self.t_last = 0
        self.t_offset = 0
        self.dev_reads: dict[int, _Read] = {}
        self.host_reqs: dict[int, _HostReq] = {}
        self.news = 0
        self.t_news = None
        self.irqs = 0
        self.out: deque[_R] = deque()
        self.seq = 0
        self.mac_heap: list[tuple[int, int, MacFrame]] = []
        self.mac_n = 0
        self.reg_values: dict[str, int] = {}
        self.finished = False
        self.prev_in_t = None
        self._cur_src = None
        self.tag_map: dict[int, _Read] = {}   # the stream's tag of a device read -> the read it became
        self._last_host_tag = 0
        self._guarding = False
        timeout_ps = int((header.cpl_timeout_ns or 50e6) * 1000)
        self.guard_ps = max(min(timeout_ps // 4, int(self.p.overdue_read_ns * 1000) * 20), 1)

    # ============================================================================================================
    # public

    def feed_columns(self, tc: TraceColumns) -> None:
        for r in tc.records():
            self.feed(r)

    def feed(self, r: TlpRecord) -> None:
        """One input record (a generated TLP or a captured one)."""
        st = self.stats
        st.records_in += 1
        t_in = int(r.t_ps) + self.t_offset
        t = max(t_in, self.t_last)
        if self.prev_in_t is not None:
            gap = t_in - self.prev_in_t
            cap = int(self.p.dt_max_ns * 1000)
            if gap > cap:                       # a gap longer than any seen in training: shortened
                shift = gap - cap
                self.t_offset -= shift
                t_in -= shift
                t = max(t_in, self.t_last)
        self.prev_in_t = t_in
        self._overdue(t)
        t = max(t, self.t_last)
        self._cur_src = (r, t_in)
        self._dispatch(r, t)
        if self._cur_src is not None:   # every handler emits or drops its record; never silently lost
            self._drop("unhandled")
        if len(self.out) > self.hold_max:
            self._pressure()

    def finish(self) -> CalibrationStats:
        """End of the stream: answer what is open, finish the frames in flight, leave the device idle."""
        if self.finished:
            return self.stats
        self.finished = True
        self._cur_src = None
        if not (self.q["tx"].initialised and self.q["rx"].initialised):
            if self.stats.records_out or self.want_preamble:
                self._preamble(self.t_last)
        t = self.t_last
        for hr in list(self.host_reqs.values()):
            self._complete_host(hr, self.t_last, "drain")
        for rd in list(self.dev_reads.values()):
            self._complete_read(rd, self.t_last, "drain")
        tx = self.q["tx"]
        # TX: every posted descriptor is fetched, read, completed and recorded (as the cache makes room)
        while True:
            for f in list(tx.frames):
                self._finish_tx_frame(f, "drain")
                self._safe_point()
            if tx.posted <= tx.fetched:
                break
            self._complete_read(self._insert_desc_read(tx, self.t_last, tx.posted - tx.fetched, "drain"),
                                self.t_last, "drain")
        # RX: frames with data get their records; descriptors prefetched and unused stay fetched
        rx = self.q["rx"]
        for f in list(rx.frames):
            if f.moved > 0 and not f.done:
                if not f.closed:
                    self._close_rx(f)
                self._emit_rx_cplw(f, self.t_last, "drain")
            elif not f.delivered:
                self._complete_read(f.read, self.t_last, "drain")
        for rd in list(self.dev_reads.values()):
            self._complete_read(rd, self.t_last, "drain")
        for hr in list(self.host_reqs.values()):
            self._complete_host(hr, self.t_last, "drain")
        if self.news:
            self._emit_irq(self.t_last + int(self.p.irq_wait_ns[0] * 1000), "drain")
        self._flush(force=True)
        while self.mac_heap:
            self.mac_sink(heapq.heappop(self.mac_heap)[2])
        _ = t
        return self.stats

    # ============================================================================================================
    # emission

    def _account(self, out: _R) -> None:
        src = out.src
        st = self.stats
        if src is None:
            return
        r, t_in = src
        ch = st.field_changes
        n = 0
        if (r.dir != out.dir or _base(r.type) != _base(out.type) or r.cls != out.cls):
            ch["kind"] += 1
            n += 1
        # (IntEnum fields compare as their values)
        was = (t_in, r.address, r.length, r.first_be, r.last_be, r.tag, r.byte_count, r.lower_address, r.status,
               r.attr, r.tc, bool(r.ep), r.requester_id, r.completer_id)
        now = (out.t, out.addr, out.length, out.fbe, out.lbe, out.tag, out.bc, out.la, out.status, out.attr, out.tc,
               out.ep, out.rid, out.cid)
        if was != now:
            for name, x, y in zip(_FIELDS, was, now):
                if x != y:
                    ch[name] += 1
                    n += 1
        if n:
            st.changed += 1
        else:
            st.unchanged += 1

    def _emit(self, rec: _R) -> _R:
        if rec.t < self.t_last:
            rec.t = self.t_last
        self.t_last = rec.t
        self._account(rec)
        rec.src = None
        self.out.append(rec)
        self.stats.records_out += 1
        if rec.pend is None and len(self.out) == 1:
            self._flush()
        return rec

    def _safe_point(self) -> None:
        """Between the records of a long inserted run: no open request may run into its completion timeout."""
        if self._guarding:
            return
        self._guarding = True
        src = self._cur_src
        self._cur_src = None
        try:
            t = self.t_last
            while self.dev_reads and t - next(iter(self.dev_reads.values())).t > self.guard_ps:
                self._complete_read(next(iter(self.dev_reads.values())), self.t_last, "late completion")
            while self.host_reqs and t - next(iter(self.host_reqs.values())).t > self.guard_ps:
                self._complete_host(next(iter(self.host_reqs.values())), self.t_last, "late completion")
        finally:
            self._guarding = False
            self._cur_src = src

    def _mine(self) -> Any:
        """The input record being calibrated (None while inserting)."""
        src = self._cur_src
        self._cur_src = None  # one output record per input record carries it
        return src

    def _drop(self, why: str) -> None:
        self.stats.dropped[why] = self.stats.dropped.get(why, 0) + 1
        self._cur_src = None

    def _ins(self, why: str) -> None:
        self.stats.inserted[why] = self.stats.inserted.get(why, 0) + 1

    def _flush(self, force: bool = False) -> None:
        out = self.out
        while out:
            r = out[0]
            if r.pend is not None:
                if not self._resolve(r):
                    if not force:
                        return
                    self._force_resolve(r)
                    self._resolve(r)
            out.popleft()
            self.sink(r.record(self.seq))
            self.seq += 1
        # MAC frames whose time is safely behind every record still to come
        horizon = self.t_last - int(max(self.p.rx_lead_ns, self.p.tx_lag_ns) * 1000) * 4
        for f in self.q["rx"].frames:
            if f.t_first is not None:
                horizon = min(horizon, f.t_first - int(self.p.rx_lead_ns * 1000) - 1)
                break
        while self.mac_heap and self.mac_heap[0][0] < horizon:
            self.mac_sink(heapq.heappop(self.mac_heap)[2])

    def _pressure(self) -> None:
        """The hold-back queue is full: fix the lengths of the frames its head waits for."""
        head = self.out[0]
        if head.pend is not None:
            self._force_resolve(head)
        self._flush()

    def _resolve(self, r: _R) -> bool:
        frames = r.pend
        for f in frames:
            if f.length is None:
                return False
        r.payload = b"".join([struct.pack("<QII", f.buf, f.length, 0) for f in frames])[:r.length * 4]
        r.pend = None
        return True

    def _force_resolve(self, r: _R) -> None:
        for f in r.pend:
            if f.length is None:
                if f.moved == 0:
                    self._plan_tx_frame(f, self.t_last, "hold")
                else:
                    self._close_tx(f)

    @staticmethod
    def _frames_of(rd: _Read, off: int, nbytes: int) -> list[_Frame]:
        return rd.frames[off // DESC_BYTES:(off + nbytes) // DESC_BYTES]

    # ============================================================================================================
    # dispatch

    def _dispatch(self, r: TlpRecord, t: int) -> None:
        ty = r.type
        d = r.dir
        if ty.is_completion:
            if d == Direction.DOWN:
                self._cpl_down(r, t)
            else:
                self._cpl_up(r, t)
            return
        if ty.is_config:
            self._config(r, t)
            return
        if ty.is_io or ty.is_atomic or ty in (TlpType.Msg, TlpType.MsgD, TlpType.MRdLk32, TlpType.MRdLk64):
            self._drop("unsupported type")
            return
        cls = r.cls
        if d == Direction.DOWN:
            if ty.is_mem_read:
                self._mmio_read(r, t)
            elif cls == SemClass.DOORBELL or (r.address & ~3) in self.doorbell:
                self._doorbell(r, t)
            else:
                self._mmio_write(r, t)
            return
        if cls not in (SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE, SemClass.CPL_WRITE,
                       SemClass.INTERRUPT):
            cls = self.mm.classify(ty, d, r.address)
        if ty.is_mem_read:
            if cls == SemClass.DESC_READ:
                self._desc_read(r, t)
            elif cls == SemClass.DATA_READ:
                self._data_read(r, t)
            else:
                q = self.mm.queue_of(r.address)
                if cls == SemClass.OTHER and q is not None:
                    (self._desc_read if q and self._in_ring(r.address) else self._data_read)(r, t)
                else:
                    self._drop("device read outside the memory map")
            return
        if cls == SemClass.DATA_WRITE:
            self._data_write(r, t)
        elif cls == SemClass.CPL_WRITE:
            self._cpl_write(r, t)
        elif cls == SemClass.INTERRUPT:
            self._interrupt(r, t)
        else:
            self._drop("device write outside the memory map")

    def _in_ring(self, a: int) -> bool:
        return any(q.ring_base <= a < q.ring_base + q.entries * DESC_BYTES for q in self.q.values())

    def _queue_for(self, r: TlpRecord, default: str) -> _Queue:
        qn = self.mm.queue_of(r.address)
        return self.q.get(qn or default, self.q[default])

    # ============================================================================================================
    # host side

    def _ensure_init(self, t: int) -> None:
        if not (self.q["tx"].initialised and self.q["rx"].initialised):
            if self.want_preamble:
                self._preamble(t)
            else:
                for q in self.q.values():
                    q.initialised = True

    def _preamble(self, t: int) -> None:
        """The host's initialisation the stream lacks: MSI-X entry, queue registers from the memory map, the RX
        ring filled, interrupts enabled (the driver's order, host/driver.py)."""
        src = self._cur_src
        self._cur_src = None
        p = self.p
        gap = int(p.mmio_gap_ns * 1000)
        t0 = t
        tt = [t]

        def w(name_or_addr, value, why="init"):
            a = name_or_addr if isinstance(name_or_addr, int) else self.bar.base + self.regs[name_or_addr]
            tt[0] += gap
            self._host_write(a, value, tt[0], SemClass.MMIO_WRITE)
            self._ins(why)

        def rd(name):
            tt[0] += gap
            self._host_read(self.bar.base + self.regs[name], tt[0], "init")
            hr = self.host_reqs[self._last_host_tag]
            self._complete_host(hr, tt[0] + int(_sample(p.mmio_latency_ns, self.rng, 50.0) * 1000), "init")
            tt[0] = self.t_last

        if self.msix_table is not None and self.msix is not None:
            vals = p.msix_table or [self.msix.base & 0xFFFFFFFF, self.msix.base >> 32, p.msi_data, 0]
            vals = [self.msix.base & 0xFFFFFFFF, self.msix.base >> 32] + list(vals[2:4])
            for k, v in enumerate(vals):
                w(self.msix_table[0] + 4 * k, v)
        for name in ("REG_ID", "REG_CPL_TIMEOUT"):
            if name in self.regs:
                rd(name)
        for name in ("REG_CTRL", "REG_IRQ_COAL_COUNT", "REG_IRQ_COAL_TIMER"):
            if name in self.regs and name in p.reg_write:
                w(name, p.reg_write[name])
                if name in self.pinned_left:
                    self.pinned_left.remove(name)
        for name in [n for n in self.pinned_left if n != "REG_IRQ_ENABLE"]:
            w(name, self.pinned[name])
            self.pinned_left.remove(name)
        for qn, pre in (("tx", "REG_TXQ_"), ("rx", "REG_RXQ_")):
            q = self.q[qn]
            if q.initialised:
                continue
            cpl = q.cpl_base or 0
            for suffix, v in (("CTRL", 0), ("BASE_LO", q.ring_base & 0xFFFFFFFF), ("BASE_HI", q.ring_base >> 32),
                              ("CPL_BASE_LO", cpl & 0xFFFFFFFF), ("CPL_BASE_HI", cpl >> 32), ("SIZE", q.entries),
                              ("CTRL", 1)):
                if pre + suffix in self.regs:
                    w(pre + suffix, v)
            q.initialised = True
            q.posted = q.fetched = q.completed = 0
            q.model_prod = 0
            if pre + "STATUS" in self.regs:
                rd(pre + "STATUS")
        rx = self.q["rx"]
        if rx.posted == 0 and rx.entries > 1:
            tt[0] += gap
            rx.posted = rx.entries - 1
            self._host_write(self.doorbell_of.get("rx", self.bar.base), rx.posted % rx.entries, tt[0],
                             SemClass.DOORBELL)
            self._ins("init")
        if "REG_IRQ_ENABLE" in self.regs:
            w("REG_IRQ_ENABLE", p.reg_write.get("REG_IRQ_ENABLE", 7))
        for q in self.q.values():
            q.initialised = True
        # the stream's own times move on by the time initialisation took
        self.t_offset += self.t_last - t0
        self._cur_src = src

    def _host_write(self, addr: int, value: int, t: int, cls: SemClass, src=None) -> _R:
        ty = TlpType.MWr64 if addr >= 1 << 32 else TlpType.MWr32
        return self._emit(_R(t, 0, int(ty), 1, addr, 0xF, 0, 0, self.host_id, 0, int(cls),
                             payload=(value & 0xFFFFFFFF).to_bytes(4, "little"), src=src))

    def _alloc_tag(self, table: dict, want: int, limit: int) -> int | None:
        if 0 <= want < limit and want not in table:
            return want
        for k in range(1, limit + 1):
            c = (want + k) % limit
            if c not in table:
                return c
        return None

    def _host_read(self, addr: int, t: int, why: str | None, want_tag: int = 0, src=None, kind: str = "mmio",
                   fbe: int = 0xF, cfg: TlpType | None = None, payload: bytes | None = None) -> _R | None:
        tag = self._alloc_tag(self.host_reqs, want_tag, self.host_tag_limit)
        if tag is None:
            hr = next(iter(self.host_reqs.values()))
            self._complete_host(hr, t, "tags exhausted")
            tag = self._alloc_tag(self.host_reqs, want_tag, self.host_tag_limit)
        if kind == "mmio":
            ty = TlpType.MRd64 if addr >= 1 << 32 else TlpType.MRd32
            rec = _R(t, 0, int(ty), 1, addr, fbe, 0, tag, self.host_id, 0, int(SemClass.MMIO_READ), src=src)
            reg = self.reg_by_off.get(addr - self.bar.base)
        else:
            ty = cfg
            rec = _R(t, 0, int(ty), 1, addr, fbe, 0, tag, self.host_id, self.dev_id, int(SemClass.CONFIG),
                     payload=payload if ty.has_data else None, src=src)
            reg = None
        if why:
            self._ins(why)
        hr = _HostReq(kind if kind == "mmio" else ("cfgwr" if ty.has_data else "cfgrd"), tag, t, addr, reg, fbe)
        self.host_reqs[tag] = hr
        self._last_host_tag = tag
        self._emit(rec)
        hr.t = rec.t
        return rec

    def _reg_value(self, reg: str | None) -> int:
        if reg is None:
            return 0
        tx, rx = self.q["tx"], self.q["rx"]
        if reg == "REG_TXQ_PROD":
            return tx.posted % tx.entries
        if reg == "REG_RXQ_PROD":
            return rx.posted % rx.entries
        if reg == "REG_TXQ_CONS":
            return tx.completed % tx.entries
        if reg == "REG_RXQ_CONS":
            return rx.completed % rx.entries
        if reg == "REG_STAT_TX_PKTS":
            return tx.completed & 0xFFFFFFFF
        if reg == "REG_STAT_RX_PKTS":
            return rx.completed & 0xFFFFFFFF
        if reg == "REG_STAT_TX_BYTES":
            return tx.bytes & 0xFFFFFFFF
        if reg == "REG_STAT_RX_BYTES":
            return rx.bytes & 0xFFFFFFFF
        if reg == "REG_STAT_IRQS":
            return self.irqs & 0xFFFFFFFF
        if reg == "REG_CPL_TIMEOUT" and self.h.cpl_timeout_ns:
            return int(round(self.h.cpl_timeout_ns / self.clk))
        if reg == "REG_TAG_HOLD" and (self.h.device or {}).get("tag_hold_ns"):
            return int(round(self.h.device["tag_hold_ns"] / self.clk))
        if reg in self.reg_values:
            return self.reg_values[reg]
        if reg in self.p.reg_read:
            return self.p.reg_read[reg]
        return self.p.reg_write.get(reg, 0)

    def _complete_host(self, hr: _HostReq, t: int, why: str | None, src=None, given: bytes | None = None) -> None:
        del self.host_reqs[hr.tag]
        if why:
            self._ins(why)
        if hr.kind == "cfgwr":
            rec = _R(t, 1, int(TlpType.Cpl), 0, 0, 0, 0, hr.tag, self.host_id, self.dev_id, int(SemClass.COMPLETION),
                     bc=4, la=0, src=src)
        else:
            la = (hr.addr + (_lead0(hr.fbe))) & 0x7F if hr.kind == "mmio" else 0
            if given is not None and len(given) == 4:
                pl = given
            else:
                pl = (self._reg_value(hr.reg) if hr.kind == "mmio" else 0).to_bytes(4, "little")
            bc = request_bytes(1, hr.fbe, 0) if hr.kind == "mmio" else 4   # a memory read: the bytes it asked for
            rec = _R(t, 1, int(TlpType.CplD), 1, 0, 0, 0, hr.tag, self.host_id, self.dev_id,
                     int(SemClass.COMPLETION), bc=bc, la=la, payload=pl, src=src)
        rec.attr, rec.tc = hr.attr, hr.tc
        self._emit(rec)

    def _config(self, r: TlpRecord, t: int) -> None:
        ty = {TlpType.CfgRd1: TlpType.CfgRd0, TlpType.CfgWr1: TlpType.CfgWr0}.get(r.type, r.type)
        fbe = r.first_be & 0xF or 0xF
        addr = r.address & 0xFFC
        pl = None
        if ty.has_data:
            pl = (r.payload or b"")[:4].ljust(4, b"\0")
        self._host_read(addr, t, None, r.tag, self._mine(), kind="cfg", fbe=fbe, cfg=ty, payload=pl)

    def _snap_reg(self, a: int) -> int:
        """A BAR register address: DWORD-aligned inside BAR0, the nearest register of the map when it has one
        (inside the MSI-X table and PBA every DWORD is a register)."""
        off = (a - self.bar.base) % self.bar.size if not self.bar.base <= a < self.bar.end else a - self.bar.base
        off &= ~3
        lo = self.regs.get("REG_MSIX_TABLE")
        hi = self.regs.get("REG_MSIX_PBA")
        if lo is not None and hi is not None and lo <= off < hi + 8:
            return self.bar.base + off
        if self.reg_offs and off not in self.reg_by_off:
            k = bisect.bisect_left(self.reg_offs, off)
            cands = [self.reg_offs[j] for j in (k - 1, k) if 0 <= j < len(self.reg_offs)]
            off = min(cands, key=lambda c: abs(c - off))
        return self.bar.base + off

    def _mmio_read(self, r: TlpRecord, t: int) -> None:
        a = self._snap_reg(r.address)
        self._host_read(a, t, None, r.tag, self._mine(), fbe=r.first_be & 0xF or 0xF)

    def _mmio_write(self, r: TlpRecord, t: int) -> None:
        a = self._snap_reg(r.address)
        val = int.from_bytes((r.payload or b"\0\0\0\0")[:4].ljust(4, b"\0"), "little")
        initialising = not (self.q["tx"].initialised and self.q["rx"].initialised)
        qr = self.queue_regs.get(a)
        if qr is not None and initialising:
            qn, what = qr
            q = self.q[qn]
            if q.initialised:
                pass
            else:
                # initialisation writes of the stream are kept, with the values the memory map implies
                cpl = q.cpl_base or 0
                want = {"BASE_LO": q.ring_base & 0xFFFFFFFF, "BASE_HI": q.ring_base >> 32, "SIZE": q.entries,
                        "CPL_BASE_LO": cpl & 0xFFFFFFFF, "CPL_BASE_HI": cpl >> 32}.get(what)
                if what == "CTRL":
                    val &= 1
                    if val:
                        if self._write_pinned(t):
                            t = max(t, self.t_last) + int(self.p.mmio_gap_ns * 1000)
                        q.initialised = True
                        q.posted = q.fetched = q.completed = 0
                        q.model_prod = 0
                elif what == "PROD":
                    val = 0
                elif want is not None:
                    val = want
                self._host_write(a, val, t, SemClass.MMIO_WRITE, self._mine())
                return
        in_msix = self.msix_table is not None and self.msix_table[0] <= a < self.msix_table[1]
        if qr is not None or a in self.special or (in_msix and not initialising):
            # a write that would reconfigure a running queue or its interrupt: retarget to the scratch register
            if self.safe_reg is None:
                self._drop("mmio write to a running queue's registers")
                return
            a = self.safe_reg
        if in_msix and initialising and self.msix is not None:
            k = (a - self.msix_table[0]) // 4
            if k == 0:
                val = self.msix.base & 0xFFFFFFFF
            elif k == 1:
                val = self.msix.base >> 32
        reg = self.reg_by_off.get(a - self.bar.base)
        if reg in self.pinned:
            val = self.pinned[reg]
            if reg in self.pinned_left:
                self.pinned_left.remove(reg)
        if reg is not None:
            self.reg_values[reg] = val
        self._host_write(a, val, t, SemClass.MMIO_WRITE, self._mine())

    def _write_pinned(self, t: int) -> int:
        """Pinned registers the stream has not written yet, before its first queue is enabled; how many."""
        todo = [n for n in self.pinned_left if n != "REG_IRQ_ENABLE"]
        if not todo:
            return 0
        src = self._cur_src
        self._cur_src = None
        gap = int(self.p.mmio_gap_ns * 1000)
        for name in todo:
            t = max(t, self.t_last) + gap
            self._host_write(self.bar.base + self.regs[name], self.pinned[name], t, SemClass.MMIO_WRITE)
            self._ins("init")
            self.pinned_left.remove(name)
        self._cur_src = src
        return len(todo)

    def _doorbell(self, r: TlpRecord, t: int) -> None:
        a = r.address & ~3
        qn = self.doorbell.get(a)
        if qn is None:
            qn = min(self.doorbell.items(), key=lambda kv: abs(kv[0] - a))[1] if self.doorbell else None
        if qn is None:
            self._drop("doorbell without a doorbell register")
            return
        self._ensure_init(t)
        t = max(t, self.t_last)
        q = self.q[qn]
        if r.payload is not None and len(r.payload) >= 2:
            prod = int.from_bytes(r.payload[:2], "little") % q.entries
            delta = (prod - q.model_prod) % q.entries
            q.model_prod = prod
        else:
            delta = 1
        # descriptors calibration already posted for this stream (an inserted doorbell) are not posted twice
        used = min(delta, q.credit)
        q.credit -= used
        delta -= used
        free = q.completed + q.entries - 1 - q.posted
        delta = max(0, min(delta, free))
        # a doorbell is never dropped: at worst it rewrites the producer index it already holds
        q.posted += delta
        self._host_write(self.doorbell_of[qn], q.posted % q.entries, t, SemClass.DOORBELL, self._mine())

    def _cpl_up(self, r: TlpRecord, t: int) -> None:
        hr = self.host_reqs.get(r.tag) or (next(iter(self.host_reqs.values())) if self.host_reqs else None)
        if hr is None:
            self._drop("completion without an outstanding host request")
            return
        self._complete_host(hr, t, None, self._mine(), r.payload)

    # ============================================================================================================
    # device reads

    def _dev_tag(self, want: int, t: int) -> int:
        tag = self._alloc_tag(self.dev_reads, want, self.tag_limit)
        if tag is None:
            self._complete_read(next(iter(self.dev_reads.values())), t, "tags exhausted")
            tag = self._alloc_tag(self.dev_reads, want, self.tag_limit)
        return tag

    def _attr(self, a: int) -> int:
        return a & self.attr_mask

    def _desc_read(self, r: TlpRecord, t: int) -> None:
        self._ensure_init(t)
        t = max(t, self.t_last)
        q = self._queue_for(r, "tx")
        if not q.ring_base <= r.address < q.ring_base + q.entries * DESC_BYTES:
            q = self.q["tx"] if self._in_region(r.address, "tx") else (self.q["rx"] if self._in_region(r.address, "rx")
                                                                        else q)
        want = max(1, request_bytes(max(r.length, 1), r.first_be, r.last_be) // DESC_BYTES)
        if self._cache_room(q) <= 0:
            self._drop("descriptor read of a full descriptor cache")   # the device does not fetch then
            return
        if q.posted == q.fetched:
            free = q.completed + q.entries - 1 - q.posted
            if free <= 0:
                self._drop("descriptor read of a full ring")
                return
            q.posted += min(free, want)
            q.credit += min(free, want)
            t = self._insert_doorbell(q, t)
        self._issue_desc_read(q, t, want, r.tag, self._attr(r.attr), self._mine())

    def _insert_doorbell(self, q: _Queue, t: int, latest: int | None = None) -> int:
        """Insert the doorbell a descriptor read needs, a doorbell-to-read latency (drawn from the training
        traces) before the read; returns the read's time. The read is wanted at `t`; `latest`: it may move up to
        there to make room for the latency (a read calibration inserts itself), else it stays at `t`. The doorbell
        goes no earlier than what is already emitted: where the stream left less room than the latency, it
        splits the gap the stream chose (the stream is never stretched, so its bandwidth and inter-arrival
        times stay the backbone's)."""
        d = int(_sample(self.p.doorbell_read_ns, self.rng_doorbell, 100.0) * 1000)
        t_db = max(self.t_last, t - d)
        self._host_write(self.doorbell_of[q.name], q.posted % q.entries, t_db, SemClass.DOORBELL)
        self._ins("doorbell")
        if latest is not None:
            t = max(t, min(t_db + d, latest))
        return t

    def _in_region(self, a: int, qn: str) -> bool:
        reg = self.mm.find(a)
        return reg is not None and reg.kind.queue == qn

    def _cache_room(self, q: _Queue) -> int:
        """Descriptors the device may fetch now (its prefetch: the batch and the free cache entries; a fetch the
        stream asks for is also no larger than what it asked, so the device's rule of not wrapping its cache
        within one read is left to the stream)."""
        cached = 0
        for f in q.frames:   # fetched and not yet turned into frames (frames start in ring order)
            if f.moved == 0 and not f.closed:
                cached += 1
        return min(self.p.desc_batch, self.p.desc_cache - cached)

    def _issue_desc_read(self, q: _Queue, t: int, want: int, tag: int, attr: int, src) -> _Read:
        avail = q.posted - q.fetched
        start = q.fetched % q.entries
        a = q.ring_base + start * DESC_BYTES
        n = min(want, avail, q.entries - start, self.mrrs // DESC_BYTES, (4096 - (a & 0xFFF)) // DESC_BYTES,
                self._cache_room(q))
        n = max(n, 1)   # (callers make sure the cache has room)
        in_tag = tag
        tag = self._dev_tag(tag, t)
        ty = TlpType.MRd64 if a >= 1 << 32 else TlpType.MRd32
        rec = _R(t, 1, int(ty), n * 4, a, 0xF, 0xF, tag, self.dev_id, 0, int(SemClass.DESC_READ), attr=attr, src=src)
        rd = _Read("desc", q, tag, t, a, n * DESC_BYTES, attr, start=q.fetched, n=n)
        if src is not None:
            self.tag_map[in_tag] = rd
        self.dev_reads[tag] = rd
        for k in range(n):
            idx = q.fetched + k
            f = _Frame(idx, idx % q.entries, q.buf(idx), rd, q.room if q.name == "rx" else 0)
            q.frames.append(f)
            rd.frames.append(f)
        q.fetched += n
        self._emit(rec)
        rd.t = rec.t
        return rd

    def _insert_desc_read(self, q: _Queue, t: int, want: int, why: str) -> _Read:
        self._ins(why)
        return self._issue_desc_read(q, max(t, self.t_last), want, 0, 0, None)

    def _piece(self, rd: _Read, want_dw: int | None) -> tuple[int, int]:
        """(length in DW, bytes carried) of the next completion of a read; ``want_dw`` None: largest legal."""
        cur = rd.addr0 + rd.got
        rem = rd.total - rd.got
        lead = cur & 3
        full_dw = (rem + lead + 3) // 4
        mps_dw = self.mps // 4
        if self.split_all or want_dw is None:
            limit_end = cur - lead + self.mps
            if self.split_all:
                limit_end = min(limit_end, (cur // self.rcb + 1) * self.rcb)
            else:
                limit_end = (limit_end // self.rcb) * self.rcb if limit_end < cur + rem else limit_end
            if cur + rem <= limit_end and full_dw <= mps_dw:
                return full_dw, rem
            end = max(limit_end, (cur // self.rcb + 1) * self.rcb)
            dw = (end - (cur - lead)) // 4
            return dw, end - cur
        want_dw = max(1, want_dw)
        if want_dw >= full_dw and full_dw <= mps_dw:
            return full_dw, rem
        # a partial completion ends on an RCB boundary: the one nearest the generated end, within MPS
        want_end = cur - lead + 4 * min(want_dw, mps_dw)
        lo_b = (cur // self.rcb + 1) * self.rcb                  # first boundary after the current byte
        hi_b = ((cur - lead + self.mps) // self.rcb) * self.rcb   # last boundary within MPS
        if lo_b >= cur + rem or hi_b < lo_b:
            if full_dw <= mps_dw:
                return full_dw, rem
            hi_b = lo_b
        b = min(max(int(round(want_end / self.rcb)) * self.rcb, lo_b), hi_b)
        if b >= cur + rem:
            return full_dw, rem
        return (b - (cur - lead)) // 4, b - cur

    def _cpl_payload(self, rd: _Read, nbytes: int, dw: int, given: bytes | None) -> tuple[bytes | None, Any]:
        if rd.kind == "desc":
            fr = self._frames_of(rd, rd.got, nbytes)
            if rd.q.name == "rx":
                return b"".join([struct.pack("<QII", f.buf, f.desc_len, 0) for f in fr])[:dw * 4], None
            return None, fr
        if self.keep == 0:
            return None, None
        f = rd.frame
        n = min(dw * 4, self.keep) if self.keep > 0 else dw * 4
        off = rd.foff + rd.got
        if given is not None and len(given) == n:
            valid = min(n, max(0, rd.foff + rd.total - off))
            f.put(off, given[:valid])
            return given, None
        valid = min(n, max(0, rd.foff + rd.total - off))
        return f.slice(off, valid) + bytes(n - valid), None

    def _emit_cpl(self, rd: _Read, t: int, want_dw: int | None, src) -> None:
        dw, carried = self._piece(rd, want_dw)
        pl, pend = self._cpl_payload(rd, carried, dw, src[0].payload if src is not None else None)
        rec = _R(t, 0, int(TlpType.CplD), dw, 0, 0, 0, rd.tag, self.dev_id, self.host_id, int(SemClass.COMPLETION),
                 attr=rd.attr, bc=rd.total - rd.got, la=(rd.addr0 + rd.got) & 0x7F, payload=pl, src=src)
        rec.tc = rd.tc
        rec.pend = pend
        if rd.kind == "desc":
            for f in self._frames_of(rd, rd.got, carried):
                f.delivered = True
        else:
            rd.frame.completed += carried
        rd.got += carried
        done = rd.got >= rd.total
        if done:
            del self.dev_reads[rd.tag]
        self._emit(rec)
        if done and rd.kind == "data":
            self._tx_progress(rd.frame, self.t_last)

    def _complete_read(self, rd: _Read, t: int, why: str | None) -> None:
        """Insert every completion a read still owes (largest legal pieces, spaced as the host spaces them)."""
        t = max(t, self.t_last)
        if why in ("late completion", "tags exhausted"):
            rd.early = True
        gap = int(self.p.cpl_gap_ns * 1000)
        first = True
        while rd.tag in self.dev_reads and self.dev_reads[rd.tag] is rd:
            if why:
                self._ins(why)
            self._emit_cpl(rd, t if first else self.t_last + gap, None, None)
            first = False
            self._safe_point()

    def _cpl_down(self, r: TlpRecord, t: int) -> None:
        rd = self.tag_map.get(r.tag)
        if rd is not None and self.dev_reads.get(rd.tag) is not rd:
            if rd.early:
                # the stream answers, late, a read calibration has already answered: nothing left to carry
                self._drop("completion of a read already answered")
                return
            rd = None
        if rd is None:
            rd = self.dev_reads.get(r.tag)
        if rd is None:
            rd = next(iter(self.dev_reads.values()), None)
        if rd is None:
            self._drop("completion without an outstanding device read")
            return
        want = r.length if r.type.has_data else 1
        self._emit_cpl(rd, t, want, self._mine())

    # ============================================================================================================
    # TX frames

    def _tx_frame_for_data(self, t: int, model_off: int) -> _Frame | None:
        q = self.q["tx"]
        for f in q.frames:
            if f.closed:
                continue
            if f.moved > 0 and model_off == 0:
                self._close_tx(f)   # the stream starts a new frame
                continue
            if not f.delivered:
                self._complete_read(f.read, t, "descriptor completion")
            return f
        g = self._fetch_more(q, t)
        if g is not None:
            return g
        return None

    def _fetch_more(self, q: _Queue, t: int) -> _Frame | None:
        """Data moves for a descriptor the stream never fetched: the fetch it implies (and the doorbell before it,
        if nothing is posted) is inserted, completed, and its first descriptor used."""
        if q.posted == q.fetched:
            free = q.completed + q.entries - 1 - q.posted
            if free <= 0:
                free = self._make_room(q)
            if free <= 0:
                return None
            q.posted += min(free, 16)
            q.credit += min(free, 16)
            # the whole chain (doorbell, read, its completion) fits between the last record and the one needing it
            t_rd = self._insert_doorbell(q, self.t_last, latest=self.t_last + max(t - self.t_last, 0) // 2)
        else:
            t_rd = self.t_last
        # placed before the record that needs it, at the latest emitted time (or the doorbell's latency after it)
        rd = self._insert_desc_read(q, t_rd, q.posted - q.fetched, "descriptor fetch")
        self._complete_read(rd, max(self.t_last, t), "descriptor fetch")
        return rd.frames[0] if rd.frames else None

    def _make_room(self, q: _Queue) -> int:
        """A full ring whose finished frames wait for completion records the stream does not write: written."""
        while q.frames:
            f = q.frames[0]
            if q.name == "tx":
                if not (f.closed and f.completed >= f.length and not f.done):
                    break
                f.want_cplw = True
                self._emit_tx_cplw(f, self.t_last, "completion record")
            else:
                if f.moved == 0:
                    break
                if not f.closed:
                    self._close_rx(f)
                self._emit_rx_cplw(f, self.t_last, "completion record")
        return q.completed + q.entries - 1 - q.posted

    def _data_read(self, r: TlpRecord, t: int) -> None:
        self._ensure_init(t)
        t = max(t, self.t_last)
        q = self.q["tx"]
        prev = self.tag_map.get(r.tag)
        if prev is not None and self.dev_reads.get(prev.tag) is prev and prev.kind == "data" \
                and prev.src_addr == r.address:
            self._drop("duplicate request")   # the same read again while the first is outstanding
            return
        model_off = (r.address - q.data_base) % q.stride if q.stride else 0
        f = self._tx_frame_for_data(t, model_off)
        if f is None:
            self._drop("data read without a fetched descriptor")
            return
        t = max(t, self.t_last)
        want = request_bytes(max(r.length, 1), r.first_be, r.last_be) if r.length else 4
        self._issue_data_read(f, t, want, r.tag, self._attr(r.attr), self._mine())

    def _issue_data_read(self, f: _Frame, t: int, want: int, tag: int, attr: int, src) -> None:
        q = self.q["tx"]
        a = f.buf + f.moved
        cap = min(MAX_TX_FRAME, q.room)
        if f.length is not None:
            cap = f.length
        maxlen = min(self.mrrs, 4096 - (a & 0xFFF), cap - f.moved)
        n = max(1, min(want, maxlen))
        final = n < maxlen or f.moved + n >= cap
        dw = (n + 3) // 4
        if dw == 1:
            fbe, lbe = (1 << n) - 1, 0
        else:
            fbe, lbe = 0xF, (1 << (n - 4 * (dw - 1))) - 1
        in_tag = tag
        tag = self._dev_tag(tag, t)
        ty = TlpType.MRd64 if a >= 1 << 32 else TlpType.MRd32
        rec = _R(t, 1, int(ty), dw, a, fbe, lbe, tag, self.dev_id, 0, int(SemClass.DATA_READ), attr=attr, src=src)
        rd = _Read("data", q, tag, t, a, n, attr, frame=f, foff=f.moved)
        if src is not None:
            self.tag_map[in_tag] = rd
            rd.src_addr = src[0].address
        self.dev_reads[tag] = rd
        f.moved += n
        self._emit(rec)
        rd.t = f.t_last = rec.t
        if final:
            self._close_tx(f)

    def _close_tx(self, f: _Frame) -> None:
        if f.closed:
            return
        f.closed = True
        f.length = f.moved
        self._tx_progress(f, self.t_last)

    def _plan_tx_frame(self, f: _Frame, t: int, why: str) -> None:
        """A frame the stream never read: read it whole (length drawn from the training frame sizes)."""
        q = self.q["tx"]
        if not f.delivered:
            self._complete_read(f.read, t, why)
        n = int(min(max(_sample(self.p.frame_bytes, self.rng, 64.0), 1), min(MAX_TX_FRAME, q.room)))
        f.length = n
        while f.moved < n:
            self._ins(why)
            self._issue_data_read(f, self.t_last, n - f.moved, 0, self._attr(2), None)
            self._safe_point()
        f.closed = True
        f.length = n
        self._tx_progress(f, self.t_last)

    def _tx_progress(self, f: _Frame, t: int) -> None:
        """Completion records of TX frames the stream asked for, once their data completed (ring order)."""
        q = self.q["tx"]
        while q.frames:
            g = q.frames[0]
            if not (g.want_cplw and g.closed and g.completed >= g.length):
                break
            self._emit_tx_cplw(g, self.t_last + int(self.p.tx_cplw_gap_ns[0] * 1000), None)
        _ = f, t

    def _emit_tx_cplw(self, f: _Frame, t: int, why: str | None, src=None) -> None:
        q = self.q["tx"]
        if why:
            self._ins(why)
        elif src is None and f.src is not None:
            self.stats.deferred += 1
            src, f.src = f.src, None
        self._cplw(q, f, f.length, t, src)
        self._mac(MacFrame(self.t_last + int(self.p.tx_lag_ns * 1000), MacPort.TX, f.content(f.length)))
        q.bytes += f.length

    def _cplw(self, q: _Queue, f: _Frame, length: int, t: int, src) -> None:
        slot = f.idx % q.entries
        phase = (f.idx // q.entries) & 1
        a = (q.cpl_base or 0) + slot * CPL_BYTES
        pl = struct.pack("<IIII", slot, length, 0, (1 << 31) | phase)
        ty = TlpType.MWr64 if a >= 1 << 32 else TlpType.MWr32
        f.done = True
        q.frames.popleft()
        q.completed += 1
        rec = self._emit(_R(t, 1, int(ty), 4, a, 0xF, 0xF, 0, self.dev_id, 0, int(SemClass.CPL_WRITE), payload=pl,
                            src=src))
        if self.news == 0:
            self.t_news = rec.t
        self.news += 1

    def _finish_tx_frame(self, f: _Frame, why: str) -> None:
        if not f.delivered:
            self._complete_read(f.read, self.t_last, why)
        if f.moved == 0 and not f.closed:
            self._plan_tx_frame(f, self.t_last, why)
        if not f.closed:
            self._close_tx(f)
        for rd in [rd for rd in self.dev_reads.values() if rd.kind == "data" and rd.frame is f]:
            self._complete_read(rd, self.t_last, why)
        if not f.done:
            if f.want_cplw:
                self._tx_progress(f, self.t_last)
            if not f.done and self.q["tx"].frames and self.q["tx"].frames[0] is f:
                self._emit_tx_cplw(f, self.t_last + int(self.p.tx_cplw_gap_ns[0] * 1000), why)

    # ============================================================================================================
    # RX frames and device writes

    def _data_write(self, r: TlpRecord, t: int) -> None:
        self._ensure_init(t)
        t = max(t, self.t_last)
        q = self.q["rx"]
        model_off = (r.address - q.data_base) % q.stride if q.stride else 0
        f = None
        for g in q.frames:
            if g.closed:
                continue
            if g.moved > 0 and model_off == 0:
                self._close_rx(g)
                continue
            f = g
            break
        if f is None:
            f = self._fetch_more(q, t)
        if f is None:
            self._drop("data write without a fetched descriptor")
            return
        if not f.delivered:
            self._complete_read(f.read, t, "descriptor completion")
            t = max(t, self.t_last)
        a = f.buf + f.moved
        maxlen = min(self.mps, 4096 - (a & 0xFFF), f.desc_len - f.moved)
        want = request_bytes(max(r.length, 1), r.first_be, r.last_be) if r.length else 4
        n = max(1, min(want, maxlen))
        final = n < maxlen or f.moved + n >= f.desc_len
        dw = (n + 3) // 4
        if dw == 1:
            fbe, lbe = (1 << n) - 1, 0
        else:
            fbe, lbe = 0xF, (1 << (n - 4 * (dw - 1))) - 1
        pl = None
        if self.keep != 0:
            k = min(dw * 4, self.keep) if self.keep > 0 else dw * 4
            valid = min(k, n)
            if r.payload is not None and len(r.payload) == k:
                pl = r.payload
                f.put(f.moved, pl[:valid])
            else:
                pl = f.slice(f.moved, valid) + bytes(k - valid)
        ty = TlpType.MWr64 if a >= 1 << 32 else TlpType.MWr32
        rec = self._emit(_R(t, 1, int(ty), dw, a, fbe, lbe, 0, self.dev_id, 0, int(SemClass.DATA_WRITE),
                            attr=self._attr(r.attr), payload=pl, src=self._mine()))
        if f.t_first is None:
            f.t_first = rec.t
        f.moved += n
        f.t_last = rec.t
        if final:
            self._close_rx(f)

    def _close_rx(self, f: _Frame) -> None:
        f.closed = True
        f.length = f.moved

    def _emit_rx_cplw(self, f: _Frame, t: int, why: str | None, src=None) -> None:
        q = self.q["rx"]
        if why:
            self._ins(why)
        self._cplw(q, f, f.length, t, src)
        q.bytes += f.length
        ft = max(0, (f.t_first or t) - int(self.p.rx_lead_ns * 1000))
        self._mac(MacFrame(ft, MacPort.RX, f.content(f.length)))

    def _mac(self, fr: MacFrame) -> None:
        self.mac_n += 1
        heapq.heappush(self.mac_heap, (fr.t_ps, self.mac_n, fr))

    def _cpl_write(self, r: TlpRecord, t: int) -> None:
        self._ensure_init(t)
        t = max(t, self.t_last)
        reg = self.mm.find(r.address)
        qn = "rx" if reg is not None and reg.kind == RegionKind.RX_CPL_RING else (
            "tx" if reg is not None and reg.kind == RegionKind.TX_CPL_RING else None)
        if qn is None:
            qn = "tx" if any(f.moved for f in self.q["tx"].frames) else "rx"
        q = self.q[qn]
        if qn == "rx":
            f = q.frames[0] if q.frames else None
            if f is None or f.moved == 0:
                self._drop("completion record with no data behind it")
                return
            if not f.closed:
                self._close_rx(f)
            self._emit_rx_cplw(f, t, None, self._mine())
            return
        target = None
        for g in q.frames:
            if not g.want_cplw:
                target = g
                break
        if target is None or target.moved == 0:
            self._drop("completion record with no data behind it")
            return
        if not target.closed:
            self._close_tx(target)
        target.want_cplw = True
        if q.frames[0] is target and target.completed >= target.length:
            self._emit_tx_cplw(target, t, None, self._mine())
        else:
            # written later, when the frame's data has completed (and the frames before it are recorded)
            target.src = self._mine()

    def _interrupt(self, r: TlpRecord, t: int) -> None:
        if self.news == 0:
            self._drop("interrupt that announces nothing")
            return
        self._emit_irq(t, None, self._mine())

    def _emit_irq(self, t: int, why: str | None, src=None) -> None:
        if self.msix is None:
            return
        if why:
            self._ins(why)
        a = self.msix.base
        ty = TlpType.MWr64 if a >= 1 << 32 else TlpType.MWr32
        self._emit(_R(t, 1, int(ty), 1, a, 0xF, 0, 0, self.dev_id, 0, int(SemClass.INTERRUPT),
                      payload=self.p.msi_data.to_bytes(4, "little"), src=src))
        self.news = 0
        self.t_news = None
        self.irqs += 1

    # ============================================================================================================
    # deadlines

    def _overdue(self, t: int) -> None:
        """Before a record at time t: what the stream should have done by now and did not, inserted."""
        od = int(self.p.overdue_read_ns * 1000)
        while self.dev_reads:
            rd = next(iter(self.dev_reads.values()))
            if t - rd.t <= od:
                break
            lat = int(_sample(self.p.read_latency_ns, self.rng, 600.0) * 1000)
            self._complete_read(rd, rd.t + lat, "late completion")
        om = int(self.p.overdue_mmio_ns * 1000)
        while self.host_reqs:
            hr = next(iter(self.host_reqs.values()))
            if t - hr.t <= om:
                break
            self._complete_host(hr, hr.t + int(_sample(self.p.mmio_latency_ns, self.rng, 50.0) * 1000),
                                "late completion")
        # TX frames: idle ones closed, finished ones recorded
        tx = self.q["tx"]
        idle_tx = int(self.p.overdue_tx_record_ns * 1000)
        idle_open = max(od * 20, int(self.p.dt_max_ns * 1000), idle_tx)
        while tx.frames:
            f = tx.frames[0]
            if not f.closed and f.moved > 0 and t - f.t_last > idle_open:
                self._close_tx(f)
            if f.closed and f.completed >= f.length and not f.done and t - f.t_last > idle_tx:
                f.want_cplw = True
                gap = int(_sample(self.p.tx_cplw_gap_ns, self.rng, 30.0) * 1000)
                self._emit_tx_cplw(f, max(self.t_last, f.t_last + gap), "completion record")
                continue
            break
        rx = self.q["rx"]
        idle_rx = int(self.p.overdue_rx_record_ns * 1000)
        while rx.frames:
            f = rx.frames[0]
            if f.moved > 0 and t - f.t_last > idle_rx:
                if not f.closed:
                    self._close_rx(f)
                gap = int(_sample(self.p.rx_cplw_gap_ns, self.rng, 20.0) * 1000)
                self._emit_rx_cplw(f, max(self.t_last, f.t_last + gap), "completion record")
                continue
            break
        if self.news and self.t_news is not None and t - self.t_news > int(self.p.overdue_irq_ns * 1000):
            gap = int(_sample(self.p.irq_wait_ns, self.rng, 1000.0) * 1000)
            self._emit_irq(max(self.t_last, self.t_news + gap), "interrupt")


def _lead0(be: int) -> int:
    for i in range(4):
        if be >> i & 1:
            return i
    return 0


def _base(ty: int) -> int:
    return ty & ~0x20 if ty in (0x00, 0x20, 0x40, 0x60) else ty


def _pattern_slice(fid: int, off: int, n: int) -> bytes:
    """Bytes [off, off + n) of the synthetic content of frame ``fid``."""
    if n <= 0:
        return b""
    o = (fid * 7 + off) & 0xFF
    if n <= len(_PATTERN) - o:
        return _PATTERN[o:o + n]
    reps = (n + o) // 256 + 1
    return (bytes(range(256)) * reps)[o:o + n]


def _frame_bytes(fid: int, n: int) -> bytes:
    return _pattern_slice(fid, 0, n)


# ----------------------------------------------------------------------------------------------------------------


def calibrate_records(header: TraceHeader, records: Iterable[TlpRecord], priors: Priors | None = None, *,
                      seed: int = 0, preamble: bool = True) -> tuple[list[TlpRecord], list[MacFrame],
                                                                     CalibrationStats]:
    """Calibrate a whole (small) record stream in memory."""
    out: list[TlpRecord] = []
    mac: list[MacFrame] = []
    c = Calibrator(header, priors, sink=out.append, mac_sink=mac.append, seed=seed, preamble=preamble)
    for r in records:
        c.feed(r)
    st = c.finish()
    return out, sorted(mac, key=lambda f: f.t_ps), st


def output_header(header: TraceHeader, mac_name: str = "") -> TraceHeader:
    """The header of a calibrated trace (the input's, with provenance and the sidecar name)."""
    import copy

    h = copy.deepcopy(header)
    h.mac_frames = mac_name
    h.extra = dict(h.extra, calibrated=True)
    return h
