"""The training floor: the loop, and nothing else.

    fit(model, X, Y, X_val, Y_val, ...) -> History   minibatches on device, early stopping, best state restored,
                                                     divergence stops it, Ctrl-C stops it resumably

`model` is any model object of gru_xp.nn with `params`, `grads`, `loss_and_grads(x, y, tbptt=)`, `loss(x, y)`,
`state_dict`/`load_state_dict`, `train()`/`eval()`, `backend` and `rnn.rng` (its dropout generator).
Device discipline: X/Y are moved to the device once; a batch is an index-take on device; the batch loop never
syncs (losses accumulate as 0-d device arrays); one device->host transfer per epoch reads train and val loss.
Variable-length sequences (classification): `lengths` (N,) ride along, moved once, taken per batch like X, and
passed as loss_and_grads(..., lengths=, check_lengths=False) (checked here once, on the host). Each batch's steps
are cut to its longest sequence (decided on the host: no sync); `bucket` groups similar lengths into batches. A
model with `correct(y)` (the Classifier) gets accuracy per epoch too (AccuracyHistory), in the same one sync.
Per-output loss weights (issue 18: panels' masks and series scales): `weights` (N, K) / `val_weights` ride along
like Y, moved once, taken per batch, passed as loss_and_grads(..., weight=) and loss(..., weight=).
Run folders, resume files and forecasts live in runs.py and resume.py.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import to_host
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .nn.optim import OPTIMIZERS, clip_grad_norm


PER_EPOCH = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")  # History fields kept per epoch


@dataclass
class History:
    train_loss: list = field(default_factory=list)  # per epoch, the model's loss on its scaled targets
    val_loss: list = field(default_factory=list)  # per epoch (NaN when there is no validation set)
    best_epoch: int = 0  # 1-based epoch whose parameters were restored
    best_loss: float = math.inf  # its selection loss (validation, else train)
    stopped_early: bool = False
    seconds: float = 0.0
    diverged_epoch: int = 0  # the epoch whose loss was NaN/inf (0 = none); training stopped at its end
    resumed_at: int = 0  # the first epoch run after `--resume` (0 = not resumed)

    def summary(self) -> dict:
        """Every field but the per-epoch losses (JSON-able; best_loss None when infinite)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in PER_EPOCH}
        d["best_loss"] = d["best_loss"] if math.isfinite(d["best_loss"]) else None
        return d

    @classmethod
    def from_summary(cls, summary: dict, train_loss, val_loss) -> "History":
        """The inverse of summary(), given the per-epoch losses."""
        h = cls([float(v) for v in train_loss], [float(v) for v in val_loss])
        for f in dataclasses.fields(cls):
            if f.name not in PER_EPOCH:
                v = summary[f.name]  # a missing key is a corrupt file (KeyError)
                setattr(h, f.name, f.default if v is None else type(f.default)(v))
        return h


@dataclass
class AccuracyHistory(History):
    """A classifier's History: also the share of correctly classified sequences per epoch (training: running over
    the epoch's minibatches in training mode, as Keras reports it; validation: after the epoch, eval mode)."""

    train_accuracy: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)  # NaN when there is no validation set


@dataclass
class FitState:
    """Everything `fit` needs to continue after `epoch` exactly as if it had never stopped (host data only)."""

    epoch: int  # last completed epoch (1-based); training continues at epoch + 1
    params: dict  # {name: host array}: the parameters after that epoch
    best_params: dict | None  # {name: host array}: the best epoch's parameters so far
    history: History
    bad_epochs: int  # early-stopping counter
    optimizer: dict  # the optimizer's state_dict() with host arrays: {"kind", "t", "arrays": {"NAME/PART": array}}
    shuffle_rng: dict  # numpy bit_generator.state of the minibatch shuffler
    dropout_rng: dict  # numpy bit_generator.state of the model's dropout generator (model.rnn.rng)
    data_sha256: str = ""  # the series it was trained on (checked on resume)
    member: int = 0  # an ensemble's member that was interrupted (0 for a single model)
    done: list = field(default_factory=list)  # [(params {name: host array}, History)] of the members before it
    diverged_message: str = ""  # the first of those that diverged: its message (the run ends with it)


