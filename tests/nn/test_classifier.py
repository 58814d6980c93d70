"""The classifier's pieces and the whole model: dense ReLU, binary and softmax cross-entropy (finite differences,
torch, stability at large logits), and Embedding -> packed recurrent -> Dense(relu) -> Dense -> loss against torch
autograd for every cell, two and four classes, reference and fast paths; every namespace."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from gru_xp.backend import resolve
from gru_xp.check import rel_err
from gru_xp.errors import UserError
from gru_xp.interop import to_torch_module
from gru_xp.nn import head, losses
from gru_xp.nn.classifier import Classifier

XP = resolve("cpu", "float64").xp


def _fd(f, a, eps=1e-6):
    num = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        p, m = a.copy(), a.copy()
        p[i] += eps
        m[i] -= eps
        num[i] = (f(p) - f(m)) / (2 * eps)
    return num


def test_dense_relu_finite_differences_and_torch():
    rng = np.random.default_rng(0)
    h, w, b, dout = rng.normal(size=(5, 4)), rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=(5, 3))
    out = head.dense_relu_forward(XP, w, b, h)
    assert (out == 0).any() and (out > 0).any()  # both sides of the kink are exercised
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    dh = head.dense_relu_backward(XP, w, h, out, dout, gw, gb)
    obj = lambda h_, w_, b_: float(np.sum(head.dense_relu_forward(XP, w_, b_, h_) * dout))  # noqa: E731
    assert rel_err(dh, _fd(lambda a: obj(a, w, b), h)) <= 1e-8
    assert rel_err(gw, _fd(lambda a: obj(h, a, b), w)) <= 1e-8
    assert rel_err(gb, _fd(lambda a: obj(h, w, a), b)) <= 1e-8
    ht, wt, bt = (torch.tensor(a, requires_grad=True) for a in (h, w, b))
    (torch.relu(ht @ wt.T + bt) * torch.tensor(dout)).sum().backward()
    assert rel_err(out, torch.relu(ht @ wt.T + bt).detach().numpy()) <= 1e-15
    for mine, t in ((dh, ht), (gw, wt), (gb, bt)):
        assert rel_err(mine, t.grad.numpy()) <= 1e-14


LOSSES = {
    "bce": (losses.bce_with_logits, losses.bce_with_logits_backward,
            lambda z, y: F.binary_cross_entropy_with_logits(z, y)),
    "softmax_ce": (losses.softmax_cross_entropy, losses.softmax_cross_entropy_backward,
                   lambda z, y: F.cross_entropy(z, y)),
}


def _targets(kind, rng, B, K):
    if kind == "bce":
        return rng.integers(0, 2, size=(B, K)).astype(float)
    y = np.zeros((B, K))
    y[np.arange(B), rng.integers(0, K, B)] = 1.0
    return y


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_losses_match_torch_and_finite_differences(kind, scale):
    fwd, bwd, tfn = LOSSES[kind]
    rng = np.random.default_rng(1)
    K = 1 if kind == "bce" else 4
    z, y = rng.normal(size=(6, K)) * scale, _targets(kind, rng, 6, K)
    zt = torch.tensor(z, requires_grad=True)
    lt = tfn(zt, torch.tensor(y))
    lt.backward()
    assert abs(float(fwd(XP, z, y)) - lt.item()) <= 1e-14 * max(1.0, lt.item())
    g = bwd(XP, z, y)
    assert rel_err(g, zt.grad.numpy()) <= 1e-13
    if scale == 1.0:
        assert rel_err(g, _fd(lambda a: float(fwd(XP, a, y)), z)) <= 1e-8


@pytest.mark.parametrize("kind", list(LOSSES))
def test_losses_are_stable_for_huge_logits(kind):
    """|logit| = 1e4 (float32 and float64): finite, the exact limit (0 when right, |z| when wrong), gradients
    bounded by 1/n."""
    fwd, bwd, _ = LOSSES[kind]
    for dtype in ("float32", "float64"):
        be = resolve("cpu", dtype)
        if kind == "bce":
            z, y = np.array([[1e4], [-1e4], [1e4]]), np.array([[1.0], [0.0], [0.0]])
            want = 1e4 / 3
        else:
            z, y = np.array([[1e4, -1e4, 0.0], [1e4, 0.0, -1e4]]), np.array([[1.0, 0, 0], [0, 0, 1.0]])
            want = 2e4 / 2
        loss = float(fwd(be.xp, be.asarray(z), be.asarray(y)))
        g = np.asarray(bwd(be.xp, be.asarray(z), be.asarray(y)))
        assert np.isfinite(loss) and abs(loss - want) <= 1e-6 * want
        assert np.isfinite(g).all() and np.abs(g).max() <= 1.0 / z.shape[0] + 1e-7


def _random_classifier(cell, C, fast, vocab, rng, **kw):
    m = Classifier(cell, 3, 5, C, vocab_size=vocab, embedding_dim=3, dense_size=4, num_layers=2, bidirectional=True,
                   dtype="float64", seed=1, fast=fast, **kw)
    sd = {k: rng.normal(size=tuple(v.shape)) * 0.5 for k, v in m.params.items()}
    if vocab:
        sd["embedding.weight"][0] = 0.0
    m.load_state_dict(sd)
    return m, sd


def _torch_loss(m, sd, cell, C, x, L, y, vocab):
    tm = to_torch_module(m.rnn)
    params = [p for _, p in tm.named_parameters()]
    extra = {}
    if vocab:
        emb = torch.nn.Embedding(vocab, 3, padding_idx=0).double()
        emb.weight.data = torch.tensor(sd["embedding.weight"])
        inp, extra["embedding.weight"] = emb(torch.tensor(x)), emb.weight
    else:
        inp = torch.tensor(x, requires_grad=True)
    lin = {}
    for k in ("dense.weight", "dense.bias", "out.weight", "out.bias"):
        lin[k] = extra[k] = torch.tensor(sd[k], requires_grad=True)
    _, hn = tm(pack_padded_sequence(inp, torch.tensor(L), enforce_sorted=False))
    h = hn[0] if cell == "lstm" else hn
    hid = torch.relu(torch.cat([h[-2], h[-1]], -1) @ lin["dense.weight"].T + lin["dense.bias"])
    z = hid @ lin["out.weight"].T + lin["out.bias"]
    yt = torch.tensor(y)
    lt = F.binary_cross_entropy_with_logits(z, yt) if C == 2 else F.cross_entropy(z, yt.argmax(1))
    lt.backward()
    grads = {f"rnn.{k}": p.grad.numpy() for (k, _), p in zip(tm.named_parameters(), params)}
    grads.update({k: t.grad.numpy() for k, t in extra.items()})
    return lt.item(), grads, (None if vocab else inp.grad.numpy())


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("C", [2, 4])
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("vocab", [11, 0], ids=["tokens", "series"])
def test_classifier_matches_torch(cell, C, fast, vocab):
    """The tutorial's model end to end (tokens: Embedding(padding 0) -> packed bidirectional 2-layer recurrent ->
    Dense(relu) -> Dense -> BCE/CE), and the series variant (no embedding; dx checked): loss and every gradient."""
    rng = np.random.default_rng(2)
    m, sd = _random_classifier(cell, C, fast, vocab, rng)
    T, B = 6, 5
    L = np.array([6, 1, 3, 4, 2])
    pad = np.arange(T)[:, None] >= L[None, :]
    if vocab:
        x = rng.integers(1, vocab, size=(T, B))
        x[pad] = 0
        xd = m.backend.asarray(x, dtype=m.backend.xp.int64)
    else:
        x = rng.normal(size=(T, B, 3))
        xd = m.backend.asarray(x)
    y = _targets("bce" if C == 2 else "ce", rng, B, 1 if C == 2 else C)
    loss = m.loss_and_grads(xd, m.backend.asarray(y), lengths=L)
    lt, grads, dx_t = _torch_loss(m, sd, cell, C, x, L, y, vocab)
    assert abs(float(loss) - lt) <= 1e-13 * abs(lt)
    assert set(grads) == set(m.grads)
    bad = {k: rel_err(m.grads[k], g) for k, g in grads.items() if not rel_err(m.grads[k], g) <= 1e-10}
    assert not bad, bad
    if not vocab:  # the input gradient too (zero at padded steps)
        m.zero_grad()
        logits = m.forward(xd, L)
        dx = m.backward(losses.bce_with_logits_backward(XP, logits, y) if C == 2
                        else losses.softmax_cross_entropy_backward(XP, logits, y), input_grad=True)
        assert rel_err(dx, dx_t) <= 1e-10 and np.all(np.asarray(dx)[pad] == 0)


def test_correct_and_probabilities():
    m = Classifier("gru", 2, 3, 2, dtype="float64")
    m._logits = XP.asarray([[2.0], [-1.0], [0.5]])
    assert float(m.correct(XP.asarray([[1.0], [1.0], [0.0]]))) == 1.0
    p = np.asarray(m.probabilities(m._logits))
    assert np.allclose(p.sum(1), 1) and p[0, 1] > 0.85 and p[1, 0] > 0.7
    m3 = Classifier("gru", 2, 3, 3, dtype="float64")
    m3._logits = XP.asarray([[2.0, 0, 1], [0, 3.0, 1]])
    assert float(m3.correct(XP.asarray([[1.0, 0, 0], [0, 0, 1.0]]))) == 1.0


def test_classifier_on_every_namespace(device):
    """One training step's loss and gradients (tokens, packed, bidirectional LSTM) on every namespace."""
    rng = np.random.default_rng(3)
    ref, sd = _random_classifier("lstm", 3, True, 11, rng)
    got = Classifier("lstm", 3, 5, 3, vocab_size=11, embedding_dim=3, dense_size=4, num_layers=2,
                     bidirectional=True, device=device, dtype="float64", seed=1)
    got.load_state_dict(sd)
    x = rng.integers(0, 11, size=(5, 4))
    y = np.eye(3)[[0, 2, 1, 2]]
    L = np.array([5, 2, 3, 1])
    out = []
    for m in (ref, got):
        be = m.backend
        out.append(m.loss_and_grads(be.asarray(x, dtype=be.xp.int64), be.asarray(y), lengths=L))
    assert rel_err(out[1], out[0]) <= 1e-13
    assert all(rel_err(got.grads[k], ref.grads[k]) <= 1e-12 for k in ref.grads)


def test_bad_classifier_arguments():
    with pytest.raises(UserError, match="num_classes"):
        Classifier("gru", 2, 3, 1)
    with pytest.raises(UserError, match="vocab_size"):
        Classifier("gru", 2, 3, 2, vocab_size=1)
    m = Classifier("gru", 2, 3, 2, dtype="float64")
    with pytest.raises(UserError, match="tbptt"):
        m.loss_and_grads(np.zeros((3, 1, 2)), np.zeros((1, 1)), tbptt=2)
