"""TLP trace schema and I/O: the one format every part of the project reads and writes.

A trace is a header (schema version, link parameters, provenance) followed by TLP records in link order.
Two encodings, convertible both ways without loss:

* JSON lines (``.jsonl`` or ``.jsonl.gz``): line 1 is the header object, every further line one record.
  Streamable, diffable, appendable; what capture writes.
* Columnar (``.npz``): one numpy array per field plus the header as JSON. Loads a million records in
  well under a second; what the checker, statistics and the model read in bulk.

See docs/trace-format.md for the field-by-field description.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np

SCHEMA_NAME = "phantom.trace"
SCHEMA_VERSION = 3
# version history: 1 link parameters and provenance; 2 adds the device's completion timeout, Device Control
# attributes, the host memory map, the host model and the device identity; 3 adds ``mac_frames``, the sidecar
# file of frames on the device's MAC side (older versions read with defaults)
MAC_SCHEMA_NAME = "phantom.mac"
MAC_SCHEMA_VERSION = 1


class TraceFormatError(ValueError):
    """A trace file that cannot be read: names the file, the line (or array) and the field."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, field_name: str | None, msg: str):
        self.path = str(path) if path is not None else "<stream>"
        self.line = line
        self.field = field_name
        where = self.path
        if line is not None:
            where += f":{line}"
        if field_name is not None:
            where += f": field {field_name!r}"
        super().__init__(f"{where}: {msg}")


class TlpType(enum.IntEnum):
    """TLP Fmt[2:0] and Type[4:0] packed as in header byte 0 (PCIe Base Spec 2.2.1)."""

    MRd32 = 0x00
    MRd64 = 0x20
    MRdLk32 = 0x01
    MRdLk64 = 0x21
    MWr32 = 0x40
    MWr64 = 0x60
    IORd = 0x02
    IOWr = 0x42
    CfgRd0 = 0x04
    CfgWr0 = 0x44
    CfgRd1 = 0x05
    CfgWr1 = 0x45
    Msg = 0x30
    MsgD = 0x70
    Cpl = 0x0A
    CplD = 0x4A
    CplLk = 0x0B
    CplDLk = 0x4B
    FetchAdd32 = 0x4C
    FetchAdd64 = 0x6C
    Swap32 = 0x4D
    Swap64 = 0x6D
    CAS32 = 0x4E
    CAS64 = 0x6E

    @property
    def has_data(self) -> bool:
        return bool(self.value & 0x40)

    @property
    def is_4dw(self) -> bool:
        return bool(self.value & 0x20)

    @property
    def is_mem_read(self) -> bool:
        return self in (TlpType.MRd32, TlpType.MRd64, TlpType.MRdLk32, TlpType.MRdLk64)

    @property
    def is_mem_write(self) -> bool:
        return self in (TlpType.MWr32, TlpType.MWr64)

    @property
    def is_completion(self) -> bool:
        return self in (TlpType.Cpl, TlpType.CplD, TlpType.CplLk, TlpType.CplDLk)

    @property
    def is_config(self) -> bool:
        return self in (TlpType.CfgRd0, TlpType.CfgWr0, TlpType.CfgRd1, TlpType.CfgWr1)

    @property
    def is_io(self) -> bool:
        return self in (TlpType.IORd, TlpType.IOWr)

    @property
    def is_atomic(self) -> bool:
        return self in (TlpType.FetchAdd32, TlpType.FetchAdd64, TlpType.Swap32, TlpType.Swap64,
                        TlpType.CAS32, TlpType.CAS64)

    @property
    def is_posted(self) -> bool:
        return self.is_mem_write or self in (TlpType.Msg, TlpType.MsgD)

    @property
    def is_non_posted(self) -> bool:
        return not self.is_posted and not self.is_completion


class Direction(enum.IntEnum):
    """Which way the TLP crossed the link."""

    DOWN = 0  # root complex -> device
    UP = 1    # device -> root complex


