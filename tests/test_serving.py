"""Equinox, VTC and FCFS: counter arithmetic by hand, fairness bounds, equivalences, engine invariants, bad input."""

import json

import pytest

from serving.engine.behaviour import get_engine
from serving.engine.profiles import get_profile
from serving.engine.simulator import Simulator
from serving.metrics import jain, summarize, vtc_bound
from serving.policies import EquinoxConfig, make_policy
from serving.policies.base import EngineBehaviour
from serving.predictors import MoPE, SingleModel, online_l1
from serving.request import Request, RequestError
from serving.run import simulate
from serving.scheduler import Scheduler
from serving.workloads import SUITES, load_trace_file, load_workload, suite_workload

R = Request


# VTC counter arithmetic (hand-computed) ---------------------------------------------------------------
def test_vtc_charges_prompt_at_admission_and_tokens_as_produced():
    p = make_policy("vtc")
    a = R(0, "a", 0.0, 100, 10)
    b = R(1, "b", 0.0, 40, 10, weight=2.0)
    p.add(a, 0.0, {})
    p.add(b, 0.0, {})
    assert p.counter == {"a": 0.0, "b": 0.0}
    first = p.pop(0.0)               # tie at 0: client name order
    assert first is a
    p.on_admit(a, 0.0)
    assert p.counter["a"] == 100.0   # w_p * 100
    assert p.pop(0.0) is b
    p.on_admit(b, 0.0)
    assert p.counter["b"] == 20.0    # w_p * 40 / weight 2
    p.on_tokens(a, 3, 1.0)
    p.on_tokens(b, 3, 1.0)
    assert p.counter == {"a": 106.0, "b": 23.0}  # + w_q * 3, + w_q * 3 / 2


def test_vtc_lift_to_min_of_waiting_clients():
    p = make_policy("vtc")
    p.counter.update({"a": 50.0, "b": 80.0, "c": 10.0})
    p.add(R(0, "a", 0.0, 1, 1), 0.0, {})
    p.add(R(1, "b", 0.0, 1, 1), 0.0, {})
    # c becomes backlogged while a (50) and b (80) wait: lifted to 50
    p.add(R(2, "c", 1.0, 1, 1), 1.0, {})
    assert p.counter["c"] == 50.0
    # a counter above the minimum is never lowered
    p.counter["d"] = 70.0
    p.add(R(3, "d", 1.0, 1, 1), 1.0, {})
    assert p.counter["d"] == 70.0
    # a second request from an already-backlogged client does not lift
    p.counter["c"] = 0.0
    p.add(R(4, "c", 2.0, 1, 1), 2.0, {})
    assert p.counter["c"] == 0.0


def test_vtc_lift_only_against_waiting_clients():
    """The artifact lifts against clients with waiting requests only: with nobody else waiting, clients that
    merely have requests running do not lift the newcomer (vtc_req_queue.py append())."""
    p = make_policy("vtc")
    p.counter.update({"a": 5.0, "b": 40.0, "c": 90.0})
    p.add(R(0, "a", 0.0, 1, 1), 0.0, {"b": 1, "c": 2, "a": 0})
    assert p.counter["a"] == 5.0
    p.add(R(1, "b", 0.0, 1, 1), 0.0, {"c": 2})   # a waits now: b (40) is not lowered to a's 5
    assert p.counter["b"] == 40.0
    p.counter["c"] = 1.0
    p.add(R(2, "c", 0.0, 1, 1), 0.0, {})         # a (5) and b (40) wait: c is lifted to 5
    assert p.counter["c"] == 5.0
    lcf = make_policy("lcf")                     # least counter first: the same counter, never lifted
    lcf.counter.update({"a": 50.0, "b": 1.0})
    lcf.add(R(0, "a", 0.0, 1, 1), 0.0, {})
    lcf.add(R(1, "b", 0.0, 1, 1), 0.0, {})
    assert lcf.counter["b"] == 1.0 and lcf.pop(0.0).client == "b"


def test_vtc_ties_go_to_the_client_seen_first():
    p = make_policy("vtc")
    for i, c in enumerate(["zed", "amy", "bob"]):
        p.add(R(i, c, 0.0, 1, 1), 0.0, {})
    assert [p.pop(0.0).client for _ in range(3)] == ["zed", "amy", "bob"]


def test_vtc_predicted_charges_prediction_then_overrun_and_refund():
    """vtc-pred (the artifact's vtc_pred_len_req_queue): prompt + the client's predicted output at admission;
    tokens beyond it as produced; the unused prediction refunded at completion; window-5 average."""
    p = make_policy("vtc-pred")
    r = R(0, "a", 0.0, 10, 30)
    p.add(r, 0.0, {})
    p.pop(0.0)
    p.on_admit(r, 0.0)
    assert p.counter["a"] == 10                  # no history: predicted 0
    p.on_step({"a": 30}, {}, 1.0)
    assert p.counter["a"] == 10 + 2 * 30
    p.on_finish(r, 1.0)
    assert p.predict_len["a"] == 30.0            # the first output sets the prediction
    r2 = R(1, "a", 2.0, 10, 5)
    p.add(r2, 2.0, {})
    p.pop(2.0)
    p.on_admit(r2, 2.0)
    assert p.counter["a"] == 70 + 10 + 2 * 30    # prompt + predicted 30
    p.on_step({"a": 5}, {}, 3.0)
    assert p.counter["a"] == 140                 # within the prediction: nothing more
    p.on_finish(r2, 3.0)
    assert p.counter["a"] == 140 - 2 * 25        # 25 predicted tokens never produced: refunded
    assert p.predict_len["a"] == pytest.approx((30 * 4 + 5) / 5)
    o = make_policy("vtc-oracle")                # the oracle: the whole output at admission, nothing after
    r3 = R(2, "b", 0.0, 10, 7, max_new_tokens=9)
    o.add(r3, 0.0, {})
    o.pop(0.0)
    o.on_admit(r3, 0.0)
    o.on_step({"b": 7}, {}, 1.0)
    assert o.counter["b"] == 10 + 2 * 9


# fairness on the VTC suites -------------------------------------------------------------------------
@pytest.mark.parametrize("suite", ["overload", "overload-multi", "on_off_overload"])
def test_vtc_bound_holds_under_overload(suite):
    bound = vtc_bound(256, 10_000)  # longest prompt 256, A10G batch holds 10,000 tokens
    assert bound == 40_000
    gaps = {}
    for dur in (150.0, 300.0):
        wl = suite_workload(suite, duration=dur)
        v = summarize(simulate(wl.requests, "vtc", "a10g-llama-7b"))
        f = summarize(simulate(wl.requests, "fcfs", "a10g-llama-7b"))
        assert v.max_gap <= bound == v.vtc_bound
        gaps[dur] = (v.max_gap, f.max_gap)
    # FCFS's gap grows with the run; VTC's does not
    assert gaps[300.0][1] > 1.5 * gaps[150.0][1] and gaps[300.0][1] > bound
    assert gaps[300.0][0] <= 1.2 * gaps[150.0][0] + 1024


