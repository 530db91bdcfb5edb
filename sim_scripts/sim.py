"""`make sim`: build the NIC, run a named scenario with TLP capture, check the trace, print a report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom.rules import check_file  # noqa: E402
from phantom.stats import summarize, format_summary  # noqa: E402
from tb import runner  # noqa: E402
from tb.scenarios import DEFAULT_SCENARIO, SCENARIOS, get_scenario  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default=DEFAULT_SCENARIO,
                    help="one of: " + ", ".join(f"{n} ({s.help})" for n, s in SCENARIOS.items()))
    ap.add_argument("--sim", default="verilator", choices=runner.SIMULATORS)
    ap.add_argument("--width", type=int, default=256, choices=runner.DATA_WIDTHS, help="PCIe data width")
    ap.add_argument("--frames", type=int, default=None, help="override the scenario's frame count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="trace path (default traces/<scenario>.jsonl.gz)")
    ap.add_argument("--waves", action="store_true", help="write an FST waveform")
    ap.add_argument("--host", default=None, help="host profile (default: the scenario's; see tb/host_model.py)")
    args = ap.parse_args(argv)
    try:
        sc = get_scenario(args.scenario)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out) if args.out else ROOT / "traces" / f"{sc.name}.jsonl.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"NIC_SCENARIO": sc.name, "NIC_TRACE": str(out.resolve()), "NIC_SEED": str(args.seed)}
    if args.host:
        from tb.host_model import get_host_profile

        try:
            get_host_profile(args.host)
        except ValueError as e:
            ap.error(str(e))
        env["NIC_HOST"] = args.host
    if args.frames:
        env["NIC_FRAMES"] = str(args.frames)
    t0 = time.time()
    print(f"== building and running scenario {sc.name!r} under {args.sim} (data width {args.width})", flush=True)
    try:
        tdir = runner.run("run_scenario", sim=args.sim, data_width=args.width, module="test_scenario", env=env,
                          waves=args.waves or None, seed=args.seed)
    except runner.SimulationFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    wall = time.time() - t0
    report = check_file(out)
    summary = summarize(out)
    print(f"\n== trace: {out} ({summary['tlps']} TLPs)")
    print(format_summary(summary))
    print("\n== PCIe rule check")
    print(report.format())
    print(f"\nwall time {wall:.1f} s (build + simulation), {summary['tlps'] / wall:,.0f} TLPs per wall second; "
          f"simulated {summary['duration_us']:.1f} us")
    if args.waves:
        print(f"waveform in {tdir}")
    return 0 if report.ok else 2


if __name__ == "__main__":
    sys.exit(main())
