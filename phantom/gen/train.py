"""Training: seeded, resumable, self-contained checkpoints; DDP on gloo under ``torchrun --nproc_per_node=N``.

``python -m phantom train --dataset DS --backbone image --out ckpt.pt`` trains on the dataset's ``train`` split
and reports the loss on ``test_same`` windows. Every step draws one *global* batch from a seeded generator;
under torchrun each rank takes its slice of it (and of the model's noise), so N processes see exactly the
batches one process sees, and the averaged gradient is the one-process gradient (tested: the loss curves agree).

A checkpoint holds everything generation needs without the dataset: model arguments and weights, the encoding,
the condition space, per-scenario header templates and default conditions, the calibration priors, the dataset
fingerprint, plus what resuming needs (optimizer, step, RNG states, loss history).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CKPT_FORMAT = "phantom.checkpoint"
CKPT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (names the file and what is wrong)."""


@dataclass
class TrainConfig:
    """The training loop's settings (the model's own arguments are the backbone's config)."""

    backbone: str = "image"     # registry name (phantom.gen.backbones)
    steps: int = 1500           # optimizer steps
    batch: int = 32             # global batch, in windows
    lr: float = 2e-3            # peak learning rate (linear warm-up, cosine decay)
    warmup: int = 50            # warm-up steps
    min_lr: float = 0.1         # final learning rate as a fraction of the peak
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 1
    eval_every: int = 250       # steps between validation losses (and checkpoints)
    eval_batches: int = 4
    drop_scenario: float = 0.1  # fraction of windows shown with the scenario slot set to unknown
    device: str = ""            # "" picks cuda when present, else cpu
    threads: int = 0            # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        from phantom.gen.backbones import get_backbone

        get_backbone(self.backbone)
        for name in ("steps", "batch", "eval_every", "eval_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.drop_scenario <= 1.0:
            raise ValueError(f"TrainConfig.drop_scenario must be in [0, 1], got {self.drop_scenario!r}")
        if not 0.0 <= self.min_lr <= 1.0:
            raise ValueError(f"TrainConfig.min_lr must be in [0, 1], got {self.min_lr!r}")
        for k in ("warmup", "threads"):
            if getattr(self, k) < 0:
                raise ValueError(f"TrainConfig.{k} must be >= 0, got {getattr(self, k)!r}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p)))


# checkpoints ----------------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    import torch

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a checkpoint file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:   # an unwritable place fails here, as an OSError naming the path
            torch.save(ckpt, f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, command: str = "") -> dict[str, Any]:
    """An inference-only copy of a checkpoint (no optimizer or RNG state: a third of the size), for shipping in
    the repository (``data/phantom/regress.pt``); ``command`` records how it was trained. dst is never src."""
    from phantom.trace import refuse_same_file

    refuse_same_file(src, dst, "exported checkpoint")
    ck = dict(load_checkpoint(src))
    for k in ("optimizer", "rng"):
        ck.pop(k, None)
    ck["exported"] = {"from": str(src), "command": command}
    save_checkpoint(dst, ck)
    return ck


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict; one-line errors for a missing, corrupt or foreign file."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"checkpoint {path}: not a Phantom checkpoint (not a torch archive)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors of many kinds
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        msg = next((ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()), lines[0])
        raise CheckpointError(f"checkpoint {path}: not a readable Phantom checkpoint ({msg[:160]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a Phantom checkpoint (no {CKPT_FORMAT!r} format tag)")
    if ck.get("version") != CKPT_VERSION:
        raise CheckpointError(f"checkpoint {path}: version {ck.get('version')!r}, this code reads {CKPT_VERSION}")
    for k in ("backbone", "model_args", "model", "encoding", "conditions", "priors", "templates"):
        if k not in ck:
            raise CheckpointError(f"checkpoint {path}: field {k!r} missing")
    return ck


def scenario_defaults(ds) -> dict[str, Any]:
    """Per training scenario, the condition generation uses when only the scenario is named: mean knobs of its
    training runs and its most common link parameters."""
    from collections import Counter

    from phantom.gen.condition import Condition, Knobs, Link

    out = {}
    by: dict[str, list] = {}
    for i in ds.traces("train"):
        c = ds.condition(i)
        by.setdefault(c.scenario, []).append(c)
    for s, cs in by.items():
        k = Knobs(*(float(np.mean([getattr(c.knobs, f.name) for c in cs])) for f in dataclasses.fields(Knobs)))
        counts = Counter(c.link for c in cs)
        # the most common link parameters; ties to the larger MPS and MRRS (a scenario's own set, in make traces)
        link = max(counts, key=lambda lk: (counts[lk], lk.mps, lk.mrrs))
        out[s] = Condition(s, k, Link(link.mps, link.mrrs, link.rcb, link.tag_width)).to_json()
    return out


def build_model(ck: dict[str, Any]):
    """(backbone impl, model, encoding, condition space) of a checkpoint, weights loaded."""
    from phantom.gen.backbones import get_backbone
    from phantom.gen.condition import ConditionSpace
    from phantom.gen.encoding import Encoding

    impl = get_backbone(ck["backbone"])
    try:
        cfg = impl.Config(**ck["model_args"])
        enc = Encoding.from_json(ck["encoding"])
        space = ConditionSpace.from_json(ck["conditions"])
        model = impl.create(cfg, enc, space)
        impl.load_state(model, ck["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint: model does not load ({str(e).splitlines()[0][:200]})") from None
    return impl, model, enc, space


# the loop -------------------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def on(self) -> bool:
        return self.world > 1


def _dist_init() -> _Dist:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def train(dataset: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, model_args: dict[str, Any] | None = None,
          *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or fit) a backbone; returns the final checkpoint dict (also written to ``out``)."""
    import torch
    from tqdm import tqdm

    from phantom.gen.backbones import get_backbone
    from phantom.gen.dataset import Dataset
    from phantom.gen.nn import pick_device

    dd = _dist_init()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = Dataset.load(dataset)
    impl = get_backbone(cfg.backbone)
    out = Path(out)
    ck0 = None
    if resume:
        ck0 = load_checkpoint(out)
        if ck0.get("exported") is not None or "optimizer" not in ck0:
            raise CheckpointError(f"checkpoint {out}: an exported (inference-only) checkpoint cannot be resumed")
        if ck0["backbone"] != cfg.backbone:
            raise CheckpointError(f"checkpoint {out}: holds a {ck0['backbone']!r} model, cannot resume as "
                                  f"{cfg.backbone!r}")
        if ck0["dataset"]["fingerprint"] != ds.fingerprint:
            raise CheckpointError(f"checkpoint {out}: trained on dataset {ck0['dataset']['fingerprint']}, "
                                  f"{dataset} is {ds.fingerprint}")
        model_args = ck0["model_args"]
    try:
        known = [f.name for f in dataclasses.fields(impl.Config)]
        for k in model_args or {}:
            if k not in known:
                raise ValueError(f"--set {k}: not a model argument of the {impl.name.value} backbone "
                                 f"(known: {', '.join(known)})")
        mcfg = impl.Config(**(model_args or {}))
    except TypeError as e:
        raise ValueError(f"{cfg.backbone} model arguments: {e}") from None
    torch.manual_seed(cfg.seed)
    model = impl.create(mcfg, ds.encoding, ds.space)
    device = pick_device(cfg.device)

    def checkpoint(step: int, history: list, opt=None, rng=None, gen=None) -> dict[str, Any]:
        return {
            "format": CKPT_FORMAT, "version": CKPT_VERSION, "backbone": impl.name.value,
            "model_args": asdict(mcfg), "train_config": asdict(cfg), "step": step,
            "model": impl.state(model.module if hasattr(model, "module") else model),
            "optimizer": opt.state_dict() if opt is not None else None,
            "rng": {"numpy": rng.bit_generator.state if rng is not None else None,
                    "torch": gen.get_state() if gen is not None else None},
            "encoding": ds.encoding.to_json(), "conditions": ds.space.to_json(),
            "dataset": {"fingerprint": ds.fingerprint, "path": str(dataset)},
            "priors": ds.meta["priors"], "templates": ds.meta["templates"],
            "scenario_defaults": scenario_defaults(ds), "history": history, "torch": str(torch.__version__),
        }

    if not impl.trainable:
        impl.fit(model, ds, cfg.seed)
        ck = checkpoint(0, [])
        if dd.rank == 0:
            save_checkpoint(out, ck)
        return ck

    model.to(device)
    W = impl.window(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history = 0, []
    if ck0 is not None:
        impl.load_state(model, ck0["model"])
        if ck0.get("optimizer"):
            opt.load_state_dict(ck0["optimizer"])
        rng.bit_generator.state = ck0["rng"]["numpy"]
        gen.set_state(ck0["rng"]["torch"])
        step, history = int(ck0["step"]), list(ck0["history"])
    if dd.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model)
    if cfg.batch % dd.world:
        raise ValueError(f"global batch {cfg.batch} does not split over {dd.world} processes")
    per = cfg.batch // dd.world
    lo, hi = dd.rank * per, (dd.rank + 1) * per
    val_rng = np.random.default_rng(12345)
    val_split = "test_same" if ds.traces("test_same") else "train"
    val = [ds.windows(val_split, W, per, val_rng) for _ in range(cfg.eval_batches)]
    noise_shape = getattr(impl, "noise_shape", None)

    def to_t(toks, dts, conds):
        return (torch.from_numpy(toks).to(device), torch.from_numpy(dts).to(device), torch.from_numpy(conds).to(device))

    def evaluate() -> float:
        model.eval()
        tot = 0.0
        g = torch.Generator().manual_seed(999)
        with torch.no_grad():
            for toks, dts, conds in val:
                noise = torch.randn(noise_shape(mcfg, len(toks)), generator=g).to(device) if noise_shape else None
                loss, _ = impl.loss(model, *to_t(toks, dts, conds), noise=noise, step=cfg.steps)
                tot += float(loss)
        model.train()
        v = tot / len(val)
        if dd.on:
            import torch.distributed as dist

            t = torch.tensor([v])
            dist.all_reduce(t)
            v = float(t) / dd.world
        return v

    t0 = time.time()
    elapsed0 = history[-1]["elapsed_s"] if history else 0.0
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {impl.name.value}", unit="step",
               disable=None if progress and dd.rank == 0 else True)
    model.train()
    loss_sum, loss_n = 0.0, 0
    while step < cfg.steps:
        toks, dts, conds = ds.windows("train", W, cfg.batch, rng, cfg.drop_scenario)
        noise = torch.randn(noise_shape(mcfg, cfg.batch), generator=gen) if noise_shape else None
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(cfg, step)
        loss, parts = impl.loss(model, *to_t(toks[lo:hi], dts[lo:hi], conds[lo:hi]),
                                noise=noise[lo:hi].to(device) if noise is not None else None, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        lv = float(loss.detach())
        if dd.on:
            import torch.distributed as dist

            t = torch.tensor([lv])
            dist.all_reduce(t)
            lv = float(t) / dd.world
        step += 1
        loss_sum += lv
        loss_n += 1
        entry = {"step": step, "loss": lv}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            entry["val"] = evaluate()
            entry["elapsed_s"] = elapsed0 + time.time() - t0
            if dd.rank == 0:
                save_checkpoint(out, checkpoint(step, history + [entry], opt, rng, gen))
        history.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}", **({"val": f"{entry['val']:.3f}"} if "val" in entry else {}))
        if step % 50 == 0:
            loss_sum, loss_n = 0.0, 0
    bar.close()
    if history and "elapsed_s" not in history[-1]:
        history[-1]["elapsed_s"] = elapsed0 + time.time() - t0
    ck = checkpoint(step, history, opt, rng, gen)
    if dd.rank == 0:
        save_checkpoint(out, ck)
    if dd.on:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return ck


_ = field
