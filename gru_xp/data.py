"""Host edge: load and validate a series, split it chronologically, transform, scale, cut windows.

Index conventions (n points y[0..n-1]):
    a window is named by its anchor t, the last input index: inputs z[t-L+1 .. t], targets z[t+1 .. t+K]
    (z is the transformed series: y itself, or y differenced at the configured lags).
    Split points: s = round(split_ratio * n) starts the test part; v = s - round(val_ratio * s) starts validation.
    train windows: every target < v;  validation windows: first target >= v and every target < s;
    test windows: first target >= s (their inputs may reach back into the earlier, observed part).
    The scaler is fitted on z[:v] only: nothing from validation or test is seen by it.
Calendar features: see calendar.py.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .calendar import calendar_kind, calendar_phase, future_dates
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


def _find_col(df: pd.DataFrame, name: str, what: str, flag: str) -> str:
    if name in df.columns:
        return name
    low = {str(c).lower(): c for c in df.columns}
    if name.lower() in low:
        return low[name.lower()]
    raise UserError(f"{what} column {name!r} not in the file (columns: {', '.join(map(str, df.columns))}); "
                    f"pass {flag} COL")


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
    try:
        d = pd.to_datetime(txt)
    except (ValueError, TypeError, OverflowError):
        d = pd.to_datetime(txt, format="mixed")
    d = pd.DatetimeIndex(d)
    if d.tz is not None:
        d = d.tz_convert(None)
    return d.as_unit("ns"), False


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
        y = sine_series(cfg.sine_length, cfg.sine_period, cfg.sine_noise, cfg.seed)
        tag = f"sine(length={cfg.sine_length},period={cfg.sine_period},noise={cfg.sine_noise},seed={cfg.seed})"
        return Series(y, None, "sine", None, "sine", hashlib.sha256(tag.encode()).hexdigest(), 1, "steps")
    path = resolve_data_path(cfg.data)
    df = read_table(path)
    date_col, target = _columns(df, cfg, path)
    y = numeric_column(df[target], target, "target")
    dates, year_dates = (None, False) if date_col is None else _parse_dates(df[date_col], date_col)
    if dates is not None:
        dates, order = _ordered_dates(dates, date_col, cfg.sort_dates)
        y = y[order]
    y, dates = _fill_missing(y, dates, target, cfg.missing)
    season, freq = infer_frequency(dates, year_dates)
    return Series(y, dates, target, date_col, str(path), sha256_file(path), season, freq, year_dates)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as a DataFrame with stripped column names; blank lines inside the data are rows of missing values
    (skipping them would silently shift a series whose row order is its time order), trailing ones are dropped."""
    try:
        df = pd.read_csv(path, skip_blank_lines=False)
        if df.shape[1] == 0 or all(str(c).startswith("Unnamed: ") for c in df.columns):
            df = pd.read_csv(path)  # blank lines before the header
    except pd.errors.EmptyDataError:
        raise UserError(f"data file {path} is empty; pass a CSV with a header and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot parse {path} as CSV ({str(e).splitlines()[0][:120]}); pass a comma-separated file "
                        f"with a header row") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
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
        date_col = _find_col(df, cfg.date, "date", "--date")
    else:
        date_col = next((c for c in df.columns if c.lower() in DATE_NAMES), None)
    if cfg.target:
        target = _find_col(df, cfg.target, "target", "--target")
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


def _fill_missing(y: np.ndarray, dates, target: str, how: str):
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


# ==== transforms and scaling =================================================================================
def difference(y: np.ndarray, lags) -> list[np.ndarray]:
    """[w0 = y, w1 = w0 - w0 shifted by lags[0], w2 = ...]; NaN where the lag reaches before the start."""
    ws = [np.asarray(y, dtype=np.float64)]
    for d in lags:
        w = ws[-1]
        nxt = np.full_like(w, np.nan)
        nxt[d:] = w[d:] - w[:-d]
        ws.append(nxt)
    return ws


