"""The scheduler and policy hooks the daemon adds (release, record_progress, Policy.remove, counters), and the
daemon's config validation."""

from __future__ import annotations

import pytest

from serving.engine.profiles import get_profile
from serving.policies import make_policy
from serving.predictors import MoPE
from serving.request import Request, RequestError
from serving.scheduler import Scheduler


def sched(policy="vtc"):
    return Scheduler(make_policy(policy), get_profile("a100-llama2-7b"), MoPE())


def test_release_waiting_is_uncharged_and_rekeys_fcfs():
    s = sched("fcfs")
    a1, a2, b = Request(1, "a", 0.0, 10, 5), Request(2, "a", 3.0, 10, 5), Request(3, "b", 1.0, 10, 5)
    for r in (a1, b, a2):
        s.add_request(r, r.arrival)
    assert s.release(a1, 4.0) and s.policy.waiting == 2
    assert s.policy.peek() is b            # a's head is now a2 (t=3): b (t=1) goes first
    assert not s.release(a1, 4.0)          # not there any more
    assert s.release(b, 4.0) and s.policy.backlog_log[-1] == (4.0, "b", False)


def test_release_running_charges_what_was_produced():
    s = sched("vtc")
    r = Request(1, "a", 0.0, 10, 50)
    s.add_request(r, 0.0)
    t = 0.0
    for _ in range(4):
        out = s.schedule(t)
        t += 0.01
        s.update_from_output(out, t, 0.01)
    assert s.release(r, t) and r.output_tokens == r.generated == 4
    assert s.policy.counter["a"] == 10 + 2 * 4 and not s.running and s.kv_total == 0 and s.reserved == 0
    assert s.finished == []               # cancelled: MoPE does not learn a cut length


def test_record_progress_for_per_request_engines():
    s = sched("equinox")
    r = Request(1, "a", 0.0, 10, 100, max_new_tokens=100)
    s.add_request(r, 0.0)
    out = s.schedule(0.0)
    assert out.admitted == [r]
    s.record_progress(r, 3, 0.5, 1.0)
    assert r.first_token == 1.0 and r.generated == 3 and r.gpu_s == 0.5
    assert s.policy.counter["a"] == 10 + 2 * 3
    rfc_running = s.policy.rfc("a")
    s.release(r, 2.0, completed=True)
    assert s.finished == [r] and s.policy.rfc("a") == pytest.approx(0.5) and rfc_running >= 0.5
    with pytest.raises(RequestError, match="not running"):
        s.record_progress(r, 1, 0.0, 3.0)


def test_counters_round_trip_and_foreign_kinds_refused():
    s = sched("equinox")
    r = Request(1, "a", 0.0, 10, 2)
    s.add_request(r, 0.0)
    t = 0.0
    while s.has_work:
        out = s.schedule(t)
        t += 0.01
        s.update_from_output(out, t, 0.01)
    saved = s.policy.counters()
    fresh = make_policy("equinox")
    fresh.restore_counters(saved)
    assert fresh.counters() == saved
    with pytest.raises(ValueError, match="keeps no rfc, vtc counters"):
        make_policy("fcfs").restore_counters(saved)


# config -------------------------------------------------------------------------------------------------------
from serving.daemon.config import ConfigError, load_config  # noqa: E402


@pytest.mark.parametrize("text,words", [
    ("clients: []\n", "clients: at least one client"),
    ("clients: [{name: a, key_sha256: abc}]\n", "clients[0].key_sha256 must be 64"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + ", weight: -1}]\n", "clients[0].weight must be a positive"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + "}]\npolicy: lottery\n", "unknown policy: 'lottery'"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + "}]\nbackend: {kind: gpu}\n", "backend.kind: unknown backend"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + "}]\nportt: 1\n", "portt: unknown setting"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + "}]\nbackend: {kind: upstream}\n", "at least one replica"),
    ("clients: [{name: a, key_sha256: " + "a" * 64 + "}, {name: a, key_sha256: " + "b" * 64 + "}]\n", "appears twice"),
    ("clients: [\n", "not valid YAML"),
])
def test_bad_configs_name_file_and_field(tmp_path, text, words):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and words in msg and "\n" not in msg


def test_example_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    y = load_config(root / "examples/serve.yaml")
    t = load_config(root / "examples/serve.toml")
    assert y.clients == t.clients and y.backend.kind == t.backend.kind == "sim"
    assert [c.name for c in y.clients] == ["alice", "bob"] and y.clients[0].weight == 2


def test_grafana_dashboard_names_only_metrics_the_daemon_exports():
    import json
    import re
    from pathlib import Path
    from serving.daemon.metrics import DaemonMetrics
    dash = json.loads((Path(__file__).resolve().parent.parent / "examples/grafana/equinox.json").read_text())
    names = {m.name for m in DaemonMetrics().registry.collect()} | {
        "equinox_queue_depth", "equinox_running_requests", "equinox_fairness_counter", "equinox_hf_score",
        "equinox_utilization", "equinox_pcie_throughput_bytes_per_second", "equinox_upstream_up",
        "equinox_upstream_in_flight"}
    used = {re.sub(r"_(total|bucket)$", "", m) for p in dash["panels"] for t in p["targets"]
            for m in re.findall(r"equinox_[a-z_]+", t["expr"])}
    assert used and used <= names, used - names
