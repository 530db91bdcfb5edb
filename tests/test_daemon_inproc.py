"""The daemon in process: its ASGI app under Starlette's TestClient (the official openai package on top of it),
and the upstream backend in front of real daemons served by uvicorn on loopback ports in threads of this process.
Fast enough for mutation testing (make mutmut); test_daemon.py drives separate daemon processes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
import yaml
from starlette.testclient import TestClient

from daemon_helpers import ADMIN, KEYS, MODEL, config, free_port
from serving.daemon.app import Daemon
from serving.daemon.backends import BackendUnavailable
from serving.daemon.config import parse_config
from serving.daemon.job import End, Failed, Job, Kind
from test_daemon_units import scrape

AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


def cfg(tmp: Path, **over):
    over.setdefault("state_path", "")
    over.setdefault("backend", {"time_scale": 0.001})
    return parse_config(config(tmp, **over))


@pytest.fixture
def app(tmp_path):
    d = Daemon(cfg(tmp_path))
    with TestClient(d.app()) as c:
        yield d, c


def body(**kw):
    return {"model": MODEL, "prompt": "hello there", "max_tokens": 4, "ignore_eos": True, **kw}


# the app ---------------------------------------------------------------------------------------------------
def test_openai_package_in_process(app):
    d, c = app
    o = openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS["bob"], http_client=c, max_retries=0)
    r = o.completions.create(model=MODEL, prompt="Explain PCIe completions", max_tokens=6,
                             extra_body={"ignore_eos": True})
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].finish_reason) == (7, 6, "length")
    chunks = list(o.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=5, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].usage.completion_tokens == 5   # [INST] Hello [/INST]
    assert [m.id for m in o.models.list().data] == [MODEL]
    u = c.get("/admin/counters", headers={"Authorization": f"Bearer {ADMIN}"}).json()["usage"]
    assert u["bob"] == {"requests": 2, "prompt_tokens": 16, "completion_tokens": 11}


def test_body_limits_with_and_without_content_length(app):
    d, c = app
    limit = d.cfg.max_body_bytes
    pad = json.dumps(body())[:-1] + ', "user": "'
    exact = (pad + "u" * (limit - len(pad) - 2) + '"}').encode()
    assert len(exact) == limit
    assert c.post("/v1/completions", content=exact, headers=AUTH).status_code == 200

    def chunked(data, n=4096):
        for i in range(0, len(data), n):
            yield data[i:i + n]

    big = exact[:-2] + b'u"}'
    r = c.post("/v1/completions", content=chunked(big), headers=AUTH)       # no Content-Length: counted as read
    assert r.status_code == 413 and r.json()["error"]["message"] == f"request body is over the limit of {limit} bytes"
    r = c.post("/v1/completions", content=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["message"] == (
        f"request body of {limit + 1} bytes is over the limit of {limit} bytes")
    assert c.post("/v1/completions", content=chunked(exact), headers=AUTH).status_code == 200


@pytest.mark.parametrize("raw,message", [
    (b"[" * 30_000 + b"]" * 30_000, "the request body's JSON is nested too deeply"),
    (b'{"model": "equinox-sim-7b", "prompt": "a\\ud800b"}',
     "the request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff): not text"),
    (b'{"model": "equinox-sim-7b", "prompt": "a\\uDFFFb"}',
     "the request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff): not text"),
])
def test_hostile_json_is_a_400_not_a_crash(app, raw, message):
    d, c = app
    r = c.post("/v1/completions", content=raw, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["message"] == message
    ok = c.post("/v1/completions", content='{"model": "equinox-sim-7b", "prompt": "smile \\ud83d\\ude00", '
                                           '"max_tokens": 2}', headers=AUTH)
    assert ok.status_code == 200      # a surrogate pair is a real character


def test_drain_refuses_new_work_with_retry_after(app):
    d, c = app
    assert c.get("/ready").json() == {"status": "ready"}
    r = c.post("/admin/drain", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.json() == {"draining": True, "in_flight": 0}
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["reason"] == "draining" and r.headers["retry-after"] == "5"
    r = c.post("/v1/completions", json=body(), headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["message"] == "the daemon is draining and takes no new requests"


def test_reload_takes_keys_and_limits_and_refuses_what_needs_a_restart(tmp_path):
    from serving.daemon.auth import hash_key
    raw = config(tmp_path, state_path="", backend={"time_scale": 0.001})
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(raw))
    d = Daemon(parse_config(raw), path)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    dave = {"Authorization": "Bearer sk-dave"}
    with TestClient(d.app()) as c:
        assert c.post("/v1/completions", json=body(), headers=AUTH).status_code == 200
        assert c.post("/v1/completions", json=body(), headers=dave).status_code == 401
        raw2 = dict(raw, clients=[dict(raw["clients"][0], max_concurrent=1),
                                  {"name": "dave", "key_sha256": hash_key("sk-dave"), "weight": 3}],
                    default_max_tokens=7)
        path.write_text(yaml.safe_dump(raw2))
        r = c.post("/admin/reload", headers=admin)
        assert r.json() == {"reloaded": True, "clients": ["alice", "dave"]}
        assert c.post("/v1/completions", json=body(), headers=dave).status_code == 200
        assert c.post("/v1/completions", json=body(), headers={"Authorization": f"Bearer {KEYS['bob']}"}
                      ).status_code == 401                       # bob's key was removed
        assert d.clients["alice"].max_concurrent == 1 and d.cfg.default_max_tokens == 7
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                 "ignore_eos": True}, headers=dave)
        assert r.json()["usage"]["completion_tokens"] == 7
        for change, msg in (
                ({"clients": [dict(raw["clients"][0], weight=2)]},
                 "reload refused: client 'alice' weight changed from 1 to 2; restart the daemon to change a weight"),
                ({"policy": "vtc"}, "reload refused: policy changed; restart the daemon to change it"),
                ({"model": "other"}, "reload refused: model changed; restart the daemon to change it"),
                ({"max_model_len": 100}, "reload refused: max_model_len changed; restart the daemon to change it"),
                ({"backend": {"time_scale": 0.5}}, "reload refused: backend changed; restart the daemon to change it"),
                ({"state_path": "x.sqlite"}, "reload refused: state_path changed; restart the daemon to change it")):
            path.write_text(yaml.safe_dump({**raw2, **change}))
            r = c.post("/admin/reload", headers=admin)
            assert r.status_code == 409 and r.json()["error"]["message"] == msg
        assert d.clients["alice"].max_concurrent == 1      # nothing of a refused reload was taken
        path.write_text("clients: [\n")
        r = c.post("/admin/reload", headers=admin)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"reload failed: {path}:2: not valid")
    d2 = Daemon(parse_config(raw))
    with TestClient(d2.app()) as c:
        r = c.post("/admin/reload", headers=admin)
        assert r.status_code == 409 and "without a config file" in r.json()["error"]["message"]


def test_a_stream_whose_response_never_started_is_settled(app):
    """The client is gone before the first byte: the stream's generator never runs, the job is still cancelled,
    its slot freed and its response counted."""
    d, c = app
    raw = json.dumps(body(stream=True, max_tokens=3000)).encode()

    async def call():
        got = {"body": False}

        async def receive():
            if not got["body"]:
                got["body"] = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.sleep(3600)

        async def send(msg):
            raise OSError("connection reset by peer")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
                 "root_path": "", "headers": [(b"authorization", AUTH["Authorization"].encode()),
                                              (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}, "app": d.app()}
        from starlette.requests import Request
        resp = await d.generate(Request(scope, receive), Kind.COMPLETION)
        assert d.in_flight["alice"] == 1
        with pytest.raises(OSError):
            await resp(scope, receive, send)
        await asyncio.sleep(0.05)      # the engine applies the cancellation between iterations
        return resp._job

    job = c.portal.call(call)
    assert d.in_flight["alice"] == 0 and job.cancelled and job.settled
    s = scrape(d.metrics)
    assert s[("equinox_responses_total", (("client", "alice"), ("status", "499")))] == 1
    assert s[("equinox_cancelled_requests_total", (("client", "alice"), ("reason", "disconnect")))] == 1
    assert d.backend.scheduler.running_by_client.get("alice", 0) == 0


def test_startup_log_names_the_token_counter(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving.daemon.app")
    d = Daemon(cfg(tmp_path))
    with TestClient(d.app()):
        pass
    assert "prompt tokens counted by mistral-7b-v0.1 (sentencepiece, shipped in data/tokenizer)" in caplog.text


# upstream: real daemons on loopback, in threads ----------------------------------------------------------------
class Replica:
    """A sim daemon served by uvicorn in a thread of this process."""

    def __init__(self, tmp: Path, port: int | None = None, **over):
        over.setdefault("backend", {"time_scale": 0.002})
        over.setdefault("shutdown_grace_s", 0.5)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = Daemon(cfg(tmp, port=self.port, **over))
        self.server = uvicorn.Server(uvicorn.Config(self.daemon.app(), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on", loop="asyncio",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "replica did not start"
            time.sleep(0.01)

    def call(self, fn):
        """Run fn() on the replica's event loop."""
        done = threading.Event()
        self.server_loop().call_soon_threadsafe(lambda: (fn(), done.set()))
        assert done.wait(5)

    def server_loop(self):
        return self.daemon.backend._task.get_loop()      # the sim engine's task runs on the server's loop

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def replicas(tmp_path):
    made = []

    def make(**kw):
        r = Replica(tmp_path, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def front(tmp_path, urls, retry_after=7, default_max_tokens=256, **up):
    upstreams = [{"url": u, "api_key": KEYS["alice"], "max_concurrent": 4, **up} for u in urls]
    # short timeouts: a request that hangs fails the test in seconds (mutation testing runs broken variants)
    return Daemon(cfg(tmp_path, shutdown_grace_s=0.5, default_max_tokens=default_max_tokens, backend={
        "kind": "upstream", "health_interval_s": 0.1, "retry_after_s": retry_after, "connect_timeout_s": 1,
        "request_timeout_s": 5, "upstreams": upstreams}))


def failures(d, url):
    return scrape(d.metrics).get(("equinox_upstream_failures_total", (("upstream", url),)), 0)


def test_upstream_serves_with_the_replicas_model_key_and_usage(tmp_path, replicas):
    rep = replicas(model="replica-model")
    d = front(tmp_path, [rep.url], model="replica-model", default_max_tokens=6)
    with TestClient(d.app()) as c:
        o = openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS["bob"], http_client=c, max_retries=0)
        r = o.completions.create(model=MODEL, prompt="via upstream", max_tokens=5, extra_body={"ignore_eos": True})
        assert r.model == MODEL and r.usage.completion_tokens == 5 and r.usage.model_extra["token_counts"] == "upstream"
        assert r.usage.prompt_tokens == 4 and len(r.choices[0].text.split()) == 5
        ch = list(o.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "s"}], max_tokens=3,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
        assert ch[-1].usage.completion_tokens == 3 and ch[-2].choices[0].finish_reason == "length"
        assert "".join(x.choices[0].delta.content or "" for x in ch if x.choices).count(" ") == 2
        st = c.get("/admin/counters", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        u0 = st["upstreams"][0]
        assert (u0["url"], u0["healthy"], u0["in_flight"], u0["max_concurrent"]) == (rep.url, True, 0, 4)
        assert st["counters"]["rfc"]["bob"] < 1.0     # tokens carry no GPU time: only measured intervals do
        # bob was charged by the front's scheduler: prompt at admission plus each token as it came (VTC: 1 and 2)
        from serving.daemon.tokenizer import default_tokenizer
        p_chat = default_tokenizer().count_chat([{"role": "user", "content": "s"}])
        assert p_chat == 9     # [INST] s [/INST] and BOS
        assert st["counters"]["vtc"]["bob"] == pytest.approx(4 + 2 * 5 + p_chat + 2 * 3)
        assert st["usage"]["bob"] == {"requests": 2, "prompt_tokens": 4 + p_chat, "completion_tokens": 8}
        fin = d.backend.scheduler.finished      # completed requests: released as completed, at a time
        assert len(fin) == 2 and all(r.finished is not None and r.finished >= r.arrival for r in fin)
        # no max_tokens: the daemon's default goes to the replica (whose own default is 256)
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                 "ignore_eos": True}, headers=AUTH)
        assert r.json()["usage"]["completion_tokens"] == 6
    # the replica saw alice's key (the configured api_key), never bob's
    u = rep.daemon.usage
    assert u["alice"].requests == 3 and "bob" not in u


