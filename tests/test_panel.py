"""Panels (issue 18): the archive protocol on CIF 2016 (naive 1.256), scaling that never sees a test value, windows
that never cross series, a one-series panel equal to `gru-xp train`, the run folder, predict --series, backtest and
sweep on a panel, and every user error as one line, exit 2."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru_xp.cli import main
from gru_xp.config import make_config
from gru_xp.errors import UserError
from gru_xp.panel import load_panel, prepare_panel
from gru_xp.panelrun import run_panel

DATA = Path(__file__).resolve().parents[1] / "data"
CIF = str(DATA / "cif_2016_dataset.tsf")
TINY = {"seq_length": 15, "horizon": 12, "scaler": "window", "log": True, "difference": 0, "hidden_size": 4,
        "epochs": 2, "batch_size": 256, "quiet": True, "plots": False}


def one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and "Traceback" not in err
    assert fragment.lower() in err.lower(), err


def long_csv(path, n=60, series=("a", "b", "c"), seed=0, promo=False, scale=None) -> Path:
    """A long CSV (unique_id, ds, y[, promo, price]): monthly series with their own levels."""
    rng = np.random.default_rng(seed)
    rows = []
    for j, name in enumerate(series):
        t = np.arange(n)
        x = (rng.random(n) < 0.3).astype(float)
        level = (scale or 10.0) * (j + 1)
        y = level + 2.0 * np.sin(2 * np.pi * t / 12) + 0.3 * rng.standard_normal(n) + (4.0 * x if promo else 0.0)
        ds = pd.date_range("2000-01-01", periods=n, freq="MS")
        rows.append(pd.DataFrame({"unique_id": name, "ds": ds.strftime("%Y-%m-%d"), "y": y, "promo": x,
                                  "price": rng.standard_normal(n)}))
    pd.concat(rows).to_csv(path, index=False)
    return Path(path)


# ==== the archive protocol on CIF 2016 ==========================================================================
def test_cif_naive_reproduces_the_archive_and_the_run_folder(tmp_path):
    """Naive's mean MASE under the fixed-origin protocol is the archive's 1.256; the run folder holds every file."""
    out = tmp_path / "cif"
    r = run_panel(make_config(None, {**TINY, "data": CIF, "out": str(out), "plots": True}))
    test = r.metrics["test"]
    assert round(test["naive"]["mase"], 3) == 1.256 and test["naive"]["series"] == 72
    assert set(test["model"]) >= {"mase", "mase_median", "smape", "rmse", "coverage_80", "width_95"}
    assert sorted(set(r.panel.horizons.tolist())) == [6, 12] and int((r.panel.horizons == 6).sum()) == 15
    for f in ("model.npz", "config.json", "metrics.json", "series_metrics.csv", "predictions.csv", "history.json",
              "intervals.json", "cost.png", "series.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["naive"]["mase"] == pytest.approx(test["naive"]["mase"])
    sm = pd.read_csv(out / "series_metrics.csv")
    assert len(sm) == 72 and sm["test_model_mase"].mean() == pytest.approx(test["model"]["mase"], rel=1e-5)
    p = pd.read_csv(out / "predictions.csv")
    t = p[p.split == "test"]
    assert {"series", "step", "actual", "predicted", "lower_80", "upper_95"} <= set(p.columns)
    assert len(t) == int(r.panel.horizons.sum()) and t.groupby("series").size()["T1"] == 12
    # the test rows are each series' last h_i values
    t1 = t[t.series == "T1"]
    assert np.allclose(t1.actual.to_numpy(), r.panel.series[0].y[-12:])
    cfgj = json.loads((out / "config.json").read_text())
    assert cfgj["kind"] == "panel" and len(cfgj["panel"]["pipelines"]) == 72


def test_scaling_and_windows_never_see_test_values(tmp_path):
    """Each series' last h_i values (and, for the selection stage, its validation stretch) changed wildly: every
    scaler and every training window is the same; validation windows too when only the test changed."""
    path = long_csv(tmp_path / "p.csv", promo=True)
    cfg = make_config(None, {"data": str(path), "id_col": "unique_id", "horizon": 4, "seq_length": 6,
                             "covariates": "price", "future_covariates": "promo", "quiet": True})
    panel = load_panel(cfg)

    def spoil(upto):  # the values from `upto(i)` on, replaced by huge ones (targets and covariates)
        ss = []
        for i, s in enumerate(panel.series):
            y, c = s.y.copy(), s.covariates.copy()
            y[upto(i):] = 1e6 + np.arange(len(y) - upto(i))
            c[upto(i):] = 1e3
            ss.append(dataclasses.replace(s, y=y, covariates=c))
        return dataclasses.replace(panel, series=ss)

    s_, v_ = (lambda i: len(panel.series[i].y) - 4), (lambda i: len(panel.series[i].y) - 8)
    for stage, bad, same_val in (("select", spoil(s_), True), ("select", spoil(v_), False), ("refit", spoil(s_), True)):
        a, b = prepare_panel(cfg, panel, stage), prepare_panel(cfg, bad, stage)
        assert [p.to_dict() for p in a.pipes] == [p.to_dict() for p in b.pipes], stage
        for k in ("X", "Y", "W"):
            assert np.array_equal(getattr(a.train, k), getattr(b.train, k)), (stage, k)
            if same_val:
                assert np.array_equal(getattr(a.val, k), getattr(b.val, k)), (stage, k)


def test_no_window_crosses_from_one_series_into_another(tmp_path):
    """Series of far-apart levels: every window's inputs and every available target come from its own series, at
    its own anchor (the series index and anchor ride along)."""
    path = long_csv(tmp_path / "p.csv", n=40, series=("a", "b", "c", "d"), scale=1000.0)
    cfg = make_config(None, {"data": str(path), "id_col": "unique_id", "horizon": 5, "seq_length": 7,
                             "scaler": "none", "quiet": True})
    panel = load_panel(cfg)
    prep = prepare_panel(cfg, panel, "select")
    for w in (prep.train, prep.val):
        assert w.X.shape[0] == w.series.size == w.anchors.size > 0
        for x, yv, wt, j, t in zip(w.X[..., 0], w.Y, w.W, w.series, w.anchors):
            y = panel.series[j].y
            assert np.array_equal(x, y[t - 6:t + 1])
            avail = wt > 0
            assert np.array_equal(yv[avail], y[t + 1:t + 6][avail[:len(y[t + 1:t + 6])]])
            assert np.all(np.abs(x - 1000.0 * (j + 1)) < 500)
    assert set(prep.train.series.tolist()) == {0, 1, 2, 3}
    # masked targets: the training windows' targets at or past the validation start weigh nothing
    v = prep.val_start[prep.train.series]
    steps = prep.train.anchors[:, None] + np.arange(1, 6)[None, :]
    assert np.all(prep.train.W[steps >= v[:, None]] == 0) and np.all(prep.train.W[steps < v[:, None]] > 0)


@pytest.mark.parametrize("K,extra", [(3, ["--no-partial-windows"]), (1, [])])
def test_one_series_panel_equals_gru_xp_train(tmp_path, capsys, K, extra):
    """A long CSV holding one series, and that series' own CSV under `gru-xp train` with split points that put its
    test on the last K values and validation on the K before: the same weights, the same test forecast."""
    n = 80
    path = long_csv(tmp_path / "one.csv", n=n, series=("only",))
    df = pd.read_csv(path)
    df[["ds", "y"]].to_csv(tmp_path / "single.csv", index=False)
    common = ["--date", "ds", "--target", "y", "--seq-length", "12", "--horizon", str(K), "--hidden-size", "5",
              "--epochs", "4", "--batch-size", "8", "--difference", "1", "--quiet", "--no-plots", "--intervals",
              "none", "--dtype", "float64"]
    s = n - K
    assert main(["train", "--data", str(path), "--id-col", "unique_id", *common, *extra,
                 "--out", str(tmp_path / "panel")]) == 0
    assert main(["train", "--data", str(tmp_path / "single.csv"), *common, "--split-ratio", str(s / n),
                 "--val-ratio", str(K / s), "--out", str(tmp_path / "single")]) == 0
    a, b = np.load(tmp_path / "panel" / "model.npz"), np.load(tmp_path / "single" / "model.npz")
    names = [k for k in a.files if not k.startswith("__")]
    assert names and all(np.array_equal(a[k], b[k]) for k in names)
    pp, ps = pd.read_csv(tmp_path / "panel" / "predictions.csv"), pd.read_csv(tmp_path / "single" /
                                                                               "predictions.csv")
    pt, st = pp[pp.split == "test"], ps[ps.split == "test"]
    assert len(pt) == len(st) == K
    assert np.array_equal(pt.predicted.to_numpy(), st.predicted.to_numpy())
    assert np.array_equal(pt.actual.to_numpy(), st.actual.to_numpy())


def test_future_covariate_panel_beats_no_covariates(tmp_path):
    """Six series driven by a known-future 0/1 input (+4 when on): the global model with --future-covariates
    forecasts their tests (the last 3 values of each) far better than without."""
    path = long_csv(tmp_path / "p.csv", n=100, series=tuple("abcdef"), promo=True, seed=3)
    maes = {}
    for fc in ("", "promo"):
        cfg = make_config(None, {"data": str(path), "id_col": "unique_id", "horizon": 3, "seq_length": 12,
                                 "hidden_size": 16, "epochs": 40, "batch_size": 32, "lr": 0.01, "difference": 0,
                                 "future_covariates": fc, "quiet": True, "intervals": "none"})
        maes[fc] = run_panel(cfg, save=False).metrics["test"]["model"]["mae"]
    promos = pd.read_csv(path).groupby("unique_id").promo.apply(lambda v: v.to_numpy()[-3:].sum()).sum()
    assert promos >= 3  # the test has the input on in some steps (else there is nothing to forecast better)
    assert maes["promo"] < 0.5 * maes[""], maes


def test_predict_every_series_or_one(tmp_path, capsys):
    path = long_csv(tmp_path / "p.csv", n=50, promo=True)
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--id-col", "unique_id", "--horizon", "4", "--seq-length", "8",
                 "--hidden-size", "4", "--epochs", "3", "--quiet", "--no-plots", "--series-embedding", "--refit",
                 "--ensemble", "2", "--future-covariates", "promo", "--out", str(out)]) == 0
    cfgj = json.loads((out / "config.json").read_text())
    assert cfgj["model"]["ensemble"] == 2 and cfgj["model"]["input_size"] == 1 + 4 + 3  # y, promo x 4, one-hot
    assert cfgj["panel"]["stage"] == "refit" and len(cfgj["run"]["refit_epochs"]) == 2
    capsys.readouterr()
    one_line_error(capsys, main(["predict", "--run", str(out)]), "needs the future covariate 'promo'")
    fut = pd.read_csv(path)
    extra = pd.DataFrame([{"unique_id": u, "ds": d, "y": np.nan, "promo": 1.0, "price": 0.0} for u in "abc"
                          for d in pd.date_range("2004-03-01", periods=8, freq="MS").strftime("%Y-%m-%d")])
    pd.concat([fut, extra]).to_csv(tmp_path / "future.csv", index=False)
    assert main(["predict", "--run", str(out), "--data", str(tmp_path / "future.csv")]) == 0
    df = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(df.columns) == ["series", "date", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
    assert df.groupby("series").size().to_dict() == {"a": 4, "b": 4, "c": 4}
    assert df.date.iloc[0] == "2004-03-01" and np.all(df.lower_80 <= df.forecast) and np.all(df.forecast <= df.upper_80)
    assert main(["predict", "--run", str(out), "--series", "b", "--horizon", "6", "--intervals", "none", "--data",
                 str(tmp_path / "future.csv")]) == 0
    one = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(one.columns) == ["series", "date", "forecast"] and len(one) == 6 and set(one.series) == {"b"}
    assert np.allclose(one.forecast.to_numpy()[:4], df[df.series == "b"].forecast.to_numpy(), rtol=1e-6)
    rc = main(["predict", "--run", str(out), "--series", "zz"])
    one_line_error(capsys, rc, "series 'zz' is not in this run")


def test_backtest_and_sweep_on_a_panel(tmp_path, capsys):
    path = long_csv(tmp_path / "p.csv", n=48)
    common = ["--data", str(path), "--id-col", "unique_id", "--horizon", "3", "--seq-length", "6",
              "--hidden-size", "3", "--epochs", "2", "--quiet", "--intervals", "none"]
    assert main(["backtest", *common, "--folds", "3", "--out", str(tmp_path / "bt")]) == 0
    bt = json.loads((tmp_path / "bt" / "backtest.json").read_text())
    assert len(bt["folds"]) == 3 and bt["overall"]["naive"]["series"] == 9
    assert [f["cut_horizons"] for f in bt["folds"]] == [2, 1, 0]
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nhidden_size = [2, 3]\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{path}"\nid_col = "unique_id"\nhorizon = 3\nseq_length = 6\nepochs = 2\n'
                   f'intervals = []\n')
    rc = main(["sweep", "--config", str(cfg), "--grid", str(grid), "--serial", "--out", str(tmp_path / "sw")])
    rows = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert rc == 0 and [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["test_model_mase_median"] is not None and r["test_naive_mase"] > 0 for r in rows)


# ==== user errors ===============================================================================================
def test_panel_user_errors(tmp_path, capsys):
    path = long_csv(tmp_path / "p.csv", n=30)
    base = ["train", "--data", str(path), "--quiet", "--epochs", "1", "--out", str(tmp_path / "r")]
    cases = [
        (["--id-col", "series"], "--id-col column 'series' not in the file"),
        (["--id-col", "unique_id", "--target", "unique_id"], "name the same column"),
        (["--id-col", "unique_id", "--covariates", "y"], "named twice"),
        (["--id-col", "unique_id", "--covariates", "price", "--future-covariates", "price"], "in both"),
        (["--id-col", "unique_id", "--covariates", "price,price"], "twice"),
        (["--id-col", "unique_id", "--seq-length", "40"], "use a smaller --seq-length"),
        (["--refit"], "--refit is for panels"),
        (["--id-col", "unique_id", "--shrink"], "not available on panels"),
    ]
    for extra, frag in cases:
        one_line_error(capsys, main(base + extra), frag)
    tsf = tmp_path / "m.tsf"
    tsf.write_text("@relation t\n@attribute series_name string\n@frequency monthly\n@horizon 2\n@data\n"
                   "A:1,2,?,4,5,6,7,8,9,10\n")
    one_line_error(capsys, main(["train", "--data", str(tsf), "--quiet"]), "--missing drop|ffill|interpolate")
    one_line_error(capsys, main(["train", "--data", str(tsf), "--id-col", "x", "--quiet"]),
                   "a .tsf file names its series itself")


def test_a_series_too_short_is_named():
    cfg = make_config(None, {**TINY, "data": CIF, "seq_length": 30})
    with pytest.raises(UserError, match=r"series 'T\d+' has \d+ points"):
        prepare_panel(cfg, load_panel(cfg))


def test_every_series_too_short_is_counted_and_a_scaler_error_names_its_series(tmp_path, capsys):
    """One error lists the short series (not only the first), and a series with no training data left for its
    scaler is named (the message used to be the single-series one, which names none)."""
    a = pd.read_csv(long_csv(tmp_path / "a.csv", n=60, series=("a", "d")))
    b = pd.read_csv(long_csv(tmp_path / "b.csv", n=14, series=("b", "c")))
    pd.concat([a, b]).to_csv(tmp_path / "p.csv", index=False)
    base = ["train", "--data", str(tmp_path / "p.csv"), "--id-col", "unique_id", "--quiet", "--epochs", "1",
            "--horizon", "3", "--seq-length", "6", "--out", str(tmp_path / "r")]
    one_line_error(capsys, main(base), "(2 of 4 series are too short: 'b' 14 points, 'c' 14 points)")
    c = pd.read_csv(long_csv(tmp_path / "c.csv", n=6, series=("e",)))
    pd.concat([a, c]).to_csv(tmp_path / "q.csv", index=False)
    one_line_error(capsys, main([*base[:2], str(tmp_path / "q.csv"), *base[3:]]),
                   "series 'e' (6 points): no training data left to fit the scaler")
