"""Host edge: load and validate one series (a CSV's target column, its dates, its covariates), or the seeded sine.

    load_series(cfg) -> Series                       the series of cfg.data, every problem a one-line UserError
    series_from_frame(df, cfg, date_col, target, ...) one series from a table's rows (a CSV, or one series of a
                                                      long CSV panel: see panel.py)
data.py re-exports these names (split out of data.py when covariates pushed it past 600 lines; issue 18).
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import covariates as cov_
from .config import DATA_DIR, RunConfig
from .errors import UserError

DATE_NAMES = ("date", "datetime", "timestamp", "time", "year", "month", "period", "ds")


# ==== loading ================================================================================================
@dataclass
class Series:
    y: np.ndarray  # (n,) float64, original scale
    dates: pd.DatetimeIndex | None  # (n,) or None when row order is time order
    target: str
    date_col: str | None
    source: str  # resolved path, or "sine"
    sha256: str
    season: int  # inferred seasonal-naive lag (1 when there is no calendar)
    freq: str  # "monthly", "business-daily", ... or "steps"
    year_dates: bool = False  # dates were integer years
    covariates: np.ndarray | None = None  # (n + f, C) raw covariate values (past, then future), rows past n: future
    cov_names: tuple = ()  # their columns (issue 18)

    def labels(self) -> list:
        if self.dates is None:
            return list(range(len(self.y)))
        if self.year_dates:
            return [int(d.year) for d in self.dates]
        return [d.strftime("%Y-%m-%d") for d in self.dates]


def resolve_data_path(data: str) -> Path:
    """A path as given; a bare file name that is not in the working directory is looked up in data/."""
    try:
        p = Path(data).expanduser()
        if p.is_file():
            return p.resolve()
        if p.parent == Path(".") and (DATA_DIR / p.name).is_file():
            return (DATA_DIR / p.name).resolve()
        exists = p.exists()
    except (OSError, ValueError, RuntimeError) as e:  # NUL byte, name too long, unknown ~user
        raise UserError(f"--data {data!r} is not a usable path ({type(e).__name__}); pass an existing CSV path or "
                        f"'sine'") from None
    shipped = ", ".join(sorted(q.name for q in DATA_DIR.glob("*.csv"))) if DATA_DIR.is_dir() else "none"
    if exists:
        raise UserError(f"--data {data!r} is not a file; pass a CSV file (shipped in data/: {shipped}) or 'sine'")
    raise UserError(f"data file {data!r} not found; pass an existing CSV path, a file in data/ ({shipped}), or 'sine'")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sine_series(length: int, period: float, noise: float, seed: int) -> np.ndarray:
    """sin(2*pi*t/period + phase) (+ Gaussian noise), phase drawn from the seed."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    t = np.arange(length, dtype=np.float64)
    y = np.sin(2.0 * math.pi * t / period + phase)
    if noise > 0:
        y = y + noise * rng.standard_normal(length)
    return y


def _parse_dates(col: pd.Series, name: str) -> tuple[pd.DatetimeIndex, bool]:
    """Dates in any pandas-readable format; integer years (1990) become Jan 1 of that year."""
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0]) + 2
        raise UserError(f"date column {name!r} is empty on line {row}; fill it, or pass --date none to use row order")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' "could not infer format" chatter
            return _to_dates(col)
    except (ValueError, TypeError, OverflowError, AttributeError) as e:  # OutOfBoundsDatetime is a ValueError
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"cannot read column {name!r} as dates ({msg}); pass --date COL for the right column, or "
                        f"--date none to use row order") from None


def _to_dates(col: pd.Series) -> tuple[pd.DatetimeIndex, bool]:
    s = col
    if pd.api.types.is_float_dtype(s) and np.isfinite(s).all() and (s == s.round()).all():
        s = s.astype(np.int64)
    txt = s.astype(str).str.strip()
    if txt.str.fullmatch(r"\d{1,4}").all():
        years = txt.astype(int)
        if years.between(1678, 2261).all():  # the range of nanosecond timestamps
            return pd.DatetimeIndex(pd.to_datetime(years.astype(str).str.zfill(4), format="%Y")).as_unit("ns"), True
    dayfirst = _day_first(txt)
    if dayfirst is not None:
        return _datetimes(txt, dayfirst), False
    return _ambiguous_dates(txt), False


