"""Training and forecasting, usable from Python without the CLI.

    run(cfg) -> RunResult          the whole job: data, model, fit, metrics beside baselines, run folder
                                   (cfg.ensemble = N: N models, seeds seed..seed+N-1, each fitted and early-stopped
                                   on its own; their forecasts averaged on the original scale, after inversion)
    fit(model, X, Y, Xv, Yv, ...)  the loop: minibatches on device, early stopping, best state restored
    predict_scaled(model, X)       model outputs for windows, scaled units, host
    load_run(dir) / forecast(...)  the checkpoint back, and K steps past the end of a series

Device discipline: X/Y are moved to the device once; a batch is an index-take on device; the batch loop never
syncs (losses accumulate as 0-d device arrays); one device->host transfer per epoch reads train and val loss.
"""
from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, metrics
from .backend import resolve, to_host
from .config import RunConfig, from_dict
from .data import n_inputs as data_n_inputs
from .data import (Pipeline, Prepared, Series, actuals, future_labels, load_series, naive, prepare,
                   seasonal_naive)
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .nn.forecaster import Forecaster
from .nn.optim import OPTIMIZERS, clip_grad_norm


@dataclass
class History:
    train_loss: list = field(default_factory=list)  # per epoch, scaled MSE (mean over samples)
    val_loss: list = field(default_factory=list)  # per epoch (NaN when there is no validation set)
    best_epoch: int = 0  # 1-based epoch whose parameters were restored
    best_loss: float = math.inf  # its selection loss (validation, else train)
    stopped_early: bool = False
    seconds: float = 0.0
    diverged_epoch: int = 0  # the epoch whose loss was NaN/inf (0 = none); training stopped at its end
    resumed_at: int = 0  # the first epoch run after `--resume` (0 = not resumed)


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict
    history: History
    out_dir: Path | None
    model: Forecaster  # the (first) model; with --ensemble N > 1 the first member
    data: Prepared
    predictions: dict  # split -> {"anchors", "actual", "model", "naive", "seasonal_naive"} (N, K) original scale
    status: str = "ok"  # "ok" or "diverged" (metrics then come from the best epoch before the divergence)
    models: list = field(default_factory=list)  # every ensemble member (seeds seed, seed+1, ...); [model] if N = 1
    histories: list = field(default_factory=list)  # their histories; `history` is the first member's


@dataclass
class FitState:
    """Everything `fit` needs to continue after `epoch` exactly as if it had never stopped (host data only)."""

    epoch: int  # last completed epoch (1-based); training continues at epoch + 1
    params: dict  # {name: host array}: the parameters after that epoch
    best_params: dict | None  # {name: host array}: the best epoch's parameters so far
    history: History
    bad_epochs: int  # early-stopping counter
    optimizer: dict  # {"kind": "adam"|"sgd", "t": steps, "arrays": {"NAME/m", "NAME/v" | "NAME/momentum": array}}
    shuffle_rng: dict  # numpy bit_generator.state of the minibatch shuffler
    dropout_rng: dict  # numpy bit_generator.state of the model's dropout generator (model.rnn._rng)
    data_sha256: str = ""  # the series it was trained on (checked on resume)
    member: int = 0  # an ensemble's member that was interrupted (0 for a single model)
    done: list = field(default_factory=list)  # [(params {name: host array}, History)] of the members before it
    diverged_message: str = ""  # the first of those that diverged: its message (the run ends with it)


def build_model(cfg: RunConfig, device=None, input_size: int | None = None, seed: int | None = None) -> Forecaster:
    """The config's Forecaster; input_size defaults to what the config's pipeline produces (n_inputs), seed to
    cfg.seed (ensemble member i uses cfg.seed + i)."""
    return Forecaster(cfg.cell, data_n_inputs(cfg.calendar) if input_size is None else int(input_size), cfg.hidden_size,
                      cfg.horizon, num_layers=cfg.layers, bidirectional=cfg.bidirectional, dropout=cfg.dropout,
                      reset_after=cfg.reset_after, device=cfg.device if device is None else device, dtype=cfg.dtype,
                      seed=cfg.seed if seed is None else int(seed))


