"""Trace replay: what to re-enact on the host side, what to expect on the device side, and the replay report.

Nothing here needs a simulator: ``ReplayPlan.from_trace`` reads a trace (and its MAC sidecar), refuses what
cannot be replayed before any simulation starts, and lays out
* the host side to re-enact: MMIO writes (doorbells and queue control included) and MMIO reads in trace order
  with their trace times, descriptor contents and TX packet data to place in host memory when the doorbell that
  posts them is written, frames to offer on the MAC receive side;
* the device side to check: every TLP the device emitted, per semantic class in order (tag-agnostic), the MMIO
  read values, the frames it sent on the MAC transmit side.
``compare`` matches what a replay saw against the plan and ``ReplayReport`` says how it went (text + JSON).
The cocotb side that drives the NIC is ``tb/test_replay.py``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phantom.memmap import MemoryMap, RegionKind
from phantom.rules import check_file
from phantom.rules.spec import first_byte_offset, request_bytes
from phantom.trace import (CplStatus, Direction, MacFrame, MacPort, SemClass, TlpRecord, TlpType, TraceFormatError,
                           TraceHeader, read_trace, trace_mac_frames)

DESC_BYTES = 16
DEVICE_CLASSES = (SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE, SemClass.CPL_WRITE,
                  SemClass.INTERRUPT, SemClass.OTHER)
SUPPORTED_MPS = (128, 256, 512)           # the UltraScale+ configuration the testbench builds
SUPPORTED_WIDTHS = (64, 128, 256)


def is_generated(h: TraceHeader) -> bool:
    """A generated trace (Phantom writes ``extra.generated``; ``generated_by`` for other generators)."""
    extra = h.extra or {}
    return bool(extra.get("generated") or extra.get("generated_by")) or h.scenario.startswith("generated")


class ReplayError(ValueError):
    """A trace that cannot be replayed: names the trace and what is wrong."""


@dataclass(frozen=True, slots=True)
class HostEvent:
    """One host action to re-enact."""

    t_ps: int
    kind: str            # "write" (MMIO write), "read" (MMIO read), "io_read", "io_write"
    offset: int          # BAR offset of the first byte
    data: bytes          # write data / expected read data (b"" when the trace has no completion)
    length: int          # bytes
    index: int           # record index in the trace
    queue: str | None = None      # doorbell / queue control of this queue
    doorbell: bool = False
    qctrl: bool = False


@dataclass(frozen=True, slots=True)
class DeviceTlp:
    """One TLP the device emitted (expected from the trace, or seen in the replay)."""

    t_ps: int
    cls: SemClass
    type: TlpType
    address: int
    nbytes: int
    payload: bytes | None
    index: int
    queue: str = ""

    def key(self) -> tuple:
        return (self.cls, self.address, self.nbytes)


@dataclass
class QueuePlan:
    name: str
    ring_base: int
    entries: int
    descs: dict[int, deque] = field(default_factory=lambda: defaultdict(deque))   # ring index -> contents in order
    tx_data: dict[tuple[int, int], deque] = field(default_factory=lambda: defaultdict(deque))  # (addr, len) -> data


@dataclass
class ReplayPlan:
    trace: Path
    header: TraceHeader
    memmap: MemoryMap
    events: list[HostEvent]
    expected: dict[SemClass, list[DeviceTlp]]
    mac_rx: list[MacFrame]
    mac_tx: list[MacFrame]
    queues: dict[str, QueuePlan]
    bar_base: int
    msix_addr: int | None
    generated: bool
    tx_data_whole: bool            # the trace kept whole TX packet data (frames can be compared byte for byte)
    notes: list[str] = field(default_factory=list)
    t0_ps: int = 0                 # trace time of the first re-enacted host event
    n_records: int = 0             # TLP records in the trace

    # -----------------------------------------------------------------------------------------
    @classmethod
    def from_trace(cls, path: str | Path, *, regmap: str | None = None, device: tuple[int, int] | None = None,
                   data_width: int = 256, check: bool = True) -> "ReplayPlan":
        """Read and validate a trace for replay (ReplayError before any simulation, naming the problem)."""
        path = Path(path)
        try:
            h, recs = read_trace(path)
        except (TraceFormatError, FileNotFoundError) as e:
            raise ReplayError(f"{path}: cannot be read: {e}") from None
        if not h.memory_map:
            raise ReplayError(f"{path}: the header has no memory map (schema v2+ captures carry one): nothing tells "
                              f"the replay where rings and buffers are")
        mm = MemoryMap.from_json(h.memory_map)
        if h.mps not in SUPPORTED_MPS:
            raise ReplayError(f"{path}: MPS {h.mps} B cannot be set on this device (supported: {SUPPORTED_MPS})")
        if data_width not in SUPPORTED_WIDTHS:
            raise ReplayError(f"data width {data_width} not supported (supported: {SUPPORTED_WIDTHS})")
        dev = h.device or {}
        if regmap is not None and dev.get("regmap") not in (None, regmap):
            raise ReplayError(f"{path}: captured against register map {dev.get('regmap')}, this RTL's is {regmap} "
                              f"(rtl/nic_regs.vh changed): offsets would not mean the same registers")
        if device is not None and "vendor_id" in dev and (dev.get("vendor_id"), dev.get("device_id")) != device:
            raise ReplayError(f"{path}: a trace of device {dev.get('vendor_id'):#06x}:{dev.get('device_id'):#06x}, "
                              f"not of this NIC ({device[0]:#06x}:{device[1]:#06x})")
        if check:
            rep = check_file(path)
            if not rep.ok:
                first = rep.first[0] if rep.first else None
                where = f" (first: record #{first.index} {first.rule}: {first.message})" if first else ""
                raise ReplayError(f"{path}: fails the PCIe rule check with {rep.errors} errors{where}; an illegal "
                                  f"trace is not replayed")
        try:
            mac = trace_mac_frames(path, h)
        except (TraceFormatError, FileNotFoundError) as e:
            raise ReplayError(f"{path}: its MAC sidecar cannot be read: {e}") from None
        bars = mm.of_kind(RegionKind.BAR)
        if not bars:
            raise ReplayError(f"{path}: the memory map has no BAR region")
        msix = mm.of_kind(RegionKind.MSIX)
        plan = cls(trace=path, header=h, memmap=mm, events=[], expected={c: [] for c in DEVICE_CLASSES},
                   mac_rx=[f for f in mac if f.port == MacPort.RX], mac_tx=[f for f in mac if f.port == MacPort.TX],
                   queues={}, bar_base=bars[0].base, msix_addr=msix[0].base if msix else None,
                   generated=is_generated(h),
                   tx_data_whole=h.payload_bytes_kept < 0)
        for q, kind in (("tx", RegionKind.TX_RING), ("rx", RegionKind.RX_RING)):
            ring = mm.of_kind(kind)
            if ring:
                plan.queues[q] = QueuePlan(q, ring[0].base, ring[0].size // DESC_BYTES)
        if "tx" not in plan.queues or "rx" not in plan.queues:
            raise ReplayError(f"{path}: the memory map lacks a TX or RX descriptor ring")
        plan.n_records = len(recs)
        plan._build(recs)
        if not plan.events:
            raise ReplayError(f"{path}: no host MMIO after enumeration: nothing to re-enact")
        return plan

    def _build(self, recs: list[TlpRecord]) -> None:
        mm, bar = self.memmap, self.memmap.of_kind(RegionKind.BAR)[0]
        regs = (self.header.device or {}).get("registers", {})
        msix_lo = bar.base + regs.get("REG_MSIX_TABLE", 0x1000)
        msix_hi = bar.base + regs.get("REG_MSIX_PBA", 0x1800) + 8
        host_req: dict[tuple[int, int], HostEvent] = {}
        dev_req: dict[tuple[int, int], tuple[str, Any, int]] = {}   # device read -> (kind, info, bytes owed)
        read_data: dict[tuple[int, int], bytearray] = {}
        desc_fetch: dict[tuple[int, int], tuple[QueuePlan, int, int]] = {}
        expect_tx: dict[int, list] = {}                              # next data address -> TX descriptor
        for i, r in enumerate(recs):
            t = r.type
            if r.dir == Direction.DOWN and not t.is_completion:
                if t.is_config:
                    continue  # enumeration and configuration are done by the replay's own root complex
                if t.is_mem_write or t.is_mem_read:
                    if not bar.base <= r.address < bar.end:
                        self.notes.append(f"record #{i}: {t.name} outside BAR0 ({r.address:#x}) not re-enacted")
                        continue
                    lead = first_byte_offset(r.first_be)
                    n = request_bytes(r.length, r.first_be, r.last_be)
                    off = r.address - bar.base + lead
                    if msix_lo <= r.address < msix_hi and not self.events:
                        continue  # the OS's MSI-X set-up (before the driver): the replay does its own
                    if t.is_mem_write:
                        data = (r.payload or b"")[lead:lead + n]
                        if len(data) != n:
                            raise ReplayError(f"{self.trace}: MMIO write #{i} has {len(data)} payload bytes, needs {n}")
                        reg = mm.registers.get(r.address & ~3)
                        ev = HostEvent(r.t_ps, "write", off, data, n, i, queue=reg.kind.queue if reg else None,
                                       doorbell=bool(reg and reg.kind.is_doorbell),
                                       qctrl=bool(reg and reg.kind in (RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)))
                        self.events.append(ev)
                    else:
                        ev = HostEvent(r.t_ps, "read", off, b"", n, i)
                        self.events.append(ev)
                        host_req[(r.requester_id, r.tag)] = ev
                elif t.is_io:
                    self.notes.append(f"record #{i}: {t.name} to the IO BAR re-enacted by offset")
                    n = request_bytes(1, r.first_be, 0)
                    ev = HostEvent(r.t_ps, "io_write" if t == TlpType.IOWr else "io_read", r.address & 0x1F,
                                   (r.payload or b"\0" * 4)[first_byte_offset(r.first_be):][:n], n, i)
                    self.events.append(ev)
                    if t == TlpType.IORd:
                        host_req[(r.requester_id, r.tag)] = ev
                continue
            if r.dir == Direction.UP and t.is_completion:
                ev = host_req.pop((r.requester_id, r.tag), None)
                if ev is not None:
                    k = self.events.index(ev)
                    self.events[k] = dataclasses.replace(ev, data=(r.payload or b"") if r.status == CplStatus.SC
                                                         else b"")
                continue
            if r.dir == Direction.UP:
                nb = request_bytes(r.length, r.first_be, r.last_be) if not t.is_completion else 0
                cls = r.cls if r.cls in self.expected else SemClass.OTHER
                self.expected[cls].append(DeviceTlp(r.t_ps, cls, t, r.address, nb, r.payload, i))
                if t.is_mem_read:
                    key = (r.requester_id, r.tag)
                    if cls == SemClass.DESC_READ:
                        q = self._queue_for(r.address)
                        if q is not None:
                            start = (r.address - q.ring_base) // DESC_BYTES
                            desc_fetch[key] = (q, start, nb // DESC_BYTES)
                            read_data[key] = bytearray()
                    elif cls == SemClass.DATA_READ:
                        # the read belongs to the TX descriptor whose data it continues (reads are issued in order)
                        d = expect_tx.pop(r.address, None)
                        if d is not None:
                            d[3] += nb
                            if d[3] < d[1]:
                                expect_tx[r.address + nb] = d
                        dev_req[key] = ("data", (r.address, d), nb)
                        read_data[key] = bytearray()
                continue
            if r.dir == Direction.DOWN and t.is_completion:
                key = (r.requester_id, r.tag)
                if key in read_data and r.payload is not None and r.status == CplStatus.SC:
                    read_data[key].extend(r.payload[:min(r.length * 4, r.byte_count)])
                done = r.status != CplStatus.SC or r.byte_count <= r.length * 4 - (r.lower_address & 3)
                if not done:
                    continue
                if key in desc_fetch:
                    q, start, n = desc_fetch.pop(key)
                    data = bytes(read_data.pop(key, b""))
                    for k in range(min(n, len(data) // DESC_BYTES)):
                        content = data[k * DESC_BYTES:(k + 1) * DESC_BYTES]
                        q.descs[(start + k) % q.entries].append(content)
                        if q.name == "tx":
                            addr, dlen = struct.unpack_from("<QI", content)
                            # [buffer, length, data, bytes requested, bytes received]
                            d = [addr, dlen, bytearray(dlen), 0, 0]
                            if dlen:
                                expect_tx[addr] = d
                elif key in dev_req:
                    _, (addr, d), nb = dev_req.pop(key)
                    data = bytes(read_data.pop(key, b""))
                    if d is not None:
                        a0, dl, buf = d[0], d[1], d[2]
                        buf[addr - a0:addr - a0 + nb] = (data + bytes(nb))[:nb]
                        d[4] += nb
                        if d[4] >= dl:
                            self.queues["tx"].tx_data[(a0, dl)].append(bytes(buf))
        self.t0_ps = self.events[0].t_ps if self.events else 0

    def volatile_offsets(self) -> set[int]:
        """BAR0 offsets whose value depends on timing (counters, indices, status): compared only like for like."""
        regs = (self.header.device or {}).get("registers", {})
        out = set()
        for name, off in regs.items():
            if (name.startswith("REG_STAT_") or name.endswith(("_CONS", "_STATUS")) or
                    name in ("REG_DMA_TAGS", "REG_DMA_CREDITS_USED", "REG_MSIX_PBA")):
                out.add(off)
        return out

    def last_written(self, register: str) -> int | None:
        """The last value the host writes to a register (by its name in the header's register map)."""
        off = (self.header.device or {}).get("registers", {}).get(register)
        vals = [int.from_bytes(e.data[:4], "little") for e in self.events if e.kind == "write" and e.offset == off]
        return vals[-1] if vals else None

    def irq_flushes(self) -> bool:
        """Whether the interrupt set-up announces every record eventually (a coalescing timer, or one event per
        interrupt); with neither, trailing records below the count are never announced, by design."""
        count, timer = self.last_written("REG_IRQ_COAL_COUNT"), self.last_written("REG_IRQ_COAL_TIMER")
        return bool(timer) or (count or 0) <= 1

    def _queue_for(self, address: int) -> QueuePlan | None:
        name = self.memmap.queue_of(address)
        return self.queues.get(name) if name else None

    def host_regions(self) -> list[tuple[int, int, str]]:
        """(base, size, kind) of the host memory the replay must provide at the trace's addresses."""
        kinds = (RegionKind.TX_RING, RegionKind.RX_RING, RegionKind.TX_DATA, RegionKind.RX_DATA,
                 RegionKind.TX_CPL_RING, RegionKind.RX_CPL_RING)
        return [(r.base, r.size, r.kind.value) for r in self.memmap.of_kind(*kinds)]

    def device_expected(self) -> int:
        return sum(len(v) for v in self.expected.values())


# comparison and report -----------------------------------------------------------------------------

@dataclass
class ClassMatch:
    expected: int = 0
    seen: int = 0
    matched: int = 0
    missing: int = 0
    unexpected: int = 0
    first_divergence: dict | None = None


@dataclass
class ReplayReport:
    trace: str
    mode: str                      # "exact" (a capture: must match) or "stimulus" (generated: divergence only)
    timing: str
    simulator: str
    data_width: int
    classes: dict[str, ClassMatch] = field(default_factory=dict)
    timing_dev_ns: dict[str, float] = field(default_factory=dict)
    mmio_reads: dict[str, int] = field(default_factory=dict)
    mac: dict[str, Any] = field(default_factory=dict)
    scoreboard: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)
    divergence: dict[str, Any] = field(default_factory=dict)   # stimulus mode: statistics expected vs seen
    timeout: dict[str, Any] | None = None
    link_errors: list[str] = field(default_factory=list)   # what the hard IP reported (a completion it dropped)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    trace_tlps: int = 0

    @property
    def matched(self) -> int:
        return sum(c.matched for c in self.classes.values())

    @property
    def expected(self) -> int:
        return sum(c.expected for c in self.classes.values())

    @property
    def match_fraction(self) -> float:
        return self.matched / self.expected if self.expected else 1.0

    @property
    def ok(self) -> bool:
        if self.timeout or self.rules.get("errors", 0) or self.link_errors:
            return False
        if not self.scoreboard.get("ok", True):
            return False
        if self.mode == "exact":
            return (all(c.missing == 0 and c.unexpected == 0 for c in self.classes.values())
                    and self.mmio_reads.get("mismatched", 0) == 0 and self.mac.get("mismatched", 0) == 0)
        return True

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["matched"] = self.matched
        d["expected"] = self.expected
        d["match_fraction"] = self.match_fraction
        return d

    def format(self) -> str:
        lines = [f"replay of {self.trace} ({self.mode}, timing {self.timing}, {self.simulator}, data width "
                 f"{self.data_width}): {'PASS' if self.ok else 'FAIL'}",
                 f"  device TLPs: {self.matched} of {self.expected} matched ({100 * self.match_fraction:.1f} %)"]
        for name, c in self.classes.items():
            if c.expected or c.seen:
                lines.append(f"    {name:<11} expected {c.expected:>6}  seen {c.seen:>6}  matched {c.matched:>6}  "
                             f"missing {c.missing:>5}  unexpected {c.unexpected:>5}")
        for name, c in self.classes.items():
            if c.first_divergence:
                fd = c.first_divergence
                lines.append(f"  first divergence in {name} at #{fd['position']}: expected {fd['expected']}, "
                             f"seen {fd['seen']}")
                for ctx in fd.get("context", []):
                    lines.append(f"      {ctx}")
                break
        if self.timing_dev_ns:
            lines.append(f"  timing deviation: p50 {self.timing_dev_ns.get('p50', 0):.0f} ns, "
                         f"p99 {self.timing_dev_ns.get('p99', 0):.0f} ns, max {self.timing_dev_ns.get('max', 0):.0f} ns")
        if self.mmio_reads:
            lines.append(f"  MMIO reads: {self.mmio_reads.get('matched', 0)} matched, "
                         f"{self.mmio_reads.get('mismatched', 0)} differ"
                         + (f", {self.mmio_reads['volatile_differ']} timing-dependent registers differ (reported)"
                            if self.mmio_reads.get("volatile_differ") else ""))
        if self.mac:
            how = "byte for byte" if self.mac.get("compared") == "bytes" else "by length (packet data was cut)"
            lines.append(f"  MAC TX frames: {self.mac.get('matched', 0)} of {self.mac.get('expected', 0)} {how}"
                         f", {self.mac.get('mismatched', 0)} differ, {self.mac.get('missing', 0)} missing")
        if self.scoreboard:
            lines.append(f"  scoreboard: {'ok' if self.scoreboard.get('ok') else 'FAILED'} "
                         f"({self.scoreboard.get('summary', '')})")
        lines.append(f"  rule check (live): {self.rules.get('errors', 0)} errors, {self.rules.get('warnings', 0)} warnings"
                     + (f" ({', '.join(self.rules.get('violated', []))})" if self.rules.get("violated") else ""))
        if self.divergence:
            lines.append("  divergence from the trace's device side (generated stimulus: reported, not failed):")
            for k, v in self.divergence.items():
                lines.append(f"    {k}: {v}")
        if self.coverage:
            cov = self.coverage
            lines.append(f"  coverage: {cov.get('bins_hit', 0)} of {cov.get('bins_total', 0)} bins "
                         f"({100 * cov.get('fraction', 0):.1f} %)")
        for e in self.link_errors[:5]:
            lines.append(f"  LINK ERROR: {e}")
        if self.timeout:
            lines.append(f"  TIMEOUT: {self.timeout.get('message')}")
            for o in self.timeout.get("outstanding", [])[:10]:
                lines.append(f"      outstanding: {o}")
        for n in self.notes[:10]:
            lines.append(f"  note: {n}")
        lines.append(f"  wall time {self.wall_s:.1f} s, {self.trace_tlps / max(self.wall_s, 1e-9):,.0f} trace TLPs per "
                     f"wall second")
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, default=str))


