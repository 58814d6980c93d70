"""Variable-length batches (recurrent.py's lengths): torch's packed sequences for every cell, stacked, bidirectional,
reference and fast paths (float64, <= 1e-10); finite differences; padded steps carry nothing; per-sequence runs for
the GRU convention torch lacks; padding width and dropout; bad lengths; every namespace."""
from __future__ import annotations

import numpy as np
import pytest

import gru_xp
from gru_xp.check import (finite_difference, random_lengths, random_problem, randomize_params, rel_err,
                          torch_parity)
from gru_xp.errors import UserError

CELLS = {
    "gru": (gru_xp.GRU, {}),
    "gru_reset_before": (gru_xp.GRU, {"reset_after": False}),
    "lstm": (gru_xp.LSTM, {}),
    "rnn_tanh": (gru_xp.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gru_xp.RNN, {"nonlinearity": "relu"}),
}
TORCH_CELLS = [c for c in CELLS if c != "gru_reset_before"]
PATHS = pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])


def make(cell, I, H, fast=False, **kw):
    cls, opts = CELLS[cell]
    kw.setdefault("dtype", "float64")
    layer = cls(I, H, **kw, **opts)
    layer.fast = fast
    return layer


def states(s):
    return s if isinstance(s, tuple) else (s,)


def run(layer, x, s0, dy, ds, lengths):
    layer.zero_grad()
    y, sn = layer.forward(x, s0, lengths=lengths)
    dx, ds0 = layer.backward(dy, ds)
    return [np.array(y), *map(np.array, states(sn)), np.array(dx), *map(np.array, states(ds0))], \
        {k: np.array(v) for k, v in layer.grads.items()}


@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, True), (3, False)])
@pytest.mark.parametrize("with_state", [True, False])
@PATHS
def test_packed_sequences_match_pytorch(cell, num_layers, bidirectional, with_state, fast):
    """Outputs (zeros past each length), final states (each sequence's own last step), dx, dstate0 and every
    parameter gradient equal torch autograd through pack_padded_sequence(enforce_sorted=False)."""
    layer = make(cell, 3, 4, fast, num_layers=num_layers, bidirectional=bidirectional, seed=1)
    randomize_params(layer, seed=num_layers)
    x, s0, dy, ds = random_problem(layer, T=6, B=5, seed=7)
    if not with_state:
        s0 = None
    lengths = random_lengths(6, 5, seed=num_layers)
    assert lengths.min() == 1 and lengths.max() == 6 and len(set(lengths)) > 2
    if s0 is None:
        s0 = tuple(np.zeros((num_layers * layer.num_directions, 5, 4)) for _ in range(layer.cell.STATES))
        s0 = s0[0] if len(s0) == 1 else s0
    errs = torch_parity(layer, x, s0, dy, ds, lengths=lengths)
    assert set(errs) >= set(layer.params) | {"y", "x", "state_n[0]", "state0[0]"}
    bad = {k: v for k, v in errs.items() if not v <= 1e-10}
    assert not bad, bad


@pytest.mark.parametrize("cell", list(CELLS))
@PATHS
def test_packed_finite_differences(cell, fast):
    layer = make(cell, 2, 2, fast, num_layers=2, bidirectional=True, seed=0)
    randomize_params(layer, seed=3)
    prob = random_problem(layer, 4, 3, seed=4)
    lengths = np.array([4, 1, 2])
    res = finite_difference(layer, *prob, lengths=lengths)
    assert set(res) == set(layer.params) | {"x", "state0"}
    for name, (analytic, numeric) in res.items():
        if not (cell == "rnn_relu" and np.abs(numeric).max() == 0):
            assert np.abs(numeric).max() > 0, name
        assert rel_err(analytic, numeric) <= 1e-7, name
    x_num = res["x"][1]
    assert np.all(x_num[1:, 1] == 0) and np.all(x_num[2:, 2] == 0)  # padded inputs do not reach the objective


