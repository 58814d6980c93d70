"""Fuzzing the two parsers a user feeds directly: the CSV loader and the config parser. Any input either works or
raises UserError (one line); every other exception is a bug."""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gru_xp.config import FIELDS, from_dict, make_config
from gru_xp.data import load_series, prepare
from gru_xp.errors import UserError

N = int(os.environ.get("GRU_XP_FUZZ_EXAMPLES", "60"))  # raise it to hunt for crashes
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
TMP = Path(tempfile.mkdtemp(prefix="gru-xp-fuzz-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def one_line(e: UserError):
    assert str(e) and "\n" not in str(e), repr(str(e))


# ---- CSV -------------------------------------------------------------------------------------------------------
cell = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NA", "nan", "inf", "-inf", "x", "1e999", "2020-01-01", "2020-13-45", "1990", "01/02/2003",
                     "  3 ", '"4"', "'5'", "1,5", "null", "None", "TRUE", "0x1F", "\u00e9", "\x00"]),
    st.text(alphabet=string.printable, max_size=6),
)
header = st.lists(st.sampled_from(["Date", "DATE", "date", "Close", "v", "value", "", "Unnamed: 0", "a", "a", "time",
                                   "year", "\u00fc"]), min_size=0, max_size=4)


@st.composite
def csv_text(draw):
    cols = draw(header)
    n = draw(st.integers(0, 40))
    rows = [[draw(cell) for _ in range(max(1, len(cols)))] for _ in range(n)]
    if draw(st.booleans()) and n:  # some ragged rows
        rows[draw(st.integers(0, n - 1))].append(draw(cell))
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    end = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    lines = ([sep.join(cols)] if cols or draw(st.booleans()) else []) + [sep.join(r) for r in rows]
    return end.join(lines) + draw(st.sampled_from(["", "\n", "\n\n\n"]))


@st.composite
def csv_settings(draw):
    return dict(target=draw(st.sampled_from(["", "", "Close", "v", "a", "nope"])),
                date=draw(st.sampled_from(["", "", "none", "Date", "a"])),
                missing=draw(st.sampled_from(["error", "drop", "ffill", "interpolate"])),
                sort_dates=draw(st.booleans()))


def _load(content: bytes, opts: dict, prep: bool):
    p = TMP / "fuzz.csv"
    p.write_bytes(content)
    cfg = make_config(None, {"data": str(p), "seq_length": 2, "difference": [], "season": 1, **opts})
    try:
        s = load_series(cfg)
        assert s.y.ndim == 1 and len(s.y) > 0 and all(math.isfinite(v) for v in s.y)
        if prep:
            prepare(cfg, s)
    except UserError as e:
        one_line(e)


@FUZZ
@given(text=csv_text(), opts=csv_settings(), prep=st.booleans())
def test_csv_text_never_crashes(text, opts, prep):
    _load(text.encode("utf-8", "surrogatepass"), opts, prep)


@FUZZ
@given(blob=st.binary(max_size=300), opts=csv_settings())
def test_csv_bytes_never_crash(blob, opts):
    _load(blob, opts, False)


@settings(max_examples=max(N // 2, 10), deadline=None)
@given(n=st.integers(1, 60), seq=st.integers(1, 70), horizon=st.integers(1, 5), split=st.floats(0.01, 0.99),
       val=st.floats(0.0, 0.9), lags=st.lists(st.integers(1, 13), max_size=2), log=st.booleans(),
       season=st.integers(0, 15))
def test_windows_never_crash(n, seq, horizon, split, val, lags, log, season):
    p = TMP / "w.csv"
    p.write_text("v\n" + "\n".join(str(1 + (i % 7)) for i in range(n)) + "\n")
    try:
        cfg = make_config(None, {"data": str(p), "seq_length": seq, "horizon": horizon, "split_ratio": split,
                                 "val_ratio": val, "difference": lags, "log": log, "season": season})
        prepare(cfg)
    except UserError as e:
        one_line(e)


# ---- config ----------------------------------------------------------------------------------------------------
@FUZZ
@given(text=st.text(max_size=200))
def test_random_toml_text(text):
    p = TMP / "fuzz.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        make_config(p, {})
    except UserError as e:
        one_line(e)


toml_value = st.one_of(
    st.integers(-2**63, 2**63 - 1).map(str), st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=8).map(json.dumps),
    st.lists(st.integers(-3, 30), max_size=3).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    st.sampled_from(["[1.5]", "[true]", '["a", 1]', "{a = 1}", "[[1]]", "1979-05-27", "0x10", "1_000", "[]"]),
)
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(alphabet=string.ascii_lowercase + "_", min_size=1,
                                                           max_size=12))


@FUZZ
@given(pairs=st.dictionaries(keys, toml_value, max_size=6), table=st.sampled_from(["", "[model]\n", "[a.b]\n"]))
def test_structured_toml(pairs, table):
    text = table + "".join(f"{k} = {v}\n" for k, v in pairs.items())
    p = TMP / "s.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = make_config(p, {})
        for k in pairs:  # every key given survived into the config
            assert k in FIELDS
        assert from_dict(cfg.to_dict()) == cfg  # what is saved loads back
    except UserError as e:
        one_line(e)


py_value = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=10), st.lists(st.one_of(st.integers(-5, 20), st.floats(), st.text(max_size=3)),
                                                    max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))


@FUZZ
@given(d=st.dictionaries(keys, py_value, max_size=6))
def test_random_overrides_and_saved_configs(d):
    for fn in (lambda: make_config(None, d), lambda: from_dict(d)):
        try:
            fn()
        except UserError as e:
            one_line(e)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", "-inf", "1e999"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(UserError, match="--lr must be a finite number|--lr must be positive"):
        make_config(None, {"lr": value})
