"""`make regress [FAULT=NIC_FAULT_...] [JOBS=2] [KINDS=directed,captured,generated]`: the regression.

Runs the directed cocotb tests, every captured scenario and the Phantom-generated stimulus set in parallel
(pytest-xdist, tests/regress_cases.py), then prints pass/fail per case and the coverage of the captured
scenarios beside the generated stimulus (text, build/regress/report.json, build/regress/coverage.png). With
FAULT, everything runs on the RTL built with that planted fault: the report says which kinds catch it and the
first generated stimulus that does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb import regress, runner  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fault", default="", help=f"a planted fault: {', '.join(runner.FAULTS)}")
    ap.add_argument("--jobs", type=int, default=2, help="pytest-xdist workers")
    ap.add_argument("--kinds", default=",".join(regress.KINDS), help="case kinds to run (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "build" / "regress"), help="report folder")
    ap.add_argument("--sim", default="verilator", choices=runner.SIMULATORS)
    ap.add_argument("--width", type=int, default=256, choices=runner.DATA_WIDTHS)
    args = ap.parse_args(argv)
    if args.fault and args.fault not in runner.FAULTS:
        ap.error(f"--fault: unknown fault {args.fault!r} (known: {', '.join(runner.FAULTS)})")
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in regress.KINDS]
    if bad or not kinds:
        ap.error(f"--kinds: unknown kind(s) {', '.join(bad) or '(none)'} (known: {', '.join(regress.KINDS)})")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out) / (args.fault or "clean")
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    # build first (one build per worker would race for the same folder otherwise; the runner also locks)
    print(f"== building the NIC under {args.sim} (data width {args.width}{', ' + args.fault if args.fault else ''})",
          flush=True)
    runner.build(args.sim, args.width, False, args.fault or None)
    env = {"REGRESS_OUT": str(out), "REGRESS_FAULT": args.fault, "REGRESS_KINDS": ",".join(kinds), "SIM": args.sim,
           "WIDTH": str(args.width)}
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(args.jobs), "-p", "no:cacheprovider", "-rN",
           str(ROOT / "tests" / "regress_cases.py")]
    print(f"== {len(regress.cases(tuple(kinds)))} cases, {args.jobs} workers", flush=True)
    import os

    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env})
    wall = time.time() - t0
    results = [regress.CaseResult.read(p) for p in sorted((out / "cases").glob("*.json"))]
    expected = {c.id for c in regress.cases(tuple(kinds))}
    lost = expected - {r.case for r in results}
    rep = regress.report(results, args.fault or None, wall)
    rep["lost"] = sorted(lost)
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    regress.plot_coverage(rep, out / "coverage.png")
    print()
    print(regress.format_report(rep))
    if lost:
        print(f"\n{len(lost)} case(s) wrote no result (crashed worker?): {', '.join(sorted(lost))}")
    print(f"\nreport: {out / 'report.json'}, coverage plot: {out / 'coverage.png'}")
    if args.fault:
        return 0 if not lost else 1   # failures are the point; a lost case is not
    return 0 if proc.returncode == 0 and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
