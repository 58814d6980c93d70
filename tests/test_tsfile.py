"""The UEA/UCR .ts reader: the shipped JapaneseVowels files, univariate and equal-length files, and every way a
header can disagree with its data (one-line UserErrors naming the line)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gru_xp.errors import UserError
from gru_xp.tsfile import read_sections, read_ts

DATA = Path(__file__).resolve().parents[1] / "data"


def test_japanese_vowels():
    tr, te = read_ts(DATA / "JapaneseVowels_TRAIN.ts"), read_ts(DATA / "JapaneseVowels_TEST.ts")
    assert (tr.name, len(tr.series), len(te.series), tr.dimensions) == ("JapaneseVowels", 270, 370, 12)
    assert tr.class_labels == [str(i) for i in range(1, 10)] and not tr.equal_length
    lengths = np.concatenate([tr.lengths, te.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    assert all(x.shape[1] == 12 for x in tr.series) and np.bincount(np.array(tr.labels, dtype=int))[1:].tolist() \
        == [30] * 9
    assert tr.series[0][0, 0] == pytest.approx(1.860936) and tr.series[0][0, 1] == pytest.approx(-0.207383)


def _write(tmp_path, header: str, lines: list[str], name="x.ts") -> Path:
    p = tmp_path / name
    p.write_text("# a comment\n" + header.strip() + "\n@data\n" + "\n".join(lines) + "\n")
    return p


UNI = "@problemName Toy\n@timeStamps false\n@univariate true\n@equalLength true\n@seriesLength 3\n@classLabel true a b"


def test_univariate_equal_length(tmp_path):
    d = read_ts(_write(tmp_path, UNI, ["1,2,3:a", "4, 5, 6:b", "", "# skipped", "7,8,9:a"]))
    assert d.name == "Toy" and d.dimensions == 1 and d.equal_length and d.labels == ["a", "b", "a"]
    assert d.series[1][:, 0].tolist() == [4, 5, 6]


def test_multivariate_variable_length_and_unlabelled(tmp_path):
    d = read_ts(_write(tmp_path, "@dimensions 2\n@equalLength false\n@classLabel false", ["1,2:3,4", "5:6"]))
    assert d.labels is None and d.lengths.tolist() == [2, 1] and d.series[0].tolist() == [[1, 3], [2, 4]]
    assert read_sections(d.source).get("dimensions") == "2"


@pytest.mark.parametrize("header,lines,match", [
    (UNI, ["1,2,3:c"], r"x.ts:9: class label 'c' is not declared"),
    (UNI, ["1,2:a"], r"@seriesLength is 3"),
    (UNI.replace("@seriesLength 3\n", ""), ["1,2,3:a", "1,2:b"], r"@equalLength true but"),
    (UNI, ["1,2,3:4,5,6:a"], r"2 dimension\(s\), the header"),
    ("@dimensions 3\n@classLabel true a", ["1:2:a"], r"2 dimension\(s\)"),
    ("@univariate true\n@dimensions 2\n@classLabel true a", ["1:a"], "@univariate true but @dimensions 2"),
    ("@classLabel true a", ["1,2:3:a"], "different lengths"),
    ("@classLabel true a", ["1,?,3:a"], "missing values"),
    ("@classLabel true a", ["1,x,3:a"], "'x' that is not a number"),
    ("@classLabel true a", ["1,nan:a"], "NaN or infinite"),
    ("@classLabel true", ["1:a"], "lists no labels"),
    ("@classLabel maybe", ["1:a"], "must be 'true"),
    ("@problemName t", ["1:a"], "no @classLabel"),
    ("@timeStamps true\n@classLabel true a", ["(1,2):a"], "timeStamps true is not supported"),
    ("@classLabel true a\n@equalLength perhaps", ["1:a"], "equalLength must be true or false"),
    ("@classLabel true a\n@seriesLength -2", ["1:a"], "positive integer"),
    ("@classLabel true a", ["1,2"], "class label after the last ':'"),
    ("@classLabel true a", [], "no cases"),
])
def test_header_data_disagreements_are_user_errors(tmp_path, header, lines, match):
    with pytest.raises(UserError, match=match):
        read_ts(_write(tmp_path, header, lines))


def test_not_a_ts_file(tmp_path):
    (tmp_path / "a.ts").write_text("1,2,3\n")
    with pytest.raises(UserError, match="expected a header line"):
        read_ts(tmp_path / "a.ts")
    (tmp_path / "b.ts").write_text("@classLabel true a\n")
    with pytest.raises(UserError, match="no @data"):
        read_ts(tmp_path / "b.ts")
    (tmp_path / "c.ts").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match="not UTF-8"):
        read_ts(tmp_path / "c.ts")
    with pytest.raises(UserError, match="not found"):
        read_ts(tmp_path / "missing.ts")


# ==== the Monash .tsf format (issue 18) ===========================================================================
from gru_xp.tsfile import read_tsf  # noqa: E402


def test_cif_2016():
    """The shipped CIF 2016 file: 72 monthly series, per-series horizons 12 (57) and 6 (15), a header comment that is
    not UTF-8 (a Windows-1252 dash), read anyway."""
    raw = (DATA / "cif_2016_dataset.tsf").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    d = read_tsf(DATA / "cif_2016_dataset.tsf")
    assert (d.name, len(d.names), d.frequency, d.season, d.horizon) == ("CIF_2016", 72, "monthly", 12, None)
    assert d.names[:2] == ["T1", "T2"] and d.horizons.count(12) == 57 and d.horizons.count(6) == 15
    assert len(d.values[0]) == 120 and d.values[0][0] == pytest.approx(855.144865868006)
    assert min(len(v) for v in d.values) == 28 and d.starts is None


TSF = "@relation toy\n@attribute series_name string\n@attribute start_timestamp date\n@frequency quarterly\n" \
      "@horizon 2\n@missing true\n@data\n"


def _tsf(tmp_path, text, name="x.tsf"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_tsf_dates_horizon_and_missing_values(tmp_path):
    p = _tsf(tmp_path, TSF + "a:2001-01-01 00-00-00:1,2,3,4\nb:2005-04-01 00-00-00:5,?,7\n")
    with pytest.raises(UserError, match=r"x.tsf:9: the series has missing values \('\?'\)"):
        read_tsf(p)
    d = read_tsf(p, missing_ok=True)
    assert d.names == ["a", "b"] and d.horizon == 2 and d.horizons is None and d.season == 4
    assert np.isnan(d.values[1][1]) and str(d.starts[1].date()) == "2005-04-01"
    from gru_xp.config import make_config
    from gru_xp.panel import load_panel

    panel = load_panel(make_config(None, {"data": str(p), "missing": "interpolate"}))
    assert panel.series[1].y.tolist() == [5, 6, 7] and panel.horizons.tolist() == [2, 2]
    assert [str(x.date()) for x in panel.series[0].dates] == ["2001-01-01", "2001-04-01", "2001-07-01", "2001-10-01"]
    assert panel.season == 4 and panel.series[0].freq == "quarterly"


@pytest.mark.parametrize("text,match", [
    ("@attribute series_name text\n@data\na:1,2\n", "expected '@attribute NAME string|numeric|date'"),
    ("@attribute series_name string\n@attribute horizon numeric\n@data\na:x:1,2\n", "horizon attribute must be"),
    ("@attribute series_name string\n@frequency fortnightly\n@data\na:1,2\n", "unknown @frequency 'fortnightly'"),
    ("@attribute series_name string\n@attribute horizon numeric\n@data\na:1,2\n", "expected 2 attribute"),
    ("@attribute series_name string\n@data\na:1,2\na:3,4\n", "series name 'a' appears more than once"),
    ("@attribute series_name string\n@data\na:1,b\n", "value 'b' that is not a number"),
    ("@attribute series_name string\n@data\na:1,inf\n", "NaN or infinite"),
    ("@attribute series_name string\n@attribute start_timestamp date\n@data\na:soon:1\n", "is not a date"),
    ("@attribute series_name string\n@horizon 0\n@data\na:1\n", "positive integer"),
    ("@attribute series_name string\n@data\n", "no series after @data"),
])
def test_tsf_errors_name_the_line(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        read_tsf(_tsf(tmp_path, text))


def test_tsf_non_utf8_outside_comments_is_an_error(tmp_path):
    p = tmp_path / "b.tsf"
    p.write_bytes(b"# caf\xe9 is fine in a comment\n@attribute series_name string\n@data\nA\x96:1,2\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_tsf(p)
    p.write_bytes(b"# caf\xe9 is fine in a comment\n@attribute series_name string\n@data\nA:1,2\n")
    assert read_tsf(p).values[0].tolist() == [1.0, 2.0]
