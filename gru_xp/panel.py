"""Panels (issue 18, host edge): many series, one global model.

    load_panel(cfg) -> Panel               a Monash .tsf file, or a long CSV (--id-col unique_id --date ds --target y,
                                           Nixtla's convention; other names by flag)
    prepare_panel(cfg, panel, stage)       per-series pipelines, each fitted on its own series' training part, and
                                           the windows of every series, stacked, with per-output loss weights

Protocol (the Monash archive's fixed origin), per series i of n_i points and test length h_i (the file's per-series
`horizon` attribute, else its @horizon, else --horizon; the direct head is --horizon K, recursive beyond it):
    s_i = n_i - h_i starts the test (the last h_i values): never seen by a scaler, a window or a choice;
    v_i = s_i - h_i starts validation (the stretch of h_i before the test; --val-ratio 0: no validation, v_i = s_i).
    stage "select": scalers on y_i[:v_i]; training windows with their first target < v_i (targets >= v_i masked),
        validation windows with their first target in [v_i, s_i) (targets >= s_i masked): the fit picks the epoch.
    stage "refit" (--refit): scalers on y_i[:s_i]; training windows with their first target < s_i; no validation.
    Masked targets (weight 0) let short series and each series' latest points contribute (--partial-windows, on by
    default); --no-partial-windows keeps only windows whose every target is available, the single-series rule
    (data.origins), so a one-series panel trains exactly as `gru-xp train` does on that series.
Windows never cross series: each is cut from one series' own values by its own pipeline; `series` records whose.
Loss weights (N, K): 1 per available target, 0 per masked one; with --scale-weight each window's row is multiplied
by d(level)/d(output) at its anchor divided by its series' MASE scale (the loss then tracks MASE), normalised to mean
1 over the training targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .config import RunConfig
from .covariates import find_column
from .data import DATE_NAMES, Pipeline, Series, fit_scalers, make_pipeline, read_table, resolve_data_path
from .errors import UserError
from .series import fill_missing, series_from_frame, sha256_file
from .tsfile import TSF_FREQUENCIES, read_tsf

STAGES = ("select", "refit")


@dataclass
class Panel:
    names: list  # [str] series names, in file order
    series: list  # [data.Series], each with its own values, dates and covariates
    horizons: np.ndarray  # (S,) test length per series
    season: int  # seasonal lag for MASE and seasonal naive (@frequency, --season, or inferred from the dates)
    freq: str
    source: str
    sha256: str

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.y) for s in self.series], dtype=np.int64)

    def index(self, name: str) -> int:
        if name not in self.names:
            close = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise UserError(f"series {name!r} is not in this panel ({close}); pass --series with one of its names")
        return self.names.index(name)


# ==== loading =================================================================================================
def load_panel(cfg: RunConfig) -> Panel:
    """The panel of cfg.data: a .tsf file, or a long CSV with cfg.id_col. Every problem is a one-line UserError."""
    path = resolve_data_path(cfg.data)
    if path.suffix.lower() == ".tsf":
        return _from_tsf(cfg, path)
    if not cfg.id_col:
        raise UserError(f"{path.name} is one series; a panel needs a .tsf file or a long CSV with --id-col COL")
    return _from_long_csv(cfg, path)


def _from_tsf(cfg: RunConfig, path) -> Panel:
    if cfg.id_col:
        raise UserError("--id-col is for long CSVs; a .tsf file names its series itself (drop --id-col)")
    if cfg.covariates or cfg.future_covariates:
        raise UserError(".tsf series carry no covariates; pass them as columns of a long CSV (--id-col)")
    d = read_tsf(path, missing_ok=cfg.missing != "error")
    season = cfg.season or d.season
    _, pd_freq, freq = TSF_FREQUENCIES.get(d.frequency or "", (1, None, "steps"))
    series = []
    for i, (name, y) in enumerate(zip(d.names, d.values)):
        dates = None
        if d.starts is not None and pd_freq is not None:
            import pandas as pd

            dates = pd.DatetimeIndex(pd.date_range(d.starts[i], periods=len(y), freq=pd_freq)).as_unit("ns")
        y, dates = fill_missing(y, dates, f"series {name}", cfg.missing)
        series.append(Series(y, dates, name, None, d.source, "", season, freq if dates is not None else "steps"))
    hs = d.horizons if d.horizons is not None else [d.horizon or cfg.horizon] * len(series)
    sha = sha256_file(path)
    for s in series:
        s.sha256 = sha
    return Panel(list(d.names), series, np.asarray(hs, dtype=np.int64), int(season), freq, d.source, sha)


def _long_columns(df, cfg: RunConfig) -> tuple[str, str | None, str]:
    """(id, date or None, target) columns of a long CSV: as given, else ds / a date-like name, and y."""
    def find(name, flag):
        return find_column(df, name, flag, flag)

    id_col = find(cfg.id_col, "--id-col")
    if cfg.date.strip().lower() == "none":
        date_col = None
    elif cfg.date:
        date_col = find(cfg.date, "--date")
    else:
        date_col = next((c for c in df.columns if c.lower() in DATE_NAMES and c != id_col), None)
    target = find(cfg.target or "y", "--target")
    named = [c for c in (id_col, date_col, target) if c is not None]
    if len(set(named)) != len(named):
        raise UserError(f"--id-col, --date and --target name the same column ({', '.join(named)}); pass three "
                        f"different columns")
    return id_col, date_col, target


def _from_long_csv(cfg: RunConfig, path) -> Panel:
    df = read_table(path)
    id_col, date_col, target = _long_columns(df, cfg)
    ids = df[id_col]
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise UserError(f"id column {id_col!r} is empty on line {i + 2}; give every row its series id")
    keys = ids.astype(str).str.strip()
    names = list(dict.fromkeys(keys))  # first appearance order
    sha = sha256_file(path)
    series = []
    for name in names:
        rows = np.flatnonzero((keys == name).to_numpy())
        part = df.iloc[rows].reset_index(drop=True)
        s = series_from_frame(part, cfg, date_col, target, str(path), sha, lines=rows + 2)
        series.append(s)
    seasons = [s.season for s in series]
    season = cfg.season or max(set(seasons), key=seasons.count)
    return Panel(names, series, np.full(len(series), cfg.horizon, dtype=np.int64), int(season), series[0].freq,
                 str(path), sha)


# ==== splits, pipelines and windows ===========================================================================
@dataclass
class Windows:
    X: np.ndarray  # (N, L, I) scaled inputs
    Y: np.ndarray  # (N, K) scaled targets (0 where masked)
    W: np.ndarray  # (N, K) loss weights: 0 where masked
    series: np.ndarray  # (N,) the series each window was cut from
    anchors: np.ndarray  # (N,) its anchor t in that series


@dataclass
class PanelPrep:
    panel: Panel
    stage: str  # "select" or "refit"
    pipes: list  # [data.Pipeline] per series, fitted on y_i[:cut_i]
    val_start: np.ndarray  # (S,) v_i
    test_start: np.ndarray  # (S,) s_i
    train: Windows
    val: Windows
    weighted: bool  # some weight is not 1 (masks or scale weights): pass W to fit

    @property
    def cut(self) -> np.ndarray:
        """(S,) where each series' training data ends: v_i (select) or s_i (refit)."""
        return self.val_start if self.stage == "select" else self.test_start