def make_optimizer(cfg: RunConfig):
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](cfg.lr, momentum=cfg.momentum)
    return OPTIMIZERS["adam"](cfg.lr, weight_decay=cfg.weight_decay)


def _time_major(be, X):
    """host (N, L, I) -> device (L, N, I), once."""
    X = np.asarray(X, dtype=be.np_dtype)
    if X.ndim == 2:
        X = X[..., None]
    return be.asarray(np.ascontiguousarray(np.transpose(X, (1, 0, 2))))


# ---- optimizer state <-> host arrays (resume) ------------------------------------------------------------------
def _host_copy(a) -> np.ndarray:
    return np.array(to_host(a), copy=True)


def optimizer_state(opt) -> dict:
    """The optimizer's state as host arrays: Adam (m, v) per parameter, SGD momentum buffers, and the step t."""
    kind = {"Adam": "adam", "SGD": "sgd"}.get(type(opt).__name__, type(opt).__name__)
    arrays = {}
    for k, v in opt.state.items():
        if isinstance(v, tuple):
            arrays[f"{k}/m"], arrays[f"{k}/v"] = _host_copy(v[0]), _host_copy(v[1])
        else:
            arrays[f"{k}/momentum"] = _host_copy(v)
    return {"kind": kind, "t": int(opt.t), "arrays": arrays}


def restore_optimizer(opt, st: dict, be) -> None:
    kind = {"Adam": "adam", "SGD": "sgd"}.get(type(opt).__name__, type(opt).__name__)
    if st.get("kind") != kind:
        raise UserError(f"resume state holds a {st.get('kind')!r} optimizer, this run uses {kind!r}; "
                        f"resume with the saved config")
    state: dict = {}
    parts: dict = {}
    for key, a in st["arrays"].items():
        name, _, part = key.rpartition("/")
        parts.setdefault(name, {})[part] = be.asarray(np.array(a, copy=True))
    for name, p in parts.items():
        if "momentum" in p:
            state[name] = p["momentum"]
        elif "m" in p and "v" in p:
            state[name] = (p["m"], p["v"])
        else:
            raise UserError(f"resume state has an incomplete optimizer entry for {name!r}; start a new run")
    opt.state, opt.t = state, int(st["t"])


# ---- Ctrl-C: finish the epoch, then stop ------------------------------------------------------------------------
TEST_SIGINT_ENV = "GRU_XP_TEST_SIGINT_AT_EPOCH"  # test hook: send ourselves SIGINT during epoch E ("E"), or
#                                                   during epoch E of the fit whose seed is S ("E@S": one member)


def _hook_epoch(seed: int) -> int:
    hook = os.environ.get(TEST_SIGINT_ENV, "").strip()
    epoch, _, want = hook.partition("@")
    if not epoch.isdigit() or (want and not (want.strip().lstrip("-").isdigit() and int(want) == seed)):
        return 0
    return int(epoch)


