"""`make bench-serving`: system and policy tables on LMSYS (the artifact's real trace, A10G), ShareGPT (A100)
and the shape-skewed workloads, simulation speed, then the A10G calibration (calibrate_a10g.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.bench import format_table, run_bench  # noqa: E402
from serving.engine.behaviour import get_engine  # noqa: E402
from serving.metrics import summarize  # noqa: E402
from serving.predictors import MoPE, SingleModel, online_l1  # noqa: E402
from serving.run import simulate  # noqa: E402
from serving.workloads import load_workload, sharegpt_workload  # noqa: E402

CASES = [("lmsys", {}, "a10g-llama-7b"), ("sharegpt", {}, "a100-llama2-7b"), ("shape-skew", {}, "a100-llama2-7b"),
         ("sharegpt-shape", {}, "a100-llama2-7b"), ("lmsys-shape", {}, "a10g-llama-7b")]
POLICIES = ["fcfs", "vtc", "lcf", "vtc-oracle", "equinox"]


def main() -> int:
    t0 = time.perf_counter()
    for name, kw, prof in CASES:
        wl = load_workload(name, **kw)
        print(f"\n== {name} on {prof}: {len(wl.requests)} requests, {len(wl.clients)} clients "
              f"(MoPE L1 {online_l1(wl.requests, MoPE()):.1f}, single-model proxy {online_l1(wl.requests, SingleModel()):.1f})")
        print("system table (each policy on its own engine):")
        print(format_table(run_bench(wl, POLICIES, prof, progress=False)))
        print("policy table (every policy on the equinox engine):")
        print(format_table(run_bench(wl, POLICIES, prof, progress=False, engine=get_engine("equinox")),
                           engine=get_engine("equinox")))
    print("\n== simulation speed: 1,000 clients x 100,000 ShareGPT requests at 4 req/s (A100, equinox)")
    wl = sharegpt_workload(n=100_000, rate=4.0, clients=1000)
    import resource
    t1 = time.perf_counter()
    res = simulate(wl.requests, "equinox", "a100-llama2-7b")
    t2 = time.perf_counter()
    s = summarize(res)
    t3 = time.perf_counter()
    print(f"simulation {t2 - t1:.1f} s, metrics {t3 - t2:.1f} s: {len(wl.requests) / (t3 - t1):,.0f} requests per "
          f"wall second; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"{len(res.samples_t)} samples; gap/bound {s.max_gap / s.vtc_bound:.2f}")
    print(f"\nbench-serving tables and speed: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
