"""The classification job (`gru-xp classify`), its run folder, and predictions from a run folder. Usable from Python.

    run_classify(cfg) -> ClassifyResult    load, split, encode, train (variable-length batches), evaluate beside
                                           the majority-class and 1-nearest-neighbour baselines, write the run folder
    load_classifier(dir) -> LoadedClassifier / predict_frame(...)   the model back; class probabilities per input

A run folder (written atomically): model.npz, config.json (kind "classify", the encoder with its vocabulary),
metrics.json {"train"|"val"|"test": {"model"|"majority"|"nearest_neighbor": {"accuracy", "macro_f1", "loss"}}},
history.json, predictions.csv (every case: split, true and predicted class, probabilities), curves.png,
confusion.png. Selection (early stopping, best epoch) uses validation only; the test split is only scored.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, metrics, plots
from .backend import resolve, to_host
from .classdata import ClassData, Encoder, Split, data_kind, load_inputs, prepare
from .config import ClassifyConfig, classify_from_dict
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .nn.classifier import Classifier
from .nn.optim import OPTIMIZERS
from .text import tokenize
from .train import History, fit, to_time_major

KIND = "classify"
SPLITS = ("train", "val", "test")


@dataclass
class ClassifyResult:
    config: ClassifyConfig
    metrics: dict  # split -> predictor -> {accuracy, macro_f1, loss}
    history: History  # an AccuracyHistory
    model: Classifier
    data: ClassData
    predictions: dict  # split -> {"pred" (n,), "log_probs" (n, C), "majority" (n,), "nearest_neighbor" (n,)}
    out_dir: Path | None = None
    status: str = "ok"  # "ok", "diverged" or "interrupted" (then: the best epoch before it)
    confusion: dict = field(default_factory=dict)  # split -> (C, C) counts of the model


def model_spec(cfg: ClassifyConfig, enc: Encoder) -> dict:
    """The Classifier's arguments for a config and its data (what model.npz records and load_classifier uses)."""
    text = enc.kind == "text"
    return {"cell": cfg.cell, "input_size": 1 if text else enc.channels, "hidden_size": cfg.hidden_size,
            "num_classes": len(enc.classes), "vocab_size": enc.vocabulary.size if text else 0,
            "embedding_dim": cfg.embedding_dim, "dense_size": cfg.dense_size, "num_layers": cfg.layers,
            "bidirectional": cfg.bidirectional, "dropout": cfg.dropout, "reset_after": cfg.reset_after,
            "nonlinearity": cfg.nonlinearity}


def targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices -> the model's targets: (n, 1) of 0/1 for two classes, one-hot (n, C) for more."""
    if n_classes == 2:
        return y.astype(np.float64)[:, None]
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def predict_log_probs(model: Classifier, X: np.ndarray, lengths: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(n, C) log-probabilities in eval mode: sequences sorted by length, in chunks cut to their longest."""
    n = len(lengths)
    out = np.zeros((n, max(model.num_classes, 2)))
    if n == 0:
        return out
    model.eval()
    be = model.backend
    order = np.argsort(lengths, kind="stable")
    with model.no_grad():  # no backward cache
        for s in range(0, n, chunk):
            idx = order[s:s + chunk]
            steps = int(lengths[idx].max())
            xb = to_time_major(be, X[idx, :steps])
            logits = model.forward(xb, be.asarray(lengths[idx], dtype=be.xp.int64), check_lengths=False)
            out[idx] = metrics.log_softmax_host(to_host(logits))
    return out


def evaluate(data: ClassData, model: Classifier) -> tuple[dict, dict, dict]:
    """Every split scored: the model, the majority class and 1-NN (fitted on the training part, the cases the model
    was fitted on; on the training split itself 1-NN is leave-one-out). -> (metrics, predictions, confusion)."""
    tr, C = data.train, len(data.encoder.classes)
    mets, preds, conf = {}, {}, {}
    for name in SPLITS:
        sp: Split | None = getattr(data, name)
        if sp is None or sp.n == 0:
            continue
        lp = predict_log_probs(model, sp.X, sp.lengths)
        pred = np.argmax(lp, axis=1)
        maj, maj_lp = metrics.majority_baseline(tr.y, C, sp.n)
        nn = metrics.nearest_neighbor(tr.feats, tr.y, sp.feats, leave_one_out=name == "train")
        mets[name] = {"model": metrics.class_scores(sp.y, pred, lp), "majority": metrics.class_scores(sp.y, maj, maj_lp),
                      "nearest_neighbor": metrics.class_scores(sp.y, nn)}
        preds[name] = {"pred": pred, "log_probs": lp, "majority": maj, "nearest_neighbor": nn}
        conf[name] = metrics.confusion_matrix(sp.y, pred, C)
    return mets, preds, conf


def _describe(cfg: ClassifyConfig, data: ClassData) -> str:
    enc, tr = data.encoder, data.train
    what = (f"{enc.channels} channel(s)" if enc.kind == "series" else f"vocabulary {enc.vocabulary.size}")
    n = lambda sp: 0 if sp is None else sp.n  # noqa: E731
    return (f"data {data.name} ({enc.kind}, {what}, {len(enc.classes)} classes): cases train/val/test "
            f"{tr.n}/{n(data.val)}/{n(data.test)}, lengths {int(tr.lengths.min())}-{int(tr.lengths.max())}"
            + (", bucketed batches" if cfg.bucket else ""))


def make_optimizer(cfg: ClassifyConfig):
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](cfg.lr)
    return OPTIMIZERS["adam"](cfg.lr, weight_decay=cfg.weight_decay)


def run_classify(cfg: ClassifyConfig, *, save: bool = True, progress: bool | None = None, log=print,
                 interruptible: bool = True) -> ClassifyResult:
    """The whole job. Divergence: the run folder is written from the best epoch (status "diverged"), then
    TrainingDiverged is raised; Ctrl-C: the model so far is written (status "interrupted"), then
    TrainingInterrupted is raised (a classify run is not resumable: rerun it)."""
    t0 = time.perf_counter()
    be = resolve(cfg.device, cfg.dtype, verbose=not cfg.quiet)
    data = prepare(cfg)
    out = checkpoint.checked_out(cfg, save)
    if progress is None:
        progress = not cfg.quiet and sys.stderr.isatty()
    if not cfg.quiet:
        log(_describe(cfg, data))
    C = len(data.encoder.classes)
    model = Classifier(**model_spec(cfg, data.encoder), device=be, dtype=cfg.dtype, seed=cfg.seed)
    val = data.val
    status, failure = "ok", None
    try:
        hist = fit(model, data.train.X, targets(data.train.y, C), None if val is None else val.X,
                   None if val is None else targets(val.y, C), optimizer=make_optimizer(cfg), epochs=cfg.epochs,
                   batch_size=cfg.batch_size, patience=cfg.patience, clip=cfg.clip, seed=cfg.seed,
                   progress=progress, desc=cfg.name, interruptible=interruptible, lengths=data.train.lengths,
                   val_lengths=None if val is None else val.lengths, bucket=cfg.bucket, keep_last=True)
    except TrainingDiverged as e:
        if e.history is None or e.history.best_epoch == 0:
            raise
        status, failure, hist = "diverged", e, e.history
    except TrainingInterrupted as e:
        status, failure, hist = "interrupted", e, e.state.history
    mets, preds, conf = evaluate(data, model)
    result = ClassifyResult(cfg, mets, hist, model, data, preds, None, status, conf)
    if not cfg.quiet:
        log(f"{be.describe()}: {len(hist.train_loss)} epochs in {hist.seconds:.1f}s, best epoch {hist.best_epoch}"
            + (", stopped early" if hist.stopped_early else "") + ("" if status == "ok" else f", {status.upper()}"))
        log(metrics.format_class_table(mets))
    if out is not None:
        out = out if status == "ok" else checkpoint.failed_out(out, status)
        write_classify_run(out, result, be, time.perf_counter() - t0)
        result.out_dir = out
        if not cfg.quiet:
            log(f"run folder: {out}")
    if status == "diverged":
        raise TrainingDiverged(f"{failure}" + (f" (run folder {out})" if out else ""), epoch=failure.epoch,
                               history=hist, result=result, out_dir=out)
    if status == "interrupted":
        where = f"; the model of epoch {hist.best_epoch} is saved in {out}" if out else ""
        raise TrainingInterrupted(f"interrupted at epoch {len(hist.train_loss)}{where} (classify runs are not "
                                  f"resumable: rerun the command)", state=failure.state, out_dir=out)
    return result


# ---- the run folder -----------------------------------------------------------------------------------------------
def _meta(r: ClassifyResult, be, seconds: float) -> dict:
    cfg, data, h = r.config, r.data, r.history
    run_info = {"device": be.describe(), "backend": be.name, "dtype": be.dtype_name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 3),
                "epochs_run": len(h.train_loss), "best_epoch": h.best_epoch, "stopped_early": h.stopped_early,
                "command": " ".join(sys.argv), "status": r.status, "diverged_epoch": h.diverged_epoch}
    cases = {s: getattr(data, s).n for s in SPLITS if getattr(data, s) is not None}
    return {"kind": KIND, "model": model_spec(cfg, data.encoder), "encoder": data.encoder.to_dict(),
            "config": cfg.to_dict(), "data": {"name": data.name, **data.sources, "cases": cases}, "run": run_info}


def _predictions_csv(r: ClassifyResult) -> str:
    import pandas as pd

    classes = r.data.encoder.classes
    frames = []
    for split, p in r.predictions.items():
        sp = getattr(r.data, split)
        probs = np.exp(p["log_probs"])
        df = pd.DataFrame({"split": split, "case": sp.names, "actual": [classes[i] for i in sp.y],
                           "label": [classes[i] for i in p["pred"]], "probability": probs.max(axis=1)})
        for j, c in enumerate(classes):
            df[f"probability_{c}"] = probs[:, j]
        frames.append(df)
    return pd.concat(frames).to_csv(index=False, float_format="%.6g")


def write_classify_run(out: Path, r: ClassifyResult, be, seconds: float) -> None:
    meta = _meta(r, be, seconds)
    h = r.history
    with checkpoint.atomic_dir(out) as tmp:
        checkpoint.save(tmp / "model.npz", r.model.params, meta)
        checkpoint.write_json(tmp / "config.json", metrics.jsonable({**meta, "format_version": checkpoint.FORMAT_VERSION}))
        checkpoint.write_json(tmp / "metrics.json", metrics.jsonable(r.metrics))
        checkpoint.write_json(tmp / "history.json", metrics.jsonable({**dataclasses.asdict(h), "status": r.status}))
        checkpoint.write_text(tmp / "predictions.csv", _predictions_csv(r))
        if r.config.plots:
            plots.curves(tmp / "curves.png", h.train_loss, h.val_loss, h.train_accuracy, h.val_accuracy,
                         h.best_epoch)
            split = "test" if "test" in r.confusion else ("val" if "val" in r.confusion else "train")
            plots.confusion(tmp / "confusion.png", r.confusion[split], r.data.encoder.classes,
                            f"{r.data.name}: {split} confusion matrix (accuracy "
                            f"{r.metrics[split]['model']['accuracy']:.3f})")


# ---- back from a run folder ---------------------------------------------------------------------------------------
@dataclass
class LoadedClassifier:
    model: Classifier
    encoder: Encoder
    config: ClassifyConfig
    meta: dict


def load_classifier(run_dir, device: str = "cpu") -> LoadedClassifier:
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run folder {d} not found; pass --run DIR written by 'gru-xp classify'")
    if checkpoint.run_kind(d) != KIND:
        raise UserError(f"run folder {d} is a forecasting run, not a classifier; pass a folder written by "
                        f"'gru-xp classify' (or forecast with 'gru-xp predict --run {d}' without --text)")
    params, meta = checkpoint.load(d / "model.npz", require=("model", "encoder", "config"))
    try:
        if meta.get("kind") != KIND:
            raise ValueError("model.npz is not a classifier")
        cfg = classify_from_dict(meta["config"])
        enc = Encoder.from_dict(meta["encoder"])
        model = Classifier(**meta["model"], device=resolve(device, cfg.dtype), dtype=cfg.dtype, seed=0)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"run folder {d} has corrupt metadata ({type(e).__name__}: {e}); retrain with "
                        f"'gru-xp classify'") from None
    model.load_state_dict(params)
    model.eval()
    return LoadedClassifier(model, enc, cfg, meta)


def predict_frame(lc: LoadedClassifier, texts=None, data: str | None = None):
    """Class probabilities per input -> DataFrame (text or case, [actual], label, probability, probability_<c>...).
    texts: strings for a text classifier; data: a .ts file (series) or a text folder / CSV (text)."""
    import pandas as pd

    enc, classes = lc.encoder, lc.encoder.classes
    if (texts is None) == (data is None):
        raise UserError("give the inputs to classify: --text \"...\" (repeatable) or --data FILE")
    if texts is not None and enc.kind != "text":
        raise UserError("this run classifies series (.ts); pass --data FILE.ts instead of --text")
    actual = None
    if texts is not None:
        raw, first = list(texts), {"text": list(texts)}
        for i, t in enumerate(raw):
            if not tokenize(t):
                raise UserError(f"--text number {i + 1} is an empty document (no words); give it text")
    else:
        if data_kind(data) != enc.kind:
            raise UserError(f"this run classifies {enc.kind}: --data {data} is not "
                            + ("a .ts file" if enc.kind == "series" else "a text folder or CSV"))
        d = load_inputs(data, lc.config.text_col, lc.config.label_col, lc.config.classes, need_labels=False)
        raw = d.series if enc.kind == "series" else d.texts
        first = {"case": list(range(len(raw)))} if enc.kind == "series" else {"source": d.names}
        if d.labels is not None:
            actual = list(d.labels)
    X, lengths = enc.encode(raw, data or "--text")
    probs = np.exp(predict_log_probs(lc.model, X, lengths))
    df = pd.DataFrame(first)
    if actual is not None:
        df["actual"] = actual
    df["label"] = [classes[i] for i in np.argmax(probs, axis=1)]
    df["probability"] = probs.max(axis=1)
    for j, c in enumerate(classes):
        df[f"probability_{c}"] = probs[:, j]
    return df


def read_run_meta(run_dir) -> dict:
    """config.json of a classify run folder (for tools and the notebook)."""
    with open(Path(run_dir) / "config.json", encoding="utf-8") as f:
        return json.load(f)
