"""Captured traces -> compact arrays for training, with a documented split, calibration priors and a fingerprint.

``python -m phantom dataset traces/phantom --out data/phantom/ds`` writes (nanoGPT's habit: data prepared offline)

* ``dataset.npz``: ``tokens`` (N, F) int16 (every record of every trace, the fields of ``phantom.gen.encoding``),
  ``dt_ps`` (N,) int64 (exact inter-arrival times, for the image encoding), ``starts`` (T + 1,) record offsets;
* ``meta.json``: the encoding, the condition space, every trace (file, SHA-256, split, condition, header), the
  calibration priors and per-scenario header templates measured on the training split, and the fingerprint (a
  SHA-256 over the encoding, the split rules and the traces) that checkpoints record.

The split (``DatasetConfig``), decided per trace from what its header says (scenario, seed, link parameters):

* ``test_other``  every run of a held-out scenario (default ``numa``: a host the model never sees);
* ``train``       runs whose seed is a training seed (default 1 and 2);
* ``test_same``   runs of other seeds with link parameters some training run has (held-out runs, same conditions);
* ``test_unseen`` runs of other seeds with link parameters no training run has (conditions never captured).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from phantom.gen.calibrate import Priors, priors_from_traces
from phantom.gen.condition import Condition, ConditionSpace, measure
from phantom.gen.encoding import Encoding, EncodingError, ids_of
from phantom.trace import TraceColumns, TraceFormatError, load_any_columns, trace_mac_frames

log = logging.getLogger(__name__)

DATASET_FORMAT = "phantom.dataset"
DATASET_VERSION = 1
SPLITS = ("train", "test_same", "test_other", "test_unseen")


@dataclass(frozen=True)
class DatasetConfig:
    """How traces are split (see the module docstring)."""

    train_seeds: tuple[int, ...] = (1, 2)           # runs with these seeds train
    heldout_scenarios: tuple[str, ...] = ("numa",)  # scenarios never trained on

    def __post_init__(self) -> None:
        if not self.train_seeds:
            raise ValueError("DatasetConfig.train_seeds must name at least one seed")
        for s in self.train_seeds:
            if not isinstance(s, int) or isinstance(s, bool):
                raise ValueError(f"DatasetConfig.train_seeds: seeds are integers, got {s!r}")
        for name, v in (("train_seeds", self.train_seeds), ("heldout_scenarios", self.heldout_scenarios)):
            dup = sorted({x for x in v if list(v).count(x) > 1}, key=str)
            if dup:
                raise ValueError(f"DatasetConfig.{name}: {dup[0]!r} is given twice")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trace_files(items: list[str | os.PathLike]) -> list[Path]:
    """Trace files named or found in folders (``.jsonl.gz``, ``.jsonl``, ``.npz``; MAC sidecars excluded)."""
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.endswith(".mac.jsonl.gz")
                           and (q.name.endswith(".jsonl.gz") or q.name.endswith(".jsonl") or q.suffix == ".npz"))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such trace file or folder")
    if not out:
        raise ValueError(f"no trace files in {', '.join(repr(str(i)) for i in items)}")
    seen: dict[Path, Path] = {}
    for p in out:   # the same trace twice would count its records twice
        r = p.resolve()
        if r in seen:
            also = f" (also as {seen[r]})" if str(seen[r]) != str(p) else ""
            raise ValueError(f"{p}: trace given twice{also}")
        seen[r] = p
    return out


def _seed_of(tc: TraceColumns) -> int | None:
    s = (tc.header.extra or {}).get("seed")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def build(items: list[str | os.PathLike], out: str | os.PathLike, config: DatasetConfig | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Encode traces into ``out/dataset.npz`` + ``out/meta.json``; returns the metadata."""
    from tqdm import tqdm

    config = config or DatasetConfig()
    files = trace_files(items)
    loaded: list[tuple[Path, TraceColumns, list]] = []
    for f in tqdm(files, desc="reading traces", unit="trace", disable=None if progress else True):
        tc = load_any_columns(f)
        h = tc.header
        if not h.memory_map:
            raise TraceFormatError(f, 1, "memory_map",
                                   "trace has no memory map: the dataset needs captures of schema version 2 or later "
                                   "(re-capture with make traces)")
        loaded.append((f, tc, trace_mac_frames(f, h)))
    enc = Encoding(ids_of([tc for _, tc, _ in loaded]))
    info = []
    for f, tc, mac in loaded:
        c = measure(tc)
        seed = _seed_of(tc)
        info.append({"file": str(f), "name": f.name.split(".")[0], "seed": seed, "condition": c.to_json(),
                     "link": (tc.header.mps, tc.header.mrrs, tc.header.rcb)})
    present = {d["condition"]["scenario"] for d in info}
    for s in config.heldout_scenarios:
        if s not in present:
            raise ValueError(f"held-out scenario {s!r} is in none of the traces (scenarios: "
                             f"{', '.join(sorted(present))}); hold out one of them, or none with --heldout ''")
    train_links = set()
    for d in info:
        sc = d["condition"]["scenario"]
        if sc not in config.heldout_scenarios and d["seed"] in config.train_seeds:
            train_links.add(d["link"])
    for d in info:
        sc = d["condition"]["scenario"]
        if sc in config.heldout_scenarios:
            d["split"] = "test_other"
        elif d["seed"] in config.train_seeds:
            d["split"] = "train"
        elif d["link"] in train_links:
            d["split"] = "test_same"
        else:
            d["split"] = "test_unseen"
    toks, dts, starts = [], [], [0]
    for (f, tc, _), d in tqdm(list(zip(loaded, info)), desc="encoding", unit="trace",
                              disable=None if progress else True):
        try:
            tok, dt = enc.encode(tc)
        except EncodingError as e:
            raise EncodingError(f"{f}: {e}") from None
        toks.append(tok.astype(np.int16))
        dts.append(dt.astype(np.int64))
        starts.append(starts[-1] + len(tok))
        d["records"] = len(tok)
        d["sha256"] = sha256_file(f)
        d["header"] = tc.header.to_json()
        d.pop("link")
    train = [(tc, mac) for (f, tc, mac), d in zip(loaded, info) if d["split"] == "train"]
    if not train:
        raise ValueError("no training traces: the split rules (train seeds "
                         f"{list(config.train_seeds)}, held-out scenarios {list(config.heldout_scenarios)}) "
                         "leave nothing to train on")
    priors = priors_from_traces(train)
    scen = tuple(sorted({d["condition"]["scenario"] for d in info if d["split"] == "train"}))
    templates = {}
    for d in sorted(info, key=lambda d: d["name"]):
        if d["split"] == "train" and d["condition"]["scenario"] not in templates:
            templates[d["condition"]["scenario"]] = d["header"]
    fp = hashlib.sha256(json.dumps({"format": DATASET_FORMAT, "version": DATASET_VERSION, "encoding": enc.to_json(),
                                    "config": asdict(config),
                                    "traces": sorted((d["sha256"], d["split"]) for d in info)},
                                   sort_keys=True).encode()).hexdigest()[:16]
    meta = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "fingerprint": fp, "encoding": enc.to_json(),
            "conditions": ConditionSpace(scen).to_json(), "config": asdict(config), "traces": info,
            "priors": priors.to_json(), "templates": templates,
            "splits": {s: {"traces": sum(d["split"] == s for d in info),
                           "records": sum(d["records"] for d in info if d["split"] == s)} for s in SPLITS}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "dataset.npz", tokens=np.concatenate(toks), dt_ps=np.concatenate(dts),
                        starts=np.asarray(starts, dtype=np.int64))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


