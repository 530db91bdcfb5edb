"""Write a columnar ``.npz`` trace as it is produced, with memory flat in its length.

``np.savez`` needs every array whole. Here each column streams into its own temporary ``.npy`` file (header
rewritten with the final length at the end), and ``close`` copies them into the zip one after the other, so at
no point is more than one chunk in memory. The result is what ``phantom.trace.load_columns`` and
``iter_column_chunks`` read (same member names and dtypes as ``save_columns``).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from phantom.trace import COLUMN_NAMES, TlpRecord, TraceColumns, TraceHeader, _INT_FIELDS

_DTYPES = dict(_INT_FIELDS)


class _NpyStream:
    """One 1-D array appended chunk by chunk to a temporary file of raw data (the .npy header is written at the end)."""

    def __init__(self, folder: str, name: str, dtype: str):
        self.name = name
        self.path = os.path.join(folder, name + ".raw")
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.f = open(self.path, "wb")

    def write(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self.f.write(a.tobytes())
        self.n += len(a)

    def finish(self) -> None:
        self.f.close()

    def copy_into(self, z: zipfile.ZipFile) -> None:
        """Write ``<name>.npy`` into the zip: header for the final length, then the data, a block at a time."""
        with z.open(self.name + ".npy", "w", force_zip64=True) as out, open(self.path, "rb") as f:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": (self.n,)})
            for block in iter(lambda: f.read(1 << 20), b""):
                out.write(block)
        os.unlink(self.path)


class NpzStreamWriter:
    """Append records (or column chunks) and close; writes ``path`` (.npz)."""

    def __init__(self, path: str | os.PathLike, header: TraceHeader, chunk: int = 65536):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.tmp = tempfile.mkdtemp(prefix="npzstream-", dir=str(self.path.parent))
        self.cols = {c: _NpyStream(self.tmp, f"col_{c}", _DTYPES[c]) for c in COLUMN_NAMES}
        self.off = _NpyStream(self.tmp, "payload_off", "int64")
        self.present = _NpyStream(self.tmp, "payload_present", "bool")
        self.data = _NpyStream(self.tmp, "payload_data", "uint8")
        self.off.write(np.zeros(1, dtype=np.int64))
        self.total_payload = 0
        self.chunk = chunk
        self._rows: dict[str, list] = {c: [] for c in COLUMN_NAMES}
        self._pl: list[bytes | None] = []
        self.count = 0
        self.closed = False

    def write(self, r: TlpRecord) -> None:
        rows = self._rows
        rows["seq"].append(self.count)
        rows["t_ps"].append(r.t_ps)
        rows["dir"].append(int(r.dir))
        rows["type"].append(int(r.type))
        rows["length"].append(r.length)
        rows["address"].append(r.address)
        rows["first_be"].append(r.first_be)
        rows["last_be"].append(r.last_be)
        rows["tag"].append(r.tag)
        rows["requester_id"].append(r.requester_id)
        rows["completer_id"].append(r.completer_id)
        rows["status"].append(int(r.status))
        rows["byte_count"].append(r.byte_count)
        rows["lower_address"].append(r.lower_address)
        rows["tc"].append(r.tc)
        rows["attr"].append(r.attr)
        rows["ep"].append(bool(r.ep))
        rows["payload_len"].append(r.payload_len)
        rows["cls"].append(int(r.cls))
        self._pl.append(r.payload)
        self.count += 1
        if len(self._pl) >= self.chunk:
            self._flush_rows()

    def write_columns(self, tc: TraceColumns) -> None:
        """A chunk of columns (its seq is renumbered)."""
        self._flush_rows()
        n = len(tc)
        for c in COLUMN_NAMES:
            if c == "seq":
                self.cols[c].write(np.arange(self.count, self.count + n, dtype=np.int64))
            else:
                self.cols[c].write(tc.cols[c])
        lens = np.diff(tc.payload_off)
        self.off.write(self.total_payload + np.cumsum(lens))
        self.total_payload += int(lens.sum())
        self.present.write(tc.payload_present)
        self.data.write(tc.payload_data[: int(lens.sum())] if len(tc.payload_off) and tc.payload_off[0] == 0 else
                        tc.payload_data[int(tc.payload_off[0]):int(tc.payload_off[-1])])
        self.count += n

    def _flush_rows(self) -> None:
        if not self._pl:
            return
        for c in COLUMN_NAMES:
            self.cols[c].write(np.asarray(self._rows[c], dtype=_DTYPES[c]))
            self._rows[c] = []
        lens = np.array([len(p) if p is not None else 0 for p in self._pl], dtype=np.int64)
        self.off.write(self.total_payload + np.cumsum(lens))
        self.total_payload += int(lens.sum())
        self.present.write(np.array([p is not None for p in self._pl], dtype=bool))
        self.data.write(np.frombuffer(b"".join(p for p in self._pl if p), dtype=np.uint8))
        self._pl = []

    def close(self) -> None:
        if self.closed:
            return
        self._flush_rows()
        self.closed = True
        streams = list(self.cols.values()) + [self.off, self.present, self.data]
        for s in streams:
            s.finish()
        tmpzip = self.path.with_name(self.path.name + ".tmp")
        with zipfile.ZipFile(tmpzip, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            import io

            hb = io.BytesIO()
            np.save(hb, np.asarray(json.dumps(self.header.to_json())), allow_pickle=False)
            z.writestr("header.npy", hb.getvalue())
            for s in streams:
                s.copy_into(z)
        os.replace(tmpzip, self.path)
        os.rmdir(self.tmp)

    def __enter__(self) -> "NpzStreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records_npz(path: str | os.PathLike, header: TraceHeader, records: Iterable[TlpRecord]) -> int:
    with NpzStreamWriter(path, header) as w:
        for r in records:
            w.write(r)
        return w.count