def _ambiguous_dates(txt: pd.Series) -> pd.DatetimeIndex:
    """Dates like 01.02.2020 whose day and month are both <= 12: of the two readings, the one in increasing order;
    if both are, the one whose gaps fit one calendar step best (01.01.2000, 01.02.2000, ... is monthly read day
    first, but a run of days and a jump read month first); a tie goes to day first for dots (01.02.2020, as in most
    of Europe) and to month first otherwise (pandas' default)."""
    readings = {}
    for dayfirst in (False, True):
        try:
            readings[dayfirst] = _datetimes(txt, dayfirst)
        except (ValueError, TypeError, OverflowError):
            pass
    if len(readings) < 2:
        return next(iter(readings.values())) if readings else _datetimes(txt, False)  # the error, if any

    dots = bool(txt.str.contains(".", regex=False).all())

    def rank(dayfirst):
        d = readings[dayfirst]
        gaps = np.diff(d.asi8) / 86_400e9  # days
        steps = ((1, 1), (1, 3), (7, 7), (28, 31), (89, 92), (365, 366))  # daily, business, weekly, ... yearly
        fit = max((float(np.mean((gaps >= lo) & (gaps <= hi))) for lo, hi in steps), default=1.0) if gaps.size else 1.0
        return (not d.is_monotonic_increasing, -fit, dayfirst != dots)

    return readings[min(readings, key=rank)]


def _day_first(txt: pd.Series) -> bool | None:
    """For dates written A.B.YYYY, A/B/YYYY or A-B-YYYY: True when some A > 12 (day first, as in 31.01.2020),
    False when some B > 12 (month first, 01/31/2020) or the dates are written otherwise (ISO), None when every A
    and B is <= 12 (either reading is a valid date)."""
    m = txt.str.extract(r"^(\d{1,2})[./-](\d{1,2})[./-]\d{2,4}\b")
    if m.isna().any().any():
        return False
    a, b = m[0].astype(int), m[1].astype(int)
    if (b > 12).any():
        return False
    return True if (a > 12).any() else None


def _datetimes(txt: pd.Series, dayfirst: bool) -> pd.DatetimeIndex:
    try:
        d = pd.to_datetime(txt, dayfirst=dayfirst)
    except (ValueError, TypeError, OverflowError):
        d = pd.to_datetime(txt, format="mixed", dayfirst=dayfirst)
    d = pd.DatetimeIndex(d)
    if d.tz is not None:
        d = d.tz_convert(None)
    return d.as_unit("ns")


def infer_frequency(dates: pd.DatetimeIndex | None, year_dates: bool = False) -> tuple[int, str]:
    """(seasonal lag, name): 12 monthly, 4 quarterly, 52 weekly, 7 daily calendar, 5 business days, 1 otherwise."""
    if dates is None or len(dates) < 3:
        return 1, "steps"
    if year_dates:
        return 1, "yearly"
    dates = pd.DatetimeIndex(dates).as_unit("ns")
    days = np.diff(dates.asi8) / 86_400e9
    med = float(np.median(days))
    if 27.5 <= med <= 31.5:
        return 12, "monthly"
    if 88 <= med <= 93:
        return 4, "quarterly"
    if 6.5 <= med <= 7.5:
        return 52, "weekly"
    if 364 <= med <= 367:
        return 1, "yearly"
    if 0.5 <= med <= 1.5:
        weekend = (dates.day_of_week >= 5).any()
        return (7, "daily") if weekend else (5, "business-daily")
    return 1, "irregular"


def load_series(cfg: RunConfig) -> Series:
    """The target series of cfg.data, validated: numeric, no gaps (unless cfg.missing says how), dates unique and
    increasing (unless cfg.sort_dates). Every problem is a one-line UserError."""
    if str(cfg.data).strip().lower() == "sine":
        if cfg.covariates or cfg.future_covariates:
            raise UserError("covariates are columns of a CSV file: pass --data FILE.csv (not 'sine')")
        y = sine_series(cfg.sine_length, cfg.sine_period, cfg.sine_noise, cfg.seed)
        tag = f"sine(length={cfg.sine_length},period={cfg.sine_period},noise={cfg.sine_noise},seed={cfg.seed})"
        return Series(y, None, "sine", None, "sine", hashlib.sha256(tag.encode()).hexdigest(), 1, "steps")
    path = resolve_data_path(cfg.data)
    if path.suffix.lower() == ".tsf" or cfg.id_col:
        raise UserError(f"{path.name} is a panel (many series): train it with 'gru-xp train' or "
                        f"gru_xp.panelrun.run_panel(cfg)")
    df = read_table(path)
    date_col, target = _columns(df, cfg, path)
    return series_from_frame(df, cfg, date_col, target, str(path), sha256_file(path))


