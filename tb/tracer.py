"""TLP capture: every TLP crossing the root-complex <-> device link, both directions, into a phantom trace.

Wraps ``ext_recv`` of both link ends (the receiving port of every packet), so each TLP is seen once, in link
order, at its arrival time, with its header as sent. DLLPs are counted, not recorded.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from cocotb.utils import get_sim_time
from cocotbext.pcie.core.dllp import Dllp
from cocotbext.pcie.core.tlp import Tlp

from host.pcie import BufferKind
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceHeader, TraceWriter

log = logging.getLogger(__name__)

_KIND_CLASS = {
    BufferKind.TX_RING: SemClass.DESC_READ,
    BufferKind.RX_RING: SemClass.DESC_READ,
    BufferKind.TX_DATA: SemClass.DATA_READ,
    BufferKind.RX_DATA: SemClass.DATA_WRITE,
    BufferKind.TX_CPL_RING: SemClass.CPL_WRITE,
    BufferKind.RX_CPL_RING: SemClass.CPL_WRITE,
}


class Classifier:
    """Assigns a semantic class from what the host knows: BAR0 window, doorbell offsets, DMA buffers, MSI."""

    def __init__(self, bar_addr: int, bar_size: int, doorbells: set[int], find_buffer: Callable, msi_range: tuple[int, int]):
        self.bar_addr = bar_addr
        self.bar_size = bar_size
        self.doorbells = doorbells
        self.find_buffer = find_buffer
        self.msi_range = msi_range

    def __call__(self, t: TlpType, direction: Direction, address: int) -> SemClass:
        if t.is_config:
            return SemClass.CONFIG
        if t.is_completion:
            return SemClass.COMPLETION
        if direction == Direction.DOWN:
            if t.is_mem_read:
                return SemClass.MMIO_READ
            if t.is_mem_write:
                off = address - self.bar_addr
                return SemClass.DOORBELL if off in self.doorbells else SemClass.MMIO_WRITE
            return SemClass.OTHER
        if t.is_mem_write and self.msi_range[0] <= address < self.msi_range[1]:
            return SemClass.INTERRUPT
        buf = self.find_buffer(address)
        if buf is not None:
            cls = _KIND_CLASS.get(buf.kind, SemClass.OTHER)
            if t.is_mem_read and cls in (SemClass.DESC_READ, SemClass.DATA_READ):
                return cls
            if t.is_mem_write and cls in (SemClass.DATA_WRITE, SemClass.CPL_WRITE):
                return cls
        return SemClass.OTHER


def tlp_to_record(pkt: Tlp, direction: Direction, seq: int, t_ps: int, payload_keep: int) -> TlpRecord:
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
        payload=data[:payload_keep] if (payload_keep and t.has_data) else None,
    )


class Tracer:
    """Records the link into a TraceWriter (optional) and hands each record to listeners (e.g. the rule checker)."""

    def __init__(self, rc_port, dev_port, header: TraceHeader, path=None, payload_keep: int = 64):
        self.header = header
        self.payload_keep = payload_keep
        self.writer = TraceWriter(path, header) if path is not None else None
        self.records: list[TlpRecord] = []
        self.keep_in_memory = path is None
        self.counts: Counter = Counter()
        self.dllps = 0
        self.classifier: Classifier | None = None
        self.listeners: list[Callable[[TlpRecord], None]] = []
        self.seq = 0
        self._wrap(dev_port, Direction.DOWN)
        self._wrap(rc_port, Direction.UP)

    def _wrap(self, port, direction: Direction) -> None:
        orig = port.ext_recv

        async def ext_recv(pkt, _orig=orig, _port=port, _dir=direction):
            if isinstance(pkt, Dllp):
                self.dllps += 1
            elif pkt.seq == _port.next_recv_seq:  # accepted (not a replayed duplicate)
                self._record(pkt, _dir)
            await _orig(pkt)

        port.ext_recv = ext_recv

    def _record(self, pkt: Tlp, direction: Direction) -> None:
        rec = tlp_to_record(pkt, direction, self.seq, int(get_sim_time("ps")), self.payload_keep)
        if self.classifier is not None:
            rec.cls = self.classifier(rec.type, direction, rec.address)
        elif rec.type.is_config:
            rec.cls = SemClass.CONFIG
        elif rec.type.is_completion:
            rec.cls = SemClass.COMPLETION
        self.seq += 1
        self.counts[(rec.dir, rec.type)] += 1
        if self.writer is not None:
            self.writer.write(rec)
        if self.keep_in_memory:
            self.records.append(rec)
        for fn in self.listeners:
            fn(rec)

    def count(self, direction: Direction, *types: TlpType) -> int:
        return sum(self.counts[(direction, t)] for t in types)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
