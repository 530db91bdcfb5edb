"""The serving daemon over real HTTP: the official openai client, auth, bad input, limits, disconnects,
restart, graceful shutdown, upstream failover, and fairness between two clients (docs/daemon.md)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import openai
import pytest

from daemon_helpers import ADMIN, KEYS, MODEL, DaemonProc


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProc(tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()


def oa(d, who="alice", **kw):
    return openai.OpenAI(base_url=d.url + "/v1", api_key=KEYS.get(who, who), max_retries=0, **kw)


def post(d, path, body, key=KEYS["alice"], **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(d.url + path, content=data, headers={**headers, "Content-Type": "application/json"},
                      timeout=30, **kw)


# the openai package, unchanged -----------------------------------------------------------------------------
def test_openai_completion_and_chat(daemon):
    c = oa(daemon)
    r = c.completions.create(model=MODEL, prompt="Explain PCIe completions", max_tokens=7, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == 7   # 6 pieces + BOS (the shipped tokenizer)
    assert r.usage.model_extra["token_counts"] == "tokenizer"
    # the simulated text is one-token words: it re-counts to what usage says
    from serving.daemon.tokenizer import default_tokenizer
    assert len(default_tokenizer().encode(r.choices[0].text)) == 7
    ch = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert ch.choices[0].message.role == "assistant" and ch.usage.completion_tokens <= 5
    assert ch.usage.total_tokens == ch.usage.prompt_tokens + ch.usage.completion_tokens
    assert [m.id for m in c.models.list().data] == [MODEL]


def test_openai_streaming_with_usage(daemon):
    c = oa(daemon, "bob")
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream please"}],
                                            max_tokens=12, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len(text.split()) == 12
    comp = list(c.completions.create(model=MODEL, prompt="x y z", max_tokens=4, stream=True,
                                     extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in comp).count(" ") == 3 and comp[-1].choices[0].finish_reason == "length"


def test_stop_sequence_ends_the_output(daemon):
    r = oa(daemon).completions.create(model=MODEL, prompt="p", max_tokens=40, extra_body={"ignore_eos": True})
    words = r.choices[0].text.split()
    stop = " " + words[5]
    first = r.choices[0].text.find(stop)
    r2 = oa(daemon).completions.create(model=MODEL, prompt="p", max_tokens=40, stop=[stop],
                                       extra_body={"ignore_eos": True})
    assert r2.choices[0].finish_reason == "stop" and r2.choices[0].text == r.choices[0].text[:first]


# identity and admin --------------------------------------------------------------------------------------
def test_missing_and_wrong_keys_get_401_and_no_work(daemon):
    before = daemon.admin()
    with pytest.raises(openai.AuthenticationError):
        oa(daemon, "sk-wrong").completions.create(model=MODEL, prompt="x", max_tokens=2)
    r = post(daemon, "/v1/completions", {"model": MODEL, "prompt": "x"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(daemon.url + "/v1/completions", json={"model": MODEL, "prompt": "x"},
                   headers={"Authorization": "Basic sk-demo-alice"})
    assert r.status_code == 401
    after = daemon.admin()
    assert after["usage"] == before["usage"] and after["counters"] == before["counters"]


def test_client_identity_comes_from_the_key_not_the_request(daemon):
    before = daemon.admin()["usage"]
    r = httpx.post(daemon.url + "/v1/completions", json={"model": MODEL, "prompt": "spoof", "max_tokens": 3,
                                                         "user": "alice", "ignore_eos": True},
                   headers={"Authorization": f"Bearer {KEYS['bob']}", "X-Client": "alice", "OpenAI-User": "alice"})
    assert r.status_code == 200
    after = daemon.admin()["usage"]
    assert after["bob"]["requests"] == before.get("bob", {}).get("requests", 0) + 1
    assert after.get("alice") == before.get("alice")


def test_admin_endpoints_need_the_admin_key(daemon):
    for method, path in (("GET", "/admin/counters"), ("POST", "/admin/reload"), ("POST", "/admin/drain")):
        for key in (KEYS["alice"], None):
            r = httpx.request(method, daemon.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
            assert r.status_code == 401, (path, key)
    r = httpx.post(daemon.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["clients"] == ["alice", "bob", "carol"]
    c = daemon.admin()
    assert set(c["counters"]) == {"vtc", "rfc"} and "scheduler_overhead_s" in c


def test_keys_never_reach_the_log(daemon):
    post(daemon, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
    post(daemon, "/v1/completions", {"model": MODEL, "prompt": "x"}, key="sk-leak-check-123")
    log = daemon.read_log()
    assert "sk-demo-alice" not in log and "sk-leak-check-123" not in log


# bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,status,param,words", [
    (b'{"model": "equinox-sim-7b", "prompt": ', 400, None, "malformed JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    ({"model": "gpt-9", "prompt": "x"}, 404, "model", "gpt-9"),
    ({"prompt": "x"}, 400, "model", "model is required"),
    ({"model": MODEL, "prompt": "x", "temperature": 5}, 400, "temperature", "temperature"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "max_tokens"),
    ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n", "n must be 1"),
    ({"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "stream", "stream"),
    ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", "only"),
    ({"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "frobnicate", "unknown parameter"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt", "empty"),
    ({"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", "batched"),
    ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "prompt", "maximum context length"),
    ({"model": MODEL, "prompt": "word " * 5000, "max_tokens": 1}, 400, "prompt", "maximum context length"),
])
def test_bad_completion_requests(daemon, body, status, param, words):
    before = daemon.admin()["counters"]
    r = post(daemon, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["param"] == param and "\n" not in err["message"]
    assert daemon.admin()["counters"] == before     # no work was done


@pytest.mark.parametrize("messages,words", [
    ([], "non-empty"), ([{"role": "wizard", "content": "x"}], "role"), ([{"role": "user", "content": 5}], "content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text parts"), (["hi"], "object"),
])
def test_bad_chat_requests(daemon, messages, words):
    r = post(daemon, "/v1/chat/completions", {"model": MODEL, "messages": messages})
    assert r.status_code == 400 and words in r.json()["error"]["message"]


def test_oversized_body_gets_413(daemon):
    r = post(daemon, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x" * 70000}))
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]


def test_concurrency_limit_and_quota_get_429(daemon):
    # carol may run one request at a time: a long stream holds her slot
    with httpx.stream("POST", daemon.url + "/v1/completions", json={
            "model": MODEL, "prompt": "hold", "max_tokens": 3000, "stream": True, "ignore_eos": True},
            headers={"Authorization": f"Bearer {KEYS['carol']}"}, timeout=30) as s:
        lines = s.iter_lines()   # (a dropped iterator closes the response: keep it)
        next(lines)
        r = post(daemon, "/v1/completions", {"model": MODEL, "prompt": "x"}, key=KEYS["carol"])
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.headers["retry-after"] == "1"
        # other clients are not limited by carol's slot
        assert post(daemon, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}).status_code == 200
    time.sleep(0.3)
    # carol's quota is 5000 tokens: a large request passes it
    big = {"model": MODEL, "prompt": "word " * 2000, "max_tokens": 2000, "ignore_eos": True}
    assert post(daemon, "/v1/completions", big, key=KEYS["carol"]).status_code == 200
    r = post(daemon, "/v1/completions", big, key=KEYS["carol"])
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"


def test_unknown_route_and_method(daemon):
    assert httpx.get(daemon.url + "/v2/whatever").status_code == 404
    r = httpx.get(daemon.url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


# disconnects ----------------------------------------------------------------------------------------------
def test_disconnect_cancels_and_charges_only_what_was_produced(daemon):
    before = daemon.admin()
    n_read = 0
    with httpx.stream("POST", daemon.url + "/v1/completions", json={
            "model": MODEL, "prompt": "long one", "max_tokens": 3000, "stream": True, "ignore_eos": True},
            headers={"Authorization": f"Bearer {KEYS['bob']}"}, timeout=30) as s:
        for line in s.iter_lines():
            n_read += line.startswith("data:")
            if n_read >= 5:
                break
    time.sleep(0.5)
    after = daemon.admin()
    assert after["running"]["bob"] == 0 and after["queue"]["bob"] == 0
    charged = after["counters"]["vtc"]["bob"] - before["counters"]["vtc"].get("bob", 0.0)
    # prompt (3 tokens, w_p = 1) plus 2 per output token produced: far below the 3000 asked for
    assert 3 + 2 * 5 <= charged < 3 + 2 * 400
    m = httpx.get(daemon.url + "/metrics").text
    assert 'equinox_cancelled_requests_total{client="bob",reason="disconnect"}' in m


def test_metrics_exposition(daemon):
    oa(daemon).completions.create(model=MODEL, prompt="m", max_tokens=3, extra_body={"ignore_eos": True})
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(daemon.url + "/metrics").text)}
    for name in ("equinox_served_tokens", "equinox_responses", "equinox_fairness_counter", "equinox_hf_score",
                 "equinox_queue_depth", "equinox_ttft_seconds", "equinox_tbt_seconds", "equinox_utilization",
                 "equinox_scheduler_overhead_seconds", "equinox_ready"):
        assert name in fams, name
    served = {(s.labels["client"], s.labels["kind"]): s.value for s in fams["equinox_served_tokens"].samples
              if s.name.endswith("_total")}
    assert served[("alice", "completion")] >= 3


# restart, shutdown ---------------------------------------------------------------------------------------
def test_restart_keeps_counters(tmp_path):
    d = DaemonProc(tmp_path, "a")
    for who in ("alice", "bob", "bob"):
        oa(d, who).completions.create(model=MODEL, prompt="count me", max_tokens=6, extra_body={"ignore_eos": True})
    saved = d.admin()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    d.stop()
    d2 = DaemonProc(tmp_path, "b")
    try:
        again = d2.admin()
        assert again["counters"] == saved["counters"] and again["usage"] == saved["usage"]
        assert saved["counters"]["vtc"]["bob"] > saved["counters"]["vtc"]["alice"] > 0
    finally:
        d2.stop()


def test_graceful_shutdown_finishes_in_flight_and_refuses_new(tmp_path):
    d = DaemonProc(tmp_path, shutdown_grace_s=5)
    got: dict = {}

    def stream():
        c = oa(d)
        chunks = list(c.completions.create(model=MODEL, prompt="finish me", max_tokens=1500, stream=True,
                                           extra_body={"ignore_eos": True}))
        got["finish"] = chunks[-1].choices[0].finish_reason
        got["n"] = sum(1 for ch in chunks if ch.choices and ch.choices[0].text)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    r = post(d, "/v1/completions", {"model": MODEL, "prompt": "late"})
    assert r.status_code == 503 and "draining" in r.json()["error"]["message"]
    t.join(30)
    assert got == {"finish": "length", "n": 1500}
    assert d.proc.wait(20) == 0     # one signal: a clean exit once drained
    d.stop()


def test_shutdown_fails_what_cannot_finish_cleanly(tmp_path):
    d = DaemonProc(tmp_path, shutdown_grace_s=0.5)
    errors = []

    def stream():
        try:
            list(oa(d).completions.create(model=MODEL, prompt="never", max_tokens=3000, stream=True,
                                          extra_body={"ignore_eos": True}))
        except openai.APIError as e:
            errors.append(str(e))

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert errors and "shutting down" in errors[0]
    assert d.proc.wait(20) == 0
    d.stop()


# upstream ------------------------------------------------------------------------------------------------
def test_upstream_failover_and_503(tmp_path):
    ups = [DaemonProc(tmp_path, f"up{i}", state_path="", backend={"time_scale": 0.02}) for i in range(2)]
    front = DaemonProc(tmp_path, "front", backend={
        "kind": "upstream", "health_interval_s": 0.3, "retry_after_s": 7, "connect_timeout_s": 1,
        "upstreams": [{"url": u.url, "api_key": KEYS["alice"], "max_concurrent": 8, "telemetry": ["vllm"]}
                      for u in ups]})
    try:
        c = oa(front)
        r = c.completions.create(model=MODEL, prompt="via upstream", max_tokens=5, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5 and r.usage.model_extra["token_counts"] == "upstream"
        s = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "s"}], max_tokens=4,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True}))
        assert s[-1].usage.completion_tokens == 4
        ups[0].stop(signal.SIGKILL)
        for _ in range(6):   # every request is served by the survivor, the dead replica is failed over
            r = c.completions.create(model=MODEL, prompt="again", max_tokens=3, extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == 3
        st = front.admin()
        assert [u["healthy"] for u in st["upstreams"]] == [False, True]
        assert 'equinox_upstream_up{upstream="%s"} 0.0' % ups[0].url in httpx.get(front.url + "/metrics").text
        ups[1].stop(signal.SIGKILL)
        time.sleep(0.8)
        r = post(front, "/v1/completions", {"model": MODEL, "prompt": "nobody", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert httpx.get(front.url + "/ready").status_code == 503
    finally:
        for p in (front, *ups):
            p.stop()


# fairness over HTTP --------------------------------------------------------------------------------------
def _burst(tmp_path, policy, n_alice=600, n_bob=200):
    """Every request sent at once (alice 600, bob 200; a batch holds 256), so both clients are backlogged for as
    long as their requests wait, whatever the client process's speed (a closed loop needs the client to resubmit
    faster than the engine serves, which a slow machine cannot: see the notes of 2026-12-02). Returns per client
    the latency of each request, and the daemon's counters."""
    from daemon_helpers import config
    clients = [dict(c, max_concurrent=5000) for c in config(tmp_path)["clients"]]
    d = DaemonProc(tmp_path, policy, policy=policy, state_path="", clients=clients, backend={"time_scale": 0.2})

    async def run():
        import aiohttp
        out = {"alice": [], "bob": []}
        async with aiohttp.ClientSession(d.url, connector=aiohttp.TCPConnector(limit=0)) as c:
            t0 = time.perf_counter()

            async def one(who):
                async with c.post("/v1/completions", json={
                        "model": MODEL, "prompt": "word " * 20, "max_tokens": 40, "ignore_eos": True},
                        headers={"Authorization": f"Bearer {KEYS[who]}"}) as r:
                    assert r.status == 200, await r.text()
                    data = await r.json()
                assert data["usage"]["completion_tokens"] == 40
                out[who].append(time.perf_counter() - t0)

            await asyncio.gather(*([one("alice") for _ in range(n_alice)] + [one("bob") for _ in range(n_bob)]))
        return out

    try:
        got = asyncio.run(run())
        return got, d.admin()
    finally:
        d.stop()


