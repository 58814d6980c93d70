"""Time-series archive files (host edge): the UEA/UCR `.ts` format, read into one array per case.

    read_ts(path) -> TSData          univariate or multivariate, equal or variable length, labels from @classLabel

A file is a header of `@key value` lines (comments start with #), then `@data` and one line per case. The header
reader (`read_sections`) knows nothing of `.ts` in particular, so a Monash `.tsf` reader can sit beside `read_ts`
on top of it. `.ts` data lines: the dimensions separated by ':', the values of one dimension by ',', then (with
@classLabel true) the class label as the last field, e.g. `1.0,2.0,3.0:4.0,5.0,6.0:a` (2 dimensions, 3 steps).
Every disagreement between the header and the data (dimensions, lengths, undeclared labels) is a UserError naming
the line; '?' (missing values) and @timeStamps true are refused with the fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

TRUE, FALSE = ("true",), ("false",)


@dataclass
class Sections:
    """A header-then-data text file: header entries in file order (a key may repeat, e.g. .tsf's @attribute) and
    the data lines with their 1-based line numbers."""

    path: Path
    header: list = field(default_factory=list)  # [(key lowercased, value str, line number)]
    spelled: dict = field(default_factory=dict)  # key lowercased -> "@key" as the file spells it (for messages)
    data: list = field(default_factory=list)  # [(line number, line stripped)]

    def get(self, key: str, default=None):
        """The value of the last `@key` line (None/default when absent)."""
        for k, v, _ in reversed(self.header):
            if k == key:
                return v
        return default

    def line_of(self, key: str) -> int:
        for k, _, n in self.header:
            if k == key:
                return n
        return 0


def read_sections(path, kind: str = ".ts") -> Sections:
    """Header lines `@key value` up to `@data`, then the non-empty, non-comment data lines."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{kind} file {p} not found; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not a {kind} text file (not UTF-8); pass a {kind} file") from None
    sec, in_data = Sections(p), False
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if in_data:
            sec.data.append((n, line))
        elif line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            key = key.strip().lower()
            if key == "data":
                in_data = True
            else:
                sec.header.append((key, value.strip(), n))
                sec.spelled[key] = "@" + line[1:].partition(" ")[0].strip()
        else:
            raise UserError(f"{p}:{n}: expected a header line '@key value' or '@data' before the data, got "
                            f"{line[:40]!r}; is this a {kind} file?")
    if not in_data:
        raise UserError(f"{p} has no @data line; is this a {kind} file?")
    return sec


@dataclass
class TSData:
    """A `.ts` file's cases: series[i] is (T_i, C) float64, labels[i] a string (None when the file has none)."""

    name: str
    series: list  # [(T_i, C) arrays]
    labels: list | None  # [str] per case, or None (@classLabel false)
    class_labels: list | None  # the labels @classLabel declares, in file order
    dimensions: int
    equal_length: bool
    source: str

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], dtype=np.int64)


def _flag(sec: Sections, key: str, default: bool | None):
    v = sec.get(key)
    if v is None:
        return default
    w = v.split()[0].lower() if v.split() else ""
    if w not in TRUE + FALSE:
        raise UserError(f"{sec.path}:{sec.line_of(key)}: {sec.spelled[key]} must be true or false, got {v!r}; fix "
                        f"the header")
    return w == "true"


def _positive(sec: Sections, key: str):
    v = sec.get(key)
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{sec.path}:{sec.line_of(key)}: {sec.spelled[key]} must be a positive integer, got {v!r}; "
                        f"fix the header")
    return n


