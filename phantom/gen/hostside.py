"""Is a trace replayable? The contract of docs/trace-format.md ("What makes a trace replayable") as a checker.

The replay (``make replay``) re-enacts a trace's host side against the NIC. This module checks, without the
simulator, that the host side a trace implies is complete and self-consistent:

1. the header has link parameters, a memory map with both rings, their buffers and completion rings, the MSI-X
   target, BAR0 with the doorbell and queue-control registers, and ``device.registers``;
2. before a queue's first doorbell the host wrote its ring base, completion base and size with the values the
   memory map gives, and enabled it; every doorbell carries a producer index that posts no more than the ring
   holds;
3. every descriptor-read completion carries the descriptor bytes, each naming a buffer inside the queue's data
   region with a non-zero length (the rule checker's NIC chains then tie the data reads to them);
4. TX data-read completions carry packet data (unless the header keeps none); the MAC sidecar exists and its RX
   frames are, in order, as long as the RX completion records report, and their kept bytes match what the
   device wrote;
5. every completion record has its 16-byte payload and every interrupt its message data.

``check_host_side(path)`` returns the problems found (an empty list: replayable), the PCIe rule check included.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from phantom.memmap import MemoryMap, RegionKind
from phantom.trace import (Direction, MacFrame, MacPort, SemClass, TlpRecord, TlpType, TraceHeader, read_trace,
                           trace_mac_frames)

_NEEDED = (RegionKind.TX_RING, RegionKind.RX_RING, RegionKind.TX_DATA, RegionKind.RX_DATA, RegionKind.TX_CPL_RING,
           RegionKind.RX_CPL_RING, RegionKind.MSIX, RegionKind.BAR, RegionKind.TX_DOORBELL, RegionKind.RX_DOORBELL,
           RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)


def check_host_side(path: str | os.PathLike, rules: bool = True, limit: int = 20) -> list[str]:
    """Problems that keep a trace file (and its MAC sidecar) from being replayed; [] when there are none."""
    path = Path(path)
    h, recs = read_trace(path)
    try:
        mac = trace_mac_frames(path, h)
    except FileNotFoundError as e:
        return [str(e)]
    out = check_records_host_side(h, recs, mac, limit=limit)
    if rules:
        from phantom.rules import check_records

        rep = check_records(h, recs)
        if rep.errors or rep.warnings:
            out.append(f"rule check: {rep.errors} errors, {rep.warnings} warnings "
                       f"({', '.join(sorted(rep.unwaived()))})")
    return out


def check_records_host_side(h: TraceHeader, recs: list[TlpRecord], mac: list[MacFrame] | None,
                            limit: int = 20) -> list[str]:
    probs: list[str] = []

    def bad(msg: str) -> None:
        if len(probs) < limit:
            probs.append(msg)

    if not h.memory_map:
        return ["header: no memory map"]
    mm = MemoryMap.from_json(h.memory_map)
    for k in _NEEDED:
        if not mm.of_kind(k):
            bad(f"header: memory map has no {k.value} region")
    regs = (h.device or {}).get("registers") or {}
    if not regs:
        bad("header: device.registers missing (MMIO writes cannot be named)")
    if probs:
        return probs
    bar = mm.of_kind(RegionKind.BAR)[0].base
    by_addr = {bar + v: k for k, v in regs.items()}
    q = {}
    for qn, rk, ck, dk in (("tx", RegionKind.TX_RING, RegionKind.TX_CPL_RING, RegionKind.TX_DATA),
                           ("rx", RegionKind.RX_RING, RegionKind.RX_CPL_RING, RegionKind.RX_DATA)):
        ring, cpl, data = mm.of_kind(rk)[0], mm.of_kind(ck)[0], mm.of_kind(dk)[0]
        q[qn] = {"ring": ring, "cpl": cpl, "data": data, "entries": ring.size // 16, "want": {
            f"REG_{qn.upper()}Q_BASE_LO": ring.base & 0xFFFFFFFF, f"REG_{qn.upper()}Q_BASE_HI": ring.base >> 32,
            f"REG_{qn.upper()}Q_CPL_BASE_LO": cpl.base & 0xFFFFFFFF, f"REG_{qn.upper()}Q_CPL_BASE_HI": cpl.base >> 32,
            f"REG_{qn.upper()}Q_SIZE": ring.size // 16}, "seen": {}, "enabled": False, "first_db": True,
                 "prod": 0, "records": []}
    doorbell = {r.base: r.kind.queue for r in mm.regions if r.kind.is_doorbell}
    reads: dict[tuple[int, int], TlpRecord] = {}
    rx_desc: dict[int, tuple[int, int]] = {}          # RX ring index -> (buffer address, length)
    rx_buf: dict[int, list] = {}                      # RX buffer address -> [bytes written, [(offset, kept bytes)]]
    rx_starts: list[int] = []
    rx_done: list[tuple[int, int, list]] = []         # per RX completion record: (reported, written, writes)
    rx_lens: list[int] = []
    for i, r in enumerate(recs):
        if r.dir == Direction.DOWN and r.type.is_mem_write:
            a = r.address & ~3
            if a in doorbell:
                qq = q[doorbell[a]]
                if r.payload is None or len(r.payload) < 2:
                    bad(f"record {i}: doorbell without its producer-index payload")
                    continue
                if qq["first_db"]:
                    qq["first_db"] = False
                    for reg, v in qq["want"].items():
                        if reg in regs and qq["seen"].get(reg) != v:
                            bad(f"record {i}: first {doorbell[a]} doorbell before {reg} was written with "
                                f"{v:#x} (memory map); written: {qq['seen'].get(reg)!r}")
                    if not qq["enabled"]:
                        bad(f"record {i}: first {doorbell[a]} doorbell before the queue was enabled")
                continue
            name = by_addr.get(a)
            if name is not None and r.payload is not None and len(r.payload) >= 4:
                v = int.from_bytes(r.payload[:4], "little")
                for qq in q.values():
                    if name in qq["want"]:
                        qq["seen"][name] = v
                    if name == f"REG_{'TX' if qq is q['tx'] else 'RX'}Q_CTRL":
                        qq["enabled"] = bool(v & 1)
            elif name is not None:
                bad(f"record {i}: MMIO write to {name} without its value")
        elif r.dir == Direction.UP and r.type.is_mem_read:
            reads[(r.requester_id, r.tag)] = r
        elif r.type.is_completion and r.dir == Direction.DOWN:
            rq = reads.get((r.requester_id, r.tag))
            if rq is None:
                continue
            if rq.cls == SemClass.DESC_READ:
                if r.payload is None or len(r.payload) < r.length * 4:
                    bad(f"record {i}: descriptor-read completion without the descriptor bytes")
                else:
                    qn = mm.queue_of(rq.address)
                    data = q[qn]["data"] if qn in q else None
                    off = rq.length * 4 - r.byte_count          # bytes of the read before this completion
                    first = (rq.address - q[qn]["ring"].base) // 16 + off // 16 if qn in q else 0
                    for k in range(0, len(r.payload) - 15, 16):
                        addr, ln = struct.unpack_from("<QI", r.payload, k)
                        if data is not None and not (data.base <= addr and addr + ln <= data.end and ln > 0):
                            bad(f"record {i}: descriptor names {addr:#x}+{ln}, outside the {qn} buffers")
                        elif qn == "rx":
                            rx_desc[(first + k // 16) % q["rx"]["entries"]] = (addr, ln)
                            if addr not in rx_buf:
                                import bisect

                                bisect.insort(rx_starts, addr)
                            rx_buf[addr] = [0, []]
            elif rq.cls == SemClass.DATA_READ and h.payload_bytes_kept != 0 and r.payload is None:
                bad(f"record {i}: TX data completion without packet data")
        elif r.dir == Direction.UP and r.type.is_mem_write:
            if r.cls == SemClass.CPL_WRITE:
                if r.payload is None or len(r.payload) < 16:
                    bad(f"record {i}: completion record without its 16-byte payload")
                    continue
                reg = mm.find(r.address)
                if reg is not None and reg.kind == RegionKind.RX_CPL_RING:
                    slot, ln = struct.unpack_from("<II", r.payload, 0)
                    rx_lens.append(ln)
                    d = rx_desc.get(slot & 0xFFFF)
                    st = rx_buf.get(d[0]) if d is not None else None
                    if st is None:
                        bad(f"record {i}: RX completion record for entry {slot & 0xFFFF}, whose descriptor "
                            f"bytes the trace never carried")
                        rx_done.append((ln, ln, []))
                    else:
                        rx_done.append((ln, st[0], st[1]))
                        rx_buf[d[0]] = [0, []]
            elif r.cls == SemClass.INTERRUPT and (r.payload is None or len(r.payload) < 4):
                bad(f"record {i}: interrupt without its message data")
            elif r.cls == SemClass.DATA_WRITE:
                import bisect

                k = bisect.bisect_right(rx_starts, r.address) - 1
                if k >= 0:
                    st = rx_buf[rx_starts[k]]
                    o = r.address - rx_starts[k]
                    from phantom.rules.spec import request_bytes

                    nb = request_bytes(r.length, r.first_be, r.last_be)
                    st[0] = max(st[0], o + nb)
                    if r.payload is not None:
                        st[1].append((o, r.payload[:nb]))
    if mac is None:
        mac = []
    rx_frames = [f for f in mac if f.port == MacPort.RX]
    if rx_lens and not h.mac_frames:
        bad("header: RX traffic but no MAC sidecar named (mac_frames)")
    n = min(len(rx_frames), len(rx_lens))
    if len(rx_frames) < len(rx_lens):
        bad(f"MAC sidecar: {len(rx_frames)} RX frames offered, the device recorded {len(rx_lens)} RX frames")
    for k in range(n):
        fr = rx_frames[k].data
        reported, written, writes = rx_done[k]
        if len(fr) != reported:
            bad(f"MAC sidecar: RX frame {k} has {len(fr)} bytes, its completion record reports {reported}")
        if written < reported:
            bad(f"RX frame {k}: the device wrote {written} bytes of the {reported} its record reports")
        for o, b in writes:
            b = b[:max(0, len(fr) - o)]
            if fr[o:o + len(b)] != b:
                bad(f"RX frame {k}: the bytes written at offset {o} differ from the frame offered on the MAC")
                break
    return probs


_ = (TlpType,)
