"""Walk-forward backtest: fold boundaries, no leakage, metrics, one model and one read of the CSV, the CLI."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

import gru_xp.data as data_mod
import gru_xp.model as model_mod
import gru_xp.runs as runs_mod
import gru_xp.train as train_mod
from gru_xp import backtest as bt
from gru_xp import metrics
from gru_xp.config import make_config
from gru_xp.data import prepare, split_points
from gru_xp.errors import UserError


def tiny(**kw):
    base = dict(data="sine", sine_length=160, sine_period=16.0, sine_noise=0.05, seq_length=8, hidden_size=6,
                epochs=4, batch_size=16, lr=0.01, quiet=True, plots=False, seed=1)
    base.update(kw)
    return make_config(None, base)


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(150)
    y = 50 + 10 * np.sin(2 * np.pi * t / 12) + 0.1 * t + rng.normal(0, 0.5, t.size)
    dates = pd.date_range("2000-01-01", periods=t.size, freq="MS")
    p = tmp_path / "toy.csv"
    pd.DataFrame({"DATE": dates.strftime("%Y-%m-%d"), "value": y}).to_csv(p, index=False)
    return p


def counting(monkeypatch, module, name):
    calls = []
    orig = getattr(module, name)

    def wrapped(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("horizon", [1, 3])
def test_folds_are_expanding_contiguous_and_never_see_their_block(horizon):
    cfg = tiny(horizon=horizon, difference=[1])
    n = cfg.sine_length
    _, s = split_points(n, cfg.split_ratio, cfg.val_ratio)
    folds = bt.make_folds(n, cfg, 4, 1)
    assert len(folds) == 4
    assert folds[0].test_start == s and folds[-1].test_end == n
    for a, b in zip(folds, folds[1:]):
        assert a.test_end == b.test_start  # contiguous blocks
        assert b.val_start > a.val_start and b.train_anchors.size > a.train_anchors.size  # expanding window
    for f in folds:
        K = horizon
        assert f.train_anchors.max() + K < f.val_start  # every training target < v_i
        assert f.val_anchors.min() + 1 >= f.val_start and f.val_anchors.max() + K < f.test_start
        assert (f.test_anchors + 1 >= f.test_start).all() and (f.test_anchors + 1 < f.test_end).all()
        assert (f.test_anchors + K <= n - 1).all()
        assert f.val_start == f.test_start - round(cfg.val_ratio * f.test_start)
    # the union of the fold origins is the train command's test set, in order, without overlap
    allo = np.concatenate([f.test_anchors for f in folds])
    np.testing.assert_array_equal(allo, prepare(cfg).test.anchors)


def test_scaler_and_earlier_folds_do_not_see_the_future(csv, tmp_path, monkeypatch):
    cfg = make_config(None, dict(data=str(csv), seq_length=6, hidden_size=4, epochs=3, batch_size=16, quiet=True,
                                 plots=False, difference=[1]))
    r1 = bt.backtest(cfg, 3, "every")
    # the future after fold 2's start, made absurd: folds 0 and 1 (model, scaler, predictions) must not move
    b2 = r1.boundaries[2]
    df = pd.read_csv(csv)
    df.loc[b2:, "value"] = df.loc[b2:, "value"] * 100 + 1e4
    p2 = tmp_path / "future.csv"
    df.to_csv(p2, index=False)
    r2 = bt.backtest(make_config(None, {**cfg.to_dict(), "data": str(p2)}), 3, "every")
    early = r1.predictions["fold"] < 2
    np.testing.assert_array_equal(r1.predictions["model"][early], r2.predictions["model"][early])
    assert r1.folds[0]["metrics"] == r2.folds[0]["metrics"] and r1.folds[1]["metrics"] == r2.folds[1]["metrics"]
    assert not np.array_equal(r1.predictions["model"][~early], r2.predictions["model"][~early])
    series = data_mod.load_series(cfg)
    for f in bt.make_folds(len(series.y), cfg, 3, series.season):
        pipe = bt.fold_pipeline(cfg, series, f, series.season)
        z = np.diff(series.y)[: f.val_start - 1]  # differenced y[:v_i]
        assert pipe.scaler.shift == pytest.approx(z.mean()) and pipe.scaler.scale == pytest.approx(z.std())


def test_overall_is_the_concatenation_and_naive_is_hand_checkable():
    cfg = tiny()
    r = bt.backtest(cfg, 4, "every")
    y, p = r.series.y, r.predictions
    om = metrics.evaluate(p["actual"], {k: p[k] for k in metrics.MODELS}, r.overall["mase_scale"])
    assert {k: {m: v[m] for m in metrics.METRICS} for k, v in r.overall["metrics"].items()} == om
    for d, i in zip(r.folds, range(4)):
        a = p["anchors"][p["fold"] == i]
        assert d["origins"] == a.size
        e = y[a + 1] - y[a]  # naive: the last observed value
        assert d["metrics"]["naive"]["rmse"] == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-12)
        assert d["metrics"]["naive"]["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
        assert d["skill_rmse"]["naive"] == pytest.approx(d["metrics"]["model"]["rmse"] / d["metrics"]["naive"]["rmse"])
    e = y[p["anchors"] + 1] - y[p["anchors"]]
    assert r.overall["metrics"]["naive"]["rmse"] == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-12)
    assert len(r.seconds_per_fold["train"]) == 4 and all(s > 0 for s in r.seconds_per_fold["train"])


def test_every_builds_one_model_reads_the_csv_once_and_equals_fresh_training(csv, monkeypatch):
    cfg = make_config(None, dict(data=str(csv), seq_length=6, hidden_size=4, layers=2, dropout=0.2, epochs=3,
                                 batch_size=16, quiet=True, plots=False, difference=[1],
                                 intervals=[]))  # the intervals' calibration refits build their own models
    builds = counting(monkeypatch, bt, "build_model")
    inits = counting(monkeypatch, model_mod.Forecaster, "__init__")
    loads = counting(monkeypatch, data_mod, "load_series")
    reads = counting(monkeypatch, pd, "read_csv")
    fits = counting(monkeypatch, bt, "fit")
    r = bt.backtest(cfg, 3, "every")
    assert (len(builds), len(inits), len(loads), len(reads), len(fits)) == (1, 1, 1, 1, 3)
    # fold 2, trained on the reused model, equals a fresh model trained on fold 2's window (init and dropout reset)
    monkeypatch.undo()
    series = data_mod.load_series(cfg)
    f = bt.make_folds(len(series.y), cfg, 3, series.season)[2]
    pipe = bt.fold_pipeline(cfg, series, f, series.season)
    fresh = runs_mod.build_model(cfg)
    train_mod.fit(fresh, *pipe.windows(series.y, f.train_anchors), *pipe.windows(series.y, f.val_anchors),
                  optimizer=runs_mod.make_optimizer(cfg), epochs=cfg.epochs, batch_size=cfg.batch_size,
                  clip=cfg.clip, seed=cfg.seed, progress=False)
    lv = pipe.invert(series.y, f.test_anchors,
                     runs_mod.predict_scaled(fresh, pipe.windows(series.y, f.test_anchors)[0]))
    np.testing.assert_allclose(r.predictions["model"][r.predictions["fold"] == 2], lv, rtol=1e-6)


def test_once_trains_once_and_reproduces_the_train_command(monkeypatch):
    cfg = tiny(difference=[1])
    fits = counting(monkeypatch, bt, "fit")
    once = bt.backtest(cfg, 3, "once")
    assert len(fits) == 1
    assert [d["trained"] for d in once.folds] == [True, False, False]
    monkeypatch.undo()
    every = bt.backtest(cfg, 3, "every")
    assert once.folds[0]["metrics"] == every.folds[0]["metrics"]  # fold 0 is the same training in both modes
    test = runs_mod.run(cfg, save=False).metrics["test"]
    for k in metrics.MODELS:
        for m in metrics.METRICS:
            assert once.overall["metrics"][k][m] == pytest.approx(test[k][m], rel=1e-5)


def test_calendar_and_ensemble_backtest_reproduces_the_train_command(csv, monkeypatch):
    cfg = make_config(None, dict(data=str(csv), seq_length=6, hidden_size=4, epochs=3, batch_size=16, quiet=True,
                                 plots=False, difference=[1], calendar=True, ensemble=2, seed=2))
    builds = counting(monkeypatch, bt, "build_model")
    fits = counting(monkeypatch, bt, "fit")
    once = bt.backtest(cfg, 3, "once")
    assert (len(builds), len(fits)) == (2, 2)  # one model per member for the whole backtest, trained once
    monkeypatch.undo()
    r = runs_mod.run(cfg, save=False)
    assert r.model.rnn.input_size == 3 and len(r.models) == 2
    np.testing.assert_allclose(once.predictions["model"], r.predictions["test"]["model"], rtol=1e-6)  # float32
    every = bt.backtest(cfg, 3, "every")
    assert every.folds[0]["metrics"] == once.folds[0]["metrics"]


def test_reproducible_with_a_seed():
    a, b = bt.backtest(tiny(seed=3), 2, "every"), bt.backtest(tiny(seed=3), 2, "every")
    np.testing.assert_array_equal(a.predictions["model"], b.predictions["model"])
    assert a.overall == b.overall
    c = bt.backtest(tiny(seed=4), 2, "every")
    assert not np.array_equal(a.predictions["model"], c.predictions["model"])


def test_too_many_folds_and_bad_flags_are_one_line_user_errors():
    cfg = tiny()
    with pytest.raises(UserError, match="too many"):
        bt.backtest(cfg, 1000, "every")
    with pytest.raises(UserError, match="--folds"):
        bt.make_folds(160, cfg, 0, 1)
    with pytest.raises(UserError, match="--retrain"):
        bt.backtest(cfg, 2, "sometimes")


def parse(argv):
    p = argparse.ArgumentParser()
    bt.add_arguments(p)
    return p.parse_args(argv)


def test_cli_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bt"
    argv = ["--config", "sine", "--folds", "3", "--sine-length", "200", "--epochs", "2", "--hidden-size", "4",
            "--out", str(out)]
    assert bt.run_cli(parse(argv)) == 0
    j = json.loads((out / "backtest.json").read_text())
    assert len(j["folds"]) == 3 and set(j["overall"]["metrics"]) == set(metrics.MODELS)
    assert len(j["seconds_per_fold"]["train"]) == 3 and j["retrain"] == "every"
    assert (out / "backtest.png").stat().st_size > 1000
    assert "overall" in capsys.readouterr().out
    assert bt.run_cli(parse(argv + ["--retrain", "once", "--quiet"])) == 0  # rerun into the same folder
    assert json.loads((out / "backtest.json").read_text())["retrain"] == "once"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not a gru-xp backtest"):
        bt.run_cli(parse(argv[:-1] + [str(other)]))
    with pytest.raises(UserError, match="not found"):
        bt.run_cli(parse(["--config", "no-such-config"]))
    with pytest.raises(UserError, match="--retrain"):
        bt.run_cli(parse(["--config", "sine", "--retrain", "never"]))
    with pytest.raises(UserError, match="--folds"):
        bt.run_cli(parse(["--config", "sine", "--folds", "x"]))


def test_gru_xp_backtest_command(tmp_path, capsys):
    """Through the real entry point: `gru-xp backtest ...` writes its folder; a user error is one line, exit 2."""
    from gru_xp.cli import main

    out = tmp_path / "bt"
    rc = main(["backtest", "--config", "sine", "--folds", "2", "--sine-length", "160", "--epochs", "2",
               "--hidden-size", "4", "--out", str(out)])
    assert rc == 0 and (out / "backtest.json").exists()
    capsys.readouterr()
    assert main(["backtest", "--config", "sine", "--folds", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gru-xp: error:") and "too many" in err