def test_vtc_bound_holds_on_weighted_service():
    """The gap is measured on service over weight: weighted VTC stays within the bound, FCFS (equal raw service
    to clients of weights 1 and 2) does not."""
    wl = suite_workload("overload-weighted", duration=300.0)
    v = summarize(simulate(wl.requests, "vtc", "a10g-llama-7b"))
    f = summarize(simulate(wl.requests, "fcfs", "a10g-llama-7b"))
    assert v.max_gap <= 0.5 * v.vtc_bound < v.vtc_bound < f.max_gap


def test_vtc_charges_a_prompt_once_across_preemptions():
    for name in ("vtc", "vtc-pred", "equinox"):
        p = make_policy(name)
        r = R(0, "a", 0.0, 100, 10)
        p.add(r, 0.0, {})
        p.pop(0.0).predicted_output = 10.0
        p.on_admit(r, 0.0)
        charged = p.counter["a"]
        assert charged == 100.0             # (vtc-pred: no history yet, predicted 0)
        r.preemptions = 1                   # the engine evicted it: back to the head of the queue
        p.on_evict(r)
        p.requeue_front(r, {}, 1.0)
        p.pop(1.0)
        p.on_admit(r, 1.0)
        assert p.counter["a"] == charged, name


def test_weighted_vtc_serves_in_proportion():
    wl = suite_workload("overload-weighted", duration=120.0)
    res = simulate(wl.requests, "vtc", "a10g-llama-7b")
    served = {c: sum(2 * r.generated for r in res.requests if r.client == c and r.admitted is not None and r.admitted < 100)
              for c in ("client0", "client1")}
    assert 1.6 < served["client1"] / served["client0"] < 2.4, served


@pytest.mark.parametrize("engine", ["artifact", "equinox"])
@pytest.mark.parametrize("workload", ["lmsys", "sharegpt"])
def test_equinox_with_beta_and_lambda_zero_is_vtc(workload, engine):
    """Equinox(beta=0, lambda=0) orders clients by VTC's counter: on the same engine every admission happens
    in the same order at the same time as VTC's (the heap never mixes keys of different scales)."""
    kw = {"n": 1500, "rate": 3.0} if workload == "sharegpt" else {}
    wl = load_workload(workload, **kw)
    beh = get_engine(engine)
    a = simulate(wl.requests, "vtc", "a100-llama2-7b" if workload == "sharegpt" else "a10g-llama-7b", engine=beh)
    b = simulate(wl.requests, "equinox", "a100-llama2-7b" if workload == "sharegpt" else "a10g-llama-7b",
                 engine=beh, policy_kw={"config": EquinoxConfig(alpha=1.0, beta=0.0, latency_weight=0.0)})
    order_a = [(r.admitted, r.rid) for r in sorted(a.requests, key=lambda r: (r.admitted, r.seq))]
    order_b = [(r.admitted, r.rid) for r in sorted(b.requests, key=lambda r: (r.admitted, r.seq))]
    assert order_a == order_b
    # while the resource and latency terms do change it (the test can fail)
    e = simulate(wl.requests, "equinox", "a100-llama2-7b" if workload == "sharegpt" else "a10g-llama-7b", engine=beh)
    assert [(r.admitted, r.rid) for r in sorted(e.requests, key=lambda r: (r.admitted, r.seq))] != order_a


def test_equinox_resource_counter_by_hand():
    """RFC = lift + measured + (predicted - measured, for running requests, when positive)."""
    p = make_policy("equinox", config=EquinoxConfig(alpha=0.0, beta=1.0, latency_weight=0.0))
    a = R(0, "a", 0.0, 100, 10, weight=2.0)
    p.add(a, 0.0, {})
    r = p.pop(0.0)
    r.predicted_output, r.predicted_gpu_s = 10.0, 1.0
    p.on_admit(r, 0.0)
    assert p.rfc("a") == pytest.approx(0.5)           # before execution: the prediction, over the weight
    p.on_step({"a": 1}, {"a": 0.2}, 0.1)
    assert p.rfc("a") == pytest.approx(0.5)           # measured 0.2 replaces 0.2 of the prediction
    p.on_step({"a": 1}, {"a": 0.5}, 0.2)
    assert p.rfc("a") == pytest.approx(0.7)           # an overrun counts as it happens
    r.gpu_s = 0.7
    p.on_finish(r, 0.3)
    assert p.rfc("a") == pytest.approx(0.7)           # after: the measurement alone
    r2 = R(1, "a", 0.3, 100, 10, weight=2.0)
    p.add(r2, 0.3, {})
    p.pop(0.3).predicted_gpu_s = 3.0
    p.on_admit(r2, 0.3)
    p.on_step({}, {"a": 0.1}, 0.4)
    r2.gpu_s = 0.1
    assert p.rfc("a") == pytest.approx(0.7 + 1.5)     # running: its prediction (3.0 over weight 2) stands
    p.on_evict(r2)                                    # evicted: its prediction leaves, and so does the work
    assert p.rfc("a") == pytest.approx(0.7)           # thrown away (the client is not charged for it)


def test_equinox_resource_counter_is_lifted():
    p = make_policy("equinox", config=EquinoxConfig(alpha=0.0, beta=1.0, latency_weight=0.0))
    for i, c in enumerate("abc"):
        p.add(R(i, c, 0.0, 10, 10), 0.0, {})
    p.rfc_base.update({"a": 5.0, "b": 2.0, "c": 9.0})
    p._dirty.update("abc")
    p.rfc_base["d"] = 0.5                    # d was idle with little use: lifted to the minimum waiting (b: 2)
    p.add(R(3, "d", 0.0, 10, 10), 0.0, {})
    assert p.rfc("d") == pytest.approx(2.0)
    assert [p.pop(0.0).client for _ in range(4)] == ["b", "d", "a", "c"]


# predictors ---------------------------------------------------------------------------------------
def test_mope_is_deterministic_and_beats_the_single_model():
    reqs = load_workload("lmsys").requests
    m1, m2 = MoPE(), MoPE()
    for r in reqs[:300]:
        m1.observe(r.client, r.prompt_tokens, r.output_tokens)
        m2.observe(r.client, r.prompt_tokens, r.output_tokens)
    preds1 = [m1.predict_output(r.client, r.prompt_tokens) for r in reqs[300:400]]
    assert preds1 == [m2.predict_output(r.client, r.prompt_tokens) for r in reqs[300:400]]
    assert preds1 == [m1.predict_output(r.client, r.prompt_tokens) for r in reqs[300:400]]  # no state change
    assert online_l1(reqs, MoPE()) < online_l1(reqs, SingleModel())