@pytest.mark.parametrize("cell", list(CELLS))
@PATHS
def test_padded_steps_are_inert(cell, fast):
    """Zero outputs and zero dx at padded steps; whatever the padded inputs hold, nothing else changes (exactly)."""
    T, B = 6, 4
    layer = make(cell, 3, 3, fast, num_layers=2, bidirectional=True, seed=2)
    randomize_params(layer, seed=5)
    x, s0, dy, ds = random_problem(layer, T, B, seed=6)
    lengths = np.array([6, 2, 4, 1])
    pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    outs, grads = run(layer, x, s0, dy, ds, lengths)
    y, dx = outs[0], outs[1 + layer.cell.STATES]
    assert np.all(y[pad] == 0) and np.all(dx[pad] == 0) and np.abs(dx[~pad]).min() > 0
    x2 = x.copy()
    x2[pad] = np.random.default_rng(0).normal(size=(int(pad.sum()), 3)) * 10
    outs2, grads2 = run(layer, x2, s0, dy, ds, lengths)
    for a, b in zip(outs, outs2):
        assert np.array_equal(a, b)
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)


def _one_by_one(layer, x, s0, dy, ds, lengths):
    """Each sequence alone at its own length (B = 1, no padding): outputs padded back, states, dx, summed grads."""
    T, B = x.shape[:2]
    n = layer.cell.STATES
    y = np.zeros((T, B, dy.shape[2]))
    dx = np.zeros_like(x)
    sn = [np.zeros_like(a) for a in states(s0)]
    ds0 = [np.zeros_like(a) for a in states(s0)]
    grads = {k: 0.0 for k in layer.params}
    for b in range(B):
        L = int(lengths[b])
        pick = lambda parts: tuple(a[:, b:b + 1] for a in states(parts))  # noqa: E731
        s0b, dsb = pick(s0), pick(ds)
        outs, g = run(layer, x[:L, b:b + 1], s0b[0] if n == 1 else s0b, dy[:L, b:b + 1],
                      dsb[0] if n == 1 else dsb, None)
        y[:L, b:b + 1] = outs[0]
        for i in range(n):
            sn[i][:, b:b + 1] = outs[1 + i]
            ds0[i][:, b:b + 1] = outs[2 + n + i]
        dx[:L, b:b + 1] = outs[1 + n]
        grads = {k: grads[k] + g[k] for k in grads}
    return [y, *sn, dx, *ds0], grads


@pytest.mark.parametrize("cell", ["gru_reset_before", "gru", "lstm"])
@PATHS
def test_packed_batch_equals_each_sequence_alone(cell, fast):
    """The proof that needs no torch (the reset-before GRU has none): a padded batch with lengths equals running
    each sequence alone at its own length."""
    layer = make(cell, 2, 3, fast, num_layers=2, bidirectional=True, seed=0)
    randomize_params(layer, seed=8)
    x, s0, dy, ds = random_problem(layer, 5, 4, seed=9)
    lengths = np.array([3, 5, 1, 4])
    got, g = run(layer, x, s0, dy, ds, lengths)
    want, gw = _one_by_one(layer, x, s0, dy, ds, lengths)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-13
    for k in g:
        assert rel_err(g[k], gw[k]) <= 1e-12, k


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
@PATHS
def test_lengths_of_T_equal_no_lengths(cell, fast):
    layer = make(cell, 2, 3, fast, num_layers=2, bidirectional=True, seed=0)
    randomize_params(layer, seed=1)
    prob = random_problem(layer, 5, 3, seed=2)
    a, ga = run(layer, *prob, None)
    b, gb = run(layer, *prob, np.array([5, 5, 5]))
    for u, v in zip(a, b):
        assert rel_err(u, v) <= 1e-14
    assert all(rel_err(ga[k], gb[k]) <= 1e-14 for k in ga)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu"])