def _parse_case(sec: Sections, n: int, line: str, has_label: bool):
    """One data line -> ((T, C) array, label or None)."""
    fields = line.split(":")
    label = None
    if has_label:
        if len(fields) < 2:
            raise UserError(f"{sec.path}:{n}: a case needs its values and a class label after the last ':' "
                            f"(@classLabel true); fix the line")
        label = fields.pop().strip()
    dims = []
    for j, f in enumerate(fields):
        vals = [v.strip() for v in f.split(",")]
        if "?" in vals:
            raise UserError(f"{sec.path}:{n}: dimension {j + 1} has missing values ('?'); impute or drop them first "
                            f"(the classifier needs every value)")
        if f.strip().startswith("("):
            raise UserError(f"{sec.path}:{n}: time-stamped values '(t,v)' are not supported; write plain values "
                            f"(@timeStamps false)")
        try:
            dims.append(np.array([float(v) for v in vals], dtype=np.float64))
        except ValueError:
            bad = next(v for v in vals if not _is_float(v))
            raise UserError(f"{sec.path}:{n}: dimension {j + 1} has a value {bad[:20]!r} that is not a number; "
                            f"fix the line") from None
    lens = {len(d) for d in dims}
    if len(lens) != 1:
        raise UserError(f"{sec.path}:{n}: the case's {len(dims)} dimensions have different lengths "
                        f"{sorted(lens)}; every dimension of a case needs the same number of steps")
    if not all(np.isfinite(d).all() for d in dims):
        raise UserError(f"{sec.path}:{n}: a value is NaN or infinite; impute or drop it first")
    return np.stack(dims, axis=1), label


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_ts(path) -> TSData:
    """Read a UEA/UCR `.ts` file, checking the header against the data."""
    sec = read_sections(path, ".ts")
    if _flag(sec, "timestamps", False):
        raise UserError(f"{sec.path}: @timeStamps true is not supported; export the data without time stamps")
    has_label_v = sec.get("classlabel")
    if has_label_v is None:
        raise UserError(f"{sec.path} has no @classLabel line; add '@classLabel true <labels>' (or false)")
    words = has_label_v.split()
    if not words or words[0].lower() not in TRUE + FALSE:
        raise UserError(f"{sec.path}:{sec.line_of('classlabel')}: @classLabel must be 'true <labels...>' or "
                        f"'false', got {has_label_v!r}")
    has_label = words[0].lower() == "true"
    declared = words[1:] if has_label else None
    if has_label and not declared:
        raise UserError(f"{sec.path}:{sec.line_of('classlabel')}: @classLabel true lists no labels; add them")
    univariate, dims = _flag(sec, "univariate", None), _positive(sec, "dimensions")
    if univariate and dims not in (None, 1):
        raise UserError(f"{sec.path}: @univariate true but @dimensions {dims}; fix the header")
    want_dims = 1 if univariate else dims
    equal, series_len = _flag(sec, "equallength", None), _positive(sec, "serieslength")
    if not sec.data:
        raise UserError(f"{sec.path} has no cases after @data; add data lines")
    series, labels = [], []
    for n, line in sec.data:
        x, label = _parse_case(sec, n, line, has_label)
        if want_dims is None:
            want_dims = x.shape[1]
        if x.shape[1] != want_dims:
            raise UserError(f"{sec.path}:{n}: the case has {x.shape[1]} dimension(s), the header (or the first case) "
                            f"says {want_dims}; fix the line or the header's @dimensions/@univariate")
        if series_len is not None and len(x) != series_len:
            raise UserError(f"{sec.path}:{n}: the case has {len(x)} steps but @seriesLength is {series_len}; fix "
                            f"the line or the header")
        if has_label and label not in declared:
            raise UserError(f"{sec.path}:{n}: class label {label!r} is not declared in @classLabel "
                            f"({' '.join(declared)}); fix the label or the header")
        series.append(x)
        labels.append(label)
    lens = {len(x) for x in series}
    if equal and len(lens) > 1:
        raise UserError(f"{sec.path}: @equalLength true but the cases have {min(lens)} to {max(lens)} steps; set "
                        f"@equalLength false or fix the data")
    name = sec.get("problemname") or sec.path.stem
    return TSData(name, series, labels if has_label else None, declared, int(want_dims), len(lens) == 1,
                  str(sec.path.resolve()))
