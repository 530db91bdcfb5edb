"""The ``sim`` backend: the engine simulator run in real time, the embedded default of ``make serve``.

The loop is the simulator's (serving.engine.simulator) without folding: ``schedule(now)``, the profile's iteration
time, a sleep of that long (times ``time_scale``: 0.01 runs 100x faster, for tests), ``update_from_output``, and
every token produced in the iteration goes to its stream. Engine time is wall time / time_scale; when the loop
falls behind, the gap shows as idle engine time, never as shorter iterations. Output lengths are drawn from the
seed and the prompt (a log-normal around ``mean_output_tokens``), capped by max_tokens; ``ignore_eos`` asks for
exactly max_tokens. Text is a sequence of one-token words, so it re-tokenizes to the count it reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import zlib

from host.telemetry.sim import SimSource
from serving.daemon.backends import Backend
from serving.daemon.backends.common import SchedulerHost, perf
from serving.daemon.job import End, Job
from serving.daemon.tokenizer import default_tokenizer
from serving.engine.profiles import get_profile

log = logging.getLogger(__name__)


class SimBackend(Backend):
    usage_source = "tokenizer"

    def __init__(self, cfg, metrics):
        self.cfg = cfg
        self.bcfg = cfg.backend
        self.metrics = metrics
        self.scale = self.bcfg.time_scale
        self._t0 = time.monotonic()
        self.host = _Host(cfg.policy, get_profile(self.bcfg.profile), self)
        self.words = default_tokenizer().words
        self.telemetry = SimSource("sim0", clock=self.host.now)
        self._task: asyncio.Task | None = None
        self._t0 = time.monotonic()
        self._stopping = False

    @property
    def scheduler(self):
        return self.host.scheduler

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        self._stopping = True
        self.host.wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def ready(self) -> bool:
        return self._task is not None and not self._task.done()

    # jobs ----------------------------------------------------------------------------------------
    def natural_length(self, job: Job) -> int:
        """The output length the simulated model 'wants' for this prompt (deterministic in seed and prompt)."""
        key = self._key(job)
        rng = random.Random(self.bcfg.seed * 1_000_003 + key)
        return max(1, int(round(self.bcfg.mean_output_tokens * math.exp(0.8 * rng.gauss(0.0, 1.0)))))

    @staticmethod
    def _key(job: Job) -> int:
        return zlib.crc32(json.dumps(job.body.get("prompt", job.body.get("messages")), sort_keys=True).encode())

    def submit(self, job: Job) -> None:
        job.natural = self.natural_length(job)
        n = job.max_tokens if job.ignore_eos else min(job.max_tokens, job.natural)
        self.host.enqueue(job, n)

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        self.host.request_cancel(job, reason)

    def fail_all(self, status: int, message: str, retry_after: int | None = None) -> int:
        return self.host.fail_all(status, message, retry_after)

    def _texts(self, job: Job, start: int, n: int) -> list[str]:
        w = self.words
        base = self._key(job) * 7919   # the same prompt gets the same text
        return [(" " if i else "") + w[(base + i * 31) % len(w)] for i in range(start, start + n)]

    # the engine loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        host = self.host
        while not self._stopping:
            try:
                host.apply_pending(self.metrics)
                s = host.scheduler
                if not s.has_work:
                    host.wake.clear()
                    await host.wake.wait()
                    continue
                t = host.now()
                c0 = perf()
                out = s.schedule(t)
                if out.empty:
                    host.record_overhead(self.metrics, perf() - c0)
                    host.wake.clear()   # nothing can run until something arrives or leaves
                    try:
                        await asyncio.wait_for(host.wake.wait(), timeout=1.0)
                    except asyncio.TimeoutError:
                        pass
                    continue
                decoding = out.decodes
                prefilling = [r for r, _ in out.prefills]
                dt, util = self.host.profile.iteration([(c, r.prefilled) for r, c in out.prefills], out.n_decode,
                                                       out.decode_kv)
                c1 = perf()
                wake_at = self._t0 + (t + dt) * self.scale
                delay = wake_at - time.monotonic()
                await asyncio.sleep(delay if delay > 0 else 0)
                t_end = max(host.now(), t + dt)
                c2 = perf()
                s.update_from_output(out, t_end, dt)
                s.batch()   # brings the running requests' counters up to date for the streams
                c3 = perf()
                host.record_overhead(self.metrics, (c1 - c0) + (c3 - c2))
                self.telemetry.record(dt, util * dt, s.kv_used() / s.kv_capacity, len(s.running), s.policy.waiting)
                self._emit(decoding, prefilling, t_end)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sim engine loop fault: failing the requests it held and starting clean")
                host.rebuild_after_fault()

    def _emit(self, decoding, prefilling, now: float) -> None:
        jobs = self.host.jobs
        for r in (*prefilling, *decoding):
            job = jobs.get(r.rid)
            if job is None:
                continue
            new = r.generated - job.emitted
            if new > 0:
                texts = self._texts(job, job.emitted, new)
                if job.stop:
                    texts, hit = _cut_at_stop(job, texts)
                    if hit:
                        job.emit(texts)
                        self._finish(job, "stop", now)
                        continue
                job.emit(texts)
            if r.finished is not None:
                reason = "length" if r.generated >= job.max_tokens and (job.ignore_eos or job.natural > job.max_tokens) \
                    else "stop"
                del jobs[r.rid]
                job.answer(End(reason, job.prompt_tokens, r.generated, self.usage_source))

    def _finish(self, job: Job, reason: str, now: float) -> None:
        """A stop sequence ended the job before the engine's end: release it as completed, charged what it made."""
        self.host.scheduler.release(job.req, now, completed=True)
        del self.host.jobs[job.req.rid]
        job.answer(End(reason, job.prompt_tokens, job.req.generated, self.usage_source))


class _Host(SchedulerHost):
    def __init__(self, policy_name, profile, backend: SimBackend):
        super().__init__(policy_name, profile)
        self.backend = backend

    def now(self) -> float:
        b = self.backend
        return max(time.monotonic() - b._t0, 0.0) / b.scale


def _cut_at_stop(job: Job, texts: list[str]) -> tuple[list[str], bool]:
    """The texts up to the first stop sequence in the job's output so far (and whether one was hit)."""
    prev = job.text
    full = prev + "".join(texts)
    cut = min((i for i in (full.find(s, max(0, len(prev) - len(s) + 1)) for s in job.stop) if i >= 0), default=-1)
    if cut < 0:
        job.text = full
        return texts, False
    kept, used = [], len(prev)
    for tx in texts:
        if used + len(tx) > cut:
            part = tx[: cut - used]
            if part:
                kept.append(part)
            break
        kept.append(tx)
        used += len(tx)
    job.text = full[:cut]
    return kept, True
