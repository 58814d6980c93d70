"""Labelled sequences for `gru-xp classify` (host edge): load, split, encode, and the baselines' features.

    load_inputs(path, cfg) -> TSData | TextData     a .ts file (series), or a text folder / CSV (text)
    prepare(cfg) -> ClassData                        train / stratified-tail validation / test, encoded
    Encoder                                          raw inputs -> model inputs (saved in the run folder)

Series: each channel standardised with the mean and std of the training part's real steps (never validation or
test), right-padded with zeros to the split's longest case; lengths ride along (the model masks the padding). Text:
tokens -> vocabulary ids of the training part, padded with 0. The 1-nearest-neighbour baseline sees the same
encoded inputs: series resampled to the longest training length and flattened, text as bag-of-words counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DATA_DIR
from .errors import UserError
from .text import Vocabulary, load_text, tokenize
from .tsfile import read_ts


def data_path(path: str) -> str:
    """A path as given, else the project's data/ folder's file of that name (like --data of train)."""
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (DATA_DIR / p).exists():
        return str(DATA_DIR / p)
    return str(path)


def data_kind(path: str) -> str:
    """"series" for a .ts file, "text" for a folder or another file (a CSV)."""
    p = Path(path)
    if p.suffix.lower() == ".ts" and not p.is_dir():
        return "series"
    if p.suffix.lower() == ".tsf":
        raise UserError(f"{p} is a Monash .tsf forecasting file; classify reads UEA/UCR .ts files, text folders "
                        f"and CSVs")
    return "text"


def load_inputs(path: str, text_col: str = "text", label_col: str = "label", classes=(), need_labels: bool = True):
    """A .ts file -> TSData; a folder or CSV -> TextData. Bare names are also looked up in data/."""
    path = data_path(path)
    if data_kind(path) == "series":
        ts = read_ts(path)
        if need_labels and ts.labels is None:
            raise UserError(f"{path} has no class labels (@classLabel false); training and test data need them")
        return ts
    return load_text(path, text_col, label_col, classes, need_labels)


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """(T, C) -> (length, C) by linear interpolation of each channel over [0, 1]."""
    T = len(x)
    if T == length:
        return x
    src, dst = np.linspace(0.0, 1.0, T), np.linspace(0.0, 1.0, length)
    if T == 1:
        return np.repeat(x, length, axis=0)
    return np.stack([np.interp(dst, src, x[:, c]) for c in range(x.shape[1])], axis=1)


@dataclass
class Encoder:
    """Turns raw inputs (series arrays or texts) into model inputs and baseline features; saved with the model."""

    kind: str  # "series" | "text"
    classes: list  # class names; index i = model class i (two classes: index 1 is the positive logit)
    max_length: int = 0  # steps kept per sequence (0 = all)
    channels: int = 0  # series: input channels
    mean: list = field(default_factory=list)  # series: per-channel mean of the training part
    std: list = field(default_factory=list)  # series: per-channel std of the training part (1 where constant)
    nn_length: int = 0  # series: the nearest-neighbour baseline's resampled length
    vocabulary: Vocabulary | None = None  # text

    def label_index(self, labels, where: str) -> np.ndarray:
        """Class names -> indices; a label not seen in training is a UserError."""
        idx = {c: i for i, c in enumerate(self.classes)}
        unseen = sorted({str(v) for v in labels} - set(idx))
        if unseen:
            raise UserError(f"{where} has label(s) {unseen[:5]} that do not occur in the training data (classes: "
                            f"{self.classes[:12]}); fix the labels or add training cases")
        return np.array([idx[str(v)] for v in labels], dtype=np.int64)

    def encode(self, raw: list, where: str = "the data") -> tuple[np.ndarray, np.ndarray]:
        """Series (list of (T_i, C)) -> X (n, T, C) float64 standardised, zero-padded; texts (list of str) -> ids
        (n, T) int64. Both with lengths (n,)."""
        if self.kind == "text":
            return self.vocabulary.encode_many([tokenize(t) for t in raw], self.max_length)
        bad = sorted({x.shape[1] for x in raw} - {self.channels})
        if bad:
            raise UserError(f"{where} has {bad[0]} channel(s) but the model was trained on {self.channels}; train "
                            f"and test data need the same channels")
        cut = [x[: self.max_length] if self.max_length else x for x in raw]
        lengths = np.array([len(x) for x in cut], dtype=np.int64)
        X = np.zeros((len(cut), int(lengths.max(initial=1)), self.channels))
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        for i, x in enumerate(cut):
            X[i, :len(x)] = (x - mean) / std
        return X, lengths

    def features(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The nearest-neighbour baseline's vectors: resampled series, or bag-of-words counts."""
        if self.kind == "text":
            return self.vocabulary.bag_of_words(X)
        return np.stack([resample(x[:n], self.nn_length).reshape(-1) for x, n in zip(X, lengths)])

    @classmethod
    def fit(cls, kind: str, classes: list, raw_train: list, max_length: int, vocab_size: int) -> "Encoder":
        """Everything learned from the training part (the cases the model is fitted on) only."""
        if kind == "text":
            vocab = Vocabulary.build([tokenize(t) for t in raw_train], vocab_size)
            return cls(kind, list(classes), max_length, vocabulary=vocab)
        cut = [x[:max_length] if max_length else x for x in raw_train]
        allx = np.concatenate(cut, axis=0)
        std = allx.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(kind, list(classes), max_length, channels=int(allx.shape[1]), mean=allx.mean(axis=0).tolist(),
                   std=std.tolist(), nn_length=int(max(len(x) for x in cut)))

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "classes": list(self.classes), "max_length": self.max_length}
        if self.kind == "text":
            d["vocabulary"] = self.vocabulary.to_dict()
        else:
            d.update(channels=self.channels, mean=list(self.mean), std=list(self.std), nn_length=self.nn_length)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Encoder":
        kind = d["kind"]
        if kind not in ("series", "text"):
            raise ValueError(f"unknown data kind {kind!r}")
        if kind == "text":
            return cls(kind, [str(c) for c in d["classes"]], int(d["max_length"]),
                       vocabulary=Vocabulary.from_dict(d["vocabulary"]))
        return cls(kind, [str(c) for c in d["classes"]], int(d["max_length"]), int(d["channels"]),
                   [float(v) for v in d["mean"]], [float(v) for v in d["std"]], int(d["nn_length"]))


