"""The GRU's hand-derived backward, proven: finite differences, PyTorch float64, an independent reference loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gru_xp
from gru_xp.check import finite_difference, random_problem, randomize_params, rel_err, torch_parity

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 2, 3, 4),
    (5, 1, 2, 3),
    (2, 3, 1, 5),
]


@pytest.fixture(params=[False, True], ids=["reference", "fast"])
def fast(request):
    """Both the plain reference path and the fast path (workspaces, out=) carry the full proof."""
    return request.param


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_finite_differences(reset_after, T, B, I, H, fast):
    layer = gru_xp.GRU(I, H, reset_after=reset_after, dtype="float64", seed=0)
    layer.fast = fast
    randomize_params(layer, seed=T * 7 + H)
    # biases really are random and non-zero: a bias-blind backward cannot pass
    for k in ("bias_ih_l0", "bias_hh_l0"):
        assert np.min(np.abs(layer.params[k])) > 0
    res = finite_difference(layer, *random_problem(layer, T, B, seed=H))
    assert set(res) == set(layer.params) | {"x", "state0"}
    for name, (analytic, numeric) in res.items():
        assert np.abs(numeric).max() > 0, f"{name}: numeric gradient is identically zero, the check would be blind"
        assert rel_err(analytic, numeric) <= 1e-7, name


def test_finite_differences_see_a_wrong_backward(monkeypatch):
    """The check can fail: perturb one term of the backward and it must notice."""
    import gru_xp.nn.gru as g

    layer = gru_xp.GRU(2, 3, dtype="float64", seed=0, fast=False)  # the reference path (proven equal to the fast
    # path in test_fast.py)
    randomize_params(layer, seed=1)
    orig = g.recurrent_weight_grads

    def wrong(xp, dgh, hprev):
        dw, db = orig(xp, dgh, hprev)
        return dw, db * 1.001  # a 0.1% error in the recurrent bias gradient

    monkeypatch.setattr(g, "recurrent_weight_grads", wrong)
    res = finite_difference(layer, *random_problem(layer, 3, 2, seed=2))
    assert rel_err(*res["bias_hh_l0"]) > 1e-4


@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (12, 2, 1, 8)])
def test_pytorch_parity(with_h0, T, B, I, H, fast):
    layer = gru_xp.GRU(I, H, dtype="float64", seed=3)
    layer.fast = fast
    randomize_params(layer, seed=4)
    x, h0, dy, dhn = random_problem(layer, T, B, seed=5)
    errs = torch_parity(layer, x, h0 if with_h0 else np.zeros_like(h0), dy, dhn)
    assert set(errs) >= {"y", "x", "state_n[0]", "state0[0]", *layer.params}
    bad = {k: v for k, v in errs.items() if not v <= 1e-10}
    assert not bad, bad


def test_pytorch_parity_h0_none_means_zeros():
    layer = gru_xp.GRU(2, 3, dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(4, 2, 2))
    tm = gru_xp.interop.to_torch_module(layer)
    y, hn = layer.forward(x)  # h0=None
    yt, hnt = tm(torch.tensor(x))
    assert rel_err(y, yt.detach().numpy()) <= 1e-12 and rel_err(hn, hnt.detach().numpy()) <= 1e-12


def test_state_dict_round_trip_through_torch():
    layer = gru_xp.GRU(3, 4, dtype="float64", seed=11)
    randomize_params(layer, seed=2)
    sd = layer.state_dict()
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert sd["weight_ih_l0"].shape == (12, 3) and sd["weight_hh_l0"].shape == (12, 4) and sd["bias_ih_l0"].shape == (12,)
    tm = torch.nn.GRU(3, 4).double()
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()})  # names and shapes are torch's
    back = gru_xp.GRU(3, 4, dtype="float64", seed=99)
    back.load_state_dict(tm.state_dict())  # torch tensors accepted directly
    for k in sd:
        assert np.array_equal(np.asarray(back.params[k]), np.asarray(sd[k])), k  # lossless


def test_state_dict_is_a_copy():
    layer = gru_xp.GRU(1, 2, seed=0)
    sd = layer.state_dict()
    before = np.array(sd["bias_hh_l0"])
    layer.params["bias_hh_l0"] += 1.0
    assert np.array_equal(sd["bias_hh_l0"], before)


@pytest.mark.parametrize("bad,match", [
    ({"weight_ih_l0": np.zeros((9, 1))}, "missing"),
    ("not a dict", "mapping"),
])
def test_load_state_dict_errors(bad, match):
    layer = gru_xp.GRU(1, 3, seed=0)
    with pytest.raises(gru_xp.UserError, match=match):
        layer.load_state_dict(bad)


def test_load_state_dict_wrong_shape_changes_nothing():
    layer = gru_xp.GRU(1, 3, seed=0)
    before = {k: np.array(v) for k, v in layer.params.items()}
    sd = {k: np.zeros(v.shape) for k, v in layer.params.items()}
    sd["weight_hh_l0"] = np.zeros((9, 4))
    with pytest.raises(gru_xp.UserError, match=r"weight_hh_l0.*\(9, 4\).*\(9, 3\)"):
        layer.load_state_dict(sd)
    for k, v in layer.params.items():
        assert np.array_equal(v, before[k])


def test_extra_key_rejected():
    layer = gru_xp.GRU(1, 3, seed=0)
    sd = dict(layer.state_dict(), weight_ih_l1=np.zeros((9, 3)))
    with pytest.raises(gru_xp.UserError, match="unexpected.*weight_ih_l1"):
        layer.load_state_dict(sd)


def _cho_reference(x, h0, w_ih, w_hh, b_ih, b_hh):
    """Cho et al. (2014) GRU, written from the equations with separate per-gate matrices, float64, no sharing
    with gru_xp: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)."""
    H = w_hh.shape[1]
    Wir, Wiz, Win = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    Whr, Whz, Whn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    bir, biz, bin_ = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
    bhr, bhz, bhn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    h = h0.copy()
    ys = []
    for t in range(x.shape[0]):
        out = np.empty_like(h)
        for b in range(x.shape[1]):  # one sample at a time, plain vectors
            xt, hb = x[t, b], h[b]
            r = sig(Wir @ xt + bir + Whr @ hb + bhr)
            z = sig(Wiz @ xt + biz + Whz @ hb + bhz)
            n = np.tanh(Win @ xt + bin_ + Whn @ (r * hb) + bhn)
            out[b] = (1 - z) * n + z * hb
        h = out
        ys.append(h)
    return np.stack(ys), h


def test_reset_before_forward_matches_independent_loop(fast):
    T, B, I, H = 6, 3, 2, 4
    layer = gru_xp.GRU(I, H, reset_after=False, dtype="float64", seed=0)
    layer.fast = fast
    randomize_params(layer, seed=8)
    x, h0, _, _ = random_problem(layer, T, B, seed=9)
    y, hn = layer.forward(x, h0)
    p = {k: np.asarray(v) for k, v in layer.params.items()}
    y_ref, h_ref = _cho_reference(x, h0[0], p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    assert rel_err(y, y_ref) <= 1e-12
    assert rel_err(hn[0], h_ref) <= 1e-12
    # and the two conventions really differ (the flag is not ignored)
    after = gru_xp.GRU(I, H, reset_after=True, dtype="float64", seed=0)
    after.load_state_dict(layer.params)
    assert rel_err(after.forward(x, h0)[0], y_ref) > 1e-3


def test_backward_accumulates_and_zero_grad_resets():
    layer = gru_xp.GRU(2, 3, dtype="float64", seed=0)
    x, h0, dy, dhn = random_problem(layer, 4, 2, seed=1)
    layer.forward(x, h0)
    layer.backward(dy, dhn)
    once = {k: np.array(v) for k, v in layer.grads.items()}
    layer.forward(x, h0)
    layer.backward(dy, dhn)
    for k, v in layer.grads.items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-12)
    layer.zero_grad()
    assert all(not np.any(v) for v in layer.grads.values())


def test_float32_forward_stays_float32():
    layer = gru_xp.GRU(2, 3, seed=0)
    y, hn = layer.forward(np.ones((3, 2, 2)))  # float64 input is cast to the layer's dtype
    dx, dh0 = layer.backward(np.ones((3, 2, 3)), np.ones((1, 2, 3)))
    assert y.dtype == np.float32 and hn.dtype == np.float32 and dx.dtype == np.float32 and dh0.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_input_shape_error():
    layer = gru_xp.GRU(2, 3, seed=0)
    with pytest.raises(gru_xp.UserError, match=r"\(T, B, 2\)"):
        layer.forward(np.ones((3, 2)))


def test_seeded_init_matches_torch_rule():
    layer = gru_xp.GRU(3, 16, seed=0)
    bound = 1 / np.sqrt(16)
    w = np.concatenate([np.ravel(v) for v in layer.params.values()])
    assert np.all(np.abs(w) <= bound) and np.abs(w).max() > 0.9 * bound
    again = gru_xp.GRU(3, 16, seed=0)
    other = gru_xp.GRU(3, 16, seed=1)
    assert all(np.array_equal(layer.params[k], again.params[k]) for k in layer.params)
    assert not np.array_equal(layer.params["weight_hh_l0"], other.params["weight_hh_l0"])