def _fmt_tlp(d: DeviceTlp | None) -> str:
    if d is None:
        return "nothing"
    return f"{d.cls.name.lower()} {d.type.name} {d.address:#x}+{d.nbytes} (record #{d.index}, t={d.t_ps / 1000:.1f} ns)"


def descriptor_entries(xs: list[DeviceTlp]) -> list[DeviceTlp]:
    """Descriptor reads as the ring entries they fetch: how many entries one read takes is the device's choice
    and depends on timing (how full its cache is); which entries it fetches, once each and in order, is not."""
    out = []
    for x in xs:
        for k in range(max(1, x.nbytes // DESC_BYTES)):
            out.append(dataclasses.replace(x, address=x.address + k * DESC_BYTES, nbytes=DESC_BYTES, payload=None))
    return out


def compare_class(expected: list[DeviceTlp], seen: list[DeviceTlp], exact_payload: bool) -> tuple[ClassMatch, list[float]]:
    """Match one class in order (tag-agnostic) by address and length (and payload when both kept)."""
    m = ClassMatch(expected=len(expected), seen=len(seen))
    devs = []
    n = min(len(expected), len(seen))
    for k in range(n):
        e, s = expected[k], seen[k]
        same = e.key() == s.key()
        if same and exact_payload and e.payload is not None and s.payload is not None:
            same = e.payload[:len(s.payload)] == s.payload[:len(e.payload)]
        if same:
            m.matched += 1
            devs.append((s.t_ps - e.t_ps) / 1000.0)
        elif m.first_divergence is None:
            m.first_divergence = {
                "position": k, "expected": _fmt_tlp(e), "seen": _fmt_tlp(s),
                "context": [f"expected[{j}] {_fmt_tlp(expected[j]) if j < len(expected) else '-'} | seen[{j}] "
                            f"{_fmt_tlp(seen[j]) if j < len(seen) else '-'}" for j in range(max(0, k - 2), k + 3)]}
    m.missing = len(expected) - m.matched
    m.unexpected = len(seen) - m.matched
    if m.first_divergence is None and len(seen) != len(expected):
        k = n
        m.first_divergence = {"position": k, "expected": _fmt_tlp(expected[k] if k < len(expected) else None),
                              "seen": _fmt_tlp(seen[k] if k < len(seen) else None), "context": []}
    return m, devs


def percentiles(x: list[float]) -> dict[str, float]:
    if not x:
        return {}
    a = np.abs(np.asarray(x))
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "mean_signed": float(np.mean(x))}


NIC_ID = (0x1234, 0x4E31)


def run_replay(trace: str, sim: str = "verilator", width: int = 256, timing: str = "trace", report: str | None = None,
               capture: str | None = None, mode: str | None = None, test_dir: Path | None = None,
               fault: str | None = None, extra_env: dict[str, str] | None = None) -> dict:
    """Validate, run, and return the JSON report (raises ReplayError on a refused trace, SimulationFailed on a
    failed replay: the report is written either way). ``fault``: replay on the RTL built with a planted fault."""
    from tb import runner
    from tb.nic_tb import regmap_fingerprint

    if timing not in ("trace", "asap"):
        raise ReplayError(f"TIMING must be 'trace' or 'asap', got {timing!r}")
    ReplayPlan.from_trace(trace, regmap=regmap_fingerprint(), device=NIC_ID, data_width=width)
    rpath = Path(report) if report else Path(trace).with_name(Path(trace).name.split(".")[0] + f".replay.{sim}.json")
    if rpath.exists():
        rpath.unlink()
    env = {"REPLAY_TRACE": str(Path(trace).resolve()), "REPLAY_TIMING": timing, "REPLAY_REPORT": str(rpath.resolve())}
    if capture:
        env["REPLAY_CAPTURE"] = str(Path(capture).resolve())
    if mode:
        env["REPLAY_MODE"] = mode
    env.update(extra_env or {})
    try:
        runner.run("replay_trace", sim=sim, data_width=width, module="test_replay", env=env, test_dir=test_dir,
                   fault=fault)
    finally:
        if not rpath.exists():
            raise runner.SimulationFailed(f"replay of {trace} produced no report (simulator crashed?)")
    return json.loads(rpath.read_text())
