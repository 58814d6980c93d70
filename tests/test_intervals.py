"""Prediction intervals (gru_xp/intervals.py and where runs, predict and backtest use them): coverage on known noise
within binomial bounds over many repetitions, no forecast using an error observed at or after its origin, nested
levels, the transform inversions (log, differencing, scaling), recursive steps calibrated on their own errors,
ensembles, the quantile head (CQR), the outputs' contracts and the one-line errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gru_xp import intervals
from gru_xp.backtest import backtest
from gru_xp.cli import main
from gru_xp.config import make_config
from gru_xp.data import prepare
from gru_xp.intervals import Forecasts, Settings, corrections, forecast_paths
from gru_xp.metrics import interval_scores
from gru_xp.runs import forecast, load_run, member_predict, predict_bands, predict_run, run


def binomial_bounds(n: int, p: float, z: float = 3.9) -> tuple[float, float]:
    """A ~1e-4 two-sided band for the mean of n Bernoulli(p) (normal approximation, z = 3.9)."""
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


# ==== the engine on known noise ================================================================================
DISTRIBUTIONS = {
    "normal": lambda rng, size: rng.normal(size=size),
    "student-t 2 (heavy tails)": lambda rng, size: rng.standard_t(2, size=size),
    "exponential (skewed)": lambda rng, size: rng.exponential(size=size) - 1.0,
}


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("m", [19, 50])
def test_split_conformal_coverage_is_exactly_rank_over_m_plus_1_on_exchangeable_errors(dist, m):
    """Known-noise forecasts (the point forecast is 0, y is the noise): over 3000 independent repetitions, each with m
    calibration errors and one query, coverage at 80% and 95% equals ceil((m+1)c)/(m+1) within binomial noise,
    whatever the noise distribution (conformal prediction is distribution-free)."""
    rng = np.random.default_rng(7)
    R, H = 3000, 2
    e = DISTRIBUTIONS[dist](rng, (R, m + 1, H))  # m calibration errors and the query's, per repetition and step
    origins = np.arange(m)
    s = Settings((0.8, 0.95), window=0)
    hits = {0.8: 0, 0.95: 0}
    for r in range(R):
        cal = Forecasts(origins, np.zeros((m, H)), e[r, :m])
        query = Forecasts(np.array([m + H]), np.zeros((1, H)), e[r, m:])  # every calibration error observed
        b = intervals.bands(s, cal, query)
        for c in hits:
            hits[c] += int(np.sum((b.lower[c] <= query.actual) & (query.actual <= b.upper[c])))
    for c, h in hits.items():
        want = math.ceil((m + 1) * c - 1e-9) / (m + 1)
        lo, hi = binomial_bounds(R * H, want)
        assert lo <= h / (R * H) <= hi, (c, h / (R * H), want)


def test_online_rolling_window_covers_nominally_on_a_stream_and_adapts_to_growing_swings():
    """100 streams of 160 origins, 3 steps. I.i.d. noise: the online intervals (each error joining once observed,
    the latest 50 kept) cover ~ nominal. Noise whose scale grows 4x over the stream (swings growing over time):
    calibrating on every error ever observed undercovers badly, the rolling window of 50 less, a window of 30 less
    still, and adaptive conformal inference on top of the window comes closest to nominal."""
    rng = np.random.default_rng(3)
    n, H = 160, 3
    origins = np.arange(n)
    grow = {(50, 0.0): [], (30, 0.0): [], (0, 0.0): [], (50, 0.05): []}
    iid = []
    for _ in range(100):
        for kind in ("iid", "grow"):
            scale = np.ones(n) if kind == "iid" else np.linspace(1.0, 4.0, n)
            fc = Forecasts(origins, np.zeros((n, H)), rng.normal(size=(n, H)) * scale[:, None])
            q = fc.rows(origins >= 60)  # the "test" part: origins 60 ..
            for w, g in (((50, 0.0),) if kind == "iid" else grow):
                b = intervals.bands(Settings((0.8,), window=w, gamma=g), fc, q)
                hit = float(np.mean((b.lower[0.8] <= q.actual) & (q.actual <= b.upper[0.8])))
                (iid if kind == "iid" else grow[(w, g)]).append(hit)
    assert abs(np.mean(iid) - 41 / 51) < 0.01  # rank 41 of 50 -> 41/51 = 0.804
    c = {k: np.mean(v) for k, v in grow.items()}
    assert c[(0, 0.0)] < 0.65 < c[(50, 0.0)] < c[(30, 0.0)] < c[(50, 0.05)] < 0.82, c


def test_adaptive_conformal_inference_recovers_coverage_after_a_jump():
    """Errors 3x larger from origin 100 on, every error kept: plain split conformal undercovers after the jump;
    ACI (gamma 0.05) widens the intervals as the misses are observed."""
    rng = np.random.default_rng(5)
    covs = {0.0: [], 0.05: []}
    for _ in range(100):
        e = rng.normal(size=(300, 1)) * np.where(np.arange(300) < 100, 1.0, 3.0)[:, None]
        fc = Forecasts(np.arange(300), np.zeros((300, 1)), e)
        q = fc.rows(np.arange(300) >= 100)
        for g in covs:
            b = intervals.bands(Settings((0.9,), window=0, gamma=g), fc, q)
            covs[g].append(np.mean((b.lower[0.9] <= q.actual) & (q.actual <= b.upper[0.9])))
    assert np.mean(covs[0.0]) < 0.8 and abs(np.mean(covs[0.05]) - 0.9) < abs(np.mean(covs[0.0]) - 0.9) - 0.05


# ==== no leakage ===============================================================================================
def test_an_error_of_step_k_from_origin_s_is_used_only_from_origin_s_plus_k():
    """Calibration errors of 1 and one of 100 (origin 10, every step): at 90% with a window of 10 the correction is
    the window's maximum, so it jumps to 100 exactly when the big error becomes observable, step by step."""
    H, n = 3, 40
    e = np.ones((n, H))
    e[10, :] = 100.0
    fc = Forecasts(np.arange(n), np.zeros((n, H)), e)
    query = np.arange(5, 40)
    q, _ = corrections(fc.origins, np.abs(fc.actual), query, 0.9, window=10)
    for k in range(1, H + 1):
        for j, t in enumerate(query):
            usable = [s for s in range(n) if s + k <= t][-10:]  # the latest 10 observed by t
            want = np.inf if len(usable) < 9 else 100.0 if 10 in usable else 1.0  # 9 needed for 90%
            assert q[j, k - 1] == want, (t, k)
    assert q[query == 10, 0] == 1.0 and q[query == 11, 0] == 100.0  # observed at 11, not at its origin 10
    assert q[query == 11, 1] == 1.0 and q[query == 12, 1] == 100.0  # step 2: observed at 12
    assert q[-1, 0] == 1.0  # and out of the window of 10 again


