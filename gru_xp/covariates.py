"""Inputs beside the target (issue 18, host edge): covariates, the series identity, per-window normalisation.

Covariates are columns of the data file beside the target, in two kinds:
    past-observed (--covariates COL,...): the input step at position i carries the value at i, observed at i; every
        target of a window comes after its last input step, so a past covariate is only ever used lagged.
    future-known (--future-covariates COL,...): the input step at position i carries the values at i+1 .. i+K
        (channel k: k steps ahead), so the last step of a window (its anchor t) carries the value at each forecast
        step t+1 .. t+K: holidays, promotions, prices set in advance. A forecast reads them up to its last step:
        `gru-xp predict --data FILE` takes them from rows after the last observed target (the target left empty);
        recursive forecasts beyond the direct head need them for every step they use.
Raw values travel with positions, as a matrix P (positions, 1 + C): column 0 the calendar phase (0 without calendar
features), then the C covariates (past, then future), NaN where unknown. The Pipeline scales them with one scaler
per column fitted on the training part only (see data.prepare) and refuses a window that needs an unknown value.

Series identity (--series-embedding, panels): a one-hot of the series' index as S more input channels; through the
recurrent layer's input weights it is a learned per-series embedding of every gate (no new backward: the input
projection's gradient is the embedding's).

Per-window normalisation (--scaler window): each window is divided by the mean of its own input levels (with --log:
log(y / mean)), the targets by the same number; nothing is fitted, and a window never sees past its anchor.
"""
from __future__ import annotations

import numpy as np

from .errors import UserError


# ==== reading covariate columns ===============================================================================
def find_column(df, name: str, what: str, flag: str) -> str:
    """The column of df named `name` (exactly, else ignoring case), or one line naming the columns there are."""
    if name in df.columns:
        return name
    low = {str(c).lower(): c for c in df.columns}
    if name.lower() in low:
        return low[name.lower()]
    raise UserError(f"{what} column {name!r} not in the file (columns: {', '.join(map(str, df.columns))}); "
                    f"pass {flag} COL with an existing column")


def resolve_columns(df, past: list, future: list, taken: dict) -> tuple[list, list]:
    """The file's spelling of each covariate; a covariate that is also the target, the date or the id column is a
    column named twice (taken: {column: its flag})."""
    out = []
    for names, flag in ((past, "--covariates"), (future, "--future-covariates")):
        cols = [find_column(df, c, flag, flag) for c in names]
        for c in cols:
            if c in taken:
                raise UserError(f"column {c!r} is named twice ({taken[c]} and {flag}); a covariate must be a column "
                                f"of its own")
            taken[c] = flag
        out.append(cols)
    return out[0], out[1]


def numeric(df, cols: list, lines) -> np.ndarray:
    """(rows, C) float64 of the covariate columns (NaN where empty); a non-numeric or infinite value is a one-line
    error naming its line (lines: the file line of each row)."""
    import pandas as pd

    out = np.full((len(df), len(cols)), np.nan)
    for j, c in enumerate(cols):
        raw = df[c]
        vals = pd.to_numeric(raw, errors="coerce")
        bad = (vals.isna() & raw.notna()).to_numpy() | np.isinf(vals.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"covariate column {c!r} has a non-numeric value {raw.iloc[i]!r} on line {lines[i]}; "
                            f"fix the file (covariates must be finite numbers)")
        out[:, j] = vals.to_numpy(dtype=np.float64)
    return out


def split_future(y: np.ndarray, cov: np.ndarray, n_past: int, names: list, lines, target: str) -> int:
    """How many rows at the end are future rows (target empty, future covariates given): with future covariates,
    the trailing rows without a target. Every observed row needs every covariate, every future row every future
    covariate: a missing value is a one-line error. -> the number of observed rows."""
    n = len(y)
    n_obs = n
    if len(names) > n_past:  # trailing empty targets are the future rows
        while n_obs > 0 and np.isnan(y[n_obs - 1]):
            n_obs -= 1
    obs, fut = cov[:n_obs], cov[n_obs:, n_past:]
    for part, rows, what in ((obs, np.arange(n_obs), "observed"), (fut, np.arange(n_obs, n), "future")):
        miss = np.isnan(part)
        if miss.any():
            i, j = np.argwhere(miss)[0]
            col = names[j] if what == "observed" else names[n_past + j]
            fix = "fill it" if what == "observed" else f"give it (a future row: {target} empty, covariates known)"
            raise UserError(f"covariate column {col!r} is empty on line {lines[rows[i]]} ({what} row); {fix}")
    return n_obs


# ==== positions ===============================================================================================
def position_matrix(phase, cov, total: int) -> np.ndarray:
    """(total, 1 + C): the calendar phase (0 without) and the raw covariates at positions 0 .. total-1, NaN past
    the rows the data has."""
    C = 0 if cov is None else cov.shape[1]
    P = np.full((int(total), 1 + C), np.nan)
    P[:, 0] = 0.0 if phase is None else np.asarray(phase, dtype=np.float64)[:total]
    if C:
        m = min(int(total), cov.shape[0])
        P[:m, 1:] = cov[:m]
    return P


