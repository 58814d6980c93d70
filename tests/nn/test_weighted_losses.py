"""Issue 18's losses: the absolute error (MAE) and per-output weights on MSE, MAE and pinball, each backward proven
by float64 central finite differences, against PyTorch autograd, and across backends; a Forecaster with loss="mae"
and weights against a torch twin; weights of ones reproduce the unweighted losses exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gru_xp.backend import resolve, to_host
from gru_xp.check import rel_err
from gru_xp.errors import UserError
from gru_xp.model import Forecaster
from gru_xp.nn import losses

from .gradcheck import numeric_grad

TAUS = np.array([0.1, 0.5, 0.9])


def _xp():
    return resolve("cpu", "float64").xp


def _problem(seed, B=5, K=3, Q=None):
    """Predictions kept at least 0.05 away from their targets (the kinks of |u| and of the pinball loss), random
    targets, random non-negative weights with some zeros (masked outputs)."""
    rng = np.random.default_rng(seed)
    shape = (B, K) if Q is None else (B, K, Q)
    y = rng.normal(size=(B, K))
    gap = rng.uniform(0.05, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    pred = (y if Q is None else y[..., None]) + gap
    w = rng.uniform(0.0, 2.0, size=(B, K)) * (rng.random((B, K)) > 0.25)
    return pred, y, w


CASES = {
    "mae": (lambda xp, p, y, w, t=None: losses.mae(xp, p, y, w),
            lambda xp, p, y, w, t=None: losses.mae_backward(xp, p, y, w), None),
    "mse": (lambda xp, p, y, w, t=None: losses.mse(xp, p, y, w),
            lambda xp, p, y, w, t=None: losses.mse_backward(xp, p, y, w), None),
    "pinball": (lambda xp, p, y, w, t=TAUS: losses.pinball(xp, p, y, t, w),
                lambda xp, p, y, w, t=TAUS: losses.pinball_backward(xp, p, y, t, w), 3),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("weighted", [False, True])
def test_finite_differences(name, weighted):
    """L = sum(g * pred) + loss(pred, y, w): every prediction, random upstream g, float64."""
    fwd, bwd, Q = CASES[name]
    xp = _xp()
    pred, y, w = _problem(1, Q=Q)
    w = w if weighted else None
    g = np.random.default_rng(2).normal(size=pred.shape)
    num = numeric_grad(lambda: float(np.sum(g * pred) + fwd(xp, pred, y, w)), pred)
    assert rel_err(g + bwd(xp, pred, y, w), num) <= 1e-8


def _torch_loss(name, p, y, w):
    y = torch.tensor(y)
    w = None if w is None else torch.tensor(w)
    if name == "mae":
        e = (p - y).abs()
    elif name == "mse":
        e = (p - y) ** 2
    else:
        u = y[..., None] - p
        tau = torch.tensor(TAUS)
        e = torch.maximum(tau * u, (tau - 1) * u)
        w = None if w is None else w[..., None]
    return (e if w is None else w * e).mean()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_torch_autograd(name, weighted):
    fwd, bwd, Q = CASES[name]
    xp = _xp()
    pred, y, w = _problem(3, Q=Q)
    w = w if weighted else None
    pt = torch.tensor(pred, requires_grad=True)
    lt = _torch_loss(name, pt, y, w)
    lt.backward()
    assert abs(float(fwd(xp, pred, y, w)) - lt.item()) <= 1e-13 * max(1.0, abs(lt.item()))
    assert rel_err(bwd(xp, pred, y, w), pt.grad.numpy()) <= 1e-13


def test_mae_subgradient_at_zero_is_torchs():
    """At pred == target the MAE's gradient is 0, as torch's sign(0)."""
    xp = _xp()
    y = np.array([[1.0, 2.0]])
    pt = torch.tensor(y.copy(), requires_grad=True)
    (pt - torch.tensor(y)).abs().mean().backward()
    assert np.array_equal(losses.mae_backward(xp, y.copy(), y), pt.grad.numpy())


@pytest.mark.parametrize("name", list(CASES))
def test_weights_of_one_are_the_unweighted_loss(name):
    fwd, bwd, Q = CASES[name]
    xp = _xp()
    pred, y, _ = _problem(4, Q=Q)
    ones = np.ones(y.shape)
    assert float(fwd(xp, pred, y, ones)) == float(fwd(xp, pred, y, None))
    assert np.array_equal(bwd(xp, pred, y, ones), bwd(xp, pred, y, None))


@pytest.mark.parametrize("name", list(CASES))
def test_across_backends(device, name):
    """The weighted loss and its gradient on every namespace equal NumPy's (float64)."""
    fwd, bwd, Q = CASES[name]
    pred, y, w = _problem(5, Q=Q)
    ref = (float(fwd(_xp(), pred, y, w)), bwd(_xp(), pred, y, w))
    be = resolve(device, "float64")
    xp = be.xp
    args = [be.asarray(a) for a in (pred, y, w, TAUS)]
    got = (float(to_host(fwd(xp, *args))), to_host(bwd(xp, *args)))
    assert abs(got[0] - ref[0]) <= 1e-12 * abs(ref[0])
    assert rel_err(got[1], ref[1]) <= 1e-12


