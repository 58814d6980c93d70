"""Embedding (nn/embedding.py): torch.nn.Embedding parity (padding_idx, repeated ids), finite differences, the fast
scatter-add twins (NumPy add.at; CuPy scatter_add on a GPU) against the portable one-hot GEMM, every namespace."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gru_xp.backend import resolve
from gru_xp.check import rel_err
from gru_xp.errors import UserError
from gru_xp.nn.embedding import Embedding, embedding_backward, embedding_backward_portable, embedding_forward
from gru_xp.nn.optim import Adam

V, E = 9, 4


def _problem(seed=0, shape=(6, 5)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=shape)
    ids[0, 0] = ids[1, 0] = ids[2, 1] = 3  # repeats accumulate
    ids[-1, :] = 0  # padding
    return ids, rng.normal(size=shape + (E,)), rng.normal(size=(V, E))


@pytest.mark.parametrize("padding_idx", [0, None, 5])
@pytest.mark.parametrize("fast", [False, True], ids=["portable", "fast"])
def test_matches_torch_embedding(padding_idx, fast):
    ids, dout, w = _problem()
    emb = Embedding(V, E, padding_idx, dtype="float64", fast=fast)
    if padding_idx is not None:
        w[padding_idx] = 0.0
    emb.params["weight"] = emb.backend.asarray(w)
    te = torch.nn.Embedding(V, E, padding_idx=padding_idx).double()
    te.weight.data = torch.tensor(w)
    out = emb.forward(emb.backend.asarray(ids, dtype=emb.backend.xp.int64))
    emb.backward(emb.backend.asarray(dout))
    ot = te(torch.tensor(ids))
    (ot * torch.tensor(dout)).sum().backward()
    assert rel_err(out, ot.detach().numpy()) == 0.0
    assert rel_err(emb.grads["weight"], te.weight.grad.numpy()) <= 1e-15
    if padding_idx is not None:
        assert np.all(np.asarray(emb.grads["weight"])[padding_idx] == 0)


def test_padding_row_starts_and_stays_zero():
    emb = Embedding(V, E, 0, dtype="float64", seed=3)
    w0 = np.array(emb.params["weight"])
    assert np.all(w0[0] == 0) and np.all(np.abs(w0[1:]) <= 0.05) and np.abs(w0[1:]).min() > 0
    opt, xp = Adam(0.1, weight_decay=0.01), emb.backend.xp
    ids, dout, _ = _problem(1)
    for _ in range(3):
        emb.grads["weight"] *= 0.0
        emb.forward(xp.asarray(ids))
        emb.backward(xp.asarray(dout))
        opt.step(xp, emb.params, emb.grads)
    assert np.all(np.asarray(emb.params["weight"])[0] == 0)


def test_finite_differences():
    """d sum(out * dout) / dW by central differences: the gather's backward is its exact gradient."""
    ids, dout, w = _problem(2, (3, 2))
    be = resolve("cpu", "float64")
    gw = be.zeros((V, E))
    embedding_backward_portable(be.xp, ids, dout, gw, padding_idx=0)
    num = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[i] += 1e-6
        wm[i] -= 1e-6
        num[i] = (np.sum(embedding_forward(be.xp, wp, ids) * dout) - np.sum(embedding_forward(be.xp, wm, ids) * dout)) \
            / 2e-6
    num[0] = 0.0  # padding_idx: torch's rule, the row gets no gradient
    assert np.abs(num).max() > 0 and rel_err(gw, num) <= 1e-8


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 1e-5)])
@pytest.mark.parametrize("chunk", [None, 2 * V, 1])
def test_numpy_twin_equals_portable_path(dtype, tol, chunk):
    """add.at (through the namespace's wrapped NumPy) against the one-hot GEMM, in one chunk and in many."""
    be = resolve("cpu", dtype)
    ids, dout, _ = _problem(4, (40, 7))
    ids_d, dout_d = be.asarray(ids, dtype=be.xp.int64), be.asarray(dout)
    a, b = be.zeros((V, E)), be.zeros((V, E))
    embedding_backward(be.xp, ids_d, dout_d, a, 0, fast=True)
    embedding_backward_portable(be.xp, ids_d, dout_d, b, 0, chunk_elems=chunk)
    assert rel_err(a, b) <= tol and np.abs(np.asarray(b)).max() > 0
    embedding_backward(be.xp, ids_d, dout_d, a, 0, fast=True)  # accumulates
    assert rel_err(a, 2 * np.asarray(b)) <= tol


def test_embedding_on_every_namespace(device):
    ids, dout, w = _problem(5)
    want = Embedding(V, E, 0, dtype="float64")
    got = Embedding(V, E, 0, device=device, dtype="float64")
    for m in (want, got):
        m.params["weight"] = m.backend.asarray(w)
        out = m.forward(m.backend.asarray(ids, dtype=m.backend.xp.int64))
        m.backward(m.backend.asarray(dout))
        m.out = out
    assert rel_err(got.out, want.out) == 0.0
    assert rel_err(got.grads["weight"], want.grads["weight"]) <= 1e-14


@pytest.mark.cuda
def test_cupy_twin_equals_portable_path():
    from gru_xp.backend import cuda_available

    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA: {why}")
    be = resolve("cuda", "float64")
    ids, dout, _ = _problem(6, (50, 9))
    ids_d, dout_d = be.asarray(ids, dtype=be.xp.int64), be.asarray(dout)
    a, b = be.zeros((V, E)), be.zeros((V, E))
    embedding_backward(be.xp, ids_d, dout_d, a, 0, fast=True)
    embedding_backward_portable(be.xp, ids_d, dout_d, b, 0)
    assert rel_err(a, b) <= 1e-13


@pytest.mark.parametrize("args,match", [((0, 3), "num_embeddings"), ((4, 0), "embedding_dim"),
                                        ((4, 3, 4), "padding_idx")])
def test_bad_sizes(args, match):
    with pytest.raises(UserError, match=match):
        Embedding(*args)
