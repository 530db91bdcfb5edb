"""`make bench-faults`: every planted fault against the regression: which kinds of case catch it.

Runs `make regress` on the healthy RTL (pass/fail, coverage captured vs generated, total wall time), then once
per planted fault (`tb.runner.FAULTS`) on the RTL built with it, and prints the table docs/benchmarks.md reports:
for each fault, whether the directed tests, the captured scenarios and the generated stimulus catch it, and the
first generated stimulus that does (with the reason it failed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb import runner  # noqa: E402


def regress(out: Path, jobs: int, fault: str | None) -> dict:
    cmd = [sys.executable, str(ROOT / "sim_scripts" / "regress.py"), "--jobs", str(jobs), "--out", str(out)]
    if fault:
        cmd += ["--fault", fault]
    subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    return json.loads((out / (fault or "clean") / "report.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_faults"))
    ap.add_argument("--faults", default=",".join(runner.FAULTS))
    args = ap.parse_args()
    out = Path(args.out)
    print(f"planted faults against make regress, {date.today()}, {platform.machine()}, "
          f"{__import__('os').cpu_count()} cores, -n {args.jobs}", flush=True)
    t0 = time.time()
    clean = regress(out, args.jobs, None)
    k = clean["kinds"]
    print(f"healthy RTL: make regress {clean['wall_s']:.0f} s wall; "
          + ", ".join(f"{kind} {v['passed']}/{v['cases']}" for kind, v in k.items()))
    cov = clean["coverage"]
    print(f"coverage: captured {cov['captured']['bins_hit']} of {cov['captured']['bins_total']} bins, generated "
          f"{cov['generated']['bins_hit']}, together {cov['all']['bins_hit']}; only generated: "
          f"{', '.join(cov['only_generated'])}")
    rows = []
    for fault in [f for f in args.faults.split(",") if f]:
        rep = regress(out, args.jobs, fault)
        c = rep["caught"]
        first = rep.get("first_generated") or {}
        caps = [r["name"] for r in rep["cases"] if r["kind"] == "captured" and not r["ok"]]
        dirs = [r["name"] for r in rep["cases"] if r["kind"] == "directed" and not r["ok"]]
        rows.append((fault, dirs, caps, c["generated"], first.get("stimulus", "-"), first.get("why", "")))
        print(f"  {fault}: {rep['wall_s']:.0f} s", flush=True)
    print()
    print("| fault | directed tests that catch it | captured scenarios that catch it | generated stimulus "
          "| first generated stimulus to catch it (why) |")
    print("| --- | --- | --- | --- | --- |")
    for fault, dirs, caps, gen, first, why in rows:
        print(f"| `{fault}` | {', '.join(dirs) or '**none**'} | {', '.join(caps) or '**none: missed**'} | "
              f"{'caught' if gen else '**missed**'} | {first} ({why[:160]}) |")
    missed_by_captures = [r[0] for r in rows if not r[2] and r[3]]
    print()
    print(f"missed by every captured scenario and caught by generated stimulus: {len(missed_by_captures)} "
          f"({', '.join(missed_by_captures) or 'none'}); target >= 2 -> "
          f"{'met' if len(missed_by_captures) >= 2 else 'MISSED'}")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
