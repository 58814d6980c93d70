"""The command line end to end: a tiny train run, predict round trip, and every user-error path (exit 2, one line)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from gru_xp import plots
from gru_xp.cli import main

TINY = ["--data", "sine", "--sine-length", "120", "--seq-length", "6", "--hidden-size", "6", "--epochs", "3",
        "--batch-size", "16", "--quiet"]


def train(tmp_path, *extra, name="run"):
    out = tmp_path / name
    rc = main(["train", *TINY, "--out", str(out), *extra])
    return rc, out


def one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and "Traceback" not in err
    assert fragment.lower() in err.lower(), err
    return err


def test_tiny_train_writes_a_complete_run_folder(tmp_path, capsys):
    rc, out = train(tmp_path, "--horizon", "2", "--difference", "1")
    assert rc == 0
    for f in ("model.npz", "config.json", "metrics.json", "predictions.csv", "cost.png", "sequence.png",
              "residual.png", "forecast.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    ikeys = {f"{k}_{c}" for k in ("coverage", "width", "interval_score") for c in (80, 95)}
    for split in ("train", "test"):
        assert set(m[split]) >= {"model", "naive", "seasonal_naive"}
        assert set(m[split]["model"]) == {"rmse", "mae", "mape", "mase"} | (ikeys if split == "test" else set())
    c = json.loads((out / "config.json").read_text())
    assert c["config"]["horizon"] == 2 and len(c["data"]["sha256"]) == 64
    assert c["run"]["dtype"] == "float32" and "numpy" in c["run"]["versions"]
    p = pd.read_csv(out / "predictions.csv")
    assert list(p.columns) == ["step", "split", "horizon", "actual", "predicted", "naive", "seasonal_naive",
                               "lower_80", "upper_80", "lower_95", "upper_95"]
    assert set(p["split"]) >= {"train", "test"}
    test = p[p.split == "test"]
    from gru_xp import metrics

    assert metrics.rmse(test.actual, test.predicted) == pytest.approx(m["test"]["model"]["rmse"], rel=1e-6)
    assert not [q for q in os.listdir(tmp_path) if q.startswith(".")]  # no temp folders left behind


def test_table_is_printed(tmp_path, capsys):
    rc = main(["train", *[a for a in TINY if a != "--quiet"], "--out", str(tmp_path / "r"), "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "seasonal_naive" in out and "RMSE" in out and "run folder" in out


def test_predict_round_trip_and_recursive_horizon(tmp_path, capsys):
    rc, out = train(tmp_path, "--no-plots", "--horizon", "2", "--difference", "1")
    assert rc == 0
    f1, f2 = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", "--run", str(out), "--horizon", "5", "--out", str(f1)]) == 0
    assert main(["predict", "--run", str(out), "--horizon", "5", "--out", str(f2)]) == 0
    a, b = pd.read_csv(f1), pd.read_csv(f2)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["step", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
    assert len(a) == 5 and a.step.iloc[0] == 120
    assert np.isfinite(a.forecast).all()
    capsys.readouterr()
    assert main(["predict", "--run", str(out)]) == 0  # default: the trained horizon, to stdout
    assert capsys.readouterr().out.strip().splitlines()[0] == "step,forecast,lower_80,upper_80,lower_95,upper_95"


def test_predict_with_other_data_and_dates(tmp_path, capsys):
    csv = tmp_path / "m.csv"
    dates = pd.date_range("2000-01-01", periods=80, freq="MS")
    pd.DataFrame({"DATE": dates.strftime("%m/%d/%Y"), "v": 100 + 10 * np.sin(np.arange(80) / 2)}).to_csv(csv,
                                                                                                        index=False)
    out = tmp_path / "r"
    assert main(["train", "--data", str(csv), "--seq-length", "5", "--hidden-size", "4", "--epochs", "2", "--quiet",
                 "--no-plots", "--out", str(out)]) == 0
    f = tmp_path / "f.csv"
    assert main(["predict", "--run", str(out), "--data", str(csv), "--horizon", "3", "--out", str(f)]) == 0
    assert list(pd.read_csv(f).date) == ["2006-09-01", "2006-10-01", "2006-11-01"]


def test_seed_flag_aliases_are_accepted(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data_file", "sine", "--sine-length", "100", "--split_ratio", "0.7", "--seq_length", "5",
               "--hidden_size", "4", "--num_epochs", "2", "--learning_rate", "0.01", "--quiet", "--no-plots",
               "--out", str(out)])
    assert rc == 0
    c = json.loads((out / "config.json").read_text())["config"]
    assert (c["seq_length"], c["hidden_size"], c["epochs"], c["lr"]) == (5, 4, 2, 0.01)


def test_config_file_and_flag_override(tmp_path, capsys):
    t = tmp_path / "c.toml"
    t.write_text('data = "sine"\nsine_length = 100\nseq_length = 5\nhidden_size = 4\nepochs = 9\nplots = false\n')
    out = tmp_path / "r"
    assert main(["train", "--config", str(t), "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    c = json.loads((out / "config.json").read_text())
    assert c["config"]["epochs"] == 2 and c["config"]["name"] == "c" and c["run"]["epochs_run"] == 2


def test_failed_run_never_damages_an_existing_run_folder(tmp_path, capsys, monkeypatch):
    rc, out = train(tmp_path, "--no-plots")
    assert rc == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "cost", boom)
    with pytest.raises(RuntimeError):
        main(["train", *TINY, "--out", str(out), "--epochs", "1"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [q for q in os.listdir(tmp_path) if q.startswith(".")]
    monkeypatch.undo()
    assert main(["train", *TINY, "--out", str(out), "--epochs", "1", "--no-plots"]) == 0  # a good run replaces it
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["train", "--data", "no_such_file.csv"], "not found"),
    (["train", "--data", "GOOG.csv", "--target", "Nope"], "target column"),
    (["train", "--data", "GOOG.csv", "--date", "Nope"], "date column"),
    (["train", "--lr", "abc"], "--lr must be a number"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--split-ratio", "2"], "split-ratio"),
    (["train", "--device", "tpu"], "unknown device"),
    (["train", "--cell", "xyz"], "unknown cell"),
    (["train", "--bogus", "1"], "unrecognized arguments"),
    (["train", "--config", "no-such-config"], "not found"),
    (["train", "--data", "sine", "--sine-length", "30", "--seq-length", "25"], "too short"),
    (["predict", "--run", "no_such_run_dir"], "not found"),
    (["predict"], "required"),
    (["nonsense"], "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(args, fragment, capsys):
    one_line_error(capsys, main(args), fragment)


def test_cuda_unavailable_is_a_user_error(capsys, monkeypatch):
    from gru_xp import backend

    monkeypatch.setattr(backend, "cuda_available", lambda: (False, "CuPy is not installed (ImportError)"))
    one_line_error(capsys, main(["train", *TINY, "--device", "cuda"]), "cuda")


def test_bad_toml_and_unknown_key(tmp_path, capsys):
    t = tmp_path / "c.toml"
    t.write_text("epochs = = 1\n")
    one_line_error(capsys, main(["train", "--config", str(t)]), "not valid TOML")
    t.write_text("epoch = 1\n")
    one_line_error(capsys, main(["train", "--config", str(t)]), "did you mean 'epochs'")


def test_bad_csv_contents(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("Date,Close\n2020-01-01,1\n2020-01-01,2\n")
    one_line_error(capsys, main(["train", "--data", str(p)]), "duplicate date")
    p.write_text("Date,Close\n2020-01-01,1\n2020-01-02,\n")
    one_line_error(capsys, main(["train", "--data", str(p)]), "missing")
    p.write_text("Date,Close\n2020-01-01,1\n2020-01-02,x\n")
    one_line_error(capsys, main(["train", "--data", str(p)]), "non-numeric")


def test_missing_or_corrupt_run_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, main(["predict", "--run", str(tmp_path / "empty")]), "not found")
    rc, out = train(tmp_path, "--no-plots")
    assert rc == 0
    (out / "model.npz").write_bytes(b"garbage")
    one_line_error(capsys, main(["predict", "--run", str(out)]), "corrupt")
    one_line_error(capsys, main(["predict", "--run", str(out.parent), "--horizon", "x"]), "--horizon")


def test_out_refuses_a_foreign_folder(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    one_line_error(capsys, main(["train", *TINY, "--out", str(d)]), "not a gru-xp run")
    assert (d / "notes.txt").read_text() == "keep me"
