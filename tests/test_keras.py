"""Keras weight import. Keras is not installed: the reference below re-implements Keras's documented GRU/LSTM
equations on its documented weight layout (kernel (I, G) with gate blocks z, r, h / i, f, c, o along the columns,
recurrent_kernel (H, G), batch-major inputs) in plain NumPy, independently of gru_xp's code."""
from __future__ import annotations

import numpy as np
import pytest

import gru_xp
from gru_xp.interop import from_keras_gru, from_keras_lstm, keras_gru_state_dict
from gru_xp.check import rel_err


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def keras_gru(x, kernel, recurrent_kernel, bias, reset_after):
    """x (B, T, I) batch-major, as Keras. Returns (B, T, H) and h_T."""
    H = recurrent_kernel.shape[0]
    if reset_after:
        b_in, b_rec = bias[0], bias[1]
    else:
        b_in, b_rec = bias, None
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        mx = x[:, t, :] @ kernel + b_in
        x_z, x_r, x_h = mx[:, :H], mx[:, H:2 * H], mx[:, 2 * H:]
        if reset_after:
            mi = h @ recurrent_kernel + b_rec
            z = _sig(x_z + mi[:, :H])
            r = _sig(x_r + mi[:, H:2 * H])
            hh = np.tanh(x_h + r * mi[:, 2 * H:])
        else:
            z = _sig(x_z + h @ recurrent_kernel[:, :H])
            r = _sig(x_r + h @ recurrent_kernel[:, H:2 * H])
            hh = np.tanh(x_h + (r * h) @ recurrent_kernel[:, 2 * H:])
        h = z * h + (1.0 - z) * hh
        out.append(h)
    return np.stack(out, axis=1), h


def keras_lstm(x, kernel, recurrent_kernel, bias):
    H = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], H))
    c = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t, :] @ kernel + h @ recurrent_kernel + bias
        i, f, o = _sig(z[:, :H]), _sig(z[:, H:2 * H]), _sig(z[:, 3 * H:])
        c = f * c + i * np.tanh(z[:, 2 * H:3 * H])
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1), h, c


def _weights(I, H, G, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(I, G * H)) * 0.5, rng.normal(size=(H, G * H)) * 0.5, rng


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("I,H", [(1, 1), (3, 4)])
def test_gru_import_matches_keras_equations(reset_after, I, H):
    kernel, rk, rng = _weights(I, H, 3, seed=I + H)
    bias = rng.normal(size=(2, 3 * H) if reset_after else (3 * H,))
    x = rng.normal(size=(2, 6, I))  # (B, T, I)
    want_y, want_h = keras_gru(x, kernel, rk, bias, reset_after)
    layer = from_keras_gru(kernel, rk, bias, reset_after=reset_after, dtype="float64")
    assert isinstance(layer, gru_xp.GRU) and layer.reset_after == reset_after
    y, hn = layer.forward(np.transpose(x, (1, 0, 2)))  # gru_xp is time-major
    assert rel_err(np.transpose(y, (1, 0, 2)), want_y) <= 1e-13
    assert rel_err(hn[0], want_h) <= 1e-13


def test_gru_gate_order_matters():
    """Swapping Keras's z and r blocks changes the output: the test above would see a wrong reorder."""
    kernel, rk, rng = _weights(2, 3, 3, seed=0)
    bias = rng.normal(size=(2, 9))
    x = rng.normal(size=(2, 5, 2))
    want, _ = keras_gru(x, kernel, rk, bias, True)

    def swap(a):
        return np.concatenate([a[..., 3:6], a[..., :3], a[..., 6:]], axis=-1)

    layer = from_keras_gru(swap(kernel), swap(rk), swap(bias), dtype="float64")
    y, _ = layer.forward(np.transpose(x, (1, 0, 2)))
    assert rel_err(np.transpose(y, (1, 0, 2)), want) > 1e-2


def test_gru_bias_layouts_and_rows():
    kernel, rk, _ = _weights(2, 3, 3, seed=1)
    b2 = np.arange(18.0).reshape(2, 9)
    sd = keras_gru_state_dict(kernel, rk, b2, reset_after=True)
    assert sd["weight_ih_l0"].shape == (9, 2) and sd["weight_hh_l0"].shape == (9, 3)
    # torch rows r, z, n  <-  Keras columns z, r, h
    assert np.array_equal(sd["bias_ih_l0"], np.r_[3:6, 0:3, 6:9].astype(float))
    assert np.array_equal(sd["bias_hh_l0"], np.r_[12:15, 9:12, 15:18].astype(float))
    assert np.array_equal(sd["weight_ih_l0"][:3], kernel[:, 3:6].T)
    sd1 = keras_gru_state_dict(kernel, rk, np.arange(9.0), reset_after=False)
    assert np.array_equal(sd1["bias_ih_l0"], np.r_[3:6, 0:3, 6:9].astype(float))
    assert np.array_equal(sd1["bias_hh_l0"], np.zeros(9))
    sd0 = keras_gru_state_dict(kernel, rk, None)
    assert not sd0["bias_ih_l0"].any() and not sd0["bias_hh_l0"].any()


@pytest.mark.parametrize("I,H", [(1, 1), (3, 4)])
def test_lstm_import_matches_keras_equations(I, H):
    kernel, rk, rng = _weights(I, H, 4, seed=10 + I + H)
    bias = rng.normal(size=(4 * H,))
    x = rng.normal(size=(3, 6, I))
    want_y, want_h, want_c = keras_lstm(x, kernel, rk, bias)
    layer = from_keras_lstm(kernel, rk, bias, dtype="float64")
    assert isinstance(layer, gru_xp.LSTM)
    y, (hn, cn) = layer.forward(np.transpose(x, (1, 0, 2)))
    assert rel_err(np.transpose(y, (1, 0, 2)), want_y) <= 1e-13
    assert rel_err(hn[0], want_h) <= 1e-13 and rel_err(cn[0], want_c) <= 1e-13


def test_imported_layer_runs_on_the_requested_backend():
    kernel, rk, rng = _weights(2, 3, 4, seed=3)
    layer = from_keras_lstm(kernel, rk, rng.normal(size=12), device="strict", dtype="float32")
    assert layer.backend.name == "array_api_strict" and layer.backend.dtype_name == "float32"


@pytest.mark.parametrize("call,match", [
    (lambda: from_keras_gru(np.zeros((2, 9)), np.zeros((3, 9)), np.zeros(9), reset_after=True), r"\(2, 9\)"),
    (lambda: from_keras_gru(np.zeros((2, 9)), np.zeros((3, 9)), np.zeros((2, 9)), reset_after=False), r"\(9,\)"),
    (lambda: from_keras_gru(np.zeros((2, 8)), np.zeros((3, 8))), "kernel must be"),
    (lambda: from_keras_lstm(np.zeros((2, 12)), np.zeros((4, 12))), "kernel must be"),
    (lambda: from_keras_lstm(np.zeros((2, 12)), np.zeros((3, 12)), np.zeros(9)), r"\(12,\)"),
])
def test_bad_keras_weights_are_user_errors(call, match):
    with pytest.raises(gru_xp.UserError, match=match):
        call()