def to_time_major(be, X):
    """host (N, L, I) (or (N, L)) -> device (L, N, I), once. Integer X (token ids (N, L)) -> int64 (L, N)."""
    if np.issubdtype(np.asarray(X).dtype, np.integer):
        return be.asarray(np.ascontiguousarray(np.asarray(X, dtype=np.int64).T), dtype=be.xp.int64)
    X = np.asarray(X, dtype=be.np_dtype)
    if X.ndim == 2:
        X = X[..., None]
    return be.asarray(np.ascontiguousarray(np.transpose(X, (1, 0, 2))))


def host_params(model) -> dict:
    """{name: host copy} of a model's parameters (a snapshot that later training does not change)."""
    return {k: np.array(to_host(v), copy=True) for k, v in model.params.items()}


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
        print(("" if self.quiet else "\n") + "gru-xp: Ctrl-C: finishing this epoch, then saving the best checkpoint "
              "and a resume state (Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

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


# ---- the loop -----------------------------------------------------------------------------------------------------
@dataclass
class _DeviceData:
    """The training (and validation) windows on the device, moved once."""

    X: Any  # (L, N, I) time-major
    Y: Any  # (N, K)
    Xv: Any = None  # (L, Nv, I) or None
    Yv: Any = None  # (Nv, K) or None
    lengths: Any = None  # (N,) int64 on device: variable-length sequences (None: every one has L steps)
    host_lengths: Any = None  # (N,) the same on the host: batch widths are decided there (no sync)
    val_batches: list = field(default_factory=list)  # [(device index (n,), steps, n)]: validation in chunks
    val_lengths: Any = None  # (Nv,) int64 on device
    bucket: bool = False  # batches of similar lengths (sorted, then shuffled as whole batches)
    trim: bool = True  # cut each batch to its longest sequence
    accuracy: bool = False  # the model has correct(y): accuracy per epoch
    W: Any = None  # (N, K) per-output loss weights, or None
    Wv: Any = None  # (Nv, K) validation weights, or None

    @property
    def n(self) -> int:
        return int(self.Y.shape[0])

    @property
    def has_val(self) -> bool:
        return self.Yv is not None


@dataclass
class _Progress:
    """What the loop carries from epoch to epoch besides the model and optimizer."""

    hist: History
    best_state: dict | None = None  # host copy of the best epoch's parameters
    bad_epochs: int = 0  # epochs since the last improvement
    first: int = 1  # the first epoch this call runs


def _move(be, X, Y, X_val, Y_val) -> _DeviceData:
    data = _DeviceData(to_time_major(be, X), be.asarray(np.asarray(Y, dtype=be.np_dtype)))
    if data.n < 1:
        raise UserError("no training windows; use a longer series or a smaller --seq-length/--horizon")
    if X_val is not None and len(X_val) > 0:
        data.Xv, data.Yv = to_time_major(be, X_val), be.asarray(np.asarray(Y_val, dtype=be.np_dtype))
    return data


def _move_weights(be, data: _DeviceData, weights, val_weights) -> None:
    """Per-output loss weights, checked on the host and moved once (like Y)."""
    if data.lengths is not None:
        raise UserError("loss weights and variable lengths cannot be combined")
    for name, w, Y in (("weights", weights, data.Y), ("val_weights", val_weights, data.Yv)):
        if Y is None or w is None:
            continue
        w = np.asarray(w, dtype=be.np_dtype)
        if w.shape != tuple(Y.shape) or not np.all(np.isfinite(w)) or (w < 0).any():
            raise UserError(f"{name} must be finite, >= 0 and shaped like the targets {tuple(Y.shape)}, got "
                            f"{w.shape}")
        if name == "weights":
            data.W = be.asarray(w)
        else:
            data.Wv = be.asarray(w)


VAL_CHUNK = 256  # validation sequences per forward (variable lengths: sorted by length, so little padding)


def host_lengths(lengths, n: int, T: int, what: str = "lengths") -> np.ndarray:
    """Check variable lengths on the host, once: (n,) integers in 1..T. -> int64 array."""
    L = np.asarray(lengths)
    if L.shape != (n,) or not (np.issubdtype(L.dtype, np.integer) or L.size == 0):
        raise UserError(f"{what} must be ({n},) integers (one per sequence), got shape {L.shape} {L.dtype}")
    if L.size and (L.min() < 1 or L.max() > T):
        raise UserError(f"{what} must be between 1 and {T} (the padded length), got {L.min()}..{L.max()}")
    return L.astype(np.int64)


def _move_lengths(be, data: _DeviceData, lengths, val_lengths) -> None:
    """Variable lengths: checked on the host, moved once; validation split into length-sorted chunks (indices
    moved once)."""
    xp = be.xp
    data.host_lengths = host_lengths(lengths, data.n, int(data.X.shape[0]))
    data.lengths = be.asarray(data.host_lengths, dtype=xp.int64)
    if data.has_val:
        nv = int(data.Yv.shape[0])
        hv = host_lengths(val_lengths, nv, int(data.Xv.shape[0]), "validation lengths")
        data.val_lengths = be.asarray(hv, dtype=xp.int64)
        order = np.argsort(hv, kind="stable")
        for s in range(0, nv, VAL_CHUNK):
            idx = order[s:s + VAL_CHUNK]
            data.val_batches.append((be.asarray(idx, dtype=xp.int64), int(hv[idx].max()), len(idx)))


def batch_order(host_len: np.ndarray, bs: int, rng, bucket: bool) -> list:
    """Host index arrays of one epoch's minibatches. Random batches: a permutation cut into bs-sized pieces.
    bucket: sequences sorted by length (random tie-break) cut into batches, whose order is then shuffled."""
    N = len(host_len)
    if bs >= N:
        return [np.arange(N)]
    if not bucket:
        perm = rng.permutation(N)
        return [perm[s:s + bs] for s in range(0, N, bs)]
    by_len = np.lexsort((rng.random(N), host_len))
    pieces = [by_len[s:s + bs] for s in range(0, N, bs)]
    return [pieces[i] for i in rng.permutation(len(pieces))]


def _batches(data: _DeviceData, bs: int, rng, be):
    """Yield (xb, yb, extra loss_and_grads keywords) for one epoch's minibatches (index-takes on device)."""
    xp, N = be.xp, data.n
    if data.lengths is None:
        if bs < N:
            perm = xp.asarray(rng.permutation(N), device=be.device)  # host permutation, moved once per epoch
        for s in range(0, N, bs):
            if bs < N:
                idx = perm[s:s + bs]
                w = {} if data.W is None else {"weight": xp.take(data.W, idx, axis=0)}
                yield xp.take(data.X, idx, axis=1), xp.take(data.Y, idx, axis=0), w
            else:
                yield data.X, data.Y, ({} if data.W is None else {"weight": data.W})
        return
    host = batch_order(data.host_lengths, bs, rng, data.bucket)
    perm = be.asarray(np.concatenate(host), dtype=xp.int64)  # moved once per epoch
    s = 0
    for idx_h in host:
        idx = perm[s:s + len(idx_h)]
        s += len(idx_h)
        steps = int(data.host_lengths[idx_h].max()) if data.trim else int(data.X.shape[0])
        yield (xp.take(data.X[:steps, ...], idx, axis=1), xp.take(data.Y, idx, axis=0),
               {"lengths": xp.take(data.lengths, idx, axis=0), "check_lengths": False})


def _val_loss(model, data: _DeviceData):
    """Validation loss (and number correct when tracked) as 0-d device arrays, in eval mode."""
    xp = model.backend.xp
    if data.lengths is None:
        if data.Wv is not None:
            return model.loss(data.Xv, data.Yv, weight=data.Wv), None
        return model.loss(data.Xv, data.Yv), None
    total = correct = None
    for idx, steps, n in data.val_batches:
        yb = xp.take(data.Yv, idx, axis=0)
        part = model.loss(xp.take(data.Xv[:steps, ...], idx, axis=1), yb,
                          lengths=xp.take(data.val_lengths, idx, axis=0), check_lengths=False) * n
        total = part if total is None else total + part
        if data.accuracy:
            c = model.correct(yb)
            correct = c if correct is None else correct + c
    nv = int(data.Yv.shape[0])
    return total / nv, (None if correct is None else correct / nv)


def _restore(model, optimizer, rng, state: FitState) -> _Progress:
    """Continue exactly where an interrupted fit stopped: parameters, optimizer, both generators, counters."""
    be = model.backend
    model.load_state_dict(state.params)
    arrays = {k: be.asarray(np.array(a, copy=True)) for k, a in state.optimizer["arrays"].items()}
    optimizer.load_state_dict({**state.optimizer, "arrays": arrays})
    try:
        rng.bit_generator.state = state.shuffle_rng
        model.rnn.rng.bit_generator.state = state.dropout_rng
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"resume state has a corrupt random-generator state ({e}); start a new run") from None
    h = state.history
    hist = dataclasses.replace(h, train_loss=list(h.train_loss), val_loss=list(h.val_loss), resumed_at=state.epoch + 1)
    best = None if state.best_params is None else {k: np.array(v, copy=True) for k, v in state.best_params.items()}
    return _Progress(hist, best, int(state.bad_epochs), state.epoch + 1)


