"""The LSTM's hand-derived backward, proven: finite differences, PyTorch float64, an independent reference loop,
and every namespace against NumPy. Stacked / bidirectional / dropout / tbptt: tests/test_recurrent.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from array_api_compat import array_namespace
from array_api_compat import device as device_of

import gru_xp
from gru_xp.backend import to_host
from gru_xp.check import finite_difference, random_problem, randomize_params, rel_err, torch_parity

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 2, 3, 4),
    (5, 1, 2, 3),
    (2, 3, 1, 5),
]


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference_lstm(sd, x, h0, c0):
    """Straight from torch.nn.LSTM's documented equations, one gate at a time, plain NumPy float64."""
    H = h0.shape[-1]
    W, R, b, bh = sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"]
    blk = [slice(k * H, (k + 1) * H) for k in range(4)]
    h, c, ys = h0, c0, []
    for x_t in x:
        def pre(k):
            return x_t @ W[blk[k]].T + b[blk[k]] + h @ R[blk[k]].T + bh[blk[k]]
        i, f, g, o = _sig(pre(0)), _sig(pre(1)), np.tanh(pre(2)), _sig(pre(3))
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_finite_differences(T, B, I, H):
    layer = gru_xp.LSTM(I, H, dtype="float64", seed=0)
    randomize_params(layer, seed=T * 7 + H)
    for k in ("bias_ih_l0", "bias_hh_l0"):
        assert np.min(np.abs(layer.params[k])) > 0
    x, s0, dy, ds = random_problem(layer, T, B, seed=H)
    assert len(s0) == 2 and len(ds) == 2  # random upstream gradients on h_n AND c_n
    res = finite_difference(layer, x, s0, dy, ds)
    assert set(res) == set(layer.params) | {"x", "state0"}
    assert res["state0"][0].shape == (2, 1, B, H)  # (h0, c0) stacked
    for name, (analytic, numeric) in res.items():
        assert np.abs(numeric).max() > 0, f"{name}: numeric gradient is identically zero, the check would be blind"
        assert rel_err(analytic, numeric) <= 1e-7, name


@pytest.mark.parametrize("which", ["h", "c"])
def test_finite_differences_through_one_final_state_only(which):
    """Only dL/dh_n or only dL/dc_n: each path through the cell state is checked on its own."""
    layer = gru_xp.LSTM(2, 3, dtype="float64", seed=0)
    randomize_params(layer, seed=5)
    x, s0, _, (dh, dc) = random_problem(layer, 4, 2, seed=6)
    ds = (dh, np.zeros_like(dc)) if which == "h" else (np.zeros_like(dh), dc)
    res = finite_difference(layer, x, s0, np.zeros((4, 2, 3)), ds)
    for name, (analytic, numeric) in res.items():
        assert np.abs(numeric).max() > 0, name
        assert rel_err(analytic, numeric) <= 1e-7, name


def test_finite_differences_see_a_wrong_backward(monkeypatch):
    """The check can fail: a 0.1% error in one term of the backward is noticed."""
    import gru_xp.nn.lstm as m

    layer = gru_xp.LSTM(2, 3, dtype="float64", seed=0, fast=False)  # the reference path: the module patched here
    randomize_params(layer, seed=1)
    orig = m.recurrent_weight_grads

    def wrong(xp, dgh, hprev):
        dw, db = orig(xp, dgh, hprev)
        return dw * 1.001, db

    monkeypatch.setattr(m, "recurrent_weight_grads", wrong)
    res = finite_difference(layer, *random_problem(layer, 3, 2, seed=2))
    assert rel_err(*res["weight_hh_l0"]) > 1e-4


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (12, 2, 1, 8)])
def test_pytorch_parity(with_state, T, B, I, H):
    layer = gru_xp.LSTM(I, H, dtype="float64", seed=3)
    randomize_params(layer, seed=4)
    x, (h0, c0), dy, ds = random_problem(layer, T, B, seed=5)
    s0 = (h0, c0) if with_state else (np.zeros_like(h0), np.zeros_like(c0))
    errs = torch_parity(layer, x, s0, dy, ds)
    assert set(errs) >= {"y", "x", "state_n[0]", "state_n[1]", "state0[0]", "state0[1]", *layer.params}
    bad = {k: v for k, v in errs.items() if not v <= 1e-10}
    assert not bad, bad


def test_forward_matches_independent_reference():
    layer = gru_xp.LSTM(3, 4, dtype="float64", seed=0)
    randomize_params(layer, seed=2)
    x, (h0, c0), _, _ = random_problem(layer, 6, 2, seed=3)
    y, (hn, cn) = layer.forward(x, (h0, c0))
    ry, rh, rc = reference_lstm(layer.state_dict(), x, h0[0], c0[0])
    assert rel_err(y, ry) <= 1e-13 and rel_err(hn[0], rh) <= 1e-13 and rel_err(cn[0], rc) <= 1e-13


