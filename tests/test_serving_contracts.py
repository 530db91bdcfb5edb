"""Small contracts of the serving modules, each checked directly (written against the mutants mutmut left
alive: the baselines' charges and weights, RPM's window, engine behaviour files, trace-file validation,
record_measured and the latency credit's edges, the workloads' documented defaults)."""

import json

import pytest

from serving.engine.behaviour import get_engine, load_behaviour
from serving.policies import EquinoxConfig, make_policy
from serving.policies.rpm import RPMPolicy
from serving.policies.vtc import VTCOraclePolicy, VTCPredictedPolicy
from serving.request import Request as R
from serving.request import RequestError
from serving.workloads import SHAPES, artifact_workload, load_trace_file, shape_skew_workload


def _admit(p, r, now=0.0):
    p.add(r, now, {})
    got = p.pop(now)
    assert got is r
    p.on_admit(r, now)


# baselines ------------------------------------------------------------------------------------------
def test_vtc_predicted_weights_prepaid_pool_and_refund_bound():
    p = make_policy("vtc-pred")
    p.predict_len["a"] = 20.0
    r = R(0, "a", 0.0, 10, 5, weight=2.0)
    _admit(p, r)
    assert p.counter["a"] == pytest.approx((10 + 2 * 20) / 2)      # over the weight
    assert p.prepaid == {"a": 20.0}
    p.on_step({"a": 5}, {}, 1.0)
    assert p.prepaid["a"] == 15.0 and p.counter["a"] == pytest.approx(25.0)
    p.on_finish(r, 1.0)
    assert p.counter["a"] == pytest.approx(25.0 - 2 * 15 / 2)      # 15 unused predicted tokens refunded
    assert p.prepaid["a"] == 0.0
    # an overrun is charged as it comes (past the prepaid tokens), and nothing is refunded
    p.predict_len["b"] = 2.0
    r2 = R(1, "b", 0.0, 4, 6)
    _admit(p, r2)
    p.on_step({"b": 6}, {}, 1.0)
    assert p.counter["b"] == pytest.approx(4 + 2 * 2 + 2 * 4)
    p.on_finish(r2, 1.0)
    assert p.counter["b"] == pytest.approx(16.0)
    assert p.predict_len["b"] == pytest.approx((2 * 4 + 6) / 5)
    assert VTCPredictedPolicy(get_engine("equinox")).behaviour.name == "equinox"   # positional behaviour kept


def test_vtc_oracle_charges_once_and_over_weight():
    o = make_policy("vtc-oracle")
    r = R(0, "a", 0.0, 10, 7, weight=2.0, max_new_tokens=9)
    _admit(o, r)
    assert o.counter["a"] == pytest.approx((10 + 2 * 9) / 2)
    o.requeue_front(r, {}, 1.0)                                    # preempted and readmitted: not charged again
    o.pop(1.0)
    o.on_admit(r, 1.0)
    assert o.counter["a"] == pytest.approx(14.0)
    assert VTCOraclePolicy(get_engine("equinox")).behaviour.name == "equinox"


def test_preempt_candidate_picks_the_most_served_past_the_margin():
    p = make_policy("vtc")
    p.counter.update({"head": 0.0, "a": 500.0, "b": 2000.0})
    assert p.preempt_candidate("head", {"a": 1, "b": 1}) == "b"    # the highest counter, not the first
    p.counter["b"] = p.preempt_margin                               # exactly the margin: not past it
    assert p.preempt_candidate("head", {"b": 1}) is None
    assert p.preempt_candidate("head", {"head": 1}) is None


def test_rpm_limit_validation_window_edge_and_count():
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="rpm limit must be a positive integer"):
            RPMPolicy(limit=bad)
    p = RPMPolicy(get_engine("equinox"), limit=1)
    assert p.behaviour.name == "equinox" and p.rejected == 0
    assert p.accept(R(0, "a", 0.0, 1, 1), 0.0)
    assert not p.accept(R(1, "a", 60.0, 1, 1), 60.0)                # 60 s after: still inside the minute
    assert p.accept(R(2, "a", 60.5, 1, 1), 60.5)
    assert not p.accept(R(3, "a", 61.0, 1, 1), 61.0)
    assert p.rejected == 2
    assert p.accept(R(4, "b", 61.0, 1, 1), 61.0)                    # per client


# Equinox's measured side and the credit's edges -------------------------------------------------------
def test_record_measured_accumulates_and_reorders():
    p = make_policy("equinox", config=EquinoxConfig(alpha=0.0, beta=1.0, latency_weight=0.0))
    a, b = R(0, "a", 0.0, 10, 10), R(1, "b", 0.0, 10, 10)
    for r in (a, b):                                                 # both running ...
        _admit(p, r)
    for r in (R(2, "a", 0.0, 10, 10), R(3, "b", 0.0, 10, 10)):      # ... and their next ones waiting
        p.add(r, 0.0, {})
    assert p.peek().client == "a"                                    # a tie: the client seen first
    p.record_measured(a, 0.0)                                        # zero is a measurement, not an error
    p.record_measured(a, 1.0)
    p.record_measured(a, 2.0)
    assert a.gpu_s == pytest.approx(3.0) and p.gpu_meas_run["a"] == pytest.approx(3.0)
    assert p.peek().client == "b"                                    # a's measurement moved it back
    p.record_measured(b, 5.0)
    assert p.peek().client == "a"


