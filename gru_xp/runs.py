"""Runs: the whole forecasting job, its run folder, and forecasts from a run folder. Usable from Python.

    run(cfg) -> RunResult          data, model, fit, metrics beside baselines, run folder (cfg.ensemble = N: N models,
                                   seeds seed..seed+N-1, each fitted and early-stopped on its own; their forecasts
                                   averaged on the original scale, after inversion)
    resume_run(dir)                continue an interrupted run from its folder (resume.py holds the state's files)
    load_run(dir) / forecast(...)  the checkpoint back, and K steps past the end of a series
    predict_run(dir, ...)          both, for `gru-xp predict`
    predict_scaled(model, X)       model outputs for windows, scaled units, host

A run folder (written atomically): model.npz, config.json, metrics.json, history.json, predictions.csv, plots,
and intervals.json (the prediction intervals' calibration state; see intervals.py).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, intervals, metrics, plots
from .backend import resolve, to_host
from .config import RunConfig, from_dict
from .covariates import check_steps, config_inputs, describe_covariates
from .data import Pipeline, Prepared, Series, actuals, future_labels, load_series, naive, prepare, seasonal_naive
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .nn.forecaster import Forecaster
from .nn.optim import OPTIMIZERS
from .resume import load_resume, resume_config, resume_files
from .train import FitState, History, fit, host_params, to_time_major


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict
    history: History
    out_dir: Path | None
    model: Forecaster  # the (first) model; with --ensemble N > 1 the first member
    data: Prepared
    predictions: dict  # split -> {"anchors", "actual", "model", "naive", "seasonal_naive", "lower_80", ...} (N, K)
    status: str = "ok"  # "ok" or "diverged" (metrics then come from the best epoch before the divergence)
    models: list = field(default_factory=list)  # every ensemble member (seeds seed, seed+1, ...); [model] if N = 1
    histories: list = field(default_factory=list)  # their histories; `history` is the first member's
    intervals: dict | None = None  # the intervals' calibration state (intervals.json); None with --intervals none


def model_spec(cfg: RunConfig, input_size: int | None = None) -> dict:
    """The Forecaster's model arguments for a config (what model.npz records and load_run passes back)."""
    spec = {"cell": cfg.cell, "input_size": config_inputs(cfg) if input_size is None else int(input_size),
            "hidden_size": cfg.hidden_size, "horizon": cfg.horizon, "num_layers": cfg.layers,
            "bidirectional": cfg.bidirectional, "dropout": cfg.dropout, "reset_after": cfg.reset_after,
            "nonlinearity": cfg.nonlinearity}
    if cfg.loss == "quantile":  # only then: older run folders keep their exact model metadata
        spec["quantiles"] = list(cfg.quantiles)
    spec.update({"loss": "mae"} if cfg.loss == "mae" else {})  # issue 18; only then, like quantiles
    return spec


def build_model(cfg: RunConfig, device=None, input_size: int | None = None, seed: int | None = None) -> Forecaster:
    """The config's Forecaster; input_size defaults to what the config's pipeline produces (n_inputs), seed to
    cfg.seed (ensemble member i uses cfg.seed + i)."""
    return Forecaster(**model_spec(cfg, input_size), device=cfg.device if device is None else device, dtype=cfg.dtype,
                      seed=cfg.seed if seed is None else int(seed))


def make_optimizer(cfg: RunConfig):
    """The config's optimizer from the registry (nn.optim.OPTIMIZERS)."""
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](cfg.lr, momentum=cfg.momentum)
    return OPTIMIZERS["adam"](cfg.lr, weight_decay=cfg.weight_decay)


def predict_outputs(model, X, chunk: int = 4096) -> np.ndarray:
    """Model outputs (N, K), or (N, K, Q) for a quantile model, for host windows X (N, L[, I]), in eval mode,
    brought to the host once per chunk; the forwards keep no backward cache (model.no_grad())."""
    Q = () if model.quantiles is None else (len(model.quantiles),)
    if len(X) == 0:
        return np.zeros((0, model.horizon) + Q)
    model.eval()
    Xd = to_time_major(model.backend, X)
    outs = []
    with model.no_grad():
        for s in range(0, Xd.shape[1], chunk):
            outs.append(to_host(model.forward(Xd[:, s:s + chunk, :])))
    return np.concatenate(outs, axis=0).astype(np.float64)