class Scaler:
    """standard (mean/std), minmax (to [0, 1]) or none; fitted once, on training data only."""

    def __init__(self, kind: str = "standard", shift: float = 0.0, scale: float = 1.0):
        self.kind, self.shift, self.scale = kind, float(shift), float(scale)

    def fit(self, z: np.ndarray) -> "Scaler":
        z = np.asarray(z, dtype=np.float64)
        z = z[~np.isnan(z)]
        if z.size == 0:
            raise UserError("no training data left to fit the scaler; use a longer series or a larger --split-ratio")
        if self.kind == "standard":
            self.shift, self.scale = float(z.mean()), float(z.std())
        elif self.kind == "minmax":
            self.shift, self.scale = float(z.min()), float(z.max() - z.min())
        else:
            self.shift, self.scale = 0.0, 1.0
        if not self.scale > 0:  # a constant training part: leave the scale alone rather than divide by zero
            self.scale = 1.0
        return self

    def transform(self, z):
        return (np.asarray(z, dtype=np.float64) - self.shift) / self.scale

    def inverse(self, s):
        return np.asarray(s, dtype=np.float64) * self.scale + self.shift

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shift": self.shift, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(d["kind"], d["shift"], d["scale"])


def n_inputs(calendar: bool) -> int:
    """Input channels per step: the scaled transformed value, then sin/cos of the calendar phase."""
    return 3 if calendar else 1


