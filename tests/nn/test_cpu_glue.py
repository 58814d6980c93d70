"""The small CPU kernels around the whole-sequence loops and in Adam (nn/fast/_cpu_glue.py, numba, optional) against
the NumPy code they replace: bit for bit, float32 and float64, random weights, biases and grads; and that a public
layer call and an Adam step really run them. Skipped where numba is not installed."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

import gru_xp
from gru_xp.backend import resolve
from gru_xp.nn._cell import CellParams
from gru_xp.nn.fast import Workspace, _common, _cpu, counted_cpu_kernels, gru as fgru, lstm as flstm, portable_loops
from gru_xp.nn.optim import Adam

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")
DTYPES = ("float32", "float64")
SHAPES = ((5, 1), (7, 3), (16, 8))  # (H, I)


@pytest.fixture
def kern(monkeypatch):
    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)
    k = _cpu.kernels()
    assert k is not None
    return k


def _params(rng, H, I, dt, scale=0.7):
    return CellParams(*(rng.uniform(-scale, scale, s).astype(dt) for s in ((3 * H, I), (3 * H, H), (3 * H,),
                                                                            (3 * H,))))


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b), f"max |diff| {np.max(np.abs(a.astype(np.float64) - b)):.3g}"


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("H,I", SHAPES)
def test_fold_weights_bit_for_bit(kern, dt, H, I):
    xp, ops = resolve("cpu").xp, _common.ops_for(resolve("cpu").xp)
    p = _params(np.random.default_rng(H * 10 + I), H, I, dt)
    dtype = np.dtype(dt)
    half = ops.const(0.5, dtype, "cpu")
    ws_ref, ws_k = Workspace(), Workspace()
    ref = fgru._weights_numpy(xp, ops, ws_ref, p, I, True, half, dtype, "cpu")  # the NumPy calls
    got = fgru._weights_numpy(xp, ops, ws_k, p, I, True, half, dtype, "cpu", kern)  # gru_fold_after
    assert ref[1] is None and got[1] is None
    _same(got[0], ref[0])
    _same(got[2], ref[2])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("T,B,I,H", ((1, 64, 1, 16), (4, 40, 3, 30), (3, 33, 8, 32)))
def test_fill_operands_bit_for_bit(kern, dt, T, B, I, H):
    be = resolve("cpu", dt)
    xp, ops = be.xp, _common.ops_for(be.xp)
    rng = np.random.default_rng(T + B)
    x = rng.standard_normal((T, B, I)).astype(dt)
    x_strided = rng.standard_normal((T, 2 * B, I)).astype(dt)[:, ::2, :]  # a view, not contiguous
    h0 = rng.standard_normal((H, B)).astype(dt).T  # (B, H), Fortran-ordered
    dtype = np.dtype(dt)
    for xx in (x, x_strided):
        with portable_loops():
            ref = _common.recurrent_operands(xp, ops, Workspace(), False, xx, h0, H, dtype, "cpu")
        calls = {}
        with counted_cpu_kernels() as calls:
            got = _common.recurrent_operands(xp, ops, Workspace(), False, xx, h0, H, dtype, "cpu")
        assert calls.get("fill_operands") == 1
        _same(got[0, :H], ref[0, :H])  # h0^T; rows :H of later steps are the forward's to write
        _same(got[:, H:], ref[:, H:])  # [x[t]; 1], and [0; 1] after the last step


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("H,I", SHAPES)
def test_backward_prep_and_unfold_bit_for_bit(kern, dt, H, I):
    rng = np.random.default_rng(7 * H + I)
    p, B = _params(rng, H, I, dt), 12
    n_cols = H + I + 1
    w_hh_t, w_ih_t = np.full((H, 3 * H), np.nan, dt), np.full((I, 3 * H), np.nan, dt)  # a workspace's stale contents
    kern.transpose_rotated(p.w_hh, w_hh_t, 2 * H)  # the one-call backward's rows n, r, z
    kern.transpose_rotated(p.w_ih, w_ih_t, 0)
    _same(w_hh_t, np.concatenate([p.w_hh[2 * H:].T, p.w_hh[:2 * H].T], axis=1))
    _same(w_ih_t, np.ascontiguousarray(p.w_ih.T))

    # the grads: NumPy's _add_recurrent_grads and the n rows' adds against gru_unfold_after, onto random grads
    dw, dw_in = rng.standard_normal((3 * H, n_cols)).astype(dt), rng.standard_normal((H, I + 1)).astype(dt)
    g0 = _params(rng, H, I, dt, scale=3.0)
    ref = CellParams(*(a.copy() for a in (g0.w_ih, g0.w_hh, g0.b_ih, g0.b_hh)))
    c = SimpleNamespace(cand=np.empty((1, H, B), dt), x_ones=np.empty((1, I + 1, B), dt), reset_after=True,
                        x_in_operands=True)
    ops = _common.ops_for(resolve("cpu").xp)
    fgru._add_recurrent_grads(ops, ref, c, dw, None)
    ref.w_ih[2 * H:] += dw_in[:, :I]
    ref.b_ih[2 * H:] += dw_in[:, I]
    got = CellParams(*(a.copy() for a in (g0.w_ih, g0.w_hh, g0.b_ih, g0.b_hh)))
    kern.gru_unfold_after(got.w_ih, got.w_hh, got.b_ih, got.b_hh, dw, dw_in)
    for a, b in zip((got.w_ih, got.w_hh, got.b_ih, got.b_hh), (ref.w_ih, ref.w_hh, ref.b_ih, ref.b_hh)):
        _same(a, b)

    a, b = rng.standard_normal((H, B)).astype(dt), rng.standard_normal((H, B)).astype(dt)
    out = np.empty((B, H), dt)
    kern.add_transposed(a, b, out)
    _same(out, (a + b).T)


@pytest.mark.parametrize("G,K", [(3, 1), (15, 17), (16, 16), (48, 33), (210, 70), (768, 256), (1024, 8)])
def test_transpose_rotated_in_tiles_is_the_rotated_transpose(kern, G, K):
    """transpose_rotated's 16 x 16 tiles, their edges (sizes below, at and past a tile) and the rotation's two
    ranges, at every kind of shift, against NumPy's np.roll(w, -shift, axis=0).T."""
    w = np.random.default_rng(G + K).standard_normal((G, K)).astype(np.float32)
    for shift in sorted({0, 1, G // 3, G // 2, G - 1}):
        got = np.full((K, G), np.nan, np.float32)
        kern.transpose_rotated(w, got, shift)
        _same(got, np.ascontiguousarray(np.roll(w, -shift, axis=0).T))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("H,I", SHAPES)
def test_lstm_rotated_fold_transpose_unfold_bit_for_bit(kern, dt, H, I):
    """The LSTM's gate rows [o | i | f | g] = torch's rows rotated by 3H: fold (with o, i, f halved), the transposed
    weights and the grads' unfold against _common's block-by-block NumPy calls."""
    rng = np.random.default_rng(5 * H + I)
    G, n_cols = 4 * H, H + I + 1
    p = CellParams(*(rng.uniform(-0.7, 0.7, s).astype(dt) for s in ((G, I), (G, H), (G,), (G,))))
    ops, blocks = _common.ops_for(resolve("cpu").xp), flstm._lstm_blocks(H)
    ref = _common.fold_weights(ops, np.empty((G, n_cols), dt), p, blocks, H, I)
    ref[:3 * H] *= np.dtype(dt).type(0.5)
    got = np.full((G, n_cols), np.nan, dt)
    kern.fold_rotated(p.w_ih, p.w_hh, p.b_ih, p.b_hh, got, 3 * H, 3 * H, np.dtype(dt).type(0.5))
    _same(got, ref)
    for w in (p.w_hh, p.w_ih):
        ref_t = np.empty((w.shape[1], G), dt)
        for dst, src in blocks:
            ref_t[:, dst] = w[src].T
        got_t = np.full_like(ref_t, np.nan)
        kern.transpose_rotated(w, got_t, 3 * H)
        _same(got_t, ref_t)
    dw = rng.standard_normal((G, n_cols)).astype(dt)
    g0 = [rng.standard_normal(a.shape).astype(dt) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)]
    ref_g, got_g = CellParams(*(a.copy() for a in g0)), CellParams(*(a.copy() for a in g0))
    _common.unfold_grads(ops, ref_g, dw, blocks, H, I)
    kern.unfold_rotated(got_g.w_ih, got_g.w_hh, got_g.b_ih, got_g.b_hh, dw, 3 * H)
    for a, b in zip((got_g.w_ih, got_g.w_hh, got_g.b_ih, got_g.b_hh), (ref_g.w_ih, ref_g.w_hh, ref_g.b_ih, ref_g.b_hh)):
        _same(a, b)


def test_layer_call_runs_them(monkeypatch):
    """A float32 public GRU layer's forward + backward (whole-sequence loops) runs each glue kernel once, and its
    results are those of the same layer with the glue's NumPy twins (portable loops differ only in the loops)."""
    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)
    layer = gru_xp.GRU(3, 16, device="cpu", dtype="float32", seed=2)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((6, 20, 3)).astype(np.float32), rng.standard_normal((6, 20, 16)).astype(np.float32)
    with counted_cpu_kernels() as calls:
        layer.forward(x)
        layer.backward(dy)
    if calls.get("gru_bwd_seq_float32") is None:
        pytest.skip("no whole-sequence backward here (NumPy without its OpenBLAS)")
    for name, n in (("gru_fold_after", 1), ("fill_operands", 1), ("transpose_rotated", 2), ("gru_unfold_after", 1),
                    ("add_transposed", 1)):
        assert calls.get(name) == n, (name, calls)
    lstm = gru_xp.LSTM(3, 16, device="cpu", dtype="float32", seed=2)
    with counted_cpu_kernels() as calls:
        lstm.forward(x)
        lstm.backward(dy)
    if calls.get("lstm_bwd_seq_float32"):
        assert [calls.get(n) for n in ("fold_rotated", "fill_operands", "transpose_rotated", "unfold_rotated")] == \
            [1, 1, 2, 1], calls


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("weight_decay", (0.0, 0.05))
def test_adam_fused_bit_for_bit(kern, dt, weight_decay):
    xp = resolve("cpu").xp
    rng = np.random.default_rng(3)
    shapes = {"w": (60, 20), "b": (60,), "v": (7, 3, 2)}
    p_fused = {k: rng.standard_normal(s).astype(dt) for k, s in shapes.items()}
    p_ref = {k: a.copy() for k, a in p_fused.items()}
    o_fused, o_ref = Adam(3e-2, weight_decay=weight_decay), Adam(3e-2, weight_decay=weight_decay)
    calls = {}
    for _ in range(4):
        g = {k: (rng.standard_normal(s) * rng.choice([1e-6, 1.0, 50.0])).astype(dt) for k, s in shapes.items()}
        with counted_cpu_kernels() as calls:
            o_fused.step(xp, p_fused, g)
        assert calls.get("adam_update") == len(shapes)
        with portable_loops():
            o_ref.step(xp, p_ref, g)
    for k in shapes:
        _same(p_fused[k], p_ref[k])
        for a, b in zip(o_fused.state[k], o_ref.state[k]):
            _same(a, b)


def test_adam_fused_leaves_strided_params_to_numpy(kern):
    """A parameter that is a strided view is updated by the NumPy operations (same values), not the kernel."""
    xp = resolve("cpu").xp
    rng = np.random.default_rng(4)
    base = rng.standard_normal((40, 40)).astype(np.float32)
    p_fused, p_ref = {"w": base.copy()[:, ::2]}, {"w": base.copy()[:, ::2]}
    g = {"w": rng.standard_normal((40, 20)).astype(np.float32)}
    with counted_cpu_kernels() as calls:
        Adam(1e-2).step(xp, p_fused, g)
    assert "adam_update" not in calls
    with portable_loops():
        Adam(1e-2).step(xp, p_ref, g)
    _same(p_fused["w"], p_ref["w"])