# engine invariants -----------------------------------------------------------------------------------
def _run_checked(requests, policy, profile, behaviour=None):
    """Run the simulator step by step, checking the token budget and the KV cache at every step, and checking
    the scheduler's aggregate bookkeeping (serving.batch) against the requests' own counters."""
    prof = get_profile(profile)
    pol = make_policy(policy)
    if behaviour:
        pol.behaviour = EngineBehaviour(**{**pol.behaviour.__dict__, **behaviour})
    sched = Scheduler(pol, prof)
    orig_schedule, orig_update = sched.schedule, sched.update_from_output
    seen = {"iters": 0, "max_tokens": 0, "folded_prefill": 0}
    bt = pol.behaviour.block_tokens

    def explicit():
        batch = sched.batch()
        assert sched.kv_total == sum(r.kv_tokens for r in batch), "aggregate KV tokens drifted"
        assert sched.kv_used() == sum(sched._blocks(r.kv_tokens) for r in batch), "aggregate KV blocks drifted"
        return batch

    def schedule(now):
        out = orig_schedule(now)
        decodes = out.decodes
        assert len(decodes) == out.n_decode and sum(r.kv_tokens for r in decodes) == out.decode_kv
        assert all(not r.in_prefill for r in decodes)
        if pol.behaviour.chunked_prefill:
            tokens = len(decodes) + sum(c for _, c in out.prefills)
            assert sum(c for _, c in out.prefills) <= max(sched.budget - len(decodes), 0), "budget exceeded"
            seen["max_tokens"] = max(seen["max_tokens"], tokens)
        grow = {id(r): c for r, c in out.prefills}
        for r in decodes:
            grow[id(r)] = grow.get(id(r), 0) + 1
        after = sum(sched._blocks(r.kv_tokens + grow.get(id(r), 0)) for r in explicit())
        assert after <= sched.kv_capacity, f"KV {after} > capacity {sched.kv_capacity}"
        seen["iters"] += 1
        return out

    def update(out, now, dt):
        seen["folded_prefill"] += out.steps > 1 and bool(out.prefills)
        tokens = orig_update(out, now, dt)
        batch = explicit()  # after every (possibly folded) step the cache still fits, block by block
        assert sum(-(-r.kv_tokens // bt) * bt for r in batch) <= sched.kv_capacity
        assert all(r.generated < r.output_tokens for r in batch)
        return tokens

    sched.schedule, sched.update_from_output = schedule, update
    res = Simulator(sched, requests).run()
    return res, seen


@pytest.mark.parametrize("policy,profile,behaviour", [("equinox", "a10g-llama-7b", None),
                                                      ("vtc", "a10g-llama-7b", None),
                                                      ("equinox", "a100-llama2-7b", None),
                                                      ("equinox", "a10g-llama-7b", {"fair_preempt": True}),
                                                      ("equinox", "a10g-llama-7b", {"reserve": "predicted", "reserve_factor": 1.5, "admission": "sum", "block_tokens": 16})])
def test_budget_and_kv_never_exceeded(policy, profile, behaviour):
    wl = load_workload("sharegpt", n=300, rate=4.0)
    for r in wl.requests:  # fit the small A10G cache
        r.prompt_tokens = min(r.prompt_tokens, 3000)
        r.output_tokens = min(r.output_tokens, 1000)
        r.max_new_tokens = 1000
    res, seen = _run_checked(wl.requests, policy, profile, behaviour)
    assert seen["iters"] > 100
    assert all(r.finished is not None and r.generated == r.output_tokens for r in res.requests)
    assert res.kv_peak <= res.kv_capacity


def test_fair_preemption_makes_room_for_a_client_far_behind():
    """Client a fills the KV cache (full reservations); b arrives and waits. With fair preemption, once a leads
    b by more than the margin, a's newest request is evicted (recomputed later) and b is admitted early."""
    import dataclasses
    prof = dataclasses.replace(get_profile("a100-llama2-7b"), kv_capacity_tokens=8000)
    out = {}
    for fp in (False, True):
        reqs = [R(i, "a", 0.0, 1000, 400, max_new_tokens=400) for i in range(12)] + \
               [R(100, "b", 1.0, 1000, 50, max_new_tokens=50)]
        pol = make_policy("equinox", config=EquinoxConfig(beta=1.0))  # the margin is in HF units: beta scales it
        pol.behaviour = dataclasses.replace(pol.behaviour, fair_preempt=fp, reserve="full", admission="sum", block_tokens=16)
        res = Simulator(Scheduler(pol, prof), reqs).run()
        assert all(r.generated == r.output_tokens for r in res.requests)
        out[fp] = (next(r for r in res.requests if r.client == "b").ttft,
                   {r.rid: r.preemptions for r in res.requests if r.preemptions})
    assert out[False][1] == {}
    assert out[True][1] == {4: 1}          # the newest of a's five running requests, once
    assert out[True][0] < 0.6 * out[False][0]


def test_chunked_prefill_respects_budget_exactly():
    reqs = [R(i, f"c{i % 3}", 0.01 * i, 1500, 20) for i in range(30)]
    res, seen = _run_checked(reqs, "equinox", "a100-llama2-7b", {"adaptive": False, "token_budget": 256})
    assert seen["max_tokens"] == 256  # the budget is used fully and never exceeded
    assert seen["folded_prefill"] > 0  # full-budget chunks of the 1,500-token prompts were folded


def _unfolded():
    """A scheduler class whose every iteration is simulated one by one (no folding)."""
    class Unfolded(Scheduler):
        def quiet_steps(self, out):
            return 1
    return Unfolded


def _fold_and_step(policy, workload, kw, policy_kw=None):
    wl = load_workload(workload, **kw)
    prof = "a10g-llama-7b" if workload == "overload" else "a100-llama2-7b"
    runs = []
    for cls in (Scheduler, _unfolded()):
        reqs = [r.fresh() for r in wl.requests]
        sched = cls(make_policy(policy, **(policy_kw or {})), get_profile(prof))
        res = Simulator(sched, reqs).run()
        assert len(sched.finished) == len(wl.requests)
        runs.append((res, sched))
    assert len(runs[0][0].tbt) < len(runs[1][0].tbt) / 2, "folding should simulate far fewer steps"
    return runs


def _assert_same_schedule(a, sa, b, sb):
    """Two runs (result, scheduler) gave the same schedule: iterations, finish order, per request its
    preemptions, tokens and admission, first-token and finish times (up to float rounding)."""
    assert a.iterations == b.iterations
    assert [r.rid for r in sa.finished] == [r.rid for r in sb.finished]
    for x, y in zip(sorted(a.requests, key=lambda r: r.rid), sorted(b.requests, key=lambda r: r.rid)):
        assert (x.preemptions, x.generated) == (y.preemptions, y.generated)
        for f in ("admitted", "first_token", "finished"):
            assert getattr(x, f) == pytest.approx(getattr(y, f), rel=1e-9, abs=1e-9), (x.rid, f)


@pytest.mark.parametrize("policy,workload,kw", [("equinox", "sharegpt", {"n": 400, "rate": 3.0}),
                                                ("vtc", "sharegpt", {"n": 400, "rate": 3.0}),
                                                ("equinox", "overload", {}),
                                                # many clients waiting: the head's own client not decoding, the
                                                # head stays the head while decodes run (fixed-head folds)
                                                ("vtc", "sharegpt", {"n": 1500, "rate": 4.0, "clients": 300}),
                                                ("equinox", "sharegpt", {"n": 1500, "rate": 4.0, "clients": 300})])
def test_folding_is_exact(policy, workload, kw):
    """Folded decode steps and folded prefill chunks give the schedule of simulating every iteration: same
    admissions, same order, the same times up to float rounding. (Equinox with its token counter only: the
    GPU-second counter sums float attributions whose rounding differs between the two, which can flip a
    near-tie; test_folding_keeps_equinox_results covers the default.)"""
    pkw = {"config": EquinoxConfig(beta=0.0)} if policy == "equinox" else {}
    (a, sa), (b, sb) = _fold_and_step(policy, workload, kw, pkw)
    _assert_same_schedule(a, sa, b, sb)
    assert a.busy == pytest.approx(b.busy, rel=1e-9) and a.compute == pytest.approx(b.compute, rel=1e-9)


@pytest.mark.parametrize("engine", ["preempting", "overflowing"])
def test_folding_is_exact_with_preemptions(engine):
    """Folding beside evictions (fair preemption; KV overflow with predicted reservations, in prefill and in
    decode): the schedule of simulating every iteration, preemptions included."""
    wl, prof, beh = _lazy_case(engine)
    runs = []
    for cls in (Scheduler, _unfolded()):
        pol = make_policy("vtc")
        pol.behaviour = beh
        sched = cls(pol, prof)
        runs.append((Simulator(sched, [r.fresh() for r in wl.requests]).run(), sched))
    (a, sa), (b, sb) = runs
    # (with evictions every few steps, fewer steps fold: 6,251 of 10,825 when overflowing)
    assert len(a.tbt) < 0.7 * len(b.tbt), "folding should simulate fewer steps"
    assert a.preemptions == b.preemptions > 100
    _assert_same_schedule(a, sa, b, sb)


def test_decodes_fold_while_a_head_whose_client_decodes_nothing_cannot_fit():
    """With hundreds of clients waiting, some waiting head always fits in the smallest-over-all-heads bound, so
    only a head whose priority cannot move lets blocked decode steps fold: it is found and used."""
    wl = load_workload("sharegpt", n=1500, rate=4.0, clients=300)
    seen = {"fixed": 0}

    class Counting(Scheduler):
        def quiet_steps(self, out):
            k = super().quiet_steps(out)
            if k > 1 and not out.prefills and self._blocked_entry is not None:
                head = self.policy.peek()
                assert head.client not in self.dec.per_client
                assert self._blocked_entry == self._slora_entry(head)
                seen["fixed"] += 1
            return k

    sched = Counting(make_policy("vtc"), get_profile("a100-llama2-7b"))
    Simulator(sched, [r.fresh() for r in wl.requests]).run()
    assert seen["fixed"] > 100


@pytest.mark.parametrize("policy,engine", [("vtc", "artifact"), ("vtc", "equinox"), ("equinox", "equinox")])
def test_no_admission_possible_means_no_head_fits(policy, engine):
    """_admission_possible() lets decode steps fold only when it says no: then no waiting head passes the
    admission test (every head, from the bound over all of them; or the head alone when it cannot move)."""
    wl = load_workload("sharegpt", n=400, rate=4.0, clients=40)
    seen = {"no": 0}
    behaviour = get_engine(engine)

    class Checked(Scheduler):
        def _admission_possible(self):
            ok = super()._admission_possible()
            if not ok:
                seen["no"] += 1
                heads = [self.policy.peek()] if self._blocked_entry is not None else \
                    [q[0] for q in self.policy.queues.values() if q]
                assert not any(self._fits(h) for h in heads)
            return ok

    sched = Checked(make_policy(policy, behaviour=behaviour), get_profile("a100-llama2-7b"))
    Simulator(sched, [r.fresh() for r in wl.requests]).run()
    assert seen["no"] > 20


def test_decodes_fold_while_the_batch_is_full():
    """With max_batch requests running nothing can be admitted until one finishes: the decode steps in between
    fold (and give the step-by-step schedule)."""
    import dataclasses

    wl = load_workload("sharegpt", n=300, rate=4.0, clients=50)
    engine = dataclasses.replace(get_engine("equinox"), max_batch=4)
    runs = []
    for cls in (Scheduler, _unfolded()):
        sched = cls(make_policy("vtc", behaviour=engine), get_profile("a100-llama2-7b"))
        res = Simulator(sched, [r.fresh() for r in wl.requests]).run()
        runs.append((res, [r.rid for r in sched.finished]))
    (a, fa), (b, fb) = runs
    assert fa == fb and a.iterations == b.iterations
    assert len(a.tbt) < len(b.tbt) / 10, (len(a.tbt), len(b.tbt))


def test_folding_keeps_equinox_results():
    (a, _), (b, _) = _fold_and_step("equinox", "sharegpt", {"n": 400, "rate": 3.0})
    sa, sb = summarize(a), summarize(b)
    for f in ("throughput_tok_s", "ttft_mean", "latency_mean", "jain_latency"):
        assert getattr(sa, f) == pytest.approx(getattr(sb, f), rel=0.02), f


@pytest.mark.parametrize("profile", ["a100-llama2-7b", "a10g-llama-7b"])
def test_folded_step_times_match_step_by_step(profile):
    """Profile.decode_steps_time (closed form over compute- and memory-bound steps) and decode_steps_within
    against summing Profile.iteration step by step."""
    p = get_profile(profile)
    for n, kv0 in ((1, 10), (8, 4000), (256, 1000), (256, 60_000), (64, 100)):
        times = [0.0]
        for j in range(400):
            times.append(times[-1] + p.iteration([], n, kv0 + j * n)[0])
        for k in (1, 2, 7, 100, 400):
            assert p.decode_steps_time(n, kv0, k) == pytest.approx(times[k], rel=1e-9), (n, kv0, k)
        for limit in (times[1] * 0.5, times[3] * (1 + 1e-9), times[57] * (1 - 1e-9), times[399] * 1.01, 1e9):
            want = max(1, max(j for j in range(401) if times[j] <= limit) if limit >= times[1] else 1)
            assert p.decode_steps_within(n, kv0, 400, limit) == min(want, 400), (n, kv0, limit)


def _eager():
    """A scheduler class that delivers every charge at once: after each iteration and before each decision (the
    reference for the lazy delivery of serving.scheduler)."""
    class Eager(Scheduler):
        def schedule(self, now):
            self.settle(now)
            return super().schedule(now)

        def update_from_output(self, out, now, dt):
            tokens = super().update_from_output(out, now, dt)
            self.settle(now)
            more, gpu = self.take_delivered()
            for c, n in more.items():
                tokens[c] = tokens.get(c, 0) + n
            for c, g in gpu.items():
                self.last_gpu[c] = self.last_gpu.get(c, 0.0) + g
            return tokens
    return Eager


def _lazy_case(engine):
    """Many clients that both run and wait; "preempting": Equinox's engine reserving whole outputs in a small
    KV cache, where fair preemption evicts hundreds of requests; "overflowing": reserving half the predicted
    output there, so the engine evicts to make KV room (thousands, in prefill and in decode)."""
    import dataclasses
    wl = load_workload("sharegpt", n=700, rate=6.0, clients=40)
    prof = get_profile("a100-llama2-7b")
    if engine == "preempting":
        prof = dataclasses.replace(prof, kv_capacity_tokens=40_000)
        return wl, prof, dataclasses.replace(get_engine("equinox"), reserve="full", admission="sum", block_tokens=16,
                                             fair_preempt=True)
    if engine == "overflowing":
        prof = dataclasses.replace(prof, kv_capacity_tokens=40_000)
        return wl, prof, dataclasses.replace(get_engine("equinox"), reserve="predicted", reserve_factor=0.5,
                                             admission="sum", block_tokens=16, fair_preempt=True)
    return wl, prof, get_engine(engine)


@pytest.mark.parametrize("policy,engine", [("vtc", "equinox"), ("vtc", "artifact"), ("vtc-pred", "artifact"),
                                           ("vtc", "preempting"), ("lcf", "preempting"),
                                           ("vtc-pred", "preempting"), ("vtc", "overflowing"),
                                           ("equinox", "equinox"), ("equinox", "preempting")])
def test_lazy_charges_give_the_eager_schedule(policy, engine):
    """Decode charges reach the policy lazily (the clients at the top of its order, the waiting ones at a lift,
    every running one at a fair-preemption look): with token counters (exact in floats) the schedule is the
    one of delivering every charge at every step, and so are the counters and the service tables. Equinox's
    GPU-second counter sums floats in another order (a near-tie could flip on another workload: here none
    does)."""
    wl, prof, beh = _lazy_case(engine)
    runs = []
    for cls in (Scheduler, _eager()):
        reqs = [r.fresh() for r in wl.requests]
        pol = make_policy(policy)
        pol.behaviour = beh
        sched = cls(pol, prof)
        res = Simulator(sched, reqs).run()
        runs.append((res, sched, sorted(reqs, key=lambda r: (r.admitted, r.seq))))
    (a, sa, oa), (b, sb, ob) = runs
    assert [r.rid for r in oa] == [r.rid for r in ob]
    assert a.iterations == b.iterations and a.preemptions == b.preemptions
    assert (a.preemptions > 100) == (engine in ("preempting", "overflowing"))
    ca, cb = sa.policy.counters(), sb.policy.counters()
    assert ca["vtc"] == cb["vtc"]
    if "rfc" in ca:  # GPU-seconds: float sums in another order (the schedule above is the same on these runs)
        assert ca["rfc"] == pytest.approx(cb["rfc"], rel=1e-9)
    assert (a.samples_service == b.samples_service).all()
    assert a.samples_gpu == pytest.approx(b.samples_gpu, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("engine", ["equinox", "preempting", "overflowing"])
def test_service_tables_count_every_charge(engine):
    """The simulator's last sample holds every client's whole service (w_p * prompt once + w_q * output: a
    recomputed prompt is not service twice) and whole GPU time, with charges delivered lazily."""
    wl, prof, beh = _lazy_case(engine)
    pol = make_policy("equinox")
    pol.behaviour = beh
    sched = Scheduler(pol, prof)
    res = Simulator(sched, [r.fresh() for r in wl.requests]).run()
    assert (res.preemptions > 100) == (engine in ("preempting", "overflowing"))
    want = {}
    for r in res.requests:
        want[r.client] = want.get(r.client, 0.0) + r.prompt_tokens + 2.0 * r.output_tokens
    assert dict(zip(res.clients, res.samples_service[-1])) == pytest.approx(want, rel=1e-12)
    gpu = dict(zip(res.clients, res.samples_gpu[-1]))
    assert gpu == pytest.approx(dict(sched.gpu_used), rel=1e-9)
    assert sum(gpu.values()) == pytest.approx(res.busy, rel=1e-6)  # equal weights: all of the GPU's time
    # nothing runs: no measurement is left on the running side of the resource counter (a charge delivered
    # after its request left, finished in prefill or evicted, would stay there)
    assert max(abs(v) for v in pol.gpu_meas_run.values()) < 1e-9
    assert max(abs(v) for v in pol.gpu_pred_run.values()) < 1e-9


def test_weighted_gpu_time_is_charged_once_per_weight():
    """Weighted clients: the GPU-seconds each client is charged (lazily, in the tables and per request) are its
    share of the GPU's time divided by its weight, so the weights times the charges add up to the GPU's time."""
    wl = load_workload("sharegpt", n=300, rate=6.0, clients=6)
    w = {c: 1.0 + i for i, c in enumerate(sorted({r.client for r in wl.requests}))}
    reqs = [R(r.rid, r.client, r.arrival, r.prompt_tokens, r.output_tokens, weight=w[r.client],
              max_new_tokens=r.max_new_tokens) for r in wl.requests]
    sched = Scheduler(make_policy("equinox"), get_profile("a100-llama2-7b"))
    res = Simulator(sched, reqs).run()
    assert res.preemptions == 0
    gpu = dict(zip(res.clients, res.samples_gpu[-1]))
    per_req = {}
    for r in reqs:
        per_req[r.client] = per_req.get(r.client, 0.0) + r.gpu_s
    assert gpu == pytest.approx(per_req, rel=1e-9)
    assert sum(g * w[c] for c, g in gpu.items()) == pytest.approx(res.busy, rel=1e-6)


def test_a_lift_sees_the_prefill_charges_not_yet_delivered():
    """b's queue becomes non-empty while a, the only waiting peer, has a prompt half prefilled (its chunk's GPU
    time not yet delivered to the policy): the lift raises b's resource counter to a's, that chunk included.
    (The engine reports the chunk as 5 s, past the prediction made at admission, so the measurement counts.)"""
    pol = make_policy("equinox")
    sched = Scheduler(pol, get_profile("a100-llama2-7b"))
    for i in range(2):
        assert sched.add_request(R(i, "a", 0.0, 3000, 10, max_new_tokens=10), 0.0)
    out = sched.schedule(0.0)
    assert [r.rid for r in out.admitted] == [0] and pol.queues["a"]   # a's first prompt takes the whole budget
    sched.update_from_output(out, 5.0, 5.0)
    assert sched.add_request(R(5, "b", 5.0, 100, 10, max_new_tokens=10), 5.0)
    sched.settle()
    assert pol.gpu_meas_run["a"] == pytest.approx(5.0) and pol.gpu_meas_run["a"] > pol.gpu_pred_run["a"]
    assert pol.rfc("b") == pytest.approx(pol.rfc("a"), rel=1e-12)


def test_charges_owed_when_a_request_leaves_in_prefill_are_kept_apart():
    """A request evicted (or cancelled) in the middle of its prefill, with its chunks' GPU time not yet delivered
    to the policy: the charges are delivered before it leaves, so the resource counter keeps a finished
    request's time in its base and nothing of an evicted one on its running side. Ten decoders grow into a
    tiny KV cache while b's 3,000-token prompt is prefilled in chunks: the engine evicts b again and again."""
    import dataclasses
    prof = dataclasses.replace(get_profile("a100-llama2-7b"), kv_capacity_tokens=3112)
    beh = dataclasses.replace(get_engine("equinox"), reserve="predicted", reserve_factor=0.01, admission="sum",
                              block_tokens=1, fair_preempt=False, adaptive=False, token_budget=512)
    pol = make_policy("equinox")
    pol.behaviour = beh
    reqs = [R(i, "a", 0.0, 10, 1000, max_new_tokens=1000) for i in range(10)] + \
           [R(10, "b", 0.001, 3000, 10, max_new_tokens=10)]
    sched = Scheduler(pol, prof)
    res = Simulator(sched, reqs).run()
    b = reqs[-1]
    assert b.preemptions > 10 and res.preemptions > 100
    assert pol.gpu_meas_run["a"] == pytest.approx(0.0, abs=1e-9)
    assert pol.gpu_meas_run["b"] == pytest.approx(0.0, abs=1e-9)
    assert pol.rfc_base["b"] == pytest.approx(b.gpu_s, rel=1e-12)   # only its last residency is kept
    # cancelled in prefill (the daemon's release): its measured time moves to the base
    pol = make_policy("equinox")
    pol.behaviour = beh
    sched = Scheduler(pol, prof)
    c = R(20, "c", 0.0, 3000, 10, max_new_tokens=10)
    sched.add_request(c, 0.0)
    out = sched.schedule(0.0)
    sched.update_from_output(out, 0.05, 0.05)
    assert 0 < c.prefilled < c.prompt_tokens and c.gpu_s > 0
    assert sched.release(c, 0.05)
    sched.settle()
    assert pol.gpu_meas_run["c"] == pytest.approx(0.0, abs=1e-12)
    assert pol.rfc_base["c"] == pytest.approx(c.gpu_s, rel=1e-12)


def test_decode_set_aggregates_match_requests():
    """serving.batch.DecodeSet's O(1) KV tokens, exact KV blocks and finish order against a brute-force count."""
    import random

    from serving.batch import DecodeSet
    rng = random.Random(7)
    for bt in (1, 16, 7):
        ds, live, seq = DecodeSet(bt), [], 0
        for step in range(3000):
            op = rng.random()
            if op < 0.3 or not live:
                seq += 1
                r = R(seq, f"c{rng.randrange(4)}", 0.0, rng.randint(1, 90), rng.randint(2, 60))
                r.prefilled, r.generated, r.seq = r.prompt_tokens + rng.randint(0, 5), 1, seq
                ds.add(r)
                live.append(r)
            elif op < 0.4:
                r = live.pop(rng.randrange(len(live)))
                ds.remove(r)
            else:
                k = max(1, min(ds.steps_to_next_finish(), rng.randint(1, 40)))
                ds.advance(k)
                done = ds.pop_finished()
                assert all(r.generated == r.output_tokens for r in done)
                for r in done:
                    live.remove(r)
            synced = ds.requests()
            assert sorted(r.rid for r in synced) == sorted(r.rid for r in live)
            assert all(r.generated < r.output_tokens for r in live)
            kv = [r.prefilled + r.decoded for r in live]
            assert ds.kv() == sum(kv)
            for ahead in (0, 1, 5):
                assert ds.kv_blocks(ahead) == sum(-(-(x + ahead) // bt) for x in kv), (bt, step, ahead)
            assert ds.per_client == {c: n for c in {r.client for r in live}
                                     if (n := sum(r.client == c for r in live))}
            if live:
                assert ds.steps_to_next_finish() == min(r.output_tokens - r.generated for r in live)


def test_decoding_past_a_finish_is_an_error():
    from serving.batch import DecodeSet
    ds = DecodeSet(16)
    r = R(1, "a", 0.0, 10, 5)
    r.prefilled, r.generated, r.seq = 10, 1, 1
    ds.add(r)
    ds.advance(6)  # 4 steps were left
    with pytest.raises(RuntimeError, match="request 1 was decoded 2 steps past its last token"):
        ds.pop_finished()


def test_due_requests_are_found_at_their_step_whatever_their_admission_order():
    """A request admitted late (a large admission sequence number) that finishes early is due at its step: the
    finish heap is keyed by step, the sequence number only breaks ties (admission order among the due)."""
    from serving.batch import DecodeSet
    ds = DecodeSet(1)
    late, early = R(1, "a", 0.0, 10, 2), R(2, "b", 0.0, 10, 2)
    for r, seq in ((late, 50), (early, 40)):
        r.prefilled, r.generated, r.seq = 10, 1, seq
        ds.add(r)
    assert ds.due() == []
    ds.advance(1)
    assert ds.due() == [early, late] and len(ds) == 2   # found, in admission order, still members
    assert ds.due() == []                                # each returned once


# bad input ---------------------------------------------------------------------------------------------
def test_client_with_two_weights_rejected():
    reqs = [R(0, "a", 0.0, 10, 5, weight=1.0), R(1, "a", 0.5, 10, 5, weight=2.0)]
    with pytest.raises(RequestError, match=r"request 1 \(a\): weight 2.0 differs from the weight 1.0"):
        simulate(reqs, "vtc")


def test_bad_requests_rejected():
    with pytest.raises(RequestError, match="prompt_tokens"):
        R(0, "a", 0.0, -5, 10)
    with pytest.raises(RequestError, match="output_tokens"):
        R(0, "a", 0.0, 5, 0)
    with pytest.raises(RequestError, match="weight"):
        R(0, "a", 0.0, 5, 5, weight=0)
    with pytest.raises(RequestError, match="max_new_tokens"):
        R(0, "a", 0.0, 5, 50, max_new_tokens=10)
    with pytest.raises(RequestError, match="never fit"):
        simulate([R(0, "a", 0.0, 9000, 2000)], "vtc", "a10g-llama-7b")


def test_weights_for_unknown_clients_rejected():
    from serving.request import check_weights

    reqs = [R(0, "a", 0.0, 5, 5), R(1, "b", 0.0, 5, 5)]
    with pytest.raises(RequestError, match="unknown client 'zed'"):
        check_weights(reqs, {"zed": 2.0})
    with pytest.raises(RequestError, match="weight must be positive"):
        check_weights(reqs, {"a": -1.0})
    check_weights(reqs, {"b": 3.0})
    assert [r.weight for r in reqs] == [1.0, 3.0]


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown policy: 'wfq'"):
        make_policy("wfq")
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("h100")
    with pytest.raises(ValueError, match="unknown workload"):
        load_workload("nope")


def test_trace_files(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 1.5, "client": "b", "in": 3, "out": 2, "weight": 2}\n')
    wl = load_trace_file(good)
    assert [(r.client, r.prompt_tokens, r.output_tokens, r.weight) for r in wl.requests] == [("a", 5, 7, 1.0), ("b", 3, 2, 2.0)]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps([{"t": 0, "client": "a", "in": 10, "out": 10, "deadline": 60},
                              {"t": 0, "client": "b", "in": 10, "out": 10, "deadline": 1e-4}]))
    res = simulate(load_trace_file(dl).requests, "vtc", "a100-llama2-7b")
    assert summarize(res).deadline_attainment == 0.5  # 60 s is met, 0.1 ms cannot be
    csvf = tmp_path / "t.csv"
    csvf.write_text("t,client,in,out\n0.5,x,10,20\n")
    assert load_trace_file(csvf).requests[0].output_tokens == 20
    cases = {
        "neg.jsonl": ('{"t": 0, "client": "a", "in": -1, "out": 7}\n', ":1: field 'in' must be >= 1, got -1"),
        "missing.jsonl": ('{"t": 0, "client": "a", "in": 1}\n', ":1: field 'out' missing"),
        "bad.jsonl": ('{"t": 0, "client": "a", "in": 1, "out": 1}\n{oops\n', ":2: malformed JSON"),
        "w.jsonl": ('{"t": 0, "client": "a", "in": 1, "out": 1, "weight": -2}\n', "field 'weight' must be positive"),
        "t.csv": ("t,client,in,out\nsoon,a,1,1\n", ":2: field 't' must be a number, got 'soon'"),
        "obj.json": (json.dumps({"t": 0}), "expected a JSON list"),
        "dl.jsonl": ('{"t": 0, "client": "a", "in": 1, "out": 1, "deadline": 0}\n', "field 'deadline' must be positive"),
        "w2.jsonl": ('{"t": 0, "client": "a", "in": 1, "out": 1, "weight": 1}\n'
                     '{"t": 1, "client": "a", "in": 1, "out": 1, "weight": 2}\n',
                     ":2: client 'a' has weight 2.0 here but 1.0 earlier"),
    }
    for name, (text, msg) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(RequestError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            load_trace_file(p)


def test_backlog_fraction_by_hand():
    import numpy as np

    from serving.engine.simulator import SimResult
    from serving.metrics import backlog_fraction
    res = SimResult([], ["a", "b", "c"])
    res.backlog_log = [(0.0, "a", True), (5.0, "a", False), (12.0, "a", True), (3.0, "c", True), (4.0, "c", False)]
    frac = backlog_fraction(res, np.array([0.0, 10.0, 20.0, 30.0]))
    # a: waiting 0-5 and from 12 on; b: never; c: 3-4
    assert frac.tolist() == [[0.5, 0.0, 0.1], [0.8, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_windowed_jain_does_not_depend_on_sampling():
    """The backlog is logged as it changes and service is interpolated: sampling every step or every 2 s gives
    the same index to within 0.01."""
    wl = load_workload("sharegpt", n=600, rate=3.0)
    vals = []
    for dt in (0.0, 2.0):
        sched = Scheduler(make_policy("vtc"), get_profile("a100-llama2-7b"))
        vals.append(summarize(Simulator(sched, [r.fresh() for r in wl.requests], sample_dt=dt).run()).jain)
    assert abs(vals[0] - vals[1]) < 0.01, vals


def test_latency_jain_by_hand():
    from serving.metrics import latency_jain

    a1, a2, b1 = R(0, "a", 0.0, 5, 10), R(1, "a", 1.0, 5, 20), R(2, "b", 0.0, 5, 10)
    a1.finished, a2.finished, b1.finished = 1.0, 3.0, 4.0  # a: 0.1 and 0.1 s/token, b: 0.4 s/token
    # Jain(0.1, 0.4) = 0.5^2 / (2 * 0.17)
    assert latency_jain([a1, a2, b1]) == pytest.approx(0.25 / 0.34)
    b1.finished = 1.0
    assert latency_jain([a1, a2, b1]) == pytest.approx(1.0)


def test_workloads_match_the_artifact_counts():
    # the artifact's suites sent 1620 (overload, 360 s) and 1350 (proportional, on_off_less) requests
    assert abs(len(suite_workload("overload").requests) - 1620) <= 2
    assert abs(len(suite_workload("proportional").requests) - 1350) <= 4
    assert abs(len(suite_workload("on_off_less").requests) - 1350) <= 2
    assert set(SUITES) >= {"overload", "overload-multi", "overload-weighted", "proportional", "on_off_less",
                           "on_off_overload", "increase", "poisson_short_long", "dist_shift"}
    assert jain([1, 1, 1]) == 1.0 and jain([1, 0, 0]) == pytest.approx(1 / 3)


def test_bench_cli(tmp_path, capsys):
    from serving.__main__ import main

    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"t": i * 0.05, "client": f"u{i % 3}", "in": 50 + i % 7, "out": 20 + i % 11}) + "\n"
                             for i in range(120)))
    assert main(["bench", "--workload", str(trace), "--policies", "fcfs,vtc,equinox", "--ablate", "no-chunked",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "system table" in out and "policy table (every policy on the equinox engine)" in out
    assert "equinox/no-chunked" in out and "1.00x" in out and "MoPE online L1" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(res["system"]) == {"fcfs", "vtc", "equinox", "equinox/no-chunked"}
    assert set(res["policy"]) == {"fcfs", "vtc", "equinox"}
    assert all(v["finished"] == 120 for t in ("system", "policy") for v in res[t].values())
    assert all((tmp_path / "o" / "system" / f).stat().st_size > 1000
               for f in ("service_over_time.png", "ttft_cdf.png", "jain_over_time.png"))


def _cli_error(argv, capsys) -> str:
    from serving.__main__ import main
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bench_cli_refuses_bad_input(tmp_path, capsys):
    trace = tmp_path / "ok.jsonl"
    trace.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n')
    o = ["--out", str(tmp_path / "o")]
    w = ["--workload", str(trace)]
    assert "--policies: unknown name 'wfq'" in _cli_error(["bench", *w, "--policies", "wfq", *o], capsys)
    assert "--policies: expected a comma list" in _cli_error(["bench", *w, "--policies", ",", *o], capsys)
    assert "--requests must be a positive integer, got 0" in _cli_error(["bench", "--workload", "sharegpt", "--requests", "0", *o], capsys)
    assert "--rate must be a positive number, got -1.0" in _cli_error(["bench", "--workload", "sharegpt", "--rate", "-1", *o], capsys)
    assert "--rate-scale must be a positive number" in _cli_error(["bench", *w, "--rate-scale", "0", *o], capsys)
    assert "--window must be a positive number" in _cli_error(["bench", *w, "--window", "-5", *o], capsys)
    assert "--requests/--rate apply to" in _cli_error(["bench", "--workload", "lmsys", "--requests", "5", *o], capsys)
    assert "--engine: unknown engine: 'vllm'" in _cli_error(["bench", *w, "--engine", "vllm", *o], capsys)
    assert "is a directory" in _cli_error(["bench", "--workload", str(tmp_path), *o], capsys)
    assert "unknown client 'nobody'" in _cli_error(["bench", *w, "--weights", "nobody=2", *o], capsys)
    assert "unknown workload: 'nope'" in _cli_error(["bench", "--workload", "nope", *o], capsys)
    beh = tmp_path / "beh.json"
    beh.write_text('{"chunked_prefill": true, "token_budjet": 256}')
    assert "unknown field 'token_budjet'" in _cli_error(["bench", *w, "--engine", str(beh), *o], capsys)
    beh.write_text('{"chunked_prefill": "yes"}')
    assert "chunked_prefill must be true or false, got 'yes'" in _cli_error(["bench", *w, "--engine", str(beh), *o], capsys)
    for name, line, msg in [("b.jsonl", '{"t": 0, "client": "a", "in": true, "out": 7}', "field 'in' must be an integer token count, got True"),
                            ("f.jsonl", '{"t": 0, "client": "a", "in": 10.7, "out": 7}', "field 'in' must be an integer token count, got 10.7"),
                            ("m.jsonl", '{"t": 0, "client": "a", "in": 3, "out": 7, "max_new_tokens": 5}', "field 'max_new_tokens' (5) is below"),
                            ("u.jsonl", '{"t": 0, "client": "a", "in": 3, "out": 7, "prio": 1}', "unknown field 'prio'")]:
        p = tmp_path / name
        p.write_text(line + "\n")
        assert msg in _cli_error(["bench", "--workload", str(p), *o], capsys)


def test_bench_cli_refuses_duplicates_ignored_options_and_unwritable_folders(tmp_path, capsys):
    from serving.__main__ import main

    trace = tmp_path / "ok.jsonl"
    trace.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 0, "client": "b", "in": 5, "out": 7}\n')
    o = ["--out", str(tmp_path / "o")]
    w = ["bench", "--workload", str(trace)]
    assert "--policies: 'vtc' is given twice" in _cli_error([*w, "--policies", "fcfs,vtc,vtc", *o], capsys)
    assert "--ablate: 'adaptive' is given twice" in _cli_error([*w, "--ablate", "adaptive,adaptive", *o], capsys)
    assert "--weights: client 'a' is given twice" in _cli_error([*w, "--weights", "a=1,b=1,a=2", *o], capsys)
    assert "--weights: '=1' is not client=number" in _cli_error([*w, "--weights", "=1", *o], capsys)
    assert "--rpm-limit applies to the rpm policy" in _cli_error([*w, "--policies", "vtc", "--rpm-limit", "50", *o],
                                                                 capsys)
    assert "--ablate changes the system table" in _cli_error([*w, "--ablate", "adaptive", "--tables", "policy", *o],
                                                              capsys)
    f = tmp_path / "afile"
    f.write_text("x")
    assert f"--out {f}: cannot be a folder here" in _cli_error([*w, "--out", str(f)], capsys)
    assert "--out: expected a folder, got ''" in _cli_error([*w, "--out", ""], capsys)
    assert "--workload: expected a workload name or a trace file, got ''" in _cli_error(["bench", "--workload", "", *o],
                                                                                        capsys)
    late = tmp_path / "late.jsonl"
    late.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 2, "client": "b", "in": 5, "out": 7}\n')
    assert "--rate-scale 1e-300 puts the last arrival at 2e+300 s, beyond 1e+07 s" in _cli_error(
        ["bench", "--workload", str(late), "--rate-scale", "1e-300", *o], capsys)
    far = tmp_path / "far.jsonl"
    far.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 1e300, "client": "a", "in": 5, "out": 7}\n')
    assert f"{far}:2: field 't' must be at most 1e+07 s (115 days)" in _cli_error(["bench", "--workload", str(far), *o],
                                                                             capsys)
    assert not (tmp_path / "o").exists()    # refused before anything was written
    # the same options, well formed, run
    assert main([*w, "--policies", "vtc,rpm", "--rpm-limit", "50", "--weights", "a=1,b=2", "--no-progress", *o]) == 0


def test_gzip_traces_and_max_new_tokens(tmp_path):
    import gzip
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"t": 0, "client": "a", "in": 5, "out": 7, "max_new_tokens": 64}\n{"t": 1, "client": "b", "in": 3, "out": 2}\n')
    wl = load_trace_file(p)
    assert [(r.client, r.max_new_tokens, r.max_output) for r in wl.requests] == [("a", 64, 64), ("b", None, 2)]
    c = tmp_path / "t.csv.gz"
    with gzip.open(c, "wt") as f:
        f.write("t,client,in,out\n0,x,10,20\n")
    assert load_trace_file(c).requests[0].output_tokens == 20
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_text("not gzip")
    with pytest.raises(RequestError, match="cannot read the trace"):
        load_trace_file(bad)


def test_sample_rows_hold_the_backlog_and_service_as_of_their_time():
    """Each sample row: the backlog after every queue transition logged before it (the log replayed in order,
    the newest entries included), active = backlogged or running, and the service and GPU totals delivered so
    far plus what is owed (the scheduler's own totals at that moment)."""
    import numpy as np
    wl = load_workload("sharegpt", n=300, rate=4.0, clients=12)
    seen = []

    class Watch(Simulator):
        def _sample(self, res, now):
            super()._sample(res, now)
            s = self.s
            s.settle(now)   # (after the row: the row must already hold what this delivers)
            running = set(s.running_by_client)
            seen.append((len(s.policy.backlog_log), running, dict(s.gpu_used)))

    sched = Scheduler(make_policy("vtc"), get_profile("a100-llama2-7b"))
    sim = Watch(sched, [r.fresh() for r in wl.requests])
    res = sim.run()
    assert len(seen) == len(res.samples_t) > 50
    clients = res.clients
    log = res.backlog_log
    state = dict.fromkeys(clients, False)
    pos = 0
    for i, (n, running, gpu) in enumerate(seen):
        for _, c, on in log[pos:n]:
            state[c] = on
        pos = n
        assert res.samples_backlog[i].tolist() == [state[c] for c in clients], i
        assert res.samples_active[i].tolist() == [state[c] or c in running for c in clients], i
        assert res.samples_gpu[i] == pytest.approx(np.array([gpu.get(c, 0.0) for c in clients]), rel=1e-9, abs=1e-12)
    assert any(seen[i][0] - seen[i - 1][0] == 1 for i in range(1, len(seen)))  # rows one transition apart


def test_trace_arrivals_up_to_the_horizon_are_read_and_later_ones_refused(tmp_path):
    ok, late = tmp_path / "ok.jsonl", tmp_path / "late.jsonl"
    ok.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 10000000, "client": "a", "in": 5, "out": 7}\n')
    late.write_text('{"t": 0, "client": "a", "in": 5, "out": 7}\n{"t": 10000000.5, "client": "a", "in": 5, "out": 7}\n')
    assert [r.arrival for r in load_trace_file(ok).requests] == [0.0, 1e7]
    with pytest.raises(RequestError, match=r"late.jsonl:2: field 't' must be at most 1e\+07 s"):
        load_trace_file(late)


