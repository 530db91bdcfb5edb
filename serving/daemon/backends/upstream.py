"""The ``upstream`` backend: OpenAI-compatible servers (vLLM, SGLang, another daemon) behind the daemon.

Users with many GPUs put the daemon in front of their replicas: requests wait in the daemon's scheduler, and
Equinox decides who goes next and how many run on each replica (``max_concurrent``; the replica's own queue stays
short, so its FCFS order cannot undo the fair one). The scheduler is the simulator's: ``schedule(now)`` admits
(its KV reservation of prompt + max_tokens against the replicas' ``kv_tokens``, its batch limit the free slots
of the healthy replicas), and each request's progress is reported as the replica streams it
(``Scheduler.record_progress``: tokens as they come, measured GPU-seconds from host telemetry each interval),
until ``Scheduler.release`` at its end.

Health: each replica's ``/health`` every ``health_interval_s``. Failover: an attempt that fails before any output
reached the client (connection refused or reset, timeout, 5xx) marks the replica down and is retried on another
healthy replica; with none left the client gets 503 with Retry-After. A stream that breaks after output was sent
cannot be replayed to the client: it ends with an error event. Token counts come from the upstream's ``usage``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import httpx
from httpx_sse import aconnect_sse

from host.telemetry import Combined, TelemetryError
from host.telemetry.sim import SimSource
from serving.daemon.backends import Backend, BackendUnavailable
from serving.daemon.backends.common import SchedulerHost, perf
from serving.daemon.job import End, Failed, Job, Kind
from serving.engine.profiles import get_profile
from serving.policies.base import EngineBehaviour

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """An attempt on a replica failed; ``retry`` says whether another replica may take the request."""

    def __init__(self, message: str, retry: bool, status: int = 502, body: dict | None = None):
        super().__init__(message)
        self.retry, self.status, self.body = retry, status, body


class Replica:
    def __init__(self, cfg, bcfg, model: str):
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.model = cfg.model or model
        self.healthy = True            # optimistic until the first check says otherwise
        self.in_flight: set[Job] = set()
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers,
            timeout=httpx.Timeout(bcfg.request_timeout_s, connect=bcfg.connect_timeout_s),
            limits=httpx.Limits(max_connections=cfg.max_concurrent + 4, max_keepalive_connections=cfg.max_concurrent))
        self.fallback = SimSource(f"model:{self.url}")
        sources = []
        for t in cfg.telemetry:
            try:
                if t == "vllm":
                    from host.telemetry.vllm import VllmMetricsSource
                    sources.append(VllmMetricsSource(self.url))
                elif t == "nvml":
                    from host.telemetry.nvml import NvmlSource
                    sources.append(NvmlSource(cfg.gpus or None))
            except TelemetryError as e:
                log.warning("replica %s: telemetry source %s unusable, using the model: %s", self.url, t, e)
        self.telemetry = Combined(sources + [self.fallback])
        self.n_gpus = max(len(cfg.gpus), 1)
        self.last_sample: dict | None = None


class UpstreamBackend(Backend):
    usage_source = "upstream"

    def __init__(self, cfg, metrics):
        self.cfg, self.bcfg, self.metrics = cfg, cfg.backend, metrics
        self.replicas = [Replica(u, self.bcfg, cfg.model) for u in self.bcfg.upstreams]
        slots = sum(r.cfg.max_concurrent for r in self.replicas)
        # the replicas batch on their own: the daemon's scheduler only admits (whole prompt + max_tokens reserved,
        # no token budget of its own, at most as many running as the healthy replicas have slots)
        self.behaviour = EngineBehaviour(chunked_prefill=True, token_budget=1 << 30, reserve="full", max_batch=slots)
        profile = dataclasses.replace(get_profile(self.bcfg.profile), name="upstream replicas",
                                      kv_capacity_tokens=sum(r.cfg.kv_tokens for r in self.replicas))
        self.host = _Host(cfg.policy, profile, self.behaviour)
        self._tasks: list[asyncio.Task] = []
        self._runs: dict[Job, asyncio.Task] = {}
        self._marks: dict[Job, int] = {}      # tokens each running job had produced at the last telemetry charge

    @property
    def scheduler(self):
        return self.host.scheduler

    async def start(self) -> None:
        await self._check_health()
        self._tasks = [asyncio.create_task(self._loop(), name="upstream-dispatch"),
                       asyncio.create_task(self._health_loop(), name="upstream-health"),
                       asyncio.create_task(self._telemetry_loop(), name="upstream-telemetry")]

    async def stop(self) -> None:
        """Cancel the loops (they run until cancelled) and the requests still running, close the clients."""
        for t in self._tasks + list(self._runs.values()):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._runs.values(), return_exceptions=True)
        for r in self.replicas:
            await r.client.aclose()
            r.telemetry.close()

    def ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def status(self) -> dict:
        return {"upstreams": [{"url": r.url, "healthy": r.healthy, "in_flight": len(r.in_flight),
                               "max_concurrent": r.cfg.max_concurrent, "telemetry": r.last_sample}
                              for r in self.replicas]}

    # jobs ----------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if not self.ready():
            raise BackendUnavailable("no upstream replica is healthy", self.bcfg.retry_after_s)
        self.host.enqueue(job, job.max_tokens)

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        task = self._runs.get(job)
        if task is not None:
            job.cancelled = True
            self.metrics.cancelled.labels(job.client, reason).inc()
            task.cancel()   # closes the upstream stream (the replica aborts the request); _run releases it
        else:
            self.host.request_cancel(job, reason)

    def fail_all(self, status: int, message: str, retry_after: int | None = None) -> int:
        n = 0
        for job, task in list(self._runs.items()):
            n += job.answer(Failed(status, message, retry_after=retry_after))
            task.cancel()
        return n + self.host.fail_all(status, message, retry_after)

    # dispatch ------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        host = self.host
        while True:
            try:
                host.wake.clear()
                host.apply_pending(self.metrics)
                s = host.scheduler
                self.behaviour.max_batch = max(1, sum(r.cfg.max_concurrent for r in self.replicas if r.healthy))
                if s.policy.waiting:
                    c0 = perf()
                    out = s.schedule(host.now())
                    host.record_overhead(self.metrics, perf() - c0)
                    for req in out.admitted:
                        job = host.jobs[req.rid]
                        self._runs[job] = asyncio.create_task(self._run(job), name=f"upstream-{job.id}")
                await host.wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upstream dispatch fault: failing the requests it held and starting clean")
                for task in self._runs.values():
                    task.cancel()
                host.rebuild_after_fault()
                host.scheduler.policy.behaviour = self.behaviour

    def _pick(self, tried: list) -> Replica | None:
        """The least loaded healthy replica not tried yet (a full one only when all are: the scheduler admits no
        more than the healthy replicas' slots, but a replica can go down while its requests run elsewhere)."""
        cands = [r for r in self.replicas if r.healthy and r not in tried]
        return min(cands, key=lambda r: len(r.in_flight) / r.cfg.max_concurrent, default=None)

    async def _run(self, job: Job) -> None:
        host, req = self.host, job.req
        tried: list[Replica] = []      # in the order tried (the 503 names them)
        outcome: End | Failed | None = None
        try:
            while outcome is None:
                rep = self._pick(tried)
                if rep is None:
                    outcome = Failed(503, "no upstream replica could serve the request"
                                     + (f" (tried {', '.join(r.url for r in tried)})" if tried else ""),
                                     retry_after=self.bcfg.retry_after_s)
                    break
                tried.append(rep)
                rep.in_flight.add(job)
                try:
                    outcome = await self._attempt(rep, job)
                except UpstreamError as e:
                    self.metrics.upstream_failures.labels(rep.url).inc()
                    if e.body is not None:   # the replica refused the request itself (4xx): pass it on
                        outcome = Failed(e.status, e.body.get("message", str(e)), e.body.get("type", "invalid_request_error"))
                    elif e.retry and job.emitted == 0:
                        log.warning("upstream %s failed (%s): failing over", rep.url, e)
                        rep.healthy = False
                        host.wake.set()
                    else:
                        outcome = Failed(502, f"upstream {rep.url} failed mid-response: {e}")
                finally:
                    rep.in_flight.discard(job)
        except asyncio.CancelledError:
            outcome = None   # cancelled by the client or shutdown: whoever cancelled answers (or nobody listens)
        finally:
            self._runs.pop(job, None)
            if req.rid in host.jobs:
                del host.jobs[req.rid]
                host.scheduler.release(req, host.now(), completed=isinstance(outcome, End))
            if outcome is not None:
                job.answer(outcome)
            host.wake.set()

    async def _attempt(self, rep: Replica, job: Job) -> End:
        body = dict(job.body)
        body.update(model=rep.model, stream=True, stream_options={"include_usage": True}, max_tokens=job.max_tokens)
        path = "/v1/chat/completions" if job.kind is Kind.CHAT else "/v1/completions"
        host, req = self.host, job.req
        finish, usage, counted = None, None, 0
        try:
            async with aconnect_sse(rep.client, "POST", path, json=body) as es:
                r = es.response
                if r.status_code >= 400:
                    text = (await r.aread()).decode("utf-8", "replace")
                    try:
                        err = json.loads(text).get("error")
                    except (ValueError, AttributeError):
                        err = None
                    if r.status_code >= 500 or r.status_code == 429:
                        raise UpstreamError(f"HTTP {r.status_code}", retry=True)
                    raise UpstreamError(f"HTTP {r.status_code}", retry=False, status=r.status_code,
                                        body=err if isinstance(err, dict) else {"message": text[:500]})
                async for ev in es.aiter_sse():
                    if ev.data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(ev.data)
                    except ValueError:
                        raise UpstreamError(f"not JSON in the event stream: {ev.data[:80]!r}", retry=True) from None
                    if "error" in chunk:
                        raise UpstreamError(f"error event: {chunk['error']}", retry=True)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for ch in chunk.get("choices") or []:
                        piece = ch.get("text") if job.kind is Kind.COMPLETION else (ch.get("delta") or {}).get("content")
                        if piece:
                            job.emit([piece])
                            counted += 1
                            host.scheduler.record_progress(req, 1, 0.0, host.now())
                        if ch.get("finish_reason"):
                            finish = ch["finish_reason"]
        except httpx.HTTPError as e:
            raise UpstreamError(f"{e.__class__.__name__}: {e}", retry=True) from None
        if finish is None:
            raise UpstreamError("the stream ended without a finish_reason", retry=True)
        if usage is None:
            raise UpstreamError("the stream carried no usage (stream_options.include_usage unsupported?)", retry=False,
                                status=502, body={"message": f"upstream {rep.url} sent no usage", "type": "server_error"})
        extra = int(usage.get("completion_tokens", counted)) - counted
        if extra > 0:   # the replica sent several tokens in one event: charge the rest now
            host.scheduler.record_progress(req, extra, 0.0, host.now())
        return End(finish, int(usage.get("prompt_tokens", job.prompt_tokens)),
                   int(usage.get("completion_tokens", counted)), self.usage_source)

    # health and telemetry ---------------------------------------------------------------------------
    async def _check_health(self) -> None:
        async def one(rep: Replica) -> None:
            try:
                r = await rep.client.get("/health", timeout=self.bcfg.connect_timeout_s)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok != rep.healthy:
                log.warning("upstream %s is %s", rep.url, "healthy again" if ok else "down")
                rep.healthy = ok
                self.host.wake.set()
        await asyncio.gather(*(one(r) for r in self.replicas))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.bcfg.health_interval_s)
            await self._check_health()

    async def _telemetry_loop(self) -> None:
        interval = self.cfg.telemetry.interval_s
        while True:
            await asyncio.sleep(interval)
            await self.charge_measured(interval)

    async def charge_measured(self, interval: float) -> None:
        """One telemetry interval: what each replica's GPUs (and links) were busy is charged to the requests running
        on it, in proportion to the tokens they produced in the interval (evenly when none produced any)."""
        for rep in self.replicas:
            rep.fallback.record(interval if rep.in_flight else 0.0, 0.0)
            # never fails: the model (rep.fallback) is the last of its sources and always measures
            smp = await asyncio.to_thread(rep.telemetry.read)
            d = smp.devices[0]
            rep.last_sample = {"device": rep.url, "gpu_util": d.gpu_util, "pcie_util": d.pcie_util,
                               "kv_usage": d.kv_usage, "mem_used_bytes": d.mem_used_bytes,
                               "pcie_tx_bps": d.pcie_tx_bps, "pcie_rx_bps": d.pcie_rx_bps,
                               "sources": dict(rep.telemetry.origin)}
            busy = max(d.gpu_util or 0.0, d.pcie_util or 0.0) * interval * rep.n_gpus
            jobs = list(rep.in_flight)   # each is running: _run leaves in_flight before it releases the request
            if not jobs or busy <= 0:
                continue
            made = {j: j.emitted - self._marks.get(j, 0) for j in jobs}
            total = sum(made.values())
            now = self.host.now()
            for j in jobs:
                share = busy * (made[j] / total if total else 1.0 / len(jobs))
                self.host.scheduler.record_progress(j.req, 0, share, now)
                self._marks[j] = j.emitted
        self._marks = {j: n for j, n in self._marks.items() if not j.done}


class _Host(SchedulerHost):
    def __init__(self, policy_name, profile, behaviour):
        super().__init__(policy_name, profile, behaviour)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0
