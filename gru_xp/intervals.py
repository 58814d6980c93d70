"""Prediction intervals: conformal calibration per horizon step, online, on forecasts the model did not train on.
Host edge (NumPy); models enter only as a `predict(X) -> [member outputs]` callable.

Vocabulary (n points y[0..n-1]; an origin t is a forecast's anchor, its last observed index; step k = 1..H
forecasts y[t + k]):
    calibration space g: log y for a log model, else y. The model's output is mapped back through scaling and
        differencing (Pipeline.invert) to a level forecast, and the point forecast reported is that level (averaged
        over an ensemble's members, shrunk toward naive with --shrink); its error is measured in g, so a step-k
        error already carries the accumulated step errors of a differenced model, and only g^-1 (exp) remains:
        a log model's intervals are asymmetric on the original scale and widen with the level.
    base band [lo, hi] in g, per origin and step: lo = hi = g(point) for a point forecaster (the score is then the
        absolute error), or g of a trained quantile pair for a quantile model (conformalised quantile regression,
        Romano et al. 2019).
    score s(t, k) = max(lo - g(y[t+k]), g(y[t+k]) - hi), observed at time t + k.
    interval at origin t, step k, level c = 1 - alpha: [lo - q, hi + q] mapped back with g^-1, where q is the
        r-th smallest of the m step-k scores of origins s with s + k <= t (observed by t: never a value at or after
        the forecast's targets), the latest `window` of them (0 = all), r = ceil((m + 1) * (1 - a)). a = alpha, or
        with gamma > 0 adaptive conformal inference (Gibbs & Candes 2021): a_k <- a_k + gamma * (alpha - miss)
        each time the outcome of an issued step-k interval becomes known (then r is clipped to [1, m]).
        When m is too small for the level (ceil((m + 1) * c) > m: fewer than 1/alpha - 1 scores) the interval is
        unbounded, (-inf, inf): no finite interval has the guarantee.
    Levels are nested afterwards (a higher level's interval contains a lower one's) and contain the point forecast.

Which forecasts calibrate: only out-of-sample ones. The main model trained on targets < v (the validation start),
so its forecasts from origins >= v - 1 qualify (validation was used only for early stopping). When that gives
fewer than `calibration_size` step-H errors before the test part, the same ensemble is refitted on the series
cut at c < v (rolling origin inside the pre-test data; a validation tail as long as the main model's) and its
forecasts from origins c - 1 .. v - 2 are added (see runs.calibration_refit). The test part then joins one
observed error at a time, behind each origin.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .covariates import last_origin
from .errors import UserError
from .metrics import level_name

_EPS = 1e-9  # ceil((m + 1) * 0.8) must be 5 for m = 4, not 6 from 4.000000000000001


def _ceil(x: float) -> int:
    return int(math.ceil(x - _EPS))


# ==== the online engine ========================================================================================
def corrections(cal_origins, scores, query_origins, level: float, window: int = 0, gamma: float = 0.0,
                query_scores=None) -> tuple[np.ndarray, np.ndarray]:
    """The conformal correction q (Nq, H) of each query origin and step at `level`, from calibration scores
    (Nc, H) of origins cal_origins (Nc,) (NaN where not observed), using for query origin t and step k (1-based)
    only scores of origins s with s + k <= t, the latest `window` of them (0 = all). q = inf when too few.
    gamma > 0: adaptive conformal inference per step, updated with the misses of the queries' own intervals
    (query_scores (Nq, H): the score of each query's outcome, NaN when not observed) as they become known.
    Queries are processed in increasing origin. -> (q (Nq, H), the final a per step (H,))."""
    cal_origins = np.asarray(cal_origins, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    qo = np.asarray(query_origins, dtype=np.int64)
    H = scores.shape[1]
    if gamma > 0 and query_scores is None:
        raise ValueError("adaptive conformal inference needs the queries' own scores")
    order, qorder = np.argsort(cal_origins, kind="stable"), np.argsort(qo, kind="stable")
    out, a = np.full((qo.size, H), np.inf), np.full(H, 1.0 - float(level))
    for k in range(H):  # the steps are independent: each has its own scores and its own ACI level
        col = scores[order, k]
        ok = ~np.isnan(col)
        og, sc = cal_origins[order][ok], col[ok]  # the observed step-k scores, in origin order
        p = np.searchsorted(og, qo[qorder] - (k + 1), side="right")  # (Nq,) scores of origins s <= t - k
        wins = _sorted_windows(sc, p, window)
        m = np.minimum(p, window) if window > 0 else p  # (Nq,) scores in each query's window
        finite = (m > 0) & (np.ceil((m + 1) * level - _EPS) <= m)  # enough scores for the level
        if gamma <= 0:
            r = np.ceil((m + 1) * level - _EPS).astype(np.int64)
            out[qorder[finite], k] = [_kth(wins, sc, p, i, r[i]) for i in np.flatnonzero(finite)] \
                if wins is None else wins[finite, r[finite] - 1]
            continue
        qs = np.asarray(query_scores, dtype=np.float64)[qorder, k]
        pending = deque()  # (time the outcome is known, miss) of the intervals issued so far
        for i, j in enumerate(qorder):
            t = int(qo[j])
            while pending and pending[0][0] <= t:
                a[k] += gamma * ((1.0 - level) - pending.popleft()[1])
            if finite[i]:
                r = min(max(_ceil((m[i] + 1) * (1.0 - a[k])), 1), int(m[i]))
                out[j, k] = _kth(wins, sc, p, i, r)
            if not np.isnan(qs[i]):
                pending.append((t + k + 1, float(qs[i] > out[j, k])))
    return out, a


def _sorted_windows(sc, p, window: int):
    """Every query's window sc[max(0, p - window):p], sorted, all at once: (Nq, window), +inf where shorter; None
    for window 0 (every score: the windows grow, see _kth)."""
    if window <= 0:
        return None
    padded = np.concatenate([np.full(window, np.inf), sc])
    return np.sort(padded[p[:, None] + np.arange(window)[None, :]], axis=1)


def _kth(wins, sc, p, i: int, r: int) -> float:
    """The r-th smallest (1-based) score of query i's window."""
    if wins is not None:
        return float(wins[i, r - 1])
    return float(np.partition(sc[:p[i]], r - 1)[r - 1])


# ==== forecasts from many origins ==============================================================================
@dataclass
class Forecasts:
    """A forecaster's forecasts from a set of origins, original scale."""
    origins: np.ndarray  # (N,) anchors t, increasing
    point: np.ndarray  # (N, H)
    actual: np.ndarray  # (N, H) y[t + k], NaN past the end of the series
    quantiles: np.ndarray | None = None  # (N, H, Q) a quantile model's level paths, nondecreasing along Q
    taus: tuple = ()  # their levels

    def rows(self, keep) -> "Forecasts":
        q = None if self.quantiles is None else self.quantiles[keep]
        return Forecasts(self.origins[keep], self.point[keep], self.actual[keep], q, self.taus)


def observed(y, origins, steps: int) -> np.ndarray:
    """(N, steps) y[t + k] for k = 1..steps, NaN where t + k is past the end."""
    y = np.asarray(y, dtype=np.float64)
    idx = np.asarray(origins, dtype=np.int64)[:, None] + np.arange(1, steps + 1)[None, :]
    out = np.full(idx.shape, np.nan)
    ok = idx < len(y)
    out[ok] = y[idx[ok]]
    return out


def concat(parts: list) -> Forecasts:
    """Forecasts of consecutive origin ranges (e.g. a calibration refit's, then the main model's) as one."""
    parts = [p for p in parts if p.origins.size] or parts[:1]  # (all empty: the first, empty, as it is)
    qs = [p.quantiles for p in parts]
    return Forecasts(np.concatenate([p.origins for p in parts]), np.concatenate([p.point for p in parts]),
                     np.concatenate([p.actual for p in parts]),
                     None if any(q is None for q in qs) else np.concatenate(qs), parts[0].taus)


def forecast_paths(predict, pipe, y, origins, steps: int, phase=None, taus: tuple = ()) -> Forecasts:
    """Level forecasts `steps` ahead from every origin t (using y[:t+1] only): the direct K-step head, applied
    recursively beyond K (each origin's point forecasts appended to its own history), exactly as runs.forecast
    does for one origin. predict(X (N, L, I)) -> list of member outputs (N, K) or, for a quantile model with levels
    `taus` (one of them 0.5), (N, K, Q); members are averaged on the original scale, the median is the point.
    phase: calendar phases covering every position up to max(origins) + steps + K."""
    y = np.asarray(y, dtype=np.float64)
    origins = np.asarray(origins, dtype=np.int64)
    K, N = pipe.horizon, origins.size
    rounds = max(1, math.ceil(int(steps) / K))
    if N == 0:
        return Forecasts(origins, np.zeros((0, steps)), np.zeros((0, steps)), np.zeros((0, steps, len(taus)))
                         if taus else None, tuple(taus))
    mid = list(taus).index(0.5) if taus else None
    M = pipe.min_anchor() + 1  # >= L + the differencing lookback: every point a window and its inversion read
    if origins.min() < M - 1:
        raise ValueError(f"origins before the first possible one ({M - 1})")
    # later rounds: each origin's history is its last M points of y (the transforms are elementwise, so the values
    # read equal the whole prefix's), then its own forecasts so far: one (N, M + r K) matrix
    first = origins + 1 - M  # (N,) where each tail starts
    tails = y[first[:, None] + np.arange(M)[None, :]]  # (N, M)
    hists = None
    points, quants = [], []
    for r in range(rounds):
        if hists is None:
            X, invert = pipe.inputs(y, origins, phase), (lambda sel: pipe.invert(y, origins, sel))
        else:
            X, invert = _stacked(pipe, hists, first, phase)
        outs = predict(X)  # the windows of every origin in one batch
        points.append(invert([o if mid is None else o[..., mid] for o in outs]))  # (N, K)
        if mid is not None:
            quants.append(np.stack([invert([o[..., j] for o in outs]) for j in range(len(taus))], axis=-1))
        if r + 1 < rounds:
            hists = np.concatenate([tails] + points, axis=1)
    point = np.concatenate(points, axis=1)[:, :steps]
    quant = np.concatenate(quants, axis=1)[:, :steps] if quants else None
    return Forecasts(origins, point, observed(y, origins, steps), quant, tuple(taus))


def _stacked(pipe, hists, first, phase):
    """(inputs (N, L, I), invert(members' (N, K)) -> levels (N, K)) of the windows ending each history (N, n) (rows
    starting at positions `first` of the series). The rows are laid end to end, each followed by one pad point (so
    the calendar feature of the position after a row stays its own; K pad points with future covariates, which a
    window reads K ahead), and read in one call: a window and its inversion read only their own row's last
    min_anchor + 1 points, never the row before."""
    N, n = hists.shape
    pad = pipe.horizon if pipe.future_covariates else 1  # positions read after a row: the next phase, or K ahead
    z = np.concatenate([hists, np.repeat(hists[:, -1:], pad, axis=1)], axis=1).ravel()  # (N * (n + pad),)
    ends = np.arange(N) * (n + pad) + n - 1  # (N,) each history's last index
    ph = None if phase is None else np.asarray(phase)[first[:, None] + np.arange(n + pad)[None, :]]
    ph = None if ph is None else ph.reshape((-1,) + ph.shape[2:])  # (N * (n + pad),) or, with covariates, (.., 1 + C)
    return pipe.inputs(z, ends, ph), (lambda sel: pipe.invert(z, ends, sel))


# ==== bands ====================================================================================================
@dataclass
class Settings:
    levels: tuple  # increasing, in (0, 1)
    window: int = 0  # latest scores kept per step (0 = all)
    gamma: float = 0.0  # adaptive conformal inference step (0 = off)
    log: bool = False  # calibration space: log levels

    def g(self, v):
        v = np.asarray(v, dtype=np.float64)
        if not self.log:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(v)

    def g_inv(self, v):
        return np.exp(v) if self.log else np.asarray(v, dtype=np.float64)


def quantile_pair(taus: tuple, level: float) -> tuple[int, int]:
    """Indices of the trained quantiles a level's CQR band starts from: the largest <= (1 - c)/2 (else the smallest)
    and the smallest >= (1 + c)/2 (else the largest)."""
    lo = [i for i, t in enumerate(taus) if t <= (1.0 - level) / 2 + _EPS]
    hi = [i for i, t in enumerate(taus) if t >= (1.0 + level) / 2 - _EPS]
    return (lo[-1] if lo else 0), (hi[0] if hi else len(taus) - 1)


def base_band(s: Settings, fc: Forecasts, level: float) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] in the calibration space, (N, H) each."""
    if fc.quantiles is None:
        c = s.g(fc.point)
        return c, c
    i, j = quantile_pair(fc.taus, level)
    return s.g(fc.quantiles[..., i]), s.g(fc.quantiles[..., j])


def scores(s: Settings, fc: Forecasts, level: float) -> np.ndarray:
    """(N, H) max(lo - g(y), g(y) - hi); NaN where y is not observed."""
    lo, hi = base_band(s, fc, level)
    a = s.g(fc.actual)
    return np.maximum(lo - a, a - hi)


@dataclass
class Bands:
    """Intervals of one forecaster at query origins, original scale: level -> (lower (N, H), upper (N, H))."""
    lower: dict = field(default_factory=dict)
    upper: dict = field(default_factory=dict)
    q: dict = field(default_factory=dict)  # level -> corrections (N, H) in the calibration space
    alpha: dict = field(default_factory=dict)  # level -> final ACI a per step (H,)


def bands(s: Settings, cal: Forecasts, query: Forecasts) -> Bands:
    """Online conformal intervals of the query forecasts from the calibration forecasts (see the module
    docstring); nested across levels and containing the point forecast."""
    out = Bands()
    for level in s.levels:
        qs = scores(s, query, level) if s.gamma > 0 else None
        q, a = corrections(cal.origins, scores(s, cal, level), query.origins, level, s.window, s.gamma, qs)
        lo, hi = base_band(s, query, level)
        q = np.maximum(q, -(hi - lo) / 2)  # CQR may shrink a band, never past empty
        with np.errstate(invalid="ignore"):
            out.lower[level], out.upper[level] = s.g_inv(lo - q), s.g_inv(hi + q)
        out.q[level], out.alpha[level] = q, a
    nest(out, query.point, s.levels)
    return out


def nest(b: Bands, point, levels) -> None:
    """In place: every interval contains the point forecast, and each level's contains the lower levels'."""
    prev = None
    for level in sorted(levels):
        lo, up = np.minimum(b.lower[level], point), np.maximum(b.upper[level], point)
        if prev is not None:
            lo, up = np.minimum(lo, prev[0]), np.maximum(up, prev[1])
        b.lower[level], b.upper[level] = lo, up
        prev = (lo, up)


# ==== a run's intervals ========================================================================================
PREDICTORS = ("model", "naive", "seasonal_naive")


def settings_of(cfg, log: bool, levels=None) -> Settings | None:
    """The config's interval settings (None when --intervals none); `levels` overrides the config's."""
    levels = tuple(cfg.intervals if levels is None else levels)
    return Settings(levels, int(cfg.interval_window), float(cfg.interval_gamma), bool(log)) if levels else None


def baseline(name: str, y, origins, steps: int, season: int) -> Forecasts:
    """The naive or seasonal-naive forecasts from these origins, as Forecasts."""
    from .data import naive, seasonal_naive

    origins = np.asarray(origins, dtype=np.int64)
    point = naive(y, origins, steps) if name == "naive" else seasonal_naive(y, origins, steps, season)
    return Forecasts(origins, np.asarray(point, dtype=np.float64), observed(y, origins, steps))


def calibration_origins(pipe, n: int, val_start: int, refit_cut: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(origins of the refitted models' calibration forecasts, origins of the main model's): c - 1 .. v - 2 and
    v - 1 .. n - 2 (none before the pipeline's first possible origin)."""
    t0 = pipe.min_anchor()
    first = max(t0, val_start - 1)
    refit = np.arange(max(t0, refit_cut - 1), first, dtype=np.int64) if refit_cut is not None else np.zeros(0, np.int64)
    return refit, np.arange(first, n - 1, dtype=np.int64)


