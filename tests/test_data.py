"""Loading, validation, splits, scaling (no leakage), windows (alignment), differencing, baselines."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from gru_xp.config import DATA_DIR, make_config
from gru_xp.data import (Pipeline, Scaler, Series, actuals, difference, future_labels, infer_frequency, load_series,
                         naive, prepare, resolve_data_path, seasonal_naive, sine_series, split_points)
from gru_xp.errors import UserError


def cfg(**kw):
    return make_config(None, kw)


def write(tmp_path, text, name="s.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def series_of(y, dates=None, season=1):
    return Series(np.asarray(y, dtype=np.float64), dates, "y", None, "test", "0", season, "steps")


# ---- loading ----------------------------------------------------------------------------------------------------
def test_shipped_yahoo_defaults_to_date_and_close():
    s = load_series(cfg(data="GOOG.csv"))
    raw = pd.read_csv(DATA_DIR / "GOOG.csv")
    assert s.target == "Close" and s.date_col == "Date"
    np.testing.assert_array_equal(s.y, raw["Close"].to_numpy())
    assert s.season == 5 and s.freq == "business-daily"


def test_electric_two_columns_monthly_mdy_dates():
    s = load_series(cfg(data="Electric_Production.csv"))
    assert s.target == "IPG2211A2N" and s.date_col == "DATE"
    assert s.season == 12 and s.freq == "monthly"
    assert s.dates[0] == pd.Timestamp("1985-01-01") and s.dates[1] == pd.Timestamp("1985-02-01")
    assert len(s.y) == 397


def test_bare_name_is_looked_up_in_data_dir_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("IBM.csv") == (DATA_DIR / "IBM.csv").resolve()
    (tmp_path / "IBM.csv").write_text("a,b\n1,2\n")  # a local file of that name wins
    assert resolve_data_path("IBM.csv") == (tmp_path / "IBM.csv").resolve()


def test_integer_years_and_custom_columns(tmp_path):
    p = write(tmp_path, "year,sales,other\n" + "".join(f"{1950 + i},{i * 2.0},{i}\n" for i in range(30)))
    s = load_series(cfg(data=p, target="sales"))
    assert s.year_dates and s.freq == "yearly" and s.season == 1
    assert s.labels()[:2] == [1950, 1951]
    assert future_labels(s, 2) == [1980, 1981]


def test_other_date_format_and_explicit_date_column(tmp_path):
    p = write(tmp_path, "when,v\n" + "".join(f"2020-01-{d:02d}T00:00:00,{d}\n" for d in range(1, 29)))
    s = load_series(cfg(data=p, date="when", target="v"))
    assert s.freq == "daily" and s.season == 7
    np.testing.assert_array_equal(s.y, np.arange(1, 29))


def test_no_date_column_uses_row_order(tmp_path):
    p = write(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(20)))
    s = load_series(cfg(data=p))
    assert s.dates is None and s.season == 1 and s.labels()[:3] == [0, 1, 2]
    s2 = load_series(cfg(data=str(DATA_DIR / "GOOG.csv"), date="none"))
    assert s2.dates is None


@pytest.mark.parametrize("sep, decimal", [(";", ","), (";", "."), ("\t", "."), ("|", "."), (",", ".")])
def test_separator_and_decimal_comma_are_detected(tmp_path, sep, decimal):
    """Spreadsheets in many locales write 'date;value' / '2000-01-01;101,5': read as such, never as the one column
    'date;value' holding the digits after the comma (what pandas' defaults make of it)."""
    y = [100 + 0.25 * i for i in range(30)]
    rows = "".join(f"{2000 + i // 12}-{1 + i % 12:02d}-01{sep}{str(v).replace('.', decimal)}{sep}{i}\n"
                   for i, v in enumerate(y))
    s = load_series(cfg(data=write(tmp_path, f"date{sep}value{sep}n\n" + rows), target="value"))
    assert s.date_col == "date" and s.freq == "monthly"
    np.testing.assert_array_equal(s.y, y)


@pytest.mark.parametrize("fmt, freq", [("%d.%m.%Y", "daily"), ("%d/%m/%Y", "daily"), ("%m/%d/%Y", "daily"),
                                       ("%d-%m-%Y", "daily")])
def test_day_first_dates_are_read_day_first(tmp_path, fmt, freq):
    """31.01.2020 can only be day first: the whole column is read so (it was read month first where it could be,
    which put 13 days of January after 12 December)."""
    days = pd.date_range("2020-01-01", periods=60, freq="D")
    p = write(tmp_path, "date,v\n" + "".join(f"{d.strftime(fmt)},{i}\n" for i, d in enumerate(days)))
    s = load_series(cfg(data=p))
    assert s.freq == freq and s.dates.equals(pd.DatetimeIndex(days).as_unit("ns"))


@pytest.mark.parametrize("fmt, start, freq, want", [
    ("%d.%m.%Y", "2000-01-01", "MS", "monthly"),  # 01.02.2000: day first (dots); monthly only that way
    ("%m/%d/%Y", "1985-01-01", "MS", "monthly"),  # 2/1/1985 (Electric_Production's): month first
    ("%d/%m/%Y", "2000-01-01", "MS", "monthly"),  # 01/02/2000 read day first fits one step; month first does not
])
def test_ambiguous_dates_take_the_reading_that_fits_a_calendar_step(tmp_path, fmt, start, freq, want):
    dates = pd.date_range(start, periods=40, freq=freq)
    p = write(tmp_path, "date,v\n" + "".join(f"{d.strftime(fmt)},{i}\n" for i, d in enumerate(dates)))
    s = load_series(cfg(data=p))
    assert s.freq == want and s.dates.equals(pd.DatetimeIndex(dates).as_unit("ns"))


def test_a_compressed_csv_is_read_as_pandas_reads_it(tmp_path):
    import gzip

    p = tmp_path / "s.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("date,value\n" + "".join(f"2020-01-{d:02d},{d}.5\n" for d in range(1, 29)))
    np.testing.assert_array_equal(load_series(cfg(data=str(p))).y, np.arange(1, 29) + 0.5)


def test_rows_with_more_fields_than_the_header_are_an_error(tmp_path):
    """pandas would make the first column an index and shift every value one column left."""
    with pytest.raises(UserError, match="more fields than the header") as e:
        load_series(cfg(data=write(tmp_path, "date,value\n" + "".join(f"2020-01-{d:02d},{d},0\n" for d in
                                                                          range(1, 29)))))
    assert "\n" not in str(e.value)


def test_sine_is_seeded():
    a, b, c = (load_series(cfg(data="sine", seed=s)).y for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(sine_series(100, 10.0, 0.0, 0)[10:], sine_series(100, 10.0, 0.0, 0)[:-10], atol=1e-12)


@pytest.mark.parametrize("text, fragment", [
    ("Date,Close\n2020-01-01,1\n2020-01-02,\n2020-01-03,3\n", "missing value"),
    ("Date,Close\n2020-01-01,1\n2020-01-01,2\n2020-01-03,3\n", "duplicate date"),
    ("Date,Close\n2020-01-02,1\n2020-01-01,2\n2020-01-03,3\n", "not in increasing order"),
    ("Date,Close\n2020-01-01,1\n2020-01-02,abc\n2020-01-03,3\n", "non-numeric"),
    ("Date,Close\n2020-01-01,1\nnot a date,2\n2020-01-03,3\n", "dates"),
    ("Date,Close\n", "no rows"),
    ("Date,Open,High\n2020-01-01,1,2\n", "several columns"),
])
def test_bad_files_are_one_line_user_errors(tmp_path, text, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        load_series(cfg(data=write(tmp_path, text)))
    assert "\n" not in str(e.value)


def test_missing_file_and_column():
    with pytest.raises(UserError, match="not found"):
        load_series(cfg(data="definitely_missing.csv"))
    with pytest.raises(UserError, match="target column 'Nope'"):
        load_series(cfg(data="GOOG.csv", target="Nope"))
    with pytest.raises(UserError, match="date column 'Nope'"):
        load_series(cfg(data="GOOG.csv", date="Nope"))


def test_a_column_name_with_a_line_break_still_gives_one_line(tmp_path):
    """The message lists the file's columns; one named "0<newline>4" (a quoted CSV header, found by the fuzz test)
    must not break it over two lines: UserError escapes what does not print."""
    p = write(tmp_path, '"0\n4",v\n1,2\n3,4\n')
    with pytest.raises(UserError) as e:
        load_series(cfg(data=p, target="Close"))
    assert "\n" not in str(e.value) and "0\\n4" in str(e.value) and "target column 'Close'" in str(e.value)


def test_explicit_options_for_missing_and_unsorted(tmp_path):
    p = write(tmp_path, "Date,Close\n2020-01-01,1\n2020-01-02,\n2020-01-03,3\n")
    np.testing.assert_array_equal(load_series(cfg(data=p, missing="ffill")).y, [1, 1, 3])
    np.testing.assert_array_equal(load_series(cfg(data=p, missing="interpolate")).y, [1, 2, 3])
    np.testing.assert_array_equal(load_series(cfg(data=p, missing="drop")).y, [1, 3])
    q = write(tmp_path, "Date,Close\n2020-01-02,2\n2020-01-01,1\n2020-01-03,3\n", "u.csv")
    s = load_series(cfg(data=q, sort_dates=True))
    np.testing.assert_array_equal(s.y, [1, 2, 3])


def test_too_short_series_is_an_error(tmp_path):
    p = write(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(12)))
    with pytest.raises(UserError, match="too short"):
        prepare(cfg(data=p, date="none", seq_length=10))


def test_infer_frequency():
    assert infer_frequency(None) == (1, "steps")
    assert infer_frequency(pd.date_range("2000-01-01", periods=30, freq="MS"))[0] == 12
    assert infer_frequency(pd.date_range("2000-01-01", periods=30, freq="QS"))[0] == 4
    assert infer_frequency(pd.date_range("2000-01-03", periods=30, freq="B"))[0] == 5
    assert infer_frequency(pd.date_range("2000-01-01", periods=30, freq="D"))[0] == 7


# ---- windows, splits, scaling -----------------------------------------------------------------------------------
def test_windows_align_inputs_and_targets():
    y = np.arange(100, dtype=float)
    pipe = Pipeline(seq_length=5, horizon=3, lags=[], scaler=Scaler("none").fit(y))
    a = np.array([4, 10, 50])
    X, Y = pipe.inputs(y, a), pipe.targets(y, a)
    assert X.shape == (3, 5, 1) and Y.shape == (3, 3)
    np.testing.assert_array_equal(X[1, :, 0], [6, 7, 8, 9, 10])  # ends at the anchor
    np.testing.assert_array_equal(Y[1], [11, 12, 13])  # starts right after it
    np.testing.assert_array_equal(actuals(y, a, 3), Y)


def test_prepare_split_boundaries_and_shapes():
    n, L, K = 200, 10, 2
    c = cfg(data="sine", sine_length=n, seq_length=L, horizon=K, split_ratio=0.7, val_ratio=0.2, scaler="none")
    p = prepare(c)
    v, s = split_points(n, 0.7, 0.2)
    assert (p.val_start, p.test_start) == (v, s) == (112, 140)
    assert p.train.X.shape == (len(p.train.anchors), L, 1) and p.train.Y.shape == (len(p.train.anchors), K)
    assert p.train.anchors[0] == L - 1 and p.train.anchors[-1] + K == v - 1  # every train target < v
    assert p.val.anchors[0] + 1 == v and p.val.anchors[-1] + K == s - 1
    assert p.test.anchors[0] + 1 == s and p.test.anchors[-1] + K == n - 1
    y = p.series.y
    np.testing.assert_allclose(p.test.Y[0], y[s:s + K])
    np.testing.assert_allclose(p.test.X[0, :, 0], y[s - L:s])


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaler_never_sees_validation_or_test_data(kind):
    """Changing every value from the validation start on must not change the scaler or any training window.
    (A scaler fitted on the whole series would fail this.)"""
    n = 300
    y = np.sin(np.arange(n) / 5.0) * 10 + 50
    c = cfg(data="sine", seq_length=8, scaler=kind)
    a = prepare(c, series_of(y))
    y2 = y.copy()
    y2[a.val_start:] = y2[a.val_start:] * 100 + 1e4
    b = prepare(c, series_of(y2))
    assert a.pipeline.scaler.to_dict() == b.pipeline.scaler.to_dict()
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.train.Y, b.train.Y)
    tr = y[:a.val_start]
    if kind == "standard":
        assert a.pipeline.scaler.shift == pytest.approx(tr.mean()) and a.pipeline.scaler.scale == pytest.approx(tr.std())
    else:
        assert a.pipeline.scaler.shift == pytest.approx(tr.min())


@pytest.mark.parametrize("lags", [[1], [12], [1, 12], [2, 3]])
def test_difference_inverts_exactly(lags):
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=120)) + 10 * np.sin(np.arange(120) * 2 * np.pi / 12)
    pipe = Pipeline(seq_length=6, horizon=4, lags=lags, scaler=Scaler("standard").fit(difference(y, lags)[-1][:80]))
    a = np.arange(pipe.min_anchor(), 110)
    back = pipe.invert(y, a, pipe.targets(y, a))  # the true transformed targets -> the true levels
    np.testing.assert_allclose(back, actuals(y, a, 4), atol=1e-9)