def _epoch(model, optimizer, data: _DeviceData, bs: int, rng, *, clip: float, tbptt: int, poke=None):
    """One pass over the training windows in minibatches of bs (shuffled by the host generator when bs < N), then
    the validation loss: (train loss, val loss, train accuracy, val accuracy) as host floats (accuracies NaN unless
    tracked), the epoch's one sync. poke: called after the first minibatch (the Ctrl-C test hook)."""
    xp, be, N = model.backend.xp, model.backend, data.n
    model.train()
    total = correct = None
    for j, (xb, yb, extra) in enumerate(_batches(data, bs, rng, be)):
        loss = model.loss_and_grads(xb, yb, tbptt=tbptt, **extra)
        if data.accuracy:
            c = model.correct(yb)
            correct = c if correct is None else correct + c
        if clip > 0:
            clip_grad_norm(xp, model.grads, clip)
        optimizer.step(xp, model.params, model.grads)
        part = loss * int(yb.shape[0])
        total = part if total is None else total + part
        if poke is not None and j == 0:
            poke()
    train_loss = total / N
    acc = [correct / N] if data.accuracy else []
    if not data.has_val:
        vals = to_host(xp.stack([train_loss] + acc)) if acc else [to_host(train_loss)]  # the one sync
        return float(vals[0]), math.nan, (float(vals[1]) if acc else math.nan), math.nan
    model.eval()
    val_loss, val_correct = _val_loss(model, data)
    vals = to_host(xp.stack([train_loss, val_loss] + acc + ([val_correct] if acc else [])))  # the one sync
    return float(vals[0]), float(vals[1]), (float(vals[2]) if acc else math.nan), \
        (float(vals[3]) if acc else math.nan)


