"""The public layers as users get them (issue 16): the fast path by default (fast=False selects the reference),
outputs a caller receives never overwritten by a later call, and inference without gradients (no_grad(): no
backward cache; the same outputs as the forward that keeps one; backward after it is a clear error)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gru_xp
from gru_xp.backend import to_host
from gru_xp.model import Forecaster
from gru_xp.nn.optim import Adam
from gru_xp.nn.recurrent import build_recurrent
from gru_xp.runs import predict_scaled

CELLS = {  # name -> (class, constructor options)
    "gru": (gru_xp.GRU, {}),
    "gru_reset_before": (gru_xp.GRU, {"reset_after": False}),
    "lstm": (gru_xp.LSTM, {}),
    "rnn_tanh": (gru_xp.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gru_xp.RNN, {"nonlinearity": "relu"}),
}
CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, dropout=0.3)]


def _make(cell, I, H, **kw):
    cls, opts = CELLS[cell]
    return cls(I, H, **kw, **opts)


def _parts(s):
    return list(s) if isinstance(s, tuple) else [s]


def _host(a):
    return np.array(to_host(a), copy=True)


def _problem(layer, T, B, seed):
    rng = np.random.default_rng(seed)
    D, L, H = layer.num_directions, layer.num_layers, layer.hidden_size
    n = layer.cell.STATES
    s = [rng.standard_normal((L * D, B, H)) for _ in range(n)]
    ds = [rng.standard_normal((L * D, B, H)) for _ in range(n)]
    return (rng.standard_normal((T, B, layer.input_size)), s[0] if n == 1 else tuple(s),
            rng.standard_normal((T, B, D * H)), ds[0] if n == 1 else tuple(ds))


@pytest.mark.parametrize("cell", list(CELLS))
def test_public_layers_run_the_fast_path_by_default(cell):
    layer = _make(cell, 2, 3)
    assert layer.fast is True and layer.reuse_buffers is False
    assert layer.fast_cell() is not None and layer.fast_cell().ref is layer.cell
    ref = _make(cell, 2, 3, fast=False)
    assert ref.fast is False and ref.fast_cell() is None
    name = cell.split("_")[0]
    assert build_recurrent(name, 2, 3).fast_cell() is not None
    assert build_recurrent(name, 2, 3, fast=False).fast_cell() is None
    m = Forecaster(name, 2, 3)
    assert m.rnn.fast and m.rnn.reuse_buffers and m.rnn.fast_cell() is not None  # training reuses its buffers
    assert Forecaster(name, 2, 3, fast=False).rnn.fast_cell() is None


@pytest.mark.parametrize("cfg", CONFIGS, ids=["single", "stacked_bi_dropout"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_outputs_a_caller_holds_are_not_overwritten_by_the_next_call(cell, cfg, fast):
    """y, the final states, dx and dstate0 of one forward/backward stay as they were through a second
    forward/backward (other inputs, same shapes); the parameter grads accumulate (g1 + g2), never replaced."""
    T, B, I, H = 6, 4, 3, 5
    layer = _make(cell, I, H, dtype="float64", seed=2, fast=fast, **cfg)
    rng_state = layer.rng.bit_generator.state  # the same dropout masks for the second pair of calls below
    held, copies, grads = [], [], []
    for seed in (0, 1):
        x, s0, dy, ds = _problem(layer, T, B, seed)
        layer.zero_grad()
        y, sn = layer.forward(x, s0)
        dx, ds0 = layer.backward(dy, ds)
        out = [y, *_parts(sn), dx, *_parts(ds0)]
        held.append(out)
        copies.append([_host(a) for a in out])
        grads.append({k: _host(v) for k, v in layer.grads.items()})
    for a, c in zip(held[0], copies[0]):
        np.testing.assert_array_equal(_host(a), c)
    assert not np.array_equal(copies[0][0], copies[1][0])  # the second call did compute something else
    # the same two calls without zero_grad in between: the grads are the sum
    layer.zero_grad()
    layer.rng.bit_generator.state = rng_state
    for seed in (0, 1):
        x, s0, dy, ds = _problem(layer, T, B, seed)
        layer.forward(x, s0)
        layer.backward(dy, ds)
    for k, v in layer.grads.items():
        np.testing.assert_allclose(_host(v), grads[0][k] + grads[1][k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["single", "stacked_bi_dropout"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_no_grad_forward_equals_the_forward_that_keeps_a_cache(cell, cfg, fast, dtype):
    """Eval mode (no dropout): the same y and final states, bit for bit, and no cache kept."""
    layer = _make(cell, 3, 5, dtype=dtype, seed=4, fast=fast, **cfg).eval()
    for T, B in ((7, 4), (1, 1), (7, 4)):
        x, s0, _, _ = _problem(layer, T, B, seed=T)
        y, sn = layer.forward(x, s0)
        want = [_host(a) for a in [y, *_parts(sn)]]
        assert layer.caches
        with layer.no_grad():
            y2, sn2 = layer.forward(x, s0)
            assert layer.grad_enabled is False
        assert layer.grad_enabled is True and layer.caches == []
        for a, b in zip([y2, *_parts(sn2)], want):
            np.testing.assert_array_equal(_host(a), b)


@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_after_a_no_grad_forward_is_a_clear_error(cell):
    layer = _make(cell, 2, 3, dtype="float64")
    x, s0, dy, ds = _problem(layer, 4, 2, seed=0)
    with layer.no_grad():
        layer.forward(x, s0)
    with pytest.raises(RuntimeError, match=r"no_grad\(\).*no backward cache"):
        layer.backward(dy, ds)
    layer.forward(x, s0)  # a forward with gradients again: backward works
    dx, _ = layer.backward(dy, ds)
    assert np.all(np.isfinite(_host(dx)))


def test_no_grad_restores_the_switch_after_an_error():
    layer = gru_xp.GRU(2, 3)
    with pytest.raises(ValueError):
        with layer.no_grad():
            raise ValueError("inside")
    assert layer.grad_enabled is True


@pytest.mark.parametrize("cell", ["gru", "gru_reset_before", "lstm", "rnn_tanh"])
def test_no_grad_forward_keeps_no_cache_in_memory(cell):
    """tracemalloc peak of a new layer's first forward (fast path, float64; everything it allocates, workspaces
    included): without gradients about the output itself (the states, stored beside the input in the recurrent
    GEMM's operands) plus one step's buffers and a chunk of input projection; with gradients the gate cache on top."""
    T, B, I, H = 200, 32, 1, 64  # large enough that the GRU's chunk of input projection is small beside y
    x = np.random.default_rng(0).standard_normal((T, B, I))
    out_bytes = T * B * H * 8
    peaks = {}
    for grad in (True, False):
        layer = _make(cell, I, H, dtype="float64")
        tracemalloc.start()
        if grad:
            y, _ = layer.forward(x)
        else:
            with layer.no_grad():
                y, _ = layer.forward(x)
        peaks[grad] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del y
    assert peaks[False] <= 1.3 * out_bytes, peaks
    if cell != "rnn_tanh":  # the RNN's cache is its states: nothing more to drop
        assert peaks[True] >= 1.8 * out_bytes, peaks


@pytest.mark.parametrize("cell,cfg", [("gru", {}), ("lstm", dict(num_layers=2, bidirectional=True)),
                                      ("rnn", {})])
def test_forecaster_inference_is_cache_free_and_training_unchanged(cell, cfg):
    """predict_scaled and Forecaster.loss run without a cache and give the eval forward's values; validation
    losses between training steps (reused workspaces, other shapes) leave the training bit-identical."""
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((7, 5, 2)), rng.standard_normal((5, 3))) for _ in range(3)]
    xv, yv = rng.standard_normal((7, 9, 2)), rng.standard_normal((9, 3))
    final = []
    for validate in (False, True):
        m = Forecaster(cell, 2, 6, 3, dtype="float64", seed=1, **cfg)
        opt = Adam(1e-2)
        for x, y in batches:
            m.train()
            m.loss_and_grads(x, y)
            opt.step(m.backend.xp, m.params, m.grads)
            if validate:
                m.eval()
                loss = float(to_host(m.loss(xv, yv)))
                assert m.rnn.caches == [] and np.isfinite(loss)
        final.append({k: _host(v) for k, v in m.params.items()})
    for k in final[0]:
        np.testing.assert_array_equal(final[1][k], final[0][k])
    m.eval()
    want = _host(m.forward(xv))
    got = predict_scaled(m, np.transpose(xv, (1, 0, 2)))
    assert m.rnn.caches == []
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_layer_through_changing_shapes_equals_the_reference(cell):
    """One public layer (its workspaces, the GRU's internal cache among them, reused from call to call) through
    forward + backward at changing (T, B): each call equals the reference layer's, to rounding."""
    fast_layer, ref_layer = (_make(cell, 3, 5, dtype="float64", seed=1, fast=f) for f in (True, False))
    for T, B in ((6, 4), (6, 4), (2, 7), (9, 1), (6, 4)):
        x, s0, dy, ds = _problem(fast_layer, T, B, seed=T * B)
        outs = []
        for layer in (fast_layer, ref_layer):
            layer.zero_grad()
            y, sn = layer.forward(x, s0)
            dx, ds0 = layer.backward(dy, ds)
            outs.append([_host(a) for a in (y, *_parts(sn), dx, *_parts(ds0), *layer.grads.values())])
        for a, b in zip(*outs):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_flush_subnormals_zeroes_only_what_is_below_the_threshold():
    from gru_xp.backend import resolve
    from gru_xp.nn.fast import Workspace
    from gru_xp.nn.fast._common import flush_subnormals, flush_threshold, ops_for

    for dtype in ("float32", "float64"):
        be = resolve("cpu", dtype)
        thr = flush_threshold(be.xp, be.np_dtype)
        fi = np.finfo(be.np_dtype)
        assert thr == float(fi.smallest_normal) / float(fi.eps)
        a = np.array([1.0, -3e-3, thr * 2, -thr * 2, thr / 2, -thr / 2, fi.smallest_normal / 4, 0.0], dtype=dtype)
        want = np.where(np.abs(a) < thr, 0.0, a).astype(dtype)
        flush_subnormals(be.xp, ops_for(be.xp), Workspace(), a)
        np.testing.assert_array_equal(a, want)
        assert a[2] == thr * 2 and a[4] == 0.0


@pytest.mark.parametrize("path", ["portable", "kernels"])
@pytest.mark.parametrize("cell", ["gru", "gru_reset_before", "lstm", "rnn_tanh"])
def test_long_sequences_flush_vanishing_grads_and_agree_with_the_reference(cell, path, monkeypatch):
    """T 300 from the last state only: the carried grad vanishes below the flush threshold long before step 0 (the
    reference keeps its tiny and subnormal crumbs, the fast path zeroes them, which keeps the CPU off its slow path:
    the portable loops once a chunk, 8 steps here, the CPU kernels every step); every output and grad agrees with
    the reference within float32 rounding."""
    from gru_xp.nn.fast import _common, _cpu

    T, B, I, H = 300, 3, 2, 8
    if path == "portable":
        monkeypatch.setattr(_common, "CHUNK_ELEMS", 8 * B * H)
        monkeypatch.setitem(_cpu.STATE, "k", None)
    elif _cpu.kernels() is None:
        pytest.skip("numba not installed")
    else:
        monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    outs = []
    for fast in (False, True):
        layer = _make(cell, I, H, dtype="float32", seed=3, fast=fast)
        for v in layer.params.values():
            v *= 0.3  # small weights: a quickly vanishing gradient
        y, sn = layer.forward(x)
        ds = tuple(np.ones_like(s) for s in _parts(sn))
        dx, ds0 = layer.backward(None, ds if len(ds) > 1 else ds[0])
        outs.append([_host(a) for a in (y, dx, *_parts(ds0), *layer.grads.values())])
    ref, got = outs
    ref_mag, got_mag = np.abs(ref[1]).max(axis=(1, 2)), np.abs(got[1]).max(axis=(1, 2))  # (T,) max |dx_t|
    flushed = (ref_mag > 0) & (ref_mag < 1e-30) & (got_mag == 0)
    assert flushed.any(), "the problem must reach the flush (reference tiny but nonzero where the fast path is 0)"
    for a, b in zip(got, ref):  # float32 tolerance relative to each array's scale (as tests/nn/test_fast.py)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bi", [False, True])
def test_no_grad_with_lengths_equals_the_forward_that_keeps_a_cache(cell, bi):
    """Variable lengths (issue 17) under no_grad(): the same y and final states as the forward with a cache (the
    LSTM's cells keep theirs for c at each last step; the wrapper drops it), and no cache kept."""
    layer = _make(cell, 3, 5, dtype="float64", seed=4, num_layers=2, bidirectional=bi).eval()
    x, s0, _, _ = _problem(layer, 7, 4, seed=1)
    lengths = np.array([7, 3, 1, 5])
    y, sn = layer.forward(x, s0, lengths=lengths)
    want = [_host(a) for a in [y, *_parts(sn)]]
    with layer.no_grad():
        y2, sn2 = layer.forward(x, s0, lengths=lengths)
    assert layer.caches == []
    for a, b in zip([y2, *_parts(sn2)], want):
        np.testing.assert_array_equal(_host(a), b)