@PATHS
def test_extra_padding_changes_nothing_even_with_dropout(cell, fast):
    """The same batch padded to T or to T + 3: the same outputs at real steps, states, dx and grads (to rounding),
    in training mode with dropout between three layers: a real step's dropout mask does not depend on the padding
    width (one host generator per layer, filled time-major)."""
    T, B, extra = 5, 3, 3
    lengths = np.array([5, 2, 3])
    res = []
    for width in (T, T + extra):
        layer = make(cell, 2, 3, fast, num_layers=3, bidirectional=True, dropout=0.5, seed=4)
        randomize_params(layer, seed=5)
        x, s0, dy, ds = random_problem(layer, T, B, seed=6)
        pad = lambda a: np.concatenate([a, np.zeros((width - T,) + a.shape[1:])])  # noqa: E731
        outs, g = run(layer, pad(x), s0, pad(dy), ds, lengths)
        outs[0], outs[1 + layer.cell.STATES] = outs[0][:T], outs[1 + layer.cell.STATES][:T]
        res.append((outs, g, layer))
    (a, ga, la), (b, gb, _) = res
    assert all(m is not None for m in la._masks[:-1])  # dropout really ran
    for u, v in zip(a, b):
        assert rel_err(u, v) <= 1e-13
    assert all(rel_err(ga[k], gb[k]) <= 1e-13 for k in ga)


def test_lengths_run_the_reference_record_path_too():
    """backward(record=True) (diagnostics: the reference backward) gives the same grads with lengths."""
    layer = make("lstm", 2, 3, True, num_layers=2, bidirectional=True, seed=0)
    randomize_params(layer, seed=1)
    x, s0, dy, ds = random_problem(layer, 5, 3, seed=2)
    lengths = np.array([5, 1, 3])
    _, g = run(layer, x, s0, dy, ds, lengths)
    layer.zero_grad()
    layer.forward(x, s0, lengths=lengths)
    layer.backward(dy, ds, record=True)
    assert all(rel_err(layer.grads[k], g[k]) <= 1e-13 for k in g)
    top = layer.last_dh[-1]  # (T, B, 2H)
    assert np.all(top[3:, 2] == 0) and np.all(top[1:, 1] == 0)  # nothing reaches padded steps


@pytest.mark.parametrize("lengths,match", [
    (np.array([3.0, 2.0]), "integers"), (np.array([3, 2, 1]), "shape"), (np.array([0, 2]), "between 1 and"),
    (np.array([4, 2]), "between 1 and"), ([True, 2], "integers"),
])
def test_bad_lengths_are_user_errors(lengths, match):
    layer = gru_xp.GRU(2, 3, dtype="float64")
    with pytest.raises(UserError, match=match):
        layer.forward(np.zeros((3, 2, 2)), lengths=lengths)


def test_tbptt_with_lengths_is_refused():
    layer = gru_xp.LSTM(2, 3, dtype="float64")
    layer.forward(np.zeros((3, 2, 2)), lengths=[3, 1])
    with pytest.raises(UserError, match="tbptt"):
        layer.backward(np.zeros((3, 2, 3)), None, tbptt=2)


@pytest.mark.parametrize("cls", [gru_xp.GRU, gru_xp.LSTM])
def test_lengths_on_every_namespace(device, cls):
    """The index arrays (masks, per-sequence reversal, last-step gathers) are built on the layer's device."""
    ref = cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    randomize_params(ref, seed=4)
    layer = cls(3, 4, num_layers=2, bidirectional=True, device=device, dtype="float64", seed=3)
    layer.load_state_dict(ref.state_dict())
    prob = random_problem(ref, 5, 3, seed=5)
    lengths = np.array([2, 5, 1])
    want, gw = run(ref, *prob, lengths)
    layer.zero_grad()
    y, sn = layer.forward(*prob[:2], lengths=layer.backend.asarray(lengths, dtype=layer.backend.xp.int64))
    dx, ds0 = layer.backward(*prob[2:])
    got = [y, *states(sn), dx, *states(ds0)]
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-12
    assert all(rel_err(layer.grads[k], gw[k]) <= 1e-12 for k in gw)