class SemClass(enum.IntEnum):
    """What a TLP meant to the host and the NIC (assigned at capture from the host's memory map)."""

    OTHER = 0
    CONFIG = 1          # configuration request
    MMIO_READ = 2       # host reads a device register
    MMIO_WRITE = 3      # host writes a device register (not a doorbell)
    DOORBELL = 4        # host writes a producer index
    DESC_READ = 5       # device reads a descriptor ring
    DATA_READ = 6       # device reads packet data (TX)
    DATA_WRITE = 7      # device writes packet data (RX)
    CPL_WRITE = 8       # device writes a completion record
    INTERRUPT = 9       # device writes an MSI/MSI-X message
    COMPLETION = 10     # any completion (its request's class is found through requester ID + tag)


class CplStatus(enum.IntEnum):
    """Completion status (PCIe 2.2.9)."""

    SC = 0
    UR = 1
    CRS = 2
    CA = 4


def _enum_by_name(cls: type[enum.IntEnum]) -> dict[str, enum.IntEnum]:
    return {m.name: m for m in cls}


_TYPE_BY_NAME = _enum_by_name(TlpType)
_DIR_BY_NAME = {"down": Direction.DOWN, "up": Direction.UP}
_DIR_NAME = {Direction.DOWN: "down", Direction.UP: "up"}
_CLS_BY_NAME = {m.name.lower(): m for m in SemClass}
_STATUS_BY_NAME = _enum_by_name(CplStatus)


@dataclass(slots=True)
class TlpRecord:
    """One TLP as seen on the link. Fields that do not apply to the type are 0."""

    seq: int = 0                      # index in the trace, from 0
    t_ps: int = 0                     # arrival time at the receiving port, picoseconds of sim time
    dir: Direction = Direction.DOWN   # link direction
    type: TlpType = TlpType.MRd32     # Fmt/Type
    length: int = 0                   # Length field in DWORDs (1..1024; 0 only for no-data TLPs)
    address: int = 0                  # memory/IO address (byte address, DWORD aligned) or config register
    first_be: int = 0                 # first DW byte enables (requests)
    last_be: int = 0                  # last DW byte enables (requests)
    tag: int = 0                      # request tag (requests and completions)
    requester_id: int = 0             # bus<<8 | dev<<3 | fn
    completer_id: int = 0             # completions and config requests
    status: CplStatus = CplStatus.SC  # completions
    byte_count: int = 0               # completions: bytes remaining including this one
    lower_address: int = 0            # completions: address[6:0] of the first byte
    tc: int = 0                       # traffic class
    attr: int = 0                     # bit 0 no-snoop, bit 1 relaxed ordering, bit 2 ID-based ordering
    ep: bool = False                  # poisoned
    payload_len: int = 0              # payload bytes carried (length*4 for data TLPs, else 0)
    cls: SemClass = SemClass.OTHER    # semantic class
    payload: bytes | None = None      # payload bytes, possibly truncated (None when not kept)

    @property
    def relaxed_ordering(self) -> bool:
        return bool(self.attr & 0x2)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seq": self.seq, "t_ps": self.t_ps, "dir": _DIR_NAME[self.dir], "type": self.type.name,
            "length": self.length, "address": self.address, "first_be": self.first_be, "last_be": self.last_be,
            "tag": self.tag, "requester_id": self.requester_id, "completer_id": self.completer_id,
            "status": self.status.name, "byte_count": self.byte_count, "lower_address": self.lower_address,
            "tc": self.tc, "attr": self.attr, "ep": self.ep, "payload_len": self.payload_len,
            "cls": self.cls.name.lower(),
        }
        if self.payload is not None:
            d["payload"] = self.payload.hex()
        return d

    @classmethod
    def from_json(cls, d: Any, *, path: Any = None, line: int | None = None) -> "TlpRecord":
        if not isinstance(d, dict):
            raise TraceFormatError(path, line, None, f"expected a JSON object, got {type(d).__name__}")

        def get(name: str, kind: type = int, default: Any = dataclasses.MISSING) -> Any:
            if name not in d:
                if default is dataclasses.MISSING:
                    raise TraceFormatError(path, line, name, "missing")
                return default
            v = d[name]
            if kind is int and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise TraceFormatError(path, line, name, f"expected a non-negative integer, got {v!r}")
            if kind is bool and not isinstance(v, bool):
                raise TraceFormatError(path, line, name, f"expected true/false, got {v!r}")
            return v

        def lookup(name: str, table: dict, default: Any = dataclasses.MISSING) -> Any:
            v = get(name, str, default)
            if v is default and default is not dataclasses.MISSING:
                return v
            try:
                return table[v]
            except (KeyError, TypeError):
                raise TraceFormatError(path, line, name, f"unknown value {v!r} (expected one of {sorted(table)})")

        payload = d.get("payload")
        if payload is not None:
            try:
                payload = bytes.fromhex(payload)
            except (ValueError, TypeError):
                raise TraceFormatError(path, line, "payload", "expected a hex string")
        rec = cls(
            seq=get("seq"), t_ps=get("t_ps"), dir=lookup("dir", _DIR_BY_NAME), type=lookup("type", _TYPE_BY_NAME),
            length=get("length"), address=get("address", int, 0), first_be=get("first_be", int, 0),
            last_be=get("last_be", int, 0), tag=get("tag", int, 0), requester_id=get("requester_id", int, 0),
            completer_id=get("completer_id", int, 0), status=lookup("status", _STATUS_BY_NAME, CplStatus.SC),
            byte_count=get("byte_count", int, 0), lower_address=get("lower_address", int, 0),
            tc=get("tc", int, 0), attr=get("attr", int, 0), ep=get("ep", bool, False),
            payload_len=get("payload_len", int, 0), cls=lookup("cls", _CLS_BY_NAME, SemClass.OTHER),
            payload=payload,
        )
        for name, hi in (("length", 1024), ("first_be", 15), ("last_be", 15), ("tag", 1023),
                         ("requester_id", 0xFFFF), ("completer_id", 0xFFFF), ("byte_count", 4096),
                         ("lower_address", 0x7F), ("tc", 7), ("attr", 7)):
            if getattr(rec, name) > hi:
                raise TraceFormatError(path, line, name, f"value {getattr(rec, name)} out of range (max {hi})")
        return rec


