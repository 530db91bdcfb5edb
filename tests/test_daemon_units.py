"""The daemon's logic modules called directly, in process: keys (auth), configuration (config), request validation
and response shapes (api), the SQLite state file (state), the shipped tokenizer, the metrics exposition, and the
scheduler host both backends share (backends/common). Fast enough for mutation testing (make mutmut); the
real-process tests in test_daemon.py drive the same code over HTTP."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.daemon.api import ApiError, chunk, error_body, full_response, parse_json, usage, usage_chunk, validate
from serving.daemon.auth import KeyRing, bearer, hash_key
from serving.daemon.config import (BackendConfig, ClientConfig, ConfigError, DaemonConfig, TelemetryConfig,
                                   UpstreamConfig, load_config, parse_config)
from serving.daemon.job import End, Failed, Job, Kind, Tokens
from serving.daemon.state import SCHEMA_VERSION, Snapshot, StateError, StateStore, Usage

H_ALICE = "32a642c5fd761670c7f9989b70138c93c56ea519529eb544d46b91a8e59f3075"   # sk-demo-alice (examples/serve.yaml)
H_BOB = "ca5de30b0acbd9ce4fd5d1721830a77e6b4b8cbd3123e335f0bb46786758ff35"     # sk-demo-bob
H_ADMIN = "a1304128f87ba7aa357d7fe938db628cccb9ad9465ba832773a604aed2cfd54e"   # sk-demo-admin
H_EMPTY = hashlib.sha256(b"").hexdigest()                                      # the hash of no key at all
MODEL = "equinox-sim-7b"


# auth ------------------------------------------------------------------------------------------------------
def test_hash_key_is_the_configs_hex_sha256():
    assert hash_key("sk-demo-alice") == H_ALICE and hash_key("sk-demo-admin") == H_ADMIN
    assert hash_key("ключ") == "%s" % hashlib.sha256("ключ".encode("utf-8")).hexdigest()


@pytest.mark.parametrize("header,token", [
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Bearer    ", None), ("Basic sk-a", None),
    ("Bearer sk-a", "sk-a"), ("bearer sk-a", "sk-a"), ("BEARER sk-a", "sk-a"), ("Bearer  sk-a  ", "sk-a"),
    ("Bearer a b", "a b"), ("Bearersk-a", None),
])
def test_bearer_token(header, token):
    assert bearer(header) == token


def ring(admins=(H_ADMIN,)):
    clients = [ClientConfig("alice", H_ALICE, weight=2), ClientConfig("bob", H_BOB), ClientConfig("nokey", H_EMPTY)]
    return KeyRing(clients, list(admins))


def test_keyring_maps_each_key_to_its_client_only():
    r = ring()
    assert r.client("Bearer sk-demo-alice").name == "alice"
    assert r.client("Bearer sk-demo-bob").name == "bob"
    assert r.client("Bearer sk-demo-bobx") is None and r.client("Bearer sk-demo-admin") is None
    # a client whose hash is that of the empty string is never reached without a key
    assert r.client(None) is None and r.client("") is None and r.client("Bearer ") is None
    assert r.client("Basic sk-demo-alice") is None


def test_admin_keys_every_one_counts_and_none_without_a_key():
    r = ring(admins=(H_ADMIN, H_BOB.replace("c", "d", 1)))
    assert r.is_admin("Bearer sk-demo-admin")           # the first of two admin hashes
    r2 = ring(admins=(H_BOB.replace("c", "d", 1), H_ADMIN))
    assert r2.is_admin("Bearer sk-demo-admin")          # the last of two
    assert not r.is_admin("Bearer sk-demo-alice") and not r.is_admin(None) and not r.is_admin("Bearer x")
    assert not ring(admins=(H_EMPTY,)).is_admin(None) and not ring(admins=(H_EMPTY,)).is_admin("")
    assert not ring(admins=()).is_admin("Bearer sk-demo-admin")


# config ----------------------------------------------------------------------------------------------------
def base(**over) -> dict:
    d = {"clients": [{"name": "alice", "key_sha256": H_ALICE}]}
    d.update(over)
    return d


def client(**kw) -> dict:
    return {"clients": [{"name": "alice", "key_sha256": H_ALICE, **kw}]}


def ups(**kw) -> dict:
    return base(backend={"kind": "upstream", "upstreams": [{"url": "http://127.0.0.1:9", **kw}]})


@pytest.mark.parametrize("data,message", [
    ([], "top level: expected a mapping, got list"),
    ({}, "clients: at least one client is needed"),
    (base(portt=1), "portt: unknown setting (known: host, port, model, max_model_len, default_max_tokens, policy, "
                    "clients, admin_keys_sha256, backend, telemetry, state_path, persist_interval_s, max_body_bytes, "
                    "shutdown_grace_s, log_level)"),
    ({"clients": {"name": "a"}}, "clients: expected a list, got dict"),
    ({"clients": ["alice"]}, "clients[0]: expected a mapping, got str"),
    (client(name="a b"), "clients[0].name must be 1-64 letters, digits or _.@-, got 'a b'"),
    (client(name="a" * 65), "clients[0].name must be 1-64 letters, digits or _.@-, got '%s'" % ("a" * 65)),
    (client(name=""), "clients[0].name must be 1-64 letters, digits or _.@-, got ''"),
    (client(name=7), "clients[0].name must be 1-64 letters, digits or _.@-, got 7"),
    (client(key_sha256=H_ALICE.upper()), "clients[0].key_sha256 must be 64 lowercase hex digits "
                                         f"(python -m serving hash-key KEY), got '{H_ALICE.upper()}'"),
    (client(key_sha256=5), "clients[0].key_sha256 must be 64 lowercase hex digits (python -m serving hash-key KEY), "
                           "got 5"),
    (client(colour=1), "clients[0].colour: unknown setting (known: name, key_sha256, weight, max_concurrent, "
                       "token_quota)"),
    (client(weight=0), "clients[0].weight must be a positive number, got 0"),
    (client(weight=None), "clients[0].weight must be a positive number, got None"),
    (client(weight=-1.5), "clients[0].weight must be a positive number, got -1.5"),
    (client(weight=True), "clients[0].weight must be a positive number, got True"),
    (client(weight="2"), "clients[0].weight must be a positive number, got '2'"),
    (client(weight=float("inf")), "clients[0].weight must be a positive number, got inf"),
    (client(weight=float("nan")), "clients[0].weight must be a positive number, got nan"),
    (client(max_concurrent=0), "clients[0].max_concurrent must be a positive integer, got 0"),
    (client(max_concurrent=2.0), "clients[0].max_concurrent must be a positive integer, got 2.0"),
    (client(token_quota=0), "clients[0].token_quota must be a positive integer, got 0"),
    ({"clients": [{"name": "a", "key_sha256": H_ALICE}, {"name": "a", "key_sha256": H_BOB}]},
     "clients[1].name: 'a' appears twice"),
    ({"clients": [{"name": "a", "key_sha256": H_ALICE}, {"name": "b", "key_sha256": H_ALICE}]},
     "clients[1].key_sha256: two clients share one key"),
    (base(admin_keys_sha256=["xyz"]), "admin_keys_sha256[0] must be 64 lowercase hex digits, got 'xyz'"),
    (base(admin_keys_sha256=[H_ADMIN, 3]), "admin_keys_sha256[1] must be 64 lowercase hex digits, got 3"),
    (base(admin_keys_sha256=H_ADMIN), f"admin_keys_sha256 must be a list of hashes, got '{H_ADMIN}'"),
    (base(admin_keys_sha256=[H_ALICE]), "admin_keys_sha256[0]: an admin key may not also be a client's key"),
    (base(port=0), "port must be a positive integer, got 0"),
    (base(port=65536), "port must be at most 65535, got 65536"),
    (base(port="80"), "port must be a positive integer, got '80'"),
    (base(host=""), "host must be a non-empty address, got ''"),
    (base(host=1), "host must be a non-empty address, got 1"),
    (base(max_model_len=0), "max_model_len must be a positive integer, got 0"),
    (base(default_max_tokens=-1), "default_max_tokens must be a positive integer, got -1"),
    (base(max_body_bytes=1.5), "max_body_bytes must be a positive integer, got 1.5"),
    (base(persist_interval_s=0), "persist_interval_s must be a positive number, got 0"),
    (base(shutdown_grace_s=-1), "shutdown_grace_s must be a positive number, got -1"),
    (base(model=""), "model must be a non-empty name, got ''"),
    (base(model="  "), "model must be a non-empty name, got '  '"),
    (base(model=3), "model must be a non-empty name, got 3"),
    (base(policy="lottery"), "policy: unknown policy: 'lottery' (known: fcfs, vtc, vtc-pred, vtc-oracle, lcf, rpm, equinox)"),
    (base(log_level="loud"), "log_level must be critical, error, warning, info or debug, got 'loud'"),
    (base(state_path=None), "state_path must be a file path or \"\" (not persisted), got None"),
    (base(backend={"kind": "gpu"}), "backend.kind: unknown backend: 'gpu' (known: sim, upstream)"),
    (base(backend=[]), "backend: expected a mapping, got list"),
    (base(backend={"profile": "h100"}), "backend.profile: unknown profile: 'h100' (known: a100-llama2-7b, "
                                        "a10g-llama-7b)"),
    (base(backend={"time_scale": 0}), "backend.time_scale must be a positive number, got 0"),
    (base(backend={"mean_output_tokens": 0}), "backend.mean_output_tokens must be a positive integer, got 0"),
    (base(backend={"seed": 1.5}), "backend.seed must be an integer, got 1.5"),
    (base(backend={"seed": False}), "backend.seed must be an integer, got False"),
    (base(backend={"health_interval_s": 0}), "backend.health_interval_s must be a positive number, got 0"),
    (base(backend={"request_timeout_s": -1}), "backend.request_timeout_s must be a positive number, got -1"),
    (base(backend={"connect_timeout_s": 0}), "backend.connect_timeout_s must be a positive number, got 0"),
    (base(backend={"retry_after_s": 1.5}), "backend.retry_after_s must be a positive integer, got 1.5"),
    (base(backend={"kind": "upstream"}), "backend.upstreams: the upstream backend needs at least one replica"),
    (base(backend={"upstreams": 1}), "backend.upstreams: expected a list, got int"),
    (ups(url="ftp://x"), "backend.upstreams[0].url must be http(s)://host[:port], got 'ftp://x'"),
    (ups(url="http://"), "backend.upstreams[0].url must be http(s)://host[:port], got 'http://'"),
    (ups(max_concurrent=0), "backend.upstreams[0].max_concurrent must be a positive integer, got 0"),
    (ups(kv_tokens=0), "backend.upstreams[0].kv_tokens must be a positive integer, got 0"),
    (ups(telemetry=["dcgm"]), "backend.upstreams[0].telemetry must list 'vllm' and/or 'nvml', got 'dcgm'"),
    (ups(telemetry="vllm"), "backend.upstreams[0].telemetry must be a list, got 'vllm'"),
    (ups(gpus=[0, -1]), "backend.upstreams[0].gpus must be a list of GPU indices (integers >= 0), got [0, -1]"),
    (ups(gpus="0"), "backend.upstreams[0].gpus must be a list of GPU indices (integers >= 0), got '0'"),
    (ups(gpus=[True]), "backend.upstreams[0].gpus must be a list of GPU indices (integers >= 0), got [True]"),
    (ups(model=""), "backend.upstreams[0].model must be a non-empty name or absent, got ''"),
    (ups(api_key=5), "backend.upstreams[0].api_key must be a string or absent, got 5"),
    (base(telemetry={"interval_s": 0}), "telemetry.interval_s must be a positive number, got 0"),
    (base(telemetry={"nic_speed": -1}), "telemetry.nic_speed must be a positive number, got -1"),
    (base(telemetry={"nvml_gpus": [-1]}), "telemetry.nvml_gpus must be a list of GPU indices (integers >= 0) or "
                                          "absent, got [-1]"),
    (base(telemetry={"nic_stats_json": 3}), "telemetry.nic_stats_json must be a file path or absent, got 3"),
    (base(telemetry={"gpus": [0]}), "telemetry.gpus: unknown setting (known: interval_s, nvml_gpus, "
                                    "nic_stats_json, nic_speed)"),
])
def test_bad_config_one_line_naming_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "c.yaml")
    assert str(e.value) == f"c.yaml: {message}"


@pytest.mark.parametrize("level", ["critical", "error", "warning", "info", "debug"])
def test_log_levels(level):
    assert parse_config(base(log_level=level)).log_level == level


def test_default_source_name():
    with pytest.raises(ConfigError) as e:
        parse_config({})
    assert str(e.value) == "<config>: clients: at least one client is needed"


def test_good_configs_keep_what_they_say():
    cfg = parse_config({
        "host": "0.0.0.0", "port": 65535, "model": "m", "max_model_len": 1, "default_max_tokens": 1, "policy": "vtc",
        "clients": [{"name": "a.b@c_d-1", "key_sha256": H_ALICE, "weight": 0.5, "max_concurrent": 1, "token_quota": 1},
                    {"name": "b" * 64, "key_sha256": H_BOB}],
        "admin_keys_sha256": [H_ADMIN], "state_path": "", "persist_interval_s": 0.1, "max_body_bytes": 1,
        "shutdown_grace_s": 0.1, "log_level": "debug",
        "backend": {"kind": "upstream", "time_scale": 0.01, "seed": -3, "retry_after_s": 1,
                    "upstreams": [{"url": "https://h:1/", "model": "x", "api_key": "k", "max_concurrent": 1,
                                   "kv_tokens": 1, "telemetry": ["vllm", "nvml"], "gpus": [0, 3]}]},
        "telemetry": {"interval_s": 0.5, "nvml_gpus": [], "nic_stats_json": "s.json", "nic_speed": 2}})
    assert cfg.port == 65535 and cfg.clients[0].weight == 0.5 and cfg.clients[0].token_quota == 1
    assert cfg.clients[1].token_quota is None and cfg.clients[1].max_concurrent == 64
    u = cfg.backend.upstreams[0]
    assert isinstance(u, UpstreamConfig) and u.telemetry == ["vllm", "nvml"] and u.gpus == [0, 3]
    assert isinstance(cfg.backend, BackendConfig) and cfg.backend.seed == -3
    assert isinstance(cfg.telemetry, TelemetryConfig) and cfg.telemetry.nvml_gpus == []
    d = parse_config(base())
    assert (d.host, d.port, d.model, d.policy, d.backend.kind, d.state_path) == (
        "127.0.0.1", 8000, "equinox-sim-7b", "equinox", "sim", "out/serve/state.sqlite")
    assert isinstance(d, DaemonConfig) and d.telemetry.nvml_gpus is None and d.admin_keys_sha256 == []


def test_config_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(f"clients:\n  - name: a\n    key_sha256: {H_ALICE}\n")
    assert load_config(y).clients[0].name == "a"
    yml = tmp_path / "c.yml"
    yml.write_text(y.read_text())
    assert load_config(yml).clients[0].name == "a"
    t = tmp_path / "c.toml"
    t.write_text(f'[[clients]]\nname = "a"\nkey_sha256 = "{H_ALICE}"\n')
    assert load_config(t).clients[0].key_sha256 == H_ALICE
    cases = [
        ("missing.yaml", None, "missing.yaml: no such config file"),
        ("e.yaml", "", "e.yaml: clients: at least one client is needed"),
        ("bad.yaml", "clients: [\n", "bad.yaml:2: not valid YAML (expected the node content, but found "
                                     "'<stream end>')"),
        ("tab.yaml", "a: b: c\n", "tab.yaml:1: not valid YAML (mapping values are not allowed here)"),
        ("bad.toml", "clients = [\n", None),
        ("ctl.yaml", "a: \x07\n", "ctl.yaml: not valid YAML (unacceptable character #x0007: special characters "
                                  "are not allowed)"),
        ("c.json", "{}", "c.json: config files are .yaml, .yml or .toml, not '.json'"),
        ("noext", "x", "noext: config files are .yaml, .yml or .toml, not 'no suffix'"),
    ]
    for name, text, msg in cases:
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(p)
        if msg is None:
            assert str(e.value).startswith(f"{p}: not valid TOML (") and "\n" not in str(e.value)
        else:
            assert str(e.value) == f"{tmp_path}/{msg}"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model: caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        load_config(latin)
    assert str(e.value) == f"{latin}: not UTF-8 text (byte 10)"
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(ConfigError) as e:
        load_config(d)
    assert str(e.value) == f"{d}: cannot read: Is a directory"


# api: validation ---------------------------------------------------------------------------------------------
def v(body, kind=Kind.COMPLETION):
    return validate(body, kind, MODEL)


def c(**kw):
    return {"model": MODEL, "prompt": "x", **kw}


def ch(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **kw}


def test_parse_json():
    assert parse_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ApiError) as e:
        parse_json(b'{"a": ')
    assert (e.value.status, e.value.message) == (400, "malformed JSON in the request body: Expecting value at line 1 "
                                                      "column 7")
    with pytest.raises(ApiError) as e:
        parse_json(b"\xff\xfe{")
    assert (e.value.status, e.value.message) == (400, "the request body is not UTF-8 text")
    for raw, name in ((b"[1]", "list"), (b'"s"', "str"), (b"3", "int"), (b"null", "NoneType")):
        with pytest.raises(ApiError) as e:
            parse_json(raw)
        assert (e.value.status, e.value.message) == (400, f"the request body must be a JSON object, got {name}")


@pytest.mark.parametrize("body,kind,status,param,message", [
    (c(frob=1), Kind.COMPLETION, 400, "frob", "unknown parameter: 'frob'"),
    (c(messages=[]), Kind.COMPLETION, 400, "messages", "unknown parameter: 'messages'"),
    (ch(prompt="x"), Kind.CHAT, 400, "prompt", "unknown parameter: 'prompt'"),
    ({"prompt": "x"}, Kind.COMPLETION, 400, "model", "model is required (a string)"),
    (c(model=""), Kind.COMPLETION, 400, "model", "model is required (a string)"),
    (c(model=5), Kind.COMPLETION, 400, "model", "model is required (a string)"),
    (c(model="gpt-9"), Kind.COMPLETION, 404, "model", f"The model `gpt-9` does not exist (this server serves `{MODEL}`)"),
    (c(stream="yes"), Kind.COMPLETION, 400, "stream", "stream must be true or false, got 'yes'"),
    (c(stream=1), Kind.COMPLETION, 400, "stream", "stream must be true or false, got 1"),
    (c(stream_options={"include_usage": True}), Kind.COMPLETION, 400, "stream_options",
     "stream_options is only allowed when stream is true"),
    (c(stream=True, stream_options=[]), Kind.COMPLETION, 400, "stream_options",
     "stream_options must be an object with include_usage, got []"),
    (c(stream=True, stream_options={"x": 1}), Kind.COMPLETION, 400, "stream_options",
     "stream_options must be an object with include_usage, got {'x': 1}"),
    (c(stream=True, stream_options={"include_usage": "y"}), Kind.COMPLETION, 400, "stream_options",
     "stream_options.include_usage must be true or false, got 'y'"),
    (c(n=2), Kind.COMPLETION, 400, "n", "n must be 1 (one choice per request), got 2"),
    (c(n=True), Kind.COMPLETION, 400, "n", "n must be 1 (one choice per request), got True"),
    (c(best_of=3), Kind.COMPLETION, 400, "best_of", "best_of must be 1 (one choice per request), got 3"),
    (c(temperature=2.01), Kind.COMPLETION, 400, "temperature", "temperature must be a number in [0, 2], got 2.01"),
    (c(temperature=-0.01), Kind.COMPLETION, 400, "temperature", "temperature must be a number in [0, 2], got -0.01"),
    (c(temperature="1"), Kind.COMPLETION, 400, "temperature", "temperature must be a number in [0, 2], got '1'"),
    (c(temperature=True), Kind.COMPLETION, 400, "temperature", "temperature must be a number in [0, 2], got True"),
    (c(temperature=float("nan")), Kind.COMPLETION, 400, "temperature",
     "temperature must be a number in [0, 2], got nan"),
    (c(top_p=0), Kind.COMPLETION, 400, "top_p", "top_p must be a number in (0, 1], got 0"),
    (c(top_p=1.5), Kind.COMPLETION, 400, "top_p", "top_p must be a number in (0, 1], got 1.5"),
    (c(presence_penalty=-2.5), Kind.COMPLETION, 400, "presence_penalty",
     "presence_penalty must be a number in [-2, 2], got -2.5"),
    (c(frequency_penalty=2.5), Kind.COMPLETION, 400, "frequency_penalty",
     "frequency_penalty must be a number in [-2, 2], got 2.5"),
    (c(seed=1.5), Kind.COMPLETION, 400, "seed", "seed must be an integer, got 1.5"),
    (c(seed=False), Kind.COMPLETION, 400, "seed", "seed must be an integer, got False"),
    (c(user=5), Kind.COMPLETION, 400, "user", "user must be a string, got 5"),
    (c(logit_bias=[1]), Kind.COMPLETION, 400, "logit_bias", "logit_bias must map token ids to numbers"),
    (c(logit_bias={"5": "x"}), Kind.COMPLETION, 400, "logit_bias", "logit_bias must map token ids to numbers"),
    (c(logprobs=1), Kind.COMPLETION, 400, "logprobs", "logprobs are not supported by this server"),
    (c(logprobs=True), Kind.COMPLETION, 400, "logprobs", "logprobs are not supported by this server"),
    (ch(top_logprobs=2), Kind.CHAT, 400, "logprobs", "logprobs are not supported by this server"),
    (ch(response_format={"type": "json_object"}), Kind.CHAT, 400, "response_format",
     "response_format is not supported by this server"),
    (ch(tools=[{}]), Kind.CHAT, 400, "tools", "tools is not supported by this server"),
    (ch(tool_choice="auto"), Kind.CHAT, 400, "tool_choice", "tool_choice is not supported by this server"),
    (ch(parallel_tool_calls="yes"), Kind.CHAT, 400, "parallel_tool_calls",
     "parallel_tool_calls is not supported by this server"),
    (c(suffix="s"), Kind.COMPLETION, 400, "suffix", "suffix is not supported by this server"),
    (c(echo=True), Kind.COMPLETION, 400, "echo", "echo is not supported by this server"),
    (c(ignore_eos="y"), Kind.COMPLETION, 400, "ignore_eos", "ignore_eos must be true or false, got 'y'"),
    (c(stop=5), Kind.COMPLETION, 400, "stop", "stop must be a string or a list of at most 4 strings, got 5"),
    (c(stop=["a", 1]), Kind.COMPLETION, 400, "stop", "stop must be a string or a list of at most 4 strings, "
                                                     "got ['a', 1]"),
    (c(stop=list("abcde")), Kind.COMPLETION, 400, "stop", "stop must be a string or a list of at most 4 strings, "
                                                          "got ['a', 'b', 'c', 'd', 'e']"),
    (c(stop=""), Kind.COMPLETION, 400, "stop", "stop sequences must not be empty"),
    (c(stop=["a", ""]), Kind.COMPLETION, 400, "stop", "stop sequences must not be empty"),
    (c(max_tokens=0), Kind.COMPLETION, 400, "max_tokens", "max_tokens must be an integer >= 1, got 0"),
    (c(max_tokens=2.0), Kind.COMPLETION, 400, "max_tokens", "max_tokens must be an integer >= 1, got 2.0"),
    (c(max_tokens=True), Kind.COMPLETION, 400, "max_tokens", "max_tokens must be an integer >= 1, got True"),
    (ch(max_completion_tokens=0), Kind.CHAT, 400, "max_completion_tokens",
     "max_completion_tokens must be an integer >= 1, got 0"),
    (c(prompt=""), Kind.COMPLETION, 400, "prompt", "prompt must not be empty"),
    (c(prompt=[""]), Kind.COMPLETION, 400, "prompt", "prompt must not be empty"),
    (c(prompt=None), Kind.COMPLETION, 400, "prompt", "prompt must be a non-empty string or a list of token ids, "
                                                     "got NoneType"),
    (c(prompt=[]), Kind.COMPLETION, 400, "prompt", "prompt must be a non-empty string or a list of token ids, "
                                                   "got list"),
    (c(prompt=[1, -2]), Kind.COMPLETION, 400, "prompt", "batched prompts (2 of them) are not supported: send one "
                                                        "prompt per request"),
    (c(prompt=[1, True]), Kind.COMPLETION, 400, "prompt", "batched prompts (2 of them) are not supported: send one "
                                                          "prompt per request"),
    (c(prompt=["a", "b"]), Kind.COMPLETION, 400, "prompt", "batched prompts (2 of them) are not supported: send one "
                                                           "prompt per request"),
    (c(prompt=[[]]), Kind.COMPLETION, 400, "prompt", "prompt must be a non-empty string or a list of token ids, "
                                                     "got list"),
    (c(prompt=[None]), Kind.COMPLETION, 400, "prompt", "prompt must be a non-empty string or a list of token ids, "
                                                       "got list"),
    (ch(top_logprobs=1), Kind.CHAT, 400, "logprobs", "logprobs are not supported by this server"),
    (c(prompt=7), Kind.COMPLETION, 400, "prompt", "prompt must be a non-empty string or a list of token ids, got int"),
    (ch(messages=[]), Kind.CHAT, 400, "messages", "messages must be a non-empty list"),
    (ch(messages="hi"), Kind.CHAT, 400, "messages", "messages must be a non-empty list"),
    (ch(messages=["hi"]), Kind.CHAT, 400, "messages", "messages[0] must be an object with role and content"),
    (ch(messages=[{"role": "user", "content": "a"}, {"role": "wizard", "content": "x"}]), Kind.CHAT, 400,
     "messages[1].role", "messages[1].role must be one of system, developer, user, assistant, tool, got 'wizard'"),
    (ch(messages=[{"content": "x"}]), Kind.CHAT, 400, "messages[0].role",
     "messages[0].role must be one of system, developer, user, assistant, tool, got None"),
    (ch(messages=[{"role": "user", "content": 5}]), Kind.CHAT, 400, "messages[0].content",
     "messages[0].content must be a string or a list of text parts, got int"),
    (ch(messages=[{"role": "user"}]), Kind.CHAT, 400, "messages[0].content",
     "messages[0].content must be a string or a list of text parts, got NoneType"),
    (ch(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), Kind.CHAT, 400,
     "messages[0].content", "messages[0].content[0]: only text parts ({'type': 'text', 'text': ...}) are supported"),
    (ch(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 3}]}]),
     Kind.CHAT, 400, "messages[0].content",
     "messages[0].content[1]: only text parts ({'type': 'text', 'text': ...}) are supported"),
    (ch(messages=[{"role": "user", "content": ["a"]}]), Kind.CHAT, 400, "messages[0].content",
     "messages[0].content[0]: only text parts ({'type': 'text', 'text': ...}) are supported"),
])
def test_bad_request_bodies(body, kind, status, param, message):
    with pytest.raises(ApiError) as e:
        v(body, kind)
    assert (e.value.status, e.value.param, e.value.message) == (status, param, message)
    assert e.value.body() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": e.value.code}}
    assert e.value.code == ("model_not_found" if status == 404 else None)


def test_good_bodies_parse_to_what_they_ask():
    p = v(c(prompt="hello", max_tokens=7, stream=True, stream_options={"include_usage": True}, stop="\n",
            ignore_eos=True, temperature=0, top_p=1, seed=3, user="u", n=1, best_of=None, logit_bias={"5": -1},
            logprobs=0, echo=False, presence_penalty=-2, frequency_penalty=2))
    assert (p.kind, p.text, p.prompt_ids, p.messages, p.max_tokens, p.stream, p.include_usage, p.stop,
            p.ignore_eos) == (Kind.COMPLETION, "hello", None, None, 7, True, True, ["\n"], True)
    q = v(c(prompt=[3, 0, 9], stop=["a", "b", "c", "d"], stream=None, temperature=2))
    assert (q.text, q.prompt_ids, q.stream, q.include_usage, q.stop, q.max_tokens, q.ignore_eos) == (
        None, [3, 0, 9], False, False, ["a", "b", "c", "d"], None, False)
    assert v(c(prompt=[5])).prompt_ids == [5] and v(c(prompt=["one"])).text == "one" and v(c(prompt=[[4, 5]])).prompt_ids == [4, 5]
    assert v(c(stream=True, stream_options={})).include_usage is False
    assert v(c(stream=True, stream_options={"continuous_usage_stats": True})).include_usage is False
    m = v(ch(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": None},
        {"role": "tool", "content": "t", "tool_call_id": "1"}], max_completion_tokens=5, max_tokens=9,
        response_format={"type": "text"}, parallel_tool_calls=False, tool_choice="none"), Kind.CHAT)
    assert m.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"},
                          {"role": "assistant", "content": ""}, {"role": "tool", "content": "t"}]
    assert m.max_tokens == 5 and m.text is None and m.kind is Kind.CHAT
    assert v(ch(max_tokens=9), Kind.CHAT).max_tokens == 9 and v(c(max_tokens=1)).max_tokens == 1
    assert v(ch(top_logprobs=0, logprobs=False), Kind.CHAT).max_tokens is None
    assert v(ch(max_completion_tokens=None, max_tokens=4), Kind.CHAT).max_tokens == 4


# api: response shapes ----------------------------------------------------------------------------------------
def job(kind=Kind.COMPLETION):
    j = Job("alice", 1.0, kind, {}, 5, 9)
    j.seq, j.created = 42, 1000.7
    return j


def test_response_shapes():
    end = End("length", 5, 3, "tokenizer")
    assert usage(end) == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "token_counts": "tokenizer"}
    assert full_response(job(), "m", "a b c", end) == {
        "id": "cmpl-42", "object": "text_completion", "created": 1000, "model": "m",
        "choices": [{"index": 0, "text": "a b c", "logprobs": None, "finish_reason": "length"}], "usage": usage(end)}
    assert full_response(job(Kind.CHAT), "m", "hi", End("stop", 1, 1, "upstream")) == {
        "id": "chatcmpl-42", "object": "chat.completion", "created": 1000, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "token_counts": "upstream"}}
    assert chunk(job(), "m", "x") == {"id": "cmpl-42", "object": "text_completion", "created": 1000, "model": "m",
                                      "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": None}]}
    assert chunk(job(), "m", None, "stop", with_usage=True)["choices"][0]["text"] == ""
    assert chunk(job(), "m", "", "stop", with_usage=True)["usage"] is None
    assert chunk(job(Kind.CHAT), "m", "", role=True) == {
        "id": "chatcmpl-42", "object": "chat.completion.chunk", "created": 1000, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]}
    assert chunk(job(Kind.CHAT), "m", "t")["choices"][0]["delta"] == {"content": "t"}
    assert chunk(job(Kind.CHAT), "m", None, "length")["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                                                         "finish_reason": "length"}
    assert "usage" not in chunk(job(Kind.CHAT), "m", "t")
    assert usage_chunk(job(Kind.CHAT), "m", end) == {"id": "chatcmpl-42", "object": "chat.completion.chunk",
                                                     "created": 1000, "model": "m", "choices": [], "usage": usage(end)}
    assert usage_chunk(job(), "m", end)["object"] == "text_completion"
    assert error_body("boom") == {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    assert error_body("b", "t", "c") == {"error": {"message": "b", "type": "t", "param": None, "code": "c"}}
    e = ApiError(429, "slow down", "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    assert e.body() == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                  "code": "rate_limit_exceeded"}}
    assert e.headers == {"Retry-After": "1"} and ApiError(400, "x").headers == {} and str(e) == "slow down"


def test_job_is_answered_once():
    j = job()
    j.emit([])
    assert j.emitted == 0 and j.events.empty()
    j.emit(["a", "b"])
    assert j.emitted == 2 and isinstance(j.events.get_nowait(), Tokens)
    assert j.answer(End("stop", 1, 2, "tokenizer")) is True
    assert j.answer(Failed(503, "late")) is False
    j.emit(["c"])
    assert j.emitted == 2 and isinstance(j.events.get_nowait(), End) and j.events.empty()


# state -----------------------------------------------------------------------------------------------------
def test_state_round_trip_and_replace(tmp_path):
    path = tmp_path / "deep" / "er" / "s.sqlite"
    st = StateStore(path)
    assert st.load() is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    snap = Snapshot("equinox", {"vtc": {"a": 1.5, "b": 2}, "rfc": {"a": 0.25}},
                    {"a": Usage(3, 10, 20), "b": Usage(1, 2, 0)}, 1234.5)
    st.save(snap)
    got = StateStore(path).load()
    assert got == snap and isinstance(got.counters["vtc"]["b"], float)
    st.save(Snapshot("vtc", {"vtc": {"c": 7.0}}, {"c": Usage(1, 1, 1)}))
    t = time.time()
    got = st.load()
    assert got.policy == "vtc" and got.counters == {"vtc": {"c": 7.0}} and got.usage == {"c": Usage(1, 1, 1)}
    assert t - 5 < got.saved_at <= t     # saved_at 0: the time of saving
    StateStore(path)                      # opening an existing file of this version changes nothing
    assert st.load() == got
    assert Usage(2, 3, 4).total_tokens == 7 and Usage().total_tokens == 0


def test_state_save_is_all_or_nothing(tmp_path):
    st = StateStore(tmp_path / "s.sqlite")
    first = Snapshot("vtc", {"vtc": {"a": 1.0}}, {"a": Usage(1, 2, 3)}, 5.0)
    st.save(first)
    with pytest.raises(sqlite3.IntegrityError):
        st.save(Snapshot("vtc", {"vtc": {"b": 9.0}}, {"b": Usage(None, 1, 1)}, 6.0))   # NOT NULL fails mid-way
    assert st.load() == first
    st.save(Snapshot("vtc", {}, {}, 7.0))       # still usable after the failure (no transaction left open)
    assert st.load() == Snapshot("vtc", {}, {}, 7.0)


def test_state_refuses_files_it_cannot_use(tmp_path):
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(StateError) as e:
        StateStore(newer)
    assert str(e.value) == (f"{newer}: state schema version 2 is newer than this daemon's (1); upgrade the daemon "
                            f"or move the file away")
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("CREATE TABLE u (y)")
    with pytest.raises(StateError) as e:
        StateStore(foreign)
    assert str(e.value) == f"{foreign}: an SQLite file without this daemon's schema (tables t, u); move it away"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some text" * 50)
    with pytest.raises(StateError) as e:
        StateStore(junk)
    assert str(e.value) == f"{junk}: not a usable SQLite file (file is not a database)"


# tokenizer ---------------------------------------------------------------------------------------------------
def test_tokenizer_counts_pieces_plus_bos():
    from serving.daemon.tokenizer import MODEL_PATH, NAME, Tokenizer, WORDS, default_tokenizer, render_chat
    assert default_tokenizer() is default_tokenizer()
    tok = Tokenizer(MODEL_PATH)        # a fresh one (the cached one may predate what is being tested)
    assert tok.name == NAME == "mistral-7b-v0.1 (sentencepiece, shipped in data/tokenizer)"
    # ids of the Mistral-7B v0.1 SentencePiece model (the same as its HF tokenizer gives, BOS 1 excluded)
    assert tok.encode("Explain PCIe completions") == [13702, 426, 18854, 28706, 2691, 594]
    assert tok.count("Explain PCIe completions") == 7 and tok.count("") == 1
    assert tok.words and set(tok.words) <= set(WORDS)
    for w in tok.words:
        assert len(tok.encode(w)) == 1 and len(tok.encode("x " + w)) == 2
    assert "model" in tok.words and "fair" in tok.words and len(tok.words) == 42
    assert tok.words == default_tokenizer().words
    assert render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                        {"role": "assistant", "content": "A"}, {"role": "tool", "content": "T"}]) == \
        "[INST] S\n\nU1 [/INST]A</s>[INST] T [/INST]"
    assert render_chat([{"role": "developer", "content": "only"}]) == "[INST] only [/INST]"
    assert render_chat([{"role": "system", "content": "a"}, {"role": "system", "content": "b"}]) == \
        "[INST] a\n\nb [/INST]"
    msgs = [{"role": "user", "content": "Hello"}]
    assert tok.count_chat(msgs) == tok.count("[INST] Hello [/INST]") == len(tok.encode("[INST] Hello [/INST]")) + 1
    assert Tokenizer(MODEL_PATH).encode("hi") == tok.encode("hi")
    with pytest.raises(FileNotFoundError) as e:
        Tokenizer(MODEL_PATH.with_name("nope.model"))
    assert str(e.value) == f"{MODEL_PATH.with_name('nope.model')}: the tokenizer model is missing (it ships in " \
                           f"data/tokenizer/)"


# metrics -----------------------------------------------------------------------------------------------------
def scrape(m) -> dict:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def L(**kw):
    return tuple(sorted(kw.items()))


def test_metrics_exposition_of_the_state():
    from serving.daemon.metrics import DaemonMetrics
    m = DaemonMetrics()
    assert not [k for k in scrape(m) if k[0].startswith(("equinox_ready", "equinox_queue"))]   # unbound: no gauges
    state = {
        "queue": {"a": 3, "b": 0}, "running": {"a": 1}, "counters": {"vtc": {"a": 10.5}, "rfc": {"b": 0.5}},
        "hf": {"a": -1.25}, "ready": True,
        "telemetry": {"sim": [{"device": "sim0", "gpu_util": 0.5, "pcie_util": None, "kv_usage": 0.25,
                               "pcie_tx_bps": None, "pcie_rx_bps": 7.0, "mem_used_bytes": 99}],
                      "nvml": [{"device": "gpu1", "gpu_util": 0.0, "pcie_util": 0.75, "kv_usage": None,
                                "pcie_tx_bps": 3.0, "pcie_rx_bps": None, "mem_used_bytes": 0}]},
        "upstreams": [{"url": "http://u1", "healthy": True, "in_flight": 4},
                      {"url": "http://u2", "healthy": False, "in_flight": 0}],
    }
    m.bind(lambda: state)
    m.requests.labels("a", "chat").inc()
    m.tokens.labels("a", "completion").inc(5)
    m.ttft.labels("a").observe(0.02)
    m.tbt.labels("b").observe(0.004)
    s = scrape(m)
    assert s[("equinox_tbt_seconds_bucket", L(client="b", le="0.005"))] == 1
    assert s[("equinox_utilization", L(source="nvml", device="gpu1", resource="pcie"))] == 0.75
    assert s[("equinox_utilization", L(source="nvml", device="gpu1", resource="gpu"))] == 0.0
    assert ("equinox_utilization", L(source="nvml", device="gpu1", resource="kv")) not in s
    assert s[("equinox_pcie_throughput_bytes_per_second", L(source="nvml", device="gpu1", direction="tx"))] == 3.0
    assert s[("equinox_gpu_memory_used_bytes", L(source="nvml", device="gpu1"))] == 0
    from serving.daemon.metrics import COUNTERS, GAUGES, HISTOGRAMS
    fams = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())
            if not f.name.endswith("_created")}
    assert set(fams) == set(COUNTERS) | set(HISTOGRAMS) | set(GAUGES)
    for name, (help, *_) in {**COUNTERS, **HISTOGRAMS, **GAUGES}.items():
        assert fams[name].documentation == help
    assert s[("equinox_queue_depth", L(client="a"))] == 3 and s[("equinox_queue_depth", L(client="b"))] == 0
    assert s[("equinox_running_requests", L(client="a"))] == 1
    assert s[("equinox_fairness_counter", L(client="a", kind="vtc"))] == 10.5
    assert s[("equinox_fairness_counter", L(client="b", kind="rfc"))] == 0.5
    assert s[("equinox_hf_score", L(client="a"))] == -1.25
    assert s[("equinox_utilization", L(source="sim", device="sim0", resource="gpu"))] == 0.5
    assert s[("equinox_utilization", L(source="sim", device="sim0", resource="kv"))] == 0.25
    assert ("equinox_utilization", L(source="sim", device="sim0", resource="pcie")) not in s
    assert s[("equinox_pcie_throughput_bytes_per_second", L(source="sim", device="sim0", direction="rx"))] == 7.0
    assert ("equinox_pcie_throughput_bytes_per_second", L(source="sim", device="sim0", direction="tx")) not in s
    assert s[("equinox_gpu_memory_used_bytes", L(source="sim", device="sim0"))] == 99
    assert s[("equinox_upstream_up", L(upstream="http://u1"))] == 1.0
    assert s[("equinox_upstream_up", L(upstream="http://u2"))] == 0.0
    assert s[("equinox_upstream_in_flight", L(upstream="http://u1"))] == 4
    assert s[("equinox_ready", ())] == 1.0
    assert s[("equinox_requests_total", L(client="a", endpoint="chat"))] == 1
    assert s[("equinox_served_tokens_total", L(client="a", kind="completion"))] == 5
    assert s[("equinox_ttft_seconds_bucket", L(client="a", le="0.025"))] == 1
    assert s[("equinox_ttft_seconds_bucket", L(client="a", le="0.01"))] == 0
    state["ready"] = False
    state["telemetry"]["sim"][0]["mem_used_bytes"] = None
    s = scrape(m)
    assert s[("equinox_ready", ())] == 0.0 and ("equinox_gpu_memory_used_bytes", L(source="sim", device="sim0")) not in s
    m.bind(lambda: {})
    assert scrape(m)[("equinox_ready", ())] == 0.0
    # two daemons in one process keep their own registries
    assert ("equinox_requests_total", L(client="a", endpoint="chat")) not in scrape(DaemonMetrics())


# backends/common: the scheduler host -----------------------------------------------------------------------
class Host:
    """A SchedulerHost on a clock the test moves."""

    def __new__(cls, policy="vtc"):
        from serving.daemon.backends.common import SchedulerHost
        from serving.engine.profiles import get_profile

        class _H(SchedulerHost):
            t = 0.0

            def now(self):
                return self.t

        return _H(policy, get_profile("a100-llama2-7b"))


def metrics():
    from serving.daemon.metrics import DaemonMetrics
    return DaemonMetrics()


def cancelled(m, client, reason):
    return scrape(m).get(("equinox_cancelled_requests_total", (("client", client), ("reason", reason))), 0)


def mkjob(client="a", prompt=10, max_tokens=20, weight=1.0):
    return Job(client, weight, Kind.COMPLETION, {}, prompt, max_tokens)


def test_host_enqueue_then_apply():
    h, m = Host(), metrics()
    assert not h.wake.is_set()
    h.t = 2.5
    j1, j2 = mkjob("a", 10, 20, weight=2.0), mkjob("b", 5, 7)
    h.enqueue(j1, 15)
    h.enqueue(j2, 7)
    assert h.wake.is_set() and h.jobs == {} and not h.scheduler.has_work
    r = j1.req
    assert (r.rid, r.client, r.arrival, r.prompt_tokens, r.output_tokens, r.weight, r.max_new_tokens) == (
        1, "a", 2.5, 10, 15, 2.0, 20)
    assert j2.req.rid == 2
    assert h.apply_pending(m) == []
    assert h.jobs == {1: j1, 2: j2} and h.scheduler.policy.waiting == 2 and h._arrivals == []
    assert h.scheduler.policy.backlog_log[-2:] == [(2.5, "a", True), (2.5, "b", True)]


def test_host_cancel_before_and_after_the_scheduler_saw_it():
    h, m = Host(), metrics()
    h.request_cancel(mkjob(), "disconnect")                  # never enqueued: nothing to do
    assert h._cancels == [] and not h.wake.is_set()
    early, late, other = mkjob("a"), mkjob("b"), mkjob("c")
    for j in (early, late, other):
        h.enqueue(j, 5)
    h.wake.clear()
    h.request_cancel(early, "disconnect")
    assert early.cancelled and h.wake.is_set()
    assert h.apply_pending(m) == [(early, "disconnect")]
    assert set(h.jobs) == {late.req.rid, other.req.rid}       # the early one never reached the scheduler
    assert h.scheduler.policy.waiting == 2 and cancelled(m, "a", "disconnect") == 1
    h.request_cancel(late, "disconnect")
    h.request_cancel(late, "disconnect")                     # twice: counted once
    h.t = 1.0
    done = h.apply_pending(m)
    assert done == [(late, "disconnect")] and late.req.rid not in h.jobs and other.req.rid in h.jobs
    assert cancelled(m, "b", "disconnect") == 1 and h.scheduler.policy.waiting == 1 and h._cancels == []
    assert h.scheduler.policy.backlog_log[-1] == (1.0, "b", False)
    # a cancellation that comes after the engine ended the job is dropped, and does not stop those behind it
    gone = mkjob("d")
    h.enqueue(gone, 5)
    h.apply_pending(m)
    del h.jobs[gone.req.rid]                                 # as the engine does when it finishes a job
    h.request_cancel(gone, "disconnect")
    h.request_cancel(other, "shutdown")
    assert h.apply_pending(m) == [(other, "shutdown")] and h.jobs == {}
    assert cancelled(m, "d", "disconnect") == 0 and cancelled(m, "c", "shutdown") == 1


def test_host_fail_all_answers_everything_once_and_keeps_counters_on_a_fault():
    h, m = Host("vtc"), metrics()
    held, queued, answered = mkjob("a"), mkjob("b"), mkjob("a")
    h.enqueue(held, 5)
    h.enqueue(answered, 5)
    h.apply_pending(m)
    s = h.scheduler
    out = s.schedule(0.0)
    s.update_from_output(out, 0.01, 0.01)
    h.enqueue(queued, 5)                                     # not applied yet
    answered.answer(End("stop", 1, 1, "tokenizer"))
    before = s.policy.counters()
    assert before["vtc"]["a"] > 0
    running = held if held.req.rid in s.running else answered
    h.t = 7.0
    n = h.fail_all(503, "shutting down", retry_after=4)
    assert n == 2 and h.jobs == {} and h._arrivals == [] and not s.running and s.policy.waiting == 0
    assert running.req.finished == 7.0
    for j in (held, queued):
        while not j.events.empty():
            last = j.events.get_nowait()
        assert last == Failed(503, "shutting down", retry_after=4)
    # a fault: held work fails with 500, a new scheduler keeps the counters
    j = mkjob("b")
    h.enqueue(j, 5)
    h.apply_pending(m)
    old = h.scheduler
    saved = old.policy.counters()
    h.rebuild_after_fault()
    assert h.scheduler is not old and h.scheduler.policy.counters() == saved and h.jobs == {}
    assert j.events.get_nowait() == Failed(500, "internal engine error; the request was not completed")


def test_host_overhead_and_clock():
    from serving.daemon.backends.common import SchedulerHost, perf
    from serving.engine.profiles import get_profile
    h, m = Host(), metrics()
    h.record_overhead(m, 0.002)
    h.record_overhead(m, 0.02)
    assert list(h.overhead) == [0.002, 0.02]
    s = scrape(m)
    assert s[("equinox_scheduler_overhead_seconds_count", ())] == 2
    assert s[("equinox_scheduler_overhead_seconds_bucket", (("le", "0.0025"),))] == 1
    for i in range(200_000):                 # the last 200,000 decisions are kept for exact quantiles
        h.record_overhead(m, 1e-6)
    assert len(h.overhead) == 200_000 and h.overhead[0] == 1e-6 and 0.02 not in h.overhead
    with pytest.raises(NotImplementedError):
        SchedulerHost("fcfs", get_profile("a100-llama2-7b")).now()
    a = perf()
    assert perf() >= a and abs(perf() - time.perf_counter()) < 1.0
    from serving.policies.base import EngineBehaviour
    b = EngineBehaviour(max_batch=3)
    hb = SchedulerHost("vtc", get_profile("a100-llama2-7b"), b)
    assert hb.scheduler.policy.behaviour is b and hb.policy_name == "vtc"