def run_bands(s: Settings, y, season: int, cal: Forecasts, queries: dict) -> dict:
    """split -> predictor -> Bands: the model's (queries[split]) and the naive and seasonal-naive forecasts' from
    the same origins, each calibrated on its own errors at the calibration origins."""
    H = cal.point.shape[1]
    cals = {"model": cal, **{b: baseline(b, y, cal.origins, H, season) for b in PREDICTORS[1:]}}
    out = {}
    for split, fq in queries.items():
        qs = {"model": fq, **{b: baseline(b, y, fq.origins, H, season) for b in PREDICTORS[1:]}}
        out[split] = {name: bands(s, cals[name], qs[name]) for name in PREDICTORS}
    return out


def attach(s: Settings, metrics_: dict, preds: dict, run_bands_: dict) -> None:
    """In place: coverage_C, width_C, interval_score_C into each split's predictor metrics (original scale), and the
    model's lower_C/upper_C (N, K) into each split's predictions (NaN for splits without intervals: train)."""
    from .metrics import interval_scores

    for split, p in preds.items():
        by = run_bands_.get(split)
        for level in s.levels:
            c = level_name(level)
            if by is None:  # the model was fitted on these windows: no honest interval exists
                p[f"lower_{c}"] = p[f"upper_{c}"] = np.full(p["model"].shape, np.nan)
                continue
            p[f"lower_{c}"], p[f"upper_{c}"] = by["model"].lower[level], by["model"].upper[level]
            for name, b in by.items():
                metrics_[split][name].update(interval_scores(p["actual"], b.lower[level], b.upper[level], level))


