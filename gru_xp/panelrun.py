"""The panel job (issue 18): one global model across every series of a panel, evaluated as the Monash archive does.

    run_panel(cfg) -> PanelResult    load, per-series pipelines and windows (panel.py), fit every ensemble member on
                                     all series at once, optionally refit on the whole training part, forecast each
                                     series' test from its fixed origin, metrics beside naive and seasonal naive,
                                     pooled conformal intervals, run folder (panelio.py)
    predict_panel(dir, ...)          `gru-xp predict` on a panel run: every series (or one) from its end

Evaluation (original scale): each series is forecast from its test origin s_i - 1 for its h_i test steps (the direct
K-step head, recursive beyond K) and scored by its own MASE (MAE / in-sample seasonal-naive MAE of y_i[:s_i], season
from @frequency) and sMAPE; the panel's metrics are means over series (and the median MASE). Validation metrics:
the selection models from v_i - 1 over the h_i validation steps. Ensembles average their members on the original
scale. Intervals: split conformal pooled across series on scale-free errors (intervals.py's panel section),
calibrated on the selection models' validation errors (origins v_i - 1 .. s_i - 2, targets < s_i); coverage over
every test output, width and interval score divided by each series' MASE scale and averaged over series (MSIS).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, intervals, metrics, panelio
from .backend import resolve
from .config import RunConfig, from_dict, is_panel_config
from .data import naive, seasonal_naive
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .panel import Panel, PanelPrep, load_panel, mase_scale, positions, prepare_panel
from .runs import build_model, make_optimizer, member_predict
from .train import History, fit

SPLITS = ("val", "test")


@dataclass
class PanelResult:
    config: RunConfig
    metrics: dict  # split -> predictor -> panel metrics (metrics.panel_summary), test intervals' coverage etc.
    history: History  # the first member's selection fit
    out_dir: Path | None
    model: object  # the first final model (the refit one with --refit)
    prep: PanelPrep  # the selection stage
    final_prep: PanelPrep  # the stage the final models were trained in ("refit" with --refit)
    forecasts: dict  # split -> [per series {"origin", "actual", "model", "naive", "seasonal_naive", "lower_80", ...}]
    series_rows: list  # per series: its scores (series_metrics.csv)
    models: list = field(default_factory=list)
    histories: list = field(default_factory=list)  # the selection fits' histories
    refit_histories: list = field(default_factory=list)
    intervals: dict | None = None
    seconds: float = 0.0
    status: str = "ok"

    @property
    def panel(self) -> Panel:
        return self.prep.panel


def is_panel(cfg: RunConfig) -> bool:
    return is_panel_config(cfg)


# ==== training ================================================================================================
def _fit(cfg, model, prep: PanelPrep, i: int, progress: bool, desc: str, interruptible: bool, epochs=None):
    W, Wv = (prep.train.W, prep.val.W) if prep.weighted else (None, None)
    val = prep.val.X.shape[0] > 0 and epochs is None
    try:
        return fit(model, prep.train.X, prep.train.Y, prep.val.X if val else None, prep.val.Y if val else None,
                   optimizer=make_optimizer(cfg), epochs=cfg.epochs if epochs is None else int(epochs),
                   batch_size=cfg.batch_size, patience=cfg.patience if epochs is None else 0, clip=cfg.clip,
                   tbptt=cfg.tbptt, seed=cfg.seed + i, progress=progress, desc=desc, interruptible=interruptible,
                   keep_last=epochs is not None, weights=W, val_weights=Wv if val else None)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"interrupted at epoch {e.state.epoch} ({desc}); panel runs are not resumable: "
                                  f"nothing saved, start the run again", state=e.state) from None
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{desc}: {str(e).split('; kept the best')[0]}; panel runs keep no partial run "
                               f"folder: nothing saved; lower --lr or set --clip 1", epoch=e.epoch,
                               history=e.history) from None


def train_members(cfg: RunConfig, prep: PanelPrep, be, progress: bool = False, interruptible: bool = True):
    """Every ensemble member (seed + i) on the whole panel's windows; with --refit each is then refitted from its
    initial weights on the "refit" stage's windows for its best epoch count. -> (selection models, their
    histories, final models, refit histories, the final stage's PanelPrep)."""
    sel, hists = [], []
    for i in range(cfg.ensemble):
        model = build_model(cfg, device=be, input_size=prep.pipes[0].n_inputs, seed=cfg.seed + i)
        who = cfg.name if cfg.ensemble == 1 else f"{cfg.name} {i + 1}/{cfg.ensemble}"
        hists.append(_fit(cfg, model, prep, i, progress, who, interruptible))
        sel.append(model)
    if not cfg.refit:
        return sel, hists, sel, [], prep
    final_prep = prepare_panel(cfg, prep.panel, "refit")
    final, refit_h = [], []
    for i, h in enumerate(hists):
        model = build_model(cfg, device=be, input_size=final_prep.pipes[0].n_inputs, seed=cfg.seed + i)
        who = f"{cfg.name} refit" + ("" if cfg.ensemble == 1 else f" {i + 1}/{cfg.ensemble}")
        refit_h.append(_fit(cfg, model, final_prep, i, progress, who, interruptible, epochs=max(1, h.best_epoch)))
        final.append(model)
    return sel, hists, final, refit_h, final_prep