@dataclass
class Pipeline:
    """Everything between the original series and the model's inputs/targets, and back."""

    seq_length: int
    horizon: int
    lags: list = field(default_factory=list)
    scaler: Scaler = field(default_factory=Scaler)
    season: int = 1
    log: bool = False  # model log(y) (then differences of it): multiplicative seasonality and growth
    shrink: float = 1.0  # final forecast = naive + shrink * (model - naive); fitted on validation by fit_shrink()
    calendar: str = ""  # "" = off; else the kind of calendar features (see calendar_kind): month, quarter, ...
    cal_period: float = 1.0  # their period (12 for months)

    @property
    def n_inputs(self) -> int:
        return n_inputs(bool(self.calendar))

    def phases(self, series: "Series", total: int | None = None) -> np.ndarray | None:
        """Calendar phase of positions 0 .. total-1 (default: the series plus one step), None when off."""
        if not self.calendar:
            return None
        return calendar_phase(self.calendar, series, len(series.y) + 1 if total is None else int(total))

    def features(self, phase, idx) -> np.ndarray:
        """(..., 2) sin/cos of 2*pi*phase/period at positions idx."""
        p = np.mod(np.asarray(phase, dtype=np.float64)[idx], self.cal_period)
        ang = 2.0 * math.pi * p / self.cal_period
        return np.stack([np.sin(ang), np.cos(ang)], axis=-1)

    @property
    def lookback(self) -> int:  # points lost to differencing
        return int(sum(self.lags))

    def min_anchor(self) -> int:
        return max(self.lookback + self.seq_length - 1, self.season - 1)

    def base(self, y) -> np.ndarray:
        """The series the differences are taken of: y, or log(y)."""
        y = np.asarray(y, dtype=np.float64)
        if not self.log:
            return y
        if np.any(y <= 0):
            raise UserError("--log needs a strictly positive series; drop --log or shift the data")
        return np.log(y)

    def transformed(self, y) -> np.ndarray:
        return difference(self.base(y), self.lags)[-1]

    def inputs(self, y, anchors, phase=None) -> np.ndarray:
        """(N, L, 1) scaled model inputs for windows ending at `anchors`; with calendar features (N, L, 3): the
        input step at position i also carries sin/cos of the phase of position i + 1, the step it is followed by
        (target-aligned: the last step carries the phase of the first target t + 1). `phase` (from `phases`) must
        then cover every position up to max(anchors) + 1."""
        return self._inputs(self.scaler.transform(self.transformed(y)), anchors, phase)

    def _inputs(self, zs, anchors, phase) -> np.ndarray:
        idx = np.asarray(anchors)[:, None] + np.arange(-self.seq_length + 1, 1)[None, :]
        x = zs[idx][..., None]
        if not self.calendar:
            return x
        if phase is None:
            raise ValueError("this pipeline uses calendar features: pass phase=pipeline.phases(series)")
        return np.concatenate([x, self.features(phase, idx + 1)], axis=-1)

    def targets(self, y, anchors) -> np.ndarray:
        """(N, K) scaled model targets (transformed series) for windows ending at `anchors`."""
        return self._targets(self.scaler.transform(self.transformed(y)), anchors)

    def _targets(self, zs, anchors) -> np.ndarray:
        idx = np.asarray(anchors)[:, None] + np.arange(1, self.horizon + 1)[None, :]
        return zs[idx]

    def windows(self, y, anchors, phase=None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs (N, L, n_inputs), targets (N, K)) of the windows ending at `anchors` (see inputs, targets),
        transforming and scaling the series once; empty arrays of those shapes for no anchors."""
        a = np.asarray(anchors)
        if a.size == 0:
            return np.zeros((0, self.seq_length, self.n_inputs)), np.zeros((0, self.horizon))
        zs = self.scaler.transform(self.transformed(y))
        return self._inputs(zs, a, phase), self._targets(zs, a)

    def invert(self, y, anchors, pred_scaled) -> np.ndarray:
        """Model outputs (N, K) in scaled transformed units -> levels (N, K) on the original scale, undoing each
        difference from the last observed values at the anchor (and earlier predictions for later steps), then
        shrinking toward the naive forecast when `shrink` < 1."""
        lv = self._levels(y, anchors, pred_scaled)
        if self.shrink == 1.0:
            return lv
        last = np.asarray(y, dtype=np.float64)[np.asarray(anchors)][:, None]
        return last + self.shrink * (lv - last)

    def fit_shrink(self, y, anchors, pred_scaled) -> float:
        """Least-squares factor a in [0, 1] for naive + a * (model - naive) on these (validation) windows."""
        self.shrink = 1.0
        lv = self._levels(y, anchors, pred_scaled)
        last = np.asarray(y, dtype=np.float64)[np.asarray(anchors)][:, None]
        d, r = lv - last, actuals(y, anchors, self.horizon) - last
        dd = float(np.sum(d * d))
        self.shrink = float(np.clip(np.sum(d * r) / dd, 0.0, 1.0)) if dd > 0 else 1.0
        return self.shrink

    def _levels(self, y, anchors, pred_scaled) -> np.ndarray:
        """pred_scaled: (N, K), or a list of (N, K) (ensemble members): each inverted to levels, then averaged
        (ensembles average on the original scale)."""
        if isinstance(pred_scaled, (list, tuple)):
            if len(pred_scaled) == 1:
                return self._invert(y, anchors, pred_scaled[0])
            return np.mean(np.stack([self._invert(y, anchors, p) for p in pred_scaled]), axis=0)
        return self._invert(y, anchors, pred_scaled)

    def _invert(self, y, anchors, pred_scaled) -> np.ndarray:
        z = self.scaler.inverse(pred_scaled)  # (N, K)
        if not self.lags:
            return np.exp(z) if self.log else z
        anchors = np.asarray(anchors)
        N, K, P = z.shape[0], z.shape[1], self.lookback
        ws = difference(self.base(y), self.lags)
        tail_idx = anchors[:, None] + np.arange(-P + 1, 1)[None, :]  # (N, P)
        ext = [np.concatenate([w[tail_idx], np.zeros((N, K))], axis=1) for w in ws]  # each (N, P+K)
        for h in range(K):
            val = z[:, h]
            ext[-1][:, P + h] = val
            for i in range(len(self.lags), 0, -1):
                val = val + ext[i - 1][:, P + h - self.lags[i - 1]]
                ext[i - 1][:, P + h] = val
        return np.exp(ext[0][:, P:]) if self.log else ext[0][:, P:]

    def to_dict(self) -> dict:
        return {"seq_length": self.seq_length, "horizon": self.horizon, "lags": list(self.lags),
                "scaler": self.scaler.to_dict(), "season": self.season, "log": self.log,
                "shrink": self.shrink, "calendar": self.calendar, "cal_period": self.cal_period}

    @classmethod
    def from_dict(cls, d: dict) -> "Pipeline":
        return cls(int(d["seq_length"]), int(d["horizon"]), [int(v) for v in d["lags"]], Scaler.from_dict(d["scaler"]),
                   int(d["season"]), bool(d.get("log", False)), float(d.get("shrink", 1.0)),
                   str(d.get("calendar", "") or ""), float(d.get("cal_period", 1.0)))


def naive(y, anchors, horizon: int) -> np.ndarray:
    """Last observed value of each input window, repeated over the horizon: (N, K)."""
    return np.repeat(np.asarray(y)[np.asarray(anchors)][:, None], horizon, axis=1)


def seasonal_naive(y, anchors, horizon: int, season: int) -> np.ndarray:
    """For target t+h: the value one season before, y[t + h - m*ceil(h/m)] (the last observed same-season value)."""
    h = np.arange(1, horizon + 1)
    back = season * np.ceil(h / season).astype(int)
    return np.asarray(y)[np.asarray(anchors)[:, None] + h[None, :] - back[None, :]]


def actuals(y, anchors, horizon: int) -> np.ndarray:
    return np.asarray(y)[np.asarray(anchors)[:, None] + np.arange(1, horizon + 1)[None, :]]


# ==== splits and windows =====================================================================================
@dataclass
class Split:
    anchors: np.ndarray  # (N,)
    X: np.ndarray  # (N, L, I) scaled inputs (I = 1, or 3 with calendar features)
    Y: np.ndarray  # (N, K) scaled targets


@dataclass
class Prepared:
    series: Series
    pipeline: Pipeline
    val_start: int  # v
    test_start: int  # s
    train: Split
    val: Split
    test: Split
    phase: np.ndarray | None = None  # calendar phase of positions 0 .. n (None without calendar features)


def split_points(n: int, split_ratio: float, val_ratio: float) -> tuple[int, int]:
    s = int(round(split_ratio * n))
    v = s - int(round(val_ratio * s))
    return v, s


def origins(t0: int, v: int, s: int, e: int, n: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecast origins (window anchors t) by the no-leakage rule, for a series of n points: training windows
    have every target < v (t + K <= v - 1), validation windows every target in [v, s), test windows their first
    target in [s, e) (t + 1 >= s, t + 1 < e) and every target in the series; none before t0 (min_anchor)."""
    return (np.arange(t0, v - K), np.arange(max(t0, v - 1), s - K), np.arange(max(t0, s - 1), min(e - 1, n - K)))


