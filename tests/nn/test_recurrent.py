"""The shared wrapper, for every cell: stacked and bidirectional layers (finite differences and PyTorch float64),
dropout between layers with a fixed mask, eval mode, truncated BPTT, and the per-step dL/dh_t record."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import gru_xp
from gru_xp.backend import Backend
from gru_xp.check import finite_difference, random_problem, randomize_params, rel_err, torch_parity

CELLS = {  # name -> (class, constructor options)
    "gru": (gru_xp.GRU, {}),
    "gru_reset_before": (gru_xp.GRU, {"reset_after": False}),
    "lstm": (gru_xp.LSTM, {}),
    "rnn_tanh": (gru_xp.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gru_xp.RNN, {"nonlinearity": "relu"}),
}
TORCH_CELLS = [c for c in CELLS if c != "gru_reset_before"]  # torch has no reset-before GRU


def make(cell, I, H, **kw):
    cls, opts = CELLS[cell]
    kw.setdefault("dtype", "float64")
    return cls(I, H, **kw, **opts)


def states(s):
    return s if isinstance(s, tuple) else (s,)


def pack(layer, parts):
    return parts[0] if layer.cell.STATES == 1 else tuple(parts)


def run(layer, x, s0, dy, ds, tbptt=0):
    """forward + backward from zeroed grads -> (y, state_n parts, dx, dstate0 parts, grads copy)."""
    layer.zero_grad()
    y, sn = layer.forward(x, s0)
    dx, ds0 = layer.backward(dy, ds, tbptt=tbptt)
    return y, states(sn), dx, states(ds0), {k: np.array(v, copy=True) for k, v in layer.grads.items()}


# ---- stacked and bidirectional: the two proofs ---------------------------------------------------------------
@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_state", [True, False])
def test_pytorch_parity_stacked_bidirectional(cell, num_layers, bidirectional, with_state):
    layer = make(cell, 3, 4, num_layers=num_layers, bidirectional=bidirectional, seed=1)
    randomize_params(layer, seed=num_layers)
    x, s0, dy, ds = random_problem(layer, T=5, B=3, seed=7)
    if not with_state:
        s0 = pack(layer, [np.zeros_like(a) for a in states(s0)])
    errs = torch_parity(layer, x, s0, dy, ds)
    assert set(errs) >= set(layer.params) and len(layer.params) == 4 * num_layers * (2 if bidirectional else 1)
    bad = {k: v for k, v in errs.items() if not v <= 1e-10}
    assert not bad, bad


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B,I,H,L,bi", [(1, 1, 1, 1, 2, True), (3, 2, 2, 2, 2, True), (3, 1, 2, 2, 3, False)])
def test_finite_differences_stacked_bidirectional(cell, T, B, I, H, L, bi):
    layer = make(cell, I, H, num_layers=L, bidirectional=bi, seed=0)
    randomize_params(layer, seed=T + L)
    res = finite_difference(layer, *random_problem(layer, T, B, seed=3))
    assert set(res) == set(layer.params) | {"x", "state0"}
    for name, (analytic, numeric) in res.items():
        if cell == "rnn_relu" and np.abs(numeric).max() == 0:
            assert np.abs(analytic).max() == 0, name
            continue
        assert np.abs(numeric).max() > 0, name
        assert rel_err(analytic, numeric) <= 1e-7, name


# ---- dropout between layers --------------------------------------------------------------------------------
def _single_layers(layer):
    """One single-layer module per layer k of `layer`, same weights (for composing by hand)."""
    cls, opts = type(layer), layer.cell_opts
    D, H = layer.num_directions, layer.hidden_size
    out = []
    for k in range(layer.num_layers):
        I = layer.input_size if k == 0 else D * H
        one = cls(I, H, bidirectional=layer.bidirectional, dtype="float64", **opts)
        one.load_state_dict({n.replace(f"_l{k}", "_l0"): v for n, v in layer.params.items() if f"_l{k}" in n})
        out.append(one)
    return out



@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_equals_manual_composition_with_the_same_mask(cell, bidirectional):
    """Training forward/backward with dropout = the single layers composed by hand with the masks the seeded
    generator draws (host, in layer order), applied between layers and not after the last one."""
    L, T, B, H, p = 3, 4, 2, 3, 0.4
    layer = make(cell, 2, H, num_layers=L, bidirectional=bidirectional, dropout=p, seed=5)
    randomize_params(layer, seed=6)
    x, s0, dy, ds = random_problem(layer, T, B, seed=7)
    rng = copy.deepcopy(layer.rng)  # the generator the masks will be drawn from
    D = layer.num_directions
    masks = [(rng.random((T, B, D * H)) >= p) / (1.0 - p) for _ in range(L - 1)]
    assert all(0 < np.mean(m == 0) < 1 for m in masks)  # the masks really drop something
    y, sn, dx, ds0, grads = run(layer, x, s0, dy, ds)

    singles = _single_layers(layer)
    s0p, dsp = states(s0), states(ds)
    inp, fin = x, []
    for k, one in enumerate(singles):
        out, snk = one.forward(inp, pack(one, [a[k * D:(k + 1) * D] for a in s0p]))
        fin.append(states(snk))
        inp = out * masks[k] if k < L - 1 else out
    assert rel_err(y, inp) <= 1e-14
    for i in range(layer.cell.STATES):
        assert rel_err(sn[i], np.concatenate([f[i] for f in fin])) <= 1e-14
    g = dy
    dsk = [None] * L
    for k in range(L - 1, -1, -1):
        one = singles[k]
        if k < L - 1:
            g = g * masks[k]
        g, dsk[k] = one.backward(g, pack(one, [a[k * D:(k + 1) * D] for a in dsp]))
    assert rel_err(dx, g) <= 1e-13
    for i in range(layer.cell.STATES):
        assert rel_err(ds0[i], np.concatenate([states(d)[i] for d in dsk])) <= 1e-13
    for k, one in enumerate(singles):
        for n, v in one.grads.items():
            assert rel_err(grads[n.replace("_l0", f"_l{k}")], v) <= 1e-13, (k, n)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_dropout_finite_differences_with_a_fixed_mask(cell, monkeypatch):
    """With the mask held fixed, the dropout path's backward is the exact gradient."""
    fixed = {}

    def fixed_mask(self, rng, shape, p):
        if shape not in fixed:
            fixed[shape] = (np.random.default_rng(42).random(shape) >= p) / (1.0 - p)
        return self.asarray(fixed[shape])

    monkeypatch.setattr(Backend, "dropout_mask", fixed_mask)
    layer = make(cell, 2, 2, num_layers=2, bidirectional=True, dropout=0.5, seed=0)
    randomize_params(layer, seed=1)
    prob = random_problem(layer, 3, 2, seed=2)
    y_drop, _ = layer.forward(*prob[:2])
    y_eval, _ = layer.eval().forward(*prob[:2])
    assert rel_err(y_drop, y_eval) > 1e-3  # dropout is on in training
    layer.train()
    for name, (analytic, numeric) in finite_difference(layer, *prob).items():
        assert rel_err(analytic, numeric) <= 1e-7, name


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu"])
def test_eval_mode_applies_no_dropout(cell):
    a = make(cell, 2, 3, num_layers=3, dropout=0.5, seed=0)
    b = make(cell, 2, 3, num_layers=3, dropout=0.0, seed=0)
    randomize_params(a, seed=1)
    b.load_state_dict(a.state_dict())
    x, s0, dy, ds = random_problem(a, 4, 2, seed=2)
    want = run(b, x, s0, dy, ds)
    train = run(a, x, s0, dy, ds)
    assert rel_err(train[0], want[0]) > 1e-3
    got = run(a.eval(), x, s0, dy, ds)
    for u, v in zip(got[:4], want[:4]):
        for ua, va in zip(states(u), states(v)):
            assert np.array_equal(ua, va)
    assert all(np.array_equal(got[4][k], want[4][k]) for k in want[4])


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_no_dropout_after_the_last_layer(cell):
    """A single-layer module with dropout > 0 (torch warns about it) drops nothing, even in training."""
    a = make(cell, 2, 3, num_layers=1, dropout=0.7, seed=0)
    b = make(cell, 2, 3, num_layers=1, dropout=0.0, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 2, 2))
    assert a.training and np.array_equal(a.forward(x)[0], b.forward(x)[0])