def predict_scaled(model, X, chunk: int = 4096) -> np.ndarray:
    """Point outputs (N, K) for host windows X (N, L[, I]): the model's, or a quantile model's median."""
    out = predict_outputs(model, X, chunk)
    return out if model.quantiles is None else out[..., list(model.quantiles).index(0.5)]


def member_predict(models):
    """predict(X) -> every member's outputs (what intervals.forecast_paths calls), and the quantile levels."""
    taus = tuple(models[0].quantiles or ())
    return (lambda X: [predict_outputs(m, X) for m in models]), taus


# ---- the whole job --------------------------------------------------------------------------------------------
def evaluate_splits(prep: Prepared, pred_scaled: dict) -> tuple[dict, dict]:
    """Scaled model outputs per split -> (metrics, predictions) on the original scale, beside the baselines."""
    y, pipe = prep.series.y, prep.pipeline
    K, m = pipe.horizon, pipe.season
    scale = metrics.mase_scale(y[:prep.val_start], m)
    out_m, out_p = {}, {}
    for split in ("train", "val", "test"):
        a = getattr(prep, split).anchors
        if a.size == 0:
            continue
        p = {"anchors": a, "actual": actuals(y, a, K), "model": pipe.invert(y, a, pred_scaled[split]),
             "naive": naive(y, a, K), "seasonal_naive": seasonal_naive(y, a, K, m)}
        out_p[split] = p
        out_m[split] = metrics.evaluate(p["actual"], {k: p[k] for k in metrics.MODELS}, scale)
    return out_m, out_p


def _describe(cfg: RunConfig, prep: Prepared, resume: FitState | None) -> str:
    s, pipe = prep.series, prep.pipeline
    return (f"data {Path(s.source).name if s.source != 'sine' else 'sine'} [{s.target}]: {len(s.y)} points "
            f"({s.freq}), windows train/val/test {prep.train.anchors.size}/{prep.val.anchors.size}/"
            f"{prep.test.anchors.size}, season {pipe.season}, differencing {pipe.lags or 'none'}"
            + (", log" if pipe.log else "") + (f", calendar {pipe.calendar}" if pipe.calendar else "")
            + describe_covariates(pipe)
            + (f", ensemble of {cfg.ensemble}" if cfg.ensemble > 1 else "")
            + (f", resuming at epoch {resume.epoch + 1}" if resume is not None else ""))


def run(cfg: RunConfig, *, save: bool = True, progress: bool | None = None, log=print,
        resume: FitState | None = None, interruptible: bool = True) -> RunResult:
    """Load, split, scale, train, evaluate beside the baselines, and (save=True) write the run folder.

    resume: continue an interrupted run (see `resume_run`). Divergence: the run folder is written from the best
    epoch (status "diverged"), then TrainingDiverged is raised carrying the result. Ctrl-C: the best checkpoint and
    the resume state are written, then TrainingInterrupted is raised (see `fit`)."""
    t0 = time.perf_counter()
    be = resolve(cfg.device, cfg.dtype, verbose=not cfg.quiet)
    if resume is not None and not (0 <= resume.member < cfg.ensemble and len(resume.done) == resume.member):
        raise UserError(f"the resume state does not fit this run's ensemble of {cfg.ensemble} (member "
                        f"{resume.member}, {len(resume.done)} finished); start a new run")
    prep = prepare(cfg)
    if resume is not None and resume.data_sha256 and resume.data_sha256 != prep.series.sha256:
        raise UserError(f"the data {cfg.data!r} changed since this run started (sha256 differs); restore the "
                        f"original file or start a new run")
    out = checkpoint.checked_out(cfg, save)
    if progress is None:
        progress = not cfg.quiet and sys.stderr.isatty()
    if not cfg.quiet:
        log(_describe(cfg, prep, resume))
    models, hists, diverged = _train_members(cfg, prep, be, out, t0, progress, resume, interruptible)
    refit = calibration_refit(cfg, prep, be, progress, log, interruptible) if cfg.intervals else None
    pred = {k: [predict_scaled(m, getattr(prep, k).X) for m in models] for k in ("train", "val", "test")}
    if cfg.shrink:  # selection on validation only: how far to trust the model over the naive forecast
        prep.pipeline.fit_shrink(prep.series.y, prep.val.anchors, pred["val"])
    mets, preds = evaluate_splits(prep, pred)
    state = intervals.for_run(cfg, prep, *member_predict(models), refit, mets, preds) if cfg.intervals else None
    status = "ok" if diverged is None else "diverged"
    result = RunResult(cfg, mets, hists[0], None, models[0], prep, preds, status, models, hists, state)
    if not cfg.quiet:
        if cfg.shrink:
            log(f"shrink toward naive {prep.pipeline.shrink:.3f} (fitted on validation)")
        for i, h in enumerate(hists):
            who = "" if len(hists) == 1 else f"member {i + 1}/{len(hists)} (seed {cfg.seed + i}): "
            log(f"{who}{be.describe()}: {len(h.train_loss)} epochs in {h.seconds:.1f}s, best epoch {h.best_epoch} "
                f"(val loss {h.best_loss:.4g})" + (", stopped early" if h.stopped_early else "")
                + (f", DIVERGED at epoch {h.diverged_epoch}: metrics are from the best epoch"
                   if h.diverged_epoch else ""))
        log(metrics.format_table(mets))
        if state is not None:
            log(metrics.format_intervals(mets, cfg.intervals))
    return _finish_run(cfg, result, be, out, diverged, t0, log)


