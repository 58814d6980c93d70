"""The quantile head: pinball loss and the non-crossing head (softplus, cumulative sum), each backward proven by
float64 central finite differences, against PyTorch autograd, and across backends; a Forecaster with quantiles
against a torch twin; crossing impossible by construction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gru_xp.backend import resolve, to_host
from gru_xp.check import rel_err
from gru_xp.errors import UserError
from gru_xp.model import Forecaster
from gru_xp.nn import head, losses

from .gradcheck import numeric_grad

TAUS = np.array([0.1, 0.5, 0.9])


def _xp():
    return resolve("cpu", "float64").xp


def test_pinball_and_noncrossing_head_finite_differences():
    """L = sum(g * noncrossing(raw)) + pinball(noncrossing(raw), y): every raw entry, random upstream g, float64."""
    xp, rng = _xp(), np.random.default_rng(0)
    B, K, Q = 4, 3, 3
    raw, y, g = rng.normal(size=(B, K, Q)) * 1.5, rng.normal(size=(B, K)), rng.normal(size=(B, K, Q))

    def f():
        q = head.noncrossing_forward(xp, raw)
        return float(xp.sum(g * q) + losses.pinball(xp, q, y, TAUS))

    q = head.noncrossing_forward(xp, raw)
    dq = g + losses.pinball_backward(xp, q, y, TAUS)
    draw = head.noncrossing_backward(xp, raw, dq)
    assert rel_err(draw, numeric_grad(f, raw)) <= 1e-8


@pytest.mark.parametrize("op", ["softplus", "cumsum"])
def test_each_op_finite_differences(op):
    xp, rng = _xp(), np.random.default_rng(1)
    x, g = rng.normal(size=(3, 2, 4)) * 3.0, rng.normal(size=(3, 2, 4))
    fwd = {"softplus": lambda: head.softplus(xp, x), "cumsum": lambda: head.cumsum_last(xp, x)}[op]
    bwd = {"softplus": lambda: head.softplus_backward(xp, x, g), "cumsum": lambda: head.cumsum_last_backward(xp, g)}
    assert rel_err(bwd[op](), numeric_grad(lambda: float(np.sum(g * fwd())), x)) <= 1e-8


def test_softplus_has_no_overflow_and_matches_torch_at_extremes():
    xp = _xp()
    x = np.array([-800.0, -40.0, -1.0, 0.0, 1.0, 40.0, 800.0])
    t = torch.tensor(x, requires_grad=True)
    sp = torch.nn.functional.softplus(t)  # torch returns x itself above 20
    sp.sum().backward()
    assert np.all(np.isfinite(head.softplus(xp, x)))
    assert rel_err(head.softplus(xp, x), sp.detach().numpy()) <= 1e-15
    assert rel_err(head.softplus_backward(xp, x, np.ones_like(x)), t.grad.numpy()) <= 1e-15


def test_head_and_pinball_match_torch_autograd():
    xp, rng = _xp(), np.random.default_rng(2)
    raw, y, g = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2)), rng.normal(size=(5, 2, 3))
    rt = torch.tensor(raw, requires_grad=True)
    qt = torch.cat([rt[..., :1], rt[..., :1] + torch.cumsum(torch.nn.functional.softplus(rt[..., 1:]), -1)], -1)
    u = torch.tensor(y)[..., None] - qt
    tau = torch.tensor(TAUS)
    lt = torch.maximum(tau * u, (tau - 1) * u).mean() + (torch.tensor(g) * qt).sum()
    lt.backward()
    q = head.noncrossing_forward(xp, raw)
    assert rel_err(q, qt.detach().numpy()) <= 1e-14
    assert abs(float(losses.pinball(xp, q, y, TAUS)) + float(np.sum(g * q)) - lt.item()) <= 1e-12 * abs(lt.item())
    draw = head.noncrossing_backward(xp, raw, g + losses.pinball_backward(xp, q, y, TAUS))
    assert rel_err(draw, rt.grad.numpy()) <= 1e-12


def _torch_quantile_loss(m: Forecaster, x, y):
    """A torch twin of a quantile Forecaster (GRU -> Linear -> non-crossing -> pinball), weights copied in."""
    sd = {k: torch.tensor(np.asarray(v)) for k, v in m.state_dict().items()}
    r = m.rnn
    rnn = torch.nn.GRU(r.input_size, r.hidden_size, r.num_layers, bidirectional=r.bidirectional).double()
    rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    Q = len(m.quantiles)
    lin = torch.nn.Linear(r.num_directions * r.hidden_size, m.horizon * Q).double()
    lin.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    _, hn = rnn(torch.tensor(x))
    feat = torch.cat([hn[-2], hn[-1]], -1) if r.bidirectional else hn[-1]
    raw = lin(feat).reshape(-1, m.horizon, Q)
    q = torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(torch.nn.functional.softplus(raw[..., 1:]), -1)], -1)
    u = torch.tensor(y)[..., None] - q
    tau = torch.tensor(m.quantiles, dtype=torch.float64)
    loss = torch.maximum(tau * u, (tau - 1) * u).mean()
    loss.backward()
    grads = {**{f"rnn.{k}": p.grad for k, p in rnn.named_parameters()},
             **{f"head.{k}": p.grad for k, p in lin.named_parameters()}}
    return loss.item(), q.detach().numpy(), grads


@pytest.mark.parametrize("layers,bi,K,quantiles", [(1, False, 1, (0.1, 0.5, 0.9)),
                                                   (2, True, 3, (0.05, 0.5, 0.8, 0.95))])
def test_quantile_forecaster_step_matches_torch(layers, bi, K, quantiles):
    T, B, I, H = 6, 5, 2, 4
    m = Forecaster("gru", I, H, K, num_layers=layers, bidirectional=bi, quantiles=quantiles, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.5 for k, v in m.params.items()})
    x, y = rng.normal(size=(T, B, I)), rng.normal(size=(B, K))
    loss = m.loss_and_grads(x, y)
    lt, qt, tg = _torch_quantile_loss(m, x, y)
    assert abs(float(loss) - lt) <= 1e-12 * abs(lt)
    assert rel_err(m.forward(x), qt) <= 1e-12
    assert set(tg) == set(m.grads)
    for k, g in m.grads.items():
        assert rel_err(g, tg[k].numpy()) <= 1e-10, k


def test_quantile_forecaster_finite_differences_on_every_parameter():
    m = Forecaster("lstm", 2, 3, 2, quantiles=(0.2, 0.5, 0.7), dtype="float64", seed=1)
    rng = np.random.default_rng(4)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * 0.6 for k, v in m.params.items()})
    x, y = rng.normal(size=(5, 3, 2)), rng.normal(size=(3, 2))
    m.loss_and_grads(x, y)
    grads = {k: np.array(v) for k, v in m.grads.items()}
    for k, p in m.params.items():
        assert rel_err(grads[k], numeric_grad(lambda: float(m.loss(x, y)), p)) <= 1e-7, k


def test_quantile_forecaster_step_matches_numpy(device):
    """GRU -> quantile head -> pinball -> Adam, float32 on every namespace, equal to NumPy."""
    from gru_xp.nn.optim import Adam

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4, 2)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    out = []
    for dev in ("cpu", device):
        m = Forecaster("gru", 2, 5, 2, quantiles=(0.1, 0.5, 0.9), device=dev, dtype="float32", seed=5)
        be, opt = m.backend, Adam(lr=0.01)
        xd, yd = be.asarray(x), be.asarray(y)
        for _ in range(3):
            m.loss_and_grads(xd, yd)
            opt.step(be.xp, m.params, m.grads)
        out.append(({k: to_host(v) for k, v in m.params.items()}, to_host(m.forward(xd))))
    for k in out[0][0]:
        assert rel_err(out[1][0][k], out[0][0][k]) <= 1e-4, k
    assert rel_err(out[1][1], out[0][1]) <= 1e-4


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 1e4))
def test_quantiles_cannot_cross_whatever_the_weights(seed, scale):
    """Any weights (huge ones included), any input: the Q outputs of every step are nondecreasing."""
    m = Forecaster("gru", 1, 3, 2, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9), dtype="float64", seed=0)
    rng = np.random.default_rng(seed)
    m.load_state_dict({k: rng.normal(size=tuple(v.shape)) * scale for k, v in m.params.items()})
    q = np.asarray(m.forward(rng.normal(size=(4, 6, 1)) * scale))
    assert q.shape == (6, 2, 5)
    assert np.all(np.diff(q, axis=-1) >= 0)


@pytest.mark.parametrize("bad", [(), (0.5, 0.1), (0.0, 0.5), (0.5, 1.0), (0.5, 0.5), ("a",)])
def test_bad_quantiles_are_user_errors(bad):
    with pytest.raises(UserError, match="quantiles must be increasing"):
        Forecaster("gru", 1, 2, 1, quantiles=bad)
