"""python -m phantom check|stats|convert: the trace toolkit's command line."""

from __future__ import annotations

import argparse
import json
import sys

from phantom.rules import check_file
from phantom.stats import format_summary, plot, summarize
from phantom.trace import TraceFormatError, convert, load_any_columns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phantom", description="PCIe TLP trace toolkit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check a trace against the PCIe rules (exit 1 on violations)")
    c.add_argument("trace")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--timeout-ms", type=float, default=50.0, help="completion timeout limit in trace time")
    c.add_argument("--first", type=int, default=20, help="offending records to list")
    c.add_argument("--no-nic", action="store_true", help="skip the NIC causality rules")
    s = sub.add_parser("stats", help="statistics of a trace")
    s.add_argument("trace")
    s.add_argument("--json", action="store_true")
    s.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    v = sub.add_parser("convert", help="convert between .jsonl[.gz] and .npz (lossless)")
    v.add_argument("src")
    v.add_argument("dst")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            rep = check_file(args.trace, timeout_ns=args.timeout_ms * 1e6, first_n=args.first,
                             nic_rules=not args.no_nic)
            print(json.dumps(rep.to_json(), indent=1) if args.json else rep.format())
            return 0 if rep.ok else 1
        if args.cmd == "stats":
            cols = load_any_columns(args.trace)
            summ = summarize(cols)
            print(json.dumps(summ, indent=1) if args.json else format_summary(summ))
            if args.plot:
                for f in plot(cols, args.plot):
                    print(f"wrote {f}", file=sys.stderr)
            return 0
        if args.cmd == "convert":
            n = convert(args.src, args.dst)
            print(f"{n} records: {args.src} -> {args.dst}")
            return 0
    except (TraceFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
