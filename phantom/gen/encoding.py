"""A TLP record as F integer fields (tokens), a window of W records as a normalised W x F tensor ("image"), and back.

Fields, in the order the transformer generates them within a record (docs/phantom.md, "Encoding"):

==========  ==========  ===================================================================================
field       vocabulary  meaning
==========  ==========  ===================================================================================
kind        len(KINDS)  direction + Fmt/Type without the 32/64-bit distinction + semantic class (the header
                        format follows from the address: 4-DW header exactly when the address is >= 4 GB)
dt          256         inter-arrival time since the previous record: 0, then log-spaced bins 10 ps..100 us
tag         1024        request tag (completions: the tag they answer)
region      len(REGIONS) which region of the header's memory map the address falls in (cfg/io/none/unmapped)
page        1024        4 KB page of the address inside its region
off         1024        DWORD offset of the address inside its page (alignment, 4 KB-boundary distance)
length      1025        Length field in DW (0 for completions without data)
first_be    16          First DW byte enables
last_be     16          Last DW byte enables
bc          4097        completion Byte Count
la          128         completion Lower Address
status      4           completion status (SC UR CRS CA)
attr        8           attributes (no snoop, relaxed ordering, ID-based ordering)
tc          8           traffic class
ep          2           poisoned
rid         len(ids)    requester ID, as an index into the encoding's ID table
cid         len(ids)    completer ID, likewise
post        1024        payload summary for the host side: descriptors a doorbell posts (producer-index delta)
==========  ==========  ===================================================================================

Round trip on real traces (tested): every field but ``dt`` is exact; ``dt`` through tokens is within 3.3 % (or
10 ps below 10 ps) and exact through the image to float32 precision (relative 1e-5). Payloads are not fields:
the model does not generate bytes, calibration writes the host-side payloads (descriptors, doorbell producer
indices, completion records, frame data) so that they are consistent by construction; decoding without
calibration writes only the doorbell payloads.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phantom.memmap import MemoryMap, RegionKind
from phantom.trace import CplStatus, Direction, SemClass, TlpType, TraceColumns, TraceHeader

ENCODING_VERSION = 1


class EncodingError(ValueError):
    """A record the encoding cannot represent (names the record and the field)."""


class Base(enum.IntEnum):
    """Fmt/Type without the 3-DW/4-DW header distinction of memory requests."""

    MRd = 0
    MWr = 1
    Cpl = 2
    CplD = 3
    CfgRd0 = 4
    CfgWr0 = 5
    CfgRd1 = 6
    CfgWr1 = 7
    IORd = 8
    IOWr = 9


_BASE_OF = {TlpType.MRd32: Base.MRd, TlpType.MRd64: Base.MRd, TlpType.MWr32: Base.MWr, TlpType.MWr64: Base.MWr,
            TlpType.Cpl: Base.Cpl, TlpType.CplD: Base.CplD, TlpType.CfgRd0: Base.CfgRd0, TlpType.CfgWr0: Base.CfgWr0,
            TlpType.CfgRd1: Base.CfgRd1, TlpType.CfgWr1: Base.CfgWr1, TlpType.IORd: Base.IORd,
            TlpType.IOWr: Base.IOWr}

_D, _U = Direction.DOWN, Direction.UP
S = SemClass
# every (direction, base type, class) a NIC trace holds: the host's configuration, MMIO and IO requests, the
# device's DMA, and completions both ways
KINDS: tuple[tuple[Direction, Base, SemClass], ...] = (
    (_D, Base.CfgRd0, S.CONFIG), (_D, Base.CfgWr0, S.CONFIG), (_D, Base.CfgRd1, S.CONFIG), (_D, Base.CfgWr1, S.CONFIG),
    (_D, Base.MRd, S.MMIO_READ), (_D, Base.MWr, S.MMIO_WRITE), (_D, Base.MWr, S.DOORBELL),
    (_D, Base.IORd, S.OTHER), (_D, Base.IOWr, S.OTHER),
    (_U, Base.MRd, S.DESC_READ), (_U, Base.MRd, S.DATA_READ), (_U, Base.MWr, S.DATA_WRITE),
    (_U, Base.MWr, S.CPL_WRITE), (_U, Base.MWr, S.INTERRUPT), (_U, Base.MRd, S.OTHER), (_U, Base.MWr, S.OTHER),
    (_D, Base.CplD, S.COMPLETION), (_D, Base.Cpl, S.COMPLETION), (_U, Base.CplD, S.COMPLETION),
    (_U, Base.Cpl, S.COMPLETION),
)
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
KIND_NAMES = tuple(f"{d.name.lower()}_{b.name}_{c.name.lower()}" for d, b, c in KINDS)


class Region(enum.IntEnum):
    NONE = 0        # completions (no address)
    CFG = 1         # configuration register space
    IO = 2          # IO space
    TX_RING = 3
    RX_RING = 4
    TX_DATA = 5
    RX_DATA = 6
    TX_CPL_RING = 7
    RX_CPL_RING = 8
    MSIX = 9
    BAR = 10
    UNMAPPED = 11   # a memory address outside the memory map (does not round-trip exactly)


REGION_OF_KIND = {RegionKind.TX_RING: Region.TX_RING, RegionKind.RX_RING: Region.RX_RING,
                  RegionKind.TX_DATA: Region.TX_DATA, RegionKind.RX_DATA: Region.RX_DATA,
                  RegionKind.TX_CPL_RING: Region.TX_CPL_RING, RegionKind.RX_CPL_RING: Region.RX_CPL_RING,
                  RegionKind.MSIX: Region.MSIX, RegionKind.BAR: Region.BAR}
KIND_OF_REGION = {v: k for k, v in REGION_OF_KIND.items()}
STATUS_CODES = (CplStatus.SC, CplStatus.UR, CplStatus.CRS, CplStatus.CA)
_STATUS_INDEX = np.zeros(8, dtype=np.int64)
for _i, _s in enumerate(STATUS_CODES):
    _STATUS_INDEX[int(_s)] = _i

# inter-arrival bins: 0, then 254 geometric bins from DT_LO to DT_HI, then >= DT_HI
DT_LO_PS = 10.0
DT_HI_PS = 1e8
DT_BINS = 256
_DT_RATIO = (DT_HI_PS / DT_LO_PS) ** (1.0 / (DT_BINS - 2))
DT_REL_TOL = (math.sqrt(_DT_RATIO) - 1.0)  # half a bin, relative (3.2 %)
# image value of dt: log1p(dt / 1 ns) / log1p(DT_IMG_MAX_NS)
DT_IMG_MAX_NS = 1e6


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    vocab: int
    nominal: bool   # True: categories without order (categorical likelihood); False: ordered values
    help: str = ""


PAGES = 1024
OFFS = 1024
TAGS = 1024
POSTS = 1024


def _fields(n_ids: int) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec("kind", len(KINDS), True, "direction + base type + semantic class"),
        FieldSpec("dt", DT_BINS, False, "inter-arrival time bin"),
        FieldSpec("tag", TAGS, False, "tag"),
        FieldSpec("region", len(Region), True, "memory-map region of the address"),
        FieldSpec("page", PAGES, False, "4 KB page within the region"),
        FieldSpec("off", OFFS, False, "DW offset within the page"),
        FieldSpec("length", 1025, False, "Length in DW"),
        FieldSpec("first_be", 16, True, "first DW byte enables"),
        FieldSpec("last_be", 16, True, "last DW byte enables"),
        FieldSpec("bc", 4097, False, "completion byte count"),
        FieldSpec("la", 128, False, "completion lower address"),
        FieldSpec("status", len(STATUS_CODES), True, "completion status"),
        FieldSpec("attr", 8, True, "attributes"),
        FieldSpec("tc", 8, True, "traffic class"),
        FieldSpec("ep", 2, True, "poisoned"),
        FieldSpec("rid", n_ids, True, "requester ID index"),
        FieldSpec("cid", n_ids, True, "completer ID index"),
        FieldSpec("post", POSTS, False, "descriptors posted by a doorbell"),
    )


FIELD_NAMES = tuple(f.name for f in _fields(2))
F = len(FIELD_NAMES)
FI = {n: i for i, n in enumerate(FIELD_NAMES)}


def dt_to_token(dt_ps: np.ndarray) -> np.ndarray:
    dt = np.asarray(dt_ps, dtype=np.float64)
    k = 1 + np.floor(np.log(np.maximum(dt, DT_LO_PS) / DT_LO_PS) / math.log(_DT_RATIO)).astype(np.int64)
    k = np.clip(k, 1, DT_BINS - 1)
    return np.where(dt <= 0, 0, k)


def token_to_dt(tok: np.ndarray) -> np.ndarray:
    """Bin centre (geometric) in ps; token 0 is 0 ps."""
    tok = np.asarray(tok, dtype=np.int64)
    centre = DT_LO_PS * _DT_RATIO ** (tok - 1 + 0.5)
    centre = np.where(tok == 1, np.minimum(centre, DT_LO_PS), centre)  # below 10 ps: decoded as 10 ps
    centre = np.where(tok >= DT_BINS - 1, DT_HI_PS, centre)
    return np.where(tok == 0, 0.0, centre)


def dt_to_image(dt_ps: np.ndarray) -> np.ndarray:
    return (np.log1p(np.asarray(dt_ps, dtype=np.float64) / 1000.0) / math.log1p(DT_IMG_MAX_NS)).astype(np.float32)


def image_to_dt(v: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return np.expm1(x * math.log1p(DT_IMG_MAX_NS)) * 1000.0


@dataclass(frozen=True)
class Encoding:
    """The field layout and the tables that make it exact: requester/completer IDs seen in the data."""

    ids: tuple[int, ...] = (0x0000, 0x0100)   # requester/completer IDs (host root port, device)
    version: int = ENCODING_VERSION
    fields: tuple[FieldSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ids or len(self.ids) > 16 or any(not 0 <= i <= 0xFFFF for i in self.ids):
            raise ValueError(f"Encoding.ids must be 1..16 IDs in 0..0xFFFF, got {self.ids!r}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"Encoding.ids has duplicates: {self.ids!r}")
        if self.version != ENCODING_VERSION:
            raise ValueError(f"encoding version {self.version} is not supported (this code: {ENCODING_VERSION})")
        object.__setattr__(self, "fields", _fields(len(self.ids)))

    @property
    def vocab(self) -> tuple[int, ...]:
        return tuple(f.vocab for f in self.fields)

    @property
    def nominal(self) -> tuple[bool, ...]:
        return tuple(f.nominal for f in self.fields)

    def to_json(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "version": self.version, "fields": [f.name for f in self.fields]}

    @classmethod
    def from_json(cls, d: Any) -> "Encoding":
        if not isinstance(d, dict) or "ids" not in d:
            raise ValueError(f"not an encoding description: {d!r}")
        if d.get("fields") is not None and list(d["fields"]) != list(FIELD_NAMES):
            raise ValueError(f"encoding fields {d['fields']} differ from this code's {list(FIELD_NAMES)}")
        return cls(tuple(int(i) for i in d["ids"]), int(d.get("version", ENCODING_VERSION)))

    # ------------------------------------------------------------------------------------------
    def encode(self, tc: TraceColumns, prev_t_ps: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (N, F) int32 and inter-arrival times (N,) int64 ps of a trace held as columns."""
        h = tc.header
        n = len(tc)
        out = np.zeros((n, F), dtype=np.int32)
        if n == 0:
            return out, np.zeros(0, dtype=np.int64)
        t = tc["t_ps"].astype(np.int64)
        dt = np.diff(np.concatenate([[prev_t_ps], t]))
        if (dt < 0).any():
            i = int(np.argmax(dt < 0))
            raise EncodingError(f"record {i}: arrival time goes backwards (trace not in link order)")
        typ = tc["type"].astype(np.int64)
        dirs = tc["dir"].astype(np.int64)
        cls = tc["cls"].astype(np.int64)
        addr = tc["address"].astype(np.uint64)
        base = np.full(n, -1, dtype=np.int64)
        for tt, b in _BASE_OF.items():
            base[typ == int(tt)] = int(b)
        if (base < 0).any():
            i = int(np.argmax(base < 0))
            raise EncodingError(f"record {i}: TLP type {TlpType(int(typ[i])).name} is not in the encoding")
        key = dirs * 10000 + base * 100 + cls
        table = np.array([int(d) * 10000 + int(b) * 100 + int(c) for d, b, c in KINDS], dtype=np.int64)
        order = np.argsort(table)
        pos = np.searchsorted(table[order], key)
        pos = np.minimum(pos, len(table) - 1)
        found = table[order][pos] == key
        if not found.all():
            i = int(np.argmax(~found))
            raise EncodingError(f"record {i}: ({Direction(int(dirs[i])).name.lower()}, {TlpType(int(typ[i])).name}, "
                                f"{SemClass(int(cls[i])).name.lower()}) is not a kind of the encoding")
        kind = order[pos]
        region, page, off = self._addresses(h, kind, addr)
        out[:, FI["kind"]] = kind
        out[:, FI["dt"]] = dt_to_token(dt)
        tag = tc["tag"].astype(np.int64)
        if (tag >= TAGS).any():
            raise EncodingError(f"record {int(np.argmax(tag >= TAGS))}: tag above {TAGS - 1}")
        out[:, FI["tag"]] = tag
        out[:, FI["region"]] = region
        out[:, FI["page"]] = page
        out[:, FI["off"]] = off
        out[:, FI["length"]] = tc["length"]
        out[:, FI["first_be"]] = tc["first_be"] & 15
        out[:, FI["last_be"]] = tc["last_be"] & 15
        out[:, FI["bc"]] = tc["byte_count"]
        out[:, FI["la"]] = tc["lower_address"] & 0x7F
        out[:, FI["status"]] = _STATUS_INDEX[tc["status"].astype(np.int64) & 7]
        out[:, FI["attr"]] = tc["attr"] & 7
        out[:, FI["tc"]] = tc["tc"] & 7
        out[:, FI["ep"]] = tc["ep"].astype(np.int64)
        for name, col in (("rid", "requester_id"), ("cid", "completer_id")):
            ids = np.asarray(self.ids, dtype=np.int64)
            v = tc[col].astype(np.int64)
            idx = np.searchsorted(np.sort(ids), v)
            srt = np.argsort(ids)
            ok = (idx < len(ids)) & (np.sort(ids)[np.minimum(idx, len(ids) - 1)] == v)
            if not ok.all():
                i = int(np.argmax(~ok))
                raise EncodingError(f"record {i}: {col} {int(v[i]):#06x} is not in the encoding's ID table "
                                    f"{[hex(x) for x in self.ids]}")
            out[:, FI[name]] = srt[np.minimum(idx, len(ids) - 1)]
        out[:, FI["post"]] = self._posts(tc, kind)
        return out, dt

    def _addresses(self, h: TraceHeader, kind: np.ndarray, addr: np.ndarray):
        n = len(kind)
        region = np.zeros(n, dtype=np.int64)
        page = np.zeros(n, dtype=np.int64)
        off = np.zeros(n, dtype=np.int64)
        kd = np.array([KINDS[k][1] for k in range(len(KINDS))], dtype=np.int64)[kind]
        is_cfg = np.isin(kd, [int(Base.CfgRd0), int(Base.CfgWr0), int(Base.CfgRd1), int(Base.CfgWr1)])
        is_io = np.isin(kd, [int(Base.IORd), int(Base.IOWr)])
        is_mem = np.isin(kd, [int(Base.MRd), int(Base.MWr)])
        a = addr.astype(np.uint64)
        region[is_cfg] = Region.CFG
        off[is_cfg] = ((a[is_cfg] & np.uint64(0xFFF)) >> np.uint64(2)).astype(np.int64)
        region[is_io] = Region.IO
        page[is_io] = ((a[is_io] >> np.uint64(12)) & np.uint64(PAGES - 1)).astype(np.int64)
        off[is_io] = ((a[is_io] & np.uint64(0xFFF)) >> np.uint64(2)).astype(np.int64)
        mm = MemoryMap.from_json(h.memory_map) if h.memory_map else None
        idx = np.flatnonzero(is_mem)
        if len(idx):
            rbase = np.zeros(len(idx), dtype=np.uint64)
            reg = np.full(len(idx), int(Region.UNMAPPED), dtype=np.int64)
            if mm is not None:
                plain = [r for r in mm.regions if not r.kind.is_register and r.kind in REGION_OF_KIND]
                starts = np.array([r.base for r in plain], dtype=np.uint64)
                ends = np.array([r.end for r in plain], dtype=np.uint64)
                if len(plain):
                    j = np.searchsorted(starts, a[idx], side="right") - 1
                    jj = np.maximum(j, 0)
                    inside = (j >= 0) & (a[idx] < ends[jj])
                    reg = np.where(inside, np.array([int(REGION_OF_KIND[r.kind]) for r in plain])[jj], reg)
                    rbase = np.where(inside, starts[jj], np.uint64(0))
            rel = a[idx] - rbase
            pg = (rel >> np.uint64(12)).astype(np.uint64)
            unm = reg == int(Region.UNMAPPED)
            big = (pg >= np.uint64(PAGES)) & ~unm
            if big.any():
                i = int(idx[np.argmax(big)])
                raise EncodingError(f"record {i}: address {int(a[i]):#x} lies beyond page {PAGES - 1} of its region")
            pg = np.where(unm, pg & np.uint64(PAGES - 1), pg)
            region[idx] = reg
            page[idx] = pg.astype(np.int64)
            off[idx] = ((rel & np.uint64(0xFFF)) >> np.uint64(2)).astype(np.int64)
        return region, page, off

    def _posts(self, tc: TraceColumns, kind: np.ndarray) -> np.ndarray:
        """Producer-index delta of each doorbell (per queue, from 0 after each queue reset)."""
        h = tc.header
        n = len(tc)
        post = np.zeros(n, dtype=np.int64)
        if not h.memory_map:
            return post
        q = _QueueTables(h)
        k_db = KIND_INDEX[(_D, Base.MWr, S.DOORBELL)]
        k_mw = KIND_INDEX[(_D, Base.MWr, S.MMIO_WRITE)]
        sel = np.flatnonzero((kind == k_db) | (kind == k_mw))
        addr = tc["address"]
        prod = {"tx": 0, "rx": 0}
        for i in sel.tolist():
            a = int(addr[i]) & ~3
            pl = _payload(tc, i)
            if kind[i] == k_db:
                qn = q.doorbell.get(a)
                if qn is None or pl is None or len(pl) < 2:
                    continue
                new = int.from_bytes(pl[:2], "little") % q.entries[qn]
                post[i] = min((new - prod[qn]) % q.entries[qn], POSTS - 1)
                prod[qn] = new
            else:
                qn = q.qctrl.get(a)
                if qn is not None and pl and not pl[0] & 1:
                    prod[qn] = 0
        return post

    # ------------------------------------------------------------------------------------------
    def decode(self, header: TraceHeader, tokens: np.ndarray, dt_ps: np.ndarray | None = None,
               t0_ps: int = 0, state: dict | None = None) -> TraceColumns:
        """Records of tokens (N, F) under a header (its memory map places the addresses). Times from ``dt_ps``
        when given (exact), else from the dt tokens (bin centres). Doorbells get their producer-index payload.
        ``state`` (a dict, updated) carries the producer indices from one chunk of a stream to the next."""
        tok = np.asarray(tokens, dtype=np.int64)
        n = len(tok)
        self.check_tokens(tok)
        kind = tok[:, FI["kind"]]
        dirs = np.array([int(k[0]) for k in KINDS], dtype=np.int64)[kind]
        base = np.array([int(k[1]) for k in KINDS], dtype=np.int64)[kind]
        cls = np.array([int(k[2]) for k in KINDS], dtype=np.int64)[kind]
        dt = np.asarray(dt_ps, dtype=np.float64) if dt_ps is not None else token_to_dt(tok[:, FI["dt"]])
        t = t0_ps + np.cumsum(np.rint(dt).astype(np.int64))
        region = tok[:, FI["region"]]
        addr = self._address_of(header, region, tok[:, FI["page"]], tok[:, FI["off"]])
        above = addr >= np.uint64(1 << 32)
        typ = np.zeros(n, dtype=np.int64)
        for b, (t32, t64) in {Base.MRd: (TlpType.MRd32, TlpType.MRd64), Base.MWr: (TlpType.MWr32, TlpType.MWr64)}.items():
            m = base == int(b)
            typ[m] = np.where(above[m], int(t64), int(t32))
        for tt, b in _BASE_OF.items():
            if b not in (Base.MRd, Base.MWr):
                typ[base == int(b)] = int(tt)
        length = tok[:, FI["length"]]
        has_data = (typ & 0x40) != 0
        ids = np.asarray(self.ids, dtype=np.int64)
        cols = {
            "seq": np.arange(n, dtype=np.int64), "t_ps": t, "dir": dirs.astype(np.uint8), "type": typ.astype(np.uint8),
            "length": length.astype(np.uint16), "address": addr, "first_be": tok[:, FI["first_be"]].astype(np.uint8),
            "last_be": tok[:, FI["last_be"]].astype(np.uint8), "tag": tok[:, FI["tag"]].astype(np.uint16),
            "requester_id": ids[tok[:, FI["rid"]]].astype(np.uint16),
            "completer_id": ids[tok[:, FI["cid"]]].astype(np.uint16),
            "status": np.array([int(s) for s in STATUS_CODES], dtype=np.uint8)[tok[:, FI["status"]]],
            "byte_count": tok[:, FI["bc"]].astype(np.uint16), "lower_address": tok[:, FI["la"]].astype(np.uint8),
            "tc": tok[:, FI["tc"]].astype(np.uint8), "attr": tok[:, FI["attr"]].astype(np.uint8),
            "ep": tok[:, FI["ep"]].astype(bool), "payload_len": np.where(has_data, length * 4, 0).astype(np.uint32),
            "cls": cls.astype(np.uint8),
        }
        payloads = self._doorbell_payloads(header, kind, addr, tok[:, FI["post"]],
                                           None if state is None else state.setdefault("prod", {"tx": 0, "rx": 0}))
        present = np.zeros(n, dtype=bool)
        lens = np.zeros(n, dtype=np.int64)
        for i in payloads:
            present[i] = True
            lens[i] = 4
        off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        data = np.frombuffer(b"".join(payloads[i] for i in sorted(payloads)), dtype=np.uint8).copy()
        return TraceColumns(header, cols, data, off, present)

    def check_tokens(self, tok: np.ndarray) -> None:
        if tok.ndim != 2 or tok.shape[1] != F:
            raise ValueError(f"tokens must have shape (N, {F}), got {tok.shape}")
        for j, fs in enumerate(self.fields):
            col = tok[:, j]
            if len(col) and (col.min() < 0 or col.max() >= fs.vocab):
                raise ValueError(f"field {fs.name!r}: token {int(col.max() if col.max() >= fs.vocab else col.min())} "
                                 f"outside 0..{fs.vocab - 1}")

    def _address_of(self, h: TraceHeader, region, page, off) -> np.ndarray:
        n = len(region)
        rbase = np.zeros(n, dtype=np.uint64)
        if h.memory_map:
            mm = MemoryMap.from_json(h.memory_map)
            for r in mm.regions:
                if r.kind in REGION_OF_KIND:
                    rbase[region == int(REGION_OF_KIND[r.kind])] = np.uint64(r.base)
        rel = (page.astype(np.uint64) << np.uint64(12)) + (off.astype(np.uint64) << np.uint64(2))
        addr = rbase + rel
        addr[region == int(Region.CFG)] = (off[region == int(Region.CFG)].astype(np.uint64) << np.uint64(2))
        addr[region == int(Region.NONE)] = 0
        return addr

    def _doorbell_payloads(self, h: TraceHeader, kind, addr, post, prod: dict | None = None) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        if not h.memory_map:
            return out
        q = _QueueTables(h)
        k_db = KIND_INDEX[(_D, Base.MWr, S.DOORBELL)]
        prod = {"tx": 0, "rx": 0} if prod is None else prod
        for i in np.flatnonzero(kind == k_db).tolist():
            qn = q.doorbell.get(int(addr[i]) & ~3)
            if qn is None:
                continue
            prod[qn] = (prod[qn] + int(post[i])) % q.entries[qn]
            out[i] = prod[qn].to_bytes(4, "little")
        return out

    # ------------------------------------------------------------------------------------------
    def to_image(self, tokens: np.ndarray, dt_ps: np.ndarray | None = None) -> np.ndarray:
        """(..., F) tokens -> (..., F) float32 in [0, 1]: (token + 0.5) / vocab, dt as a log scale of ns."""
        tok = np.asarray(tokens)
        v = np.asarray(self.vocab, dtype=np.float32)
        img = (tok.astype(np.float32) + 0.5) / v
        if dt_ps is not None:
            img[..., FI["dt"]] = dt_to_image(dt_ps)
        else:
            img[..., FI["dt"]] = dt_to_image(token_to_dt(tok[..., FI["dt"]]))
        return img

    def from_image(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of ``to_image``: tokens (..., F) and dt in ps (...)."""
        x = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        v = np.asarray(self.vocab, dtype=np.float64)
        tok = np.minimum(np.floor(x * v), v - 1).astype(np.int64)
        dt = image_to_dt(x[..., FI["dt"]])
        tok[..., FI["dt"]] = dt_to_token(dt)
        return tok, dt


def _payload(tc: TraceColumns, i: int) -> bytes | None:
    if not tc.payload_present[i]:
        return None
    o0 = int(tc.payload_off[0]) if len(tc.payload_off) else 0
    return tc.payload_data[int(tc.payload_off[i]) - o0:int(tc.payload_off[i + 1]) - o0].tobytes()


class _QueueTables:
    """Doorbell and queue-control register addresses and ring sizes of a header's memory map."""

    def __init__(self, h: TraceHeader):
        mm = MemoryMap.from_json(h.memory_map)
        self.doorbell = {r.base: r.kind.queue for r in mm.regions if r.kind.is_doorbell}
        self.qctrl = {r.base: r.kind.queue for r in mm.regions if r.kind in (RegionKind.TX_QCTRL, RegionKind.RX_QCTRL)}
        self.entries = {"tx": 1, "rx": 1}
        for kind, qn in ((RegionKind.TX_RING, "tx"), (RegionKind.RX_RING, "rx")):
            r = mm.of_kind(kind)
            if r:
                self.entries[qn] = max(r[0].size // 16, 1)


def ids_of(tcs: list[TraceColumns]) -> tuple[int, ...]:
    """The ID table of a set of traces: every requester and completer ID, in first-seen-sorted order."""
    s: set[int] = set()
    for tc in tcs:
        s.update(np.unique(tc["requester_id"]).tolist())
        s.update(np.unique(tc["completer_id"]).tolist())
    if not s:
        return (0, 0x100)
    return tuple(sorted(s))