def prepare(cfg: RunConfig, series: Series | None = None, points: tuple[int, int] | None = None) -> Prepared:
    """Series -> chronological split -> scaler fitted on the training part -> windows for train / val / test.
    points: (v, s) instead of the config's split points (a calibration refit on the series cut at s)."""
    series = load_series(cfg) if series is None else series
    y, n = series.y, len(series.y)
    season = cfg.season or series.season
    L, K = cfg.seq_length, cfg.horizon
    pipe = make_pipeline(cfg, series, season)
    v, s = split_points(n, cfg.split_ratio, cfg.val_ratio) if points is None else (int(points[0]), int(points[1]))
    train_a, val_a, test_a = origins(pipe.min_anchor(), v, s, n, n, K)
    need = []
    if train_a.size < 1:
        need.append("training")
    if cfg.val_ratio > 0 and val_a.size < 1:
        need.append("validation")
    if test_a.size < 1:
        need.append("test")
    if need:
        raise UserError(f"series of {n} points is too short for {', '.join(need)} windows with --seq-length {L}, "
                        f"--horizon {K}, differencing {pipe.lookback}, season {season} and --split-ratio "
                        f"{cfg.split_ratio}/--val-ratio {cfg.val_ratio}; use a longer series or smaller settings")
    pipe.scaler.fit(pipe.transformed(y)[:v])  # training part only: indices < v
    phase = pipe.phases(series)  # deterministic functions of time: nothing is fitted

    train, val, test = (Split(a, *pipe.windows(y, a, phase)) for a in (train_a, val_a, test_a))
    return Prepared(series, pipe, v, s, train, val, test, phase)


def make_pipeline(cfg: RunConfig, series: Series, season: int) -> Pipeline:
    """The (unfitted) pipeline of a config for a series: transforms, scaler kind, calendar features."""
    pipe = Pipeline(cfg.seq_length, cfg.horizon, list(cfg.difference), Scaler(cfg.scaler), season, cfg.log)
    if cfg.calendar:
        pipe.calendar, pipe.cal_period = calendar_kind(series, season)
    return pipe


def future_labels(series: Series, k: int) -> list:
    """Labels of the k steps after the end of the series: dates continuing its frequency, or step indices."""
    n = len(series.y)
    if series.dates is None or len(series.dates) < 2:
        return list(range(n, n + k))
    ds = future_dates(series, k)
    if series.year_dates:
        return [int(d.year) for d in ds]
    return [pd.Timestamp(d).strftime("%Y-%m-%d") for d in ds]
