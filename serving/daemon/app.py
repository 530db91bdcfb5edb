"""The daemon's ASGI application (Starlette) and its life: start-up, counters persisted, graceful shutdown.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /ready, GET /metrics,
POST /admin/reload, POST /admin/drain, GET /admin/counters. The key decides the client (auth.py); a request is
checked (size, JSON, parameters, model, context length, the client's concurrency and quota) before any work is
done, then handed to the backend, and answered exactly once: a JSON body, or an SSE stream (sse-starlette) that
ends with ``[DONE]`` or an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from host.telemetry import Combined, TelemetryError
from serving.daemon import api
from serving.daemon.api import ApiError
from serving.daemon.auth import KeyRing
from serving.daemon.backends import BackendUnavailable, make_backend
from serving.daemon.config import ConfigError, DaemonConfig, load_config
from serving.daemon.job import End, Failed, Job, Kind, Tokens
from serving.daemon.metrics import DaemonMetrics
from serving.daemon.state import Snapshot, StateStore, Usage
from serving.daemon.tokenizer import default_tokenizer

log = logging.getLogger(__name__)

# the daemon ends its own streams on shutdown (after letting them finish): sse-starlette must not cut them first
AppStatus.disable_automatic_graceful_drain()


class _Disconnected:
    """Put into a job's event queue when its client goes away."""


