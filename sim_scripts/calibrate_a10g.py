"""Compare the A10G profile against the VTC artifact's measured results (throughput and latency per suite)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.metrics import summarize  # noqa: E402
from serving.run import simulate  # noqa: E402
from serving.workloads import suite_workload  # noqa: E402

SUITES = ("overload", "proportional", "on_off_less", "increase", "poisson_short_long")


def measured(policy: str, suite: str) -> dict:
    p = ROOT / "data" / "vtc_artifact_results" / policy.upper() / f"all_results_{suite}.jsonl.gz"
    with gzip.open(p, "rt") as f:
        d = json.loads(f.readline())
    return {"duration": d["config"]["duration"], "throughput": d["result"]["throughput"],
            "latency": d["result"]["avg_latency"], "n": len(d["result"]["responses"])}


def main() -> int:
    rows, worst = [], 0.0
    print(f"{'suite':<20} {'policy':<5} {'req':>5} {'meas req/s':>10} {'sim req/s':>9} {'err':>6} "
          f"{'meas lat s':>10} {'sim lat s':>9} {'err':>6}")
    for suite in SUITES:
        for pol in ("vtc", "fcfs"):
            m = measured(pol, suite)
            wl = suite_workload(suite, duration=m["duration"])
            s = summarize(simulate(wl.requests, pol, "a10g-llama-7b"))
            e_t = s.throughput_req_s / m["throughput"] - 1
            e_l = s.latency_mean / m["latency"] - 1
            worst = max(worst, abs(e_t), abs(e_l))
            rows.append((suite, pol, e_t, e_l))
            print(f"{suite:<20} {pol:<5} {len(wl.requests):>5} {m['throughput']:10.3f} {s.throughput_req_s:9.3f} "
                  f"{e_t:+6.1%} {m['latency']:10.1f} {s.latency_mean:9.1f} {e_l:+6.1%}")
    print(f"worst relative error: {worst:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