def _record(model, prog: _Progress, epoch: int, tl: float, vl: float, has_val: bool) -> bool:
    """Append the epoch's losses and keep a host copy of the parameters when they improved. -> diverged?"""
    hist = prog.hist
    hist.train_loss.append(tl)
    hist.val_loss.append(vl)
    sel = vl if has_val else tl
    diverged = not math.isfinite(tl) or (has_val and not math.isfinite(vl))
    if not diverged and sel < hist.best_loss:
        snap = host_params(model)
        if all(np.isfinite(a).all() for a in snap.values()):
            hist.best_loss, hist.best_epoch, prog.bad_epochs = sel, epoch, 0
            prog.best_state = snap
        else:  # finite loss before the last update, non-finite parameters after it
            diverged = True
    elif not diverged:
        prog.bad_epochs += 1
    return diverged


def _diverged(prog: _Progress, epoch: int, tl: float, vl: float) -> TrainingDiverged:
    hist = prog.hist
    hist.diverged_epoch = epoch
    which, val = ("train", tl) if not math.isfinite(tl) else ("validation", vl)
    what = f"training diverged ({which} loss {val}) at epoch {epoch}"
    fix = "lower --lr, set --clip 1, or use --optimizer adam"
    if prog.best_state is None:
        return TrainingDiverged(f"{what}, before any epoch with a finite loss; nothing was saved; {fix}", epoch=epoch,
                                history=hist)
    return TrainingDiverged(f"{what}; kept the best checkpoint (epoch {hist.best_epoch}, loss {hist.best_loss:.4g}); "
                            f"{fix}", epoch=epoch, history=hist)


def _snapshot(model, optimizer, rng, prog: _Progress, epoch: int) -> FitState:
    """The FitState after `epoch` (host copies of everything that changes)."""
    sd = optimizer.state_dict()
    opt = {**sd, "arrays": {k: np.array(to_host(a), copy=True) for k, a in sd["arrays"].items()}}
    return FitState(epoch, host_params(model), prog.best_state, prog.hist, prog.bad_epochs, opt,
                    rng.bit_generator.state, model.rnn.rng.bit_generator.state)


def _progress_bar(progress: bool, epochs: int, done: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=done, desc=desc, unit="epoch", leave=True, dynamic_ncols=True, file=sys.stderr)


