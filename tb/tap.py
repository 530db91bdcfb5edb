"""A TLP tap for any cocotbext-pcie link: every TLP between a root complex and a device, into a phantom trace.

    from tb.tap import attach
    tap = attach(rc, dev, "traces/mine.jsonl.gz")   # right after rc.make_port().connect(dev)
    ...                                             # enumerate, configure, run the test
    tap.commit()                                    # optional: header now, else at close()
    tap.close()

Nothing in here knows the device: it wraps ``ext_recv`` of both link ends (the receiving port of every packet,
so each TLP is seen once, in link order, at its arrival time, with the header as sent) and reads the link
parameters from the device's configuration space model (MPS, MRRS, Extended Tag, Relaxed Ordering, No Snoop)
and the root complex (RCB) when the header is written. Semantic classes are optional: give a host memory map
(``phantom.memmap`` regions) and every TLP gets its class; without one only config requests and completions
are named.

The header is written when ``commit()`` is called (a testbench calls it once the device is configured, so the
link parameters, the memory map and the completion timeout are final) or when the buffer of TLPs captured
before it reaches ``buffer_limit``. Listeners (e.g. a live rule checker) receive every TLP from the commit on,
the buffered ones first.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from cocotb.utils import get_sim_time
from cocotbext.pcie.core.dllp import Dllp
from cocotbext.pcie.core.tlp import Tlp

from phantom.memmap import MemoryMap, Region, coalesce
from phantom.rules import Checker, Report
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceHeader, TraceWriter

log = logging.getLogger(__name__)

MPS_BYTES = {k: 128 << k for k in range(6)}
PACKET_CLASSES = (SemClass.DATA_READ, SemClass.DATA_WRITE)


def tlp_to_record(pkt: Tlp, direction: Direction, seq: int, t_ps: int) -> TlpRecord:
    """One cocotbext-pcie TLP as a trace record (whole payload; the tap applies its payload policy)."""
    t = TlpType((int(pkt.fmt) << 5) | int(pkt.type))
    has_addr = not t.is_completion and t not in (TlpType.Msg, TlpType.MsgD)
    data = bytes(pkt.data)
    return TlpRecord(
        seq=seq, t_ps=t_ps, dir=direction, type=t,
        length=pkt.length if (t.has_data or not t.is_completion) else 0,
        address=pkt.address if has_addr else 0,
        first_be=pkt.first_be if not t.is_completion else 0,
        last_be=pkt.last_be if not t.is_completion else 0,
        tag=pkt.tag, requester_id=int(pkt.requester_id),
        completer_id=int(pkt.completer_id) if (t.is_completion or t.is_config) else 0,
        status=CplStatus(int(pkt.status)) if t.is_completion else CplStatus.SC,
        byte_count=pkt.byte_count if t.is_completion else 0,
        lower_address=pkt.lower_address if t.is_completion else 0,
        tc=int(pkt.tc), attr=int(pkt.attr), ep=bool(pkt.ep),
        payload_len=len(data) if t.has_data else 0,
        payload=data if t.has_data else None,
    )


class LiveCheck:
    """The rule checker running on a tap's TLPs, built with the header the tap commits."""

    def __init__(self, waive: dict[str, str] | None = None, **kw: Any):
        self.kw = kw
        self.waive = dict(waive or {})
        self.checker: Checker | None = None

    def start(self, header: TraceHeader) -> None:
        self.checker = Checker(header, waive=self.waive, **self.kw)

    def __call__(self, rec: TlpRecord) -> None:
        assert self.checker is not None
        self.checker.feed(rec)

    def report(self) -> Report:
        """The report so far, with the requests still open counted as the end of the trace."""
        if self.checker is None:
            raise RuntimeError("the tap has not committed its header yet (call tap.commit() after configuring)")
        return self.checker.snapshot()