def series_from_frame(df: pd.DataFrame, cfg: RunConfig, date_col: str | None, target: str, source: str, sha: str,
                      lines=None) -> Series:
    """One series from the rows of a table (a CSV, or one series' rows of a long CSV): the target validated, dates
    ordered, missing values handled by cfg.missing, covariates read (lines: the file line of each row)."""
    y = numeric_column(df[target], target, "target")
    dates, year_dates = (None, False) if date_col is None else _parse_dates(df[date_col], date_col)
    lines = np.arange(2, len(df) + 2) if lines is None else np.asarray(lines)
    cov, names = None, ()
    if cfg.covariates or cfg.future_covariates:
        past, fut = cov_.resolve_columns(df, cfg.covariates, cfg.future_covariates,
                                         {c: f for c, f in ((target, "--target"), (date_col, "--date"),
                                                            (cfg.id_col or None, "--id-col")) if c})
        names, cov = tuple(past + fut), cov_.numeric(df, past + fut, lines)
    if dates is not None:
        dates, order = _ordered_dates(dates, date_col, cfg.sort_dates)
        y, lines = y[order], lines[order]
        cov = None if cov is None else cov[order]
    if cov is not None:  # trailing rows without a target and with future covariates: the future, kept beside y
        n_obs = cov_.split_future(y, cov, len(cfg.covariates), list(names), lines, target)
        y, dates = y[:n_obs], None if dates is None else dates[:n_obs]
        keep = np.ones(n_obs, dtype=bool) if cfg.missing != "drop" else ~np.isnan(y)
        cov = np.concatenate([cov[:n_obs][keep], cov[n_obs:]])
    y, dates = fill_missing(y, dates, target, cfg.missing)
    season, freq = infer_frequency(dates, year_dates)
    return Series(y, dates, target, date_col, source, sha, season, freq, year_dates, cov, names)


SEPARATORS = (",", ";", "\t", "|")


