"""Walk-forward backtest: an expanding training window, evaluated on the last N blocks of the series.

    gru-xp backtest --config FILE [--folds N] [--retrain every|once] [any train flag, e.g. --epochs 30]

Folds (n points; s = round(split_ratio * n) starts the config's test part, exactly as in `gru-xp train`):
    the test part y[s:n] is cut into N consecutive blocks [b_i, b_{i+1}), b_i = s + round(i * (n - s) / N).
    Fold i trains on y[:b_i] only: validation is its tail, v_i = b_i - round(val_ratio * b_i) (the pipeline's
    rule), training windows have every target < v_i, validation windows every target < b_i, and the scaler is
    fitted on the transformed y[:v_i] only. Fold i is evaluated on the forecast origins of its block: anchors t
    (the last input index) with the first target t + 1 in [b_i, b_{i+1}) and t + K <= n - 1. With horizon 1 a
    fold's targets are exactly its block; with K > 1 a fold's later steps may run into the next block (never
    into its own training data). The union of the folds' origins is the test set of `gru-xp train`, and fold 0
    is the train command's split, so `--retrain once` reproduces its test metrics.
    --retrain every: the one Forecaster built at the start is re-initialised in place before each fold (a host
                     copy of its initial parameters and of its dropout generator, loaded back), with a fresh
                     optimizer, and trained on that fold's window: fold i equals a fresh model trained on y[:b_i].
    --retrain once:  train on fold 0's window; later folds are only evaluated, with fold 0's model and scaler.
The series is read once. Metrics are on the original scale, per fold and overall (over the concatenated fold
predictions) for the model, naive and seasonal naive; MASE uses the in-sample seasonal-naive MAE of each fold's
training part (overall: fold 0's, i.e. the train command's). Writes backtest.json and backtest.png.
Prediction intervals (--intervals, default 0.8,0.95): each trained model is calibrated as in `gru-xp train` with
y[:b_i] as its pre-test data (its validation tail, a calibration refit inside y[:b_i] when that is short, then
each observed error of the blocks it forecasts, one at a time behind each origin); coverage, mean width and
interval score per fold and overall, for the model and both baselines.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint, intervals, metrics, plots
from . import data as _data
from .backend import resolve
from .config import RunConfig, add_config_flags, make_config, overrides
from .runs import build_model, calibration_refit, make_optimizer, member_predict, predict_scaled
from .train import fit, host_params
from .errors import UserError

RETRAIN = ("every", "once")


# ==== folds ===================================================================================================
@dataclass
class Fold:
    index: int
    val_start: int  # v_i: training windows have every target < v_i; the scaler sees transformed y[:v_i]
    test_start: int  # b_i: validation windows have every target < b_i; the block starts here
    test_end: int  # b_{i+1} (exclusive)
    train_anchors: np.ndarray
    val_anchors: np.ndarray
    test_anchors: np.ndarray  # forecast origins t with t + 1 in [b_i, b_{i+1}) and t + K <= n - 1

    def to_dict(self, labels) -> dict:
        a = self.test_anchors
        return {"fold": self.index, "train_points": self.test_start, "val_start": self.val_start,
                "test_start": self.test_start, "test_end": self.test_end,
                "test_first": labels[self.test_start], "test_last": labels[self.test_end - 1],
                "origins": int(a.size), "first_origin": int(a[0]), "last_origin": int(a[-1]),
                "train_windows": int(self.train_anchors.size), "val_windows": int(self.val_anchors.size)}


def make_folds(n: int, cfg: RunConfig, folds: int, season: int) -> list[Fold]:
    """The N expanding-window folds over the config's test part (see the module docstring)."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise UserError(f"--folds must be a positive integer, got {folds!r}")
    L, K = cfg.seq_length, cfg.horizon
    t0 = _data.Pipeline(L, K, list(cfg.difference), season=season).min_anchor()
    _, s = _data.split_points(n, cfg.split_ratio, cfg.val_ratio)
    m = n - s  # points in the test part
    max_origins = max(0, n - K - max(t0, s - 1))
    if folds > m or folds > max_origins:
        raise UserError(f"--folds {folds} is too many: the test part of this series ({n} points, --split-ratio "
                        f"{cfg.split_ratio}) has {m} points and {max_origins} forecast origin(s) with --horizon {K}; "
                        f"use --folds {max(1, min(m, max_origins))} or fewer, or a smaller --split-ratio")
    bounds = [s + int(round(i * m / folds)) for i in range(folds + 1)]
    out = []
    for i in range(folds):
        b, e = bounds[i], bounds[i + 1]
        v = b - int(round(cfg.val_ratio * b))
        tr, va, te = _data.origins(t0, v, b, e, n, K)  # targets < v; in [v, b) (none if v = b); first in [b, e)
        if te.size < 1:
            raise UserError(f"--folds {folds} is too many: fold {i} (points {b}..{e - 1}) has no forecast origin "
                            f"with --horizon {K}; use fewer folds or a smaller --split-ratio")
        if tr.size < 1 or (cfg.val_ratio > 0 and va.size < 1):
            raise UserError(f"fold {i} has no {'training' if tr.size < 1 else 'validation'} windows with "
                            f"--seq-length {L}, --horizon {K}; use a longer series or smaller settings")
        out.append(Fold(i, v, b, e, tr, va, te))
    return out