def calibration_refit(cfg: RunConfig, prep: Prepared, be, progress: bool = False, log=print,
                      interruptible: bool = True):
    """The intervals' rolling-origin refit inside the pre-test data: when the main model's out-of-sample forecasts
    before the test part (origins v-1 .. s-1-K) give fewer than cfg.calibration_size step-K errors, the same
    ensemble (same seeds and settings) is fitted on the series cut at c = s - K - calibration_size + 1 (a validation
    tail as long as the main model's, its own scaler and shrink) to forecast origins c-1 .. v-2. -> (predict, pipeline,
    c, taus) as an intervals.Refit, or None (not needed, the series too short, or Ctrl-C during it: the validation
    tail alone calibrates; the models already trained are kept)."""
    K, v, s = cfg.horizon, prep.val_start, prep.test_start
    c = s - K - cfg.calibration_size + 1
    if cfg.calibration_size <= 0 or c >= v:
        return None
    try:
        pc = prepare(cfg, prep.series, points=(c - (s - v), c))
        if not cfg.quiet:
            log(f"intervals: {max(0, s - K - v + 1)} out-of-sample errors per step before the test part, "
                f"{cfg.calibration_size} wanted: refitting on the first {c} points for {v - c} more")
        models = _train_members(cfg, pc, be, None, time.perf_counter(), progress, None, interruptible)[0]
    except (UserError, TrainingDiverged, TrainingInterrupted) as e:
        e = "Ctrl-C" if isinstance(e, TrainingInterrupted) else e
        if not cfg.quiet:
            log(f"intervals: no calibration refit ({e}); calibrating on the validation tail only")
        return None
    if cfg.shrink and pc.val.anchors.size:
        pc.pipeline.fit_shrink(prep.series.y, pc.val.anchors, [predict_scaled(m, pc.val.X) for m in models])
    predict, taus = member_predict(models)
    return intervals.Refit(predict, pc.pipeline, c, taus)


def _train_members(cfg: RunConfig, prep: Prepared, be, out, t0: float, progress: bool, resume: FitState | None,
                   interruptible: bool) -> tuple[list, list, TrainingDiverged | None]:
    """Every ensemble member in turn (member i: seed + i for its initial weights and its minibatch order); the
    members a resume state says finished come back exactly as they ended. -> (models, histories, first divergence)"""
    diverged = None
    models, hists = [], []
    for i in range(cfg.ensemble):
        model = build_model(cfg, device=be, input_size=prep.pipeline.n_inputs, seed=cfg.seed + i)
        desc = cfg.name if cfg.ensemble == 1 else f"{cfg.name} {i + 1}/{cfg.ensemble}"
        if resume is not None and i < resume.member:  # finished before the interruption: exactly as it ended
            params, hist = resume.done[i]
            model.load_state_dict(params)
            model.eval()
            if hist.diverged_epoch and diverged is None:  # the message it stopped with, as without the cut
                diverged = TrainingDiverged(resume.diverged_message or f"training diverged at epoch "
                                            f"{hist.diverged_epoch} (ensemble member {i + 1})",
                                            epoch=hist.diverged_epoch, history=hist)
            models.append(model)
            hists.append(hist)
            continue
        try:
            hist = fit(model, prep.train.X, prep.train.Y, prep.val.X, prep.val.Y, optimizer=make_optimizer(cfg),
                       epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience, clip=cfg.clip,
                       tbptt=cfg.tbptt, seed=cfg.seed + i, progress=progress, desc=desc,
                       state=resume if resume is not None and i == resume.member else None,
                       interruptible=interruptible)
        except TrainingInterrupted as e:
            e.state.member = i
            e.state.done = [(host_params(m), h) for m, h in zip(models, hists)]
            e.state.diverged_message = "" if diverged is None else str(diverged)
            _save_interrupted(e, cfg, prep, be, out, t0, cfg.ensemble)
            raise
        except TrainingDiverged as e:
            if e.history is None or e.history.best_epoch == 0:
                raise
            diverged, hist = diverged or e, e.history
        models.append(model)
        hists.append(hist)
    return models, hists, diverged


