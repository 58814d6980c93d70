"""Host edge: load and validate a series, split it chronologically, transform, scale, cut windows.

Index conventions (n points y[0..n-1]):
    a window is named by its anchor t, the last input index: inputs z[t-L+1 .. t], targets z[t+1 .. t+K]
    (z is the transformed series: y itself, or y differenced at the configured lags).
    Split points: s = round(split_ratio * n) starts the test part; v = s - round(val_ratio * s) starts validation.
    train windows: every target < v;  validation windows: first target >= v and every target < s;
    test windows: first target >= s (their inputs may reach back into the earlier, observed part).
    The scaler is fitted on z[:v] only: nothing from validation or test is seen by it.
Calendar features: see calendar.py. Covariates, the series one-hot and --scaler window: see covariates.py.
Loading (Series, load_series, ...) lives in series.py and is re-exported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import covariates as cov_
from .calendar import calendar_kind, calendar_phase, future_dates
from .config import RunConfig
from .errors import UserError
from .series import (DATE_NAMES, Series, infer_frequency, load_series, numeric_column, read_table,  # noqa: F401
                     resolve_data_path, series_from_frame, sha256_file, sine_series)


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


def n_inputs(calendar: bool, past: int = 0, future: int = 0, horizon: int = 1, n_series: int = 0) -> int:
    """Input channels per step: the scaled transformed value, then sin/cos of the calendar phase, then the past
    covariates, K values of each future covariate, and a series one-hot (see covariates.py)."""
    return (3 if calendar else 1) + int(past) + int(future) * int(horizon) + int(n_series)


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
    # issue 18 (covariates.py): covariate columns, their scalers (fitted on the training part), the series one-hot
    covariates: list = field(default_factory=list)  # past-observed
    future_covariates: list = field(default_factory=list)  # known ahead: K values per input step
    cov_scalers: list = field(default_factory=list)  # one Scaler per covariate, past then future
    series_id: int = 0  # this series' index in its panel (the one-hot's 1 with n_series > 0)
    n_series: int = 0  # panels with --series-embedding: the one-hot's width (0 = off)

    @property
    def n_inputs(self) -> int:
        return n_inputs(bool(self.calendar), len(self.covariates), len(self.future_covariates), self.horizon,
                        self.n_series)

    @property
    def positional(self) -> bool:
        """The inputs read position-indexed data (calendar phases, covariates): pass `phases(...)` to inputs."""
        return bool(self.calendar or self.covariates or self.future_covariates)

    def phases(self, series: "Series", total: int | None = None) -> np.ndarray | None:
        """Calendar phase of positions 0 .. total-1 (default: the series plus one step), None when off; with
        covariates the position matrix (total, 1 + C) of covariates.position_matrix."""
        total = len(series.y) + 1 if total is None else int(total)
        ph = calendar_phase(self.calendar, series, total) if self.calendar else None
        if not (self.covariates or self.future_covariates):
            return ph
        return cov_.position_matrix(ph, series.covariates, total)

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
        if self.scaler.kind == "window":
            x = cov_.normalise(x, cov_.window_center(zs[idx], self.log), self.log)
        if not (self.calendar or self.covariates or self.future_covariates or self.n_series):
            return x
        if phase is None and self.positional:
            raise ValueError("this pipeline uses calendar features: pass phase=pipeline.phases(series)")
        parts = [x]
        if self.calendar:
            parts.append(self.features(phase if np.ndim(phase) == 1 else phase[:, 0], idx + 1))
        if self.covariates or self.future_covariates:
            parts.append(cov_.features(self, phase, idx))
        if self.n_series:
            parts.append(cov_.onehot(self.series_id, self.n_series, idx.shape))
        return np.concatenate(parts, axis=-1)

    def targets(self, y, anchors) -> np.ndarray:
        """(N, K) scaled model targets (transformed series) for windows ending at `anchors`."""
        return self._targets(self.scaler.transform(self.transformed(y)), anchors)

    def _targets(self, zs, anchors) -> np.ndarray:
        idx = np.asarray(anchors)[:, None] + np.arange(1, self.horizon + 1)[None, :]
        if self.scaler.kind == "window":
            return cov_.normalise(zs[idx], self.window_center(zs, anchors), self.log)
        return zs[idx]

    def window_center(self, zs, anchors) -> np.ndarray:
        """(N,) the --scaler window normaliser of the windows ending at anchors (zs: the base series)."""
        idx = np.asarray(anchors)[:, None] + np.arange(-self.seq_length + 1, 1)[None, :]
        return cov_.window_center(np.asarray(zs, dtype=np.float64)[idx], self.log)

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
        if self.scaler.kind == "window":  # (no differencing with it)
            return cov_.denormalise(z, self.window_center(self.base(y), anchors), self.log)
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
        d = {"seq_length": self.seq_length, "horizon": self.horizon, "lags": list(self.lags),
             "scaler": self.scaler.to_dict(), "season": self.season, "log": self.log,
             "shrink": self.shrink, "calendar": self.calendar, "cal_period": self.cal_period}
        if self.covariates or self.future_covariates or self.n_series:  # only then: older folders stay as they were
            d.update({"covariates": list(self.covariates), "future_covariates": list(self.future_covariates),
                      "cov_scalers": [c.to_dict() for c in self.cov_scalers], "series_id": self.series_id,
                      "n_series": self.n_series})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Pipeline":
        return cls(int(d["seq_length"]), int(d["horizon"]), [int(v) for v in d["lags"]], Scaler.from_dict(d["scaler"]),
                   int(d["season"]), bool(d.get("log", False)), float(d.get("shrink", 1.0)),
                   str(d.get("calendar", "") or ""), float(d.get("cal_period", 1.0)),
                   [str(c) for c in d.get("covariates", [])], [str(c) for c in d.get("future_covariates", [])],
                   [Scaler.from_dict(c) for c in d.get("cov_scalers", [])], int(d.get("series_id", 0)),
                   int(d.get("n_series", 0)))


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
    fit_scalers(pipe, series, v)  # training part only: indices < v
    phase = pipe.phases(series)  # deterministic functions of time: nothing is fitted

    train, val, test = (Split(a, *pipe.windows(y, a, phase)) for a in (train_a, val_a, test_a))
    return Prepared(series, pipe, v, s, train, val, test, phase)


def make_pipeline(cfg: RunConfig, series: Series, season: int) -> Pipeline:
    """The (unfitted) pipeline of a config for a series: transforms, scaler kind, calendar features, covariates."""
    pipe = Pipeline(cfg.seq_length, cfg.horizon, list(cfg.difference), Scaler(cfg.scaler), season, cfg.log)
    if cfg.calendar:
        pipe.calendar, pipe.cal_period = calendar_kind(series, season)
    if series.cov_names:
        n = len(cfg.covariates)
        pipe.covariates, pipe.future_covariates = list(series.cov_names[:n]), list(series.cov_names[n:])
    return pipe


def fit_scalers(pipe: Pipeline, series: Series, v: int) -> None:
    """The target's scaler on the transformed series' training part (indices < v), each covariate's on its own."""
    pipe.scaler.fit(pipe.transformed(series.y)[:v])
    kind = "standard" if pipe.scaler.kind == "window" else pipe.scaler.kind
    pipe.cov_scalers = [Scaler(kind).fit(series.covariates[:v, j]) for j in range(len(series.cov_names))]


def future_labels(series: Series, k: int) -> list:
    """Labels of the k steps after the end of the series: dates continuing its frequency, or step indices."""
    n = len(series.y)
    if series.dates is None or len(series.dates) < 2:
        return list(range(n, n + k))
    ds = future_dates(series, k)
    if series.year_dates:
        return [int(d.year) for d in ds]
    return [pd.Timestamp(d).strftime("%Y-%m-%d") for d in ds]