@dataclass
class TraceHeader:
    """Link parameters and provenance of a trace."""

    mps: int = 256                 # Max_Payload_Size in bytes
    mrrs: int = 512                # Max_Read_Request_Size in bytes
    rcb: int = 64                  # Read Completion Boundary in bytes
    tag_width: int = 5             # tag bits in use (5: 32 tags, 8: extended tags)
    link_speed: int = 3            # PCIe generation
    link_width: int = 8            # lanes
    data_width: int = 256          # user interface data width in bits
    scenario: str = ""             # what produced it (scenario name, "generated", ...)
    simulator: str = ""            # verilator, icarus, model, ...
    payload_bytes_kept: int = 0    # packet-data payload truncation at capture (0: none kept; control payloads are whole)
    cpl_timeout_ns: float = 0.0    # the device's programmed completion timeout (0: unknown, checkers use a default)
    relaxed_ordering: bool = False # Device Control "Enable Relaxed Ordering" as the host configured it
    no_snoop: bool = False         # Device Control "Enable No Snoop"
    memory_map: list[dict[str, Any]] = field(default_factory=list)  # host memory map (phantom.memmap)
    host: dict[str, Any] = field(default_factory=dict)    # host model that produced the traffic (tb.host_model)
    device: dict[str, Any] = field(default_factory=dict)  # device identity (vendor_id, device_id, regmap, ...)
    mac_frames: str = ""           # sidecar file (same folder) of MAC-side frames: offered to the device, sent by it
    extra: dict[str, Any] = field(default_factory=dict)   # free-form provenance (seed, git rev, ...)

    def __post_init__(self) -> None:
        for name in ("mps", "mrrs"):
            v = getattr(self, name)
            if v not in (128, 256, 512, 1024, 2048, 4096):
                raise ValueError(f"{name} must be a power of two in 128..4096, got {v!r}")
        if self.rcb not in (64, 128):
            raise ValueError(f"rcb must be 64 or 128, got {self.rcb!r}")
        if self.tag_width not in (5, 8, 10):
            raise ValueError(f"tag_width must be 5, 8 or 10, got {self.tag_width!r}")
        t = self.cpl_timeout_ns
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t < 1e12:
            raise ValueError(f"cpl_timeout_ns must be a number in [0, 1e12), got {t!r}")
        for name in ("relaxed_ordering", "no_snoop"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.mac_frames, str) or "/" in self.mac_frames or self.mac_frames in (".", ".."):
            raise ValueError(f"mac_frames must be a file name in the trace's folder, got {self.mac_frames!r}")
        for name in ("host", "device", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be an object, got {getattr(self, name)!r}")
        from phantom.memmap import MemoryMap  # late: memmap imports this module

        MemoryMap.from_json(self.memory_map)  # raises ValueError naming the bad region

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, d: Any, *, path: Any = None, line: int | None = 1) -> "TraceHeader":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA_NAME:
            raise TraceFormatError(path, line, "schema", f"not a {SCHEMA_NAME} header")
        version = d.get("version")
        if not isinstance(version, int):
            raise TraceFormatError(path, line, "version", f"expected an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise TraceFormatError(path, line, "version",
                                   f"schema version {version} is newer than this reader ({SCHEMA_VERSION}); upgrade")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise TraceFormatError(path, line, None, str(e)) from None