def _save_interrupted(e: TrainingInterrupted, cfg: RunConfig, prep: Prepared, be, out: Path | None,
                      t0: float, n_members: int = 1) -> None:
    """A run stopped by Ctrl-C: write its best checkpoint + resume state and reword the message. In an ensemble the
    members finished before the interrupted one are saved whole, and the resume state continues from there."""
    e.state.data_sha256 = prep.series.sha256
    ep, best = e.state.epoch, e.state.history.best_epoch
    who = "" if n_members == 1 else f" of ensemble member {e.state.member + 1}/{n_members}"
    if out is None:
        e.args = (f"interrupted at epoch {ep}{who}; nothing saved (save=False)",)
        return
    d = checkpoint.failed_out(out, "interrupted")
    with _deferred_sigint():  # a second Ctrl-C must not cut the save short
        write_interrupted(d, cfg, prep, e.state, be, time.perf_counter() - t0)
    e.out_dir = d
    e.args = (f"interrupted at epoch {ep}{who}; best checkpoint (epoch {best}) and resume state saved in {d}; "
              f"resume with: gru-xp train --resume {d}",)


def _finish_run(cfg: RunConfig, result: RunResult, be, out: Path | None, diverged, t0: float, log) -> RunResult:
    if out is not None:
        if diverged is not None:
            out = checkpoint.failed_out(out, "diverged")
        with _deferred_sigint() as held:  # training is done: a Ctrl-C now must not throw the run away
            write_run(out, result, be, time.perf_counter() - t0)
        result.out_dir = out
        if held.hit and not cfg.quiet:
            log("gru-xp: Ctrl-C during the save was held off until the run folder was complete")
        if not cfg.quiet:
            log(f"run folder: {out}")
    if diverged is not None:
        where = f" in {out}" if out is not None else ""
        raise TrainingDiverged(f"{diverged}".replace("kept the best checkpoint", f"kept the best checkpoint{where}"),
                               epoch=diverged.epoch, history=diverged.history, result=result, out_dir=out)
    return result


class _deferred_sigint:
    """Hold SIGINT off while a save runs (main thread only); a Ctrl-C during it is reported after."""

    def __enter__(self):
        self.hit, self.old = False, None
        if threading.current_thread() is threading.main_thread():
            try:
                self.old = signal.signal(signal.SIGINT, lambda *a: setattr(self, "hit", True))
            except ValueError:
                self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def resume_run(run_dir, overrides: dict | None = None, **kw) -> RunResult:
    """Continue an interrupted run from its folder: its saved config (only resume.RESUME_FLAGS may be overridden), its
    parameters, optimizer, RNG and early-stopping state; on completion the run folder is written in place of the
    partial one (or to overrides["out"])."""
    cfg, st = load_resume(run_dir)
    return run(resume_config(cfg, st, overrides, run_dir), resume=st, **kw)


# ---- the run folder -------------------------------------------------------------------------------------------
def _versions(be) -> dict:
    import pandas

    from . import __version__

    v = {"gru_xp": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "pandas": pandas.__version__}
    if be.name == "cupy":
        import cupy

        v["cupy"] = cupy.__version__
    return v


