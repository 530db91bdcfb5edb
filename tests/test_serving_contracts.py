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
from serving.metrics import summarize
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
    p.counter.update({"head": 0.0, "a": 2000.0, "b": 500.0})
    assert p.preempt_candidate("head", {"b": 1, "a": 1}) == "a"    # the highest counter, not the first or last
    p.counter["a"] = p.preempt_margin                               # exactly the margin: not past it
    assert p.preempt_candidate("head", {"a": 1}) is None
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


# second round against survivors ---------------------------------------------------------------------
def test_latency_credit_clips_between_one_and_two():
    p = make_policy("equinox")
    p.key_scales = (100.0, 1.0, 0.5)
    p.wait["a"] = 1.25                                               # 2.5x the mean: clipped to +1, not 1.5
    assert p.latency_credit("a") == pytest.approx(50.0)


def test_baseline_variants_pass_their_token_weights_on():
    for name in ("vtc-pred", "vtc-oracle"):
        p = make_policy(name, w_p=3.0, w_q=5.0)
        assert (p.w_p, p.w_q) == (3.0, 5.0)


def test_vtc_predicted_pools_the_prepaid_tokens_of_a_client():
    """Two requests of one client running at once: their predictions are pooled; the first to finish is
    refunded its own unused part only (pred - output, not more, though the pool holds more), an overrun past
    the pool is charged over the weight, and a request that overran its prediction is refunded nothing."""
    p = make_policy("vtc-pred")
    p.predict_len["a"] = 20.0
    r1, r2 = R(0, "a", 0.0, 1, 5, weight=2.0), R(1, "a", 0.0, 1, 60, weight=2.0)
    _admit(p, r1)
    _admit(p, r2)
    assert p.prepaid["a"] == 40.0
    base = p.counter["a"]
    assert base == pytest.approx(2 * (1 + 2 * 20) / 2)
    p.on_step({"a": 10}, {}, 1.0)                                    # r1's 5 and r2's first 5 tokens: prepaid
    p.on_finish(r1, 1.0)                                             # r1 used 5 of its 20: 15 back
    assert p.prepaid["a"] == pytest.approx(15.0)
    assert p.counter["a"] == pytest.approx(base - 2 * 15 / 2)
    p.on_step({"a": 55}, {}, 2.0)                                    # r2: 15 from the pool, 40 charged over weight 2
    assert p.counter["a"] == pytest.approx(base - 15 + 2 * 40 / 2)
    c = p.counter["a"]
    p.prepaid["a"] = 3.0                                             # (something left in the pool)
    p.on_finish(r2, 2.0)                                             # r2 overran its 20: no refund
    assert p.counter["a"] == pytest.approx(c)


def test_max_service_gap_with_one_client_or_one_sample():
    import numpy as np

    from serving.engine.simulator import SimResult
    from serving.metrics import max_service_gap, max_service_gap_pairs
    res = SimResult([R(0, "a", 0.0, 1, 1)], ["a"])
    res.samples_t, res.samples_service = np.arange(3.0), np.array([[0.0], [5.0], [9.0]])
    res.samples_backlog = np.ones((3, 1), bool)
    assert max_service_gap_pairs(res) == 0.0 == max_service_gap(res)
    two = SimResult([R(0, "a", 0.0, 1, 1), R(1, "b", 0.0, 1, 1)], ["a", "b"])
    two.samples_t, two.samples_service, two.samples_backlog = np.zeros(1), np.array([[3.0, 0.0]]), np.ones((1, 2), bool)
    assert max_service_gap_pairs(two) == 0.0 == max_service_gap(two)


def test_trace_integer_parsing_exact():
    from serving.workloads import _int_field
    assert _int_field("w", "in", "1E3") == 1000                      # an exponent, either case
    assert _int_field("w", "in", " 9007199254740993 ") == 9007199254740993   # digits exactly (not through float)
    assert _int_field("w", "in", "7.0") == 7
    with pytest.raises(RequestError, match="w: field 'out' must be >= 1, got 0"):
        _int_field("w", "out", 0)


