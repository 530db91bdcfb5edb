"""cocotb entry for trace replay: re-enact a trace's host side against the NIC RTL and check its device side.

Environment: ``REPLAY_TRACE`` (the trace), ``REPLAY_TIMING`` (``trace``: the host acts at the trace's relative
times; ``asap``: as fast as the device allows), ``REPLAY_REPORT`` (where the JSON report goes), optional
``REPLAY_CAPTURE`` (the replay's own trace), ``REPLAY_MODE`` (``exact``/``stimulus``, default from the trace).
"""

from __future__ import annotations

import os
import struct
import time

import cocotb
from cocotb.triggers import Event, First, Timer
from cocotb.utils import get_sim_time

from host.pcie import BufferKind
from phantom.memmap import Region, RegionKind
from phantom.trace import Direction, SemClass
from phantom.rules.spec import request_bytes
from tb.coverage import Coverage
from tb.host_model import HOST_PROFILES, HostModel
from tb.nic_tb import TB, LinkConfig, regmap_fingerprint
from tb.replay import (DEVICE_CLASSES, DeviceTlp, ReplayPlan, ReplayReport, compare_class, descriptor_entries,
                       percentiles)

_KIND_BUF = {"tx_ring": BufferKind.TX_RING, "rx_ring": BufferKind.RX_RING, "tx_data": BufferKind.TX_DATA,
             "rx_data": BufferKind.RX_DATA, "tx_cpl_ring": BufferKind.TX_CPL_RING, "rx_cpl_ring": BufferKind.RX_CPL_RING}


def _now() -> int:
    return int(get_sim_time("ps"))