def csv_dialect(path: Path) -> dict:
    """read_csv keywords for the file's field separator and decimal mark, from its first lines: the separator the
    header has most of (',' when it has none), and decimal=',' when a separator other than ',' is used and a data
    field looks like 12,5 (the files spreadsheets write in many locales: 'date;value' / '2000-01-01;101,5')."""
    if Path(path).suffix.lower() in (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"):
        return {}  # compressed: pandas reads it, comma-separated
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = [ln for _, ln in zip(range(50), f) if ln.strip()]
    except OSError:
        return {}  # read_csv reports it
    if not head:
        return {}
    counts = {d: head[0].count(d) for d in SEPARATORS}
    sep = max(SEPARATORS, key=lambda d: counts[d]) if max(counts.values()) else ","
    kw = {"sep": sep}
    if sep != "," and any(re.fullmatch(r"\s*-?\d+,\d+\s*", f) for ln in head[1:] for f in ln.split(sep)):
        kw["decimal"] = ","
    return kw


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as a DataFrame with stripped column names; blank lines inside the data are rows of missing values
    (skipping them would silently shift a series whose row order is its time order), trailing ones are dropped.
    The separator (, ; tab |) and a decimal comma are detected (csv_dialect). Rows with more fields than the header
    are an error (pandas would silently make the first column an index and shift every value)."""
    kw = csv_dialect(path)
    try:
        df = pd.read_csv(path, skip_blank_lines=False, **kw)
        if df.shape[1] == 0 or all(str(c).startswith("Unnamed: ") for c in df.columns):
            df = pd.read_csv(path, **kw)  # blank lines before the header
    except pd.errors.EmptyDataError:
        raise UserError(f"data file {path} is empty; pass a CSV with a header and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot parse {path} as CSV ({str(e).splitlines()[0][:120]}); pass a comma-separated file "
                        f"with a header row") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(df.index, pd.RangeIndex):
        sep = {"\t": "tab"}.get(kw.get("sep", ","), repr(kw.get("sep", ",")))
        raise UserError(f"{path}: the data rows have more fields than the header ({df.shape[1]} names, separator "
                        f"{sep}); give every column a name in the header, or check the separator and decimal mark")
    blank = df.isna().all(axis=1).to_numpy()
    n_keep = len(blank) - int(np.argmin(blank[::-1])) if not blank.all() else 0
    df = df.iloc[:n_keep]  # trailing blank lines
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise UserError(f"data file {path} has no rows; pass a CSV with a header and rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _columns(df: pd.DataFrame, cfg: RunConfig, path: Path) -> tuple[str | None, str]:
    """(date column or None, target column): as configured, else Date/DATE-like and Close / the one other column."""
    date_col = None
    if cfg.date.strip().lower() == "none":
        date_col = None
    elif cfg.date:
        date_col = cov_.find_column(df, cfg.date, "date", "--date")
    else:
        date_col = next((c for c in df.columns if c.lower() in DATE_NAMES), None)
    if cfg.target:
        target = cov_.find_column(df, cfg.target, "target", "--target")
    else:
        rest = [c for c in df.columns if c != date_col]
        closes = [c for c in rest if c.lower() == "close"]
        if closes:
            target = closes[0]
        elif len(rest) == 1:
            target = rest[0]
        else:
            raise UserError(f"{path.name} has several columns ({', '.join(rest)}); pass --target COL to choose one")
    if target == date_col:
        raise UserError(f"--target and --date are both {target!r}; pass different columns")
    return date_col, target


def numeric_column(raw: pd.Series, name: str, what: str = "target") -> np.ndarray:
    """A column as float64 (NaN where empty); a non-numeric or infinite entry is a UserError naming its line."""
    vals = pd.to_numeric(raw, errors="coerce")
    bad = vals.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{what} column {name!r} has a non-numeric value {raw.iloc[i]!r} on line {i + 2}; "
                        f"fix the file or pass --{what} COL for a numeric column")
    y = vals.to_numpy(dtype=np.float64)
    if np.isinf(y).any():
        i = int(np.flatnonzero(np.isinf(y))[0])
        raise UserError(f"{what} column {name!r} is infinite on line {i + 2}; fix the file")
    return y


def _ordered_dates(dates: pd.DatetimeIndex, date_col: str, sort: bool) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """(dates in increasing order, the row order that gives it): unsorted dates are an error unless `sort`;
    duplicates always are."""
    order = np.arange(len(dates))
    order_bad = np.flatnonzero(np.diff(dates.asi8) < 0)
    if order_bad.size:
        if not sort:
            i = int(order_bad[0]) + 1
            raise UserError(f"dates in {date_col!r} are not in increasing order (line {i + 2}: "
                            f"{dates[i].date()} after {dates[i - 1].date()}); sort the file or pass --sort-dates")
        order = np.argsort(dates.asi8, kind="stable")
        dates = dates[order]
    dup = dates.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise UserError(f"duplicate date {dates[i].date()} in {date_col!r} (line {i + 2} when sorted); "
                        f"remove or aggregate duplicate rows")
    return dates, order


def fill_missing(y: np.ndarray, dates, target: str, how: str):
    """(y, dates) with missing target values refused (how="error"), dropped, forward-filled or interpolated."""
    miss = np.isnan(y)
    if not miss.any():
        return y, dates
    i = int(np.flatnonzero(miss)[0])
    if how == "error":
        raise UserError(f"target column {target!r} has {int(miss.sum())} missing value(s), first on line {i + 2}; "
                        f"fill them or pass --missing drop|ffill|interpolate")
    if how == "drop":
        keep = ~miss
        return y[keep], None if dates is None else dates[keep]
    s = pd.Series(y)
    s = s.ffill() if how == "ffill" else s.interpolate(limit_direction="forward")
    y = s.to_numpy(dtype=np.float64)
    if np.isnan(y).any():  # leading gaps cannot be filled from the past
        raise UserError(f"target column {target!r} starts with missing values that {how} cannot fill; "
                        f"pass --missing drop or trim the file")
    return y, dates