class Daemon:
    def __init__(self, cfg: DaemonConfig, config_path: str | Path | None = None):
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.metrics = DaemonMetrics()
        self._apply_clients(cfg)
        self.tokenizer = default_tokenizer()
        self.backend = make_backend(cfg.backend.kind, cfg, self.metrics)
        self.store = StateStore(cfg.state_path) if cfg.state_path else None
        self.usage: dict[str, Usage] = defaultdict(Usage)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.draining = False
        self.started = time.time()
        self._tasks: list[asyncio.Task] = []
        self._saved = 0
        self.telemetry = self._make_telemetry()
        self._telemetry_last: dict[str, list[dict]] = {}
        self.metrics.bind(self.state)
        self._restore()

    # configuration ----------------------------------------------------------------------------
    def _apply_clients(self, cfg: DaemonConfig) -> None:
        self.keys = KeyRing(cfg.clients, cfg.admin_keys_sha256)
        self.clients = {c.name: c for c in cfg.clients}

    def _make_telemetry(self) -> Combined | None:
        t = self.cfg.telemetry
        sources = []
        if t.nvml_gpus is not None:
            from host.telemetry.nvml import NvmlSource
            try:
                sources.append(NvmlSource(t.nvml_gpus or None))
            except TelemetryError as e:
                log.warning("telemetry: %s (continuing without NVML)", e)
        if t.nic_stats_json:
            from host.telemetry.nic import NicTraceSource
            sources.append(NicTraceSource(t.nic_stats_json, speed=t.nic_speed))
        sim = getattr(self.backend, "telemetry", None)
        if sim is not None:
            sources.append(sim)
        return Combined(sources) if sources else None

    def reload(self) -> dict:
        """Re-read the config file: keys, weights of new clients, limits and quotas. A weight change of a client
        the scheduler knows is refused (its counters are in units of the old weight): restart for that."""
        if self.config_path is None:
            raise ApiError(409, "the daemon was started without a config file: nothing to reload")
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            raise ApiError(400, f"reload failed: {e}") from None
        known = self.backend.scheduler.w_of
        for c in new.clients:
            if c.name in known and known[c.name] != c.weight:
                raise ApiError(409, f"reload refused: client {c.name!r} weight changed from {known[c.name]} to "
                               f"{c.weight}; restart the daemon to change a weight")
        for k in ("model", "policy", "backend", "max_model_len", "state_path"):
            if getattr(new, k) != getattr(self.cfg, k):
                raise ApiError(409, f"reload refused: {k} changed; restart the daemon to change it")
        self.cfg.clients, self.cfg.admin_keys_sha256 = new.clients, new.admin_keys_sha256
        for k in ("default_max_tokens", "max_body_bytes", "shutdown_grace_s", "persist_interval_s"):
            setattr(self.cfg, k, getattr(new, k))
        self._apply_clients(self.cfg)
        log.info("config reloaded: %d clients", len(new.clients))
        return {"reloaded": True, "clients": [c.name for c in new.clients]}

    # state --------------------------------------------------------------------------------------
    def _restore(self) -> None:
        if self.store is None:
            return
        snap = self.store.load()
        if snap is None:
            return
        try:
            self.backend.scheduler.policy.restore_counters(snap.counters)
        except ValueError as e:
            raise ConfigError(f"{self.store.path}: saved by policy {snap.policy!r}: {e}; move the file away or use "
                              f"that policy") from None
        for c, u in snap.usage.items():
            self.usage[c] = u
        log.info("restored fairness counters of %d clients from %s", len(snap.usage), self.store.path)

    def snapshot(self) -> Snapshot:
        self.backend.scheduler.settle()  # charges the scheduler delivers lazily are counted
        return Snapshot(self.cfg.policy, self.backend.scheduler.policy.counters(),
                        {c: Usage(u.requests, u.prompt_tokens, u.completion_tokens) for c, u in self.usage.items()},
                        time.time())

    async def persist(self) -> None:
        if self.store is not None:
            await asyncio.to_thread(self.store.save, self.snapshot())
            self._saved += 1

    def state(self) -> dict:
        """The daemon's live state (metrics gauges, /admin/counters)."""
        s = self.backend.scheduler
        s.settle()  # charges the scheduler delivers lazily are counted
        pol = s.policy
        prio = getattr(pol, "priority", None)
        clients = sorted(set(self.clients) | set(s.w_of))
        return {
            "queue": {c: len(pol.queues.get(c, ())) for c in clients},
            "running": {c: s.running_by_client.get(c, 0) for c in clients},
            "counters": pol.counters(),
            "hf": {c: prio(c) for c in clients if c in s.w_of} if prio else {},
            "telemetry": self._telemetry_last,
            "ready": self.is_ready(),
            **self.backend.status(),
        }

    def is_ready(self) -> bool:
        return not self.draining and self.backend.ready()

    # background work ------------------------------------------------------------------------------
    async def startup(self) -> None:
        await self.backend.start()
        self._tasks = [asyncio.create_task(self._persist_loop(), name="persist")]
        if self.telemetry is not None:
            self._tasks.append(asyncio.create_task(self._telemetry_loop(), name="telemetry"))
        log.info("serving %s with %s on the %s backend; prompt tokens counted by %s", self.cfg.model, self.cfg.policy,
                 self.cfg.backend.kind, self.tokenizer.name if self.backend.usage_source == "tokenizer" else
                 "the upstream (its usage)")

    async def shutdown(self) -> None:
        self.draining = True
        await self.drain(self.cfg.shutdown_grace_s)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.stop()
        await self.persist()
        if self.telemetry is not None:
            self.telemetry.close()
        log.info("stopped; counters saved")

    async def drain(self, grace_s: float) -> int:
        """Stop taking requests; let those in flight finish for grace_s, then fail the rest (503). Returns how
        many were failed."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while sum(self.in_flight.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        failed = 0
        if sum(self.in_flight.values()):
            failed = self.backend.fail_all(503, "the daemon is shutting down; retry on another server",
                                           retry_after=self.cfg.backend.retry_after_s)
            log.warning("shutdown: %d requests still running after %.1f s were failed", failed, grace_s)
            end = time.monotonic() + 5.0
            while sum(self.in_flight.values()) and time.monotonic() < end:
                await asyncio.sleep(0.02)   # the handlers send their answers
        return failed

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.persist_interval_s)
            try:
                await self.persist()
            except Exception:
                log.exception("persisting the counters failed (will retry)")

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.telemetry.interval_s)
            try:
                await asyncio.to_thread(self.telemetry.read)
            except TelemetryError as e:
                log.warning("telemetry: %s", e)
                continue
            self._telemetry_last = {
                name: [{"device": d.device, "gpu_util": d.gpu_util, "pcie_util": d.pcie_util, "kv_usage": d.kv_usage,
                        "pcie_tx_bps": d.pcie_tx_bps, "pcie_rx_bps": d.pcie_rx_bps,
                        "mem_used_bytes": d.mem_used_bytes} for d in smp.devices]
                for name, smp in self.telemetry.last.items()}
            for u in self.backend.status().get("upstreams", []):
                if u.get("telemetry"):
                    self._telemetry_last[f"upstream:{u['url']}"] = [u["telemetry"]]

    # HTTP -----------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            await self.startup()
            try:
                yield
            finally:
                await self.shutdown()

        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/admin/reload", self.admin_reload, methods=["POST"]),
            Route("/admin/drain", self.admin_drain, methods=["POST"]),
            Route("/admin/counters", self.admin_counters, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
            404: lambda r, e: JSONResponse(api.error_body(f"no route {r.url.path}", "invalid_request_error"), 404),
            405: lambda r, e: JSONResponse(api.error_body(f"method {r.method} not allowed on {r.url.path}",
                                                          "invalid_request_error"), 405),
            Exception: self._internal_error,
        })

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, exc.__class__.__name__, exc_info=exc)
        return JSONResponse(api.error_body("internal server error"), 500)

    def _auth(self, request: Request):
        client = self.keys.client(request.headers.get("authorization"))
        if client is None:
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer <key>)", "authentication_error",
                           code="invalid_api_key")
        return client

    def _admin(self, request: Request) -> None:
        if not self.keys.is_admin(request.headers.get("authorization")):
            raise ApiError(401, "admin endpoints need an admin key", "authentication_error", code="invalid_api_key")

    @staticmethod
    def _err(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, headers=e.headers)

    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return self._err(e)
        return JSONResponse({"object": "list", "data": [{"id": self.cfg.model, "object": "model",
                                                          "created": int(self.started), "owned_by": "equinox",
                                                          "max_model_len": self.cfg.max_model_len}]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.is_ready():
            return JSONResponse({"status": "ready"})
        why = "draining" if self.draining else "no engine can serve"
        return JSONResponse({"status": "not ready", "reason": why}, 503,
                            headers={"Retry-After": str(self.cfg.backend.retry_after_s)})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin_reload(self, request: Request) -> Response:
        try:
            self._admin(request)
            return JSONResponse(self.reload())
        except ApiError as e:
            return self._err(e)

    async def admin_drain(self, request: Request) -> Response:
        try:
            self._admin(request)
        except ApiError as e:
            return self._err(e)
        self.draining = True
        return JSONResponse({"draining": True, "in_flight": sum(self.in_flight.values())})

    async def admin_counters(self, request: Request) -> Response:
        try:
            self._admin(request)
        except ApiError as e:
            return self._err(e)
        st = self.state()
        ov = sorted(self.backend.host.overhead)
        q = (lambda p: ov[min(int(p * len(ov)), len(ov) - 1)] if ov else None)
        st["usage"] = {c: {"requests": u.requests, "prompt_tokens": u.prompt_tokens,
                           "completion_tokens": u.completion_tokens} for c, u in self.usage.items()}
        st["in_flight"] = dict(self.in_flight)
        st["scheduler_overhead_s"] = {"count": len(ov), "p50": q(0.5), "p99": q(0.99), "max": ov[-1] if ov else None}
        st["snapshots_saved"] = self._saved
        return JSONResponse(st)

    # generation -------------------------------------------------------------------------------------
    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise ApiError(413, f"request body of {int(cl)} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(part)
        return b"".join(chunks)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, Kind.COMPLETION)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, Kind.CHAT)

    async def generate(self, request: Request, kind: Kind) -> Response:
        endpoint = "chat" if kind is Kind.CHAT else "completions"
        client = None
        try:
            client = self._auth(request)
            self.metrics.requests.labels(client.name, endpoint).inc()
            if self.draining:
                raise ApiError(503, "the daemon is draining and takes no new requests", "server_error",
                               headers={"Retry-After": str(self.cfg.backend.retry_after_s)})
            try:
                raw = await self._read_body(request)
            except ClientDisconnect:
                self.metrics.responses.labels(client.name, "499").inc()
                return Response(status_code=499)
            job = self._make_job(client, api.validate(api.parse_json(raw), kind, self.cfg.model), kind, raw)
            if self.in_flight[client.name] >= client.max_concurrent:
                raise ApiError(429, f"too many concurrent requests for client {client.name!r} (limit "
                               f"{client.max_concurrent})", "rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"})
            used = self.usage[client.name].total_tokens
            if client.token_quota is not None and used + job.prompt_tokens > client.token_quota:
                raise ApiError(429, f"client {client.name!r} has used {used} of its quota of {client.token_quota} "
                               f"tokens", "insufficient_quota", code="insufficient_quota")
            try:
                self.backend.submit(job)
            except BackendUnavailable as e:
                raise ApiError(503, str(e), "server_error", headers={"Retry-After": str(e.retry_after)}) from None
        except ApiError as e:
            self.metrics.responses.labels(client.name if client else "unauthenticated", str(e.status)).inc()
            if client is None:
                self.metrics.requests.labels("unauthenticated", endpoint).inc()
            return self._err(e)
        self.in_flight[client.name] += 1
        if job.stream:
            return _JobStream(self, job, self._stream(job, request), ping=15, send_timeout=30)
        try:
            return await self._complete(job, request)
        finally:
            self.in_flight[client.name] -= 1

    def _make_job(self, client, p: api.Parsed, kind: Kind, raw: bytes) -> Job:
        if p.messages is not None:
            n_prompt = self.tokenizer.count_chat(p.messages)
        elif p.prompt_ids is not None:
            n_prompt = len(p.prompt_ids)
        else:
            n_prompt = self.tokenizer.count(p.text)
        default = self.cfg.default_max_tokens if kind is Kind.CHAT else 16
        max_tokens = p.max_tokens if p.max_tokens is not None else \
            max(1, min(default, self.cfg.max_model_len - n_prompt))
        limit = min(self.cfg.max_model_len, self.backend.kv_capacity_tokens())
        if n_prompt + max_tokens > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                           f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} in the "
                           f"completion). Please reduce the prompt or max_tokens.", param="prompt" if kind is
                           Kind.COMPLETION else "messages", code="context_length_exceeded")
        body = json.loads(raw)
        return Job(client.name, client.weight, kind, body, n_prompt, max_tokens, p.ignore_eos, p.stop, p.stream)

    def _account(self, job: Job, end: End) -> None:
        u = self.usage[job.client]
        u.requests += 1
        u.prompt_tokens += end.prompt_tokens
        u.completion_tokens += end.completion_tokens
        self.metrics.tokens.labels(job.client, "prompt").inc(end.prompt_tokens)
        self.metrics.tokens.labels(job.client, "completion").inc(end.completion_tokens)

    def _observe(self, job: Job, ev: Tokens, last: float | None) -> float:
        if last is None:
            self.metrics.ttft.labels(job.client).observe(ev.t - job.t_arrival)
        else:
            gap = (ev.t - last) / len(ev.texts)
            h = self.metrics.tbt.labels(job.client)
            for _ in ev.texts:
                h.observe(gap)
        return ev.t

    async def _complete(self, job: Job, request: Request) -> Response:
        watch = asyncio.create_task(self._watch_disconnect(request, job))
        texts: list[str] = []
        last = None
        try:
            while True:
                ev = await job.events.get()
                if isinstance(ev, Tokens):
                    texts.extend(ev.texts)
                    last = self._observe(job, ev, last)
                elif isinstance(ev, End):
                    self._account(job, ev)
                    self.metrics.responses.labels(job.client, "200").inc()
                    return JSONResponse(api.full_response(job, self.cfg.model, "".join(texts), ev))
                elif isinstance(ev, Failed):
                    self.metrics.responses.labels(job.client, str(ev.status)).inc()
                    headers = {"Retry-After": str(ev.retry_after)} if ev.retry_after else None
                    return JSONResponse(api.error_body(ev.message, ev.type), ev.status, headers=headers)
                else:   # the client went away: stop the work, charge what was produced
                    self.backend.cancel(job, "disconnect")
                    self.metrics.responses.labels(job.client, "499").inc()
                    return Response(status_code=499)
        except BaseException:   # the handler itself was cancelled (forced shutdown): the work stops with it
            if not job.done:
                self.backend.cancel(job, "disconnect")
                self.metrics.responses.labels(job.client, "499").inc()
            raise
        finally:
            watch.cancel()

    @staticmethod
    async def _watch_disconnect(request: Request, job: Job) -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                job.events.put_nowait(_Disconnected())
                return

    async def _stream(self, job: Job, request: Request):
        model = self.cfg.model
        inc = job.body.get("stream_options", {}) or {}
        include_usage = bool(inc.get("include_usage"))
        status = "200"
        last = None
        try:
            if job.kind is Kind.CHAT:
                yield json.dumps(api.chunk(job, model, "", role=True, with_usage=include_usage))
            while True:
                ev = await job.events.get()
                if isinstance(ev, Tokens):
                    last = self._observe(job, ev, last)
                    yield json.dumps(api.chunk(job, model, "".join(ev.texts), with_usage=include_usage))
                elif isinstance(ev, End):
                    self._account(job, ev)
                    yield json.dumps(api.chunk(job, model, None if job.kind is Kind.CHAT else "", ev.finish_reason,
                                               with_usage=include_usage))
                    if include_usage:
                        yield json.dumps(api.usage_chunk(job, model, ev))
                    yield "[DONE]"
                    return
                elif isinstance(ev, Failed):
                    status = f"{ev.status}-in-stream"
                    yield json.dumps(api.error_body(ev.message, ev.type))
                    return
        except asyncio.CancelledError:
            status = "499"
            raise
        finally:
            self._settle_stream(job, status)

    def _settle_stream(self, job: Job, status: str) -> None:
        """A stream's end, once whatever way it ended (its generator's end, or the response failing before the
        generator ever ran): the job is cancelled if it has no answer yet (the client is gone: charged what was
        produced), its slot is freed, its response counted."""
        if job.settled:
            return
        job.settled = True
        if not job.done:
            status = "499"
            self.backend.cancel(job, "disconnect")
        self.in_flight[job.client] -= 1
        self.metrics.responses.labels(job.client, status).inc()


class _JobStream(EventSourceResponse):
    """sse-starlette's response for one job's stream, settling the job however the response ends: a client gone
    before the first event means the generator never started, and its own ``finally`` would never run."""

    def __init__(self, daemon: Daemon, job: Job, events, **kw):
        super().__init__(events, **kw)
        self._daemon, self._job, self._events = daemon, job, events

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()          # runs the generator's own finally if it started
            self._daemon._settle_stream(self._job, "499")
