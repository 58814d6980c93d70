"""Covariates on one series (issue 18): their alignment (past: lagged; future: the value at each forecast step), their
scalers fitted on training data only, saved with the model, `predict --data` reading future rows, every user error as
one line, exit 2; and the per-window normaliser (--scaler window)."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from gru_xp.cli import main
from gru_xp.config import make_config
from gru_xp.data import Pipeline, Scaler, load_series, prepare
from gru_xp.runs import load_run


def one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and "Traceback" not in err
    assert fragment.lower() in err.lower(), err


def promo_csv(tmp_path, n=300, future=5, seed=0):
    """y = 10 + 5 promo + noise, promo a random 0/1 input known ahead, price observed noise; `future` rows after the
    last target with the target empty (train.csv has none of them, future.csv all)."""
    rng = np.random.default_rng(seed)
    x = (rng.random(n + future) < 0.3).astype(float)
    y = 10 + 5 * x + 0.3 * rng.standard_normal(n + future)
    df = pd.DataFrame({"t": np.arange(n + future), "y": y, "promo": x, "price": rng.standard_normal(n + future)})
    df.loc[n:, "y"] = np.nan
    df.iloc[:n].to_csv(tmp_path / "train.csv", index=False)
    df.to_csv(tmp_path / "future.csv", index=False)
    return df


COMMON = ["--target", "y", "--date", "none", "--seq-length", "12", "--horizon", "3", "--epochs", "40",
          "--hidden-size", "16", "--difference", "0", "--quiet", "--no-plots"]


def test_future_covariate_is_forecast_far_better_with_it(tmp_path, capsys):
    """A series driven by a known-future 0/1 input: --future-covariates makes its test MAE far smaller."""
    promo_csv(tmp_path)
    maes = {}
    for name, extra in (("without", []), ("with", ["--future-covariates", "promo"])):
        assert main(["train", "--data", str(tmp_path / "train.csv"), *COMMON, *extra, "--out",
                     str(tmp_path / name)]) == 0
        maes[name] = json.loads((tmp_path / name / "metrics.json").read_text())["test"]["model"]["mae"]
    assert maes["with"] < 0.5 * maes["without"], maes


def test_predict_reads_future_rows_and_refuses_a_horizon_without_them(tmp_path, capsys):
    df = promo_csv(tmp_path, n=200)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "train.csv"), *COMMON, "--epochs", "3", "--future-covariates",
                 "promo", "--covariates", "price", "--out", str(out)]) == 0
    lr = load_run(out)
    assert lr.pipeline.future_covariates == ["promo"] and lr.pipeline.covariates == ["price"]
    assert lr.model.rnn.input_size == 1 + 1 + 3 and len(lr.pipeline.cov_scalers) == 2
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--data", str(tmp_path / "future.csv")]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert got.step.tolist() == [200, 201, 202] and np.isfinite(got.forecast).all()
    # the forecast moves with the future input: flip it and the forecast changes
    flipped = df.copy()
    flipped.loc[200:, "promo"] = 1 - flipped.loc[200:, "promo"]
    flipped.to_csv(tmp_path / "flip.csv", index=False)
    assert main(["predict", "--run", str(out), "--data", str(tmp_path / "flip.csv"), "--intervals", "none"]) == 0
    assert not np.allclose(pd.read_csv(io.StringIO(capsys.readouterr().out)).forecast, got.forecast)
    one_line_error(capsys, main(["predict", "--run", str(out)]), "needs the future covariate 'promo' beyond the rows")
    one_line_error(capsys, main(["predict", "--run", str(out), "--data", str(tmp_path / "future.csv"), "--horizon",
                                 "6"]), "past covariates (price) are observed only up to")
    part = df.copy()
    part.loc[201, "promo"] = np.nan
    part.to_csv(tmp_path / "hole.csv", index=False)
    one_line_error(capsys, main(["predict", "--run", str(out), "--data", str(tmp_path / "hole.csv")]),
                   "covariate column 'promo' is empty on line 203 (future row)")


def test_covariate_user_errors(tmp_path, capsys):
    df = promo_csv(tmp_path, n=80)
    base = ["train", "--data", str(tmp_path / "train.csv"), *COMMON, "--epochs", "1", "--out", str(tmp_path / "r")]
    one_line_error(capsys, main(base + ["--covariates", "y"]), "named twice")
    one_line_error(capsys, main(base + ["--covariates", "promo,promo"]), "names column 'promo' twice")
    one_line_error(capsys, main(base + ["--covariates", "promo", "--future-covariates", "promo"]), "in both")
    one_line_error(capsys, main(base + ["--covariates", "nope"]), "--covariates column 'nope' not in the file")
    one_line_error(capsys, main(["train", "--data", "sine", "--covariates", "x", "--quiet"]), "not 'sine'")
    bad = df.iloc[:80].astype({"price": object})
    bad.loc[7, "price"] = "cheap"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    one_line_error(capsys, main(base[:2] + [str(tmp_path / "bad.csv")] + base[3:] + ["--covariates", "price"]),
                   "non-numeric value 'cheap' on line 9")
    hole = df.iloc[:80].copy()
    hole.loc[10, "promo"] = np.nan
    hole.to_csv(tmp_path / "hole.csv", index=False)
    one_line_error(capsys, main(base[:2] + [str(tmp_path / "hole.csv")] + base[3:] + ["--future-covariates",
                                                                                      "promo"]),
                   "'promo' is empty on line 12 (observed row)")


def test_alignment_and_training_only_scalers(tmp_path):
    """Past covariate at each input step's own position; future covariate k steps after each step; the covariate
    scalers see only the training part (the test's values changed: same scalers, same training windows)."""
    df = promo_csv(tmp_path, n=100)
    cfg = make_config(None, {"data": str(tmp_path / "train.csv"), "target": "y", "date": "none", "seq_length": 5,
                             "horizon": 3, "scaler": "none", "covariates": "price", "future_covariates": "promo"})
    prep = prepare(cfg)
    pipe = prep.pipeline
    assert pipe.n_inputs == 1 + 1 + 3
    t = int(prep.train.anchors[4])
    x = prep.train.X[4]  # (L, 5): y, price, promo at +1, +2, +3
    assert np.allclose(x[:, 0], df.y[t - 4:t + 1]) and np.allclose(x[:, 1], df.price[t - 4:t + 1])
    assert np.allclose(x[-1, 2:], df.promo[t + 1:t + 4]) and np.allclose(x[0, 2:], df.promo[t - 3:t])
    cfg2 = make_config(None, {**{k: v for k, v in cfg.to_dict().items()}, "scaler": "standard"})
    a = prepare(cfg2)
    spoiled = df.iloc[:100].copy()
    spoiled.loc[a.test_start:, ["price", "promo"]] = 1e6
    spoiled.to_csv(tmp_path / "spoiled.csv", index=False)
    b = prepare(make_config(None, {**cfg2.to_dict(), "data": str(tmp_path / "spoiled.csv")}))
    assert [s.to_dict() for s in a.pipeline.cov_scalers] == [s.to_dict() for s in b.pipeline.cov_scalers]
    assert np.array_equal(a.train.X, b.train.X) and np.array_equal(a.val.X, b.val.X)
    assert Pipeline.from_dict(a.pipeline.to_dict()).to_dict() == a.pipeline.to_dict()


@pytest.mark.parametrize("log", [False, True])
def test_window_scaler_round_trip_and_scale_invariance(log):
    """--scaler window: targets inverted give the actuals back; the series times a constant gives the same inputs
    and targets (each window divided by its own mean level); every window's levels average 1."""
    rng = np.random.default_rng(0)
    y = 50 + np.cumsum(rng.uniform(0.1, 1.0, 60))
    pipe = Pipeline(8, 4, [], Scaler("window").fit(y), 1, log)
    a = np.arange(7, 50)
    X, Y = pipe.windows(y, a)
    assert np.allclose(pipe.invert(y, a, Y), np.stack([y[a + k] for k in range(1, 5)], axis=1))
    X2, Y2 = pipe.windows(3.5 * y, a)
    assert np.allclose(X, X2) and np.allclose(Y, Y2)
    levels = np.exp(X[:, :, 0]) if log else X[:, :, 0]
    assert np.allclose(levels.mean(axis=1), 1.0)


def test_series_without_covariates_loads_as_before(tmp_path):
    promo_csv(tmp_path, n=50)
    s = load_series(make_config(None, {"data": str(tmp_path / "train.csv"), "target": "y", "date": "none"}))
    assert s.covariates is None and s.cov_names == () and len(s.y) == 50
