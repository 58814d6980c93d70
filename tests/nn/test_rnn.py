"""The vanilla RNN's (tanh and relu) hand-derived backward, proven: finite differences, PyTorch float64, an
independent reference loop, every namespace against NumPy. Stacked / bidirectional / dropout / tbptt:
tests/test_recurrent.py."""
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
ACTS = ["tanh", "relu"]


def reference_rnn(sd, x, h0, act):
    f = np.tanh if act == "tanh" else (lambda a: np.maximum(a, 0.0))
    h, ys = h0, []
    for x_t in x:
        h = f(x_t @ sd["weight_ih_l0"].T + sd["bias_ih_l0"] + h @ sd["weight_hh_l0"].T + sd["bias_hh_l0"])
        ys.append(h)
    return np.stack(ys), h


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_finite_differences(act, T, B, I, H):
    layer = gru_xp.RNN(I, H, nonlinearity=act, dtype="float64", seed=0)
    randomize_params(layer, seed=T * 7 + H)
    for k in ("bias_ih_l0", "bias_hh_l0"):
        assert np.min(np.abs(layer.params[k])) > 0
    x, s0, dy, ds = random_problem(layer, T, B, seed=H)
    res = finite_difference(layer, x, s0, dy, ds)
    assert set(res) == set(layer.params) | {"x", "state0"}
    for name, (analytic, numeric) in res.items():
        if act == "relu" and np.abs(numeric).max() == 0:  # every unit dead on a tiny shape: both must say zero
            assert np.abs(analytic).max() == 0, name
            continue
        assert np.abs(numeric).max() > 0, name
        assert rel_err(analytic, numeric) <= 1e-7, name


def test_relu_finite_differences_cover_both_sides_of_the_kink():
    """A problem where some units are active and some are dead, so the relu mask itself is under test."""
    layer = gru_xp.RNN(3, 6, nonlinearity="relu", dtype="float64", seed=0)
    randomize_params(layer, seed=3)
    x, s0, dy, ds = random_problem(layer, 5, 3, seed=4)
    y, _ = layer.forward(x, s0)
    frac = float(np.mean(y > 0))
    assert 0.2 < frac < 0.8, frac
    for name, (analytic, numeric) in finite_difference(layer, x, s0, dy, ds).items():
        assert np.abs(numeric).max() > 0, name
        assert rel_err(analytic, numeric) <= 1e-7, name


def test_finite_differences_see_a_wrong_backward(monkeypatch):
    import gru_xp.nn.rnn as m

    layer = gru_xp.RNN(2, 3, dtype="float64", seed=0, fast=False)  # the reference path: the module patched here
    randomize_params(layer, seed=1)
    orig = m.input_backward

    def wrong(xp, p, x, dgi, g, **kw):
        return orig(xp, p, x, dgi * 1.001, g, **kw)

    monkeypatch.setattr(m, "input_backward", wrong)
    res = finite_difference(layer, *random_problem(layer, 3, 2, seed=2))
    assert rel_err(*res["weight_ih_l0"]) > 1e-4 and rel_err(*res["x"]) > 1e-4


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (12, 2, 1, 8)])
def test_pytorch_parity(act, with_h0, T, B, I, H):
    layer = gru_xp.RNN(I, H, nonlinearity=act, dtype="float64", seed=3)
    randomize_params(layer, seed=4)
    x, h0, dy, dhn = random_problem(layer, T, B, seed=5)
    errs = torch_parity(layer, x, h0 if with_h0 else np.zeros_like(h0), dy, dhn)
    assert set(errs) >= {"y", "x", "state_n[0]", "state0[0]", *layer.params}
    bad = {k: v for k, v in errs.items() if not v <= 1e-10}
    assert not bad, bad


@pytest.mark.parametrize("act", ACTS)
def test_forward_matches_independent_reference(act):
    layer = gru_xp.RNN(3, 4, nonlinearity=act, dtype="float64", seed=0)
    randomize_params(layer, seed=2)
    x, h0, _, _ = random_problem(layer, 6, 2, seed=3)
    y, hn = layer.forward(x, h0)
    ry, rh = reference_rnn(layer.state_dict(), x, h0[0], act)
    assert rel_err(y, ry) <= 1e-13 and rel_err(hn[0], rh) <= 1e-13
    if act == "relu":
        assert np.min(y) == 0.0 and np.max(y) > 0.0


def test_bad_nonlinearity_is_a_user_error():
    with pytest.raises(gru_xp.UserError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        gru_xp.RNN(2, 3, nonlinearity="sigmoid")


@pytest.mark.parametrize("act", ACTS)
def test_state_dict_round_trip_through_torch(act):
    layer = gru_xp.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=act, dtype="float64", seed=11)
    randomize_params(layer, seed=2)
    sd = layer.state_dict()
    tm = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=act).double()
    assert list(sd) == list(tm.state_dict())
    assert all(tuple(sd[k].shape) == tuple(v.shape) for k, v in tm.state_dict().items())
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()})
    back = gru_xp.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=act, dtype="float64", seed=99)
    back.load_state_dict(tm.state_dict())
    for k in sd:
        assert np.array_equal(to_host(back.params[k]), sd[k]), k
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    y, hn = back.forward(x)
    yt, hnt = tm(torch.tensor(x))
    assert rel_err(y, yt.detach().numpy()) <= 1e-12 and rel_err(hn, hnt.detach().numpy()) <= 1e-12


@pytest.mark.parametrize("act", ACTS)
def test_interop_module_keeps_nonlinearity(act):
    tm = gru_xp.interop.to_torch_module(gru_xp.RNN(2, 3, nonlinearity=act, dtype="float64"))
    assert isinstance(tm, torch.nn.RNN) and tm.nonlinearity == act


TOL = {"float64": 1e-12, "float32": 2e-5}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_matches_numpy(device, dtype, act):
    ref = gru_xp.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=act, dtype=dtype, seed=4)
    randomize_params(ref, seed=1, scale=0.4)
    layer = gru_xp.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=act, device=device, dtype=dtype, seed=4)
    layer.load_state_dict(ref.state_dict())
    prob = [a.astype(dtype) for a in random_problem(ref, T=6, B=3, seed=2)]
    out = []
    for lay in (ref, layer):
        lay.zero_grad()
        y, hn = lay.forward(prob[0], prob[1])
        dx, dh0 = lay.backward(prob[2], prob[3])
        out.append((y, hn, dx, dh0, *lay.grads.values()))
    be = layer.backend
    for a in out[1]:
        assert array_namespace(a) is array_namespace(be.zeros((1,))) and device_of(a) == be.device
        assert a.dtype == be.dtype
    for name, a, b in zip(["y", "h_n", "dx", "dh0", *ref.grads], out[1], out[0]):
        assert rel_err(a, b) <= TOL[dtype], name