def features(pipe, P, idx) -> np.ndarray:
    """(N, L, C_past + K * C_future) scaled covariate inputs of the windows at input positions idx (N, L): past
    covariates at each step's own position, future ones at the K positions after it. A value the data does not have
    (a future row not given, or a past covariate beyond the observed rows) is a one-line error."""
    if P is None or np.ndim(P) != 2:
        raise UserError("this model uses covariates: pass the series with its covariate columns")
    n_past, n_fut, K = len(pipe.covariates), len(pipe.future_covariates), pipe.horizon
    parts = []
    for j, sc in enumerate(pipe.cov_scalers[:n_past]):
        parts.append(sc.transform(_take(P, idx, 1 + j, pipe.covariates[j], "past", K))[..., None])
    for j, sc in enumerate(pipe.cov_scalers[n_past:n_past + n_fut]):
        ahead = idx[..., None] + np.arange(1, K + 1)  # (N, L, K)
        parts.append(sc.transform(_take(P, ahead, 1 + n_past + j, pipe.future_covariates[j], "future", K)))
    return np.concatenate(parts, axis=-1)


def _take(P, idx, col: int, name: str, kind: str, K: int) -> np.ndarray:
    v = P[np.minimum(idx, P.shape[0] - 1), col]
    if np.isnan(v).any() or (idx.size and int(idx.max()) >= P.shape[0]):
        if kind == "future":
            raise UserError(f"this forecast needs the future covariate {name!r} beyond the rows the data gives (a "
                            f"forecast of S steps reads it up to ceil(S / K) * K steps ahead, K = --horizon "
                            f"{K}); add rows after the last observed target with {name} filled (target "
                            f"empty), or forecast fewer steps")
        raise UserError(f"the past covariate {name!r} is not observed beyond the last observed row; forecast at most "
                        f"the direct head's steps (--horizon)")
    return v


def onehot(series_id: int, n_series: int, shape: tuple) -> np.ndarray:
    """shape + (S,) with 1 at the series' index."""
    out = np.zeros(tuple(shape) + (int(n_series),))
    out[..., int(series_id)] = 1.0
    return out


# ==== per-window normalisation (--scaler window) ==============================================================
def window_center(zw: np.ndarray, log: bool) -> np.ndarray:
    """(N,) each window's normaliser from its inputs zw (N, L) in the base space: with log, log(mean(level)); else
    mean(|level|) (1 for an all-zero window)."""
    if log:
        mx = zw.max(axis=1)
        return mx + np.log(np.mean(np.exp(zw - mx[:, None]), axis=1))
    c = np.mean(np.abs(zw), axis=1)
    return np.where(c > 0, c, 1.0)


def normalise(v: np.ndarray, c: np.ndarray, log: bool) -> np.ndarray:
    """Values v (N, ...) in the base space relative to each window's normaliser c (N,)."""
    c = c.reshape((-1,) + (1,) * (v.ndim - 1))
    return v - c if log else v / c


def denormalise(z: np.ndarray, c: np.ndarray, log: bool) -> np.ndarray:
    """Model outputs z (N, K) back to levels: exp(z + c) with log, else z * c."""
    c = c.reshape((-1,) + (1,) * (z.ndim - 1))
    return np.exp(z + c) if log else z * c


def last_origin(pipe, P, steps: int) -> float:
    """The last origin a forecast of `steps` steps can be made from with the future covariates P holds (their
    values up to t + ceil(steps / K) K must be known); inf without future covariates."""
    if not pipe.future_covariates or P is None or np.ndim(P) != 2:
        return np.inf
    n_past = len(pipe.covariates)
    fut = P[:, 1 + n_past:1 + n_past + len(pipe.future_covariates)]
    gap = np.flatnonzero(np.isnan(fut).any(axis=1))
    known = (gap[0] if gap.size else P.shape[0]) - 1  # every future covariate known at positions <= known
    return known - int(np.ceil(int(steps) / pipe.horizon)) * pipe.horizon


def check_steps(pipe, steps: int) -> None:
    """Past covariates are known only up to a forecast's origin: no recursive forecast beyond the direct head."""
    if pipe.covariates and int(steps) > pipe.horizon:
        raise UserError(f"past covariates ({', '.join(pipe.covariates)}) are observed only up to a forecast's origin: "
                        f"{steps} steps is beyond the direct head ({pipe.horizon}); forecast at most {pipe.horizon} "
                        f"steps, or pass known-ahead columns as --future-covariates")


def describe_covariates(pipe) -> str:
    """', covariates a,b, future covariates c' for a run's description line ('' without)."""
    return ((f", covariates {','.join(pipe.covariates)}" if pipe.covariates else "")
            + (f", future covariates {','.join(pipe.future_covariates)}" if pipe.future_covariates else ""))


def config_inputs(cfg) -> int:
    """Input channels a single-series config's pipeline makes (data.n_inputs): the value, calendar sin/cos, the past
    covariates, K values per future covariate."""
    return (3 if cfg.calendar else 1) + len(cfg.covariates) + len(cfg.future_covariates) * int(cfg.horizon)