def _units(c: SemClass, xs) -> int:
    """TLPs of a class, descriptor reads counted in the descriptors they fetch."""
    if c == SemClass.DESC_READ:
        return sum(max(1, x.nbytes // 16) for x in xs)
    return len(xs)

class Replayer:
    def __init__(self, dut, plan: ReplayPlan, timing: str, mode: str, capture: str | None):
        self.plan = plan
        self.timing = timing
        self.mode = mode
        h = plan.header
        model = HostModel.from_json(h.host["model"]) if (h.host or {}).get("model") else HOST_PROFILES["realistic"]
        # the link the trace obeys wins over the host model it names: tag width is Extended Tag Field Enable,
        # the attributes are Device Control's enables
        model = model.replace(ext_tags=h.tag_width > 5, relaxed_ordering=h.relaxed_ordering, no_snoop=h.no_snoop)
        self.tb = TB(dut, LinkConfig(mps=h.mps, mrrs=h.mrrs, rcb=h.rcb, packet_payload_keep=-1), trace_path=capture,
                     scenario=f"replay of {plan.trace.name}", host_model=model, keep_records=False)
        self.chk = self.tb.live_checker()
        self.seen: dict[SemClass, list[DeviceTlp]] = {c: [] for c in DEVICE_CLASSES}
        self.progress = Event()
        self.last_progress = 0
        self.records: dict[str, int] = {"tx": 0, "rx": 0}
        self.rx_slot: dict[int, tuple[int, int]] = {}      # RX ring index -> (buffer, length) last posted
        self.rx_frames = [f.data for f in plan.mac_rx]
        self.rx_checked = 0
        self.rx_bad: list[str] = []
        self.tx_posted: list[bytes | None] = []            # TX frame data in posting order (None: not known)
        self.mac_out: list[bytes] = []
        self.mmio = {"matched": 0, "mismatched": 0, "volatile_differ": 0, "unknown": 0}
        self.volatile = plan.volatile_offsets()
        # like for like: same data width and the trace's timing. Otherwise how descriptors batch and how events
        # coalesce into interrupts follow the new timing: interrupts are then judged by what they announce
        self.like_for_like = timing == "trace" and len(dut.m_axis_rq_tdata) == plan.header.data_width
        self.mmio_diff: list[str] = []
        self.cov: Coverage | None = None

    # -------------------------------------------------------------------------------------------
    def listener(self, r) -> None:
        if self.cov is not None:
            self.cov.feed(r)
        if r.dir != Direction.UP or r.type.is_completion:
            return
        cls = r.cls if r.cls in self.seen else SemClass.OTHER
        self.seen[cls].append(DeviceTlp(r.t_ps, cls, r.type, r.address, request_bytes(r.length, r.first_be, r.last_be),
                                        r.payload, len(self.seen[cls])))
        self.last_progress = r.t_ps
        if cls == SemClass.CPL_WRITE and r.payload and len(r.payload) >= 16:
            q = self.plan.memmap.queue_of(r.address)
            if q in self.records:
                self.records[q] += 1
                if q == "rx":
                    # the host sees the data once the root complex has written it: look a little later
                    cocotb.start_soon(self._check_rx_later(bytes(r.payload)))
        self.progress.set()

    async def _check_rx_later(self, record: bytes) -> None:
        await Timer(200, "ns")
        self._check_rx(record)

    def _check_rx(self, record: bytes) -> None:
        """Scoreboard: the frame the RX record reports is in the host buffer byte for byte (at the record)."""
        dw0, length = struct.unpack_from("<II", record)
        idx = dw0 & 0xFFFF
        buf = self.rx_slot.get(idx)
        k = self.rx_checked
        self.rx_checked += 1
        if buf is None or k >= len(self.rx_frames):
            self.rx_bad.append(f"RX record {k} for entry {idx}: no frame or buffer to compare with")
            return
        got = self.tb.access.dma_read(buf[0], min(length, buf[1]))
        want = self.rx_frames[k][:buf[1]]
        if got != want:
            self.rx_bad.append(f"RX frame {k}: {len(got)} B in the buffer differ from the {len(want)} B offered")

    # -------------------------------------------------------------------------------------------
    async def setup(self) -> None:
        tb, plan = self.tb, self.plan
        await tb.bring_up(dma_pool=False)
        for base, size, kind in plan.host_regions():
            tb.access.map_fixed(base, size, _KIND_BUF[kind])
        bar_off = tb.access.bar_addr - plan.bar_base
        if bar_off:
            tb.log.warning("replay: BAR0 at %#x, the trace had %#x (MMIO is replayed by offset)",
                           tb.access.bar_addr, plan.bar_base)
        regions = [Region(b, s, RegionKind(k)) for b, s, k in plan.host_regions()]
        regions += [Region(r.base + bar_off, r.size, r.kind) for r in plan.memmap.regions
                    if r.kind in (RegionKind.BAR, RegionKind.TX_DOORBELL, RegionKind.RX_DOORBELL,
                                  RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)]
        msix = tb.msix_address()
        if msix is not None:
            regions.append(Region(msix, 4, RegionKind.MSIX))
        tb.tap.set_memory_map(regions)
        tb.tap.listeners.append(self.listener)
        if os.environ.get("REPLAY_DROP"):   # a root complex that stops answering reads of these regions (tests)
            kinds = set(os.environ["REPLAY_DROP"].split(","))
            tb.faults.drop_ranges.extend((b, b + n) for b, n, k in plan.host_regions() if k in kinds)
        header = await self._commit()
        self.cov = Coverage(header)

    async def _commit(self):
        # nothing is read from the device here: the replay's link carries only what the trace's host did
        tb = self.tb
        return tb.tap.commit(cpl_timeout_ns=self.plan.header.cpl_timeout_ns, host=tb.provenance.to_json(),
                             device={"vendor_id": 0x1234, "device_id": 0x4E31, "regmap": regmap_fingerprint()},
                             extra={"replay_of": str(self.plan.trace)})

    def _post(self, q: str, old: int, new: int) -> None:
        """Put the descriptors (and TX data) a doorbell posts into host memory, as the driver had."""
        qp = self.plan.queues[q]
        acc = self.tb.access
        i = old
        while i != new:
            contents = qp.descs.get(i)
            if contents:
                d = contents.popleft()
                acc.dma_write(qp.ring_base + i * 16, d)
                addr, length = struct.unpack_from("<QI", d)
                if q == "rx":
                    self.rx_slot[i] = (addr, length)
                else:
                    data_q = qp.tx_data.get((addr, length))
                    data = data_q.popleft() if data_q else None
                    if length and acc.find(addr) is not None and acc.find(addr + length - 1) is not None:
                        acc.dma_write(addr, data if data is not None else bytes((addr + k) & 0xFF for k in range(length)))
                    self.tx_posted.append(data)
            i = (i + 1) % qp.entries

    async def _wait_slot_free(self, q: str, target_records: int, limit_ns: int) -> None:
        t_end = _now() + limit_ns * 1000
        while self.records[q] < target_records and _now() < t_end:
            self.progress.clear()
            await First(self.progress.wait(), Timer(1, "us"))

    async def host_side(self) -> None:
        plan, tb = self.plan, self.tb
        bar = tb.fn.bar_window[0]
        io = tb.fn.bar_window[2] if len(tb.fn.bar_window) > 2 else None
        start = _now()
        posted = {"tx": 0, "rx": 0}
        laps = {"tx": 0, "rx": 0}
        for ev in plan.events:
            if self.timing == "trace":
                due = start + (ev.t_ps - plan.t0_ps)
                if due > _now():
                    await Timer(due - _now(), "ps")
            if ev.kind == "write":
                if ev.doorbell and ev.queue in posted:
                    q = ev.queue
                    qp = plan.queues[q]
                    new = int.from_bytes(ev.data[:2], "little") % qp.entries
                    n_new = (new - posted[q]) % qp.entries
                    # never post more than the ring holds: at most entries - 1 outstanding (producer == consumer
                    # means empty), so wait for the device's completion records first (the driver's own rule)
                    need = laps[q] * qp.entries + posted[q] + n_new - (qp.entries - 1)
                    if need > 0:
                        await self._wait_slot_free(q, need, 2_000_000)
                    self._post(q, posted[q], new)
                    if new < posted[q] or (n_new and new == posted[q]):
                        laps[q] += 1
                    posted[q] = new
                if ev.qctrl and ev.queue in posted and not ev.data[0] & 1:
                    posted[ev.queue] = 0
                    laps[ev.queue] = 0
                    self.records[ev.queue] = 0
                await bar.write(ev.offset, ev.data)
            elif ev.kind == "read":
                got = bytes(await bar.read(ev.offset, ev.length))
                want = ev.data[(ev.offset & 3):(ev.offset & 3) + ev.length] if ev.data else None
                if want is None:
                    self.mmio["unknown"] += 1
                elif got == want:
                    self.mmio["matched"] += 1
                elif (ev.offset & ~3) in self.volatile:
                    # counters, indices and status depend on timing (a read racing a write by a few ns): reported
                    self.mmio["volatile_differ"] += 1
                else:
                    self.mmio["mismatched"] += 1
                    if len(self.mmio_diff) < 10:
                        self.mmio_diff.append(f"MMIO read #{ev.index} at BAR0+{ev.offset:#x}: trace {want.hex()}, "
                                              f"replay {got.hex()}")
            elif ev.kind in ("io_read", "io_write") and io is not None:
                try:
                    if ev.kind == "io_read":
                        await io.read(ev.offset, ev.length)
                    else:
                        await io.write(ev.offset, ev.data)
                except Exception:  # cocotbext raises on the UR the NIC answers IO with: as in the capture
                    pass

    async def mac_side(self) -> None:
        start = _now()
        t0 = self.plan.t0_ps
        for f in self.plan.mac_rx:
            if self.timing == "trace":
                due = start + max(0, f.t_ps - t0)
                if due > _now():
                    await Timer(due - _now(), "ps")
            await self.tb.send_frame(f.data)

    async def mac_out_side(self) -> None:
        while len(self.mac_out) < len(self.plan.mac_tx) or self.plan.generated:
            self.mac_out.append(await self.tb.recv_frame())

    async def run(self) -> ReplayReport:
        wall0 = self._wall0 = time.time()
        self._t_start = _now()
        await self.setup()
        t_start = self._t_start = _now()
        host = cocotb.start_soon(self.host_side())
        mac = cocotb.start_soon(self.mac_side())
        out = cocotb.start_soon(self.mac_out_side())
        plan = self.plan
        stall_ps = max(200_000_000, 3 * int(self.tb.tap.header.cpl_timeout_ns * 1000))
        if os.environ.get("REPLAY_STALL_US"):
            stall_ps = int(float(os.environ["REPLAY_STALL_US"]) * 1e6)
        limit_ps = 4 * max(1, (max(e.t_ps for e in plan.events) - plan.t0_ps)) + 5_000_000_000
        timeout = None
        # descriptor reads are counted in descriptors: how many the device fetches per read depends on timing
        want_units = {c: _units(c, plan.expected[c]) for c in DEVICE_CLASSES}
        while True:
            self.progress.clear()
            await First(self.progress.wait(), Timer(10, "us"))
            # generated stimulus: the device's own prefetch depth decides how far ahead it reads RX descriptors
            # (the trace's model may have read further); the records, data and frames it owes still end the run
            strict = [c for c in DEVICE_CLASSES if (self.like_for_like or c != SemClass.INTERRUPT)
                      and not (self.mode == "stimulus" and c == SemClass.DESC_READ)]
            done_dev = all(_units(c, self.seen[c]) >= want_units[c] for c in strict)
            done_mac = len(self.mac_out) >= len(plan.mac_tx)
            if host.done() and mac.done() and done_dev and done_mac:
                await Timer(20, "us")   # anything extra the device still sends counts as unexpected
                break
            now = _now()
            if now - max(self.last_progress, t_start) > stall_ps or now - t_start > limit_ps:
                outstanding = []
                for c in DEVICE_CLASSES:
                    for e in plan.expected[c][len(self.seen[c]):len(self.seen[c]) + 3]:
                        outstanding.append(f"{c.name.lower()} {e.type.name} {e.address:#x}+{e.nbytes} (record #{e.index})")
                timeout = {"message": f"the device stopped responding: nothing new for "
                                      f"{(now - max(self.last_progress, t_start)) / 1e6:.0f} us "
                                      f"(host side {'done' if host.done() else 'not done'})", "outstanding": outstanding}
                break
        for job in (host, mac, out):
            if not job.done():
                job.cancel()
        return self.report(time.time() - wall0, timeout, t_start)

    def report(self, wall: float, timeout, t_start: int) -> ReplayReport:
        plan = self.plan
        rep = ReplayReport(trace=str(plan.trace), mode=self.mode, timing=self.timing,
                           simulator=os.environ.get("NIC_SIM", ""), data_width=self.tb.data_width,
                           wall_s=wall, trace_tlps=plan.n_records)
        devs = []
        mm = plan.memmap
        for c in DEVICE_CLASSES:
            # relative times: the replay's from its start, the trace's from its first re-enacted host event;
            # each queue's stream is matched on its own (TX and RX interleave by timing, each keeps its order)
            exp = [DeviceTlp(e.t_ps - plan.t0_ps, e.cls, e.type, e.address, e.nbytes, e.payload, e.index)
                   for e in plan.expected[c]]
            seen = [DeviceTlp(s.t_ps - t_start, s.cls, s.type, s.address, s.nbytes, s.payload, s.index)
                    for s in self.seen[c]]
            if c == SemClass.DESC_READ:
                exp, seen = descriptor_entries(exp), descriptor_entries(seen)
            total = None
            for q in sorted({mm.queue_of(x.address) or "" for x in exp + seen}):
                m, d = compare_class([x for x in exp if (mm.queue_of(x.address) or "") == q],
                                     [x for x in seen if (mm.queue_of(x.address) or "") == q],
                                     exact_payload=self.mode == "exact" and plan.tx_data_whole)
                devs += d
                if total is None:
                    total = m
                else:
                    for f in ("expected", "seen", "matched", "missing", "unexpected"):
                        setattr(total, f, getattr(total, f) + getattr(m, f))
                    total.first_divergence = total.first_divergence or m.first_divergence
            rep.classes[c.name.lower()] = total or compare_class([], [], False)[0]
        if not self.like_for_like or self.mode == "stimulus":
            # interrupts follow the new timing (or, for generated stimulus, the RTL's own coalescing): every record must still be announced by a later interrupt
            irq = rep.classes.pop("interrupt")
            recs, irqs = self.seen[SemClass.CPL_WRITE], self.seen[SemClass.INTERRUPT]
            announced = not recs or (irqs and irqs[-1].t_ps >= recs[-1].t_ps)
            rep.divergence["interrupts"] = (f"{irq.seen} seen, {irq.expected} in the trace (coalescing follows the "
                                            f"timing); last record {'announced' if announced else 'NEVER announced'}")
            if not announced and plan.irq_flushes():
                self.rx_bad.append("the last completion records were never announced by an interrupt")
        rep.timing_dev_ns = percentiles(devs)
        rep.mmio_reads = dict(self.mmio)
        if self.mmio_diff:
            rep.notes += self.mmio_diff
        exp_tx = [f.data for f in plan.mac_tx]
        n = min(len(exp_tx), len(self.mac_out))
        if plan.tx_data_whole:
            same = sum(1 for k in range(n) if exp_tx[k] == self.mac_out[k])
        else:
            same = sum(1 for k in range(n) if len(exp_tx[k]) == len(self.mac_out[k]))
        rep.mac = {"expected": len(exp_tx), "seen": len(self.mac_out), "matched": same,
                   "mismatched": n - same, "missing": max(0, len(exp_tx) - len(self.mac_out)),
                   "compared": "bytes" if plan.tx_data_whole else "lengths"}
        # scoreboard: TX frames out are the data the replay posted, RX frames landed in their buffers
        tx_bad = [k for k, d in enumerate(self.tx_posted[:len(self.mac_out)]) if d is not None and self.mac_out[k] != d]
        ok = not tx_bad and not self.rx_bad
        rep.scoreboard = {"ok": ok, "tx_frames": len(self.mac_out), "tx_differ": tx_bad[:10], "rx_checked": self.rx_checked,
                          "rx_errors": self.rx_bad[:10],
                          "summary": f"{len(self.mac_out)} TX frames, {len(tx_bad)} differ; {self.rx_checked} RX frames "
                                     f"checked in host memory, {len(self.rx_bad)} differ"}
        chk = self.chk.report()
        rep.rules = {"errors": chk.errors, "warnings": chk.warnings, "violated": sorted(chk.unwaived()),
                     "first": [f"#{v.index} {v.rule}: {v.message}" for v in chk.first[:5]]}
        rep.coverage = self.cov.finish().to_json() if self.cov is not None else {}
        rep.timeout = timeout
        drops = self.tb.dev.local_error.qsize()
        if drops:
            rep.link_errors.append(f"the hard IP dropped {drops} completion(s): its completion buffer overflowed "
                                   f"(the device had more reads outstanding than the buffer it was told of holds)")
        rep.notes += plan.notes[:5]
        if self.mode == "stimulus":
            rep.divergence = divergence(plan, self.seen)
        return rep


def divergence(plan: ReplayPlan, seen) -> dict:
    """Statistics of the device side expected by a generated trace against what the RTL did."""
    out = {}
    for c in DEVICE_CLASSES:
        e, s = len(plan.expected[c]), len(seen[c])
        if e or s:
            out[f"{c.name.lower()} count"] = f"trace {e}, device {s} ({(s - e) / e * 100:+.1f} %)" if e else f"trace 0, device {s}"

    def sizes(xs):
        if not xs:
            return "-"
        import numpy as np

        a = np.array([x.nbytes for x in xs])
        return f"p50 {np.percentile(a, 50):.0f} B, mean {a.mean():.0f} B"

    for c in (SemClass.DATA_READ, SemClass.DATA_WRITE):
        out[f"{c.name.lower()} sizes"] = f"trace {sizes(plan.expected[c])}; device {sizes(seen[c])}"
    return out


@cocotb.test()
async def replay_trace(dut):
    trace = os.environ["REPLAY_TRACE"]
    plan = ReplayPlan.from_trace(trace, check=False, data_width=len(dut.m_axis_rq_tdata))
    mode = os.environ.get("REPLAY_MODE") or ("stimulus" if plan.generated else "exact")
    r = Replayer(dut, plan, os.environ.get("REPLAY_TIMING", "trace"), mode, os.environ.get("REPLAY_CAPTURE") or None)
    try:
        rep = await r.run()
    except BaseException:
        # another task failed and cocotb cancels the test: typically cocotbext-pcie refusing a TLP the device sent
        # (its own validation, e.g. a request across 4 KB). The report still says what the checker saw.
        try:
            rep = r.report(time.time() - r._wall0, {"message": "the run was cut short: a testbench or PCIe-model "
                                                               "task failed (see the simulator log)",
                                                    "outstanding": []}, r._t_start)
            rep.write(os.environ["REPLAY_REPORT"])
        finally:
            r.tb.close()
        raise
    r.tb.close()
    rep.write(os.environ["REPLAY_REPORT"])
    dut._log.warning("\n%s", rep.format())
    assert rep.ok, "replay failed (see the report)"