@pytest.mark.parametrize("name,kw,size", [("sharegpt", {"n": 50, "rate": 3.0}, "n"),
                                          ("shape-skew", {"duration": 20.0}, "duration"),
                                          ("shape-skew-gpu", {"duration": 20.0}, "duration"),
                                          ("sharegpt-shape", {"n": 40, "rate": 5.0}, "n"),
                                          ("poisson_short_long", {"duration": 20.0}, "duration")])
def test_load_workload_passes_the_seed_and_the_size_to_each_named_workload(name, kw, size):
    a, b, c = (load_workload(name, **kw), load_workload(name, seed=1, **kw), load_workload(name, seed=2, **kw))
    assert a.name == name
    arr = [[r.arrival for r in w.requests] for w in (a, b, c)]
    assert arr[0] == arr[1] and arr[0] != arr[2]          # the seed reaches the generator
    if size == "n":
        assert len(a.requests) == kw["n"]
    else:
        assert max(arr[0]) < kw["duration"] and len(a.requests) < len(load_workload(name, seed=1).requests)


@pytest.mark.parametrize("name", ["lmsys", "lmsys-shape", "artifact-overload"])
def test_load_workload_reads_the_real_traces_by_name(name):
    w = load_workload(name)
    assert w.name == name and len(w.requests) > 1000


def test_load_workload_rate_unknown_names_and_missing_trace_files(tmp_path):
    slow, fast = (load_workload("sharegpt-shape", n=40, rate=r) for r in (2.0, 8.0))
    assert max(r.arrival for r in slow.requests) > 2 * max(r.arrival for r in fast.requests)
    for bad in ("artifact-bogus", "nope"):
        with pytest.raises(ValueError, match=rf"unknown workload: '{bad}' \(lmsys, sharegpt, shape-skew, .*overload, "
                                             r".*artifact-<overload\|proportional\|"):
            load_workload(bad)
    with pytest.raises(RequestError, match="missing.jsonl"):
        load_workload(str(tmp_path / "missing.jsonl"))