# ==== forecasts and scores ====================================================================================
def series_forecasts(models, prep: PanelPrep, origin_of, steps_of, y_end=None) -> dict:
    """{series index: intervals.Forecasts} of the models from each series' origins (origin_of(i) -> array) for
    steps_of(i) steps, with that series' own pipeline; y_end(i): where the series is cut (later values unseen
    and left out of `actual`). Series whose origins come before their first possible window are left out."""
    predict, taus = member_predict(models)
    out = {}
    for i, (pipe, ser) in enumerate(zip(prep.pipes, prep.panel.series)):
        o = np.asarray(origin_of(i), dtype=np.int64)
        o = o[o >= pipe.min_anchor()]
        if o.size == 0:
            continue
        h = int(steps_of(i))
        y = ser.y if y_end is None else ser.y[:int(y_end(i))]
        out[i] = intervals.forecast_paths(predict, pipe, y, o, h, positions(pipe, ser, h), taus)
    return out


def _score(panel: Panel, fcs: dict, scale_end) -> tuple[dict, dict]:
    """One fixed origin per series -> ({predictor: [per-series scores]}, {series: forecast dict})."""
    rows = {k: [] for k in metrics.MODELS}
    per = {}
    for i, fc in fcs.items():
        y, t, h = panel.series[i].y, int(fc.origins[0]), fc.point.shape[1]
        d = {"origin": t, "actual": fc.actual[0], "model": fc.point[0], "naive": naive(y, [t], h)[0],
             "seasonal_naive": seasonal_naive(y, [t], h, panel.season)[0],
             "scale": mase_scale(y[:int(scale_end(i))], panel.season)}
        per[i] = d
        for k in metrics.MODELS:
            rows[k].append({"series": panel.names[i], **metrics.series_scores(d["actual"], d[k], d["scale"])})
    return rows, per


def evaluate(cfg: RunConfig, prep: PanelPrep, sel_models, final_prep: PanelPrep, final_models):
    """-> (metrics {split: {predictor: summary}}, forecasts {split: {series: dict}}, per-split per-series rows)."""
    panel, h = prep.panel, prep.panel.horizons
    mets, fcs, rows = {}, {}, {}
    if (prep.val_start < prep.test_start).any():
        f = series_forecasts(sel_models, prep, lambda i: [prep.val_start[i] - 1], lambda i: h[i],
                             lambda i: prep.test_start[i])
        rows["val"], fcs["val"] = _score(panel, f, lambda i: prep.val_start[i])
    f = series_forecasts(final_models, final_prep, lambda i: [prep.test_start[i] - 1], lambda i: h[i])
    rows["test"], fcs["test"] = _score(panel, f, lambda i: prep.test_start[i])
    for split, r in rows.items():
        if r["model"]:
            mets[split] = {k: metrics.panel_summary(v) for k, v in r.items()}
    return mets, fcs, rows


