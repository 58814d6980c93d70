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