def test_changing_the_last_observations_changes_no_interval_issued_before_them(tmp_path):
    """End to end: two series equal up to index j, the second with wild noise (scale 1000) from j on. The model, the
    refit and every interval from an origin t < j are bit-identical; from t >= j + 3 on, with a few of the huge
    errors observed, the 95% intervals are far wider (so a leak would have shown before j)."""
    t = np.arange(150)
    rng = np.random.default_rng(0)
    y = 20 + 5 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.5, t.size)
    j = 135
    y2 = y.copy()
    y2[j:] += rng.normal(0, 1000, t.size - j)
    res = []
    for k, v in enumerate((y, y2)):
        p = tmp_path / f"s{k}.csv"
        pd.DataFrame({"value": v}).to_csv(p, index=False)
        cfg = make_config(None, dict(data=str(p), date="none", seq_length=6, hidden_size=4, epochs=3, quiet=True,
                                     plots=False, difference=[1], horizon=2, season=12))
        res.append(run(cfg, save=False))
    a, b = res[0].predictions["test"], res[1].predictions["test"]
    before = a["anchors"] < j
    for c in ("lower_80", "upper_80", "lower_95", "upper_95", "model"):
        np.testing.assert_array_equal(a[c][before], b[c][before])
    later = a["anchors"] >= j + 3  # >= 2 huge errors observed per step: the 95% correction (49th of 50) is one
    wa, wb = a["upper_95"] - a["lower_95"], b["upper_95"] - b["lower_95"]
    assert later.sum() >= 5 and np.all(wb[later] > 3 * wa[later])
    assert res[0].intervals["refit"] is not None  # the refit took part (26 validation errors < 40 wanted)