# ==== intervals ===============================================================================================
def calibration_scores(cfg: RunConfig, prep: PanelPrep, sel_models) -> dict | None:
    """Scale-free errors of the selection models and both baselines at every validation origin (v_i - 1 ..
    s_i - 2, targets < s_i only): {predictor: {series index: (N_i, h_i)}}, with {"scale": {i: scale}}."""
    if not cfg.intervals or not (prep.val_start < prep.test_start).any():
        return None
    panel, v, s = prep.panel, prep.val_start, prep.test_start
    fcs = series_forecasts(sel_models, prep, lambda i: np.arange(v[i] - 1, s[i] - 1), lambda i: panel.horizons[i],
                           lambda i: s[i])
    out = {k: {} for k in metrics.MODELS}
    out["scale"] = {}
    for i, ser in enumerate(panel.series):  # every series' scale (in the calibration space), scored or not
        sc = mase_scale(intervals.calibration_space(cfg.log, ser.y[:v[i]]), panel.season)
        out["scale"][i] = sc if sc > 0 else 1.0
    for i, fc in fcs.items():
        y, o, H = panel.series[i].y, fc.origins, fc.point.shape[1]
        sc = out["scale"][i]
        for k, p in (("model", fc.point), ("naive", naive(y, o, H)), ("seasonal_naive",
                                                                      seasonal_naive(y, o, H, panel.season))):
            out[k][i] = intervals.scale_free(cfg.log, fc.actual, p, sc)
    return out


def attach_intervals(cfg: RunConfig, cal: dict, mets: dict, fcs: dict) -> dict:
    """Test bands of the model and both baselines from the pooled validation errors; coverage (pooled over every
    test output), width and interval score (each series' divided by its MASE scale, averaged over series) into
    mets["test"]; the model's bounds into each test forecast. -> the intervals.json state."""
    test = fcs["test"]
    H = max(d["model"].size for d in test.values())
    state = {"method": "split conformal pooled across series on scale-free errors", "levels": list(cfg.intervals),
             "space": "log" if cfg.log else "scaled", "steps": H, "predictors": {}}
    for name in metrics.MODELS:
        scores = [cal[name][i] for i in sorted(cal[name])]
        st = {"counts": intervals.pooled_counts(scores, H)}
        for level in cfg.intervals:
            c = metrics.level_name(level)
            q = intervals.pooled_corrections(scores, H, level)
            st[c] = q.tolist()
            cover, widths, iscores = [], [], []
            for i, d in test.items():
                h = d["model"].size
                sc = cal["scale"][i]
                lo, up = intervals.pooled_band(cfg.log, d[name], q[:h], sc)
                if name == "model":
                    d[f"lower_{c}"], d[f"upper_{c}"] = lo, up
                r = metrics.interval_scores(d["actual"], lo, up, level)
                cover.append(((lo <= d["actual"]) & (d["actual"] <= up)))
                ms = d["scale"] if d["scale"] > 0 else math.nan
                widths.append(r[f"width_{c}"] / ms)
                iscores.append(r[f"interval_score_{c}"] / ms)
            mets["test"][name].update({f"coverage_{c}": float(np.mean(np.concatenate(cover))),
                                       f"width_{c}": _mean(widths), f"interval_score_{c}": _mean(iscores)})
        state["predictors"][name] = st
    return state


def _mean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(np.mean(v)) if v.size and not np.isnan(v).any() else math.nan


def stored_scores(cfg: RunConfig, cal: dict, fcs: dict) -> dict:
    """What predict calibrates on: per series the model's scale-free validation errors and its final model's test
    errors (observed once the test has passed), and the scale they were divided by."""
    out = {}
    for i, sc in cal["scale"].items():
        t = fcs["test"].get(i)
        test = intervals.scale_free(cfg.log, t["actual"][None, :], t["model"][None, :], sc) if t else np.zeros((0, 0))
        val = cal["model"].get(i, np.zeros((0, 0)))
        out[str(i)] = {"scale": sc, "val": val.tolist(), "test": test.tolist()}
    return out


