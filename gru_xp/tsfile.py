"""Time-series archive files (host edge): the UEA/UCR `.ts` format, read into one array per case, and the Monash
forecasting archive's `.tsf` format, read into one array per series.

    read_ts(path) -> TSData          univariate or multivariate, equal or variable length, labels from @classLabel
    read_tsf(path) -> TSFData        named series with their attributes (horizon, start_timestamp), @frequency,
                                     @horizon; '?' (missing) only when the caller opts in

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
    sec, in_data = Sections(p), False
    for n, raw in enumerate(_lines(p, kind), start=1):
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


def _lines(p: Path, kind: str) -> list:
    """The file's lines as text. UTF-8; a comment line ('#') may hold other bytes (the Monash archive's CIF 2016 file
    has a Windows-1252 dash in one): it is skipped whatever it holds, any other undecodable line is an error."""
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        pass
    out = []
    for b in raw.splitlines():
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            if not b.lstrip().startswith(b"#"):
                raise UserError(f"{p} is not a {kind} text file (not UTF-8); pass a {kind} file") from None
            out.append("#")
    return out


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


# ==== the Monash forecasting archive's .tsf ========================================================================
# @frequency -> (seasonal lag for MASE and seasonal naive, the pandas frequency of start_timestamp dates, the name
# data.Series uses); the lags are the archive's (weekly: 365.25 / 7 rounded down)
TSF_FREQUENCIES = {"yearly": (1, "YS", "yearly"), "quarterly": (4, "QS", "quarterly"),
                   "monthly": (12, "MS", "monthly"), "weekly": (52, "W", "weekly"), "daily": (7, "D", "daily"),
                   "hourly": (24, "h", "hourly"), "half_hourly": (48, "30min", "half-hourly"),
                   "10_minutes": (144, "10min", "10-minutes"), "4_seconds": (1, "4s", "4-seconds"),
                   "minutely": (1440, "min", "minutely")}


@dataclass
class TSFData:
    """A `.tsf` file's series: values[i] (n_i,) float64 (NaN where the file has '?'), with its attributes."""

    name: str  # @relation, else the file name
    names: list  # [str] series names (the series_name attribute, else the first string attribute, else T1, T2, ...)
    values: list  # [(n_i,) arrays]
    attributes: list  # [{attribute name: value str}] per series, in @attribute order
    frequency: str | None  # @frequency, lowercased
    horizon: int | None  # @horizon
    horizons: list | None  # the per-series `horizon` attribute, when the file has one
    starts: list | None  # the per-series `start_timestamp` attribute as pandas Timestamps, when the file has one
    source: str

    @property
    def season(self) -> int:
        return TSF_FREQUENCIES.get(self.frequency or "", (1,))[0]


def _tsf_attributes(sec: Sections) -> list:
    """[(name, type)] of the @attribute lines, in order; each `@attribute NAME TYPE` with a known TYPE."""
    out = []
    for k, v, n in sec.header:
        if k != "attribute":
            continue
        parts = v.split()
        if len(parts) != 2 or parts[1].lower() not in ("string", "numeric", "date"):
            raise UserError(f"{sec.path}:{n}: expected '@attribute NAME string|numeric|date', got '@attribute {v}'; "
                            f"fix the header")
        out.append((parts[0], parts[1].lower()))
    if len({a for a, _ in out}) != len(out):
        raise UserError(f"{sec.path}: an attribute is declared twice; give each @attribute once")
    return out


def _tsf_values(sec: Sections, n: int, text: str, missing_ok: bool) -> np.ndarray:
    vals = [v.strip() for v in text.split(",")]
    if "?" in vals and not missing_ok:
        raise UserError(f"{sec.path}:{n}: the series has missing values ('?'); fill them in the file or pass "
                        f"--missing drop|ffill|interpolate")
    try:
        y = np.array([np.nan if v == "?" else float(v) for v in vals], dtype=np.float64)
    except ValueError:
        bad = next(v for v in vals if v != "?" and not _is_float(v))
        raise UserError(f"{sec.path}:{n}: the series has a value {bad[:20]!r} that is not a number; fix the "
                        f"line") from None
    if np.isinf(y).any() or (np.isnan(y) & np.array([v != "?" for v in vals])).any():
        raise UserError(f"{sec.path}:{n}: a value is NaN or infinite; write '?' for a missing value")
    return y


def _tsf_start(sec: Sections, n: int, v: str):
    import pandas as pd

    for fmt in ("%Y-%m-%d %H-%M-%S", None):
        try:
            return pd.Timestamp(pd.to_datetime(v, format=fmt)) if fmt else pd.Timestamp(v)
        except (ValueError, TypeError):
            continue
    raise UserError(f"{sec.path}:{n}: start_timestamp {v!r} is not a date (the archive writes 1979-01-01 00-00-00); "
                    f"fix the line")


def read_tsf(path, missing_ok: bool = False) -> TSFData:
    """Read a Monash `.tsf` file: `@attribute` lines, then one series per data line `attr1:attr2:...:v1,v2,...`.
    '?' values are an error unless missing_ok (they come back as NaN); @horizon and a `horizon` attribute (per
    series) must be positive integers; a `start_timestamp` attribute gives each series its dates."""
    sec = read_sections(path, ".tsf")
    attrs = _tsf_attributes(sec)
    freq = (sec.get("frequency") or "").strip().lower() or None
    if freq is not None and freq not in TSF_FREQUENCIES:
        raise UserError(f"{sec.path}:{sec.line_of('frequency')}: unknown @frequency {freq!r}; use one of "
                        f"{', '.join(TSF_FREQUENCIES)}")
    horizon = _positive(sec, "horizon")
    if not sec.data:
        raise UserError(f"{sec.path} has no series after @data; add data lines")
    names, values, rows = [], [], []
    for i, (n, line) in enumerate(sec.data):
        fields = line.split(":", len(attrs))
        if len(fields) != len(attrs) + 1:
            raise UserError(f"{sec.path}:{n}: expected {len(attrs)} attribute(s) then the values, separated by ':'; "
                            f"got {len(fields)} field(s)")
        row = {a: f.strip() for (a, _), f in zip(attrs, fields)}
        y = _tsf_values(sec, n, fields[-1], missing_ok)
        strings = [a for a, t in attrs if t == "string"]
        name = row.get("series_name") or (row[strings[0]] if strings else f"T{i + 1}")
        names.append(name)
        values.append(y)
        rows.append((n, row))
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise UserError(f"{sec.path}: series name {dup[0]!r} appears more than once; give every series its own name")
    horizons = None
    if any(a == "horizon" for a, _ in attrs):
        horizons = []
        for n, row in rows:
            h = row["horizon"]
            if not h.isdigit() or int(h) < 1:
                raise UserError(f"{sec.path}:{n}: the horizon attribute must be a positive integer, got {h!r}; fix "
                                f"the line")
            horizons.append(int(h))
    starts = [_tsf_start(sec, n, row["start_timestamp"]) for n, row in rows] \
        if any(a == "start_timestamp" for a, _ in attrs) else None
    return TSFData(sec.get("relation") or sec.path.stem, names, values, [r for _, r in rows], freq, horizon,
                   horizons, starts, str(sec.path.resolve()))
