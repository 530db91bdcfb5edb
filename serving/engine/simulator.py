"""Iteration-level discrete-event simulator of one model replica.

Keeps the workload (arrivals), the scheduler (decisions), the execution-time model (profile) and the metrics
store apart. Consecutive decode-only iterations in which nothing can change (no arrival, no finish, no admission
point) are folded into one step of k iterations whose time is summed in closed form, so an hour of trace runs
in seconds; every decision point is still simulated exactly.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import numpy as np

from serving.engine.profiles import Profile
from serving.request import Request
from serving.scheduler import Scheduler


@dataclass
class SimResult:
    """What a run produced, for serving.metrics."""

    requests: list[Request]
    clients: list[str]
    makespan: float = 0.0             # time of the last completion
    busy: float = 0.0                 # seconds the GPU ran iterations
    compute: float = 0.0              # seconds of tensor-core work (utilisation numerator)
    iterations: int = 0
    preemptions: int = 0
    tbt: list[tuple[float, int]] = field(default_factory=list)     # (step seconds, tokens emitted at that step length)
    # sample tables: numpy arrays, one row per sample, one column per client (in `clients` order)
    samples_t: np.ndarray = field(default_factory=lambda: np.zeros(0))                 # (T,) sample times
    samples_service: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))      # (T, C) accumulated service
    samples_backlog: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # (T, C) requests waiting
    samples_active: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))   # (T, C) waiting or running
    samples_gpu: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))          # (T, C) weighted GPU-seconds
    rejected: int = 0                 # requests refused at arrival by the policy
    backlog_log: list[tuple[float, str, bool]] = field(default_factory=list)  # (time, client, queue non-empty)
    kv_peak: int = 0
    kv_capacity: int = 0


class Simulator:
    def __init__(self, scheduler: Scheduler, requests: list[Request], sample_dt: float = 1.0,
                 w_p: float = 1.0, w_q: float = 2.0):
        self.s = scheduler
        self.p: Profile = scheduler.profile
        self.reqs = sorted(requests, key=lambda r: (r.arrival, r.rid))
        for r in self.reqs:
            scheduler.check_servable(r)  # before the run: nothing that could wait forever starts
        self.clients = sorted({r.client for r in self.reqs})
        self.idx = {c: i for i, c in enumerate(self.clients)}
        # accumulated service (VTC's w_p/w_q tokens) and weighted GPU-seconds per client index, brought up to
        # date at each sample from the charges delivered since (a few clients a step: kept by client name)
        self._svc = np.zeros(len(self.clients))
        self._gpu = np.zeros(len(self.clients))
        self._pend_svc: dict[str, float] = {}
        self._pend_gpu: dict[str, float] = {}
        self._back = np.zeros(len(self.clients), bool)
        self._log_pos = 0
        # one sample a sample_dt from the first to past the last arrival, and room for a 25 % longer drain
        span = self.reqs[-1].arrival if self.reqs else 0.0
        # (rows for the expected samples, at most 2^16 up front: the table grows when a run outlasts it)
        rows = int(min(span / sample_dt * 1.25, 1 << 16)) + 64 if sample_dt > 0 else 1024
        self._table = _Table(len(self.clients), rows)
        self.sample_dt = sample_dt
        self._scan = (0, -1)   # (where the last arrival scan stopped, the policy's backlog log length then)
        self.w_p, self.w_q = w_p, w_q

    def run(self, progress=None) -> SimResult:
        # objects alive before the run (the caller's workloads, earlier results) are moved out of the cyclic
        # collector's sight for its duration: the run makes no reference cycles, and otherwise every collection
        # would walk the caller's whole heap (measured: 20 % of the run time after a few other runs)
        gc.freeze()
        try:
            return self._run(progress)
        finally:
            gc.unfreeze()

    def _run(self, progress) -> SimResult:
        s, p = self.s, self.p
        res = SimResult(self.reqs, self.clients, kv_capacity=s.kv_capacity)
        idx = self.idx
        service, gpu = self._pend_svc, self._pend_gpu
        counted: set[int] = set()                  # requests whose prompt has been counted as service
        reqs, w_p, w_q = self.reqs, self.w_p, self.w_q
        tbt = res.tbt
        now, i, n = 0.0, 0, len(reqs)
        next_sample = 0.0
        done_before = 0
        busy = compute = 0.0
        iterations = 0
        while i < n or s.has_work:
            while i < n and reqs[i].arrival <= now:
                s.add_request(reqs[i], reqs[i].arrival)
                i += 1
            if not s.has_work:
                if i >= n:
                    break  # the last arrivals were rejected: nothing left to run
                now = reqs[i].arrival
                continue
            out = s.schedule(now)
            if out.empty:
                if i < n:  # nothing can run until more arrives (cannot happen with a non-empty batch)
                    now = reqs[i].arrival
                    continue
                raise RuntimeError(f"scheduler made no progress at t={now:.3f}s with {s.policy.waiting} waiting")
            # a prompt is service once, at its first admission: not again when recomputed after a preemption, and
            # also when the request was evicted again in the iteration that admitted it (it is then only in
            # out.preempted)
            for r in (out.admitted + out.preempted) if out.preempted else out.admitted:
                if r.rid not in counted:
                    counted.add(r.rid)
                    service[r.client] = service.get(r.client, 0.0) + w_p * r.prompt_tokens
            k = s.quiet_steps(out)
            if k == 1:
                dt, util = p.iteration([(c, r.prefilled) for r, c in out.prefills], out.n_decode, out.decode_kv)
                comp = util * dt
            else:
                # fold no further than the next arrival that matters (the metrics need no stop: service is
                # interpolated between samples, and the backlog is logged exactly, as it changes)
                nxt = self._next_arrival_that_matters(i)
                if out.prefills:  # full-budget chunks of one long prompt
                    (r, c), = out.prefills
                    k, dt, comp = p.chunk_steps(c, r.prefilled, out.n_decode, out.decode_kv, k,
                                                math.inf if nxt is None else nxt - now)
                else:
                    k = self._limit_to_arrival(out, k, now, nxt)
                    dt = p.decode_steps_time(out.n_decode, out.decode_kv, k)
                    comp = k * p.compute_time([], out.n_decode)
            out.steps = k
            now += dt
            for client, g in s.update_from_output(out, now, dt).items():
                service[client] = service.get(client, 0.0) + w_q * g
            for client, g in s.last_gpu.items():
                gpu[client] = gpu.get(client, 0.0) + g
            if out.decode:
                tbt.append((dt / k, out.n_decode * k))
            busy += dt
            compute += comp
            iterations += k
            if now >= next_sample:
                self._sample(res, now)
                next_sample = now + self.sample_dt
            if progress is not None and len(s.finished) != done_before:
                progress.update(len(s.finished) - done_before)
                done_before = len(s.finished)
        s.settle(now)
        self._sample(res, now)
        self._table.finish(res)
        res.rejected = len(s.rejected)
        res.busy, res.compute, res.iterations = busy, compute, iterations
        res.backlog_log = s.policy.backlog_log
        res.makespan = now
        res.preemptions = s.preemptions
        return res

    def _totals(self) -> None:
        """Bring the service and GPU totals up to date with the charges delivered since the last sample."""
        tokens, gpu = self.s.take_delivered()
        ps, pg, w_q = self._pend_svc, self._pend_gpu, self.w_q
        for client, n in tokens.items():
            ps[client] = ps.get(client, 0.0) + w_q * n
        for client, x in gpu.items():
            pg[client] = pg.get(client, 0.0) + x
        idx, svc, g = self.idx, self._svc, self._gpu
        for client, x in ps.items():
            svc[idx[client]] += x
        for client, x in pg.items():
            g[idx[client]] += x
        ps.clear()
        pg.clear()

    def _next_arrival_that_matters(self, i: int) -> float | None:
        """The time of the first arrival, from reqs[i] on, whose client has no request waiting.

        Called only for a fold, during which nothing is admitted: a request of a client that already waits
        joins the back of its client's queue and changes no decision, lift or sample until the fold ends, so
        it is added then (with its own arrival time). A client with nothing waiting is lifted on arrival and
        may be admitted at once: the fold stops there. The scan resumes where the last one stopped while no
        queue has changed state since (arrivals it passed still do not matter), so it costs O(1) per arrival."""
        reqs, pol = self.reqs, self.s.policy
        queues, n, version = pol.queues, len(reqs), len(pol.backlog_log)
        j, seen = self._scan
        if seen != version or j < i:
            j = i
        while j < n and queues.get(reqs[j].client):
            j += 1
        self._scan = (j, version)
        return reqs[j].arrival if j < n else None

    def _limit_to_arrival(self, out, k: int, now: float, next_arrival: float | None) -> int:
        """Fold decode steps no further than the next arrival (its counter lift must see the counters of its
        time). Folded prefill chunks are limited the same way inside Profile.chunk_steps."""
        if next_arrival is None:
            return k
        return self.p.decode_steps_within(out.n_decode, out.decode_kv, k, next_arrival - now)

    def _sample(self, res: SimResult, now: float) -> None:
        s, idx = self.s, self.idx
        res.kv_peak = max(res.kv_peak, s.kv_used())
        log = s.policy.backlog_log   # queue transitions since the last sample, applied in order
        back = self._back
        for j in range(self._log_pos, len(log)):
            _, c, on = log[j]
            back[idx[c]] = on
        self._log_pos = len(log)
        active = back.copy()
        for c in s.running_by_client:
            active[idx[c]] = True
        self._totals()
        # the row holds what the scheduler owes too (delivered lazily: reading it leaves the policy's state as is)
        owed = s.owed()
        if owed:
            n = len(owed)
            owed = (np.fromiter((idx[c] for c, _, _ in owed), np.intp, n),
                    np.fromiter((t for _, t, _ in owed), float, n) * self.w_q,
                    np.fromiter((g for _, _, g in owed), float, n))
        self._table.add(now, self._svc, back, active, self._gpu, owed)


class _Table:
    """(samples, clients) numpy tables, allocated once for the expected number of samples and grown by a quarter
    when a run outlasts it; the results are views of the filled rows (no copy at the end: at 1,000 clients and
    27,000 samples each float table is 220 MB)."""

    def __init__(self, clients: int, rows: int = 64):
        self.n, self.cap, self.c = 0, max(rows, 16), clients
        self.t = np.zeros(self.cap)
        self.svc = np.zeros((self.cap, clients))
        self.gpu = np.zeros((self.cap, clients))
        self.back = np.zeros((self.cap, clients), bool)
        self.act = np.zeros((self.cap, clients), bool)

    def add(self, t, svc, back, act, gpu, owed=()) -> None:
        """A row: the totals, plus `owed` (client indices, each once; their service; their GPU-seconds: three
        arrays) added to this row only."""
        if self.n == self.cap:
            self.cap += self.cap // 4 + 16
            for k in ("t", "svc", "gpu", "back", "act"):
                a = getattr(self, k)
                b = np.zeros((self.cap,) + a.shape[1:], a.dtype)
                b[:self.n] = a
                setattr(self, k, b)
                del a
        i = self.n
        self.t[i] = t
        self.svc[i] = svc
        self.gpu[i] = gpu
        self.back[i] = back
        self.act[i] = act
        if len(owed):
            j, x, g = owed
            self.svc[i, j] += x
            self.gpu[i, j] += g
        self.n += 1

    def finish(self, res: SimResult) -> None:
        n = self.n
        res.samples_t, res.samples_service, res.samples_gpu = self.t[:n], self.svc[:n], self.gpu[:n]
        res.samples_backlog, res.samples_active = self.back[:n], self.act[:n]