def test_trace_file_field_names_in_errors(tmp_path):
    cases = [('{"t": 0, "client": "a", "in": 1, "out": 0}', "t.jsonl:1: field 'out' must be >= 1, got 0"),
             ('{"t": 0, "client": "a", "in": 1, "out": 1, "weight": "x"}', "t.jsonl:1: field 'weight' must be a number"),
             ('{"t": 0, "client": "a", "in": 1, "out": 1, "weight": 0}', "t.jsonl:1: field 'weight' must be positive, got 0"),
             ('{"t": 0, "client": "a", "in": 1, "out": 1, "deadline": "x"}', "t.jsonl:1: field 'deadline' must be a number"),
             ('{"t": 0, "client": "a", "in": 1, "out": 1, "max_new_tokens": 0.5}',
              "t.jsonl:1: field 'max_new_tokens' must be an integer token count")]
    p = tmp_path / "t.jsonl"
    for text, msg in cases:
        p.write_text(text + "\n")
        with pytest.raises(RequestError, match=msg):
            load_trace_file(p)
    p.write_text('{"t": 0, "client": "a", "in": 1, "out": 1, "weight": "", "deadline": "", "max_new_tokens": ""}\n')
    (r,) = load_trace_file(p).requests                               # empty optional fields: absent
    assert (r.weight, r.deadline, r.max_new_tokens) == (1.0, None, None)
    j = tmp_path / "plain.JSON"
    j.write_text('[{"t": 0, "client": "a", "in": 2, "out": 3}]')
    assert load_trace_file(j).requests[0].prompt_tokens == 2        # the suffix in any case


