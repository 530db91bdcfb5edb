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
from serving.policies import make_policy  # noqa: E402
from serving.request import Request  # noqa: E402
from serving.workloads import load_workload  # noqa: E402


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
    for name, kw, scale in (("lmsys", {}, args.lmsys_scale), ("sharegpt", {"rate": args.sharegpt_rate, "n": 3000}, 1.0)):
        wl = load_workload(name, **kw)
        for r in wl.requests:
            r.arrival /= scale
        res = run_bench(wl, ["fcfs", "vtc", "equinox"], "a100-llama2-7b", ["no-chunked", "adaptive", "full-reserve"])
        title = f"{name} x{scale:g} on a100-llama2-7b"
        print(f"\n== {title}: {len(wl.requests)} requests, {len(wl.clients)} clients")
        print(format_table(res))
        plot(res, Path(args.out) / name, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