def split_starts(cfg: RunConfig, panel: Panel) -> tuple[np.ndarray, np.ndarray]:
    """(v, s): each series' validation and test starts (see the module docstring)."""
    s = panel.lengths - panel.horizons
    v = s - panel.horizons if cfg.val_ratio > 0 else s.copy()
    return v, s


def positions(pipe: Pipeline, series: Series, steps: int):
    """The position data (calendar phases, covariates) forecasts `steps` past the series' end read, or None."""
    if not pipe.positional:
        return None
    return pipe.phases(series, len(series.y) + int(steps) + pipe.horizon + 2)


def _pipelines(cfg: RunConfig, panel: Panel, cut: np.ndarray) -> list:
    pipes = []
    for i, s in enumerate(panel.series):
        pipe = make_pipeline(cfg, s, panel.season)
        if cfg.series_embedding:
            pipe.series_id, pipe.n_series = i, len(panel.series)
        try:
            fit_scalers(pipe, s, int(cut[i]))  # this series' own training part only
        except UserError as e:
            raise UserError(f"series {panel.names[i]!r} ({len(s.y)} points): {e}; or leave the short series out of "
                            f"the file") from None
        pipes.append(pipe)
    return pipes


def _check_lengths(cfg: RunConfig, panel: Panel, pipes: list, v, s) -> None:
    """Every series needs a forecast origin at or after its first possible window end; one error names them all."""
    short = [i for i in range(len(panel.names))
             if int(panel.horizons[i]) < 1 or s[i] - 1 < pipes[i].min_anchor()]
    if not short:
        return
    i = short[0]
    t0, h, n = pipes[i].min_anchor(), int(panel.horizons[i]), len(panel.series[i].y)
    more = "" if len(short) == 1 else (
        f" ({len(short)} of {len(panel.names)} series are too short: "
        + ", ".join(f"{panel.names[j]!r} {len(panel.series[j].y)} points" for j in short[:5])
        + (", ..." if len(short) > 5 else "") + ")")
    raise UserError(f"series {panel.names[i]!r} has {n} points: with its test horizon {h} its forecast origin "
                    f"{s[i] - 1} comes before the first possible window end {t0} (--seq-length {cfg.seq_length}, "
                    f"differencing, season {panel.season}){more}; use a smaller --seq-length, or leave the short "
                    f"series out of the file")