class DatasetError(ValueError):
    pass


@dataclass
class Dataset:
    """A built dataset in memory."""

    root: Path
    meta: dict[str, Any]
    tokens: np.ndarray      # (N, F) int16
    dt_ps: np.ndarray       # (N,) int64
    starts: np.ndarray      # (T + 1,) int64
    encoding: Encoding = field(init=False)
    space: ConditionSpace = field(init=False)

    def __post_init__(self) -> None:
        self.encoding = Encoding.from_json(self.meta["encoding"])
        self.space = ConditionSpace.from_json(self.meta["conditions"])

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Dataset":
        root = Path(root)
        mp, dp = root / "meta.json", root / "dataset.npz"
        if not mp.exists() or not dp.exists():
            raise DatasetError(f"{root}: not a Phantom dataset (needs meta.json and dataset.npz; build one with "
                               f"python -m phantom dataset)")
        try:
            meta = json.loads(mp.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{mp}: not JSON ({e.msg})") from None
        if meta.get("format") != DATASET_FORMAT or meta.get("version") != DATASET_VERSION:
            raise DatasetError(f"{mp}: not a {DATASET_FORMAT} version {DATASET_VERSION} dataset")
        try:
            with np.load(dp, allow_pickle=False) as z:
                tokens, dt, starts = z["tokens"], z["dt_ps"], z["starts"]
        except Exception as e:  # zipfile/numpy raise many kinds
            raise DatasetError(f"{dp}: unreadable ({e})") from None
        if len(starts) != len(meta["traces"]) + 1 or starts[-1] != len(tokens):
            raise DatasetError(f"{dp}: arrays do not match meta.json")
        return cls(root, meta, tokens, dt, starts)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def priors(self) -> Priors:
        return Priors.from_json(self.meta["priors"])

    def traces(self, split: str | None = None) -> list[int]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split: {split!r} (known: {', '.join(SPLITS)})")
        return [i for i, d in enumerate(self.meta["traces"]) if split is None or d["split"] == split]

    def trace_tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        return self.tokens[a:b], self.dt_ps[a:b]

    def condition(self, i: int) -> Condition:
        return Condition.from_json(self.meta["traces"][i]["condition"])

    def cond_vectors(self, split: str) -> np.ndarray:
        return np.stack([self.space.vector(self.condition(i)) for i in self.traces(split)])

    def windows(self, split: str, window: int, batch: int, rng: np.random.Generator,
                drop_scenario: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch of random windows: tokens (B, W, F), dt (B, W), condition vectors (B, C); trace chosen with
        probability proportional to its length."""
        ids = self.traces(split)
        lens = np.array([self.starts[i + 1] - self.starts[i] - window for i in ids], dtype=np.float64)
        if (lens <= 0).all():
            raise DatasetError(f"split {split!r}: every trace is shorter than the window ({window})")
        p = np.maximum(lens, 0) / np.maximum(lens, 0).sum()
        pick = rng.choice(len(ids), size=batch, p=p)
        toks = np.empty((batch, window, self.tokens.shape[1]), dtype=np.int64)
        dts = np.empty((batch, window), dtype=np.int64)
        conds = np.empty((batch, self.space.dim), dtype=np.float32)
        drop = rng.random(batch) < drop_scenario
        for b, k in enumerate(pick):
            i = ids[k]
            o = int(self.starts[i]) + int(rng.integers(0, int(lens[k]) + 1))
            toks[b] = self.tokens[o:o + window]
            dts[b] = self.dt_ps[o:o + window]
            conds[b] = self.space.vector(self.condition(i), drop_scenario=bool(drop[b]))
        return toks, dts, conds

    def iter_windows(self, split: str, window: int, stride: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Every window of every trace of a split: (trace id, tokens (W, F), dt (W,))."""
        for i in self.traces(split):
            tok, dt = self.trace_tokens(i)
            for o in range(0, len(tok) - window + 1, stride):
                yield i, tok[o:o + window], dt[o:o + window]

    def template(self, scenario: str) -> dict[str, Any]:
        """A header of a training trace of the scenario (the nearest by name if none: the first scenario's)."""
        t = self.meta["templates"]
        return t.get(scenario) or t[sorted(t)[0]]