def end_state(s: Settings, cal: Forecasts, test_start: int, n: int) -> dict:
    """What an origin at the end of the series (n - 1) would be given, as `gru-xp predict` computes it: per level
    and step, the correction q (in the calibration space), the number of errors it came from and ACI's a (replayed
    over every origin from the test start, as for_predict does)."""
    H = cal.point.shape[1]
    out = {}
    for level in s.levels:
        sc = scores(s, cal, level)
        qo, qsc = np.array([n - 1]), np.full((1, H), np.nan)
        if s.gamma > 0:
            after = cal.origins >= test_start - 1
            qo, qsc = np.concatenate([cal.origins[after], qo]), np.concatenate([sc[after], qsc])
        q, a = corrections(cal.origins, sc, qo, level, s.window, s.gamma, qsc)
        counts = [int(min(np.sum(~np.isnan(sc[cal.origins + k + 1 <= n - 1, k])), s.window or 10 ** 9))
                  for k in range(H)]
        out[level_name(level)] = {"q": q[-1].tolist(), "errors": counts, "aci_alpha": a.tolist()}
    return out


def forecasts_to_dict(fc: Forecasts) -> dict:
    d = {"origins": fc.origins.tolist(), "point": fc.point.tolist()}
    if fc.quantiles is not None:
        d.update({"quantiles": fc.quantiles.tolist(), "taus": list(fc.taus)})
    return d