def fold_pipeline(cfg: RunConfig, series, fold: Fold, season: int) -> "_data.Pipeline":
    """The fold's transform + scaler, fitted on the fold's training part only (indices < v_i)."""
    pipe = _data.make_pipeline(cfg, series, season)  # + calendar features (functions of time, nothing fitted)
    pipe.scaler.fit(pipe.transformed(series.y)[:fold.val_start])
    return pipe


def _score(y, anchors, model_lv, K, season, scale) -> dict:
    p = {"model": model_lv, "naive": _data.naive(y, anchors, K), "seasonal_naive": _data.seasonal_naive(y, anchors, K,
                                                                                                         season)}
    return p, metrics.evaluate(_data.actuals(y, anchors, K), p, scale)


def _skill(m: dict) -> dict:
    return {b: metrics.skill(m, b) for b in ("naive", "seasonal_naive")}


# ==== the backtest ============================================================================================
@dataclass
class BacktestResult:
    config: RunConfig
    retrain: str
    folds: list  # of dicts (JSON-able)
    overall: dict
    seconds_per_fold: dict
    predictions: dict  # "anchors" (N,), "actual"/"model"/"naive"/"seasonal_naive" (N, K), "fold" (N,)
    series: object
    boundaries: list  # b_0 .. b_N
    out_dir: Path | None = None

    def to_dict(self) -> dict:
        s = self.series
        return metrics.jsonable({
            "config": self.config.to_dict(), "retrain": self.retrain,
            "data": {"source": s.source, "sha256": s.sha256, "target": s.target, "points": int(len(s.y)),
                     "frequency": s.freq},
            "folds": self.folds, "overall": self.overall, "seconds_per_fold": self.seconds_per_fold})


def backtest(cfg: RunConfig, folds: int = 4, retrain: str = "every", *, progress: bool | None = None,
             log=print) -> BacktestResult:
    """Run the walk-forward backtest in memory (nothing written; see write_backtest)."""
    if retrain not in RETRAIN:
        raise UserError(f"--retrain must be one of {', '.join(RETRAIN)}, got {retrain!r}")
    t_all = time.perf_counter()
    be = resolve(cfg.device, cfg.dtype, verbose=not cfg.quiet)
    series = _data.load_series(cfg)  # the one read of the CSV
    y, n = series.y, len(series.y)
    season = cfg.season or series.season
    K = cfg.horizon
    fl = make_folds(n, cfg, folds, season)
    if progress is None:
        progress = not cfg.quiet and sys.stderr.isatty()

    # the one model of the whole backtest (with --ensemble N: N models, seeds seed .. seed+N-1, averaged)
    models = [build_model(cfg, device=be, seed=cfg.seed + i) for i in range(cfg.ensemble)]
    init = [(host_params(m), copy.deepcopy(m.rnn.rng)) for m in models]  # host copies; dropout generators, as fresh

    labels = series.labels()
    fold_out, preds, secs_train, secs_eval = [], [], [], []
    pipe, phase = None, None
    s_int, served = intervals.settings_of(cfg, cfg.log), None  # interval settings; (anchors, Bands) of the model
    for f in fl:
        trained = retrain == "every" or f.index == 0
        hist = None
        t1 = time.perf_counter()
        if trained:
            pipe, phase, hist = _train_fold(cfg, series, f, season, models, init, progress)
            if s_int is not None:
                served = _fold_bands(cfg, s_int, series, f, fl if retrain == "once" else [f], pipe, phase, models, be,
                                     progress, log)
        t2 = time.perf_counter()
        Xt, _ = pipe.windows(y, f.test_anchors, phase)
        lv = pipe.invert(y, f.test_anchors, [predict_scaled(m, Xt) for m in models])
        scale = metrics.mase_scale(y[:f.val_start], season)
        p, m = _score(y, f.test_anchors, lv, K, season, scale)
        t3 = time.perf_counter()
        p["anchors"], p["actual"] = f.test_anchors, _data.actuals(y, f.test_anchors, K)
        if served is not None:
            _attach_fold(s_int, served, p, m)
        preds.append(p)
        d = f.to_dict(labels)
        d.update({"trained": trained, "metrics": m, "skill_rmse": _skill(m), "mase_scale": scale,
                  "train_seconds": round(t2 - t1, 4), "eval_seconds": round(t3 - t2, 4)})
        if hist is not None:
            d.update({"epochs_run": len(hist.train_loss), "best_epoch": hist.best_epoch,
                      "best_val_loss": hist.best_loss, "stopped_early": hist.stopped_early})
        if cfg.shrink:
            d["shrink"] = pipe.shrink
        fold_out.append(d)
        secs_train.append(t2 - t1)
        secs_eval.append(t3 - t2)
        if not cfg.quiet and not progress:
            log(f"fold {f.index}: {d['test_first']} .. {d['test_last']}  {d['origins']} origins  "
                f"RMSE model {m['model']['rmse']:.4g} naive {m['naive']['rmse']:.4g}  "
                f"train {t2 - t1:.2f}s eval {t3 - t2:.3f}s")

    cat, overall = _overall(preds, fold_out[0]["mase_scale"], s_int.levels if served is not None else ())
    trained_secs = [s for s, d in zip(secs_train, fold_out) if d["trained"]]
    spf = {"train": [round(s, 4) for s in secs_train], "eval": [round(s, 4) for s in secs_eval],
           "train_mean_trained_folds": round(float(np.mean(trained_secs)), 4),
           "eval_mean": round(float(np.mean(secs_eval)), 4),
           "total": round(time.perf_counter() - t_all, 4), "device": be.describe()}
    bounds = [f.test_start for f in fl] + [fl[-1].test_end]
    return BacktestResult(cfg, retrain, fold_out, overall, spf, cat, series, bounds)