def test_latency_credit_edges():
    p = make_policy("equinox")
    p.wait["a"] = 2.0
    p.key_scales = (100.0, 1.0, 0.0)                                 # no wait measured yet: no credit
    assert p.latency_credit("a") == 0.0
    p.key_scales = (100.0, 1.0, 0.5)                                 # a mean wait under a second
    assert p.latency_credit("a") == pytest.approx(0.5 * 100 * 1.0)
    p.wait["a"] = 0.25
    assert p.latency_credit("a") == pytest.approx(0.5 * 100 * -0.5)
    p.wait["a"] = 1.0                                                # exactly twice the mean: +1 (the clip's edge)
    assert p.latency_credit("a") == pytest.approx(50.0)
    p.wait["a"] = 0.0                                                # waited nothing: -1, the lowest there is
    assert p.latency_credit("a") == pytest.approx(-50.0)


# engine behaviour files -------------------------------------------------------------------------------
def test_behaviour_files(tmp_path):
    f = tmp_path / "small.json"
    f.write_text(json.dumps({"chunked_prefill": True, "token_budget": 256}))
    b = load_behaviour(f)
    assert (b.name, b.chunked_prefill, b.token_budget) == ("small", True, 256)
    assert b.replace(token_budget=128).token_budget == 128 and b.token_budget == 256
    with pytest.raises(ValueError, match="token_budget must be an integer >= 16"):
        b.replace(token_budget=8)
    cases = [("none.json", None, "no such behaviour file"), ("bad.json", "{oops", "malformed JSON"),
             ("list.json", "[1, 2]", "expected a JSON object of engine fields"),
             ("typo.json", '{"token_budjet": 1}', "unknown field 'token_budjet' \\(fields: adapter_kv_tokens, ")]
    for name, text, msg in cases:
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        with pytest.raises(ValueError, match=f"--engine {p}: {msg}"):
            load_behaviour(p)


# trace files --------------------------------------------------------------------------------------------
def test_trace_file_errors_name_what_and_where(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    cases = [
        ("nothere.jsonl", None, "nothere.jsonl: no such trace file"),
        ("dir.jsonl", None, "dir.jsonl: is a directory, not a trace file"),
        ("t.txt", "x", "t.txt: unknown trace format \\(expected .json, .jsonl, .csv, .json.gz"),
        ("b.json", "[1,\n{", "b.json:2: malformed JSON"),
        ("c.csv", "t,client,in,out\n0,a,1e3,1\n0,a,12.5,1\n", "c.csv:3: field 'in' must be an integer token count, got 12.5"),
        ("d.csv", "t,client,in,out\n0,a,x1,1\n", "d.csv:2: field 'in' must be an integer token count, got 'x1'"),
        ("e.jsonl", '{"t": true, "client": "a", "in": 1, "out": 1}\n', "e.jsonl:1: field 't' must be a number, got True"),
        ("f.jsonl", '{"t": NaN, "client": "a", "in": 1, "out": 1}\n', "f.jsonl:1: field 't' must be finite, got nan"),
        ("g.jsonl", '{"t": 0, "client": "a", "in": [1], "out": 1}\n', "g.jsonl:1: field 'in' must be an integer token count, got \\[1\\]"),
        ("h.jsonl", '{"t": -1, "client": "a", "in": 1, "out": 1}\n', "h.jsonl:1: field 't' must be a time >= 0"),
        ("i.jsonl", '{"t": 0, "client": true, "in": 1, "out": 1}\n', "i.jsonl:1: field 'client' must be a name"),
        ("j.jsonl", '[1]\n', "j.jsonl:1: expected an object with t, client, in, out"),
        ("k.jsonl", "\n", "k.jsonl: no requests"),
    ]
    for name, text, msg in cases:
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        with pytest.raises(RequestError, match=msg):
            load_trace_file(p)
    ok = tmp_path / "ok.csv"
    ok.write_text("t,client,in,out,max_new_tokens\n0,ü-client,1e3,2.0,4\n")   # exponent and .0 are integers
    (r,) = load_trace_file(ok).requests
    assert (r.client, r.prompt_tokens, r.output_tokens, r.max_new_tokens) == ("ü-client", 1000, 2, 4)


# workloads' documented defaults -----------------------------------------------------------------------
def test_shape_skew_defaults_are_the_documented_rates():
    """Load 4 x 4,000 token charge per second, split evenly over the shapes: 2.50 (prompt-heavy), 2.55
    (decode-heavy), 1.12 (long-context), 5.21 (balanced) requests per second for 600 s; seeded."""
    wl = shape_skew_workload()
    assert wl.requests == wl.requests and [(r.arrival, r.client) for r in shape_skew_workload().requests] == \
        [(r.arrival, r.client) for r in wl.requests]
    assert max(r.arrival for r in wl.requests) < 600.0 < max(r.arrival for r in wl.requests) + 5
    for c, (p, o) in SHAPES.items():
        n = sum(1 for r in wl.requests if r.client == c)
        rate = 4000.0 / (p + 2 * o)
        assert abs(n / 600.0 - rate) < 4 * (rate / 600.0) ** 0.5, (c, n / 600.0, rate)  # within 4 sigma
    assert len(shape_skew_workload(load=2.0).requests) < 0.6 * len(wl.requests)
    assert shape_skew_workload(seed=2).requests[0].arrival != wl.requests[0].arrival


def test_artifact_workload_defaults_to_the_vtc_run():
    wl = artifact_workload("overload")
    assert len(wl.requests) == 1620 and wl.name == "artifact-overload"       # FCFS's run sent 2700
    assert wl.meta["suite"] == "overload" and wl.meta["policy"] == "vtc" and wl.meta["config"]["req_rate"] == [1.5, 3]
    assert wl.weights == {}
    with pytest.raises(ValueError, match="unknown artifact suite: 'x' \\(known: overload, proportional"):
        artifact_workload("x")
    with pytest.raises(ValueError, match="the artifact measured vtc and fcfs only, got 'lcf'"):
        artifact_workload("overload", "lcf")