def forecasts_from_dict(d: dict, y, steps: int) -> Forecasts:
    """Stored forecasts (a calibration refit's) back, padded with NaN to `steps` steps, actuals read from y."""
    origins = np.asarray(d["origins"], dtype=np.int64)
    point = np.asarray(d["point"], dtype=np.float64).reshape(origins.size, -1)
    pad = max(0, steps - point.shape[1])
    point = np.pad(point, ((0, 0), (0, pad)), constant_values=np.nan)[:, :steps]
    q = d.get("quantiles")
    if q is not None:
        q = np.asarray(q, dtype=np.float64).reshape(origins.size, -1, len(d["taus"]))
        q = np.pad(q, ((0, 0), (0, pad), (0, 0)), constant_values=np.nan)[:, :steps]
    return Forecasts(origins, point, observed(y, origins, steps), q, tuple(d.get("taus", ())))


@dataclass
class Refit:
    """The calibration refit of a run (runs.calibration_refit): its members' predict, its own pipeline (scaler,
    shrink), the cut c it was fitted before, and the quantile levels of its outputs."""
    predict: object
    pipeline: object
    cut: int
    taus: tuple = ()


def calibrate(s: Settings, y, pipe, phase, predict, taus: tuple, val_start: int, refit: Refit | None,
              queries: dict) -> tuple[Forecasts, dict, dict]:
    """Calibration forecasts at every out-of-sample origin (the refit's from c - 1, the main model's from v - 1 to
    n - 2) and the forecasts from each query set of origins (queries: name -> anchors), calibrated online.
    -> (calibration forecasts (refit's first), name -> the model's query Forecasts, name -> predictor -> Bands)."""
    K = pipe.horizon
    ro, mo = calibration_origins(pipe, len(y), val_start, None if refit is None else refit.cut)
    mo = mo[mo <= last_origin(pipe, phase, K)]  # future covariates: only where the data gives them
    parts = [forecast_paths(predict, pipe, y, mo, K, phase, taus)]
    if refit is not None:
        parts.insert(0, forecast_paths(refit.predict, refit.pipeline, y, ro, K, phase, refit.taus))
    cal = concat(parts)
    fq = {k: forecast_paths(predict, pipe, y, a, K, phase, taus) for k, a in queries.items()}
    return cal, fq, run_bands(s, y, pipe.season, cal, fq)