class Tap:
    """Records every TLP between two linked ports (a root port's downstream port and a device's upstream port)."""

    def __init__(self, rc_port, dev_port, path=None, *, header: TraceHeader | None = None,
                 packet_payload_keep: int = 64, memory_map: list[Region] | None = None,
                 link_source: Callable[[], dict[str, Any]] | None = None, buffer_limit: int = 100_000):
        if packet_payload_keep < -1:
            raise ValueError(f"packet_payload_keep must be -1 (all), 0 (none) or a byte count, got {packet_payload_keep!r}")
        self.path = path
        self.header = header or TraceHeader()
        self.packet_payload_keep = packet_payload_keep
        self.regions: list[Region] = list(memory_map or [])
        self.memmap = MemoryMap(coalesce(self.regions)) if self.regions else None
        self.link_source = link_source
        self.buffer_limit = buffer_limit
        self.writer: TraceWriter | None = None
        self.committed = False
        self.records: list[TlpRecord] = []        # kept when there is no file (tests)
        self.keep_in_memory = path is None
        self._pending: list[TlpRecord] = []       # captured before the header was committed
        self.counts: Counter = Counter()
        self.dllps = 0
        self.listeners: list[Callable[[TlpRecord], None]] = []
        self.on_commit: list[Callable[[TraceHeader], None]] = []
        self.seq = 0
        self._req_cls: dict[tuple[int, int, int], SemClass] = {}  # (direction of request, rid, tag) -> class
        self.refused = 0                          # device TLPs the PCIe model refused to put on the link
        self._wrap(dev_port, Direction.DOWN)
        self._wrap(rc_port, Direction.UP)

    def watch_refused(self, device) -> None:
        """Record a TLP the device sends that cocotbext-pcie's own validation refuses (``Tlp.check()``: e.g. a
        request across a 4 KB boundary) before the model's assertion ends the test: it never reaches the link,
        so without this the trace and the live checkers would not show the one TLP that explains the failure.
        It is recorded at the time it was sent (the link delay earlier than an arrival time)."""
        orig = device.upstream_send

        async def upstream_send(tlp, _orig=orig):
            if not tlp.check():
                self.refused += 1
                self._record(tlp, Direction.UP)
            await _orig(tlp)

        device.upstream_send = upstream_send

    # configuration ---------------------------------------------------------------------------
    def set_memory_map(self, regions: list[Region]) -> None:
        if self.committed:
            raise RuntimeError("the memory map must be set before the header is committed")
        self.regions = list(regions)
        self.memmap = MemoryMap(coalesce(self.regions)) if self.regions else None
        for r in self._pending:  # classes of what was captured so far (enumeration) follow the map
            r.cls = self._classify(r)

    def add_checker(self, **kw: Any) -> LiveCheck:
        """A live rule checker on every TLP (created with the committed header)."""
        chk = LiveCheck(**kw)
        if self.committed:
            raise RuntimeError("add checkers before the header is committed, so they see every TLP")
        self.on_commit.append(chk.start)
        self.listeners.append(chk)
        return chk

    def commit(self, **header_fields: Any) -> TraceHeader:
        """Write the header (link parameters read now, plus ``header_fields``) and everything captured so far."""
        if self.committed:
            return self.header
        fields = dict(self.link_source() if self.link_source else {})
        fields.update(header_fields)
        if self.regions:
            fields["memory_map"] = [r.to_json() for r in coalesce(self.regions)]
        h = self.header.to_json()
        h.pop("schema", None)
        h.pop("version", None)
        h.update(fields)
        self.header = TraceHeader(**h)
        self.committed = True
        if self.path is not None:
            self.writer = TraceWriter(self.path, self.header)
        for fn in self.on_commit:
            fn(self.header)
        pending, self._pending = self._pending, []
        for r in pending:
            self._emit(r)
        return self.header

    # capture ---------------------------------------------------------------------------------
    def _wrap(self, port, direction: Direction) -> None:
        orig = port.ext_recv

        async def ext_recv(pkt, _orig=orig, _port=port, _dir=direction):
            if isinstance(pkt, Dllp):
                self.dllps += 1
            elif pkt.seq == _port.next_recv_seq:  # accepted (not a replayed duplicate)
                self._record(pkt, _dir)
            await _orig(pkt)

        port.ext_recv = ext_recv

    def _classify(self, rec: TlpRecord) -> SemClass:
        if self.memmap is not None:
            return self.memmap.classify(rec.type, rec.dir, rec.address)
        if rec.type.is_config:
            return SemClass.CONFIG
        if rec.type.is_completion:
            return SemClass.COMPLETION
        return SemClass.OTHER

    def _record(self, pkt: Tlp, direction: Direction) -> None:
        rec = tlp_to_record(pkt, direction, self.seq, int(get_sim_time("ps")))
        rec.cls = self._classify(rec)
        self.seq += 1
        self.counts[(rec.dir, rec.type)] += 1
        if self.committed:
            self._emit(rec)
        else:
            self._pending.append(rec)
            if len(self._pending) >= self.buffer_limit:
                log.warning("tap: %d TLPs before commit(); committing the header with the parameters known now",
                            len(self._pending))
                self.commit()

    def _emit(self, rec: TlpRecord) -> None:
        # payload policy: control payloads (descriptors, MMIO data, completion records, interrupts) are kept
        # whole; packet data is cut to packet_payload_keep bytes (-1: whole)
        key_dir = int(rec.dir)
        if rec.type.is_non_posted:
            self._req_cls[(key_dir, rec.requester_id, rec.tag)] = rec.cls
        cls = rec.cls
        if rec.type.is_completion:
            cls = self._req_cls.get((1 - key_dir, rec.requester_id, rec.tag), SemClass.OTHER)
        if rec.payload is not None and cls in PACKET_CLASSES and self.packet_payload_keep >= 0:
            rec.payload = rec.payload[:self.packet_payload_keep] if self.packet_payload_keep else None
        if self.writer is not None:
            self.writer.write(rec)
        if self.keep_in_memory:
            self.records.append(rec)
        for fn in self.listeners:
            fn(rec)

    def count(self, direction: Direction, *types: TlpType) -> int:
        return sum(self.counts[(direction, t)] for t in types)

    def close(self) -> None:
        if not self.committed:
            self.commit()
        if self.writer is not None:
            self.writer.close()