@dataclass
class Split:
    X: np.ndarray  # (n, T, C) float64 or (n, T) int64
    lengths: np.ndarray  # (n,)
    y: np.ndarray  # (n,) class indices
    names: list  # where each case came from (file, CSV row, or "case i" of a .ts file)
    feats: np.ndarray | None = None  # (n, F) nearest-neighbour features

    @property
    def n(self) -> int:
        return len(self.y)


@dataclass
class ClassData:
    encoder: Encoder
    train: Split
    val: Split | None
    test: Split | None
    name: str  # the problem's name (.ts @problemName, or the folder / file name)
    sources: dict  # {"data": path, "test": path or None}


def stratified_tail(y: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean mask of the validation cases: the last round(ratio * n_c) cases of each class c in file order (at
    least one when the class has two or more cases and ratio > 0, never its only case)."""
    val = np.zeros(len(y), dtype=bool)
    if ratio <= 0:
        return val
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(max(1, int(round(ratio * len(idx)))), len(idx) - 1)
        if k > 0:
            val[idx[len(idx) - k:]] = True
    return val


def _raw(d) -> tuple[list, list, list]:
    """(inputs, labels, names) of TSData or TextData."""
    if hasattr(d, "series"):
        return d.series, d.labels, [f"case {i}" for i in range(len(d.series))]
    return d.texts, d.labels, d.names


def _split(enc: Encoder, raw: list, y: np.ndarray, names: list, where: str) -> Split:
    X, lengths = enc.encode(raw, where)
    return Split(X, lengths, y, names, enc.features(X, lengths))


def prepare(cfg) -> ClassData:
    """Load cfg.data (and cfg.test), split a stratified validation tail off the training data, fit the encoder on
    the rest, encode every split. cfg: a config.ClassifyConfig."""
    train_d = load_inputs(cfg.data, cfg.text_col, cfg.label_col, cfg.classes)
    kind = data_kind(cfg.data)
    test_d = None
    if cfg.test:
        if data_kind(cfg.test) != kind:
            raise UserError(f"--data is {kind} but --test {cfg.test} is not; give both as .ts files or both as text")
        test_d = load_inputs(cfg.test, cfg.text_col, cfg.label_col, cfg.classes)
    raw, labels, names = _raw(train_d)
    declared = getattr(train_d, "class_labels", None)
    present = sorted(set(labels))
    classes = [c for c in declared if c in present] if declared else present
    if len(classes) < 2:
        raise UserError(f"{cfg.data} has only one class ({classes}); classification needs at least two")
    y_all = np.array([classes.index(v) for v in labels], dtype=np.int64)
    is_val = stratified_tail(y_all, cfg.val_ratio)
    fit_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if kind == "series" and test_d is not None and test_d.dimensions != train_d.dimensions:
        raise UserError(f"train has {train_d.dimensions} channel(s) but test has {test_d.dimensions}; train and "
                        f"test data need the same channels")
    enc = Encoder.fit(kind, classes, [raw[i] for i in fit_idx], cfg.max_length, cfg.vocab_size)
    train = _split(enc, [raw[i] for i in fit_idx], y_all[fit_idx], [names[i] for i in fit_idx], cfg.data)
    val = _split(enc, [raw[i] for i in val_idx], y_all[val_idx], [names[i] for i in val_idx], cfg.data) \
        if len(val_idx) else None
    test = None
    if test_d is not None:
        t_raw, t_labels, t_names = _raw(test_d)
        test = _split(enc, t_raw, enc.label_index(t_labels, cfg.test), t_names, cfg.test)
    name = getattr(train_d, "name", None) or Path(cfg.data).stem
    return ClassData(enc, train, val, test, name, {"data": cfg.data, "test": cfg.test or None})