def for_run(cfg, prep, predict, taus: tuple, refit: Refit | None, metrics_: dict, preds: dict) -> dict:
    """A run's conformal intervals for its validation and test forecasts and the baselines' (see calibrate): metrics
    and the model's bounds go into metrics_ and preds (see attach). -> the calibration state (intervals.json)."""
    y, pipe = prep.series.y, prep.pipeline
    s = settings_of(cfg, pipe.log)
    first = max(pipe.min_anchor(), prep.val_start - 1)  # the main model's first calibration origin
    cal, _, b = calibrate(s, y, pipe, prep.phase, predict, taus, prep.val_start, refit,
                           {k: getattr(prep, k).anchors for k in ("val", "test") if k in preds})
    attach(s, metrics_, preds, b)
    return {"levels": list(s.levels), "window": s.window, "gamma": s.gamma, "space": "log" if s.log else "level",
            "method": "conformalized quantile regression" if taus else "split conformal on absolute errors",
            "calibration_size": cfg.calibration_size, "val_start": prep.val_start, "test_start": prep.test_start,
            "first_origin": int(cal.origins[0]) if cal.origins.size else None,
            "refit": None if refit is None else {"cut": refit.cut, **forecasts_to_dict(cal.rows(cal.origins < first))},
            "end": end_state(s, cal, prep.test_start, len(y))}


