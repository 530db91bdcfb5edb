"""Torch pieces shared by the backbones and the feature extractor: how a window of records enters a network, and
the discretised logistic mixture likelihood of ordered fields (PixelCNN++'s, for images of 8-bit pixels; here for
fields of up to 4097 values)."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

from phantom.gen.encoding import DT_BINS, FI, Encoding, dt_to_image

DT_FINE = 4096   # the image-style model's dt resolution: bins of the log scale of dt_to_image


def field_groups(enc: Encoding) -> tuple[list[int], list[int]]:
    """(nominal field indices, ordered field indices); dt counts as ordered."""
    nom = [j for j, f in enumerate(enc.fields) if f.nominal]
    ordd = [j for j, f in enumerate(enc.fields) if not f.nominal]
    return nom, ordd


class WindowEmbed(nn.Module):
    """(B, W, F) tokens + (B, W) dt -> (B, W, d): nominal fields embedded, ordered fields as values in [0, 1]."""

    def __init__(self, enc: Encoding, d: int, emb: int = 16):
        super().__init__()
        self.nom, self.ord = field_groups(enc)
        self.emb = nn.ModuleList([nn.Embedding(enc.vocab[j], emb) for j in self.nom])
        self.register_buffer("ord_vocab", torch.tensor([float(enc.vocab[j]) for j in self.ord]), persistent=False)
        self.dt_pos = self.ord.index(FI["dt"])
        n_in = emb * len(self.nom) + 2 * len(self.ord)
        self.proj = nn.Linear(n_in, d)

    def forward(self, tok: torch.Tensor, dt_img: torch.Tensor) -> torch.Tensor:
        parts = [e(tok[..., j]) for e, j in zip(self.emb, self.nom)]
        v = (tok[..., self.ord].float() + 0.5) / self.ord_vocab          # (B, W, n_ord)
        v = v.clone()
        v[..., self.dt_pos] = dt_img
        parts += [v, torch.sqrt(v)]                                        # sqrt spreads small values apart
        return self.proj(torch.cat(parts, dim=-1))


def dt_image(dt_ps: np.ndarray | torch.Tensor) -> torch.Tensor:
    a = dt_ps.detach().cpu().numpy() if isinstance(dt_ps, torch.Tensor) else np.asarray(dt_ps)
    return torch.from_numpy(dt_to_image(a))


def dmol_nll(params: torch.Tensor, x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of values x (..., ) at bin centres on [0, 1] with ``bins`` bins each, under a
    K-component discretised logistic mixture; params (..., 3K): logit weights, means, log scales."""
    K = params.shape[-1] // 3
    logit, mu, log_s = params[..., :K], params[..., K:2 * K], params[..., 2 * K:].clamp(min=-9.0)
    h = (0.5 / bins).unsqueeze(-1)
    xc = x.unsqueeze(-1)
    centered = xc - mu
    inv_s = torch.exp(-log_s)
    plus_in = inv_s * (centered + h)
    min_in = inv_s * (centered - h)
    log_cdf_plus = plus_in - Fn.softplus(plus_in)
    log_one_minus_cdf_min = -Fn.softplus(min_in)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_s - 2.0 * Fn.softplus(mid_in) + torch.log(2 * h)
    lp = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    lp = torch.where(xc < h * 1.5, log_cdf_plus, torch.where(xc > 1 - h * 1.5, log_one_minus_cdf_min, lp))
    return -torch.logsumexp(lp + Fn.log_softmax(logit, dim=-1), dim=-1)


def dmol_sample(params: torch.Tensor, gen: torch.Generator | None, mode: bool = False) -> torch.Tensor:
    """Values in [0, 1] drawn from the mixture (mode: the mean of the most likely component)."""
    K = params.shape[-1] // 3
    logit, mu, log_s = params[..., :K], params[..., K:2 * K], params[..., 2 * K:].clamp(min=-9.0)
    if mode:
        k = logit.argmax(-1, keepdim=True)
        return torch.gather(mu, -1, k).squeeze(-1).clamp(0.0, 1.0)
    u = torch.rand(logit.shape, generator=gen, device=logit.device).clamp(1e-6, 1 - 1e-6)
    k = (logit - torch.log(-torch.log(u))).argmax(-1, keepdim=True)           # Gumbel-max component choice
    m = torch.gather(mu, -1, k).squeeze(-1)
    s = torch.exp(torch.gather(log_s, -1, k).squeeze(-1))
    u2 = torch.rand(m.shape, generator=gen, device=m.device).clamp(1e-6, 1 - 1e-6)
    return (m + s * (torch.log(u2) - torch.log1p(-u2))).clamp(0.0, 1.0)


def to_tokens(v: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    return torch.minimum((v * vocab).floor(), vocab - 1).long()


def pick_device(device: str | None) -> str:
    """``cuda`` when a GPU is present and nothing else was asked for, else ``cpu``. A device that is not
    ``cpu``, ``cuda`` or ``cuda:N``, or a CUDA device this machine does not have: ValueError, one line."""
    if device:
        m = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
        if m is None:
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
        if device != "cpu":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if int(m.group(1) or 0) >= n:
                raise ValueError(f"--device {device}: this machine has {n} CUDA device(s)")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


_ = (math, DT_BINS)