# ==== levels, nesting, transforms ==============================================================================
def test_levels_are_nested_and_contain_the_point_even_with_aci_and_cqr():
    rng = np.random.default_rng(1)
    n, H = 120, 2
    point = rng.normal(size=(n, H)) * 5 + 50
    qs = np.sort(point[..., None] + rng.normal(size=(n, H, 3)) * 2, axis=-1)
    qs[..., 1] = point
    fc = Forecasts(np.arange(n), point, point + rng.standard_t(3, size=(n, H)), qs, (0.1, 0.5, 0.9))
    levels = (0.5, 0.8, 0.95)
    for f in (fc, Forecasts(fc.origins, point, fc.actual)):
        for g in (0.0, 0.1):
            b = intervals.bands(Settings(levels, window=30, gamma=g), f, f.rows(np.arange(n) >= 40))
            pt = point[40:]
            for lo_c, hi_c in zip(levels, levels[1:]):
                assert np.all(b.lower[hi_c] <= b.lower[lo_c]) and np.all(b.upper[lo_c] <= b.upper[hi_c])
            assert np.all(b.lower[0.5] <= pt) and np.all(pt <= b.upper[0.5])
            assert np.mean(b.upper[0.95] - b.lower[0.95]) > np.mean(b.upper[0.5] - b.lower[0.5])


def test_log_space_intervals_are_asymmetric_and_widen_with_the_level_of_the_series():
    """Multiplicative noise y = f * exp(e): calibrated in log space the intervals are [f e^-q, f e^q], so their
    width is proportional to the level and the upper side is the longer one."""
    rng = np.random.default_rng(2)
    n = 200
    f = np.linspace(10, 1000, n)[:, None]
    fc = Forecasts(np.arange(n), f, f * np.exp(0.1 * rng.normal(size=(n, 1))))
    q = fc.rows(np.arange(n) >= 60)
    b = intervals.bands(Settings((0.8,), window=50, log=True), fc, q)
    lo, up, pt = b.lower[0.8][:, 0], b.upper[0.8][:, 0], q.point[:, 0]
    assert np.all(up - pt > pt - lo)
    np.testing.assert_allclose((up / pt) * (lo / pt), 1.0, rtol=1e-12)  # symmetric in log space
    w = (up - lo) / pt  # relative width: about constant, so the width follows the level (x3.2 over the test part)
    assert w.std() / w.mean() < 0.3 and 0.7 < ((up - lo)[-1] / (up - lo)[0]) / (pt[-1] / pt[0]) < 1.4


@pytest.mark.parametrize("log,diff,scaler", [(True, [1], "standard"), (False, [1, 12], "minmax"),
                                             (True, [12], "none"), (False, [], "standard")])
def test_transform_inversions_a_perfect_model_has_zero_error_in_the_calibration_space(tmp_path, log, diff, scaler):
    """A 'model' that outputs the true scaled transformed targets: forecast_paths inverts scaling, differencing
    and the log back to the actual levels (to rounding), so every calibration score is ~0 and the intervals
    collapse onto the point; a constant offset in scaled units becomes a known level error."""
    t = np.arange(140)
    y = np.exp(3 + 0.01 * t + 0.2 * np.sin(2 * np.pi * t / 12))
    p = tmp_path / "s.csv"
    pd.DataFrame({"value": y}).to_csv(p, index=False)
    cfg = make_config(None, dict(data=str(p), date="none", seq_length=13, horizon=3, difference=diff, log=log,
                                 scaler=scaler, season=12))
    prep = prepare(cfg)
    pipe = prep.pipeline
    origins = np.arange(pipe.min_anchor(), len(y) - 3)

    fc = forecast_paths(lambda X: [pipe.targets(y, origins)], pipe, y, origins, 3)
    np.testing.assert_allclose(fc.point, fc.actual, rtol=1e-10)
    s = Settings((0.8,), window=50, log=log)
    assert np.nanmax(np.abs(intervals.scores(s, fc, 0.8))) < 1e-9
    b = intervals.bands(s, fc, fc.rows(origins >= 100))
    np.testing.assert_allclose(b.upper[0.8], b.lower[0.8], rtol=1e-9)
    # one scaled unit too high at every step: the level error of step k is the inverted sum (differencing) of it
    off = forecast_paths(lambda X: [pipe.targets(y, origins) + 1.0], pipe, y, origins, 3)
    step = pipe.scaler.scale * (1.0 if not diff or diff == [12] else np.arange(1, 4))  # [1, 12]: sums over lag 1
    want = np.log(off.point / y[origins[:, None] + np.arange(1, 4)]) if log else off.point - off.actual
    np.testing.assert_allclose(want, np.broadcast_to(step, want.shape), rtol=1e-9)