def _train_fold(cfg: RunConfig, series, f: Fold, season: int, models: list, init: list, progress):
    """Fit a fold's pipeline and every ensemble member on the fold's training part (early-stopped on its validation
    part); members after the first fold start again from their initial parameters and dropout streams (`init`), each
    with a fresh optimizer. -> (pipeline, phase, the first member's History)."""
    y = series.y
    pipe = fold_pipeline(cfg, series, f, season)
    phase = pipe.phases(series)
    X, Y = pipe.windows(y, f.train_anchors, phase)
    Xv, Yv = pipe.windows(y, f.val_anchors, phase)
    hist = None
    for i, model in enumerate(models):
        if f.index > 0:  # re-initialise the same model in place
            model.load_state_dict({k: v.copy() for k, v in init[i][0].items()})
            model.rnn.rng = copy.deepcopy(init[i][1])
        who = "" if len(models) == 1 else f" member {i + 1}/{len(models)}"
        h = fit(model, X, Y, Xv, Yv, optimizer=make_optimizer(cfg), epochs=cfg.epochs, batch_size=cfg.batch_size,
                patience=cfg.patience, clip=cfg.clip, tbptt=cfg.tbptt, seed=cfg.seed + i, progress=progress,
                desc=f"{cfg.name} fold {f.index}{who}")
        hist = h if hist is None else hist  # the first member's history is reported
    if cfg.shrink and f.val_anchors.size:
        pipe.fit_shrink(y, f.val_anchors, [predict_scaled(m, Xv) for m in models])
    return pipe, phase, hist


def _overall(preds: list, scale0: float, levels) -> tuple[dict, dict]:
    """Every fold's predictions concatenated (plus "fold"), and the overall metrics over them, scaled by the first
    fold's MASE scale; with interval `levels`, coverage, width and interval score over every fold's outputs."""
    cat = {k: np.concatenate([p[k] for p in preds]) for k in preds[0] if k != "bands"}
    cat["fold"] = np.concatenate([np.full(p["anchors"].size, i) for i, p in enumerate(preds)])
    om = metrics.evaluate(cat["actual"], {k: cat[k] for k in metrics.MODELS}, scale0)
    for name in metrics.MODELS if levels else ():
        for c in levels:
            lo, up = (np.concatenate([p["bands"][name][i][c] for p in preds]) for i in (0, 1))
            om[name].update(metrics.interval_scores(cat["actual"], lo, up, c))
    return cat, {"origins": int(cat["anchors"].size), "metrics": om, "skill_rmse": _skill(om), "mase_scale": scale0}


