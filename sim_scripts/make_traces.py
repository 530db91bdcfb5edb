"""`make traces`: capture the documented set of traces Phantom's generative model trains and is evaluated on.

Scenarios x link parameter sets x seeds, each one a capture of the NIC (Verilator, data width 256, the scenario's
host model) through `tb.runner`, written as ``<out>/<scenario>__<linkset>__s<seed>.jsonl.gz`` with its MAC sidecar,
plus ``manifest.json``: every capture's condition, TLP count and SHA-256, and a fingerprint over all of them
(what `python -m phantom dataset` records in the arrays it builds). Captures already present with the same
condition are reused (``--force`` recaptures).

The set (docs/phantom.md, "Data"):
* link sets ``base`` (the scenario's own MPS/MRRS/RCB) and ``alt`` (MPS 128, MRRS 256; jumbo keeps MRRS 4096), for
  every scenario, seeds 1 and 2 (training) and 3 (held out);
* link set ``unseen`` (MPS 512, MRRS 1024, RCB 128: an MRRS and a combination no training capture has), seed 3
  only, for mixed, tx_heavy and rx_heavy: the "never captured" condition of the evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from phantom.rules import check_file  # noqa: E402
from tb import runner  # noqa: E402
from tb.scenarios import SCENARIOS, get_scenario  # noqa: E402

# frames per capture: about 2-4 k TLPs each (jumbo frames make ~40 TLPs per frame, small ones ~4)
FRAMES = {"mixed": 500, "tx_heavy": 500, "rx_heavy": 500, "small": 800, "jumbo": 60, "loaded": 300,
          "rcb_split": 500, "numa": 500, "ideal": 500}
LINK_SETS = {
    "base": {},
    "alt": {"mps": 128, "mrrs": 256},
    "unseen": {"mps": 512, "mrrs": 1024, "rcb": 128},
}
TRAIN_SEEDS = (1, 2)
HELDOUT_SEEDS = (3,)
UNSEEN_SCENARIOS = ("mixed", "tx_heavy", "rx_heavy")


@dataclass(frozen=True)
class Capture:
    scenario: str
    linkset: str
    seed: int
    mps: int
    mrrs: int
    rcb: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.scenario}__{self.linkset}__s{self.seed}"


def plan(scenarios: list[str], seeds: tuple[int, ...], heldout: tuple[int, ...], frames_scale: float) -> list[Capture]:
    out = []
    for s in scenarios:
        sc = get_scenario(s)
        frames = max(20, int(FRAMES.get(s, 400) * frames_scale))
        for ls in ("base", "alt"):
            p = {"mps": sc.mps, "mrrs": sc.mrrs, "rcb": sc.rcb, **LINK_SETS[ls]}
            if s == "jumbo" and ls == "alt":
                p["mrrs"] = sc.mrrs
            for seed in seeds + heldout:
                out.append(Capture(s, ls, seed, p["mps"], p["mrrs"], p["rcb"], frames))
        if s in UNSEEN_SCENARIOS:
            p = {"mps": sc.mps, "mrrs": sc.mrrs, "rcb": sc.rcb, **LINK_SETS["unseen"]}
            for seed in heldout:
                out.append(Capture(s, "unseen", seed, p["mps"], p["mrrs"], p["rcb"], frames))
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def capture(c: Capture, out: Path) -> Path:
    trace = out / f"{c.name}.jsonl.gz"
    env = {"NIC_SCENARIO": c.scenario, "NIC_TRACE": str(trace.resolve()), "NIC_SEED": str(c.seed),
           "NIC_FRAMES": str(c.frames), "NIC_MPS": str(c.mps), "NIC_MRRS": str(c.mrrs), "NIC_RCB": str(c.rcb),
           "NIC_PROGRESS": "0"}
    runner.run("run_scenario", sim="verilator", data_width=256, module="test_scenario", env=env,
               test_dir=ROOT / "build" / "traces" / c.name, seed=c.seed)
    return trace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "traces" / "phantom"), help="folder of the captures")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario names")
    ap.add_argument("--frames-scale", type=float, default=1.0, help="scale every scenario's frame count")
    ap.add_argument("--force", action="store_true", help="recapture even when a capture exists")
    ap.add_argument("--jobs", type=int, default=2, help="captures run at once (default 2)")
    args = ap.parse_args(argv)
    try:
        scen = [get_scenario(s.strip()).name for s in args.scenarios.split(",") if s.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not args.frames_scale > 0:
        ap.error(f"--frames-scale must be positive, got {args.frames_scale}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    man_path = out / "manifest.json"
    old = {}
    if man_path.exists() and not args.force:
        try:
            old = {e["name"]: e for e in json.loads(man_path.read_text())["captures"]}
        except (ValueError, KeyError, TypeError):
            old = {}
    caps = plan(scen, TRAIN_SEEDS, HELDOUT_SEEDS, args.frames_scale)
    entries: dict[str, dict] = {}
    t0 = time.time()
    todo = []
    for c in caps:
        trace = out / f"{c.name}.jsonl.gz"
        prev = old.get(c.name)
        if prev and prev.get("condition") == asdict(c) and trace.exists() and sha256(trace) == prev.get("sha256"):
            entries[c.name] = prev
        else:
            todo.append(c)

    def one(c: Capture) -> dict:
        trace = capture(c, out)
        rep = check_file(trace)
        if not rep.ok:
            raise runner.SimulationFailed(f"capture {c.name} has {rep.errors} rule violations:\n{rep.format()}")
        return {"name": c.name, "file": trace.name, "condition": asdict(c), "tlps": rep.total, "sha256": sha256(trace)}

    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max(1, args.jobs)) as pool, tqdm(total=len(caps), initial=len(entries), desc="captures",
                                                           unit="trace") as bar:
        futs = {pool.submit(one, c): c for c in todo}
        for fut in as_completed(futs):
            c = futs[fut]
            try:
                entries[c.name] = fut.result()
            except runner.SimulationFailed as e:
                for f in futs:
                    f.cancel()
                print(f"error: capture {c.name} failed: {e}", file=sys.stderr)
                return 1
            bar.update(1)
            bar.set_postfix_str(c.name)
            # progress survives an interrupt
            man_path.write_text(json.dumps({"captures": [entries[k] for k in sorted(entries)]}, indent=1))
    entries = [entries[c.name] for c in caps]
    fp = hashlib.sha256("".join(sorted(e["sha256"] for e in entries)).encode()).hexdigest()[:16]
    man_path.write_text(json.dumps({"fingerprint": fp, "captures": entries, "train_seeds": list(TRAIN_SEEDS),
                                    "heldout_seeds": list(HELDOUT_SEEDS)}, indent=1))
    n = sum(e["tlps"] for e in entries)
    print(f"{len(entries)} captures, {n:,} TLPs in {out} (fingerprint {fp}); {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