def _meta(cfg: RunConfig, prep: Prepared, be, seconds: float, hist: History, status: str) -> dict:
    s = prep.series
    data_info = {"source": s.source, "sha256": s.sha256, "target": s.target, "date_column": s.date_col,
                 "points": int(len(s.y)), "frequency": s.freq, "first": s.labels()[0], "last": s.labels()[-1],
                 "val_start": prep.val_start, "test_start": prep.test_start}
    model_kw = model_spec(cfg, prep.pipeline.n_inputs)
    if cfg.ensemble > 1:  # model.npz then holds members m0. .. m{N-1}. (format version 2)
        model_kw["ensemble"] = cfg.ensemble
    run_info = {"device": be.describe(), "backend": be.name, "dtype": be.dtype_name, "versions": _versions(be),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 3),
                "epochs_run": len(hist.train_loss), "best_epoch": hist.best_epoch,
                "stopped_early": hist.stopped_early, "command": " ".join(sys.argv), "status": status,
                "diverged_epoch": hist.diverged_epoch, "resumed_at": hist.resumed_at}
    return {"model": model_kw, "pipeline": prep.pipeline.to_dict(), "config": cfg.to_dict(), "data": data_info,
            "run": run_info}


def _history_json(hist: History, status: str, members: list | None = None) -> dict:
    """The (first) model's history; with an ensemble also every member's under "members"."""
    d = {**dataclasses.asdict(hist), "status": status}
    if members is not None and len(members) > 1:
        d["members"] = [dataclasses.asdict(h) for h in members]
    return metrics.jsonable(d)


def member_params(params: list) -> dict:
    """Arrays to save from each member's {name: array}: a single model's own names; an ensemble's prefixed "m{i}."
    per member."""
    if len(params) == 1:
        return dict(params[0])
    return {f"m{i}.{k}": v for i, p in enumerate(params) for k, v in p.items()}


def _predictions_csv(prep: Prepared, preds: dict) -> str:
    import pandas as pd

    labels = prep.series.labels()
    K = prep.pipeline.horizon
    rows = []
    for split, p in preds.items():
        for h in range(K):
            for i, t in enumerate(p["anchors"]):
                rows.append((labels[t + h + 1], split, h + 1, p["actual"][i, h], p["model"][i, h], p["naive"][i, h],
                             p["seasonal_naive"][i, h]))
    col0 = "date" if prep.series.dates is not None else "step"
    df = pd.DataFrame(rows, columns=[col0, "split", "horizon", "actual", "predicted", "naive", "seasonal_naive"])
    bounds = [c for c in next(iter(preds.values()), {}) if c.startswith(("lower_", "upper_"))]
    for c in bounds:  # the intervals' bounds, in the rows' order (split, step, origin); empty where none was issued
        df[c] = np.concatenate([p[c][:, h] for p in preds.values() for h in range(K)])
    if K == 1:
        df = df.drop(columns="horizon")
    return df.to_csv(index=False, float_format="%.8g")


def write_run(out: Path, r: RunResult, be, seconds: float) -> None:
    cfg, prep = r.config, r.data
    meta = _meta(cfg, prep, be, seconds, r.history, r.status)
    models = r.models or [r.model]
    if len(models) > 1:
        meta["run"]["members"] = [{"seed": cfg.seed + i, "epochs_run": len(h.train_loss), "best_epoch": h.best_epoch,
                                   "stopped_early": h.stopped_early} for i, h in enumerate(r.histories)]
    with checkpoint.atomic_dir(out) as tmp:
        checkpoint.save(tmp / "model.npz", member_params([m.params for m in models]), meta)
        checkpoint.write_json(tmp / "config.json", metrics.jsonable({**meta, "format_version": checkpoint.FORMAT_VERSION}))
        checkpoint.write_json(tmp / "metrics.json", metrics.jsonable(r.metrics))
        checkpoint.write_json(tmp / "history.json", _history_json(r.history, r.status, r.histories))
        checkpoint.write_text(tmp / "predictions.csv", _predictions_csv(prep, r.predictions))
        if r.intervals is not None:
            checkpoint.write_json(tmp / "intervals.json", metrics.jsonable(r.intervals))
        if cfg.plots:
            plots.run_plots(tmp, prep, r.predictions, r.history, cfg.intervals)
        if cfg.diagnostics:  # on (up to 256) validation windows, else training windows
            from .diagnostics import write_diagnostics

            split = prep.val if prep.val.X.shape[0] else prep.train
            write_diagnostics(r.model, to_time_major(be, split.X[:256]), be.asarray(split.Y[:256]), tmp,
                              tbptt=cfg.tbptt)