@pytest.mark.xdist_group("heavy")   # not beside tests/test_faults.py's simulations (see there)
def test_fairness_two_clients_one_flooding(tmp_path):
    import statistics
    from serving.metrics import vtc_bound

    eq, st = _burst(tmp_path, "equinox")
    fc, st_fc = _burst(tmp_path, "fcfs")
    bound = vtc_bound(21, 100_000)
    # FCFS serves in arrival order: bob's requests finish spread over the whole run like alice's. Equinox orders
    # by counters: once the first batch (filled in arrival order) moves, bob, the client with less service, is
    # admitted first, so his requests finish far earlier than under FCFS and than alice's.
    # Times are counted from each run's first completion: before it the client is still sending (seconds on a
    # slow machine) and the first batch, filled in arrival order, runs; from there on the order is the policy's.
    def after_first(run):
        t0 = min(min(v) for v in run.values())
        return {who: statistics.median([t - t0 for t in v]) for who, v in run.items()}

    e, f = after_first(eq), after_first(fc)
    assert e["bob"] < 0.6 * f["bob"], (e, f)
    assert e["bob"] < 0.6 * e["alice"], (e, f)
    assert f["bob"] > 0.7 * f["alice"], (e, f)
    gap = abs(st["counters"]["vtc"]["alice"] - st["counters"]["vtc"]["bob"])
    assert gap < bound