def test_dropout_masks_follow_the_seed():
    x = np.random.default_rng(0).normal(size=(4, 2, 2))
    y = [gru_xp.LSTM(2, 3, num_layers=2, dropout=0.5, dtype="float64", seed=s).forward(x)[0] for s in (1, 1)]
    assert np.array_equal(y[0], y[1])
    a = gru_xp.LSTM(2, 3, num_layers=2, dropout=0.5, dtype="float64", seed=1)
    y1, y2 = a.forward(x)[0], a.forward(x)[0]
    assert not np.array_equal(y1, y2)  # a fresh mask each forward


# ---- truncated BPTT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_tbptt_at_least_T_is_full_bptt(cell, bidirectional):
    T = 5
    layer = make(cell, 2, 3, num_layers=2, bidirectional=bidirectional, seed=0)
    randomize_params(layer, seed=1)
    prob = random_problem(layer, T, 2, seed=2)
    full = run(layer, *prob)
    for K in (T, T + 3):
        got = run(layer, *prob, tbptt=K)
        for u, v in zip(got[2:4], full[2:4]):
            for ua, va in zip(states(u), states(v)):
                assert np.array_equal(ua, va)
        assert all(np.array_equal(got[4][k], full[4][k]) for k in full[4])
    short = run(layer, *prob, tbptt=2)
    assert rel_err(short[2], full[2]) > 1e-3  # truncation does change the gradient


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_tbptt_last_step_loss_reaches_back_K_steps(cell, num_layers):
    """dy only at the last step, no state gradient: dx is exactly zero before T-K, and the rest (and every
    parameter gradient) equals a full-BPTT run on the last K steps started from the forward state at T-K."""
    T, K, B = 7, 3, 2
    layer = make(cell, 2, 3, num_layers=num_layers, seed=0)
    randomize_params(layer, seed=1)
    x, s0, dy, _ = random_problem(layer, T, B, seed=2)
    dy[: T - 1] = 0.0
    _, _, dx, ds0, grads = run(layer, x, s0, dy, None, tbptt=K)
    assert np.all(dx[: T - K] == 0.0) and np.abs(dx[T - K:]).min() > 0
    assert all(np.all(d == 0.0) for d in ds0)
    _, s_mid = layer.forward(x[: T - K], s0)  # the state entering step T-K (a constant under truncation)
    _, _, dx_k, _, grads_k = run(layer, x[T - K:], s_mid, dy[T - K:], None)
    assert rel_err(dx[T - K:], dx_k) <= 1e-13
    for k in grads:
        assert rel_err(grads[k], grads_k[k]) <= 1e-13, k


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,K", [(6, 2), (7, 3), (4, 1)])
def test_tbptt_is_full_bptt_per_chunk(cell, T, K):
    """Upstream gradients everywhere: truncated BPTT = independent full-BPTT runs on chunks of K steps counted
    from the end (the first chunk may be shorter), each from its forward start state; grads add up; the final
    state gradient enters the last chunk, dstate0 comes from the first."""
    layer = make(cell, 2, 3, seed=0)
    randomize_params(layer, seed=1)
    x, s0, dy, ds = random_problem(layer, T, 2, seed=2)
    _, _, dx, ds0, grads = run(layer, x, s0, dy, ds, tbptt=K)
    bounds = sorted({0, *range(T, 0, -K)})
    want_dx, want_g = [], {k: 0.0 for k in grads}
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        start = s0 if a == 0 else layer.forward(x[:a], s0)[1]
        _, _, dxc, ds0c, gc = run(layer, x[a:b], start, dy[a:b], ds if b == T else None)
        want_dx.append(dxc)
        for k in gc:
            want_g[k] = want_g[k] + gc[k]
        if a == 0:
            want_ds0 = ds0c
    assert rel_err(dx, np.concatenate(want_dx)) <= 1e-13
    for u, v in zip(ds0, want_ds0):
        assert rel_err(u, v) <= 1e-13
    for k in grads:
        assert rel_err(grads[k], want_g[k]) <= 1e-12, k


