"""python -m serving bench|serve|load|hash-key: the Equinox command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.daemon.cli import COMMANDS as DAEMON_COMMANDS, add_commands, run_command
from serving.bench import ABLATIONS, format_table, plot, run_bench, to_json
from serving.engine.profiles import ProfileName
from serving.policies import PolicyName
from serving.request import RequestError, check_weights
from serving.workloads import SUITES, load_workload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving", description="Equinox fair LLM serving")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_commands(sub)   # serve, load, hash-key (serving/daemon/cli.py)
    b = sub.add_parser("bench", help="compare policies on a workload in the engine simulator")
    b.add_argument("--workload", default="lmsys",
                   help=f"lmsys, sharegpt, a VTC suite ({', '.join(SUITES)}) or a .json/.jsonl/.csv trace")
    b.add_argument("--policies", default="fcfs,vtc,equinox", help=f"comma list of {', '.join(p.value for p in PolicyName)}")
    b.add_argument("--ablate", default="", help=f"comma list of Equinox ablations: {', '.join(ABLATIONS)}")
    b.add_argument("--profile", default=None, choices=[p.value for p in ProfileName],
                   help="engine profile (default: a10g-llama-7b for VTC suites, a100-llama2-7b otherwise)")
    b.add_argument("--rate-scale", type=float, default=1.0, help="compress arrival times by this factor (load)")
    b.add_argument("--requests", type=int, default=None, help="ShareGPT: number of requests")
    b.add_argument("--rate", type=float, default=None, help="ShareGPT: requests per second")
    b.add_argument("--weights", default="", help="client weights, e.g. client0=1,client1=2")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--out", default="out/bench", help="folder for PNG plots and results.json")
    b.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd in DAEMON_COMMANDS:
        return run_command(args)
    try:
        kw = {}
        if args.requests:
            kw["n"] = args.requests
        if args.rate:
            kw["rate"] = args.rate
        wl = load_workload(args.workload, seed=args.seed, **kw)
        if args.weights:
            weights = {}
            for item in args.weights.split(","):
                name, _, val = item.partition("=")
                try:
                    weights[name.strip()] = float(val)
                except ValueError:
                    raise ValueError(f"--weights: {item!r} is not client=number") from None
            check_weights(wl.requests, weights)
        if args.rate_scale != 1.0:
            if args.rate_scale <= 0:
                raise ValueError(f"--rate-scale must be positive, got {args.rate_scale}")
            for r in wl.requests:
                r.arrival /= args.rate_scale
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        known = [x.value for x in PolicyName]
        for p in policies:
            if p not in known:
                raise ValueError(f"unknown policy: {p!r} (known: {', '.join(known)})")
        profile = args.profile or ("a10g-llama-7b" if args.workload in SUITES else "a100-llama2-7b")
        ablate = [a.strip() for a in args.ablate.split(",") if a.strip()]
        results = run_bench(wl, policies, profile, ablate, progress=not args.no_progress)
    except (ValueError, RequestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = f"{wl.name} x{args.rate_scale:g} on {profile}"
    print(f"{title}: {len(wl.requests)} requests, {len(wl.clients)} clients")
    print(format_table(results))
    out = Path(args.out)
    files = plot(results, out, title)
    (out / "results.json").write_text(json.dumps(to_json(results), indent=1, default=str))
    print("plots: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
