"""`make bench-serving`: Equinox vs VTC vs FCFS on LMSYS and ShareGPT (A100 profile), simulator speed,
and the scheduling-decision microbenchmark (1,000 clients, 100,000 queued requests)."""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.bench import format_table, plot, run_bench  # noqa: E402
from serving.metrics import summarize  # noqa: E402
from serving.policies import EquinoxConfig, make_policy  # noqa: E402
from serving.request import Request  # noqa: E402
from serving.run import simulate  # noqa: E402
from serving.workloads import load_workload  # noqa: E402

SENSITIVITY = [(1, 1, 0.5), (1, 0, 0), (1, 0, 0.5), (1, 1, 0), (1, 3, 0.5), (0, 1, 0)]


def decision_bench(policy: str, clients: int, queued: int, decisions: int = 20_000) -> float:
    """Microseconds per decision (pick + pop + admission charge + a token charge + a new arrival)."""
    rng = random.Random(1)
    p = make_policy(policy)
    for i in range(queued):
        p.add(Request(i, f"c{rng.randrange(clients)}", 0.0, rng.randint(1, 512), rng.randint(1, 512)), 0.0, {})
    t0 = time.perf_counter()
    for k in range(decisions):
        r = p.pop(1.0)
        r.predicted_output = 100.0
        p.on_admit(r, 1.0)
        p.on_tokens(r, 1, 1.0)
        p.add(Request(queued + k, r.client, 1.0, r.prompt_tokens, r.output_tokens), 1.0, {})
    return (time.perf_counter() - t0) / decisions * 1e6


def speed(name: str, requests: list[Request], policies=("fcfs", "vtc", "equinox"), reps: int = 3) -> None:
    """Simulated requests per second of wall time and of process CPU time (best of `reps`; the CPU figure is
    the one a shared, noisy machine does not distort)."""
    for pol in policies:
        wall, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            res = simulate(requests, pol)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        n = len(requests)
        print(f"{name:<28} {pol:<8} {n:6d} req  {res.makespan:8.1f} s simulated  wall {min(wall):6.3f} s "
              f"({n / min(wall):7.0f} req/s)  cpu {min(cpu):6.3f} s ({n / min(cpu):7.0f} req/s)")


def sensitivity(workloads) -> None:
    print("\n== sensitivity of the Equinox score weights (alpha, beta, lambda)")
    print(f"{'workload':<10} {'a, b, l':<12} {'tok/s':>8} {'TTFT s':>7} {'Jain':>6} {'Jain lat':>8} {'Jain res':>8}")
    for name, wl in workloads:
        for a, b, lam in SENSITIVITY:
            s = summarize(simulate(wl.requests, "equinox",
                                   policy_kw={"config": EquinoxConfig(alpha=a, beta=b, latency_weight=lam)}))
            print(f"{name:<10} {f'{a}, {b}, {lam}':<12} {s.throughput_tok_s:8.1f} {s.ttft_mean:7.2f} {s.jain:6.3f} "
                  f"{s.jain_latency:8.3f} {s.jain_resource:8.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/bench-serving")
    ap.add_argument("--lmsys-scale", type=float, default=8.0, help="LMSYS arrival compression (load)")
    ap.add_argument("--sharegpt-rate", type=float, default=3.0)
    args = ap.parse_args()
    print("== scheduling decision cost (us per decision)")
    for pol in ("vtc", "equinox"):
        small = decision_bench(pol, 10, 1_000)
        big = decision_bench(pol, 1_000, 100_000)
        print(f"{pol:<8} 10 clients/1k queued: {small:6.1f} us   1,000 clients/100k queued: {big:6.1f} us   "
              f"ratio {big / small:4.2f} (O(log n) predicts ~{(1000).bit_length() / (10).bit_length():.1f})")
    loaded = []
    for name, kw, scale in (("lmsys", {}, args.lmsys_scale), ("sharegpt", {"rate": args.sharegpt_rate, "n": 3000}, 1.0)):
        wl = load_workload(name, **kw)
        for r in wl.requests:
            r.arrival /= scale
        loaded.append((name, wl))
        res = run_bench(wl, ["fcfs", "vtc", "equinox"], "a100-llama2-7b", ["no-chunked", "adaptive", "full-reserve", "fair-preempt"])
        title = f"{name} x{scale:g} on a100-llama2-7b"
        print(f"\n== {title}: {len(wl.requests)} requests, {len(wl.clients)} clients")
        print(format_table(res))
        plot(res, Path(args.out) / name, title)
    sensitivity(loaded)
    print("\n== simulation speed (best of 3)")
    for name, wl in loaded:
        speed(f"{name} (bench load)", wl.requests)
    # an hour of the LMSYS trace at its own rate: the 1,500 requests (606 s) repeated six times
    base = load_workload("lmsys").requests
    span = max(r.arrival for r in base) + 1.0
    hour = [Request(k * len(base) + r.rid, r.client, r.arrival + k * span, r.prompt_tokens, r.output_tokens,
                    max_new_tokens=r.max_new_tokens) for k in range(6) for r in base]
    speed("lmsys x1, an hour of trace", hour)
    return 0


if __name__ == "__main__":
    sys.exit(main())
