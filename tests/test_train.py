"""The training loop from Python: learning, early stopping and best-state restore, reproducibility, round trips."""
from __future__ import annotations

import numpy as np
import pytest

from gru_xp import checkpoint
from gru_xp.config import make_config
from gru_xp.data import Pipeline, Scaler
from gru_xp.errors import UserError
from gru_xp.model import Forecaster
from gru_xp.nn.optim import Adam
from gru_xp.runs import forecast, load_run, predict_run, predict_scaled, run
from gru_xp.train import fit


def tiny(**kw):
    base = dict(data="sine", sine_length=160, sine_period=16.0, seq_length=8, hidden_size=8, epochs=6, batch_size=16,
                quiet=True, plots=False, lr=0.01)
    base.update(kw)
    return make_config(None, base)


def toy(n=64, L=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, L, 1))
    Y = X[:, -1, :] * 0.5 + X[:, -2, :] * 0.25  # a learnable target
    return X, Y


def test_fit_learns_and_restores_the_best_epoch():
    X, Y = toy()
    Xv, Yv = toy(16, seed=1)
    m = Forecaster("gru", 1, 8, 1, seed=0)
    h = fit(m, X, Y, Xv, Yv, optimizer=Adam(0.02), epochs=40, batch_size=16, progress=False)
    assert h.train_loss[-1] < h.train_loss[0] * 0.5
    assert h.best_loss == min(h.val_loss) and h.val_loss[h.best_epoch - 1] == h.best_loss
    pv = predict_scaled(m, Xv)
    assert np.mean((pv - Yv) ** 2) == pytest.approx(h.best_loss, rel=1e-4)  # the restored parameters are the best


def test_early_stopping_stops():
    X, Y = toy()
    m = Forecaster("gru", 1, 4, 1, seed=0)
    # a huge learning rate makes validation worse quickly; patience 2 must stop long before 200 epochs
    h = fit(m, X, Y, X[:8] * 5, Y[:8] * -5, optimizer=Adam(0.5), epochs=200, batch_size=0, patience=2,
            progress=False)
    assert h.stopped_early and len(h.train_loss) < 200
    assert len(h.train_loss) - h.best_epoch == 2


def test_cpu_run_is_bit_reproducible_with_a_seed():
    a = run(tiny(seed=3), save=False)
    b = run(tiny(seed=3), save=False)
    assert a.history.train_loss == b.history.train_loss
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(v, b.model.params[k])
    assert a.metrics == b.metrics
    c = run(tiny(seed=4), save=False)
    assert c.history.train_loss != a.history.train_loss


_THREADS_SCRIPT = """
import sys, numpy as np, gru_xp
layer = gru_xp.GRU(8, 128, num_layers=2, bidirectional=True, seed=0)
rng = np.random.default_rng(0)
x, dy = rng.standard_normal((12, 256, 8)), rng.standard_normal((12, 256, 256))
y, h = layer.forward(x)
dx, dh0 = layer.backward(dy, None)
blocked = np.array(type(layer.caches[0]).__name__ == "BlockedCache")
np.savez(sys.argv[1], y=y, h=h, dx=dx, dh0=dh0, blocked=blocked, **layer.grads)
"""


def test_results_across_blas_thread_counts(tmp_path):
    """A layer's forward and backward (GEMMs large enough for OpenBLAS to split over threads), each run in its own
    process (the thread count is fixed when NumPy loads): with GRU_XP_CPU_SPLIT=0 the same bits on one BLAS thread
    and on two; by default, on two threads the float32 GRU splits its batch over the cores (nn/fast/_cpu_split.py):
    the same bits on every run, and within float32 rounding of the one-thread run (its weight grads are summed
    over the batch in two parts)."""
    import os
    import subprocess
    import sys

    from gru_xp.check import rel_err

    out = {}
    for n, split in ((1, "1"), (2, "0"), (2, "1"), (2, "1 again")):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(n), "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),
               "GRU_XP_CPU_SPLIT": split.split()[0]}
        path = tmp_path / f"t{n}-{split.replace(' ', '-')}.npz"
        subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(path)], env=env, check=True, timeout=300)
        out[(n, split)] = np.load(path)
    one = out[(1, "1")]
    assert len(one.files) == 21
    from gru_xp.nn.fast import whole_sequence_backward, whole_sequence_forward

    split_here = whole_sequence_forward("float32") and whole_sequence_backward("float32")  # numba, OpenBLAS
    assert [bool(out[key]["blocked"]) for key in out] == [False, False, split_here, split_here]
    for k in (f for f in one.files if f != "blocked"):
        np.testing.assert_array_equal(out[(2, "0")][k], one[k], err_msg=k)
        np.testing.assert_array_equal(out[(2, "1 again")][k], out[(2, "1")][k], err_msg=k)
        assert rel_err(out[(2, "1")][k], one[k]) < 2e-6, k


def test_metrics_report_all_predictors_on_the_original_scale():
    r = run(tiny(difference=[1], horizon=2), save=False)
    for split in ("train", "test"):
        for name in ("model", "naive", "seasonal_naive"):
            assert set(r.metrics[split][name]) >= {"rmse", "mae", "mape", "mase"}
    p = r.predictions["test"]
    y = r.data.series.y
    np.testing.assert_array_equal(p["actual"][:, 0], y[p["anchors"] + 1])
    np.testing.assert_array_equal(p["naive"][:, 1], y[p["anchors"]])
    assert p["model"].shape == p["actual"].shape == (len(p["anchors"]), 2)