def write_interrupted(out: Path, cfg: RunConfig, prep: Prepared, st: FitState, be, seconds: float) -> None:
    """A partial run folder: model.npz (best epoch so far, loadable by predict), config.json, history.json, and the
    resume state resume.npz (arrays + JSON metadata, the one read back) with a readable copy resume.json."""
    meta = _meta(cfg, prep, be, seconds, st.history, "interrupted")
    meta["run"]["epochs_run"] = st.epoch
    best = st.best_params if st.best_params is not None else st.params
    # model.npz: the members there are so far (the finished ones, then the interrupted one's best epoch)
    members = [p for p, _ in st.done] + [best]
    meta["model"].pop("ensemble", None)
    if len(members) > 1:
        meta["model"]["ensemble"] = len(members)
    if cfg.ensemble > 1:  # the run fields above describe the interrupted member, model.npz holds all so far
        meta["run"]["interrupted_member"], meta["run"]["members_saved"] = st.member + 1, len(members)
    arrays, rmeta = resume_files(st, cfg)
    h = st.history
    with checkpoint.atomic_dir(out) as tmp:
        checkpoint.save(tmp / "model.npz", member_params(members), meta)
        checkpoint.write_json(tmp / "config.json", metrics.jsonable({**meta, "format_version": checkpoint.FORMAT_VERSION}))
        checkpoint.write_json(tmp / "history.json",
                              _history_json(st.history, "interrupted", [d for _, d in st.done] + [st.history]))
        checkpoint.save(tmp / "resume.npz", arrays, rmeta)
        checkpoint.write_json(tmp / "resume.json", metrics.jsonable(
            {"format_version": checkpoint.FORMAT_VERSION, **rmeta,
             "history": {"train_loss": h.train_loss, "val_loss": h.val_loss},
             "note": "readable copy; gru-xp train --resume reads resume.npz"}))


# ---- back from a run folder -----------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    model: Forecaster  # the (first) model
    pipeline: Pipeline
    config: RunConfig
    meta: dict
    models: list = field(default_factory=list)  # every ensemble member; [model] for a single model
    folder: Path | None = None  # the run folder it was loaded from


def _member_states(params: dict, n_members: int) -> list[dict]:
    """model.npz's arrays split into each member's state dict (format 1 files: one model, unprefixed names)."""
    if n_members == 1:
        return [params]
    states = [{k[len(f"m{i}."):]: v for k, v in params.items() if k.startswith(f"m{i}.")} for i in range(n_members)]
    if sum(len(st) for st in states) != len(params) or not all(states):
        raise ValueError("the arrays do not split into the ensemble's members")
    return states


def load_run(run_dir, device: str = "cpu") -> LoadedRun:
    """The model of a run folder on `device` (whatever it was trained on), with its pipeline and config."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run folder {d} not found; pass --run DIR written by 'gru-xp train'")
    other = {"classify": f"a classifier (written by 'gru-xp classify'), not a forecasting run; classify with 'gru-xp "
             f"predict --run {d} --text ...' or '--data FILE.ts'", "panel": f"a panel run: forecast with 'gru-xp "
             f"predict --run {d} [--series NAME]'"}  # issues 17, 18: say which command reads the folder
    if checkpoint.run_kind(d) in other:
        raise UserError(f"run folder {d} is {other[checkpoint.run_kind(d)]}")
    params, meta = checkpoint.load(d / "model.npz")
    _check_consistent(d, meta)
    try:
        cfg = from_dict(meta["config"])
        pipe = Pipeline.from_dict(meta["pipeline"])
        spec = dict(meta["model"])
        n_members = int(spec.pop("ensemble", 1))
        if n_members < 1:
            raise ValueError(f"ensemble of {n_members} models")
        if int(spec["input_size"]) != pipe.n_inputs:
            raise ValueError(f"input_size {spec['input_size']} but the pipeline makes {pipe.n_inputs} inputs")
        be = resolve(device, cfg.dtype)
        models = [Forecaster(**spec, device=be, dtype=cfg.dtype, seed=0) for _ in range(n_members)]
        states = _member_states(params, n_members)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"run folder {d} has corrupt metadata ({type(e).__name__}: {e}); retrain with 'gru-xp train'") \
            from None
    for m, st in zip(models, states):
        m.load_state_dict(st)
        m.eval()
    return LoadedRun(models[0], pipe, cfg, meta, models, d)


def _check_consistent(d: Path, meta: dict) -> None:
    """config.json and model.npz of one run folder must describe the same model (a model.npz copied in from another
    run is refused rather than silently used with the wrong settings)."""
    try:
        with open(d / "config.json", encoding="utf-8") as f:
            cj = json.load(f)
        saved, have = cj["model"], meta["model"]
        if not (isinstance(saved, dict) and isinstance(have, dict)):
            return
    except (OSError, ValueError, KeyError, TypeError):
        return  # model.npz is the source of truth; config.json is the readable copy
    diff = [k for k in sorted(set(saved) | set(have)) if saved.get(k) != have.get(k)]
    if diff:
        k = diff[0]
        raise UserError(f"run folder {d} is inconsistent: config.json has {k}={saved.get(k)!r} but model.npz has "
                        f"{k}={have.get(k)!r} (a model.npz from another run?); restore the run's own files or retrain")


def forecast(model, pipe: Pipeline, y, steps: int, series: Series | None = None) -> np.ndarray:
    """`steps` values past the end of y (original scale): the direct K-step head, applied recursively (its
    forecasts appended to the history) when steps > K. `model`: a Forecaster, or a list of them (an ensemble: their
    forecasts averaged on the original scale at every step). With calendar features the phases of the future
    positions come from `series` (its dates continued at its frequency; y must be series.y), or from the row
    index when the pipeline's calendar is the index."""
    return forecast_from_end(model, pipe, y, steps, series)[0].point[0]