def for_predict(s: Settings, predict, taus: tuple, pipe, series, final: Forecasts, state: dict | None,
                val_start: int, test_start: int, phase=None) -> Bands:
    """Intervals of a forecast from the end of a series (`final`: one origin, n - 1, H steps): calibrated on the
    main model's forecasts from every origin v - 1 .. n - 2 (recomputed for these H steps, recursive beyond the
    head, so new observations in the series join) plus the run's stored refit forecasts (steps <= K)."""
    y = series.y
    H = final.point.shape[1]
    _, mo = calibration_origins(pipe, len(y), val_start)
    mo = mo[mo <= last_origin(pipe, phase, H)]  # future covariates: only where the data gives them
    parts = [forecast_paths(predict, pipe, y, mo, H, phase, taus)]
    if state and state.get("refit"):
        parts.insert(0, forecasts_from_dict(state["refit"], y, H))
    cal = concat(parts)
    query = final
    if s.gamma > 0:  # replay adaptive conformal inference over the test origins up to the end
        query = concat([cal.rows(cal.origins >= test_start - 1), final])
    b = bands(s, cal, query)
    for d in (b.lower, b.upper, b.q):
        for level in d:
            d[level] = d[level][-1:]
    return b


# ==== panels (issue 18): split conformal pooled across series on scale-free errors ================================
# A fixed-origin panel gives each series at most h_i out-of-sample errors per step (one at the last step): too few
# for any 80% interval of its own. Pooled across series they are many (CIF 2016: 57-72 per step), once each error
# is made scale-free: |g(y) - g(f)| / scale_i in the calibration space g (log for a log model, else the level),
# scale_i the series' in-sample seasonal-naive MAE of g(y) on its training part (its MASE scale in g): a series'
# interval is as wide as its own history is variable, the quantile of the ratio shared by all.
def calibration_space(log: bool, v) -> np.ndarray:
    """g(v): log(v) (NaN where not positive) for a log model, else v."""
    v = np.asarray(v, dtype=np.float64)
    if not log:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(v > 0, v, np.nan))