# ==== a run: outputs, ensembles, quantile head, predict, backtest ==============================================
TINY = dict(data="sine", sine_length=150, sine_period=16.0, sine_noise=0.1, seq_length=8, hidden_size=5, epochs=3,
            batch_size=16, lr=0.01, quiet=True, plots=False)


def tiny(**kw):
    return make_config(None, {**TINY, **kw})


def test_run_intervals_are_the_conformal_quantiles_of_the_ensembles_own_errors():
    """An ensemble of 2, horizon 2: the test intervals are centred on the averaged forecast (the predictions), and
    each is recomputed here from the calibration errors of the averaged forecast by hand."""
    r = run(tiny(ensemble=2, horizon=2, interval_gamma=0.0), save=False)  # ACI off: the rank is fixed
    prep, y, K = r.data, r.data.series.y, 2
    p = r.predictions["test"]
    predict, taus = member_predict(r.models)
    main_origins = np.arange(prep.val_start - 1, len(y) - 1)
    cal = forecast_paths(predict, prep.pipeline, y, main_origins, K, prep.phase)
    err = np.abs(cal.actual - cal.point)
    assert r.intervals["refit"] is None or r.intervals["refit"]["cut"] < prep.val_start
    if r.intervals["refit"]:  # the refit's forecasts come first
        ro = np.asarray(r.intervals["refit"]["origins"])
        rp = np.asarray(r.intervals["refit"]["point"])
        cal_o = np.concatenate([ro, main_origins])
        err = np.concatenate([np.abs(intervals.observed(y, ro, K) - rp), err])
    else:
        cal_o = main_origins
    for i, t in enumerate(p["anchors"]):
        for k in range(K):
            e = err[cal_o + k + 1 <= t, k][-30:]
            q = np.sort(e)[math.ceil((e.size + 1) * 0.8 - 1e-9) - 1]
            assert p["upper_80"][i, k] - p["model"][i, k] == pytest.approx(q, rel=1e-9, abs=1e-12)
            assert p["model"][i, k] - p["lower_80"][i, k] == pytest.approx(q, rel=1e-9, abs=1e-12)
    assert set(r.metrics["test"]["seasonal_naive"]) >= {"coverage_80", "width_80", "interval_score_95"}


def test_intervals_none_writes_no_columns_no_state_and_fits_no_refit(tmp_path, monkeypatch):
    import gru_xp.runs as runs_mod

    calls = []
    monkeypatch.setattr(runs_mod, "calibration_refit", lambda *a, **k: calls.append(1))
    assert main(["train", "--data", "sine", "--sine-length", "150", "--seq-length", "8", "--epochs", "2", "--quiet",
                 "--no-plots", "--intervals", "none", "--out", str(tmp_path / "r")]) == 0
    assert not calls and not (tmp_path / "r" / "intervals.json").exists()
    assert list(pd.read_csv(tmp_path / "r" / "predictions.csv").columns)[-1] == "seasonal_naive"
    assert "coverage_80" not in json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["model"]