def forecast_from_end(model, pipe: Pipeline, y, steps: int, series: Series | None = None) -> tuple:
    """forecast's work: -> (intervals.Forecasts from the one origin len(y) - 1, with a quantile model's level paths
    too; the calendar phases it used, or None)."""
    y = np.asarray(y, dtype=np.float64)
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if len(y) - 1 < pipe.min_anchor():
        raise UserError(f"series of {len(y)} points is too short to forecast: this model needs at least "
                        f"{pipe.min_anchor() + 1} (window {pipe.seq_length}, differencing {pipe.lookback})")
    phase = None
    if pipe.positional:  # calendar features, covariates (issue 18)
        total = len(y) + int(steps) + pipe.horizon + 1  # every position an input step may be aligned to
        if series is not None:
            phase = pipe.phases(series, total)
        elif pipe.calendar == "index" and not (pipe.covariates or pipe.future_covariates):
            phase = np.arange(total, dtype=np.float64)
        else:
            raise UserError(f"this model uses calendar features ({pipe.calendar}): pass the series with its dates"
                            if pipe.calendar else "this model uses covariates: pass the series with its columns")
    check_steps(pipe, steps)
    predict, taus = member_predict(models)
    return intervals.forecast_paths(predict, pipe, y, [len(y) - 1], int(steps), phase, taus), phase


def predict_run(run_dir, data: str | None = None, steps: int | None = None, device: str = "cpu") -> tuple:
    """-> (labels, forecast, series, loaded run) for `steps` (default: the trained horizon) past the end of the run's
    data (or `data`, read with the run's target/date settings)."""
    lr = load_run(run_dir, device)
    cfg = lr.config
    if data is None:  # the run's own data, by the absolute path it was read from when that still exists
        src = lr.meta.get("data", {}).get("source")
        if src and src != "sine" and Path(src).is_file():
            data = src
    if data is not None:
        cfg = from_dict({**cfg.to_dict(), "data": data})
    series: Series = load_series(cfg)
    k = lr.pipeline.horizon if steps is None else int(steps)
    if k < 1:
        raise UserError(f"--horizon must be at least 1, got {k}")
    f = forecast(lr.models or [lr.model], lr.pipeline, series.y, k, series=series)
    return future_labels(series, k), f, series, lr


def predict_bands(lr: LoadedRun, series: Series, steps: int, levels=None):
    """Prediction intervals of predict_run's forecast (`steps` past the end of `series`): intervals.Bands with
    (1, steps) bounds per level, or None with intervals off (the run's --intervals none and no `levels`). Calibrated
    on the run's out-of-sample forecasts from every origin from its validation start to the end of `series`
    (recursive ones beyond the trained horizon) and its stored calibration refit (intervals.json)."""
    s = intervals.settings_of(lr.config, lr.pipeline.log, levels)
    if s is None:
        return None
    state = None if lr.folder is None else intervals.read_state(lr.folder / "intervals.json", series.y, steps)
    models = lr.models or [lr.model]
    final, phase = forecast_from_end(models, lr.pipeline, series.y, steps, series)
    data = lr.meta.get("data", {})
    v, st = int(data.get("val_start", 0)), int(data.get("test_start", 0))
    return intervals.for_predict(s, *member_predict(models), lr.pipeline, series, final, state, v, st, phase)
