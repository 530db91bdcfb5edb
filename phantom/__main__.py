"""python -m phantom check|stats|convert|rules|dataset|train|generate|evaluate|features: the trace toolkit's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from phantom.rules import RULES, check_file
from phantom.stats import format_compare, format_summary, plot, summarize
from phantom.trace import TraceFormatError, check_output_folder, convert, load_any_columns


def _waivers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        rule, sep, why = item.partition("=")
        if not sep or not why.strip():
            raise ValueError(f"--waive {item!r}: give the rule and the reason, --waive RULE=REASON")
        if rule.strip() in out:
            raise ValueError(f"--waive {rule.strip()}: given twice (one reason per rule)")
        out[rule.strip()] = why.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phantom", description="PCIe TLP trace toolkit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check a trace against the PCIe rules (exit 1 on violations)")
    c.add_argument("trace")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--timeout-ms", type=float, default=None,
                   help="completion timeout limit in trace time (default: the device's from the trace header, "
                        "else 50 ms)")
    c.add_argument("--first", type=int, default=20, help="offending records to list")
    c.add_argument("--no-nic", action="store_true", help="skip the NIC causality rules")
    c.add_argument("--waive", action="append", default=[], metavar="RULE=REASON",
                   help="count RULE's occurrences without failing; the reason is printed in the report (repeatable)")
    s = sub.add_parser("stats", help="statistics of a trace")
    s.add_argument("trace")
    s.add_argument("--json", action="store_true")
    s.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    s.add_argument("--compare", metavar="TRACE", help="print the realism table of this trace beside the other")
    v = sub.add_parser("convert", help="convert between .jsonl[.gz] and .npz (lossless)")
    v.add_argument("src")
    v.add_argument("dst")
    sub.add_parser("rules", help="list the rules: id, severity, spec section, the sentence each enforces")
    from phantom.gen import cli as gen_cli

    gen_cli.add_parsers(sub)
    args = ap.parse_args(argv)
    if args.cmd in gen_cli.COMMANDS:
        return gen_cli.run(args)
    try:
        if args.cmd == "check":
            if args.first < 0:
                raise ValueError(f"--first must be >= 0, got {args.first}")
            if args.timeout_ms is not None and not 0 < args.timeout_ms <= 1e9:
                raise ValueError(f"--timeout-ms must be positive and at most 1e9 (11.6 days), got {args.timeout_ms}")
            rep = check_file(args.trace, timeout_ns=None if args.timeout_ms is None else args.timeout_ms * 1e6,
                             first_n=args.first, nic_rules=not args.no_nic, waive=_waivers(args.waive))
            print(json.dumps(rep.to_json(), indent=1) if args.json else rep.format())
            return 0 if rep.ok else 1
        if args.cmd == "stats":
            if args.plot is not None:
                check_output_folder("--plot", args.plot)
            cols = load_any_columns(args.trace)
            summ = summarize(cols)
            if args.compare:
                other = summarize(args.compare)
                if args.json:
                    from phantom.stats import realism

                    print(json.dumps({"a": realism(summ), "b": realism(other)}, indent=1))
                else:
                    print(format_compare(summ, other, (args.trace, args.compare)))
            else:
                print(json.dumps(summ, indent=1) if args.json else format_summary(summ))
            if args.plot:
                for f in plot(cols, args.plot):
                    print(f"wrote {f}", file=sys.stderr)
            return 0
        if args.cmd == "convert":
            n = convert(args.src, args.dst)
            print(f"{n} records: {args.src} -> {args.dst}")
            return 0
        if args.cmd == "rules":
            for r in RULES.values():
                print(f"{r.id:<18} {r.severity.name.lower():<8} {r.group.value:<11} [{r.spec}] {r.sentence}")
            return 0
    except (TraceFormatError, OSError, ValueError) as e:  # OSError's message names the path
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


def entry() -> int:
    try:
        return main()
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: say nothing more, exit like other command-line tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(entry())
