"""The frozen feature extractor of the Frechet distance: a small trace classifier, its penultimate layer.

FID measures images in the space of Inception's penultimate layer; Inception weights cannot be downloaded here and
would know nothing of TLPs anyway. The same idea on traces: a 1-D convolutional classifier of windows of W = 64
records (the fields of ``phantom.gen.encoding``, embedded like the backbones' inputs), trained on real captures of
every named scenario to tell the scenario and the link parameters (MPS, MRRS, RCB, tag width: auxiliary heads, so
that the features see request and completion sizes, not only the traffic mix), then frozen. The 64 features
before the heads are the space; the weights ship in ``data/phantom/features.pt`` with the command that trained
them and their held-out accuracy.

Train: ``python -m phantom features --dataset data/phantom/ds --out data/phantom/features.pt`` (windows of the
training seeds' runs of every scenario, the held-out scenario included: the extractor is a measuring instrument,
not a generator; it never sees a held-out seed's run).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FEATURES_FORMAT = "phantom.features"
FEATURES_VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "data" / "phantom" / "features.pt"
MPS_CLASSES = (128, 256, 512)
MRRS_CLASSES = (128, 256, 512, 1024, 2048, 4096)
TW_CLASSES = (5, 8, 10)


@dataclass
class FeatureConfig:
    window: int = 64      # records per window
    d: int = 64           # channels
    feat: int = 64        # feature dimensions (the penultimate layer)
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    seed: int = 1

    def __post_init__(self) -> None:
        for k in ("window", "d", "feat", "steps", "batch", "seed"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
                raise ValueError(f"FeatureConfig.{k} must be a positive integer, got {v!r}")


def _model(cfg: FeatureConfig, enc, n_scen: int):
    import torch
    import torch.nn as nn

    from phantom.gen.nn import WindowEmbed

    class TraceClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.d
            self.embed = WindowEmbed(enc, d, emb=8)
            layers = []
            for dil in (1, 1, 2, 4):   # dilated: a receptive field of 65 records, the whole window
                # normalised: without it the gradient reaching the embeddings vanishes and the scenario head
                # stays at chance
                layers += [nn.Conv1d(d, d, 5, padding=2 * dil, dilation=dil), nn.GroupNorm(1, d), nn.GELU()]
            self.conv = nn.Sequential(*layers)
            self.fc = nn.Linear(2 * d, cfg.feat)
            self.heads = nn.ModuleList([nn.Linear(cfg.feat, n) for n in (n_scen, len(MPS_CLASSES),
                                                                          len(MRRS_CLASSES), 2, len(TW_CLASSES))])

        def features(self, tok, dt_img):
            h = self.conv(self.embed(tok, dt_img).transpose(1, 2))       # (B, d, W)
            return torch.tanh(self.fc(torch.cat([h.mean(-1), h.amax(-1)], -1)))   # (B, feat)

        def forward(self, tok, dt_img):
            f = self.features(tok, dt_img)
            return [hd(f) for hd in self.heads]

    return TraceClassifier()


def _labels(c, scen: list[str]) -> list[int]:
    L = c.link
    return [scen.index(c.scenario) if c.scenario in scen else 0, MPS_CLASSES.index(L.mps), MRRS_CLASSES.index(L.mrrs),
            int(L.rcb == 128), TW_CLASSES.index(L.tag_width)]


def train_extractor(dataset: str | os.PathLike, out: str | os.PathLike, cfg: FeatureConfig | None = None,
                    progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train the classifier on the training seeds' runs of every scenario; report held-out-seed accuracy."""
    import torch
    import torch.nn.functional as Fn
    from tqdm import tqdm

    from phantom.gen.dataset import Dataset
    from phantom.gen.nn import dt_image

    cfg = cfg or FeatureConfig()
    ds = Dataset.load(dataset)
    seeds = set(ds.meta["config"]["train_seeds"])
    tr = [i for i, d in enumerate(ds.meta["traces"]) if d["seed"] in seeds]
    te = [i for i, d in enumerate(ds.meta["traces"]) if d["seed"] not in seeds]
    scen = sorted({ds.condition(i).scenario for i in tr})
    torch.manual_seed(cfg.seed)
    model = _model(cfg, ds.encoding, len(scen))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    W = cfg.window

    def batch(ids, n):
        lens = np.array([ds.starts[i + 1] - ds.starts[i] - W for i in ids], dtype=np.float64)
        pick = rng.choice(len(ids), size=n, p=lens / lens.sum())
        toks, dts, ys = [], [], []
        for k in pick:
            i = ids[k]
            o = int(ds.starts[i]) + int(rng.integers(0, int(lens[k]) + 1))
            toks.append(ds.tokens[o:o + W])
            dts.append(ds.dt_ps[o:o + W])
            ys.append(_labels(ds.condition(i), scen))
        return (torch.from_numpy(np.stack(toks).astype(np.int64)), dt_image(np.stack(dts)),
                torch.tensor(ys, dtype=torch.long))

    t0 = time.time()
    for step in tqdm(range(cfg.steps), desc="feature extractor", unit="step",
                     disable=None if progress else True):
        tok, dti, y = batch(tr, cfg.batch)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / cfg.steps))
        outs = model(tok, dti)
        loss = sum(Fn.cross_entropy(o, y[:, k]) for k, o in enumerate(outs))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = np.zeros(5)
    n = 0
    with torch.no_grad():
        for _ in range(16):
            tok, dti, y = batch(te, 64)
            outs = model(tok, dti)
            acc += np.array([float((o.argmax(-1) == y[:, k]).float().mean()) for k, o in enumerate(outs)])
            n += 1
    acc /= n
    ck = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "config": asdict(cfg), "scenarios": scen,
          "encoding": ds.encoding.to_json(), "state": model.state_dict(),
          "training": {"command": command, "dataset": ds.fingerprint, "seconds": round(time.time() - t0, 1),
                       "heldout_accuracy": dict(zip(("scenario", "mps", "mrrs", "rcb", "tag_width"),
                                                    [round(float(a), 4) for a in acc]))}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, out)
    return ck


class Extractor:
    """The frozen extractor: ``features(tokens (N, W, F), dt_ps (N, W)) -> (N, feat)``."""

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH):
        import torch

        from phantom.gen.encoding import Encoding

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"feature extractor {path}: no such file (train one with python -m phantom "
                                    f"features)")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"feature extractor {path}: unreadable ({str(e).splitlines()[0][:120]})") from None
        if not isinstance(ck, dict) or ck.get("format") != FEATURES_FORMAT or ck.get("version") != FEATURES_VERSION:
            raise ValueError(f"feature extractor {path}: not a {FEATURES_FORMAT} v{FEATURES_VERSION} file")
        self.path = path
        self.meta = {k: v for k, v in ck.items() if k != "state"}
        self.cfg = FeatureConfig(**ck["config"])
        self.encoding = Encoding.from_json(ck["encoding"])
        self.model = _model(self.cfg, self.encoding, len(ck["scenarios"]))
        self.model.load_state_dict(ck["state"])
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def window(self) -> int:
        return self.cfg.window

    def features(self, tokens: np.ndarray, dt_ps: np.ndarray, batch: int = 512) -> np.ndarray:
        import torch

        from phantom.gen.nn import dt_image

        out = []
        with torch.no_grad():
            for k in range(0, len(tokens), batch):
                t = torch.from_numpy(np.asarray(tokens[k:k + batch], dtype=np.int64))
                out.append(self.model.features(t, dt_image(dt_ps[k:k + batch])).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.feat), dtype=np.float32)

    def describe(self) -> str:
        return json.dumps(self.meta["training"])
