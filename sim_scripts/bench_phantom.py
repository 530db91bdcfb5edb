"""`make bench-phantom`: Phantom's targets, measured (docs/phantom.md).

On the captures of `make traces` (dataset split of `python -m phantom dataset`): trains every backbone at its
default size (or reuses a checkpoint trained on the same dataset), then, for every held-out real trace, generates
a trace of the same condition (scenario, link parameters) and length with each backbone alone and with
calibration, and evaluates them against the real held-out traces of the group:

* ``same``:   held-out seeds of captured conditions (``test_same``);
* ``unseen``: link parameters no training capture has (``test_unseen``: MPS 512 / MRRS 1024 / RCB 128);
* ``other``:  a scenario never trained on (``test_other``: numa), generated from its measured knobs alone.

Each group's table has the real training traces of the same conditions as the floor (what real-vs-real looks
like), FD / JSD / W1 / ACF, task-metric errors, violations per TLP; then calibration's improvement ratios, what
calibration changed per backbone, and generation + calibration speed (TLPs per second, flat memory, ``.npz``).
Writes ``build/phantom/bench.json`` and PNG plots under ``build/phantom/plots/<group>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from phantom.gen.backbones import get_backbone, names as backbone_names  # noqa: E402
from phantom.gen.condition import Condition  # noqa: E402
from phantom.gen.dataset import Dataset, build  # noqa: E402
from phantom.gen.evaluate import TraceSet, evaluate_sets, format_table, plot, ratio  # noqa: E402
from phantom.gen.features import DEFAULT_PATH, Extractor  # noqa: E402
from phantom.gen.sample import GenerateConfig, generate, resolve_condition  # noqa: E402
from phantom.gen.train import TrainConfig, load_checkpoint, train  # noqa: E402
from phantom.trace import load_any_columns  # noqa: E402

GROUPS = {"same": "test_same", "unseen": "test_unseen", "other": "test_other"}


def _ckpt(ds: Path, out: Path, backbone: str, steps: int | None, fingerprint: str) -> tuple[dict, float]:
    if out.exists():
        try:
            ck = load_checkpoint(out)
            want = steps or TrainConfig(backbone=backbone).steps
            # reused only if trained on this dataset, for these steps, with today's default model arguments (a
            # changed default must not be benchmarked on a checkpoint of the old one)
            args = dataclasses.asdict(get_backbone(backbone).Config())
            if (ck.get("dataset") or {}).get("fingerprint") == fingerprint and ck.get("step") == want \
                    and (ck.get("train_config") or {}).get("steps") == want and ck.get("model_args") == args:
                return ck, float(ck.get("train_seconds") or (ck["history"][-1].get("elapsed_s", 0.0)
                                                            if ck.get("history") else 0.0))
        except (ValueError, FileNotFoundError):
            pass
    t0 = time.time()
    kw = {"steps": steps} if steps else {}
    ck = train(ds, out, TrainConfig(backbone=backbone, **kw), progress=True)
    return ck, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=str(ROOT / "traces" / "phantom"), help="captures of make traces")
    ap.add_argument("--work", default=str(ROOT / "build" / "phantom"), help="dataset, checkpoints, outputs")
    ap.add_argument("--backbones", default=",".join(backbone_names()))
    ap.add_argument("--max-tlps", type=int, default=3000, help="records generated per held-out trace (at most)")
    ap.add_argument("--speed-tlps", type=int, default=200_000, help="records of the speed run (image backbone)")
    ap.add_argument("--transformer-steps", type=int, default=None, help="training steps of the transformer")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ds_dir = work / "dataset"
    meta = build([args.traces], ds_dir, progress=False)
    ds = Dataset.load(ds_dir)
    fp = meta["fingerprint"]
    print(f"Phantom bench, {date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{__import__('torch').get_num_threads()}; dataset {fp}: " + ", ".join(
              f"{k} {v['traces']} traces / {v['records']:,} records" for k, v in meta["splits"].items()))
    ex = Extractor(DEFAULT_PATH)
    bbs = [b.strip() for b in args.backbones.split(",") if b.strip()]
    cks, train_s = {}, {}
    for b in bbs:
        cks[b], train_s[b] = _ckpt(ds_dir, work / f"{b}.pt", b,
                                   args.transformer_steps if b == "transformer" else None, fp)
        print(f"  {b}: trained {cks[b]['step']} steps, {train_s[b]:.0f} s")

    traces = ds.meta["traces"]
    results: dict = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                     "dataset": fp, "train_seconds": train_s, "groups": {}, "calibration": {}, "speed": {}}
    cal_stats: dict[str, list] = {b: [] for b in bbs}
    for group, split in GROUPS.items():
        tests = [t for t in traces if t["split"] == split]
        if not tests:
            continue
        real = TraceSet("real", [load_any_columns(t["file"]) for t in tests])
        conds = {(t["condition"]["scenario"], json.dumps(t["condition"]["link"], sort_keys=True)) for t in tests}
        floor = [t for t in traces if t["split"] == "train"
                 and (t["condition"]["scenario"], json.dumps(t["condition"]["link"], sort_keys=True)) in conds]
        sets = [TraceSet("real-train", [load_any_columns(t["file"]) for t in floor])] if floor else []
        gdir = work / "gen" / group
        gdir.mkdir(parents=True, exist_ok=True)
        for b in bbs:
            ck = cks[b]
            for cal in (False, True):
                name = b + ("+cal" if cal else "")
                paths = []
                for k, t in enumerate(tests):
                    c = Condition.from_json(t["condition"])
                    scen = c.scenario if c.scenario in ds.space.scenarios else None
                    knobs = None if scen else {f: getattr(c.knobs, f) for f in c.knobs.__dataclass_fields__}
                    cond = resolve_condition(ck, scen, knobs, dataclasses.asdict(c.link))
                    out = gdir / f"{name.replace('+', '_')}__{k}.npz"
                    rep = generate(ck, out, cond, GenerateConfig(tlps=min(t["records"], args.max_tlps), seed=100 + k,
                                                                 calibrate=cal, progress=False))
                    if rep.stats is not None:
                        cal_stats[b].append(rep.stats)
                    paths.append(out)
                sets.append(TraceSet(name, [load_any_columns(p) for p in paths]))
        res = evaluate_sets(real, sets, ex)
        print(f"\n=== {group}: {len(tests)} held-out real traces ({split}) ===")
        print(format_table(res))
        pd = work / "plots" / group
        plot(res, {s.name: s for s in [real] + sets}, pd)
        results["groups"][group] = res

    # calibration: what it changed, per backbone
    print("\n=== what calibration changed (fractions of the backbone's records; inserted: of the output) ===")
    print(f"{'backbone':<12}{'unchanged':>10}{'changed':>10}{'dropped':>10}{'inserted':>10}{'fields':>10}")
    for b in bbs:
        st = cal_stats[b]
        n_in = sum(s.records_in for s in st)
        n_out = sum(s.records_out for s in st)
        un, ch = sum(s.unchanged for s in st), sum(s.changed for s in st)
        dr, ins = sum(s.n_dropped for s in st), sum(s.n_inserted for s in st)
        fields = sum(sum(s.field_changes.values()) for s in st)
        nf = len(st[0].field_changes) if st else 1
        fr = {"unchanged": un / max(n_in, 1), "changed": ch / max(n_in, 1), "dropped": dr / max(n_in, 1),
              "inserted": ins / max(n_out, 1), "fields_changed": fields / max((un + ch) * nf, 1)}
        results["calibration"][b] = fr
        print(f"{b:<12}" + "".join(f"{fr[k]:>10.3f}" for k in ("unchanged", "changed", "dropped", "inserted",
                                                               "fields_changed")))

    # speed: generation + calibration to .npz
    print("\n=== generation + calibration speed (.npz, streamed) ===")
    for b in bbs:
        n = args.speed_tlps if b in ("image", "iid", "stitch") else max(args.speed_tlps // 10, 1000)
        ck = cks[b]
        cond = resolve_condition(ck, "mixed" if "mixed" in ds.space.scenarios else None)
        import resource

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rep = generate(ck, work / f"speed_{b}.npz", cond, GenerateConfig(tlps=n, seed=1, progress=False))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results["speed"][b] = {"tlps": rep.generated, "records": rep.records, "seconds": rep.seconds,
                               "tlps_per_s": rep.tlps_per_s, "peak_rss_growth_mib": (rss1 - rss0) / 1024}
        print(f"  {b:<12} {rep.generated:>9,} TLPs in {rep.seconds:6.1f} s: {rep.tlps_per_s:>9,.0f} TLPs/s "
              f"(peak RSS growth {(rss1 - rss0) / 1024:.0f} MiB)")
        (work / f"speed_{b}.npz").unlink(missing_ok=True)

    # targets
    print("\n=== targets ===")
    for group, res in results["groups"].items():
        s = {x["name"]: x for x in res["systems"]}
        for b in bbs:
            if b not in s or b + "+cal" not in s:
                continue
            raw, cal = s[b], s[b + "+cal"]
            task = {k: ratio(raw["task_rel_error"][k], cal["task_rel_error"][k]) for k in raw["task_rel_error"]}
            best = max((v for v in task.values() if np.isfinite(v)), default=float("nan"))
            print(f"  {group:<7}{b:<12} violations/TLP {raw['violation_rate']:.4f} -> {cal['violation_rate']:.4f}; "
                  f"FD {raw['fd']:.3g} -> {cal['fd']:.3g} ({ratio(raw['fd'], cal['fd']):.2f}x); best task-metric "
                  f"improvement {best:.3g}x")
        if "iid+cal" in s:
            for b in bbs:
                if b + "+cal" in s and b not in ("iid",):
                    print(f"  {group:<7}{b}+cal FD {s[b + '+cal']['fd']:.3g} vs iid+cal {s['iid+cal']['fd']:.3g}"
                          f" vs stitch+cal {s.get('stitch+cal', {}).get('fd', float('nan')):.3g}"
                          f" (floor real-train {s.get('real-train', {}).get('fd', float('nan')):.3g})")
    (work / "bench.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {work / 'bench.json'} and plots under {work / 'plots'}")
    return 0


def _sig(x: float) -> str:
    """A figure as docs/phantom.md writes it: three significant digits, thousands grouped, no exponent."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    t = f"{x:.{max(0, 2 - int(np.floor(np.log10(abs(x)))))}f}"
    return t.rstrip("0").rstrip(".") if "." in t else t