def test_saved_then_loaded_model_predicts_identically(tmp_path):
    r = run(tiny(out=str(tmp_path / "run"), difference=[1], horizon=3), save=True)
    lr = load_run(tmp_path / "run")
    for split in ("train", "test"):
        X = getattr(r.data, split).X
        np.testing.assert_array_equal(predict_scaled(lr.model, X), predict_scaled(r.model, X))
    assert lr.pipeline.to_dict() == r.data.pipeline.to_dict()
    # the direct forecast from the end equals the model's output inverted from the last window
    labels, fc, series, _ = predict_run(tmp_path / "run", steps=3)
    t = np.array([len(series.y) - 1])
    direct = r.data.pipeline.invert(series.y, t, predict_scaled(r.model, r.data.pipeline.inputs(series.y, t)))[0]
    np.testing.assert_allclose(fc, direct)
    assert labels == [len(series.y), len(series.y) + 1, len(series.y) + 2]


def test_recursive_forecast_extends_the_direct_head():
    m = Forecaster("gru", 1, 4, 2, seed=0)
    y = np.sin(np.arange(50) / 3.0) + 2
    pipe = Pipeline(5, 2, [1], Scaler("standard").fit(np.diff(y)), 1)
    f5 = forecast(m, pipe, y, 5)
    f2 = forecast(m, pipe, y, 2)
    np.testing.assert_array_equal(f5[:2], f2)
    f_next = forecast(m, pipe, np.concatenate([y, f2]), 2)  # the recursion appends its own forecasts
    np.testing.assert_allclose(f5[2:4], f_next)


def test_log_transform_is_inverted_before_metrics():
    y = np.exp(np.sin(np.arange(60) / 4.0))
    pipe = Pipeline(4, 2, [1], Scaler("standard"), 1, log=True)
    pipe.scaler.fit(pipe.transformed(y)[:40])
    a = np.arange(pipe.min_anchor(), 50)
    np.testing.assert_allclose(pipe.invert(y, a, pipe.targets(y, a)), y[a[:, None] + np.array([1, 2])], rtol=1e-12)
    with pytest.raises(UserError, match="positive"):
        pipe.transformed(-y)


def test_checkpoint_format_version_and_corruption(tmp_path):
    m = Forecaster("gru", 1, 4, 1, seed=0)
    meta = {"model": {}, "pipeline": {}, "config": {}}
    checkpoint.save(tmp_path / "m.npz", m.params, meta)
    params, got = checkpoint.load(tmp_path / "m.npz")
    assert got["format_version"] == checkpoint.FORMAT_VERSION
    for k, v in m.params.items():
        np.testing.assert_array_equal(params[k], v)
    checkpoint.save(tmp_path / "new.npz", m.params, {**meta, "format_version": checkpoint.FORMAT_VERSION + 1})
    with pytest.raises(UserError, match="upgrade gru-xp"):
        checkpoint.load(tmp_path / "new.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load(tmp_path / "bad.npz")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_a_user_error():
    X, Y = toy()
    m = Forecaster("gru", 1, 4, 1, seed=0)
    with pytest.raises(UserError, match="diverged"):
        fit(m, X, Y * 1e30, optimizer=Adam(1.0), epochs=5, batch_size=0, progress=False)


def test_shrink_toward_naive_is_least_squares_on_validation():
    y = np.array([0.0, 10.0, 12.0, 14.0, 13.0, 20.0])
    pipe = Pipeline(1, 1, [], Scaler("none").fit(y), 1)
    a = np.array([1, 2, 3, 4])  # naive = y[a], actual = y[a+1]: r = 2, 2, -1, 7
    pred = (y[a] + np.array([1.0, 1.0, 1.0, 1.0]))[:, None]  # d = 1 each
    alpha = pipe.fit_shrink(y, a, pred)
    assert alpha == 1.0  # least squares gives (2 + 2 - 1 + 7) / 4 = 2.5, clipped to [0, 1]
    pred2 = (y[a] + np.array([4.0, 4.0, 4.0, 4.0]))[:, None]  # d = 4: a = 40 / 64
    assert pipe.fit_shrink(y, a, pred2) == pytest.approx(40 / 64)
    np.testing.assert_allclose(pipe.invert(y, a, pred2)[:, 0], y[a] + 4 * 40 / 64)
    assert Pipeline.from_dict(pipe.to_dict()).shrink == pytest.approx(40 / 64)
    assert pipe.fit_shrink(y, a, (y[a] - 4.0)[:, None]) == 0.0  # worse than naive: the naive forecast


def test_shrink_needs_validation():
    with pytest.raises(UserError, match="val-ratio"):
        make_config(None, {"shrink": True, "val_ratio": 0})


def test_training_loop_syncs_at_most_once_per_epoch_plus_best_copies(monkeypatch):
    import gru_xp.train as tr

    calls = []
    real = tr.to_host

    def counting(a):
        calls.append(getattr(a, "shape", None))
        return real(a)

    monkeypatch.setattr(tr, "to_host", counting)
    X, Y = toy(n=64)
    m = Forecaster("gru", 1, 4, 1, seed=0)
    epochs, n_params = 5, len(m.params)
    h = fit(m, X, Y, X[:8], Y[:8], optimizer=Adam(0.01), epochs=epochs, batch_size=8, progress=False)  # 8 batches
    loss_reads = [s for s in calls if s == (2,)]
    assert len(loss_reads) == epochs  # one (train, val) read per epoch, none per batch
    improvements = sum(1 for i, v in enumerate(h.val_loss) if v == min(h.val_loss[:i + 1]))
    assert len(calls) == epochs + improvements * n_params  # the rest are host copies of the best state