def test_run_folder_predict_and_recursive_steps_calibrated_on_their_own_errors(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "sine", "--sine-length", "150", "--sine-noise", "0.2", "--seq-length", "8",
                 "--hidden-size", "5", "--epochs", "3", "--horizon", "2", "--quiet", "--out", str(out)]) == 0
    st = json.loads((out / "intervals.json").read_text())
    assert st["levels"] == [0.8, 0.95] and st["refit"]["cut"] < st["val_start"]
    assert st["end"]["80"]["errors"] == [30, 30]
    p = pd.read_csv(out / "predictions.csv")
    test, train = p[(p.split == "test") & (p.horizon == 1)], p[p.split == "train"]
    assert test[["lower_80", "upper_80", "lower_95", "upper_95"]].notna().all().all()
    assert train[["lower_80", "upper_95"]].isna().all().all()  # fitted on: no honest interval
    assert np.all((test.lower_95 <= test.lower_80) & (test.lower_80 <= test.predicted)
                  & (test.predicted <= test.upper_80) & (test.upper_80 <= test.upper_95))
    m = json.loads((out / "metrics.json").read_text())["test"]["model"]
    both = p[p.split == "test"]  # metrics are over every step's outputs
    assert m["coverage_80"] == pytest.approx(np.mean((both.lower_80 <= both.actual) & (both.actual <= both.upper_80)))
    assert m["width_95"] == pytest.approx(np.mean(both.upper_95 - both.lower_95))
    # predict: the direct step's correction is the run's end state (ACI replayed over the test part)
    lr = load_run(out)
    labels, fc, series, _ = predict_run(out, steps=6)
    b = predict_bands(lr, series, 6)
    np.testing.assert_allclose(b.q[0.8][0, :2], st["end"]["80"]["q"], rtol=1e-12)
    np.testing.assert_allclose(b.alpha[0.8][:2], st["end"]["80"]["aci_alpha"], rtol=1e-12)
    # recursive steps are calibrated on their own (recursive, multi-step) errors: by hand with ACI off
    lr.config.interval_gamma = 0.0
    b = predict_bands(lr, series, 6)
    predict, _ = member_predict(lr.models)
    origins = np.arange(st["val_start"] - 1, len(series.y) - 1)
    cal = forecast_paths(predict, lr.pipeline, series.y, origins, 6)
    for k in range(6):
        e = np.abs(cal.actual - cal.point)[:, k]
        e = e[~np.isnan(e)][-30:]
        assert b.q[0.8][0, k] == pytest.approx(np.sort(e)[24], rel=1e-12), k  # rank ceil(31 * 0.8) = 25 of 30
    assert len({round(v, 9) for v in b.q[0.8][0]}) > 1  # not step 1's copied
    np.testing.assert_allclose(cal.point[-1:, :1], forecast_paths(predict, lr.pipeline, series.y[:-1],
                                                                  origins[-1:], 1).point, rtol=1e-6)  # float32 batch
    np.testing.assert_array_equal(fc, forecast(lr.models, lr.pipeline, series.y, 6))
    assert main(["predict", "--run", str(out), "--horizon", "6", "--out", str(tmp_path / "f.csv")]) == 0
    f = pd.read_csv(tmp_path / "f.csv")
    assert list(f.columns) == ["step", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"] and len(f) == 6
    assert np.all(f.upper_80 - f.forecast > 0) and np.all(f.upper_95 >= f.upper_80)
    # an old run folder without intervals.json still predicts intervals; a corrupt one is a one-line error
    (out / "intervals.json").write_text("{not json")
    capsys.readouterr()
    assert main(["predict", "--run", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gru-xp: error: ") and "intervals.json" in err and "\n" not in err
    (out / "intervals.json").unlink()
    assert main(["predict", "--run", str(out), "--intervals", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "step,forecast,lower_50,upper_50"


def test_quantile_head_run_is_conformalized_and_its_median_is_the_point(tmp_path):
    r = run(tiny(loss="quantile", quantiles=[0.1, 0.5, 0.9], horizon=2), save=False)
    assert r.model.quantiles == (0.1, 0.5, 0.9) and r.intervals["method"] == "conformalized quantile regression"
    p = r.predictions["test"]
    predict, taus = member_predict(r.models)
    fq = forecast_paths(predict, r.data.pipeline, r.data.series.y, p["anchors"], 2, r.data.phase, taus)
    np.testing.assert_array_equal(fq.point, p["model"])
    assert np.all(np.diff(fq.quantiles, axis=-1) >= 0) and np.allclose(fq.quantiles[..., 1], fq.point)
    assert np.all((p["lower_95"] <= p["lower_80"]) & (p["upper_80"] <= p["upper_95"]))
    cov = interval_scores(p["actual"], p["lower_80"], p["upper_80"], 0.8)["coverage_80"]
    assert cov == r.metrics["test"]["model"]["coverage_80"]


def test_backtest_reports_coverage_per_fold_and_retrain_once_reproduces_train(tmp_path):
    cfg = make_config(None, {**TINY, "sine_length": 200, "seed": 2})
    r = backtest(cfg, 3, "once")
    t = run(cfg, save=False)
    for k in ("coverage_80", "width_80", "coverage_95", "interval_score_95"):
        assert r.overall["metrics"]["model"][k] == pytest.approx(t.metrics["test"]["model"][k], rel=1e-9), k
        assert all(k in d["metrics"]["model"] and k in d["metrics"]["seasonal_naive"] for d in r.folds)
    assert main(["backtest", "--data", "sine", "--sine-length", "200", "--seq-length", "8", "--epochs", "2",
                 "--folds", "2", "--quiet", "--no-plots", "--out", str(tmp_path / "bt")]) == 0
    j = json.loads((tmp_path / "bt" / "backtest.json").read_text())
    assert "coverage_95" in j["overall"]["metrics"]["model"] and "width_80" in j["folds"][1]["metrics"]["model"]


@pytest.mark.parametrize("args, fragment", [
    (["--intervals", "1.5"], "--intervals must be levels strictly between 0 and 1"),
    (["--intervals", "80,95"], "(0.8 means 80%)"),
    (["--intervals", "0.8,abc"], "--intervals must be levels"),
    (["--intervals", "0.8,0.8"], "lists a level twice"),
    (["--quantiles", "0.1,0.9"], "--quantiles must include 0.5"),
    (["--quantiles", "0.5,1"], "--quantiles must be levels strictly between 0 and 1"),
    (["--quantiles", "none"], "--quantiles must be levels"),
    (["--loss", "huber"], "unknown loss 'huber'"),
    (["--interval-window", "-1"], "--interval-window must be >= 0"),
    (["--interval-gamma", "1.5"], "--interval-gamma must be in [0, 1)"),
    (["--calibration-size", "-3"], "--calibration-size must be >= 0"),
    (["--interval-window", "10"], "--interval-window 10 is too small for 95% intervals: they need at least 19"),
])
def test_bad_interval_and_quantile_flags_are_one_line_exit_2(args, fragment, capsys):
    rc = main(["train", "--data", "sine", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("gru-xp: error: ") and "\n" not in err and fragment in err, err


def test_predict_with_bad_intervals_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["predict", "--run", str(tmp_path), "--intervals", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--intervals must be levels" in err and "\n" not in err


def test_toml_accepts_a_list_a_string_and_none():
    from gru_xp.config import from_dict

    assert make_config(None, {"intervals": "0.95, 0.5"}).intervals == [0.5, 0.95]
    assert make_config(None, {"intervals": "none"}).intervals == []
    assert from_dict({"intervals": [0.9]}).intervals == [0.9] and from_dict({}).intervals == [0.8, 0.95]


def test_recursive_paths_from_many_origins_equal_the_one_origin_loop_exactly(tmp_path):
    """forecast_paths (batched over origins, histories cut to the tail the transforms read) equals the plain loop
    runs.forecast used to run for one origin on the whole prefix (inputs, predict, invert, append), bit for bit:
    log, differencing at 1 and 12, calendar inputs, an ensemble, 7 steps from a 2-step head."""
    dates = pd.date_range("2001-01-01", periods=120, freq="MS")
    t = np.arange(120)
    y = np.exp(3 + 0.01 * t + 0.2 * np.sin(2 * np.pi * t / 12)) + np.random.default_rng(0).normal(0, 0.3, 120)
    p = tmp_path / "m.csv"
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "value": y}).to_csv(p, index=False)
    r = run(make_config(None, dict(data=str(p), seq_length=5, hidden_size=4, epochs=2, horizon=2, log=True,
                                   difference=[1, 12], calendar=True, ensemble=2, quiet=True, plots=False,
                                   intervals=[], dtype="float64")), save=False)
    pipe, models, series = r.data.pipeline, r.models, r.data.series
    phase = pipe.phases(series, len(y) + 7 + 2 + 1)
    predict, _ = member_predict(models)
    origins = np.arange(60, 110, 7)
    fc = forecast_paths(predict, pipe, y, origins, 7, phase)
    for i, o in enumerate(origins):
        hist, out = y[:o + 1].copy(), []
        while len(out) < 7:  # the loop of runs.forecast before it delegated to forecast_paths
            a = np.array([len(hist) - 1])
            step = pipe.invert(hist, a, predict(pipe.inputs(hist, a, phase)))[0]
            out.extend(step.tolist())
            hist = np.concatenate([hist, step])
        np.testing.assert_allclose(fc.point[i], out[:7], rtol=1e-12, atol=0)