def scale_free(log: bool, actual, point, scale) -> np.ndarray:
    """(N, H) scale-free absolute errors |g(y) - g(f)| / scale (NaN where not observed)."""
    return np.abs(calibration_space(log, actual) - calibration_space(log, point)) / float(scale)


def pooled_corrections(scores: list, steps: int, level: float) -> np.ndarray:
    """(steps,) the conformal correction of each step from the pooled scores (list of (N_i, H_i) arrays, NaN =
    not observed): the r-th smallest of the m step-k scores, r = ceil((m + 1) * level); inf when m is too small."""
    q = np.full(int(steps), np.inf)
    for k in range(int(steps)):
        col = np.concatenate([np.asarray(s, dtype=np.float64)[:, k] for s in scores if np.shape(s)[1] > k] or
                             [np.zeros(0)])
        col = np.sort(col[~np.isnan(col)])
        r = _ceil((col.size + 1) * float(level))
        if col.size and r <= col.size:
            q[k] = col[r - 1]
    return q


def pooled_band(log: bool, point, q, scale) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) around point forecasts (..., H) with corrections q (H,): g^-1(g(f) -+ q * scale), i.e.
    f exp(-+q scale) for a log model (an infinite q: an unbounded interval, (0, inf) for a log model)."""
    f = np.asarray(point, dtype=np.float64)
    if log:
        with np.errstate(over="ignore"):
            return f * np.exp(-q * float(scale)), f * np.exp(q * float(scale))
    return f - q * float(scale), f + q * float(scale)


def pooled_counts(scores: list, steps: int) -> list:
    """How many observed scores each step's correction came from."""
    return [int(sum(np.sum(~np.isnan(np.asarray(s)[:, k])) for s in scores if np.shape(s)[1] > k))
            for k in range(int(steps))]


def read_state(path, y, steps: int) -> dict | None:
    """A run folder's intervals.json (None when absent), its stored refit forecasts read for `steps` past the end of
    y here, so that a damaged file is one clear error rather than a traceback later."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("refit"):
            forecasts_from_dict(state["refit"], y, steps)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}); restore it from the run or retrain with "
                        f"'gru-xp train'") from None
    return state