# ==== the job =================================================================================================
def run_panel(cfg: RunConfig, *, save: bool = True, progress: bool | None = None, log=print,
              interruptible: bool = True, panel: Panel | None = None) -> PanelResult:
    """Load the panel (or use `panel`), train one global model (an ensemble of them) across every series, evaluate
    beside the baselines and (save=True) write the run folder."""
    t0 = time.perf_counter()
    be = resolve(cfg.device, cfg.dtype, verbose=not cfg.quiet)
    panel = load_panel(cfg) if panel is None else panel
    if cfg.covariates and int(panel.horizons.max()) > cfg.horizon:
        raise UserError(f"past covariates are observed only up to a forecast's origin: test horizons up to "
                        f"{int(panel.horizons.max())} are beyond the direct head (--horizon {cfg.horizon}); set "
                        f"--horizon {int(panel.horizons.max())}")
    prep = prepare_panel(cfg, panel, "select")
    out = checkpoint.checked_out(cfg, save)
    if progress is None:
        progress = not cfg.quiet and sys.stderr.isatty()
    if not cfg.quiet:
        log(describe(cfg, prep))
    sel, hists, final, refit_h, final_prep = train_members(cfg, prep, be, progress, interruptible)
    mets, fcs, rows = evaluate(cfg, prep, sel, final_prep, final)
    state = None
    cal = calibration_scores(cfg, prep, sel)
    if cal is None and cfg.intervals and not cfg.quiet:
        log("intervals: none (they are calibrated on validation errors: set --val-ratio > 0)")
    if cal is not None:
        state = attach_intervals(cfg, cal, mets, fcs)
        state["series"] = stored_scores(cfg, cal, fcs)
    res = PanelResult(cfg, mets, hists[0], None, final[0], prep, final_prep, fcs, panelio.series_table(panel, rows),
                      final, hists, refit_h, state, time.perf_counter() - t0)
    if not cfg.quiet:
        for i, h in enumerate(hists):
            who = "" if len(hists) == 1 else f"member {i + 1}/{len(hists)} (seed {cfg.seed + i}): "
            log(f"{who}{be.describe()}: {len(h.train_loss)} epochs in {h.seconds:.1f}s, best epoch {h.best_epoch} "
                f"(val loss {h.best_loss:.4g})" + (", stopped early" if h.stopped_early else "")
                + (f"; refit on the whole training part for {h.best_epoch} epochs in {refit_h[i].seconds:.1f}s"
                   if refit_h else ""))
        log(metrics.format_panel_table(mets))
        if state is not None:
            log(metrics.format_intervals({"test": mets["test"]}, cfg.intervals).rsplit("\n", 1)[0] + "\nprediction "
                "intervals: split conformal pooled across series on scale-free validation errors; width and interval "
                "score divided by each series' MASE scale (MSIS), averaged over series")
    if out is not None:
        panelio.write_panel_run(out, res, be)
        res.out_dir = out
        if not cfg.quiet:
            log(f"run folder: {out}")
    return res


def describe(cfg: RunConfig, prep: PanelPrep) -> str:
    p = prep.panel
    n, h = p.lengths, p.horizons
    hs = "/".join(str(x) for x in sorted(set(h.tolist())))
    return (f"panel {Path(p.source).name}: {len(p.names)} series of {n.min()}-{n.max()} points ({p.freq}), test "
            f"horizons {hs}, direct head {cfg.horizon}" + (" (recursive beyond)" if h.max() > cfg.horizon else "")
            + f", season {p.season}; windows train/val {prep.train.X.shape[0]}/{prep.val.X.shape[0]}"
            + (", masked targets" if prep.weighted and not cfg.scale_weight else "")
            + (", loss weighted by series scale" if cfg.scale_weight else "")
            + (", series embedding" if cfg.series_embedding else "")
            + (f", ensemble of {cfg.ensemble}" if cfg.ensemble > 1 else "") + (", refit" if cfg.refit else ""))


