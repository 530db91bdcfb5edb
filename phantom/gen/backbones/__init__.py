"""Generative backbones: one plug point, an enum plus a registry (the CLI strings are the enum values).

A backbone turns conditions into streams of encoded TLP records (tokens (n, F) and inter-arrival times); it never
sees the rules: calibration (``phantom.gen.calibrate``) runs on any backbone's output. Adding one is one file and
one line in ``_REGISTRY``:

* ``image``        a conditional VAE over windows rendered as W x F images (the Phantom paper's family);
* ``transformer``  an autoregressive transformer over TLP fields with constrained decoding (legality masks);
* ``iid``          baseline: every field drawn independently from its marginal in the training traces;
* ``stitch``       baseline: rule-based stitching of real trace snippets of the nearest captured condition.

Every backbone implements ``BackboneImpl``: a config dataclass, ``create`` (the model), ``loss`` (torch backbones)
or ``fit`` (baselines), ``state``/``load_state`` (what a checkpoint holds) and ``sampler`` (generation).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from phantom.gen.condition import Condition, ConditionSpace, Link
from phantom.gen.encoding import Encoding


class Backbone(str, enum.Enum):
    IMAGE = "image"
    TRANSFORMER = "transformer"
    IID = "iid"
    STITCH = "stitch"


class Sampler(Protocol):
    """Generation: consecutive chunks of a stream of encoded records for one condition."""

    def chunks(self, n: int, cond: Condition, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tokens (k, F) int64, dt_ps (k,) float64) until n records were produced."""
        ...


class BackboneImpl:
    """What train.py, sample.py and the checkpoints need from a backbone."""

    name: Backbone
    trainable: bool = True          # torch model trained by gradient steps (else: fitted statistics)
    Config: type = object           # the model's config dataclass (model_args of the checkpoint)

    def create(self, cfg: Any, encoding: Encoding, space: ConditionSpace) -> Any:
        raise NotImplementedError

    def loss(self, model: Any, tokens, dt, cond, noise=None):
        """Training loss of a batch (torch backbones): tokens (B, W, F), dt (B, W), cond (B, C)."""
        raise NotImplementedError

    def fit(self, model: Any, dataset: Any, seed: int) -> None:
        """Fit a baseline on the training split."""
        raise NotImplementedError

    def state(self, model: Any) -> Any:
        return model.state_dict()

    def load_state(self, model: Any, state: Any) -> None:
        model.load_state_dict(state)

    def sampler(self, model: Any, encoding: Encoding, space: ConditionSpace, *, device: str = "cpu",
                constrained: bool = True, batch: int | None = None) -> Sampler:
        raise NotImplementedError

    def window(self, cfg: Any) -> int:
        """Records per training example."""
        return int(getattr(cfg, "window", 64))


def _image() -> BackboneImpl:
    from phantom.gen.backbones.image import ImageBackbone

    return ImageBackbone()


def _transformer() -> BackboneImpl:
    from phantom.gen.backbones.transformer import TransformerBackbone

    return TransformerBackbone()


def _iid() -> BackboneImpl:
    from phantom.gen.backbones.baselines import IidBackbone

    return IidBackbone()


def _stitch() -> BackboneImpl:
    from phantom.gen.backbones.baselines import StitchBackbone

    return StitchBackbone()


_REGISTRY: dict[Backbone, Callable[[], BackboneImpl]] = {
    Backbone.IMAGE: _image,
    Backbone.TRANSFORMER: _transformer,
    Backbone.IID: _iid,
    Backbone.STITCH: _stitch,
}


def get_backbone(name: str | Backbone) -> BackboneImpl:
    """The backbone registered under ``name`` (an enum value such as ``"image"``)."""
    try:
        key = Backbone(name)
        return _REGISTRY[key]()
    except (ValueError, KeyError):
        raise ValueError(f"unknown backbone: {name!r} (known: {', '.join(b.value for b in Backbone)})") from None


def names() -> list[str]:
    return [b.value for b in Backbone]


@dataclass(frozen=True)
class LinkLimits:
    """The link parameters generation is asked to respect (what the legality masks and calibration enforce)."""

    mps: int
    mrrs: int
    rcb: int
    tag_width: int

    @classmethod
    def of(cls, link: Link) -> "LinkLimits":
        return cls(link.mps, link.mrrs, link.rcb, link.tag_width)