def test_upstream_failover_from_dead_and_draining_replicas(tmp_path, replicas):
    live, draining = replicas(), replicas()
    draining.daemon.draining = True        # answers 503 + Retry-After to generation requests, /health still 200
    dead = f"http://127.0.0.1:{free_port()}"
    d = front(tmp_path, [dead, draining.url, live.url])
    with TestClient(d.app()) as c:
        assert [r.healthy for r in d.backend.replicas] == [False, True, True]   # the first check found it down
        d.backend.replicas[0].healthy = True        # as if it had just died: the request finds out
        for _ in range(3):
            r = c.post("/v1/completions", json=body(), headers=AUTH)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert failures(d, dead) == 1 and failures(d, draining.url) >= 1 and failures(d, live.url) == 0
        assert live.daemon.usage["alice"].requests == 3 and draining.daemon.usage == {}
        m = c.get("/metrics").text
        assert f'equinox_upstream_up{{upstream="{dead}"}} 0.0' in m and f'equinox_upstream_up{{upstream="{live.url}"}} 1.0' in m


def test_every_replica_failing_gives_503_naming_them(tmp_path, replicas):
    a, b = replicas(), replicas()
    for r in (a, b):
        r.daemon.draining = True
    d = front(tmp_path, [a.url, b.url], retry_after=6)
    with TestClient(d.app()) as c:
        r = c.post("/v1/completions", json=body(), headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "6"
        assert r.json()["error"] == {"message": f"no upstream replica could serve the request (tried {a.url}, "
                                                f"{b.url})", "type": "server_error", "param": None, "code": None}
        assert d.backend.scheduler.running == {} and not d.backend._runs and d.backend.host.jobs == {}
        st = c.get("/admin/counters", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert st["usage"]["alice"]["requests"] == 0 and st["counters"]["vtc"]["alice"] > 0   # prompt charged at admission
        assert 0 < max(d.backend.host.overhead) < 0.5                    # CPU seconds of each decision


def test_upstream_4xx_is_passed_on_and_the_replica_stays_up(tmp_path, replicas):
    small = replicas(max_model_len=64)
    d = front(tmp_path, [small.url])
    with TestClient(d.app()) as c:
        r = c.post("/v1/completions", json=body(max_tokens=100), headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(
            "This model's maximum context length is 64 tokens.")
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert d.backend.replicas[0].healthy and failures(d, small.url) == 1
        assert c.post("/v1/completions", json=body(), headers=AUTH).status_code == 200
        assert d.backend.scheduler.running == {} and d.backend.scheduler.policy.waiting == 0


def test_no_replica_gives_503_with_retry_after_until_one_comes_back(tmp_path, replicas):
    port = free_port()
    d = front(tmp_path, [f"http://127.0.0.1:{port}"], retry_after=9)
    with TestClient(d.app()) as c:
        r = c.post("/v1/completions", json=body(), headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "9"
        assert r.json()["error"]["message"] == "no upstream replica is healthy"
        assert c.get("/ready").status_code == 503 and c.get("/ready").json()["reason"] == "no engine can serve"
        with pytest.raises(BackendUnavailable):
            d.backend.submit(Job("alice", 1.0, Kind.COMPLETION, {}, 3, 3))
        replicas(port=port)
        end = time.monotonic() + 5
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < end, "the health check never saw the replica come back"
            time.sleep(0.05)
        assert c.post("/v1/completions", json=body(), headers=AUTH).status_code == 200


def test_upstream_failure_after_output_ends_the_stream_with_an_error(tmp_path, replicas):
    rep = replicas(backend={"time_scale": 0.05})
    d = front(tmp_path, [rep.url])

    def fail_when_streaming():
        end = time.monotonic() + 10
        while not rep.daemon.backend.host.jobs or not any(j.emitted for j in rep.daemon.backend.host.jobs.values()):
            if time.monotonic() > end:
                return
            time.sleep(0.01)
        rep.call(lambda: rep.daemon.backend.fail_all(503, "replica fault"))

    with TestClient(d.app()) as c:
        t = threading.Thread(target=fail_when_streaming)
        t.start()
        r = c.post("/v1/completions", json=body(stream=True, max_tokens=2000), headers=AUTH)
        t.join()
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert events[0]["choices"][0]["text"] and "error" in events[-1]
        assert events[-1]["error"]["message"].startswith(f"upstream {rep.url} failed mid-response: error event")
        assert d.backend.replicas[0].healthy            # a fault after output is not failed over: no replay
        assert d.backend.scheduler.running == {} and not d.backend._runs
        assert scrape(d.metrics)[("equinox_responses_total", (("client", "alice"), ("status", "502-in-stream")))] == 1


def test_upstream_cancel_and_fail_all(tmp_path, replicas):
    rep = replicas(backend={"time_scale": 0.05})
    d = front(tmp_path, [rep.url])
    with TestClient(d.app()) as c:
        async def run():
            b = d.backend
            j1 = Job("alice", 1.0, Kind.COMPLETION, body(max_tokens=2000), 3, 2000, ignore_eos=True)
            j2 = Job("bob", 1.0, Kind.COMPLETION, body(max_tokens=2000), 3, 2000, ignore_eos=True)
            j3 = Job("bob", 1.0, Kind.COMPLETION, body(max_tokens=5), 3, 5, ignore_eos=True)
            for j in (j1, j2):
                b.submit(j)
            while j1.emitted < 3 or j2.emitted < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.45)                 # two telemetry intervals (0.2 s): measured time is charged
            assert j2.req.gpu_s > 0 and j1.req.gpu_s > 0
            b.cancel(j1, "disconnect")
            await asyncio.sleep(0.05)
            assert j1 not in b._runs and j1.req.rid not in b.host.jobs and not j1.done
            charged = b.scheduler.policy.counters()["vtc"]["alice"]
            assert 3 + 2 * 3 <= charged < 3 + 2 * 1000       # its prompt and what it produced, not 2000 tokens
            j4 = Job("bob", 1.0, Kind.COMPLETION, body(max_tokens=5), 3, 5, ignore_eos=True)
            j5 = Job("alice", 1.0, Kind.COMPLETION, body(max_tokens=2000), 3, 2000, ignore_eos=True)
            b.submit(j5)
            while j5.emitted < 1:
                await asyncio.sleep(0.01)
            b.submit(j4)                  # queued: the dispatch loop has not run since
            assert b.fail_all(503, "shutting down", retry_after=2) == 3
            await asyncio.sleep(0.05)
            for j in (j2, j4, j5):
                while not j.events.empty():
                    last = j.events.get_nowait()
                assert last == Failed(503, "shutting down", retry_after=2)
            assert b.scheduler.running == {} and not b._runs and b.host.jobs == {}
            b.submit(j3)          # a queued job (not yet admitted) is cancelled through the scheduler host
            b.cancel(j3, "disconnect")
            await asyncio.sleep(0.05)
            assert b.host.jobs == {} and b.scheduler.policy.waiting == 0 and not j3.done
            return j1

        c.portal.call(run)
        s = scrape(d.metrics)
        assert s[("equinox_cancelled_requests_total", (("client", "alice"), ("reason", "disconnect")))] == 1
        assert s[("equinox_cancelled_requests_total", (("client", "bob"), ("reason", "disconnect")))] == 1
    end = time.monotonic() + 5          # the replica saw its clients go away and stopped the work
    while rep.daemon.backend.host.jobs and time.monotonic() < end:
        time.sleep(0.02)
    assert rep.daemon.backend.host.jobs == {}
    assert scrape(rep.daemon.metrics)[("equinox_cancelled_requests_total",
                                       (("client", "alice"), ("reason", "disconnect")))] >= 2


def test_upstream_stop_sequence_usage_is_the_replicas(tmp_path, replicas):
    """With a stop sequence the replica counts the token that held it, which it never sent: the front charges
    and reports the replica's count, not the pieces it saw."""
    rep = replicas()
    direct = httpx.post(rep.url + "/v1/completions", json=body(max_tokens=40), headers=AUTH, timeout=10).json()
    words = direct["choices"][0]["text"].split(" ")
    stop = " " + words[6]
    ask = body(max_tokens=40, stop=[stop])
    want = httpx.post(rep.url + "/v1/completions", json=ask, headers=AUTH, timeout=10).json()
    assert want["choices"][0]["finish_reason"] == "stop"
    n_text = len(want["choices"][0]["text"].split(" "))
    assert want["usage"]["completion_tokens"] == n_text + 1            # the cut token is counted
    d = front(tmp_path, [rep.url])
    with TestClient(d.app()) as c:
        r = c.post("/v1/completions", json=ask, headers={"Authorization": f"Bearer {KEYS['bob']}"}).json()
        assert r["choices"][0]["text"] == want["choices"][0]["text"] and r["usage"] == want["usage"] | {
            "token_counts": "upstream"}
        vtc = c.get("/admin/counters", headers={"Authorization": f"Bearer {ADMIN}"}).json()["counters"]["vtc"]
        assert vtc["bob"] == pytest.approx(want["usage"]["prompt_tokens"] + 2 * want["usage"]["completion_tokens"])


def test_replicas_gone_between_admission_and_dispatch(tmp_path, replicas):
    rep = replicas()
    d = front(tmp_path, [rep.url])
    with TestClient(d.app()) as c:
        async def run():
            b = d.backend
            j = Job("alice", 1.0, Kind.COMPLETION, body(), 3, 4, ignore_eos=True)
            b.submit(j)                       # accepted while the replica was healthy
            b.replicas[0].healthy = False     # it went down before the dispatch loop ran
            await asyncio.sleep(0.05)
            ev = j.events.get_nowait()
            return ev, b.behaviour.max_batch

        ev, batch = c.portal.call(run)
        assert ev == Failed(503, "no upstream replica could serve the request", retry_after=7) and batch == 1


def test_upstream_admits_no_more_than_the_replicas_slots(tmp_path, replicas):
    rep = replicas(backend={"time_scale": 0.05})
    d = front(tmp_path, [rep.url], max_concurrent=2)
    with TestClient(d.app()) as c:
        async def run():
            b = d.backend
            jobs = [Job(w, 1.0, Kind.COMPLETION, body(max_tokens=3000), 3, 3000, ignore_eos=True)
                    for w in ("alice", "bob", "alice", "bob")]
            for j in jobs:
                b.submit(j)
            await asyncio.sleep(0.3)
            running, waiting = len(b.scheduler.running), b.scheduler.policy.waiting
            held = len(b.replicas[0].in_flight)
            b.fail_all(503, "done")
            await asyncio.sleep(0.05)
            return running, waiting, held

        assert c.portal.call(run) == (2, 2, 2)


def test_replica_setup(tmp_path):
    d = front(tmp_path, ["http://127.0.0.1:1/"], telemetry=["vllm"], gpus=[2, 5, 7], api_key="k")
    rep = d.backend.replicas[0]
    assert rep.url == "http://127.0.0.1:1" and rep.n_gpus == 3 and rep.model == MODEL
    assert [type(s).__name__ for s in rep.telemetry.sources] == ["VllmMetricsSource", "SimSource"]
    assert rep.telemetry.sources[0].url == "http://127.0.0.1:1/metrics" and rep.fallback.device == \
        "model:http://127.0.0.1:1"
    assert rep.client.headers["authorization"] == "Bearer k"
    none = front(tmp_path, ["http://127.0.0.1:1"], api_key=None).backend.replicas[0]
    assert "authorization" not in none.client.headers and none.n_gpus == 1
    assert [type(s).__name__ for s in none.telemetry.sources] == ["SimSource"]
    assert d.backend.scheduler.kv_capacity == 1_000_000 and d.backend.behaviour.chunked_prefill


def test_pick_takes_the_least_loaded_healthy_replica_not_tried(tmp_path):
    d = front(tmp_path, ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"])
    a, b, c3 = d.backend.replicas
    b.cfg.max_concurrent = 8
    a.in_flight.update({1, 2})          # 2/4 busy
    b.in_flight.update({3, 4, 5})       # 3/8 busy: the least loaded
    assert d.backend._pick([]) is c3
    c3.healthy = False
    assert d.backend._pick([]) is b
    assert d.backend._pick([b]) is a
    a.in_flight.update({6, 7})          # a is full: b still has room
    assert d.backend._pick([]) is b               # 4/4 against 3/8
    b.in_flight.update(range(10, 15))   # all full: the least loaded healthy one all the same
    assert d.backend._pick([]) is a                 # 4/4 and 8/8: a tie, the first in the config
    a.in_flight.add(99)
    assert d.backend._pick([]) is b                 # 5/4 against 8/8
    assert d.backend._pick([a, b]) is None        # c3 is down


def test_measured_busy_time_is_charged_by_tokens_produced(tmp_path):
    d = front(tmp_path, ["http://127.0.0.1:1", "http://127.0.0.1:2"], telemetry=["vllm"], gpus=[0, 1])
    b = d.backend
    clock = [50.0]
    idle, rep = b.replicas                       # the idle one first: it must not stop the others' charge
    for r in b.replicas:
        r.fallback.clock = lambda: clock[0]
        r.fallback._last = clock[0]
    jobs = [Job(c, w, Kind.COMPLETION, {}, 10, 100) for c, w in (("alice", 1.0), ("bob", 2.0), ("alice", 1.0))]
    for j in jobs:
        b.host.enqueue(j, 100)
    b.host.apply_pending(d.metrics)
    assert len(b.scheduler.schedule(b.host.now()).admitted) == 3
    rep.in_flight.update(jobs[:2])              # the third runs nowhere measured (not on a replica)
    jobs[0].emitted, jobs[1].emitted = 3, 1
    clock[0] += 2.0
    asyncio.run(b.charge_measured(2.0))
    # the model says the replica's 2 GPUs were busy the whole interval: 4 GPU-seconds, split 3:1 by tokens
    assert jobs[0].req.gpu_s == pytest.approx(3.0) and jobs[1].req.gpu_s == pytest.approx(1.0 / 2.0)   # weight 2
    assert jobs[2].req.gpu_s == 0.0 and [j.req.generated for j in jobs] == [0, 0, 0]
    assert rep.last_sample == {"device": rep.url, "gpu_util": 1.0, "pcie_util": None, "kv_usage": None,
                               "mem_used_bytes": None, "pcie_tx_bps": None, "pcie_rx_bps": None,
                               "sources": {"gpu_util": "sim"}}
    assert idle.last_sample["gpu_util"] == 0.0
    clock[0] += 2.0                              # nothing produced since: the busy time is split evenly
    asyncio.run(b.charge_measured(2.0))
    assert jobs[0].req.gpu_s == pytest.approx(5.0) and jobs[1].req.gpu_s == pytest.approx(0.5 + 1.0)
    clock[0] += 4.0                              # busy 2 s of a 4 s read: half utilised, 0.5 x 2 s x 2 GPUs
    jobs[0].emitted = 4
    asyncio.run(b.charge_measured(2.0))
    assert jobs[0].req.gpu_s == pytest.approx(7.0) and jobs[1].req.gpu_s == pytest.approx(1.5)
    clock[0] += 0.25                             # a short interval: 0.25 x 2 GPUs = 0.5 GPU-s, all to job 1
    jobs[1].emitted = 2
    asyncio.run(b.charge_measured(0.25))
    assert jobs[0].req.gpu_s == pytest.approx(7.0) and jobs[1].req.gpu_s == pytest.approx(1.5 + 0.25)
    jobs[1].done = True
    clock[0] += 2.0
    asyncio.run(b.charge_measured(2.0))
    assert jobs[1] not in b._marks and b._marks[jobs[0]] == 4
    assert [j.req.generated for j in jobs] == [0, 0, 0]   # measured time, never tokens