def test_behaviour_validation_names_the_field():
    from serving.engine.behaviour import EngineBehaviour
    for kw, msg in [({"admission": "fifo"}, "engine custom: admission must be 'sum' or 'slora', got 'fifo'"),
                    ({"reserve": "half"}, "engine custom: reserve must be 'full' or 'predicted', got 'half'"),
                    ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
                    ({"admit_every": 0}, "admit_every must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=msg):
            EngineBehaviour(**kw)
    assert EngineBehaviour(max_batch=1, admit_every=1).max_batch == 1


def test_requeue_front_after_preemption():
    """A preempted request goes back to the head of its client's queue; a client whose queue was empty is
    backlogged again (logged, and its head changed), one that still waited keeps its place in the heap."""
    p = make_policy("vtc")
    a0, a1 = R(0, "a", 0.0, 1, 1), R(1, "a", 0.0, 1, 1)
    p.add(a0, 0.0, {})
    _ = p.pop(0.0)
    v0 = p.heads_version
    p.requeue_front(a0, {}, 1.0)
    assert p.backlog_log[-1] == (1.0, "a", True) and p.heads_version == v0 + 1
    assert p.peek() is a0 and p.waiting == 1
    p.add(a1, 1.5, {})
    p.pop(2.0)
    p.requeue_front(a0, {}, 2.5)                                     # a1 still waits: no new backlog entry
    assert list(p.queues["a"]) == [a0, a1] and p.backlog_log[-1] != (2.5, "a", True)


@pytest.mark.parametrize("policy", ["vtc", "fcfs"])
def test_preemption_bookkeeping(policy):
    """Preempting engine (predicted reservations on a small cache): after every iteration the reservations of
    the running requests add up (before issue 11's fix the release used the reservation as of the release, which
    grows with a predicted one, and `reserved` drifted), the scheduler's count equals the requests', and every
    evicted request waits at the head of its client's queue."""
    import dataclasses

    from serving.engine.profiles import get_profile
    from serving.engine.simulator import Simulator
    from serving.scheduler import Scheduler
    prof = dataclasses.replace(get_profile("a100-llama2-7b"), kv_capacity_tokens=3000)
    pol = make_policy(policy)
    pol.behaviour = get_engine("equinox").replace(reserve="predicted", reserve_factor=0.5, admission="sum",
                                                  block_tokens=16)
    reqs = [R(i, f"c{i % 3}", i * 0.05, 200, 300) for i in range(30)]

    admitted = []

    class Checked(Scheduler):
        def update_from_output(self, out, now, dt):
            admitted.extend(r.rid for r in out.admitted)
            assert all(any(r is x for x, _ in out.prefills) for r in out.admitted)
            for v in out.preempted:  # (several of one client: each went to the front, so they lead its queue)
                n = sum(1 for x in out.preempted if x.client == v.client)
                assert v.rid not in self.running and v in list(self.policy.queues[v.client])[:n]
                assert v not in [r for r, _ in out.prefills] and v not in out.admitted
            tokens = super().update_from_output(out, now, dt)
            assert self.reserved == sum(self._reservation(r) for r in self.running.values())
            return tokens

    s = Checked(pol, prof)
    res = Simulator(s, reqs).run()
    assert res.preemptions == s.preemptions == sum(r.preemptions for r in reqs) > 0
    assert all(r.generated == r.output_tokens for r in reqs)
    assert sorted(set(admitted)) == sorted(r.rid for r in reqs)      # every admission was reported
    assert all(isinstance(t, float) for t, _, _ in res.backlog_log)  # requeues logged with their time
    assert summarize(res).finished == 30


def test_fair_preemption_evicts_the_leading_clients_newest_and_admits_the_head_at_once():
    """a holds the cache with four long requests, c (light) has one newer request running; b arrives. Fair
    preemption evicts a's newest (not c's, though c's is the newest of all), and b is admitted in that same
    iteration; while b would not fit even after an eviction, nothing is evicted."""
    import dataclasses

    from serving.engine.profiles import get_profile
    from serving.engine.simulator import Simulator
    from serving.scheduler import Scheduler

    def run(b_prompt):
        prof = dataclasses.replace(get_profile("a100-llama2-7b"), kv_capacity_tokens=6200)
        reqs = [R(i, "a", 0.0, 1000, 400) for i in range(4)] + [R(10, "c", 0.5, 100, 400),
                                                                R(20, "b", 3.0, b_prompt, 50)]
        pol = make_policy("equinox", config=EquinoxConfig(beta=1.0))
        pol.behaviour = get_engine("equinox").replace(fair_preempt=True, reserve="full", admission="sum",
                                                      block_tokens=16)
        events = []

        class Watch(Scheduler):
            def update_from_output(self, out, now, dt):
                if out.preempted:
                    events.append(([v.rid for v in out.preempted], [r.rid for r in out.admitted]))
                return super().update_from_output(out, now, dt)

        res = Simulator(Watch(pol, prof), reqs).run()
        assert all(r.generated == r.output_tokens for r in res.requests)
        return events
    events = run(1000)
    assert events and events[0][0] == [3] and 20 in events[0][1], events
    # b's 4,550 tokens fit beside the others only once three of a's have finished: one eviction, then, and b in
    events = run(4500)
    assert events == [([3], [20])], events


def test_equinox_scales_running_mean_then_window_of_100():
    p = make_policy("equinox")
    p._rescale(100.0, 2.0)                                           # the first request sets the scales
    assert (p.scale_u, p.scale_r) == (100.0, 2.0)
    p._rescale(0.5, 0.0)                                             # floors: a token, a microsecond
    assert p.scale_u == pytest.approx((100 + 1.0) / 2) and p.scale_r == pytest.approx((2.0 + 1e-6) / 2)
    for _ in range(98):
        p._rescale(50.5, 1.0)
    assert p._n == 100 and p.scale_u == pytest.approx(50.5)
    p._rescale(150.5, 1.0)                                           # the 101st: weight 1/100, not 1/101
    assert p.scale_u == pytest.approx(50.5 + (150.5 - 50.5) / 100)


def test_equinox_rekeys_only_past_five_percent_drift():
    p = make_policy("equinox")
    for i, c in enumerate("ab"):
        p.add(R(i, c, 0.0, 10, 10), 0.0, {})
    p._n = 10_000                                                    # weight 1/100 per update
    p.scale_u, p.scale_r, p.wait_all = 100.0, 1.0, 10.0
    p.key_scales = (100.0, 1.0, 10.0)
    p._dirty.clear()
    p._rescale(100.0 + 100 * 4.0, 1.0)                               # scale_u +4 %: kept
    assert p.key_scales == (100.0, 1.0, 10.0) and not p._dirty
    p._rescale(100.0 + 100 * 2.0, 1.0)                               # now +6 %: adopted, waiting clients re-keyed
    assert p.key_scales[0] == pytest.approx(p.scale_u) and p._dirty == {"a", "b"}
    p.key_scales, p._dirty = (p.scale_u, 1.0, 10.0), set()
    u = p.scale_u
    p._rescale(u, 1.0 + 100 * 0.04)                                  # scale_r +4 %: kept
    assert p.key_scales == (u, 1.0, 10.0)
    p._rescale(u, 1.0 + 100 * 0.03)                                  # +7 %: adopted
    assert p.key_scales[1] == pytest.approx(p.scale_r)
    p.key_scales = (p.scale_u, p.scale_r, 10.0)
    p.wait_all = 10.4                                                # +4 % mean wait: kept
    p._rescale(p.scale_u, p.scale_r)
    assert p.key_scales[2] == 10.0
    p.wait_all = 11.0                                                # +10 %: adopted
    p._rescale(p.scale_u, p.scale_r)
    assert p.key_scales[2] == 11.0
    q = make_policy("equinox", config=EquinoxConfig(latency_weight=0.0))  # no latency term: waits do not matter
    q.key_scales, q.wait_all = (q.scale_u, q.scale_r, 10.0), 20.0
    q._n = 10_000
    q._rescale(q.scale_u, q.scale_r)
    assert q.key_scales[2] == 10.0
    q.key_scales = (q.scale_u, q.scale_r, 0.0)                       # a first mean wait is adopted at once
    p2 = make_policy("equinox")
    p2._n, p2.wait_all, p2.key_scales = 10_000, 0.5, (p2.scale_u, p2.scale_r, 0.0)
    p2._rescale(p2.scale_u, p2.scale_r)
    assert p2.key_scales[2] == 0.5


def test_equinox_lift_never_lowers_and_finishing_reorders():
    p = make_policy("equinox", config=EquinoxConfig(alpha=0.0, beta=1.0, latency_weight=0.0))
    p.add(R(0, "a", 0.0, 10, 10), 0.0, {})
    p.rfc_base["b"] = 3.5
    p.add(R(1, "b", 0.0, 10, 10), 0.0, {})                           # b above a: not lifted, not lowered
    assert p.rfc("b") == pytest.approx(3.5)
    p.rfc_base["c"] = 0.2
    p.add(R(2, "c", 0.0, 10, 10), 0.0, {})                           # c above the lowest peer (a, 0): kept
    assert p.rfc("c") == pytest.approx(0.2)
    # a runs with a large prediction and waits again; it finishes having used little: it is first again
    r = p.pop(0.0)
    assert r.client == "a"
    r.predicted_gpu_s = 10.0
    p.on_admit(r, 0.0)
    p.add(R(3, "a", 0.1, 10, 10), 0.1, {})
    assert p.peek().client == "c"
    r.gpu_s = 0.1
    p.on_finish(r, 1.0)
    assert p.rfc("a") == pytest.approx(0.1) and p.peek().client == "a"


def test_windowed_service_interpolates_between_uneven_samples():
    import numpy as np

    from serving.engine.simulator import SimResult
    from serving.metrics import windowed_service
    res = SimResult([R(0, "a", 0.0, 1, 1), R(1, "b", 0.0, 1, 1)], ["a", "b"])
    res.samples_t = np.array([0.0, 3.0, 7.0, 12.0, 21.0])
    res.samples_service = np.array([[0, 0], [30, 3], [70, 3], [120, 40], [210, 40]], float)
    res.samples_gpu = res.samples_service / 100.0
    ends, rate = windowed_service(res, 5.0)
    assert list(ends) == [5.0, 10.0, 15.0, 20.0, 25.0]
    edges = np.arange(0.0, 30.0, 5.0)
    want = np.stack([np.diff(np.interp(edges, res.samples_t, res.samples_service[:, j])) / 5.0 for j in range(2)], 1)
    assert np.allclose(rate, want)                                   # np.interp per column is the definition
    assert np.allclose(rate[:, 0], [10.0, 10.0, 10.0, 10.0, 2.0])   # past the last sample: nothing more
    _, g = windowed_service(res, 5.0, resource=True)
    assert np.allclose(g, want / 100.0)
    with pytest.raises(ValueError, match="window must be positive seconds, got 0"):
        windowed_service(res, 0)


def test_ttft_jain_and_vtc_bound_by_hand():
    from serving.metrics import ttft_jain, vtc_bound
    a, b, c = R(0, "a", 1.0, 5, 10), R(1, "a", 2.0, 5, 10), R(2, "b", 0.0, 5, 10)
    a.first_token, b.first_token, c.first_token = 2.0, 4.0, 6.0     # a: mean 1.5 s, b: 6 s
    assert ttft_jain([a, b, c]) == pytest.approx((1.5 + 6) ** 2 / (2 * (1.5 ** 2 + 6 ** 2)))
    assert ttft_jain([a, b]) != ttft_jain([a, b])                    # one client: no index (NaN)
    assert vtc_bound(100, 50) == 200.0 and vtc_bound(300, 10) == 600.0
    assert vtc_bound(300, 10, w_p=2.0, w_q=1.0) == 1200.0


def test_trace_file_order_names_and_positions(tmp_path):
    p = tmp_path / "mix.json"
    p.write_text(json.dumps([{"t": 2, "client": "z", "in": 1, "out": 1, "weight": 2},
                             {"t": 1, "client": "y", "in": 1, "out": 3, "max_new_tokens": 3},
                             {"t": 1, "client": "x", "in": 1, "out": 1}]))
    wl = load_trace_file(p)
    assert [r.client for r in wl.requests] == ["y", "x", "z"]       # by time, ties in file order
    assert [r.rid for r in wl.requests] == [0, 1, 2] and wl.requests[0].max_new_tokens == 3   # == output: allowed
    assert (wl.name, wl.weights, wl.meta) == ("mix", {"z": 2.0}, {"source": str(p)})
    bad = tmp_path / "second.json"
    bad.write_text(json.dumps([{"t": 0, "client": "a", "in": 1, "out": 1}, {"t": 0, "client": "a", "in": 1}]))
    with pytest.raises(RequestError, match="second.json:2: field 'out' missing"):
        load_trace_file(bad)
    csv = tmp_path / "empty.csv"
    csv.write_text("t,client,in,out\n0,a,1,\n")
    with pytest.raises(RequestError, match="empty.csv:2: field 'out' missing"):
        load_trace_file(csv)


def test_adaptive_budget_aimd():
    """The adaptive ablation's AIMD: halve on a preemption (floor 64), shrink by 0.8 per slow step, grow by 32
    per step while requests wait (cap 4 x the base budget), nothing otherwise."""
    from serving.engine.profiles import get_profile
    from serving.scheduler import Scheduler
    pol = make_policy("equinox")
    pol.behaviour = get_engine("equinox").replace(adaptive=True, tbt_target_s=0.1)
    s = Scheduler(pol, get_profile("a100-llama2-7b"))
    assert s.budget == 512
    s._adapt(0.05, 3)                                                # fast steps, nobody waiting: unchanged
    assert s.budget == 512
    pol.add(R(0, "a", 0.0, 1, 1), 0.0, {})
    s._adapt(0.05, 3)
    assert s.budget == 512 + 96
    s._adapt(0.2, 2)                                                 # slow: 0.8 per step
    assert s.budget == int(608 * 0.8 ** 2)
    s._adapt(0.05, 1, preempted=True)
    assert s.budget == int(608 * 0.64) // 2
    for _ in range(10):
        s._adapt(0.05, 1, preempted=True)
    assert s.budget == 64
    s._adapt(0.05, 10_000)
    assert s.budget == 4 * 512
    s._adapt(0.5, 100)
    assert s.budget == 64


# third round --------------------------------------------------------------------------------------------
def test_behaviour_refuses_booleans_strings_and_zero():
    from serving.engine.behaviour import EngineBehaviour
    for kw, msg in [({"max_batch": True}, "max_batch must be an integer >= 1, got True"),
                    ({"batch_max_tokens": -2}, "batch_max_tokens must be an integer >= -1, got -2"),
                    ({"reserve_factor": True}, "reserve_factor must be a positive number, got True"),
                    ({"tbt_target_s": "x"}, "tbt_target_s must be a positive number, got 'x'"),
                    ({"tbt_target_s": 0}, "engine custom: tbt_target_s must be a positive number, got 0")]:
        with pytest.raises(ValueError, match=msg):
            EngineBehaviour(**kw)


def test_equinox_config_and_constructor():
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        EquinoxConfig(beta=-1)
    with pytest.raises(ValueError, match="^alpha and beta cannot both be 0$"):
        EquinoxConfig(alpha=0, beta=0)
    from serving.policies.equinox import EquinoxPolicy
    p = EquinoxPolicy(get_engine("artifact"), w_q=5.0)
    assert p.behaviour.name == "artifact" and p.w_q == 5.0


def test_equinox_wait_is_measured_from_arrival_and_priority_credit_under_a_second():
    p = make_policy("equinox")
    p.on_admit(R(0, "a", 5.0, 10, 10), 12.0)
    assert p.wait["a"] == pytest.approx(7.0) and p.wait_all == pytest.approx(7.0)
    q = make_policy("equinox", config=EquinoxConfig(alpha=1.0, beta=1.0, latency_weight=0.5))
    q.key_scales = (100.0, 4.0, 0.5)
    assert q.priority("never-seen") == pytest.approx(0.0)            # no counter, no measurement, mean wait
    q.counter["a"], q.wait["a"] = 300.0, 1.25                         # 2.5x a mean wait of 0.5 s: clipped
    assert q.priority("a") == pytest.approx((300 - 50) / 100)


def test_rescale_waits_under_a_second():
    p = make_policy("equinox")
    p._n, p.wait_all = 10_000, 0.51
    p.key_scales = (p.scale_u, p.scale_r, 0.5)                        # +2 %: kept
    p._rescale(p.scale_u, p.scale_r)
    assert p.key_scales[2] == 0.5


def test_windowed_service_before_the_first_sample_and_dense_samples():
    import numpy as np

    from serving.engine.simulator import SimResult
    from serving.metrics import windowed_service
    res = SimResult([R(0, "a", 0.0, 1, 1)], ["a"])
    res.samples_t = np.array([1.0, 1.25, 1.5, 3.0])                 # first sample after t = 0, spacing < 1 s
    res.samples_service = np.array([[10.0], [12.0], [16.0], [16.0]])
    ends, rate = windowed_service(res, 0.5)
    edges = np.arange(0.0, 3.5, 0.5)
    want = np.diff(np.interp(edges, res.samples_t, res.samples_service[:, 0])) / 0.5
    assert np.allclose(rate[:, 0], want) and rate[0, 0] == 0.0       # nothing extrapolated before t = 1


def test_trace_unknown_field_lists_the_fields(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text('{"t": 0, "client": "a", "in": 1, "out": 1, "prio": 3}\n')
    with pytest.raises(RequestError, match=r"u.jsonl:1: unknown field 'prio' \(fields: client, deadline, in, "
                                           r"max_new_tokens, out, t, weight\)"):
        load_trace_file(p)


def test_load_workload_passes_its_options_on():
    from serving.workloads import load_workload
    a = load_workload("sharegpt", seed=3, n=50, rate=2.0, max_new_tokens=3000)
    b = load_workload("sharegpt", seed=4, n=50, rate=2.0)
    assert len(a.requests) == 50 and a.meta["rate"] == 2.0
    assert [r.arrival for r in a.requests] != [r.arrival for r in b.requests]           # the seed reaches it
    assert all(r.max_new_tokens is not None and r.max_new_tokens >= r.output_tokens for r in a.requests)
    assert all(r.max_new_tokens is None for r in b.requests)
    assert all(r.max_new_tokens == max(1024, r.output_tokens)
               for r in load_workload("lmsys", max_new_tokens=1024).requests)
    s = load_workload("shape-skew", seed=5, duration=30.0)
    assert max(r.arrival for r in s.requests) < 30.0
    assert s.requests[0].arrival != load_workload("shape-skew", seed=6, duration=30.0).requests[0].arrival


def test_heads_version_changes_whenever_a_head_may():
    p = make_policy("vtc")
    seen = [p.heads_version]
    p.add(R(0, "a", 0.0, 1, 1), 0.0, {})                             # a new head
    seen.append(p.heads_version)
    p.add(R(1, "a", 0.0, 1, 1), 0.0, {})                             # behind it: no head changed
    assert p.heads_version == seen[-1]
    for _ in range(2):
        p.pop(0.0)                                                   # each pop changes a head
        seen.append(p.heads_version)
    assert len(set(seen)) == len(seen), seen