def _fold_bands(cfg: RunConfig, s, series, f: Fold, folds: list, pipe, phase, models, be, progress, log):
    """Intervals of a trained fold model over the blocks it forecasts (its own fold, or with --retrain once every
    fold): calibrated as in `gru-xp train` with y[:b_i] as the pre-test data. -> (anchors, predictor -> Bands)."""
    prep = _data.prepare(cfg, series, points=(f.val_start, f.test_start))  # the fold's split, for the refit
    refit = calibration_refit(cfg, prep, be, progress, log if not cfg.quiet and not progress else (lambda *a: None))
    anchors = np.concatenate([g.test_anchors for g in folds])
    predict, taus = member_predict(models)
    _, _, b = intervals.calibrate(s, series.y, pipe, phase, predict, taus, f.val_start, refit, {"q": anchors})
    return anchors, b["q"]


def _attach_fold(s, served, p: dict, m: dict) -> None:
    """A fold's rows of the served bands: interval metrics into m, the model's bounds into p (lower_80, ...), every
    predictor's into p["bands"] (for the overall metrics)."""
    anchors, b = served
    rows = np.isin(anchors, p["anchors"])
    p["bands"] = {name: ({c: bb.lower[c][rows] for c in s.levels}, {c: bb.upper[c][rows] for c in s.levels})
                  for name, bb in b.items()}
    for name, (lo, up) in p["bands"].items():
        for c in s.levels:
            m[name].update(metrics.interval_scores(p["actual"], lo[c], up[c], c))
    for c in s.levels:
        p[f"lower_{metrics.level_name(c)}"], p[f"upper_{metrics.level_name(c)}"] = p["bands"]["model"][0][c], \
            p["bands"]["model"][1][c]


# ==== output ==================================================================================================
_fmt = metrics.fmt


