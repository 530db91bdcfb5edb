"""Encoding: the round trip on real captures is exact for every discrete field, within the stated tolerance for
times (tokens) and to float precision through the image; bad records give a clear error."""

from pathlib import Path

import numpy as np
import pytest

from phantom.gen.encoding import (DT_BINS, DT_REL_TOL, F, FI, FIELD_NAMES, Encoding, EncodingError, dt_to_token,
                                  ids_of, token_to_dt)
from phantom.trace import COLUMN_NAMES, TlpType, TraceColumns, load_any_columns

FIX = Path(__file__).resolve().parent.parent / "data" / "phantom" / "fixtures"
NAMES = ["mixed__base__s1", "rx_heavy__alt__s2", "numa__base__s3", "mixed__unseen__s3"]


@pytest.fixture(scope="module", params=NAMES)
def real(request):
    return load_any_columns(FIX / f"{request.param}.jsonl.gz")


def test_round_trip_exact_on_real_captures(real):
    enc = Encoding(ids_of([real]))
    tok, dt = enc.encode(real)
    assert tok.shape == (len(real), F)
    back = enc.decode(real.header, tok, dt_ps=dt)
    for c in COLUMN_NAMES:
        assert np.array_equal(back[c].astype(np.int64), real[c].astype(np.int64)), c
    # doorbells carry the producer index again
    db = np.flatnonzero(real["cls"] == 4)
    assert len(db)
    for i in db:
        a = real.payload_data[real.payload_off[i] - real.payload_off[0]:real.payload_off[i + 1] - real.payload_off[0]]
        b = back.payload_data[back.payload_off[i]:back.payload_off[i + 1]]
        assert a.tobytes() == b.tobytes()


def test_times_through_tokens_within_tolerance(real):
    enc = Encoding(ids_of([real]))
    tok, dt = enc.encode(real)
    back = enc.decode(real.header, tok)
    got = np.diff(np.concatenate([[0], back["t_ps"].astype(np.int64)]))
    big = dt >= 10
    assert np.all(np.abs(got[big] - dt[big]) <= DT_REL_TOL * dt[big] + 1)
    assert np.all(np.abs(got[~big] - dt[~big]) <= 10)


def test_image_round_trip(real):
    enc = Encoding(ids_of([real]))
    tok, dt = enc.encode(real)
    img = enc.to_image(tok, dt)
    assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    tok2, dt2 = enc.from_image(img)
    assert np.array_equal(tok2, tok)
    assert np.all(np.abs(dt2 - dt) <= 1e-5 * np.maximum(dt, 1) + 1e-3)


def test_dt_bins_monotone_and_tolerance():
    d = np.geomspace(10, 1e8, 5000)
    t = dt_to_token(d)
    assert np.all(np.diff(t) >= 0) and t.min() == 1 and t.max() == DT_BINS - 1
    assert np.all(np.abs(token_to_dt(t) - d) <= DT_REL_TOL * d * 1.0001 + 1)
    assert dt_to_token(np.array([0]))[0] == 0 and token_to_dt(np.array([0]))[0] == 0
    assert DT_REL_TOL < 0.033


def test_unknown_kind_and_id_are_refused(real):
    enc = Encoding(ids_of([real]))
    tc = TraceColumns(real.header, {k: v.copy() for k, v in real.cols.items()}, real.payload_data, real.payload_off,
                      real.payload_present)
    tc.cols["type"][5] = int(TlpType.FetchAdd32)
    with pytest.raises(EncodingError, match="record 5: TLP type FetchAdd32"):
        enc.encode(tc)
    with pytest.raises(EncodingError, match="ID table"):
        Encoding((0x0000,)).encode(real)


def test_token_range_is_checked(real):
    enc = Encoding(ids_of([real]))
    tok, dt = enc.encode(real)
    tok[3, FI["length"]] = 2000
    with pytest.raises(ValueError, match="field 'length'"):
        enc.decode(real.header, tok)


def test_encoding_json_round_trip():
    e = Encoding((0, 0x100, 0x200))
    assert Encoding.from_json(e.to_json()) == e and len(FIELD_NAMES) == F
    with pytest.raises(ValueError, match="duplicates"):
        Encoding((0, 0))
    with pytest.raises(ValueError, match="differ"):
        Encoding.from_json({"ids": [0], "fields": ["kind"]})