class _SigintLatch:
    """While training: the first SIGINT only sets `hit` (the epoch in progress finishes, then fit stops and saves);
    a second SIGINT raises KeyboardInterrupt at once (abort without saving). Only in the main thread."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit, self.quiet, self._old = False, quiet, None

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print(("" if self.quiet else "\n") + "gru-xp: Ctrl-C: finishing this epoch, then saving the best checkpoint and a resume state "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # not the main interpreter thread after all
                self.enabled = False
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.default_int_handler)
        return False

    def poke(self):
        """The test hook: a real SIGINT through the real handler (or the flag, off the main thread)."""
        if self.enabled:
            signal.raise_signal(signal.SIGINT)
        else:
            self.hit = True


def fit(model: Forecaster, X, Y, X_val=None, Y_val=None, *, optimizer=None, epochs: int = 100, batch_size: int = 32,
        patience: int = 0, clip: float = 0.0, tbptt: int = 0, seed: int = 0, progress: bool = True,
        desc: str = "train", state: FitState | None = None, interruptible: bool = True) -> History:
    """Train `model` in place; the parameters of the best epoch (validation loss, else training loss) are restored.

    X (N, L[, I]) and Y (N, K) are host arrays in model units; X_val/Y_val likewise or None.
    state: continue from a FitState (saved by an interrupted fit) up to `epochs` in total; with the same data,
        settings and backend the result is bit-identical to a run that was never interrupted.
    Divergence (train or validation loss NaN/inf): training stops at the end of that epoch, the best parameters so
        far are restored and TrainingDiverged (a UserError) is raised carrying the history.
    Ctrl-C (interruptible, main thread): the epoch in progress finishes, the best parameters are restored and
        TrainingInterrupted (a KeyboardInterrupt) is raised carrying the FitState to resume from.
    """
    be = model.backend
    xp = be.xp
    optimizer = optimizer if optimizer is not None else OPTIMIZERS["adam"](1e-3)
    Xd, Yd = _time_major(be, X), be.asarray(np.asarray(Y, dtype=be.np_dtype))  # (L, N, I), (N, K)
    N = int(Yd.shape[0])
    if N < 1:
        raise UserError("no training windows; use a longer series or a smaller --seq-length/--horizon")
    has_val = X_val is not None and len(X_val) > 0
    if has_val:
        Xv, Yv = _time_major(be, X_val), be.asarray(np.asarray(Y_val, dtype=be.np_dtype))
    bs = N if batch_size <= 0 or batch_size >= N else int(batch_size)
    starts = list(range(0, N, bs))
    rng = np.random.default_rng(seed)  # host randomness for shuffling
    hist = History()
    best_state = None
    bad_epochs = 0
    first = 1
    if state is not None:  # continue exactly where an interrupted fit stopped
        model.load_state_dict(state.params)
        restore_optimizer(optimizer, state.optimizer, be)
        try:
            rng.bit_generator.state = state.shuffle_rng
            model.rnn._rng.bit_generator.state = state.dropout_rng
        except (TypeError, ValueError, KeyError) as e:
            raise UserError(f"resume state has a corrupt random-generator state ({e}); start a new run") from None
        h = state.history
        hist = History(list(h.train_loss), list(h.val_loss), h.best_epoch, h.best_loss, h.stopped_early, h.seconds,
                       h.diverged_epoch, state.epoch + 1)
        best_state = None if state.best_params is None else {k: np.array(v, copy=True)
                                                             for k, v in state.best_params.items()}
        bad_epochs, first = int(state.bad_epochs), state.epoch + 1
    seconds_before = hist.seconds
    hook_epoch = _hook_epoch(seed)
    t_start = time.perf_counter()

    def restore_best():
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        hist.seconds = seconds_before + time.perf_counter() - t_start

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=first - 1, desc=desc, unit="epoch", leave=True, dynamic_ncols=True,
                   file=sys.stderr)
    latch = _SigintLatch(interruptible, quiet=not progress)
    try:
        with latch:
            for epoch in range(first, epochs + 1):
                model.train()
                total = None
                if bs < N:
                    perm = xp.asarray(rng.permutation(N), device=be.device)  # host permutation, moved once per epoch
                for s in starts:
                    if bs < N:
                        idx = perm[s:s + bs]
                        xb, yb = xp.take(Xd, idx, axis=1), xp.take(Yd, idx, axis=0)
                    else:
                        xb, yb = Xd, Yd
                    loss = model.loss_and_grads(xb, yb, tbptt=tbptt)
                    if clip > 0:
                        clip_grad_norm(xp, model.grads, clip)
                    optimizer.step(xp, model.params, model.grads)
                    part = loss * int(yb.shape[0])
                    total = part if total is None else total + part
                    if epoch == hook_epoch and s == starts[0]:
                        latch.poke()
                train_loss = total / N
                if has_val:
                    model.eval()
                    pv = model.forward(Xv)
                    d = pv - Yv
                    val_loss = xp.mean(d * d)
                    pair = to_host(xp.stack([train_loss, val_loss]))  # the one sync of the epoch
                    tl, vl = float(pair[0]), float(pair[1])
                else:
                    tl, vl = float(to_host(train_loss)), math.nan
                hist.train_loss.append(tl)
                hist.val_loss.append(vl)
                sel = vl if has_val else tl
                diverged = not math.isfinite(tl) or (has_val and not math.isfinite(vl))
                if not diverged and sel < hist.best_loss:
                    snap = {k: _host_copy(v) for k, v in model.params.items()}  # host copy
                    if all(np.isfinite(a).all() for a in snap.values()):
                        hist.best_loss, hist.best_epoch, bad_epochs = sel, epoch, 0
                        best_state = snap
                    else:  # finite loss before the last update, non-finite parameters after it
                        diverged = True
                elif not diverged:
                    bad_epochs += 1
                if diverged:
                    hist.diverged_epoch = epoch
                    restore_best()
                    which, val = ("train", tl) if not math.isfinite(tl) else ("validation", vl)
                    what = f"training diverged ({which} loss {val}) at epoch {epoch}"
                    fix = "lower --lr, set --clip 1, or use --optimizer adam"
                    if best_state is None:
                        raise TrainingDiverged(f"{what}, before any epoch with a finite loss; nothing was saved; "
                                               f"{fix}", epoch=epoch, history=hist)
                    raise TrainingDiverged(f"{what}; kept the best checkpoint (epoch {hist.best_epoch}, loss "
                                           f"{hist.best_loss:.4g}); {fix}", epoch=epoch, history=hist)
                if bar is not None:
                    bar.set_postfix_str(f"train {tl:.4g}  val {vl:.4g}  best {hist.best_epoch}", refresh=False)
                    bar.update(1)
                if patience and bad_epochs >= patience:
                    hist.stopped_early = True
                    break
                if latch.hit and epoch < epochs:  # the epoch's bookkeeping is done: stop here, resumable
                    st = FitState(epoch, {k: _host_copy(v) for k, v in model.params.items()}, best_state, hist,
                                  bad_epochs, optimizer_state(optimizer), rng.bit_generator.state,
                                  model.rnn._rng.bit_generator.state)
                    restore_best()
                    st.history.seconds = hist.seconds
                    raise TrainingInterrupted(f"interrupted at epoch {epoch}", state=st)
    finally:
        if bar is not None:
            bar.close()
    restore_best()
    return hist


def predict_scaled(model: Forecaster, X, chunk: int = 4096) -> np.ndarray:
    """Model outputs (N, K) for host windows X (N, L[, I]), in eval mode, brought to the host once per chunk."""
    if len(X) == 0:
        return np.zeros((0, model.horizon))
    model.eval()
    be = model.backend
    Xd = _time_major(be, X)
    outs = []
    for s in range(0, Xd.shape[1], chunk):
        outs.append(to_host(model.forward(Xd[:, s:s + chunk, :])))
    return np.concatenate(outs, axis=0).astype(np.float64)


# ---- the whole job --------------------------------------------------------------------------------------------
def _versions(be) -> dict:
    import pandas

    from . import __version__

    v = {"gru_xp": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "pandas": pandas.__version__}
    if be.name == "cupy":
        import cupy

        v["cupy"] = cupy.__version__
    return v


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
    if K == 1:
        df = df.drop(columns="horizon")
    return df.to_csv(index=False, float_format="%.8g")


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def failed_out(out: Path, status: str) -> Path:
    """Where a diverged or interrupted run is written: `out` itself unless it holds a completed run (a failed run
    never replaces a good run folder), else the sibling OUT-<status> (or OUT-<status>-<timestamp>)."""
    out = Path(out)
    cands = [out, out.with_name(f"{out.name}-{status}"),
             out.with_name(f"{out.name}-{status}-{time.strftime('%Y%m%d-%H%M%S')}")]
    for c in cands:
        if not c.exists() or (checkpoint.run_status(c) not in (None, "ok")) or (c.is_dir() and not any(c.iterdir())):
            return c
    return cands[-1]


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
    out = (Path(cfg.out) if cfg.out else default_out(cfg)) if save else None
    if out is not None:
        checkpoint.check_out(out)  # before hours of training, not after
    if progress is None:
        progress = not cfg.quiet and sys.stderr.isatty()
    s = prep.series
    if not cfg.quiet:
        log(f"data {Path(s.source).name if s.source != 'sine' else 'sine'} [{s.target}]: {len(s.y)} points "
            f"({s.freq}), windows train/val/test {prep.train.anchors.size}/{prep.val.anchors.size}/"
            f"{prep.test.anchors.size}, season {prep.pipeline.season}, differencing {prep.pipeline.lags or 'none'}"
            + (", log" if prep.pipeline.log else "")
            + (f", calendar {prep.pipeline.calendar}" if prep.pipeline.calendar else "")
            + (f", ensemble of {cfg.ensemble}" if cfg.ensemble > 1 else "")
            + (f", resuming at epoch {resume.epoch + 1}" if resume is not None else ""))
    diverged = None
    models, hists = [], []
    for i in range(cfg.ensemble):  # member i: seed + i for its initial weights and its minibatch order
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
            hist = _fit_member(cfg, prep, model, cfg.seed + i, progress, desc,
                               resume if resume is not None and i == resume.member else None, interruptible)
        except TrainingInterrupted as e:
            e.state.member = i
            e.state.done = [({k: _host_copy(v) for k, v in m.params.items()}, h) for m, h in zip(models, hists)]
            e.state.diverged_message = "" if diverged is None else str(diverged)
            _save_interrupted(e, cfg, prep, be, out, t0, cfg.ensemble)
            raise
        except TrainingDiverged as e:
            if e.history is None or e.history.best_epoch == 0:
                raise
            diverged, hist = diverged or e, e.history
        models.append(model)
        hists.append(hist)
    model, hist = models[0], hists[0]
    pred = {k: [predict_scaled(m, getattr(prep, k).X) for m in models] for k in ("train", "val", "test")}
    if cfg.shrink:  # selection on validation only: how far to trust the model over the naive forecast
        prep.pipeline.fit_shrink(prep.series.y, prep.val.anchors, pred["val"])
    mets, preds = evaluate_splits(prep, pred)
    status = "ok" if diverged is None else "diverged"
    result = RunResult(cfg, mets, hist, None, model, prep, preds, status, models, hists)
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
    return _finish_run(cfg, result, be, out, diverged, hist, t0, log)


def _fit_member(cfg: RunConfig, prep: Prepared, model: Forecaster, seed: int, progress: bool, desc: str,
                resume: FitState | None, interruptible: bool) -> History:
    return fit(model, prep.train.X, prep.train.Y, prep.val.X, prep.val.Y, optimizer=make_optimizer(cfg),
               epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience, clip=cfg.clip,
               tbptt=cfg.tbptt, seed=seed, progress=progress, desc=desc, state=resume,
               interruptible=interruptible)


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
    d = failed_out(out, "interrupted")
    with _deferred_sigint():  # a second Ctrl-C must not cut the save short
        write_interrupted(d, cfg, prep, e.state, be, time.perf_counter() - t0)
    e.out_dir = d
    e.args = (f"interrupted at epoch {ep}{who}; best checkpoint (epoch {best}) and resume state saved in {d}; "
              f"resume with: gru-xp train --resume {d}",)



def _finish_run(cfg: RunConfig, result: RunResult, be, out: Path | None, diverged, hist: History, t0: float,
                log) -> RunResult:
    if out is not None:
        if diverged is not None:
            out = failed_out(out, "diverged")
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


def _meta(cfg: RunConfig, prep: Prepared, be, seconds: float, hist: History, status: str) -> dict:
    s = prep.series
    data_info = {"source": s.source, "sha256": s.sha256, "target": s.target, "date_column": s.date_col,
                 "points": int(len(s.y)), "frequency": s.freq, "first": s.labels()[0], "last": s.labels()[-1],
                 "val_start": prep.val_start, "test_start": prep.test_start}
    model_kw = {"cell": cfg.cell, "input_size": prep.pipeline.n_inputs, "hidden_size": cfg.hidden_size, "horizon": cfg.horizon,
                "num_layers": cfg.layers, "bidirectional": cfg.bidirectional, "dropout": cfg.dropout,
                "reset_after": cfg.reset_after}
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
    d = {"train_loss": hist.train_loss, "val_loss": hist.val_loss, "best_epoch": hist.best_epoch,
         "status": status, "diverged_epoch": hist.diverged_epoch, "resumed_at": hist.resumed_at}
    if members is not None and len(members) > 1:
        d["members"] = [{"train_loss": h.train_loss, "val_loss": h.val_loss, "best_epoch": h.best_epoch,
                         "stopped_early": h.stopped_early, "diverged_epoch": h.diverged_epoch} for h in members]
    return metrics.jsonable(d)


def member_params(params: list) -> dict:
    """Arrays to save from each member's {name: array}: a single model's own names; an ensemble's prefixed "m{i}."
    per member."""
    if len(params) == 1:
        return dict(params[0])
    return {f"m{i}.{k}": v for i, p in enumerate(params) for k, v in p.items()}


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
        if cfg.plots:
            _write_plots(tmp, r)
        if cfg.diagnostics:  # on (up to 256) validation windows, else training windows
            from .diagnostics import write_diagnostics

            split = prep.val if prep.val.X.shape[0] else prep.train
            write_diagnostics(r.model, _time_major(be, split.X[:256]), be.asarray(split.Y[:256]), tmp, tbptt=cfg.tbptt)


# ---- interrupted runs: best checkpoint + resume state ----------------------------------------------------------
RESUME_KIND = "gru-xp resume state"
RESUME_FLAGS = ("epochs", "patience", "device", "out", "quiet", "plots", "diagnostics")


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
    arrays = {**{f"param/{k}": v for k, v in st.params.items()},
              **{f"best/{k}": v for k, v in (st.best_params or {}).items()},
              **{f"opt/{k}": v for k, v in st.optimizer["arrays"].items()},
              "hist/train_loss": np.asarray(st.history.train_loss, dtype=np.float64),
              "hist/val_loss": np.asarray(st.history.val_loss, dtype=np.float64)}
    for j, (p, dh) in enumerate(st.done):
        arrays.update({f"done/{j}.{k}": v for k, v in p.items()})
        arrays[f"donehist/{j}.train_loss"] = np.asarray(dh.train_loss, dtype=np.float64)
        arrays[f"donehist/{j}.val_loss"] = np.asarray(dh.val_loss, dtype=np.float64)
    h = st.history
    rmeta = {"kind": RESUME_KIND, "epoch": st.epoch, "bad_epochs": st.bad_epochs,
             "best_epoch": h.best_epoch, "best_loss": h.best_loss if math.isfinite(h.best_loss) else None,
             "stopped_early": h.stopped_early, "seconds": h.seconds, "diverged_epoch": h.diverged_epoch,
             "resumed_at": h.resumed_at, "has_best": st.best_params is not None,
             "optimizer": {"kind": st.optimizer["kind"], "t": st.optimizer["t"]},
             "rng": {"shuffle": st.shuffle_rng, "dropout": st.dropout_rng}, "data_sha256": st.data_sha256,
             "config": cfg.to_dict(), "member": st.member, "diverged_message": st.diverged_message,
             "done": [{"best_epoch": d.best_epoch, "best_loss": d.best_loss if math.isfinite(d.best_loss) else None,
                       "stopped_early": d.stopped_early, "seconds": d.seconds, "diverged_epoch": d.diverged_epoch,
                       "resumed_at": d.resumed_at} for _, d in st.done]}
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


def load_resume(run_dir) -> tuple[RunConfig, FitState]:
    """(config, FitState) of an interrupted run folder; every problem is a one-line UserError."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"--resume {d}: folder not found; pass the folder named in the 'interrupted' message")
    if not (d / "resume.npz").is_file():
        if checkpoint.is_run_folder(d):
            raise UserError(f"--resume {d}: this run has no resume state (it finished or was not interrupted); "
                            f"start a new run with 'gru-xp train'")
        raise UserError(f"--resume {d}: not an interrupted gru-xp run (no resume.npz); pass the folder named in the "
                        f"'interrupted' message")
    arrays, m = checkpoint.load(d / "resume.npz", require=("kind", "config", "epoch", "optimizer", "rng"))
    if m.get("kind") != RESUME_KIND:
        raise UserError(f"--resume {d}: resume.npz is not a gru-xp resume state; start a new run")
    try:
        cfg = from_dict(m["config"])
        groups: dict = {"param": {}, "best": {}, "opt": {}, "hist": {}, "done": {}, "donehist": {}}
        for key, a in arrays.items():
            g, _, name = key.partition("/")
            groups[g][name] = a

        def history(losses: dict, h: dict) -> History:
            return History([float(v) for v in losses["train_loss"]], [float(v) for v in losses["val_loss"]],
                           int(h["best_epoch"]), math.inf if h["best_loss"] is None else float(h["best_loss"]),
                           bool(h["stopped_early"]), float(h["seconds"]), int(h["diverged_epoch"]),
                           int(h["resumed_at"]))

        hist = history(groups["hist"], m)
        epoch = int(m["epoch"])
        if epoch < 1 or len(hist.train_loss) != epoch or len(hist.val_loss) != epoch or not groups["param"]:
            raise ValueError("history length does not match the epoch")
        done = []  # an ensemble's members finished before the interrupted one (older files: none)
        for j, h in enumerate(m.get("done", [])):
            p = {k.partition(".")[2]: a for k, a in groups["done"].items() if k.partition(".")[0] == str(j)}
            losses = {k.partition(".")[2]: a for k, a in groups["donehist"].items() if k.partition(".")[0] == str(j)}
            if not p:
                raise ValueError(f"finished member {j} has no parameters")
            done.append((p, history(losses, h)))
        st = FitState(epoch, groups["param"], groups["best"] if m["has_best"] else None, hist, int(m["bad_epochs"]),
                      {"kind": m["optimizer"]["kind"], "t": int(m["optimizer"]["t"]), "arrays": groups["opt"]},
                      m["rng"]["shuffle"], m["rng"]["dropout"], str(m.get("data_sha256", "")), int(m.get("member", 0)),
                      done, str(m.get("diverged_message", "")))
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"--resume {d}: the resume state is corrupt ({type(e).__name__}: {e}); start a new run") \
            from None
    return cfg, st


