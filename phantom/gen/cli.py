"""The generative model's subcommands of ``python -m phantom``: dataset, train, generate, evaluate, features."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("dataset", "train", "generate", "evaluate", "features", "export")


def _kv(items: list[str]) -> dict[str, Any]:
    """--set key=value (model arguments): values parsed as JSON when they can be (numbers, true/false)."""
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"--set {it!r}: give KEY=VALUE")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _ints(s: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {s!r}") from None


def add_parsers(sub) -> None:
    d = sub.add_parser("dataset", help="captured traces -> compact arrays with a documented split (phantom.gen)")
    d.add_argument("traces", nargs="+", help="trace files or folders (e.g. traces/phantom from make traces)")
    d.add_argument("--out", required=True, help="dataset folder (dataset.npz + meta.json)")
    d.add_argument("--train-seeds", default="1,2", help="seeds of the training runs (default 1,2)")
    d.add_argument("--heldout", default="numa", help="scenarios never trained on, comma-separated (default numa)")

    t = sub.add_parser("train", help="train a backbone (torchrun --nproc_per_node=N -m phantom train ... for DDP)")
    t.add_argument("--dataset", required=True)
    t.add_argument("--backbone", default="image", help="image, transformer, iid, stitch (default image)")
    t.add_argument("--out", required=True, help="checkpoint file")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch", type=int, default=None, help="global batch in windows")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--device", default="", help="cpu or cuda (default: cuda when present)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    t.add_argument("--eval-every", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model argument (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    g = sub.add_parser("generate", help="generate a trace from a checkpoint (streamed, .jsonl.gz or .npz)")
    g.add_argument("--ckpt", required=True)
    g.add_argument("--out", required=True, help="trace file: .jsonl.gz, .jsonl or .npz")
    g.add_argument("--scenario", default=None, help="a scenario the model was trained on")
    g.add_argument("--tlps", type=int, default=100_000, help="records the backbone generates (default 100,000)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--raw", action="store_true", help="no calibration: the backbone's records as they come")
    g.add_argument("--no-masks", action="store_true", help="transformer: no legality masks when sampling")
    for k in ("mps", "mrrs", "rcb", "tag-width"):
        g.add_argument(f"--{k}", type=int, default=None, help=f"link parameter {k.replace('-', '_')}")
    for k in ("tx-fraction", "frame-bytes", "small-fraction", "load"):
        g.add_argument(f"--{k}", type=float, default=None, help=f"workload knob {k.replace('-', '_')}")
    g.add_argument("--device", default="")
    g.add_argument("--batch", type=int, default=None, help="windows / streams per forward pass")
    g.add_argument("--quiet", action="store_true")

    e = sub.add_parser("evaluate", help="generated vs real traces: FD, JSD, W1, ACF, task metrics, violations")
    e.add_argument("--real", nargs="+", required=True, help="real trace files or folders")
    e.add_argument("--gen", nargs="+", required=True, metavar="[NAME=]PATH[,PATH...]",
                   help="generated sets; NAME and NAME+cal pairs get calibration ratios")
    e.add_argument("--plots", default=None, help="write PNG plots into this folder")
    e.add_argument("--json", default=None, help="write the figures as JSON to this file")
    e.add_argument("--features", default=None, help="feature extractor weights (default data/phantom/features.pt)")

    f = sub.add_parser("features", help="train the frozen feature extractor of the Frechet distance")
    f.add_argument("--dataset", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--quiet", action="store_true")


    x = sub.add_parser("export", help="an inference-only copy of a checkpoint (no optimizer state), for shipping")
    x.add_argument("--ckpt", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--command", default="", help="the training command, recorded in the copy")


def run(args) -> int:
    from phantom.gen.dataset import DatasetError
    from phantom.gen.encoding import EncodingError
    from phantom.gen.train import CheckpointError
    from phantom.trace import TraceFormatError

    try:
        return _run(args)
    except (TraceFormatError, OSError, ValueError, CheckpointError, DatasetError, EncodingError) as e:
        # (OSError: an unwritable or unreadable path; its message names the path)
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.cmd == "dataset":
        from phantom.gen.dataset import DatasetConfig, build

        cfg = DatasetConfig(_ints(args.train_seeds, "--train-seeds"),
                            tuple(s.strip() for s in args.heldout.split(",") if s.strip()))
        meta = build(args.traces, args.out, cfg)
        print(f"dataset {args.out}: fingerprint {meta['fingerprint']}; " + ", ".join(
            f"{k} {v['traces']} traces / {v['records']:,} records" for k, v in meta["splits"].items()))
        return 0
    if args.cmd == "train":
        from phantom.gen.train import TrainConfig, train

        kw = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr),
                                ("eval_every", args.eval_every)) if v is not None}
        cfg = TrainConfig(backbone=args.backbone, seed=args.seed, device=args.device, threads=args.threads, **kw)
        ck = train(args.dataset, args.out, cfg, _kv(args.set), resume=args.resume, progress=not args.quiet)
        last = ck["history"][-1] if ck["history"] else {}
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{args.out}: {ck['backbone']} after {ck['step']} steps"
                  + (f", loss {last['loss']:.3f}" if "loss" in last else "")
                  + (f", validation {last['val']:.3f}" if "val" in last else "")
                  + (f", {last['elapsed_s']:.0f} s" if "elapsed_s" in last else ""))
        return 0
    if args.cmd == "generate":
        from phantom.gen.sample import GenerateConfig, generate, resolve_condition
        from phantom.gen.train import load_checkpoint

        ck = load_checkpoint(args.ckpt)
        link = {"mps": args.mps, "mrrs": args.mrrs, "rcb": args.rcb, "tag_width": args.tag_width}
        knobs = {"tx_fraction": args.tx_fraction, "frame_bytes": args.frame_bytes,
                 "small_fraction": args.small_fraction, "load": args.load}
        cond = resolve_condition(ck, args.scenario, knobs, link)
        cfg = GenerateConfig(tlps=args.tlps, seed=args.seed, calibrate=not args.raw, constrained=not args.no_masks,
                             batch=args.batch, device=args.device, progress=not args.quiet)
        rep = generate(ck, args.out, cond, cfg)
        print(f"{rep.path}: {rep.records:,} TLPs ({rep.generated:,} generated by {ck['backbone']}) in "
              f"{rep.seconds:.1f} s, {rep.tlps_per_s:,.0f} TLPs/s" + (f"; MAC frames in {rep.mac_path}"
                                                                      if rep.mac_path else ""))
        if rep.stats is not None:
            print(rep.stats.format())
        return 0
    if args.cmd == "evaluate":
        from phantom.gen.evaluate import evaluate_sets, format_table, load_set, plot
        from phantom.gen.features import DEFAULT_PATH, Extractor
        from phantom.trace import check_output_file, check_output_folder

        if args.json is not None:
            if not args.json.strip():
                raise ValueError("--json: expected a file name, got ''")
            check_output_file("--json", args.json)
        if args.plots is not None:
            check_output_folder("--plots", args.plots)
        real = load_set("real", args.real)
        gens = []
        for item in args.gen:
            name, sep, paths = item.partition("=")
            if not sep:
                name, paths = Path(item.split(",")[0]).name.split(".")[0], item
            parts = [p.strip() for p in paths.split(",")]
            if not name.strip() or not paths.strip() or any(not p for p in parts):
                raise ValueError(f"--gen {item!r}: expected NAME=TRACE[,TRACE...] or TRACE[,TRACE...]")
            if name in {"real"} | {g.name for g in gens}:
                raise ValueError(f"--gen {item!r}: the set name {name!r} is already used")
            gens.append(load_set(name, parts))
        ex = Extractor(args.features or DEFAULT_PATH)
        res = evaluate_sets(real, gens, ex)
        print(format_table(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=float))
        if args.plots:
            for f in plot(res, {s.name: s for s in [real] + gens}, args.plots):
                print(f"wrote {f}", file=sys.stderr)
        return 0
    if args.cmd == "export":
        from phantom.gen.train import export_checkpoint

        ck = export_checkpoint(args.ckpt, args.out, args.command)
        print(f"{args.out}: {ck['backbone']} after {ck['step']} steps, dataset {ck['dataset']['fingerprint']}")
        return 0
    if args.cmd == "features":
        from phantom.gen.features import FeatureConfig, train_extractor

        cfg = FeatureConfig(seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
        cmd = "python -m phantom " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        ck = train_extractor(args.dataset, args.out, cfg, progress=not args.quiet, command=cmd)
        print(f"{args.out}: held-out accuracy {ck['training']['heldout_accuracy']}")
        return 0
    return 2
