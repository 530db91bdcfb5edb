"""Two baselines every table shows beside the models.

* ``iid``: every field of every record drawn independently from its marginal over the training records of the
  nearest captured condition (scenario, then link parameters and knobs). Knows the field distributions, nothing
  of their order or of one another.
* ``stitch``: rule-based stitching of real snippets. Snippets are cut from training traces of the nearest
  captured condition at *quiet points* (no request outstanding, so no completion is cut from its request),
  never include a trace's initialisation (records before its first doorbell, which would reset the queues), are
  64 to 512 records long and keep their own inter-arrival times. On a captured condition it replays real windows
  (the train-vs-test floor); on a condition never captured it has only the wrong condition's snippets to draw on.

The nearest condition: among training traces of the same scenario when it is known, else all, the one whose
condition vector (link parameters and knobs) is closest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from phantom.gen.backbones import Backbone, BackboneImpl
from phantom.gen.condition import Condition, ConditionSpace
from phantom.gen.encoding import FI, KINDS, Base, Encoding
from phantom.trace import Direction, SemClass


@dataclass
class IidConfig:
    """The i.i.d. baseline has nothing to tune; marginals are kept per captured condition."""

    dt_quantiles: int = 1024   # resolution of the inter-arrival distribution kept per condition

    def __post_init__(self) -> None:
        if not isinstance(self.dt_quantiles, int) or self.dt_quantiles < 2:
            raise ValueError(f"IidConfig.dt_quantiles must be an integer >= 2, got {self.dt_quantiles!r}")


@dataclass
class StitchConfig:
    min_snippet: int = 64      # records
    max_snippet: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.min_snippet, int) or self.min_snippet < 1 or self.max_snippet < self.min_snippet:
            raise ValueError(f"StitchConfig: need 1 <= min_snippet <= max_snippet, got {self.min_snippet!r}, "
                             f"{self.max_snippet!r}")


class _Groups:
    """Training traces grouped by condition (scenario + link parameters), with their condition vectors."""

    def __init__(self):
        self.keys: list[str] = []          # "scenario|mps|mrrs|rcb|tw"
        self.scen: list[str] = []
        self.vec: list[np.ndarray] = []

    @staticmethod
    def key(c: Condition) -> str:
        L = c.link
        return f"{c.scenario}|{L.mps}|{L.mrrs}|{L.rcb}|{L.tag_width}"

    def nearest(self, c: Condition, space: ConditionSpace) -> int:
        v = space.vector(c)
        o = len(space.scenarios) + 1
        cands = [i for i, s in enumerate(self.scen) if s == c.scenario] or list(range(len(self.keys)))
        d = [float(np.sum((self.vec[i][o:] - v[o:]) ** 2)) for i in cands]
        return cands[int(np.argmin(d))]

    def to_state(self) -> dict[str, Any]:
        import torch

        return {"keys": list(self.keys), "scen": list(self.scen), "vec": torch.from_numpy(np.stack(self.vec))}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "_Groups":
        g = cls()
        g.keys, g.scen = list(st["keys"]), list(st["scen"])
        g.vec = [v for v in st["vec"].numpy()]
        return g


def _group_traces(dataset) -> tuple[_Groups, list[list[int]]]:
    g = _Groups()
    members: list[list[int]] = []
    space = dataset.space
    for i in dataset.traces("train"):
        c = dataset.condition(i)
        k = _Groups.key(c)
        if k not in g.keys:
            g.keys.append(k)
            g.scen.append(c.scenario)
            g.vec.append(np.zeros(space.dim, dtype=np.float32))
            members.append([])
        j = g.keys.index(k)
        members[j].append(i)
    for j, m in enumerate(members):
        g.vec[j] = np.mean([space.vector(dataset.condition(i)) for i in m], axis=0)
    return g, members


class IidModel:
    def __init__(self, cfg: IidConfig, enc: Encoding, space: ConditionSpace):
        self.cfg, self.enc, self.space = cfg, enc, space
        self.groups = _Groups()
        self.probs: list[list[np.ndarray]] = []   # [group][field] -> probabilities
        self.dtq: list[np.ndarray] = []           # [group] -> dt quantiles (ps)


def _normalised(p: np.ndarray) -> np.ndarray:
    q = p.astype(np.float64)
    return q / q.sum()


class IidSampler:
    def __init__(self, m: IidModel):
        self.m = m

    def chunks(self, n: int, cond: Condition, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        m = self.m
        gi = m.groups.nearest(cond, m.space)
        rng = np.random.default_rng(seed)
        done = 0
        while done < n:
            k = min(16384, n - done)
            tok = np.stack([rng.choice(len(p), size=k, p=p) for p in m.probs[gi]], 1)
            q = m.dtq[gi]
            dt = np.interp(rng.random(k) * (len(q) - 1), np.arange(len(q)), q)
            yield tok.astype(np.int64), dt
            done += k


class IidBackbone(BackboneImpl):
    name = Backbone.IID
    trainable = False
    Config = IidConfig

    def create(self, cfg, encoding, space) -> IidModel:
        return IidModel(cfg, encoding, space)

    def fit(self, model: IidModel, dataset, seed: int) -> None:
        g, members = _group_traces(dataset)
        model.groups = g
        model.probs, model.dtq = [], []
        for m in members:
            toks = np.concatenate([dataset.trace_tokens(i)[0] for i in m]).astype(np.int64)
            dts = np.concatenate([dataset.trace_tokens(i)[1] for i in m]).astype(np.float64)
            ps = []
            for j, V in enumerate(model.enc.vocab):
                c = np.bincount(toks[:, j], minlength=V).astype(np.float64)
                ps.append(c / c.sum())
            model.probs.append(ps)
            model.dtq.append(np.percentile(dts, np.linspace(0, 100, model.cfg.dt_quantiles)))

    def state(self, model: IidModel) -> dict[str, Any]:
        import torch

        return {"groups": model.groups.to_state(),
                "probs": [[torch.from_numpy(p.astype(np.float32)) for p in ps] for ps in model.probs],
                "dtq": [torch.from_numpy(q) for q in model.dtq]}

    def load_state(self, model: IidModel, st: dict[str, Any]) -> None:
        model.groups = _Groups.from_state(st["groups"])
        model.probs = [[_normalised(p.numpy()) for p in ps] for ps in st["probs"]]
        model.dtq = [q.numpy() for q in st["dtq"]]

    def sampler(self, model, encoding, space, **kw) -> IidSampler:
        return IidSampler(model)


# ----------------------------------------------------------------------------------------------------------------

_KIND_BASE = np.array([int(k[1]) for k in KINDS])
_KIND_DIR = np.array([int(k[0]) for k in KINDS])
_KIND_CLS = np.array([int(k[2]) for k in KINDS])


def quiet_points(tok: np.ndarray) -> np.ndarray:
    """Record positions before which no non-posted request is outstanding, after the first doorbell."""
    kind = tok[:, FI["kind"]]
    base = _KIND_BASE[kind]
    cls = _KIND_CLS[kind]
    open_: set[tuple[int, int]] = set()
    out = []
    started = False
    for i in range(len(tok)):
        if not started and cls[i] == int(SemClass.DOORBELL):
            started = True
        if started and not open_:
            out.append(i)
        b = base[i]
        key = (int(tok[i, FI["rid"]]), int(tok[i, FI["tag"]]))
        if b in (int(Base.Cpl), int(Base.CplD)):
            final = b == int(Base.Cpl) or tok[i, FI["bc"]] <= tok[i, FI["length"]] * 4 - (tok[i, FI["la"]] & 3)
            if final:
                open_.discard(key)
        elif b in (int(Base.MRd), int(Base.CfgRd0), int(Base.CfgWr0), int(Base.CfgRd1), int(Base.CfgWr1),
                   int(Base.IORd), int(Base.IOWr)):
            open_.add(key)
    if started and not open_:
        out.append(len(tok))
    return np.asarray(out, dtype=np.int64)


class StitchModel:
    def __init__(self, cfg: StitchConfig, enc: Encoding, space: ConditionSpace):
        self.cfg, self.enc, self.space = cfg, enc, space
        self.groups = _Groups()
        self.traces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []   # [group] -> (tok, dt, quiet)


class StitchSampler:
    def __init__(self, m: StitchModel):
        self.m = m

    def chunks(self, n: int, cond: Condition, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        m = self.m
        gi = m.groups.nearest(cond, m.space)
        pool = [t for t in m.traces[gi] if len(t[2]) >= 2]
        rng = np.random.default_rng(seed)
        done = 0
        buf_t, buf_d, size = [], [], 0
        while done < n:
            tok, dt, q = pool[int(rng.integers(len(pool)))]
            a = int(rng.integers(len(q) - 1))
            want = int(rng.integers(m.cfg.min_snippet, m.cfg.max_snippet + 1))
            j = int(np.searchsorted(q, q[a] + want))
            b = int(q[min(j, len(q) - 1)])
            if b <= q[a]:
                continue
            take = min(b - int(q[a]), n - done)
            buf_t.append(tok[q[a]:q[a] + take].astype(np.int64))
            buf_d.append(dt[q[a]:q[a] + take].astype(np.float64))
            size += take
            done += take
            if size >= 16384 or done >= n:
                yield np.concatenate(buf_t), np.concatenate(buf_d)
                buf_t, buf_d, size = [], [], 0


class StitchBackbone(BackboneImpl):
    name = Backbone.STITCH
    trainable = False
    Config = StitchConfig

    def create(self, cfg, encoding, space) -> StitchModel:
        return StitchModel(cfg, encoding, space)

    def fit(self, model: StitchModel, dataset, seed: int) -> None:
        g, members = _group_traces(dataset)
        model.groups = g
        model.traces = []
        for m in members:
            ts = []
            for i in m:
                tok, dt = dataset.trace_tokens(i)
                ts.append((tok.astype(np.int16), dt.astype(np.int64), quiet_points(tok.astype(np.int64))))
            model.traces.append(ts)

    def state(self, model: StitchModel) -> dict[str, Any]:
        import torch

        return {"groups": model.groups.to_state(),
                "traces": [[(torch.from_numpy(t), torch.from_numpy(d), torch.from_numpy(q)) for t, d, q in ts]
                           for ts in model.traces]}

    def load_state(self, model: StitchModel, st: dict[str, Any]) -> None:
        model.groups = _Groups.from_state(st["groups"])
        model.traces = [[(t.numpy(), d.numpy(), q.numpy()) for t, d, q in ts] for ts in st["traces"]]

    def sampler(self, model, encoding, space, **kw) -> StitchSampler:
        return StitchSampler(model)


_ = Direction