# ---- the per-step dL/dh_t record (diagnostics) ----------------------------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_record_dh_is_dL_dh_t(cell, bidirectional):
    """Recording changes nothing else; at the last step dL/dh = dy + dh_n; at step t it is dy_t plus dL/dh0 of a
    run on the steps after t started from the forward state at t."""
    T, B, H = 5, 2, 3
    layer = make(cell, 2, H, num_layers=2, bidirectional=bidirectional, seed=0)
    randomize_params(layer, seed=1)
    x, s0, dy, ds = random_problem(layer, T, B, seed=2)
    plain = run(layer, x, s0, dy, ds)
    layer.zero_grad()
    layer.forward(x, s0)
    dx, _ = layer.backward(dy, ds, record=True)
    # recording runs the reference backward (a fast path may have run above): equal up to rounding
    assert rel_err(dx, plain[2]) <= 1e-13 and all(rel_err(layer.grads[k], plain[4][k]) <= 1e-13 for k in plain[4])
    rec = layer.last_dh
    D = layer.num_directions
    assert len(rec) == 2 and all(r.shape == (T, B, D * H) for r in rec)
    dhn = states(ds)[0]  # (L*D, B, H)
    top = rec[-1]
    assert rel_err(top[T - 1, :, :H], dy[T - 1, :, :H] + dhn[D]) <= 1e-15  # forward direction, last layer
    if bidirectional:
        assert rel_err(top[0, :, H:], dy[0, :, H:] + dhn[D + 1]) <= 1e-15  # reverse direction ends at t = 0
    else:
        t = 1
        one = make(cell, 2, H, num_layers=2, seed=0)
        one.load_state_dict(layer.state_dict())
        _, s_t = one.forward(x[: t + 1], s0)
        _, _, _, ds0_rest, _ = run(one, x[t + 1:], s_t, dy[t + 1:], ds)
        assert rel_err(top[t], dy[t] + ds0_rest[0][1]) <= 1e-13
    layer.forward(x, s0)
    layer.backward(dy, ds)
    assert layer.last_dh is rec  # not recorded unless asked