# ==== predict =================================================================================================
def predict_panel(run_dir, data: str | None = None, steps: int | None = None, series: str | None = None,
                  device: str = "cpu", levels=None):
    """`gru-xp predict` on a panel run folder: -> a DataFrame (series, date or step, forecast, lower_C, upper_C)
    with every series of the run (or `series`) forecast `steps` (default: each series' own test horizon) past the
    end of the run's data (or `data`, read with the run's settings)."""
    import pandas as pd

    lr = panelio.load_panel_run(run_dir, device)
    cfg = lr.config
    src = lr.meta.get("data", {}).get("source")
    if data is None and src and Path(src).is_file():
        data = src
    d = {**cfg.to_dict(), "data": data or cfg.data}
    if not (d["id_col"] or str(d["data"]).strip().lower().endswith(".tsf")):
        raise UserError(f"--data {data} is not a panel like this run's (a .tsf file, or a long CSV with the id column "
                        f"{cfg.id_col or '--id-col'}); pass one holding the run's series")
    cfg_d = from_dict(d)
    panel = load_panel(cfg_d)
    want = lr.names if series is None else [series]
    if series is not None and series not in lr.names:
        raise UserError(f"series {series!r} is not in this run ({', '.join(lr.names[:8])}"
                        f"{', ...' if len(lr.names) > 8 else ''}); pass --series with one of its names")
    predict, taus = member_predict(lr.models)
    s = intervals.settings_of(cfg, cfg.log, levels)
    frames = []
    for name in want:
        i_run = lr.names.index(name)
        ser = panel.series[panel.index(name)]
        pipe = lr.pipes[i_run]
        k = int(lr.horizons[i_run]) if steps is None else int(steps)
        if pipe.covariates and k > pipe.horizon:
            raise UserError(f"past covariates are observed only up to a forecast's origin: {k} steps is beyond the "
                            f"direct head ({pipe.horizon}); pass --horizon {pipe.horizon} or less")
        if len(ser.y) - 1 < pipe.min_anchor():
            raise UserError(f"series {name!r} has {len(ser.y)} points: too short to forecast (needs "
                            f"{pipe.min_anchor() + 1})")
        fc = intervals.forecast_paths(predict, pipe, ser.y, [len(ser.y) - 1], k, positions(pipe, ser, k), taus)
        labels = _future_labels(ser, k)
        df = pd.DataFrame({"series": name, "date" if ser.dates is not None else "step": labels,
                           "forecast": fc.point[0]})
        if s is not None:
            _predict_bands(df, s, lr.intervals, str(i_run), fc.point[0])
        frames.append(df)
    return pd.concat(frames, ignore_index=True), lr


def _future_labels(ser, k: int) -> list:
    from .data import future_labels

    return future_labels(ser, k)


def _predict_bands(df, s, state: dict | None, key: str, point) -> None:
    """lower_C/upper_C columns from the run's pooled scores (validation errors, and test errors now observed); steps
    beyond those scored are unbounded."""
    if not state or "series" not in state:
        raise UserError("this panel run has no intervals (trained with --intervals none or without validation); "
                        "pass --intervals none")
    pooled = []
    for v in state["series"].values():
        for part in ("val", "test"):
            a = np.asarray(v[part], dtype=np.float64)
            if a.size:
                pooled.append(a.reshape(len(v[part]), -1))
    scale = float(state["series"].get(key, {}).get("scale", 1.0))
    H = len(point)
    for level in s.levels:
        q = intervals.pooled_corrections(pooled, H, level)
        lo, up = intervals.pooled_band(state.get("space") == "log", point, q, scale)
        df[f"lower_{metrics.level_name(level)}"], df[f"upper_{metrics.level_name(level)}"] = lo, up