def _window_rows(pipe: Pipeline, series: Series, anchors, end: int, unit_scale: float | None):
    """Windows of one series at `anchors`, targets available below `end` (the rest masked): (X, Y, mask, unit)."""
    K = pipe.horizon
    y = series.y
    y_pad = np.concatenate([y, np.repeat(y[-1:], K)])  # masked targets may run past the end: read as the last value
    ph = positions(pipe, series, K + 1)
    X, Y = pipe.windows(y_pad, anchors, ph)
    avail = (np.asarray(anchors)[:, None] + np.arange(1, K + 1)[None, :]) < end  # (N, K)
    Y = np.where(avail, Y, 0.0)
    unit = np.ones(len(anchors)) if unit_scale is None else output_unit(pipe, y, anchors) / unit_scale
    return X, Y, avail.astype(np.float64), unit


def output_unit(pipe: Pipeline, y, anchors) -> np.ndarray:
    """(N,) d(level)/d(model output) at each anchor, to first order: the window's mean level (--scaler window), else
    the scaler's scale (times the level with --log)."""
    y = np.asarray(y, dtype=np.float64)
    a = np.asarray(anchors)
    if pipe.scaler.kind == "window":
        c = pipe.window_center(pipe.base(y), a)
        return np.exp(c) if pipe.log else c
    return pipe.scaler.scale * (y[a] if pipe.log else np.ones(a.size))


def mase_scale(y, season: int) -> float:
    """The archive's MASE scale: in-sample seasonal-naive MAE (lag 1 when the series is not longer than a season)."""
    sc = metrics.mase_scale(y, season)
    return sc if np.isfinite(sc) or season <= 1 else metrics.mase_scale(y, 1)


def anchor_ranges(cfg: RunConfig, pipe: Pipeline, series: Series, end: int, first: int) -> np.ndarray:
    """Anchors t >= first (and >= the pipeline's first possible one) whose first target t + 1 is below `end`; with
    --no-partial-windows, or future covariates (a window reads them K steps ahead: never a value past `end`), also
    every target (t + K < end)."""
    t0 = max(pipe.min_anchor(), first)
    last = end - 2
    if not cfg.partial_windows or pipe.future_covariates:  # future covariates: K values after the anchor, all < end
        last = min(last, end - 1 - pipe.horizon)
    return np.arange(t0, last + 1)


def prepare_panel(cfg: RunConfig, panel: Panel, stage: str = "select") -> PanelPrep:
    """Pipelines fitted per series and the stacked windows of every series for `stage` (see the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    v, s = split_starts(cfg, panel)
    cut = v if stage == "select" else s
    pipes = _pipelines(cfg, panel, cut)
    _check_lengths(cfg, panel, pipes, v, s)
    parts = {"train": [], "val": []}
    for i, (pipe, ser) in enumerate(zip(pipes, panel.series)):
        scale = mase_scale(ser.y[:cut[i]], panel.season) if cfg.scale_weight else None
        if scale is not None and not scale > 0:  # a constant training part (or too short for a scale)
            scale = 1.0
        jobs = [("train", anchor_ranges(cfg, pipe, ser, int(cut[i]), 0), int(cut[i]))]
        if stage == "select" and v[i] < s[i]:
            jobs.append(("val", anchor_ranges(cfg, pipe, ser, int(s[i]), int(v[i]) - 1), int(s[i])))
        for split, a, end in jobs:
            if a.size:
                X, Y, mask, unit = _window_rows(pipe, ser, a, end, scale)
                parts[split].append((X, Y, mask * unit[:, None], np.full(a.size, i), a))
    if not parts["train"]:
        raise UserError(f"no series is long enough for a training window with --seq-length {cfg.seq_length} and "
                        f"--horizon {cfg.horizon}; use smaller settings")
    train, val = (_stack(parts[k], pipes[0]) for k in ("train", "val"))
    norm = float(np.mean(train.W))  # weights averaging 1 over the training outputs
    train.W, val.W = train.W / norm, val.W / norm
    weighted = bool(cfg.scale_weight or np.any(train.W != train.W.flat[0]) or np.any(val.W != train.W.flat[0]))
    return PanelPrep(panel, stage, pipes, v, s, train, val, weighted)


def _stack(rows: list, pipe: Pipeline) -> Windows:
    if not rows:
        L, K = pipe.seq_length, pipe.horizon
        return Windows(np.zeros((0, L, pipe.n_inputs)), np.zeros((0, K)), np.zeros((0, K)), np.zeros(0, np.int64),
                       np.zeros(0, np.int64))
    X, Y, W, sid, a = (np.concatenate([r[j] for r in rows]) for j in range(5))
    return Windows(X, Y, W, sid.astype(np.int64), a.astype(np.int64))
