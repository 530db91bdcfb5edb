"""Trace schema and I/O: lossless round trips, streaming, and clear errors on bad input."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from phantom.trace import (SCHEMA_VERSION, CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceFormatError,
                           TraceHeader, TraceReader, convert, iter_column_chunks, load_columns, read_trace, write_trace)


def sample(n=50):
    out = []
    for i in range(n):
        t = [TlpType.MRd32, TlpType.CplD, TlpType.MWr64, TlpType.CfgRd0][i % 4]
        out.append(TlpRecord(seq=i, t_ps=1000 * i, dir=Direction(i % 2), type=t, length=1 + i % 7,
                             address=(1 << 33) + 4 * i if t == TlpType.MWr64 else 4 * i, first_be=0xF,
                             last_be=0xF if i % 7 else 0, tag=i % 32, requester_id=0x100, completer_id=0x200,
                             status=CplStatus.UR if i == 5 else CplStatus.SC, byte_count=i % 100,
                             lower_address=i % 128, tc=i % 3, attr=i % 4, ep=i == 9, payload_len=4 * (1 + i % 7),
                             cls=SemClass(i % 11), payload=bytes(range(i % 9)) if i % 3 else None))
    return out


HDR = TraceHeader(mps=512, mrrs=4096, rcb=128, scenario="unit", extra={"seed": 3})


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".npz"])
def test_round_trip(tmp_path, suffix):
    recs = sample()
    p = tmp_path / f"t{suffix}"
    assert write_trace(p, HDR, recs) == len(recs)
    h, back = read_trace(p)
    assert h == HDR and back == recs


def test_convert_lossless_both_ways(tmp_path):
    recs = sample(200)
    write_trace(tmp_path / "a.jsonl.gz", HDR, recs)
    convert(tmp_path / "a.jsonl.gz", tmp_path / "b.npz")
    convert(tmp_path / "b.npz", tmp_path / "c.jsonl")
    assert read_trace(tmp_path / "c.jsonl") == (HDR, recs)
    cols = load_columns(tmp_path / "b.npz")
    assert len(cols) == 200 and cols["type"].dtype == np.uint8


def test_streaming_reads_lazily(tmp_path):
    p = tmp_path / "big.jsonl.gz"
    write_trace(p, HDR, sample(1000))
    with TraceReader(p) as r:
        it = iter(r)
        first = next(it)
        assert first.seq == 0
        assert r._f.tell() < p.stat().st_size * 20  # not everything decoded at once


def _lines(p, lines):
    p.write_text("".join(lines))
    return p


def test_errors_name_file_line_field(tmp_path):
    good = json.dumps(HDR.to_json(), separators=(",", ":")) + "\n"
    rec = json.dumps(sample(1)[0].to_json(), separators=(",", ":")) + "\n"
    cases = {
        "malformed": (good + rec + "{not json\n", ":3", "malformed JSON"),
        "unknown_type": (good + rec.replace('"MRd32"', '"MRd99"'), ":2: field 'type'", "unknown value"),
        "negative": (good + rec.replace('"length":1', '"length":-1'), ":2: field 'length'", "non-negative"),
        "range": (good + rec.replace('"tag":0', '"tag":5000'), ":2: field 'tag'", "out of range"),
        "missing": (good + rec.replace('"seq":0,', ''), ":2: field 'seq'", "missing"),
        "newer": (good.replace(f'"version":{SCHEMA_VERSION}', '"version":99') + rec, ":1: field 'version'", "newer"),
        "truncated_line": (good + rec[:-20], ":2", "truncated"),
        "empty": ("", ":1", "empty"),
    }
    for k, (name, (text, where, what)) in enumerate(cases.items()):
        # neutral file names: the expected words must come from the message, not from the path it starts with
        p = _lines(tmp_path / f"c{k}.jsonl", [text])
        with pytest.raises(TraceFormatError) as e:
            read_trace(p)
        msg = str(e.value)
        assert msg.startswith(str(p)), (name, msg)
        rest = msg[len(str(p)):]
        assert rest.startswith(where) and what in rest, (name, msg)


def test_truncated_gzip(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    write_trace(p, HDR, sample(2000))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFormatError) as e:
        read_trace(p)
    assert str(p) in str(e.value)


def test_bad_npz(tmp_path):
    p = tmp_path / "t.npz"
    write_trace(p, HDR, sample(10))
    z = dict(np.load(p))
    z["col_type"] = z["col_type"].copy()
    z["col_type"][3] = 0x7F
    np.savez(p, **z)
    with pytest.raises(TraceFormatError, match="record 3"):
        read_trace(p)
    p.write_bytes(b"garbage")
    with pytest.raises(TraceFormatError, match="not a readable"):
        read_trace(p)


def test_header_validates():
    with pytest.raises(ValueError, match="mps"):
        TraceHeader(mps=100)
    with pytest.raises(ValueError, match="rcb"):
        TraceHeader(rcb=32)


@pytest.mark.parametrize("chunk", [1, 3, 64, 10_000])
def test_npz_chunks_stream_every_record(tmp_path, chunk):
    recs = sample(200)
    p = tmp_path / "t.npz"
    write_trace(p, HDR, recs)
    got = [r for c in iter_column_chunks(p, chunk) for r in c.records()]
    assert got == recs
    assert all(len(c) <= chunk for c in iter_column_chunks(p, chunk))


def test_npz_chunks_truncated_member(tmp_path):
    p = tmp_path / "t.npz"
    write_trace(p, HDR, sample(50))
    z = dict(np.load(p))
    z["col_tag"] = z["col_tag"][:10]
    np.savez(p, **z)
    with pytest.raises(TraceFormatError, match="col_tag"):
        list(iter_column_chunks(p, 16))


def test_version_1_traces_still_read(tmp_path):
    """A trace written by schema version 1 (no v2 header fields) reads with the v2 defaults."""
    v1 = {"schema": "phantom.trace", "version": 1, "mps": 256, "mrrs": 512, "rcb": 64, "tag_width": 5,
          "link_speed": 3, "link_width": 8, "data_width": 256, "scenario": "mixed", "simulator": "verilator",
          "payload_bytes_kept": 64, "extra": {}}
    rec = sample(1)[0].to_json()
    p = tmp_path / "old.jsonl"
    p.write_text(json.dumps(v1) + "\n" + json.dumps(rec) + "\n")
    h, recs = read_trace(p)
    assert h.memory_map == [] and h.cpl_timeout_ns == 0.0 and not h.relaxed_ordering and len(recs) == 1
    assert h.to_json()["version"] == SCHEMA_VERSION == 3 and h.mac_frames == ""


def test_v2_header_fields_validate():
    with pytest.raises(ValueError, match=r"memory_map\[0\]\.kind: unknown region kind 'tx_rings'"):
        TraceHeader(memory_map=[{"base": 0, "size": 16, "kind": "tx_rings"}])
    with pytest.raises(ValueError, match="overlap"):
        TraceHeader(memory_map=[{"base": 0, "size": 32, "kind": "tx_ring"}, {"base": 16, "size": 16, "kind": "rx_ring"}])
    with pytest.raises(ValueError, match="cpl_timeout_ns"):
        TraceHeader(cpl_timeout_ns=-1)
    with pytest.raises(ValueError, match="relaxed_ordering must be true or false"):
        TraceHeader(relaxed_ordering=1)


def test_mac_sidecar_round_trip_and_errors(tmp_path):
    from phantom.trace import MacFrame, MacPort, MacWriter, mac_sidecar_path, read_mac_frames, trace_mac_frames

    assert mac_sidecar_path(tmp_path / "run.jsonl.gz").name == "run.mac.jsonl.gz"
    assert mac_sidecar_path(tmp_path / "run.npz").name == "run.mac.jsonl.gz"
    frames = [MacFrame(10, MacPort.RX, b"\x01\x02"), MacFrame(2000, MacPort.TX, bytes(range(60)))]
    side = mac_sidecar_path(tmp_path / "run.jsonl.gz")
    w = MacWriter(side, "run.jsonl.gz")
    for f in frames:
        w.write(f)
    w.close()
    assert read_mac_frames(side) == frames
    h = TraceHeader(mac_frames=side.name)
    assert trace_mac_frames(tmp_path / "run.jsonl.gz", h) == frames
    assert trace_mac_frames(tmp_path / "run.jsonl.gz", TraceHeader()) == []
    good = side.read_bytes()
    import gzip as gz

    text = gz.decompress(good).decode()
    bad = tmp_path / "c1.mac.jsonl.gz"
    bad.write_bytes(gz.compress(text.replace('"port":"tx"', '"port":"up"').encode()))
    with pytest.raises(TraceFormatError) as e:
        read_mac_frames(bad)
    rest = str(e.value)[len(str(bad)):]
    assert rest.startswith(":3: field 'port'") and "expected 'rx' or 'tx'" in rest
    with pytest.raises(ValueError, match="mac_frames must be a file name"):
        TraceHeader(mac_frames="../elsewhere.mac.jsonl.gz")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".npz", ".mac.jsonl.gz"])
def test_the_same_records_give_the_same_bytes_whenever_written(tmp_path, monkeypatch, suffix):
    """A capture's SHA-256 (make traces' manifest, the dataset fingerprint) depends on its records only: the
    gzip header carries no write time (nor does the npz archive)."""
    import time as _time

    from phantom.trace import MacFrame, MacPort, MacWriter

    def write(d, clock):
        monkeypatch.setattr(_time, "time", lambda: clock)
        d.mkdir()
        p = d / f"run{suffix}"
        if suffix == ".mac.jsonl.gz":
            w = MacWriter(p, "run.jsonl.gz")
            w.write(MacFrame(10, MacPort.RX, b"\x01\x02"))
            w.close()
        else:
            write_trace(p, HDR, sample())
        return p.read_bytes()

    first = write(tmp_path / "a", 1_000_000_000.0)
    assert write(tmp_path / "b", 1_700_000_000.0) == first


# the command line's bad paths (python -m phantom, in-process) ------------------------------------------------------
def _phantom_error(argv, capsys) -> str:
    from phantom.__main__ import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


FIXTURE = Path(__file__).resolve().parent.parent / "data" / "phantom" / "fixtures" / "mixed__base__s1.jsonl.gz"


def test_convert_never_overwrites_its_input_and_leaves_no_partial_output(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    convert(FIXTURE, src)
    before = src.read_bytes()
    for same in (src, tmp_path / "." / "a.jsonl"):
        assert "the output is the input file" in _phantom_error(["convert", src, same], capsys)
    link = tmp_path / "b.jsonl"
    link.symlink_to(src)
    assert "the output is the input file" in _phantom_error(["convert", src, link], capsys)
    assert src.read_bytes() == before
    lines = before.decode().splitlines()
    bad = json.loads(lines[5])
    bad["length"] = "x"
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[:5] + [json.dumps(bad)] + lines[6:]) + "\n")
    for out in ("out.jsonl.gz", "out.npz"):
        assert "field 'length'" in _phantom_error(["convert", tmp_path / "bad.jsonl", tmp_path / out], capsys)
        assert not (tmp_path / out).exists()


def test_check_and_stats_refuse_unusable_options(tmp_path, capsys):
    for v in ("inf", "1e300", "nan", "0"):
        assert "--timeout-ms must be positive and at most 1e9" in _phantom_error(["check", FIXTURE, "--timeout-ms", v],
                                                                                 capsys)
    f = tmp_path / "afile"
    f.write_text("x")
    from phantom.__main__ import main

    assert main(["stats", str(FIXTURE), "--plot", str(f)]) == 2
    got = capsys.readouterr()
    assert got.err.strip() == f"error: --plot {f}: is a file, not a folder" and got.out == ""   # before the report


def test_duplicate_waivers_and_unknown_output_suffixes_refused(tmp_path, capsys):
    assert "--waive tag_dup: given twice" in _phantom_error(["check", FIXTURE, "--waive", "tag_dup=a", "--waive",
                                                             "tag_dup=b"], capsys)
    assert "out.csv: the output must end in .jsonl, .jsonl.gz or .npz" in _phantom_error(
        ["convert", FIXTURE, tmp_path / "out.csv"], capsys)
    assert not (tmp_path / "out.csv").exists()