def _open_text(path: Path, mode: str) -> TextIO:
    if path.suffix == ".gz":
        # written with a zero timestamp in the gzip header: the same records give the same bytes (so the same
        # SHA-256 in a manifest and the same dataset fingerprint), whenever they are written
        return io.TextIOWrapper(gzip.GzipFile(path, mode + "b", mtime=0), encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _is_npz(path: Path) -> bool:
    return path.suffix == ".npz"


class TraceWriter:
    """Streams records to a JSON-lines trace (``.jsonl`` / ``.jsonl.gz``) as they are produced."""

    def __init__(self, path: str | os.PathLike, header: TraceHeader):
        self.path = Path(path)
        if _is_npz(self.path):
            raise ValueError(f"{self.path}: TraceWriter streams JSON lines; use write_trace() for .npz")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header = header
        self._f = _open_text(self.path, "w")
        self._f.write(json.dumps(header.to_json(), separators=(",", ":")) + "\n")
        self.count = 0

    def write(self, rec: TlpRecord) -> None:
        self._f.write(json.dumps(rec.to_json(), separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TraceReader:
    """Iterates a trace file record by record without loading it whole (JSON lines), or from arrays (npz)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such trace file")
        if _is_npz(self.path):
            self._cols = load_columns(self.path)
            self.header = self._cols.header
            self._f = None
        else:
            self._cols = None
            self._f = _open_text(self.path, "r")
            try:
                first = self._f.readline()
            except (OSError, EOFError, UnicodeDecodeError) as e:
                raise TraceFormatError(self.path, 1, None, f"unreadable: {e}") from None
            if not first.strip():
                raise TraceFormatError(self.path, 1, None, "empty file (no header line)")
            try:
                hdr = json.loads(first)
            except json.JSONDecodeError as e:
                raise TraceFormatError(self.path, 1, None, f"header is not JSON: {e.msg}") from None
            self.header = TraceHeader.from_json(hdr, path=self.path)

    def __iter__(self) -> Iterator[TlpRecord]:
        if self._cols is not None:
            yield from self._cols.records()
            return
        assert self._f is not None
        lineno = 1
        while True:
            try:
                line = self._f.readline()
            except (OSError, EOFError) as e:
                raise TraceFormatError(self.path, lineno + 1, None, f"truncated or corrupt file: {e}") from None
            if not line:
                break
            lineno += 1
            if not line.endswith("\n"):
                raise TraceFormatError(self.path, lineno, None, "truncated line (no newline at end of file)")
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceFormatError(self.path, lineno, None, f"malformed JSON: {e.msg}") from None
            yield TlpRecord.from_json(d, path=self.path, line=lineno)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# columnar form ---------------------------------------------------------------------------------

_INT_FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "int64"), ("t_ps", "int64"), ("dir", "uint8"), ("type", "uint8"), ("length", "uint16"),
    ("address", "uint64"), ("first_be", "uint8"), ("last_be", "uint8"), ("tag", "uint16"),
    ("requester_id", "uint16"), ("completer_id", "uint16"), ("status", "uint8"), ("byte_count", "uint16"),
    ("lower_address", "uint8"), ("tc", "uint8"), ("attr", "uint8"), ("ep", "bool"), ("payload_len", "uint32"),
    ("cls", "uint8"),
)
COLUMN_NAMES = tuple(n for n, _ in _INT_FIELDS)


@dataclass
class TraceColumns:
    """A whole trace as one numpy array per field (plus payload bytes with offsets)."""

    header: TraceHeader
    cols: dict[str, np.ndarray]
    payload_data: np.ndarray          # uint8, all kept payloads concatenated
    payload_off: np.ndarray           # int64, len n+1; record i has payload_data[off[i]:off[i+1]]
    payload_present: np.ndarray       # bool, len n; False: payload not kept (None)

    def __len__(self) -> int:
        return len(self.cols["seq"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def records(self) -> Iterator[TlpRecord]:
        c = {k: v.tolist() for k, v in self.cols.items()}
        off = (self.payload_off - (self.payload_off[0] if len(self.payload_off) else 0)).tolist()
        present = self.payload_present.tolist()
        pdata = self.payload_data.tobytes()
        types = {m.value: m for m in TlpType}
        for i in range(len(self)):
            yield TlpRecord(
                seq=c["seq"][i], t_ps=c["t_ps"][i], dir=Direction(c["dir"][i]), type=types[c["type"][i]],
                length=c["length"][i], address=c["address"][i], first_be=c["first_be"][i], last_be=c["last_be"][i],
                tag=c["tag"][i], requester_id=c["requester_id"][i], completer_id=c["completer_id"][i],
                status=CplStatus(c["status"][i]), byte_count=c["byte_count"][i],
                lower_address=c["lower_address"][i], tc=c["tc"][i], attr=c["attr"][i], ep=bool(c["ep"][i]),
                payload_len=c["payload_len"][i], cls=SemClass(c["cls"][i]),
                payload=pdata[off[i]:off[i + 1]] if present[i] else None,
            )

    @classmethod
    def from_records(cls, header: TraceHeader, records: Iterable[TlpRecord]) -> "TraceColumns":
        lists: dict[str, list] = {n: [] for n in COLUMN_NAMES}
        payloads: list[bytes] = []
        present: list[bool] = []
        for r in records:
            for n in COLUMN_NAMES:
                lists[n].append(int(getattr(r, n)))
            present.append(r.payload is not None)
            payloads.append(r.payload or b"")
        cols = {n: np.asarray(lists[n], dtype=dt) for n, dt in _INT_FIELDS}
        off = np.zeros(len(payloads) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in payloads], out=off[1:])
        data = np.frombuffer(b"".join(payloads), dtype=np.uint8)
        return cls(header, cols, data, off, np.asarray(present, dtype=bool))


def save_columns(path: str | os.PathLike, tc: TraceColumns) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"col_{k}": v for k, v in tc.cols.items()}
    np.savez_compressed(
        path, header=np.asarray(json.dumps(tc.header.to_json())), payload_data=tc.payload_data,
        payload_off=tc.payload_off, payload_present=tc.payload_present, **arrays,
    )


def load_columns(path: str | os.PathLike) -> TraceColumns:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile/numpy raise many kinds
        raise TraceFormatError(path, None, None, f"not a readable .npz trace: {e}") from None
    with z:
        if "header" not in z.files:
            raise TraceFormatError(path, None, "header", "missing")
        try:
            header = TraceHeader.from_json(json.loads(str(z["header"])), path=path, line=None)
        except json.JSONDecodeError as e:
            raise TraceFormatError(path, None, "header", f"not JSON: {e.msg}") from None
        cols: dict[str, np.ndarray] = {}
        n = None
        for name, dt in _INT_FIELDS:
            key = f"col_{name}"
            if key not in z.files:
                raise TraceFormatError(path, None, name, "column missing")
            try:
                arr = z[key]
            except Exception as e:
                raise TraceFormatError(path, None, name, f"column unreadable (truncated file?): {e}") from None
            if n is None:
                n = len(arr)
            elif len(arr) != n:
                raise TraceFormatError(path, None, name, f"column has {len(arr)} rows, expected {n}")
            cols[name] = arr.astype(dt, copy=False)
        try:
            pdata, poff, ppres = z["payload_data"], z["payload_off"], z["payload_present"]
        except Exception as e:
            raise TraceFormatError(path, None, "payload", f"unreadable: {e}") from None
    n = n or 0
    valid_types = np.array(sorted(m.value for m in TlpType))
    bad = ~np.isin(cols["type"], valid_types)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(path, i, "type", f"unknown TLP type code {int(cols['type'][i]):#x} at record {i}")
    bad = cols["cls"] > max(SemClass)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(path, i, "cls", f"unknown class code {int(cols['cls'][i])} at record {i}")
    return TraceColumns(header, cols, pdata, poff, ppres)


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not used in traces")
    return shape, dtype


def iter_column_chunks(path: str | os.PathLike, chunk: int = 1 << 16) -> Iterator[TraceColumns]:
    """Stream an .npz trace as consecutive TraceColumns of at most ``chunk`` records (memory flat in length).

    Each array is read sequentially from its zip member, so nothing is loaded whole.
    """
    import zipfile

    path = Path(path)
    header = load_columns_header(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise TraceFormatError(path, None, None, f"not a readable .npz trace: {e}") from None
    with zf:
        streams = {}
        for name in [f"col_{c}" for c in COLUMN_NAMES] + ["payload_off", "payload_present", "payload_data"]:
            try:
                f = zf.open(name + ".npy")
                shape, dtype = _npy_header(f)
            except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
                raise TraceFormatError(path, None, name, f"unreadable array: {e}") from None
            streams[name] = (f, dtype, shape[0] if shape else 0)
        n = streams["col_seq"][2]

        def take(name: str, k: int) -> np.ndarray:
            f, dtype, _ = streams[name]
            raw = f.read(k * dtype.itemsize)
            if len(raw) != k * dtype.itemsize:
                raise TraceFormatError(path, None, name, "truncated array")
            return np.frombuffer(raw, dtype=dtype)

        last_off = take("payload_off", 1)
        done = 0
        while done < n:
            k = min(chunk, n - done)
            cols = {c: take(f"col_{c}", k) for c in COLUMN_NAMES}
            off = np.concatenate([last_off, take("payload_off", k)])
            last_off = off[-1:]
            present = take("payload_present", k)
            pdata = take("payload_data", int(off[-1] - off[0]))
            bad = ~np.isin(cols["type"], np.array([m.value for m in TlpType]))
            if bad.any():
                i = int(np.argmax(bad))
                raise TraceFormatError(path, done + i, "type", f"unknown TLP type code {int(cols['type'][i]):#x} at record {done + i}")
            yield TraceColumns(header, cols, pdata, off, present)
            done += k


def load_columns_header(path: str | os.PathLike) -> TraceHeader:
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("header.npy") as f:
            _, dtype = _npy_header(f)
            text = np.frombuffer(f.read(), dtype=dtype)[0] if dtype.itemsize else ""
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TraceFormatError(path, None, "header", f"not a readable .npz trace: {e}") from None
    try:
        return TraceHeader.from_json(json.loads(text), path=path, line=None)
    except json.JSONDecodeError as e:
        raise TraceFormatError(path, None, "header", f"not JSON: {e.msg}") from None


# convenience -----------------------------------------------------------------------------------

def read_trace(path: str | os.PathLike) -> tuple[TraceHeader, list[TlpRecord]]:
    """Read a whole trace into memory (small traces, tests)."""
    with TraceReader(path) as r:
        return r.header, list(r)


def write_trace(path: str | os.PathLike, header: TraceHeader, records: Iterable[TlpRecord]) -> int:
    """Write a trace in the encoding its suffix names; returns the record count."""
    path = Path(path)
    if _is_npz(path):
        tc = TraceColumns.from_records(header, records)
        save_columns(path, tc)
        return len(tc)
    with TraceWriter(path, header) as w:
        for r in records:
            w.write(r)
        return w.count


def load_any_columns(path: str | os.PathLike) -> TraceColumns:
    """Columns of any trace file (npz directly; JSON lines converted in memory)."""
    path = Path(path)
    if _is_npz(path):
        return load_columns(path)
    with TraceReader(path) as r:
        return TraceColumns.from_records(r.header, r)


def check_output_folder(opt: str, folder: str | os.PathLike) -> None:
    """ValueError (one line, naming the option) when ``folder`` cannot be a folder to write into: checked before
    the work whose results go there, so that a long run does not end in an error."""
    p = Path(folder)
    if not str(folder).strip():
        raise ValueError(f"{opt}: expected a folder, got ''")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{opt} {folder}: is a file, not a folder")


def check_output_file(opt: str, path: str | os.PathLike) -> None:
    """ValueError (one line, naming the option) when ``path`` is a folder or its folder does not exist."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{opt} {path}: is a folder, not a file")
    if not p.parent.is_dir():
        raise ValueError(f"{opt} {path}: its folder {p.parent} does not exist")


def check_trace_output(path: str | os.PathLike) -> None:
    """A trace file to be written: its suffix names an encoding (ValueError) and it is not a folder
    (IsADirectoryError); both one line, naming the path."""
    p = Path(path)
    if not (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz") or _is_npz(p)):
        raise ValueError(f"{path}: the output must end in .jsonl, .jsonl.gz or .npz")
    if p.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a trace file")


def refuse_same_file(src: str | os.PathLike, dst: str | os.PathLike, what: str = "output") -> None:
    """ValueError (one line) when dst is src, by name or as the same file on disk: writing it would destroy the
    input while it is read."""
    a, b = Path(src), Path(dst)
    same = a.resolve() == b.resolve()
    if not same and a.exists() and b.exists():
        same = os.path.samefile(a, b)
    if same:
        raise ValueError(f"{dst}: the {what} is the input file {src}; write it elsewhere")


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Convert between encodings (by suffix); lossless. Returns the record count. dst is never src, and a
    conversion that fails (a bad record half-way) leaves no partial dst behind."""
    check_trace_output(dst)
    refuse_same_file(src, dst)
    existed = Path(dst).exists()
    try:
        with TraceReader(src) as r:
            return write_trace(dst, r.header, r)
    except BaseException:
        if not existed and Path(dst).is_file():
            Path(dst).unlink()
        raise


# MAC-side frames (sidecar) ---------------------------------------------------------------------

class MacPort(enum.IntEnum):
    RX = 0   # a frame offered to the device's MAC receive side (wire -> host): stimulus
    TX = 1   # a frame the device sent on its MAC transmit side (host -> wire): output


@dataclass(frozen=True, slots=True)
class MacFrame:
    """One frame on the device's MAC side, at the time the testbench offered (RX) or received (TX) it."""

    t_ps: int
    port: MacPort
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {"t_ps": self.t_ps, "port": self.port.name.lower(), "len": len(self.data), "data": self.data.hex()}

    @classmethod
    def from_json(cls, d: Any, *, path: Any = None, line: int | None = None) -> "MacFrame":
        if not isinstance(d, dict):
            raise TraceFormatError(path, line, None, f"expected a JSON object, got {type(d).__name__}")
        t = d.get("t_ps")
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise TraceFormatError(path, line, "t_ps", f"expected a non-negative integer, got {t!r}")
        port = {"rx": MacPort.RX, "tx": MacPort.TX}.get(d.get("port"))
        if port is None:
            raise TraceFormatError(path, line, "port", f"expected 'rx' or 'tx', got {d.get('port')!r}")
        try:
            data = bytes.fromhex(d.get("data", ""))
        except (ValueError, TypeError):
            raise TraceFormatError(path, line, "data", "expected a hex string") from None
        if d.get("len", len(data)) != len(data):
            raise TraceFormatError(path, line, "len", f"{d.get('len')!r} differs from the {len(data)} data bytes")
        return cls(t, port, data)


def mac_sidecar_path(trace_path: str | os.PathLike) -> Path:
    """The sidecar next to a trace: ``x.jsonl.gz`` -> ``x.mac.jsonl.gz`` (``.npz`` traces too)."""
    p = Path(trace_path)
    name = p.name
    for suf in (".jsonl.gz", ".jsonl", ".npz"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return p.with_name(name + ".mac.jsonl.gz")


class MacWriter:
    """Streams MAC-side frames to a sidecar file."""

    def __init__(self, path: str | os.PathLike, trace_name: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = _open_text(self.path, "w")
        self._f.write(json.dumps({"schema": MAC_SCHEMA_NAME, "version": MAC_SCHEMA_VERSION, "trace": trace_name}) + "\n")
        self.count = 0

    def write(self, fr: MacFrame) -> None:
        self._f.write(json.dumps(fr.to_json(), separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_mac_frames(path: str | os.PathLike) -> list[MacFrame]:
    """All frames of a MAC sidecar file (errors name the file, line and field)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such MAC frame file")
    out = []
    with _open_text(path, "r") as f:
        try:
            first = json.loads(f.readline() or "null")
        except json.JSONDecodeError as e:
            raise TraceFormatError(path, 1, None, f"header is not JSON: {e.msg}") from None
        except (OSError, EOFError) as e:
            raise TraceFormatError(path, 1, None, f"unreadable: {e}") from None
        if not isinstance(first, dict) or first.get("schema") != MAC_SCHEMA_NAME:
            raise TraceFormatError(path, 1, "schema", f"not a {MAC_SCHEMA_NAME} file")
        if not isinstance(first.get("version"), int) or first["version"] > MAC_SCHEMA_VERSION:
            raise TraceFormatError(path, 1, "version", f"unsupported version {first.get('version')!r}")
        lineno = 1
        while True:
            try:
                line = f.readline()
            except (OSError, EOFError) as e:
                raise TraceFormatError(path, lineno + 1, None, f"truncated or corrupt file: {e}") from None
            if not line:
                break
            lineno += 1
            if not line.endswith("\n"):
                raise TraceFormatError(path, lineno, None, "truncated line (no newline at end of file)")
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceFormatError(path, lineno, None, f"malformed JSON: {e.msg}") from None
            out.append(MacFrame.from_json(d, path=path, line=lineno))
    return out


def trace_mac_frames(trace_path: str | os.PathLike, header: "TraceHeader") -> list[MacFrame]:
    """The MAC frames a trace header refers to ([] when it names none)."""
    if not header.mac_frames:
        return []
    return read_mac_frames(Path(trace_path).with_name(header.mac_frames))