def test_state_none_and_partial_state():
    layer = gru_xp.LSTM(2, 3, dtype="float64", seed=0)
    randomize_params(layer, seed=1)
    x, (h0, c0), dy, (dh, dc) = random_problem(layer, 4, 2, seed=2)
    z = np.zeros_like(h0)
    y_none, (hn_none, cn_none) = layer.forward(x)
    y_zero, (hn_zero, cn_zero) = layer.forward(x, (z, z))
    assert np.array_equal(y_none, y_zero) and np.array_equal(cn_none, cn_zero)
    y_part, _ = layer.forward(x, (h0, None))
    y_full, _ = layer.forward(x, (h0, z))
    assert np.array_equal(y_part, y_full)
    # dstate_n with either part None means zeros there
    for part, full in (((dh, None), (dh, z)), ((None, dc), (z, dc)), (None, (z, z))):
        layer.forward(x, (h0, c0))
        layer.zero_grad()
        dx_a, (dh0_a, dc0_a) = layer.backward(dy, part)
        g_a = {k: v.copy() for k, v in layer.grads.items()}
        layer.zero_grad()
        dx_b, (dh0_b, dc0_b) = layer.backward(dy, full)
        assert np.array_equal(dx_a, dx_b) and np.array_equal(dh0_a, dh0_b) and np.array_equal(dc0_a, dc0_b)
        assert all(np.array_equal(g_a[k], layer.grads[k]) for k in g_a)


def test_state_must_be_a_pair():
    layer = gru_xp.LSTM(2, 3, dtype="float64", seed=0)
    x = np.zeros((4, 2, 2))
    with pytest.raises(gru_xp.UserError, match="2 array"):
        layer.forward(x, np.zeros((1, 2, 3)))
    with pytest.raises(gru_xp.UserError, match=r"\(1, 2, 3\)"):
        layer.forward(x, (np.zeros((1, 2, 3)), np.zeros((2, 2, 3))))


def test_state_dict_round_trip_through_torch():
    layer = gru_xp.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=11)
    randomize_params(layer, seed=2)
    sd = layer.state_dict()
    tm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    assert list(sd) == list(tm.state_dict())  # same names, same order
    assert all(tuple(sd[k].shape) == tuple(v.shape) for k, v in tm.state_dict().items())
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()})
    back = gru_xp.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=99)
    back.load_state_dict(tm.state_dict())
    for k in sd:
        assert np.array_equal(to_host(back.params[k]), sd[k]), k  # lossless both ways
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    y, (hn, cn) = back.forward(x)
    yt, (hnt, cnt) = tm(torch.tensor(x))
    assert rel_err(y, yt.detach().numpy()) <= 1e-12 and rel_err(cn, cnt.detach().numpy()) <= 1e-12


def test_interop_module_is_an_lstm():
    layer = gru_xp.LSTM(2, 3, num_layers=2, dtype="float64", seed=0)
    tm = gru_xp.interop.to_torch_module(layer)
    assert isinstance(tm, torch.nn.LSTM) and tm.num_layers == 2 and tm.hidden_size == 3


def test_float32_stays_float32():
    layer = gru_xp.LSTM(2, 3, seed=0)
    y, (hn, cn) = layer.forward(np.ones((3, 2, 2), np.float32))
    dx, (dh0, dc0) = layer.backward(np.ones((3, 2, 3), np.float32), (None, np.ones((1, 2, 3), np.float32)))
    assert all(a.dtype == np.float32 for a in (y, hn, cn, dx, dh0, dc0, *layer.grads.values()))


TOL = {"float64": 1e-12, "float32": 2e-5}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_matches_numpy(device, dtype):
    ref = gru_xp.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=4)
    randomize_params(ref, seed=1, scale=0.4)
    layer = gru_xp.LSTM(3, 4, num_layers=2, bidirectional=True, device=device, dtype=dtype, seed=4)
    layer.load_state_dict(ref.state_dict())
    x, (h0, c0), dy, (dh, dc) = random_problem(ref, T=6, B=3, seed=2)
    x, h0, c0, dy, dh, dc = (a.astype(dtype) for a in (x, h0, c0, dy, dh, dc))
    out = []
    for lay in (ref, layer):
        lay.zero_grad()
        y, (hn, cn) = lay.forward(x, (h0, c0))
        dx, (dh0, dc0) = lay.backward(dy, (dh, dc))
        out.append((y, hn, cn, dx, dh0, dc0, *lay.grads.values()))
    be = layer.backend
    for a in out[1]:
        assert array_namespace(a) is array_namespace(be.zeros((1,))) and device_of(a) == be.device
        assert a.dtype == be.dtype
    names = ["y", "h_n", "c_n", "dx", "dh0", "dc0", *ref.grads]
    for name, a, b in zip(names, out[1], out[0]):
        assert rel_err(a, b) <= TOL[dtype], name
