"""The autoregressive backbone (beyond the paper): a nanoGPT-sized transformer over TLP records, with constrained
decoding.

One position per record: the record's fields are embedded and summed (plus the condition and the position), a
causal transformer reads the records so far, and a small head generates the next record field by field, each
field conditioned on the ones before it (``kind`` first, then ``dt``, ``tag``, address, length, ...). Fields of
more than 256 values are two digits (value // 64, value % 64), generated high digit first.

Constrained decoding (``Legality``): before each field is sampled, a mask of the values that keep the stream
legal is applied to its logits (illegal ones get -inf):

* no completion kind unless a request of the other side is outstanding; the tag of a completion is the tag of an
  outstanding request (requester ID, TC and attributes follow it); a new request's tag is free and fits the tag
  width;
* no length above MPS (writes, completions) or MRRS (device reads), no 4 KB crossing, byte enables that fit the
  length; a completion is either the rest of its read or ends on an RCB boundary;
* byte count is what the read still owes, lower address where its next byte is; completions are successful;
* addresses lie in the region the kind implies (descriptor reads in a ring, packet data in buffers, doorbells at
  a doorbell register), attributes only as Device Control allows, nothing poisoned.

Sampling keeps a key/value cache; when the context fills the block, the last half is re-encoded (nanoGPT crops
the context; this does it once per half block instead of every step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

from phantom.gen.backbones import Backbone, BackboneImpl, LinkLimits
from phantom.gen.condition import Condition, ConditionSpace
from phantom.gen.encoding import (FI, KINDS, Base, Encoding, Region, REGION_OF_KIND, STATUS_CODES, token_to_dt)
from phantom.memmap import MemoryMap, RegionKind
from phantom.rules.spec import CONTIG_FIRST, CONTIG_LAST, request_bytes
from phantom.trace import Direction, SemClass, TraceHeader


@dataclass
class TransformerConfig:
    """Model arguments of the transformer (nanoGPT's names)."""

    window: int = 128       # block size: records of context
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    digit: int = 64         # fields of more than 256 values are split into digits of this base
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("window", "n_layer", "n_head", "n_embd", "digit"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"TransformerConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.window < 4:
            raise ValueError(f"TransformerConfig.window must be >= 4, got {self.window!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.temperature > 0:
            raise ValueError(f"TransformerConfig.temperature must be positive, got {self.temperature!r}")


class Digits:
    """Fields -> sub-fields: (field index, base divisor, vocabulary) per sub-field, in generation order."""

    def __init__(self, enc: Encoding, digit: int):
        self.subs: list[tuple[int, int, int]] = []
        self.of_field: list[list[int]] = []
        for j, V in enumerate(enc.vocab):
            if V > 256:
                hi = -(-V // digit)
                self.of_field.append([len(self.subs), len(self.subs) + 1])
                self.subs += [(j, digit, hi), (j, 1, digit)]
            else:
                self.of_field.append([len(self.subs)])
                self.subs.append((j, 1, V))
        self.digit = digit

    @property
    def vocab(self) -> list[int]:
        return [v for _, _, v in self.subs]

    def split(self, tok: torch.Tensor) -> torch.Tensor:
        """(..., F) field values -> (..., S) sub-field values."""
        out = []
        for j, div, V in self.subs:
            x = tok[..., j]
            out.append((x // div) if div > 1 else (x % self.digit if len(self.of_field[j]) > 1 else x))
        return torch.stack(out, -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        h = self.n_head
        q = q.view(B, T, h, C // h).transpose(1, 2)      # (B, h, T, hs)
        k = k.view(B, T, h, C // h).transpose(1, 2)
        v = v.view(B, T, h, C // h).transpose(1, 2)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
            y = Fn.scaled_dot_product_attention(q, k, v, is_causal=False)   # one new position sees all
        else:
            y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x, cache=None):
        a, kv = self.attn(self.ln_1(x), cache)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class TraceGPT(nn.Module):
    def __init__(self, cfg: TransformerConfig, enc: Encoding, cond_dim: int):
        super().__init__()
        self.cfg = cfg
        self.enc = enc
        self.dg = Digits(enc, cfg.digit)
        d = cfg.n_embd
        V = self.dg.vocab
        S = len(V)
        self.wte = nn.ModuleList([nn.Embedding(v, d) for v in V])      # input record sub-fields
        self.bos = nn.Parameter(torch.zeros(1, 1, d))                  # position 0: the start of a window
        self.wpe = nn.Embedding(cfg.window, d)
        self.wce = nn.Linear(cond_dim, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        # the field-by-field head
        self.sub_pos = nn.Parameter(torch.zeros(S, d))
        self.sub_emb = nn.ModuleList([nn.Embedding(v, d) for v in V])   # sub-fields of the record being made
        self.head_ln = nn.LayerNorm(d)
        self.head_fc = nn.Linear(d, d)
        self.heads = nn.ModuleList([nn.Linear(d, v) for v in V])
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def embed(self, sub: torch.Tensor | None, cond: torch.Tensor, pos0: int = 0, bos: bool = False) -> torch.Tensor:
        """Trunk input: [BOS if bos] + the records' sub-fields (B, T, S), at positions pos0..; (B, T', d)."""
        B = cond.shape[0]
        parts = [self.bos.expand(B, 1, -1)] if bos else []
        if sub is not None and sub.shape[1]:
            parts.append(sum(self.wte[s](sub[..., s]) for s in range(sub.shape[-1])))   # (B, T, d)
        x = torch.cat(parts, 1)
        pos = torch.arange(pos0, pos0 + x.shape[1], device=cond.device)
        return self.drop(x + self.wpe(pos) + self.wce(cond).unsqueeze(1))

    def trunk(self, x: torch.Tensor, caches=None):
        new = []
        for i, blk in enumerate(self.h):
            x, kv = blk(x, caches[i] if caches is not None else None)
            new.append(kv)
        return self.ln_f(x), new

    def head_logits(self, h: torch.Tensor, prefix: torch.Tensor, s: int) -> torch.Tensor:
        """Logits of sub-field s from the trunk state h (..., d) and the embedded prefix sum (..., d)."""
        z = h + self.sub_pos[s] + prefix
        return self.heads[s](Fn.gelu(self.head_fc(self.head_ln(z))))

    def forward(self, tok: torch.Tensor, cond: torch.Tensor):
        """tok (B, T, F): loss of record t given BOS and records 0..t-1 (nats per record)."""
        sub = self.dg.split(tok)                                  # (B, T, S)
        tgt = sub
        h, _ = self.trunk(self.embed(sub[:, :-1], cond, 0, bos=True))   # (B, T, d)
        S = tgt.shape[-1]
        embs = torch.stack([self.sub_emb[s](tgt[..., s]) for s in range(S)], 2)     # (B, T, S, d)
        prefix = torch.cumsum(embs, 2) - embs                                       # sum over earlier sub-fields
        z = h.unsqueeze(2) + self.sub_pos + prefix
        u = Fn.gelu(self.head_fc(self.head_ln(z)))                                  # (B, T, S, d)
        loss = 0.0
        for s in range(S):
            lg = self.heads[s](u[:, :, s])
            loss = loss + Fn.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt[..., s].reshape(-1))
        return loss, {"nll": float(loss.detach())}


# ----------------------------------------------------------------------------------------------------------------
# legality masks

_K_DIR = np.array([int(k[0]) for k in KINDS])
_K_BASE = np.array([int(k[1]) for k in KINDS])
_K_CLS = np.array([int(k[2]) for k in KINDS])
_CPL_KINDS = {i for i, k in enumerate(KINDS) if k[1] in (Base.Cpl, Base.CplD)}
_UP, _DOWN = int(Direction.UP), int(Direction.DOWN)
_REGION_FOR_CLS = {
    SemClass.DESC_READ: (Region.TX_RING, Region.RX_RING), SemClass.DATA_READ: (Region.TX_DATA,),
    SemClass.DATA_WRITE: (Region.RX_DATA,), SemClass.CPL_WRITE: (Region.TX_CPL_RING, Region.RX_CPL_RING),
    SemClass.INTERRUPT: (Region.MSIX,), SemClass.MMIO_READ: (Region.BAR,), SemClass.MMIO_WRITE: (Region.BAR,),
    SemClass.DOORBELL: (Region.BAR,), SemClass.CONFIG: (Region.CFG,), SemClass.COMPLETION: (Region.NONE,),
}


class Legality:
    """What may come next in one generated stream: outstanding requests of both sides and the link's limits."""

    def __init__(self, enc: Encoding, header: TraceHeader, limits: LinkLimits, ids: tuple[int, int] = (0, 0x100)):
        self.enc = enc
        self.lim = limits
        # requester / completer IDs as indices of the encoding's table: the root port's and the device's
        self.host_i = enc.ids.index(ids[0]) if ids[0] in enc.ids else 0
        self.dev_i = enc.ids.index(ids[1]) if ids[1] in enc.ids else len(enc.ids) - 1
        self.V = enc.vocab
        self.dev: dict[tuple[int, int], list] = {}    # (rid, tag) -> [remaining bytes, next byte address, attr, tc]
        self.host: dict[tuple[int, int], list] = {}   # (rid, tag) -> [kind, lower address, attr, tc]
        mm = MemoryMap.from_json(header.memory_map)
        self.base = {int(REGION_OF_KIND[r.kind]): r.base for r in mm.regions if r.kind in REGION_OF_KIND}
        self.pages = {int(REGION_OF_KIND[r.kind]): max(1, -(-r.size // 4096)) for r in mm.regions
                      if r.kind in REGION_OF_KIND}
        bar = mm.of_kind(RegionKind.BAR)
        self.doorbell_offs = sorted({(r.base - bar[0].base) >> 2 for r in mm.regions if r.kind.is_doorbell}) if bar else []
        self.ok_kind = np.ones(len(KINDS), dtype=bool)
        for i, (d, b, c) in enumerate(KINDS):
            if b in (Base.IORd, Base.IOWr, Base.CfgRd1, Base.CfgWr1) or c == SemClass.OTHER:
                self.ok_kind[i] = False         # IO is answered with UR by the NIC; OTHER lies outside the map
            if d == Direction.DOWN and b == Base.Cpl:
                self.ok_kind[i] = False         # a memory read is answered with data
        self.attr_up = (2 if header.relaxed_ordering else 0) | (1 if header.no_snoop else 0)
        self.rcb = limits.rcb
        self.timeout_ps = (header.cpl_timeout_ns or 50e6) * 1000.0
        self.now = 0.0                                   # stream time (ps), from the dt values generated
        self.dt_values = token_to_dt(np.arange(self.V[FI["dt"]])) * 1.05   # upper edge of each bin

    # masks over the full values of one field, given the fields already chosen (``r``: field index -> value)
    def mask(self, j: int, r: dict[int, int]) -> np.ndarray | None:
        V = self.V[j]
        if j == FI["kind"]:
            m = self.ok_kind.copy()
            for i in _CPL_KINDS:
                d, b = _K_DIR[i], _K_BASE[i]
                want_dir = _UP if d == _DOWN else _DOWN          # the direction of the request it answers
                ok = False
                for (rid, tag), st in (self.dev.items() if want_dir == _UP else self.host.items()):
                    if want_dir == _UP or (st[0] == "cfgwr") == (b == Base.Cpl):
                        ok = True
                        break
                m[i] = m[i] and ok
            return m
        if j == FI["dt"]:
            # no gap so long that an outstanding request would pass its completion timeout
            ages = [st[-1] for st in self.dev.values()] + [st[-1] for st in self.host.values()]
            if not ages:
                return None
            budget = 0.8 * self.timeout_ps - (self.now - min(ages))
            m = self.dt_values <= budget
            m[0] = True
            return m
        k = r[FI["kind"]]
        d, b, c = int(_K_DIR[k]), int(_K_BASE[k]), int(_K_CLS[k])
        is_cpl = b in (Base.Cpl, Base.CplD)
        bound = self._bound(r) if is_cpl and FI["tag"] in r else None
        if j == FI["tag"]:
            m = np.zeros(V, dtype=bool)
            if is_cpl:
                table = self.dev if d == _DOWN else self.host
                for (rid, tag), st in table.items():
                    if d == _DOWN or (st[0] == "cfgwr") == (b == Base.Cpl):
                        m[tag] = True
                return m
            if b in (Base.MRd, Base.CfgRd0, Base.CfgWr0):
                lim = (1 << self.lim.tag_width) if d == _UP else min(32, 1 << self.lim.tag_width)
                m[:lim] = True
                for (rid, tag) in (self.dev if d == _UP else self.host):
                    m[tag] = False
                if not m.any():
                    m[:lim] = True
                return m
            m[0] = True                       # posted requests carry tag 0 on this link
            return m
        if j == FI["region"]:
            allowed = _REGION_FOR_CLS.get(SemClass(c))
            if allowed is None:
                return None
            m = np.zeros(V, dtype=bool)
            for a in allowed:
                if int(a) in self.base or a in (Region.CFG, Region.NONE):
                    m[int(a)] = True
            return m if m.any() else None
        if j == FI["page"]:
            reg = r[FI["region"]]
            if c == SemClass.DOORBELL:
                m = np.zeros(V, dtype=bool)
                for o in self.doorbell_offs:
                    m[o >> 10] = True
                return m
            if reg in self.pages:
                m = np.zeros(V, dtype=bool)
                m[:min(self.pages[reg], V)] = True
                return m
            if reg in (int(Region.NONE), int(Region.CFG)):
                m = np.zeros(V, dtype=bool)
                m[0] = True
                return m
            return None
        if j == FI["off"]:
            if c == SemClass.DOORBELL and self.doorbell_offs:
                m = np.zeros(V, dtype=bool)
                for o in self.doorbell_offs:
                    if o >> 10 == r[FI["page"]]:
                        m[o & 1023] = True
                return m if m.any() else None
            if is_cpl:
                m = np.zeros(V, dtype=bool)
                m[0] = True
                return m
            return None
        if j == FI["length"]:
            m = np.zeros(V, dtype=bool)
            if is_cpl:
                if b == Base.Cpl:
                    m[0] = True
                elif d == _UP:
                    m[1] = True
                elif bound is not None:
                    for L in self._cpl_lengths(bound):
                        m[L] = True
                else:
                    m[1] = True
                return m
            if c in (SemClass.MMIO_READ, SemClass.MMIO_WRITE, SemClass.DOORBELL, SemClass.CONFIG,
                     SemClass.INTERRUPT):
                m[1] = True
                return m
            cap = (self.lim.mrrs if b == Base.MRd else self.lim.mps) // 4
            cap = min(cap, 1024 - r.get(FI["off"], 0))
            m[1:max(cap, 1) + 1] = True
            return m
        if j in (FI["first_be"], FI["last_be"]):
            L = r[FI["length"]]
            m = np.zeros(16, dtype=bool)
            if is_cpl:
                m[0] = True
            elif j == FI["first_be"]:
                if L >= 3:
                    m[list(CONTIG_FIRST)] = True
                else:
                    m[1:] = True
            else:
                if L <= 1:
                    m[0] = True
                elif L == 2:
                    m[1:] = True
                else:
                    m[list(CONTIG_LAST)] = True
            return m
        if j == FI["bc"]:
            m = np.zeros(V, dtype=bool)
            if not is_cpl:
                m[0] = True
            elif bound is not None:
                m[min(bound[0], V - 1)] = True
            else:
                m[4] = True
            return m
        if j == FI["la"]:
            m = np.zeros(V, dtype=bool)
            if not is_cpl:
                m[0] = True
            elif bound is not None:
                m[(bound[1] if d == _DOWN else bound[1]) & 0x7F] = True
            else:
                m[0] = True
            return m
        if j == FI["status"]:
            m = np.zeros(V, dtype=bool)
            m[0] = True
            return m
        if j == FI["ep"]:
            m = np.zeros(V, dtype=bool)
            m[0] = True
            return m
        if j == FI["attr"]:
            m = np.zeros(V, dtype=bool)
            if is_cpl and bound is not None:
                m[bound[2]] = True
                return m
            if d == _UP and not is_cpl:
                allowed = self.attr_up if c not in (SemClass.CPL_WRITE, SemClass.INTERRUPT) else (self.attr_up & 1)
                for a in range(8):
                    if a & ~(allowed | 4) & 3 == 0:
                        m[a] = True
                return m
            return None
        if j == FI["tc"]:
            if is_cpl and bound is not None:
                m = np.zeros(V, dtype=bool)
                m[bound[3]] = True
                return m
            return None
        if j == FI["rid"]:
            m = np.zeros(V, dtype=bool)
            if is_cpl:
                m[bound[4] if bound is not None else (self.dev_i if d == _DOWN else self.host_i)] = True
            else:
                m[self.host_i if d == _DOWN else self.dev_i] = True   # who sends a request is its requester
            return m
        if j == FI["cid"]:
            m = np.zeros(V, dtype=bool)
            if is_cpl:
                m[self.host_i if d == _DOWN else self.dev_i] = True   # who answers is the completer
            elif c == SemClass.CONFIG:
                m[self.dev_i] = True
            else:
                m[self.host_i] = True
            return m
        return None

    def _bound(self, r: dict[int, int]):
        """(remaining bytes, next byte address / lower address, attr, tc, rid) of the request a completion answers."""
        k = r[FI["kind"]]
        d, b = int(_K_DIR[k]), int(_K_BASE[k])
        tag = r[FI["tag"]]
        table = self.dev if d == _DOWN else self.host
        for (rid, t), st in table.items():
            if t == tag:
                if d == _DOWN:
                    return st[0], st[1], st[2], st[3], rid
                return st[5], st[1], st[2], st[3], rid
        return None

    def _cpl_lengths(self, bound) -> list[int]:
        rem, cur = bound[0], bound[1]
        lead = cur & 3
        full = (rem + lead + 3) // 4
        mps = self.lim.mps // 4
        out = [full] if full <= mps else []
        rcb = self.rcb
        base = cur - lead
        first = (cur // rcb + 1) * rcb
        e = first
        while e < cur + rem and (e - base) // 4 <= mps:
            out.append((e - base) // 4)
            e += rcb
        return out or [min(full, mps)]

    def update(self, rec: np.ndarray) -> None:
        """A record was generated (field values, full)."""
        self.now += float(token_to_dt(np.array([rec[FI["dt"]]]))[0])
        k = int(rec[FI["kind"]])
        d, b, c = int(_K_DIR[k]), int(_K_BASE[k]), int(_K_CLS[k])
        tag, rid = int(rec[FI["tag"]]), int(rec[FI["rid"]])
        if b in (Base.Cpl, Base.CplD):
            table = self.dev if d == _DOWN else self.host
            key = next((key for key in table if key[1] == tag), None)
            if key is None:
                return
            if d == _UP or b == Base.Cpl:
                del table[key]
                return
            st = table[key]
            carried = min(int(rec[FI["length"]]) * 4 - (st[1] & 3), st[0])
            st[0] -= carried
            st[1] += carried
            if st[0] <= 0:
                del table[key]
            return
        reg = int(rec[FI["region"]])
        addr = self.base.get(reg, 0) + (int(rec[FI["page"]]) << 12) + (int(rec[FI["off"]]) << 2)
        attr, tc = int(rec[FI["attr"]]), int(rec[FI["tc"]])
        fbe, lbe, L = int(rec[FI["first_be"]]), int(rec[FI["last_be"]]), int(rec[FI["length"]])
        if d == _UP and b == Base.MRd:
            lead = next((i for i in range(4) if fbe >> i & 1), 0)
            self.dev[(rid, tag)] = [request_bytes(max(L, 1), fbe, lbe), addr + lead, attr, tc, self.now]
        elif d == _DOWN and b in (Base.MRd, Base.CfgRd0, Base.CfgWr0):
            kind = "mmio" if b == Base.MRd else ("cfgwr" if b == Base.CfgWr0 else "cfgrd")
            la = (addr + next((i for i in range(4) if fbe >> i & 1), 0)) & 0x7F if b == Base.MRd else 0
            # a memory read is owed the bytes its enables ask for; configuration requests 4 (2.2.9)
            bc = request_bytes(1, fbe, 0) if b == Base.MRd else 4
            self.host[(rid, tag)] = [kind, la, attr, tc, self.now, bc]


def _digit_masks(m: np.ndarray, nsub: int, digit: int, hi_val: int | None = None):
    """A mask over full values -> the mask over the high digit, or (given it) over the low digit."""
    if nsub == 1:
        return m
    V = len(m)
    pad = np.zeros(-(-V // digit) * digit, dtype=bool)
    pad[:V] = m
    grid = pad.reshape(-1, digit)
    if hi_val is None:
        return grid.any(1)
    return grid[hi_val]


# ----------------------------------------------------------------------------------------------------------------


class TransformerSampler:
    def __init__(self, model: TraceGPT, space: ConditionSpace, device: str, constrained: bool, batch: int | None,
                 header_for=None, ids: tuple[int, int] = (0, 0x100)):
        self.ids = ids
        self.m = model.to(device).eval()
        self.space = space
        self.device = device
        self.constrained = constrained
        self.batch = batch or 16
        self.header_for = header_for   # condition -> TraceHeader (the masks need the memory map)

    @torch.no_grad()
    def chunks(self, n: int, cond: Condition, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """B streams in parallel, each n/B records long, concatenated stream after stream."""
        m, cfg, dg = self.m, self.m.cfg, self.m.dg
        B = max(1, min(self.batch, n // 64 or 1))
        per = -(-n // B)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        c = torch.from_numpy(self.space.vector(cond)).to(self.device).expand(B, -1)
        F = len(m.enc.fields)
        header = self.header_for(cond) if self.header_for is not None else None
        legal = [Legality(m.enc, header, LinkLimits.of(cond.link), self.ids) for _ in range(B)] \
            if self.constrained and header is not None else None
        out = np.zeros((B, per, F), dtype=np.int64)
        hist = torch.zeros(B, 0, len(dg.subs), dtype=torch.long, device=self.device)
        caches = None
        pos = 0
        h = None
        hs, caches = m.trunk(m.embed(None, c, 0, bos=True))               # the start of a window
        h = hs[:, -1]
        pos = 1
        for t in range(per):
            rec = self._sample_record(h, gen, legal)                      # (B, F) full values
            out[:, t] = rec
            sub = dg.split(torch.from_numpy(rec).to(self.device)).unsqueeze(1)   # (B, 1, S)
            hist = torch.cat([hist, sub], 1)
            if pos >= cfg.window:
                # context full: BOS and the last half block, re-encoded from position 0
                hist = hist[:, -(cfg.window // 2 - 1):]
                hs, caches = m.trunk(m.embed(hist, c, 0, bos=True))
                pos = hist.shape[1] + 1
            else:
                hs, caches = m.trunk(m.embed(sub, c, pos), caches)
                pos += 1
            h = hs[:, -1]
        flat = out.reshape(-1, F)[:n]
        dt = token_to_dt(flat[:, FI["dt"]]) * np.exp(
            np.random.default_rng(seed).uniform(-0.03, 0.03, len(flat)))     # spread within the bin
        for k in range(0, len(flat), 65536):
            yield flat[k:k + 65536], dt[k:k + 65536]

    def _sample_record(self, h: torch.Tensor, gen, legal) -> np.ndarray:
        m, dg = self.m, self.m.dg
        B = h.shape[0]
        F = len(m.enc.fields)
        rec = np.zeros((B, F), dtype=np.int64)
        chosen: list[dict[int, int]] = [dict() for _ in range(B)]
        prefix = torch.zeros_like(h)
        T = m.cfg.temperature
        for j in range(F):
            subs = dg.of_field[j]
            fmask = None
            if legal is not None:
                fm = [legal[b].mask(j, chosen[b]) for b in range(B)]
                if any(x is not None for x in fm):
                    fmask = [x if x is not None else np.ones(m.enc.vocab[j], dtype=bool) for x in fm]
            vals = np.zeros(B, dtype=np.int64)
            hi_v = None
            for si, s in enumerate(subs):
                logits = m.head_logits(h, prefix, s) / T                       # (B, V_s)
                if fmask is not None:
                    mk = np.stack([_digit_masks(fmask[b], len(subs), dg.digit, None if si == 0 else int(hi_v[b]))
                                   for b in range(B)])
                    mk[~mk.any(1)] = True       # nothing legal left: leave it to calibration
                    mk_t = torch.from_numpy(mk[:, :logits.shape[1]]).to(logits.device)
                    logits = logits.masked_fill(~mk_t, float("-inf"))
                probs = Fn.softmax(logits, -1)
                x = torch.multinomial(probs, 1, generator=gen).squeeze(1)       # (B,)
                prefix = prefix + m.sub_emb[s](x)
                xv = x.cpu().numpy()
                if len(subs) == 1:
                    vals = xv
                elif si == 0:
                    hi_v = xv
                else:
                    vals = hi_v * dg.digit + xv
            vals = np.minimum(vals, m.enc.vocab[j] - 1)
            rec[:, j] = vals
            for b in range(B):
                chosen[b][j] = int(vals[b])
        if legal is not None:
            for b in range(B):
                legal[b].update(rec[b])
        return rec


class TransformerBackbone(BackboneImpl):
    name = Backbone.TRANSFORMER
    trainable = True
    Config = TransformerConfig

    def create(self, cfg: TransformerConfig, encoding: Encoding, space: ConditionSpace) -> TraceGPT:
        return TraceGPT(cfg, encoding, space.dim)


    def loss(self, model, tokens, dt, cond, noise=None, step: int = 0):
        return model(tokens, cond)

    def sampler(self, model, encoding, space, *, device="cpu", constrained=True, batch=None,
                header_for=None, ids=(0, 0x100)) -> TransformerSampler:
        return TransformerSampler(model, space, device, constrained, batch, header_for, ids)


_ = (math, STATUS_CODES)
