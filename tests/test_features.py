"""Calendar input features and seed ensembles: alignment, input size, save/load/predict round trips, exactness."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gru_xp import checkpoint
from gru_xp.cli import main
from gru_xp.config import make_config
from gru_xp.data import load_series, prepare
from gru_xp.errors import TrainingInterrupted, UserError
from gru_xp.resume import load_resume
from gru_xp.runs import forecast, load_run, predict_run, predict_scaled, resume_run, run
from gru_xp.train import TEST_SIGINT_ENV


def monthly_csv(tmp_path, n=96, start="2001-03-01"):
    dates = pd.date_range(start, periods=n, freq="MS")
    t = np.arange(n)
    y = 50 + 0.1 * t + 8 * np.sin(2 * np.pi * (dates.month.to_numpy() - 1) / 12) + np.cos(t / 5.0)
    p = tmp_path / "monthly.csv"
    pd.DataFrame({"DATE": dates.strftime("%m/%d/%Y"), "value": y}).to_csv(p, index=False)
    return p


def cfg_for(path, **kw):
    base = dict(data=str(path), seq_length=6, hidden_size=6, epochs=4, batch_size=16, quiet=True, plots=False,
                lr=0.01, difference=[1], calendar=True)
    base.update(kw)
    return make_config(None, base)


def test_monthly_calendar_features_are_the_month_of_each_steps_target(tmp_path):
    path = monthly_csv(tmp_path)
    prep = prepare(cfg_for(path))
    pipe, y = prep.pipeline, prep.series.y
    assert (pipe.calendar, pipe.cal_period, pipe.n_inputs) == ("month", 12.0, 3)
    months = [int(s.split("/")[0]) for s in pd.read_csv(path)["DATE"]]  # by hand, from the file's text
    assert months[:3] == [3, 4, 5]
    for split in (prep.train, prep.val, prep.test):
        assert split.X.shape[1:] == (6, 3)
        for row, t in enumerate(split.anchors[:5]):
            for j in range(6):
                i = t - 6 + 1 + j  # the input step's position; its feature is the month of position i + 1
                ang = 2 * math.pi * (months[i + 1] - 1) / 12
                assert split.X[row, j, 1] == pytest.approx(math.sin(ang), abs=1e-12)
                assert split.X[row, j, 2] == pytest.approx(math.cos(ang), abs=1e-12)
    # channel 0 is unchanged by the calendar option
    plain = prepare(cfg_for(path, calendar=False))
    np.testing.assert_array_equal(plain.train.X[..., 0], prep.train.X[..., 0])
    assert plain.train.X.shape[-1] == 1
    # the last test window's final step carries the month of its target, the last date of the file
    last = prep.test.anchors[-1]
    assert last + 1 == len(y) - 1
    ang = 2 * math.pi * (months[-1] - 1) / 12
    assert prep.test.X[-1, -1, 1:] == pytest.approx([math.sin(ang), math.cos(ang)], abs=1e-12)


def test_future_phases_continue_the_calendar(tmp_path):
    path = monthly_csv(tmp_path, n=30, start="2010-01-01")  # last date 2012-06-01
    cfg = cfg_for(path)
    series = load_series(cfg)
    pipe = prepare(cfg, series).pipeline
    ph = pipe.phases(series, 30 + 8)
    np.testing.assert_array_equal(ph[30:], [6, 7, 8, 9, 10, 11, 0, 1])  # Jul 2012 .. Feb 2013 (month - 1)


def test_input_size_follows_and_is_saved(tmp_path):
    path = monthly_csv(tmp_path)
    r = run(cfg_for(path, out=str(tmp_path / "run")), save=True)
    assert r.model.rnn.input_size == 3
    cj = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cj["model"]["input_size"] == 3 and cj["pipeline"]["calendar"] == "month"
    r1 = run(cfg_for(path, calendar=False), save=False)
    assert r1.model.rnn.input_size == 1


def test_calendar_round_trip_predicts_identically_including_recursive_steps(tmp_path):
    path = monthly_csv(tmp_path)
    r = run(cfg_for(path, out=str(tmp_path / "run"), horizon=2), save=True)
    lr = load_run(tmp_path / "run")
    assert lr.pipeline.to_dict() == r.data.pipeline.to_dict()
    for split in ("train", "val", "test"):
        X = getattr(r.data, split).X
        np.testing.assert_array_equal(predict_scaled(lr.model, X), predict_scaled(r.model, X))
    labels, fc, series, _ = predict_run(tmp_path / "run", steps=7)  # beyond the horizon: recursive
    want = forecast(r.model, r.data.pipeline, series.y, 7, series=series)
    np.testing.assert_array_equal(fc, want)
    assert len(fc) == 7 and np.isfinite(fc).all()
    # the recursion feeds each step the calendar of its own future position: one direct step from the extended
    # history (dates continued monthly) gives the same values
    n = len(series.y)
    ext = load_series(cfg_for(path))
    ext.y = np.concatenate([series.y, fc[:2]])
    ext.dates = series.dates.append(pd.DatetimeIndex([series.dates[-1] + pd.DateOffset(months=i) for i in (1, 2)]))
    t = np.array([n + 1])
    x = r.data.pipeline.inputs(ext.y, t, r.data.pipeline.phases(ext))
    step = r.data.pipeline.invert(ext.y, t, predict_scaled(r.model, x))[0]
    np.testing.assert_allclose(step, fc[2:4], rtol=1e-12)
    # calendar features need the dates back: a plain array without a series is refused
    with pytest.raises(UserError, match="calendar"):
        forecast(r.model, r.data.pipeline, series.y, 3)


def test_calendar_from_the_row_index_needs_a_season():
    with pytest.raises(UserError, match="--season"):
        prepare(make_config(None, dict(data="sine", sine_length=120, seq_length=6, calendar=True, quiet=True)))
    prep = prepare(make_config(None, dict(data="sine", sine_length=120, seq_length=6, calendar=True, season=16,
                                          quiet=True)))
    assert prep.pipeline.calendar == "index" and prep.pipeline.cal_period == 16.0
    t = prep.train.anchors[0]
    ang = 2 * math.pi * ((t + 1) % 16) / 16
    assert prep.train.X[0, -1, 1:] == pytest.approx([math.sin(ang), math.cos(ang)], abs=1e-12)


def test_ensemble_is_exactly_the_average_of_single_runs(tmp_path):
    path = monthly_csv(tmp_path)
    ens = run(cfg_for(path, ensemble=3, seed=5), save=False)
    singles = [run(cfg_for(path, seed=5 + i), save=False) for i in range(3)]
    assert len(ens.models) == 3 and len(ens.histories) == 3
    for split in ("train", "val", "test"):
        avg = np.mean(np.stack([s.predictions[split]["model"] for s in singles]), axis=0)
        np.testing.assert_array_equal(ens.predictions[split]["model"], avg)
        np.testing.assert_array_equal(ens.predictions[split]["seasonal_naive"],
                                      singles[0].predictions[split]["seasonal_naive"])
    rmse = float(np.sqrt(np.mean((ens.predictions["test"]["model"] - ens.predictions["test"]["actual"]) ** 2)))
    assert ens.metrics["test"]["model"]["rmse"] == pytest.approx(rmse, rel=1e-12)
    for h, s in zip(ens.histories, singles):
        assert h.val_loss == s.history.val_loss  # each member early-stopped on its own
    again = run(cfg_for(path, ensemble=3, seed=5), save=False)  # bit-reproducible
    np.testing.assert_array_equal(again.predictions["test"]["model"], ens.predictions["test"]["model"])


def test_ensemble_checkpoint_round_trip(tmp_path):
    path = monthly_csv(tmp_path)
    r = run(cfg_for(path, ensemble=2, horizon=2, out=str(tmp_path / "run")), save=True)
    params, meta = checkpoint.load(tmp_path / "run" / "model.npz")
    assert meta["format_version"] == checkpoint.FORMAT_VERSION == 2 and meta["model"]["ensemble"] == 2
    assert all(k.startswith(("m0.", "m1.")) for k in params)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist["members"]) == 2 and hist["train_loss"] == hist["members"][0]["train_loss"]
    lr = load_run(tmp_path / "run")
    assert len(lr.models) == 2
    for a, b in zip(lr.models, r.models):
        X = r.data.test.X
        np.testing.assert_array_equal(predict_scaled(a, X), predict_scaled(b, X))
    _, fc, series, _ = predict_run(tmp_path / "run", steps=5)
    np.testing.assert_array_equal(fc, forecast(r.models, r.data.pipeline, series.y, 5, series=series))
    t = np.array([len(series.y) - 1])
    x = r.data.pipeline.inputs(series.y, t, r.data.pipeline.phases(series))
    direct = np.mean([r.data.pipeline.invert(series.y, t, predict_scaled(m, x))[0] for m in r.models], axis=0)
    np.testing.assert_allclose(fc[:2], direct, rtol=1e-12)
    # a member missing from the file is refused, not silently dropped
    arrays = {k: v for k, v in params.items() if not k.startswith("m1.")}
    meta2 = {k: v for k, v in meta.items() if k not in ("arrays",)}
    checkpoint.save(tmp_path / "run" / "model.npz", arrays, meta2)
    with pytest.raises(UserError, match="corrupt"):
        load_run(tmp_path / "run")


def test_old_format_1_single_model_checkpoints_still_load(tmp_path):
    r = run(make_config(None, dict(data="sine", sine_length=120, seq_length=6, hidden_size=6, epochs=3, quiet=True,
                                   plots=False, difference=[1], out=str(tmp_path / "run"))), save=True)
    params, meta = checkpoint.load(tmp_path / "run" / "model.npz")
    old = {k: v for k, v in meta.items() if k not in ("arrays", "gru_xp_version")}
    old["format_version"] = 1  # as written before ensembles and calendar features existed
    old["pipeline"] = {k: v for k, v in old["pipeline"].items() if k not in ("calendar", "cal_period")}
    assert "ensemble" not in old["model"]
    checkpoint.save(tmp_path / "run" / "model.npz", params, old)
    assert checkpoint.load(tmp_path / "run" / "model.npz")[1]["format_version"] == 1
    lr = load_run(tmp_path / "run")
    assert len(lr.models) == 1 and lr.pipeline.calendar == ""
    X = r.data.test.X
    np.testing.assert_array_equal(predict_scaled(lr.model, X), predict_scaled(r.model, X))
    _, fc, series, _ = predict_run(tmp_path / "run", steps=3)
    np.testing.assert_array_equal(fc, forecast(r.model, r.data.pipeline, series.y, 3))


def test_ensemble_with_calendar_interrupted_then_resumed_equals_the_whole_run(tmp_path, monkeypatch):
    """Off the main thread (the flag path of the Ctrl-C latch), float32, calendar inputs: the first member is
    interrupted at epoch 2; the resumed run's metrics equal those of a run never interrupted."""
    path = monthly_csv(tmp_path)
    whole = run(cfg_for(path, ensemble=2, out=str(tmp_path / "whole")), save=True, interruptible=False)
    monkeypatch.setenv(TEST_SIGINT_ENV, "2")
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 2 of ensemble member 1/2") as ei:
        run(cfg_for(path, ensemble=2, out=str(tmp_path / "run")), save=True, interruptible=False)
    assert ei.value.out_dir == tmp_path / "run" and ei.value.state.member == 0 and ei.value.state.done == []
    monkeypatch.delenv(TEST_SIGINT_ENV)
    cfg, st = load_resume(tmp_path / "run")
    resumed = resume_run(tmp_path / "run", interruptible=False)
    assert resumed.metrics == whole.metrics and resumed.status == "ok"
    # a resume state that does not fit the run's ensemble is a one-line error
    st.member = 2
    with pytest.raises(UserError, match="does not fit this run's ensemble of 2"):
        run(cfg, save=False, resume=st)


@pytest.mark.parametrize("args, fragment", [
    (["train", "--ensemble", "0"], "--ensemble must be at least 1"),
    (["train", "--ensemble", "two"], "--ensemble must be an integer"),
    (["train", "--data", "sine", "--calendar"], "--calendar needs a seasonal period"),
])
def test_bad_ensemble_and_calendar_are_one_line_exit_2(args, fragment, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and fragment in err, err


def test_cli_train_predict_with_calendar_and_ensemble(tmp_path, capsys):
    path = monthly_csv(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(path), "--seq-length", "6", "--hidden-size", "4", "--epochs", "2", "--quiet",
               "--difference", "1", "--calendar", "--ensemble", "2", "--no-plots", "--out", str(out)])
    assert rc == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--horizon", "3"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0] == "date,forecast,lower_80,upper_80,lower_95,upper_95" and len(lines) == 4
    assert lines[1].startswith("2009-03-01")  # the month after the last date (2001-03 + 96 months - 1)