def test_difference_values():
    y = np.array([1.0, 4.0, 9.0, 16.0, 25.0])
    w = difference(y, [1, 1])
    np.testing.assert_array_equal(w[1][1:], [3, 5, 7, 9])
    np.testing.assert_array_equal(w[2][2:], [2, 2, 2])


def test_baselines_by_hand():
    y = np.arange(30, dtype=float) ** 2
    a = np.array([12, 20])
    np.testing.assert_array_equal(naive(y, a, 2), [[144, 144], [400, 400]])
    # season 4: target t+1 -> y[t+1-4]; t+2 -> y[t+2-4]
    np.testing.assert_array_equal(seasonal_naive(y, a, 2, 4), [[81, 100], [289, 324]])
    # horizon beyond the season: t+5 -> y[t+5-8]
    np.testing.assert_array_equal(seasonal_naive(y, np.array([12]), 5, 4)[0, 4], y[12 + 5 - 8])
    np.testing.assert_array_equal(seasonal_naive(y, a, 2, 1), naive(y, a, 2))


def test_future_labels_continue_the_calendar():
    s = load_series(cfg(data="Electric_Production.csv"))
    assert future_labels(s, 2) == ["2018-02-01", "2018-03-01"]
    g = load_series(cfg(data="GOOG.csv"))
    last = pd.Timestamp(g.labels()[-1])
    nxt = pd.Timestamp(future_labels(g, 1)[0])
    assert nxt > last and nxt.weekday() < 5


def test_bare_name_lookup_does_not_depend_on_cwd(tmp_path):
    old = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert len(load_series(cfg(data="Electric_Production.csv")).y) == 397
    finally:
        os.chdir(old)