def resume_run(run_dir, overrides: dict | None = None, **kw) -> RunResult:
    """Continue an interrupted run from its folder: its saved config (only RESUME_FLAGS may be overridden), its
    parameters, optimizer, RNG and early-stopping state; on completion the run folder is written in place of the
    partial one (or to overrides["out"])."""
    cfg, st = load_resume(run_dir)
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = [k for k in ov if k not in RESUME_FLAGS]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise UserError(f"{flags} cannot be changed when resuming (the run's settings are saved in "
                        f"{Path(run_dir) / 'resume.json'}); allowed with --resume: "
                        f"{', '.join('--' + k.replace('_', '-') for k in RESUME_FLAGS)}; or start a new run")
    changed = [k for k in ("epochs", "patience") if k in ov and ov[k] != getattr(cfg, k)]
    if st.member > 0 and changed:
        flags = " and ".join("--" + k for k in changed)
        raise UserError(f"{flags} cannot change when resuming this ensemble: members 1 to {st.member} already "
                        f"finished with the saved settings; resume without {flags}, or start a new run")
    cfg = from_dict({**cfg.to_dict(), **ov, "out": str(ov.get("out") or run_dir)})
    if cfg.epochs <= st.epoch:
        raise UserError(f"--epochs {cfg.epochs} is not more than the {st.epoch} epochs already run; "
                        f"pass a larger --epochs to resume")
    return run(cfg, resume=st, **kw)