def link_params(rc, device, function: int = 0) -> dict[str, Any]:
    """Link parameters as configured, read from the device's and the root complex's config-space models."""
    fn = device.functions[function]
    cap = fn.pcie_cap
    port = device.upstream_port
    return {
        "mps": MPS_BYTES[cap.max_payload_size], "mrrs": MPS_BYTES[min(cap.max_read_request_size, 5)],
        "rcb": 128 if rc.read_completion_boundary else 64,
        "tag_width": 8 if cap.extended_tag_field_enable else 5,
        "relaxed_ordering": bool(cap.enable_relaxed_ordering), "no_snoop": bool(cap.enable_no_snoop),
        "link_speed": int(port.cur_link_speed or 3), "link_width": int(port.cur_link_width or 8),
        "device": {"vendor_id": fn.vendor_id, "device_id": fn.device_id},
    }


def attach(rc, device, path=None, *, memory_map: list[Region] | None = None, header: TraceHeader | None = None,
           packet_payload_keep: int = 64, buffer_limit: int = 100_000) -> Tap:
    """Tap the link between a RootComplex and a directly connected cocotbext-pcie Device (any device)."""
    dev_port = device.upstream_port
    rc_port = dev_port.other
    if rc_port is None:
        raise ValueError("attach(): the device is not connected yet (call rc.make_port().connect(dev) first)")
    tap = Tap(rc_port, dev_port, path, header=header, packet_payload_keep=packet_payload_keep,
              memory_map=memory_map, link_source=lambda: link_params(rc, device), buffer_limit=buffer_limit)
    if callable(getattr(device, "upstream_send", None)):
        tap.watch_refused(device)
    return tap