ROW = {"real-train": "real training runs (the floor)"}


def markdown(path: Path) -> str:
    """The tables of docs/phantom.md's Results, rendered from a bench.json this script wrote."""
    d = json.loads(path.read_text())
    out: list[str] = []
    for group, res in d["groups"].items():
        out += [f"#### {group} ({res['real']['records']:,} records)",
                "| system | FD | JSD mean | W1 dt (ns) | ACF err | task err | viol/TLP |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in res["systems"]:
            name = ROW.get(s["name"], s["name"].replace("+cal", " + calibration"))
            viol = "**0**" if s["name"].endswith("+cal") and s["violation_rate"] == 0 else _sig(s["violation_rate"])
            jsd = float(np.mean(list(s["jsd"].values()))) if s["jsd"] else float("nan")
            task = float(np.mean(list(s["task_rel_error"].values()))) if s["task_rel_error"] else float("nan")
            out.append(f"| {name} | {_sig(s['fd'])} | {_sig(jsd)} | {_sig(s['w1']['dt_ns'])} | "
                       f"{_sig(s['acf_error'])} | {_sig(task)} | {viol} |")
        out.append("")
    out += ["| backbone | records unchanged | changed | dropped | inserted (of output) | fields changed | "
            "generation + calibration |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for b, fr in d["calibration"].items():
        sp = d["speed"].get(b, {}).get("tlps_per_s", float("nan"))
        out.append(f"| {b} | " + " | ".join(f"{100 * fr[k]:.1f} %" for k in ("unchanged", "changed", "dropped",
                                                                             "inserted", "fields_changed"))
                   + f" | {sp:,.0f} TLPs/s |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"] and len(sys.argv) == 3:
        print(markdown(Path(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