# one of each cell, stacked and bidirectional where the cell allows, for the exact-equality tests below
LAYERS = pytest.mark.parametrize("make", [
    lambda: gru_xp.GRU(2, 3, num_layers=2, bidirectional=True, dtype="float64", seed=0),
    lambda: gru_xp.GRU(2, 3, reset_after=False, dtype="float64", seed=0),
    lambda: gru_xp.LSTM(2, 3, num_layers=2, bidirectional=True, dtype="float64", seed=0),
    lambda: gru_xp.RNN(2, 3, num_layers=2, bidirectional=True, dtype="float64", seed=0),
], ids=["gru-stacked-bi", "gru-reset-before", "lstm-stacked-bi", "rnn-stacked-bi"])


def _outputs(layer, dx, ds0) -> list:
    """dx (when computed), every dstate0 part and every parameter grad, as host copies."""
    return [np.asarray(a) for a in ((dx,) if dx is not None else ())] + \
        [np.asarray(a) for a in states(ds0)] + [np.array(g) for g in layer.grads.values()]


@LAYERS
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_dy_none_is_zeros_in_every_cell(make, fast):
    """backward(None, dstate_n) — a head on the final state only — equals backward(zeros, dstate_n) exactly."""
    out = []
    for use_none in (True, False):
        layer = make()
        layer.fast = fast
        randomize_params(layer, seed=3)
        x, s0, dy, ds = random_problem(layer, 5, 2, seed=4)
        layer.forward(x, s0)
        dx, ds0 = layer.backward(None if use_none else np.zeros_like(dy), ds)
        assert dx is not None
        out.append(_outputs(layer, dx, ds0))
    assert len(out[0]) == len(out[1])
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@LAYERS
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_input_grad_false_skips_only_dx(make, fast):
    """backward(..., input_grad=False) returns None for dx and exactly the same dstate0 and parameter grads (the
    layers above the first still pass their dx down)."""
    out = {}
    for input_grad in (True, False):
        layer = make()
        layer.fast = fast
        randomize_params(layer, seed=5)
        x, s0, dy, ds = random_problem(layer, 4, 2, seed=6)
        layer.forward(x, s0)
        dx, ds0 = layer.backward(dy, ds, tbptt=3, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        out[input_grad] = _outputs(layer, None, ds0)  # dx left out: compared are dstate0 and the grads
    assert len(out[True]) == len(out[False])
    for a, b in zip(out[True], out[False]):
        assert np.array_equal(a, b)
