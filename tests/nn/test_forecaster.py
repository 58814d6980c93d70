"""A full model step (GRU -> linear head -> MSE) and the optimizers, against PyTorch float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gru_xp.nn import head, losses, optim
from gru_xp.backend import resolve
from gru_xp.check import rel_err
from gru_xp.model import Forecaster


def _torch_twin(m: Forecaster):
    sd = {k: torch.tensor(np.asarray(v)) for k, v in m.state_dict().items()}
    r = m.rnn
    rnn = torch.nn.GRU(r.input_size, r.hidden_size, r.num_layers, bidirectional=r.bidirectional).double()
    rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    lin = torch.nn.Linear(r.num_directions * r.hidden_size, m.horizon).double()
    lin.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    return rnn, lin


def _torch_loss(rnn, lin, x, y, D):
    _, hn = rnn(torch.tensor(x))
    feat = torch.cat([hn[-2], hn[-1]], -1) if D == 2 else hn[-1]
    return ((lin(feat) - torch.tensor(y)) ** 2).mean()


@pytest.mark.parametrize("layers,bi,K", [(1, False, 1), (2, False, 3), (2, True, 14)])
def test_model_step_matches_torch(layers, bi, K):
    T, B, I, H = 6, 5, 2, 4
    m = Forecaster("gru", I, H, K, num_layers=layers, bidirectional=bi, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    # random (non-zero) biases everywhere, head included
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.5 for k, v in m.params.items()})
    x, y = rng.normal(size=(T, B, I)), rng.normal(size=(B, K))
    rnn, lin = _torch_twin(m)
    loss = m.loss_and_grads(x, y)
    lt = _torch_loss(rnn, lin, x, y, 2 if bi else 1)
    lt.backward()
    assert abs(float(loss) - lt.item()) <= 1e-12 * abs(lt.item())
    tg = {**{f"rnn.{k}": p.grad for k, p in rnn.named_parameters()},
          **{f"head.{k}": p.grad for k, p in lin.named_parameters()}}
    assert set(tg) == set(m.grads)
    for k, g in m.grads.items():
        assert rel_err(g, tg[k].numpy()) <= 1e-10, k


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_model_backward_dx_matches_torch_and_input_grad_false_skips_it(fast):
    """Forecaster.backward returns dL/dx (torch's x.grad); input_grad=False (what loss_and_grads uses) returns None
    and the same parameter grads."""
    T, B, I, H, K = 5, 4, 3, 4, 2
    m = Forecaster("gru", I, H, K, num_layers=2, bidirectional=True, dtype="float64", seed=2)
    m.rnn.fast = fast
    rng = np.random.default_rng(1)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.5 for k, v in m.params.items()})
    x, y = rng.normal(size=(T, B, I)), rng.normal(size=(B, K))
    rnn, lin = _torch_twin(m)
    xt = torch.tensor(x, requires_grad=True)
    _, hn = rnn(xt)
    lt = ((lin(torch.cat([hn[-2], hn[-1]], -1)) - torch.tensor(y)) ** 2).mean()
    lt.backward()
    grads = {}
    for input_grad in (True, False):
        m.zero_grad()
        pred = m.forward(x)
        dx = m.backward(losses.mse_backward(m.backend.xp, pred, y), input_grad=input_grad)
        grads[input_grad] = {k: np.array(v) for k, v in m.grads.items()}
        if input_grad:
            assert rel_err(np.asarray(dx), xt.grad.numpy()) <= 1e-10
        else:
            assert dx is None
    for k in grads[True]:
        assert np.array_equal(grads[True][k], grads[False][k]), k


@pytest.mark.parametrize("K", [3, 1])  # K 1: linear_backward's outer-product branch
def test_head_and_loss_finite_differences(K):
    xp = resolve("cpu", "float64").xp
    rng = np.random.default_rng(1)
    w, b, h, t = rng.normal(size=(K, 5)), rng.normal(size=K), rng.normal(size=(4, 5)), rng.normal(size=(4, K))

    def f(w, b, h):
        return float(losses.mse(xp, head.linear_forward(xp, w, b, h), t))

    gw, gb = np.zeros_like(w), np.zeros_like(b)
    pred = head.linear_forward(xp, w, b, h)
    dh = head.linear_backward(xp, w, h, losses.mse_backward(xp, pred, t), gw, gb)
    eps = 1e-6
    for arr, grad in ((w, gw), (b, gb), (h, dh)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            fp = f(w, b, h)
            arr[i] = old - eps
            fm = f(w, b, h)
            arr[i] = old
            num[i] = (fp - fm) / (2 * eps)
        assert rel_err(grad, num) <= 1e-8


def _run_optimizer(ours, theirs, clip=None, steps=5):
    rng = np.random.default_rng(2)
    p0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    params = {k: v.copy() for k, v in p0.items()}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p0.items()}
    topt = theirs(list(tparams.values()))
    xp = resolve("cpu", "float64").xp
    for s in range(steps):
        grads = {k: rng.normal(size=v.shape) * (s + 1) for k, v in p0.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k].copy())
        if clip:
            norm = optim.clip_grad_norm(xp, grads, clip)
            tnorm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), clip)
            assert abs(float(norm) - tnorm.item()) <= 1e-12 * tnorm.item()
        ours.step(xp, params, grads)
        topt.step()
    for k in params:
        assert rel_err(params[k], tparams[k].detach().numpy()) <= 1e-12, k


def test_adam_matches_torch():
    _run_optimizer(optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01))


def test_adam_with_clipping_matches_torch():
    _run_optimizer(optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01), clip=1.0)


def test_sgd_matches_torch():
    _run_optimizer(optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1))
    _run_optimizer(optim.SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))


def test_clip_leaves_small_gradients_alone():
    xp = resolve("cpu", "float64").xp
    g = {"a": np.array([0.3, 0.4])}
    norm = optim.clip_grad_norm(xp, g, 10.0)
    assert float(norm) == pytest.approx(0.5) and np.allclose(g["a"], [0.3, 0.4])
    optim.clip_grad_norm(xp, g, 0.1)
    assert np.sqrt((g["a"] ** 2).sum()) == pytest.approx(0.1, rel=1e-5)