def _torch_forecaster_loss(m: Forecaster, x, y, w):
    sd = {k: torch.tensor(np.asarray(v)) for k, v in m.state_dict().items()}
    r = m.rnn
    rnn = torch.nn.GRU(r.input_size, r.hidden_size, r.num_layers).double()
    rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    lin = torch.nn.Linear(r.hidden_size, m.horizon).double()
    lin.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    _, hn = rnn(torch.tensor(x))
    pred = lin(hn[-1])
    loss = (torch.tensor(w) * (pred - torch.tensor(y)).abs()).mean()
    loss.backward()
    grads = {**{f"rnn.{k}": p.grad for k, p in rnn.named_parameters()},
             **{f"head.{k}": p.grad for k, p in lin.named_parameters()}}
    return loss.item(), grads


def test_mae_forecaster_step_with_weights_matches_torch():
    T, B, I, H, K = 6, 5, 2, 4, 3
    m = Forecaster("gru", I, H, K, loss="mae", dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.5 for k, v in m.params.items()})
    x, y = rng.normal(size=(T, B, I)), rng.normal(size=(B, K)) * 3.0
    w = rng.uniform(0.0, 2.0, size=(B, K)) * (rng.random((B, K)) > 0.3)
    loss = m.loss_and_grads(x, y, weight=w)
    lt, tg = _torch_forecaster_loss(m, x, y, w)
    assert abs(float(loss) - lt) <= 1e-12 * abs(lt)
    assert abs(float(m.loss(x, y, weight=w)) - lt) <= 1e-12 * abs(lt)
    for k, g in m.grads.items():
        assert rel_err(g, tg[k].numpy()) <= 1e-10, k


def test_mae_forecaster_finite_differences_on_every_parameter():
    m = Forecaster("lstm", 2, 3, 2, loss="mae", dtype="float64", seed=1)
    rng = np.random.default_rng(4)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.6 for k, v in m.params.items()})
    x, y = rng.normal(size=(5, 3, 2)), rng.normal(size=(3, 2)) * 4.0  # errors far from 0: no kink within eps
    w = rng.uniform(0.5, 2.0, size=(3, 2))
    m.loss_and_grads(x, y, weight=w)
    grads = {k: np.array(v) for k, v in m.grads.items()}
    for k, p in m.params.items():
        assert rel_err(grads[k], numeric_grad(lambda: float(m.loss(x, y, weight=w)), p)) <= 1e-7, k


def test_unknown_point_loss_is_a_user_error():
    with pytest.raises(UserError, match="loss must be one of mse, mae"):
        Forecaster("gru", 1, 2, 1, loss="huber")