def fit(model, X, Y, X_val=None, Y_val=None, *, optimizer=None, epochs: int = 100, batch_size: int = 32,
        patience: int = 0, clip: float = 0.0, tbptt: int = 0, seed: int = 0, progress: bool = True,
        desc: str = "train", state: FitState | None = None, interruptible: bool = True, lengths=None,
        val_lengths=None, bucket: bool = False, trim: bool = True, keep_last: bool = False, weights=None,
        val_weights=None) -> History:
    """Train `model` in place; the parameters of the best epoch (validation loss, else training loss) are restored.

    X (N, L[, I]) and Y (N, K) are host arrays in model units; X_val/Y_val likewise or None.
    lengths / val_lengths: (N,) / (Nv,) integers in 1..L, right padding (variable-length sequences; the model takes
        loss_and_grads(..., lengths=)); each batch runs up to its longest sequence unless trim=False (the same
        numbers either way: padded steps are masked); bucket: batches of similar lengths.
    keep_last: without validation data, keep the last epoch's parameters (train for exactly `epochs`) instead of
        restoring the epoch with the lowest training loss.
    weights / val_weights: (N, K) / (Nv, K) per-output loss weights (>= 0; 0 = that target is masked), or None.
    state: continue from a FitState (saved by an interrupted fit) up to `epochs` in total; with the same data,
        settings and backend the result is bit-identical to a run that was never interrupted.
    Divergence (train or validation loss NaN/inf): training stops at the end of that epoch, the best parameters so
        far are restored and TrainingDiverged (a UserError) is raised carrying the history.
    Ctrl-C (interruptible, main thread): the epoch in progress finishes, the best parameters are restored and
        TrainingInterrupted (a KeyboardInterrupt) is raised carrying the FitState to resume from.
    """
    optimizer = optimizer if optimizer is not None else OPTIMIZERS["adam"](1e-3)
    data = _move(model.backend, X, Y, X_val, Y_val)
    if lengths is not None:
        _move_lengths(model.backend, data, lengths, val_lengths)
        data.bucket, data.trim = bool(bucket), bool(trim)
    data.accuracy = hasattr(model, "correct")
    if weights is not None:
        _move_weights(model.backend, data, weights, val_weights)
    N = data.n
    bs = N if batch_size <= 0 or batch_size >= N else int(batch_size)
    rng = np.random.default_rng(seed)  # host randomness for shuffling
    prog = _Progress(AccuracyHistory() if data.accuracy else History()) if state is None else \
        _restore(model, optimizer, rng, state)
    keep_last = keep_last and not data.has_val
    seconds_before, hook_epoch, t_start = prog.hist.seconds, _hook_epoch(seed), time.perf_counter()

    def restore_best(diverged: bool = False):
        if keep_last and prog.hist.train_loss and not diverged:
            prog.hist.best_epoch = len(prog.hist.train_loss)  # the last epoch's parameters stay
            prog.hist.best_loss = prog.hist.train_loss[-1]
        elif prog.best_state is not None:
            model.load_state_dict(prog.best_state)
        model.eval()
        prog.hist.seconds = seconds_before + time.perf_counter() - t_start

    bar = _progress_bar(progress, epochs, prog.first - 1, desc)
    latch = _SigintLatch(interruptible, quiet=not progress)
    try:
        with latch:
            for epoch in range(prog.first, epochs + 1):
                tl, vl, ta, va = _epoch(model, optimizer, data, bs, rng, clip=clip, tbptt=tbptt,
                                        poke=latch.poke if epoch == hook_epoch else None)
                if data.accuracy:
                    prog.hist.train_accuracy.append(ta)
                    prog.hist.val_accuracy.append(va)
                if _record(model, prog, epoch, tl, vl, data.has_val):
                    restore_best(diverged=True)
                    raise _diverged(prog, epoch, tl, vl)
                if bar is not None:
                    bar.set_postfix_str(f"train {tl:.4g}  val {vl:.4g}  best {prog.hist.best_epoch}", refresh=False)
                    bar.update(1)
                if patience and prog.bad_epochs >= patience and not keep_last:
                    prog.hist.stopped_early = True
                    break
                if latch.hit and epoch < epochs:  # the epoch's bookkeeping is done: stop here, resumable
                    st = _snapshot(model, optimizer, rng, prog, epoch)
                    restore_best()
                    raise TrainingInterrupted(f"interrupted at epoch {epoch}", state=st)
    finally:
        if bar is not None:
            bar.close()
    restore_best()
    return prog.hist
