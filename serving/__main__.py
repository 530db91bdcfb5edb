"""python -m serving bench|serve|load|hash-key: the Equinox command line.

Every option is checked before anything runs; a bad value ends with a one-line `error: --option: ...`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from serving.daemon.cli import COMMANDS as DAEMON_COMMANDS, add_commands, run_command
from serving.bench import ABLATIONS, format_table, plot, run_bench, to_json
from serving.engine.behaviour import EngineName, get_engine
from serving.engine.profiles import ProfileName, get_profile
from serving.policies import PolicyName
from serving.policies.rpm import DEFAULT_RPM
from serving.predictors import MoPE, SingleModel, online_l1
from serving.request import RequestError, check_weights
from serving.workloads import ARTIFACT_SUITES, MAX_ARRIVAL_S, NAMED, SUITES, load_workload

# the documented configurations (docs/equinox.md, docs/benchmarks.md): what each workload runs with by default
A10G, A100 = ProfileName.A10G_LLAMA_7B.value, ProfileName.A100_LLAMA2_7B.value
DEFAULT_PROFILE = {"lmsys": A10G, "lmsys-shape": A10G, "sharegpt": A100, "sharegpt-shape": A100, "shape-skew": A100,
                   "shape-skew-gpu": A100}
SIZED = ("sharegpt", "sharegpt-shape")   # workloads that take --requests / --rate


class CLIError(ValueError):
    pass


def _positive(name: str, v, integer: bool = False):
    if v is None:
        return None
    if integer and (not isinstance(v, int) or v < 1):
        raise CLIError(f"{name} must be a positive integer, got {v!r}")
    if not integer and not (math.isfinite(v) and v > 0):
        raise CLIError(f"{name} must be a positive number, got {v!r}")
    return v


def _names(opt: str, text: str, known: list[str]) -> list[str]:
    items = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in items):
        raise CLIError(f"{opt}: expected a comma list of names, got {text!r} (known: {', '.join(known)})")
    for i, p in enumerate(items):
        if p not in known:
            raise CLIError(f"{opt}: unknown name {p!r} (known: {', '.join(known)})")
        if p in items[:i]:
            raise CLIError(f"{opt}: {p!r} is given twice")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving", description="Equinox fair LLM serving")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_commands(sub)   # serve, load, hash-key (serving/daemon/cli.py)
    b = sub.add_parser("bench", help="compare policies on a workload in the engine simulator")
    b.add_argument("--workload", default="lmsys",
                   help=f"{', '.join(NAMED)}, a VTC suite ({', '.join(SUITES)}), artifact-<suite> "
                        f"({', '.join(ARTIFACT_SUITES)}) or a .json/.jsonl/.csv[.gz] trace")
    b.add_argument("--policies", default="fcfs,vtc,lcf,vtc-oracle,equinox", help=f"comma list of {', '.join(p.value for p in PolicyName)}")
    b.add_argument("--engine", default="equinox",
                   help=f"engine of the policy table: {', '.join(e.value for e in EngineName)} or a .json behaviour file")
    b.add_argument("--tables", default="system,policy",
                   help="system (each policy on its own engine), policy (all on --engine), or both")
    b.add_argument("--ablate", default="", help=f"comma list of Equinox ablations (system table): {', '.join(ABLATIONS)}")
    b.add_argument("--profile", default=None, choices=[p.value for p in ProfileName],
                   help="hardware profile (default: a10g-llama-7b for LMSYS and the VTC suites, a100-llama2-7b otherwise)")
    b.add_argument("--rate-scale", type=float, default=1.0, help="compress arrival times by this factor (load)")
    b.add_argument("--requests", type=int, default=None, help="ShareGPT workloads: number of requests (3000)")
    b.add_argument("--rate", type=float, default=None, help="ShareGPT workloads: requests per second (3)")
    b.add_argument("--max-new-tokens", type=int, default=None,
                   help="lmsys/sharegpt: every request asks for up to this many tokens (default: its true length)")
    b.add_argument("--rpm-limit", type=int, default=None,
                   help=f"rpm policy: requests per minute per client (default {DEFAULT_RPM})")
    b.add_argument("--window", type=float, default=10.0, help="seconds per window of the windowed Jain indices")
    b.add_argument("--weights", default="", help="client weights, e.g. client0=1,client1=2")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--out", default="out/bench", help="folder for PNG plots and results.json")
    b.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd in DAEMON_COMMANDS:
        return run_command(args)
    try:
        _positive("--rate-scale", args.rate_scale)
        _positive("--requests", args.requests, integer=True)
        _positive("--rate", args.rate)
        _positive("--max-new-tokens", args.max_new_tokens, integer=True)
        _positive("--rpm-limit", args.rpm_limit, integer=True)
        _positive("--window", args.window)
        if args.seed < 0:
            raise CLIError(f"--seed must be >= 0, got {args.seed}")
        known = [x.value for x in PolicyName]
        policies = _names("--policies", args.policies, known)
        tables = _names("--tables", args.tables, ["system", "policy"])
        ablate = _names("--ablate", args.ablate, list(ABLATIONS)) if args.ablate.strip() else []
        if ablate and "system" not in tables:
            raise CLIError("--ablate changes the system table's Equinox: it needs --tables system or both")
        if args.rpm_limit is not None and "rpm" not in policies:
            raise CLIError("--rpm-limit applies to the rpm policy, which --policies does not list")
        try:
            engine = get_engine(args.engine)
        except ValueError as e:
            raise CLIError(str(e) if str(e).startswith("--engine") else f"--engine: {e}") from None
        base = args.workload
        if (args.requests or args.rate) and base not in SIZED:
            raise CLIError(f"--requests/--rate apply to {', '.join(SIZED)} only, not {base!r}")
        if args.max_new_tokens and base not in ("lmsys", "sharegpt"):
            raise CLIError(f"--max-new-tokens applies to lmsys and sharegpt only, not {base!r}")
        if not base.strip():
            raise CLIError("--workload: expected a workload name or a trace file, got ''")
        if Path(base).is_dir():
            raise CLIError(f"--workload {base}: is a directory, not a trace file")
        kw = {}
        if args.requests:
            kw["n"] = args.requests
        if args.rate:
            kw["rate"] = args.rate
        if args.max_new_tokens:
            kw["max_new_tokens"] = args.max_new_tokens
        wl = load_workload(base, seed=args.seed, **kw)
        if args.weights:
            weights = {}
            for item in args.weights.split(","):
                name, _, val = item.partition("=")
                name = name.strip()
                try:
                    if not name:
                        raise ValueError
                    w = float(val)
                except ValueError:
                    raise CLIError(f"--weights: {item!r} is not client=number") from None
                if name in weights:
                    raise CLIError(f"--weights: client {name!r} is given twice")
                weights[name] = w
            check_weights(wl.requests, weights)
        if args.rate_scale != 1.0:
            for r in wl.requests:
                r.arrival /= args.rate_scale
            last = max((r.arrival for r in wl.requests), default=0.0)
            if last > MAX_ARRIVAL_S:
                raise CLIError(f"--rate-scale {args.rate_scale:g} puts the last arrival at {last:.3g} s, beyond "
                               f"{MAX_ARRIVAL_S:g} s")
        profile = args.profile or DEFAULT_PROFILE.get(base, A10G if base in SUITES or base.startswith("artifact-")
                                                      else A100)
        get_profile(profile)
        out = Path(args.out)
        if not args.out.strip():
            raise CLIError("--out: expected a folder, got ''")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"--out {args.out}: cannot be a folder here ({e.strerror or e})") from None
        pkw = {"rpm": {"limit": DEFAULT_RPM if args.rpm_limit is None else args.rpm_limit}}
        results = {}
        if "system" in tables:
            results["system"] = run_bench(wl, policies, profile, ablate, progress=not args.no_progress,
                                          window=args.window, policy_kw=pkw)
        if "policy" in tables:
            results["policy"] = run_bench(wl, policies, profile, None, progress=not args.no_progress,
                                          engine=engine, window=args.window, policy_kw=pkw)
    except (ValueError, RequestError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    title = f"{wl.name} x{args.rate_scale:g} on {profile}"
    print(f"{title}: {len(wl.requests)} requests, {len(wl.clients)} clients, Jain windows of {args.window:g} s")
    files = []
    for kind, res in results.items():
        what = "each policy on its own engine" if kind == "system" else f"every policy on the {engine.name} engine"
        print(f"\n{kind} table ({what}):")
        print(format_table(res, engine=None if kind == "system" else engine))
        files += plot(res, out / kind, f"{title}, {kind} table")
    mope, single = online_l1(wl.requests, MoPE()), online_l1(wl.requests, SingleModel())
    print(f"\nMoPE online L1 output-token error {mope:.1f} (single-model proxy {single:.1f})")
    (out / "results.json").write_text(json.dumps({k: to_json(v) for k, v in results.items()} |
                                                 {"mope_l1": mope, "single_l1": single}, indent=1, default=str))
    print("plots: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
