"""Text for classification (host edge): documents from a folder or a CSV, a tokenizer and a vocabulary.

    load_text(path, text_col, label_col, classes) -> TextData   aclImdb layout DIR/<class>/*.txt, or a CSV
    tokenize(text) -> [token]                                    lowercase words, punctuation split off
    Vocabulary.build(token lists, size) / encode_many(...)       0 = padding, 1 = unknown; saved with the model

Tokens: the text is lowercased, HTML line breaks (<br />, as in IMDB reviews) become spaces, then every word (letters
and digits, with inner apostrophes: "don't" is one word) and every punctuation mark is a token. The vocabulary holds
the `size` - 2 most frequent training words (ties broken alphabetically, so it is deterministic) after the two
reserved ids; every other word encodes as 1 (unknown).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

PAD, UNK = 0, 1
RESERVED = ("<pad>", "<unk>")
SKIP_FOLDERS = ("unsup",)  # aclImdb's unlabelled reviews (train/unsup): not a class
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def tokenize(text: str) -> list[str]:
    """Lowercase words (inner apostrophes kept) and punctuation marks, in order."""
    return _TOKEN.findall(_BREAK.sub(" ", str(text).lower()))


@dataclass
class TextData:
    """Documents with their labels (None when unlabelled) and where each came from (file path or CSV row)."""

    texts: list
    labels: list | None
    names: list
    source: str


def _read_folder(d: Path, classes) -> TextData:
    subs = sorted(p for p in d.iterdir() if p.is_dir() and any(p.glob("*.txt")))
    if classes:
        missing = [c for c in classes if not (d / c).is_dir()]
        if missing:
            raise UserError(f"class folder(s) {missing} not found in {d} (it has {[p.name for p in subs]}); fix "
                            f"--classes")
        subs = [d / c for c in classes]
    else:
        subs = [p for p in subs if p.name not in SKIP_FOLDERS]
    if not subs:
        raise UserError(f"{d} has no class folders with .txt files; use the layout DIR/<class>/*.txt (e.g. "
                        f"aclImdb/train/pos, aclImdb/train/neg) or a CSV")
    texts, labels, names = [], [], []
    for sub in subs:
        for f in sorted(sub.glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
            labels.append(sub.name)
            names.append(str(f))
    return TextData(texts, labels, names, str(d.resolve()))


def _read_csv(p: Path, text_col: str, label_col: str, need_labels: bool) -> TextData:
    import pandas as pd

    from .series import csv_dialect

    sep = csv_dialect(p).get("sep", ",")  # ; tab | files read as such (no decimal mark: every column is text)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {p} as CSV ({type(e).__name__}); pass a CSV with a header row") from None
    cols = list(df.columns)
    if text_col not in cols:
        raise UserError(f"{p} has no text column {text_col!r} (columns: {cols}); pass --text-col")
    has_label = label_col in cols
    if need_labels and not has_label:
        raise UserError(f"{p} has no label column {label_col!r} (columns: {cols}); pass --label-col")
    labels = [str(v).strip() for v in df[label_col]] if has_label else None
    if labels is not None and any(v == "" for v in labels):
        row = next(i for i, v in enumerate(labels) if v == "")
        raise UserError(f"{p}: row {row + 2} has an empty label; fill it or drop the row")
    return TextData([str(v) for v in df[text_col]], labels, [f"{p.name}:{i + 2}" for i in range(len(df))],
                    str(p.resolve()))


def load_text(path, text_col: str = "text", label_col: str = "label", classes=(), need_labels: bool = True) \
        -> TextData:
    """Documents from a folder DIR/<class>/*.txt (classes = folder names; `classes` picks and orders them) or a CSV
    with a text and a label column. An empty document (no tokens) is a UserError naming it."""
    p = Path(path)
    if p.is_dir():
        data = _read_folder(p, list(classes))
    elif p.is_file():
        data = _read_csv(p, text_col, label_col, need_labels)
    else:
        raise UserError(f"text data {p} not found; pass a folder DIR/<class>/*.txt or a CSV file")
    if not data.texts:
        raise UserError(f"{p} holds no documents; add some")
    for t, name in zip(data.texts, data.names):
        if not tokenize(t):
            raise UserError(f"empty document {name} (no words); remove it or give it text")
    return data


@dataclass
class Vocabulary:
    """words[i] is id i + 2 (0 = padding, 1 = unknown)."""

    words: list = field(default_factory=list)

    def __post_init__(self):
        self._index = {w: i + 2 for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words) + 2

    @classmethod
    def build(cls, token_lists, size: int) -> "Vocabulary":
        """The size - 2 most frequent words of the training documents (ties alphabetical)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise UserError(f"--vocab-size must be at least 2 (0 = padding, 1 = unknown word), got {size!r}")
        counts = Counter(w for toks in token_lists for w in toks)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([w for w, _ in ranked[: size - 2]])

    def encode(self, tokens) -> list[int]:
        return [self._index.get(w, UNK) for w in tokens]

    def encode_many(self, token_lists, max_length: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """-> ids (N, T) int64 right-padded with 0, lengths (N,); each document cut to its first max_length tokens
        (0 = all), T the longest kept."""
        ids = [self.encode(t[:max_length] if max_length else t) for t in token_lists]
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        out = np.zeros((len(ids), int(lengths.max(initial=1))), dtype=np.int64)
        for r, i in enumerate(ids):
            out[r, :len(i)] = i
        return out, lengths

    def bag_of_words(self, ids: np.ndarray) -> np.ndarray:
        """ids (N, T) -> counts (N, V) of every id but padding (the nearest-neighbour baseline's features)."""
        counts = np.zeros((ids.shape[0], self.size), dtype=np.float64)
        rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
        np.add.at(counts, (rows, ids.reshape(-1)), 1.0)
        counts[:, PAD] = 0.0
        return counts

    def to_dict(self) -> dict:
        return {"reserved": list(RESERVED), "words": list(self.words)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        if not isinstance(d, dict) or not isinstance(d.get("words"), list):
            raise ValueError("vocabulary must be {'words': [...]}")
        return cls([str(w) for w in d["words"]])


# ---- a corpus where word order decides (tests, the notebook, the README) --------------------------------------------
POSITIVE = ("good", "great", "fine", "superb", "lovely")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring")
FILLER = ("the", "movie", "film", "was", "and", "it", "plot", "acting", "really", "quite", "story", "is", "a",
          "but", "this", "cast")


def negation_corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (text, label) reviews in which every review holds one positive word, one negative word and one "not",
    before one of the two: "not <positive>" makes it "neg", "not <negative>" makes it "pos". Which words, their
    order and the filler around them are random, so each review's bag of words says nothing about its label (a
    bag-of-words model scores 0.5 in expectation); only the word after "not" decides."""
    rng = np.random.default_rng(seed)
    filler = lambda k: " ".join(rng.choice(FILLER, size=k))  # noqa: E731
    out = []
    for _ in range(n):
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        negate_good = bool(rng.random() < 0.5)
        a, b = (f"not {good}", bad) if negate_good else (good, f"not {bad}")
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        text = f"{filler(rng.integers(1, 4))} {first} {filler(rng.integers(1, 4))} {second} {filler(rng.integers(0, 3))}"
        out.append((" ".join(text.split()) + ".", "neg" if negate_good else "pos"))
    return out


def write_text_folder(folder, docs) -> None:
    """(text, label) pairs -> folder/<label>/<i>.txt (the aclImdb layout)."""
    d = Path(folder)
    for i, (text, label) in enumerate(docs):
        (d / label).mkdir(parents=True, exist_ok=True)
        (d / label / f"{i:05d}.txt").write_text(text, encoding="utf-8")