def format_table(r: BacktestResult) -> str:
    head = (f"{'fold':<8}{'test block':<25}{'origins':>8}{'model':>10}{'naive':>10}{'s.naive':>10}"
            f"{'/naive':>8}{'/s.naive':>9}{'MASE':>8}{'train s':>9}{'eval s':>8}")
    lines = [f"walk-forward backtest, --retrain {r.retrain}: RMSE on the original scale", head, "-" * len(head)]

    def row(name, block, origins, m, sk, tr, ev):
        return (f"{name:<8}{block:<25}{origins:>8}{_fmt(m['model']['rmse']):>10}{_fmt(m['naive']['rmse']):>10}"
                f"{_fmt(m['seasonal_naive']['rmse']):>10}{_fmt(sk['naive']):>8}{_fmt(sk['seasonal_naive']):>9}"
                f"{_fmt(m['model']['mase']):>8}{tr:>9}{ev:>8}")

    for d in r.folds:
        tr = f"{d['train_seconds']:.2f}" if d["trained"] else "-"
        lines.append(row(str(d["fold"]), f"{d['test_first']}..{d['test_last']}", d["origins"], d["metrics"],
                         d["skill_rmse"], tr, f"{d['eval_seconds']:.3f}"))
    o = r.overall
    lines.append(row("overall", "", o["origins"], o["metrics"], o["skill_rmse"], "", ""))
    lines.append("/naive, /s.naive = model RMSE / baseline RMSE (< 1: the model wins)")
    lines.append(metrics.format_table({"all": o["metrics"]}).split("\nRMSE/base")[0])
    if r.config.intervals:
        lines.append(metrics.format_intervals({**{f"fold {d['fold']}": d["metrics"] for d in r.folds},
                                               "overall": o["metrics"]}, r.config.intervals))
    s = r.seconds_per_fold
    lines.append(f"time per trained fold {s['train_mean_trained_folds']:.2f}s, evaluation {s['eval_mean']:.3f}s per "
                 f"fold, total {s['total']:.1f}s ({s['device']})")
    return "\n".join(lines)


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"backtest-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_backtest(out, r: BacktestResult) -> Path:
    """backtest.png then backtest.json, each written atomically; refuses a non-empty folder of something else."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not (out / "backtest.json").is_file():
            raise UserError(f"--out {out} is a non-empty folder that is not a gru-xp backtest; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}; choose another --out") from None
    if r.config.plots:
        plots.backtest(out / "backtest.png", r)
    checkpoint.write_json(out / "backtest.json", r.to_dict())
    r.out_dir = out
    return out


# ==== panels (issue 18) =======================================================================================
def backtest_panel(cfg: RunConfig, folds: int = 3, log=print) -> dict:
    """Rolling fixed origins over a panel: fold i (0 .. N-1) cuts every series by (N - 1 - i) of its horizons and runs
    the panel job on what is left (its own validation stretch, scalers, training and, with --refit, refit), so its
    test is the stretch of h_i before the previous fold's; the last fold is the archive's test (`gru-xp train`).
    Overall: the panel metrics over every (series, fold) forecast. Series too short for a fold sit it out."""
    import dataclasses

    from .panel import load_panel
    from .panelrun import run_panel

    panel = load_panel(cfg)
    out, rows = [], {k: [] for k in metrics.MODELS}
    for i in range(folds):
        back = (folds - 1 - i) * panel.horizons
        keep = [j for j in range(len(panel.names)) if len(panel.series[j].y) - back[j] - 2 * panel.horizons[j]
                > cfg.seq_length + sum(cfg.difference)]
        if not keep:
            raise UserError(f"--folds {folds} is too many: no series is long enough for fold {i}; use fewer folds")
        sub = dataclasses.replace(panel, names=[panel.names[j] for j in keep], horizons=panel.horizons[keep],
                                  series=[dataclasses.replace(panel.series[j], y=panel.series[j].y[:len(
                                      panel.series[j].y) - back[j]]) for j in keep])
        t = time.perf_counter()
        r = run_panel(dataclasses.replace(cfg, quiet=True), save=False, progress=False, panel=sub)
        m = r.metrics["test"]
        for j, d in r.forecasts["test"].items():
            for k in metrics.MODELS:
                rows[k].append(metrics.series_scores(d["actual"], d[k], d["scale"]))
        out.append({"fold": i, "series": len(keep), "cut_horizons": folds - 1 - i, "metrics": m,
                    "seconds": round(time.perf_counter() - t, 3), "best_epoch": r.history.best_epoch})
        if not cfg.quiet:
            log(f"fold {i}: {len(keep)} series, test cut {folds - 1 - i} horizon(s) back: MASE model "
                f"{m['model']['mase']:.4g} naive {m['naive']['mase']:.4g} seasonal naive "
                f"{m['seasonal_naive']['mase']:.4g} ({out[-1]['seconds']:.1f}s)")
    overall = {k: metrics.panel_summary(v) for k, v in rows.items()}
    return metrics.jsonable({"config": cfg.to_dict(), "data": {"source": panel.source, "sha256": panel.sha256,
                                                                "series": len(panel.names)},
                             "folds": out, "overall": overall})


def _panel_cli(cfg: RunConfig, folds: int, retrain: str) -> int:
    if retrain != "every":
        raise UserError("--retrain once is for single series; a panel backtest trains each fold (drop --retrain)")
    r = backtest_panel(cfg, folds)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "backtest.json").is_file())):
        raise UserError(f"--out {out} is not an empty folder or a gru-xp backtest; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(out / "backtest.json", r)
    if not cfg.quiet:
        print(metrics.format_panel_table({"all": r["overall"]}))
        print(f"backtest folder: {out}")
    return 0


# ==== command line ============================================================================================
def add_arguments(parser) -> None:
    """Flags of `gru-xp backtest`: --config, --folds, --retrain, and every train flag as an override."""
    parser.add_argument("--config", default=None,
                        help="TOML config (path or name in configs/; default configs/default.toml)")
    parser.add_argument("--folds", default="4", metavar="N", help="number of folds = forecast blocks (default 4)")
    parser.add_argument("--retrain", default="every", metavar="every|once",
                        help="every: re-fit the same model per fold (default); once: fit on fold 0 only")
    add_config_flags(parser)


def run_cli(args) -> int:
    try:
        folds = int(str(args.folds).strip())
    except ValueError:
        raise UserError(f"--folds must be a positive integer, got {args.folds!r}") from None
    if folds < 1:
        raise UserError(f"--folds must be a positive integer, got {args.folds!r}")
    retrain = str(args.retrain).strip().lower()
    if retrain not in RETRAIN:
        raise UserError(f"--retrain must be one of {', '.join(RETRAIN)}, got {args.retrain!r}")
    cfg = make_config(args.config if args.config is not None else "default", overrides(args))
    from .panelrun import is_panel

    if is_panel(cfg):  # issue 18: a panel's folds are origins stepped back by each series' horizon
        return _panel_cli(cfg, folds, retrain)
    r = backtest(cfg, folds, retrain)
    out = write_backtest(Path(cfg.out) if cfg.out else default_out(cfg), r)
    if not cfg.quiet:
        print(format_table(r))
        print(f"backtest folder: {out}")
    return 0