def _write_plots(d: Path, r: RunResult) -> None:
    from . import plots

    prep, preds = r.data, r.predictions
    labels = np.asarray(prep.series.labels(), dtype=object)
    plots.cost(d / "cost.png", r.history.train_loss, r.history.val_loss, r.history.best_epoch)
    fitted = {k: (p["anchors"] + 1, p["model"][:, 0]) for k, p in preds.items()}
    plots.sequence(d / "sequence.png", list(labels), prep.series.y, fitted, prep.test_start,
                   f"{prep.series.target}: actual vs predicted (1 step ahead)")
    allp = np.concatenate([p["model"][:, 0] for p in preds.values()])
    alla = np.concatenate([p["actual"][:, 0] for p in preds.values()])
    names = np.concatenate([[k] * len(p["anchors"]) for k, p in preds.items()])
    plots.residual(d / "residual.png", allp, alla, names)
    if "test" in preds:
        p = preds["test"]
        plots.forecast(d / "forecast.png", list(labels[p["anchors"] + 1]), p["actual"][:, 0], p["model"][:, 0],
                       p["naive"][:, 0], p["seasonal_naive"][:, 0], prep.pipeline.season)


# ---- back from a run folder -----------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    model: Forecaster  # the (first) model
    pipeline: Pipeline
    config: RunConfig
    meta: dict
    models: list = field(default_factory=list)  # every ensemble member; [model] for a single model


def load_run(run_dir, device: str = "cpu") -> LoadedRun:
    """The model of a run folder on `device` (whatever it was trained on), with its pipeline and config."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run folder {d} not found; pass --run DIR written by 'gru-xp train'")
    params, meta = checkpoint.load(d / "model.npz")
    _check_consistent(d, meta)
    try:
        cfg = from_dict(meta["config"])
        pipe = Pipeline.from_dict(meta["pipeline"])
        mk = dict(meta["model"])
        be = resolve(device, cfg.dtype)
        n_members = int(mk.get("ensemble", 1))  # format 1 files: always one model, unprefixed names
        if n_members < 1:
            raise ValueError(f"ensemble of {n_members} models")
        if int(mk["input_size"]) != pipe.n_inputs:
            raise ValueError(f"input_size {mk['input_size']} but the pipeline makes {pipe.n_inputs} inputs")
        models = [Forecaster(mk["cell"], int(mk["input_size"]), int(mk["hidden_size"]), int(mk["horizon"]),
                             num_layers=int(mk["num_layers"]), bidirectional=bool(mk["bidirectional"]),
                             dropout=float(mk["dropout"]), reset_after=bool(mk["reset_after"]), device=be,
                             dtype=cfg.dtype, seed=0) for _ in range(n_members)]
        if n_members == 1:
            states = [params]
        else:
            states = [{k[len(f"m{i}."):]: v for k, v in params.items() if k.startswith(f"m{i}.")}
                      for i in range(n_members)]
            if sum(len(st) for st in states) != len(params) or not all(states):
                raise ValueError("the arrays do not split into the ensemble's members")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"run folder {d} has corrupt metadata ({type(e).__name__}: {e}); retrain with 'gru-xp train'") \
            from None
    for m, st in zip(models, states):
        m.load_state_dict(st)
        m.eval()
    return LoadedRun(models[0], pipe, cfg, meta, models)


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
    y = np.asarray(y, dtype=np.float64)
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if len(y) - 1 < pipe.min_anchor():
        raise UserError(f"series of {len(y)} points is too short to forecast: this model needs at least "
                        f"{pipe.min_anchor() + 1} (window {pipe.seq_length}, differencing {pipe.lookback})")
    phase = None
    if pipe.calendar:
        total = len(y) + int(steps) + pipe.horizon + 1  # every position an input step may be aligned to
        if series is not None:
            phase = pipe.phases(series, total)
        elif pipe.calendar == "index":
            phase = np.arange(total, dtype=np.float64)
        else:
            raise UserError(f"this model uses calendar features ({pipe.calendar}): pass the series with its dates")
    hist = y.copy()
    out = []
    while len(out) < steps:
        t = np.array([len(hist) - 1])
        x = pipe.inputs(hist, t, phase)
        p = pipe.invert(hist, t, [predict_scaled(m, x) for m in models])[0]  # (K,)
        out.extend(p.tolist())
        hist = np.concatenate([hist, p])
    return np.asarray(out[:steps])


def predict_run(run_dir, data: str | None = None, steps: int | None = None, device: str = "cpu") -> tuple:
    """-> (labels, forecast, series, loaded run) for `steps` (default: the trained horizon) past the end of the run's data
    (or `data`, read with the run's target/date settings)."""
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


