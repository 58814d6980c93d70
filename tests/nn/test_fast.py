"""The fast paths (nn/fast/, _cuda.py) against the reference paths (gru.py, lstm.py, rnn.py, also through the same
wrapper): outputs, states (LSTM c too), dx, dstate0 and every parameter gradient; float64 to ~1e-12, float32 within
dtype tolerance; both GRU conventions, both RNN nonlinearities; random biases; tbptt; dy=None; stacked and
bidirectional (with dropout); T=1 and B=1; several chunks (tiny chunk constants) and reused workspaces. The CuPy
branches run on a GPU here (marker cuda) and, without one, with their kernel bodies compiled on the CPU in
test_kernels.py. No timing here: speed is measured by `gru_xp.bench` only."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import gru_xp
from gru_xp.nn import fast
from gru_xp.nn.fast import _common, gru as fgru, lstm as flstm, rnn as frnn
from gru_xp.nn import gru as gru_ref
from gru_xp.nn._cell import CellParams
from gru_xp.backend import cuda_available, resolve, to_host
from gru_xp.model import Forecaster
from gru_xp.nn.optim import Adam

SHAPES = [  # T, B, I, H
    (1, 1, 1, 1),
    (1, 3, 2, 4),
    (5, 1, 3, 2),
    (7, 4, 3, 5),
    (12, 6, 1, 9),
]
TOL = {"float64": 1e-12, "float32": 2e-5}


def _close(a, b, dtype, what=""):
    a, b = to_host(a).astype(np.float64), to_host(b).astype(np.float64)
    assert a.shape == b.shape, what
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    err = float(np.max(np.abs(a - b))) / scale if b.size else 0.0
    assert err <= TOL[dtype], f"{what}: {err:.2e} > {TOL[dtype]:.0e}"


def _cell_problem(be, T, B, I, H, seed=0):
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(H)
    p = CellParams(*(be.asarray(rng.uniform(-bound, bound, s)) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))))
    x = be.asarray(rng.standard_normal((T, B, I)))
    h0 = be.asarray(rng.standard_normal((B, H)) * 0.5)
    dy = be.asarray(rng.standard_normal((T, B, H)))
    dhT = be.asarray(rng.standard_normal((B, H)))
    return p, x, h0, dy, dhT


def _zeros_like(be, p: CellParams) -> CellParams:
    return CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))


def _cell_run(mod_fwd, mod_bwd, be, p, x, h0, dy, dhT, reset_after, tbptt=0, **kw):
    xp = be.xp
    y, (hT,), cache = mod_fwd(xp, p, x, (h0,), reset_after=reset_after, **kw)
    y, hT = xp.asarray(y, copy=True), xp.asarray(hT, copy=True)
    g = _zeros_like(be, p)
    dx, (dh0,) = mod_bwd(xp, p, cache, dy, (dhT,), g, tbptt=tbptt, **kw)
    return [y, hT, xp.asarray(dx, copy=True), dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh], cache


NAMES = ["y", "h_T", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_gru_cell_fast_equals_reference(T, B, I, H, reset_after, dtype):
    be = resolve("cpu", dtype)
    p, x, h0, dy, dhT = _cell_problem(be, T, B, I, H)
    ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, be, p, x, h0, dy, dhT, reset_after)
    got, cache = _cell_run(fgru.gru_forward, fgru.gru_backward, be, p, x, h0, dy, dhT, reset_after)
    for name, a, b in zip(NAMES, got, ref):
        _close(a, b, dtype, name)
    assert isinstance(cache, gru_ref.GRUCache)  # typed dataclass, stacked (T, B, .) views
    assert tuple(cache.h.shape) == (T + 1, B, H) and tuple(cache.r.shape) == (T, B, H)
    assert tuple(cache.z.shape) == tuple(cache.n.shape) == tuple(cache.hn.shape) == (T, B, H)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("tbptt", [1, 3])
def test_gru_cell_fast_tbptt_and_no_dy(reset_after, tbptt):
    be = resolve("cpu", "float64")
    T, B, I, H = 8, 3, 2, 4
    p, x, h0, dy, dhT = _cell_problem(be, T, B, I, H, seed=3)
    ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, be, p, x, h0, dy, dhT, reset_after, tbptt=tbptt)
    got, _ = _cell_run(fgru.gru_forward, fgru.gru_backward, be, p, x, h0, dy, dhT, reset_after, tbptt=tbptt)
    for name, a, b in zip(NAMES, got, ref):
        _close(a, b, "float64", name)
    # dy=None means zeros
    zeros = be.zeros((T, B, H))
    ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, be, p, x, h0, zeros, dhT, reset_after)
    got, _ = _cell_run(fgru.gru_forward, fgru.gru_backward, be, p, x, h0, None, dhT, reset_after)
    for name, a, b in zip(NAMES, got, ref):
        _close(a, b, "float64", name)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_fast_cache_feeds_the_reference_backward(reset_after):
    be = resolve("cpu", "float64")
    p, x, h0, dy, dhT = _cell_problem(be, 6, 3, 2, 5, seed=7)
    ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, be, p, x, h0, dy, dhT, reset_after)
    got, _ = _cell_run(fgru.gru_forward, gru_ref.backward, be, p, x, h0, dy, dhT, reset_after)
    for name, a, b in zip(NAMES, got, ref):
        _close(a, b, "float64", name)


def test_workspaces_reused_across_calls_and_shapes():
    """One workspace through calls of changing shapes, reuse on: each call equals a fresh reference call."""
    be = resolve("cpu", "float64")
    ws = fast.Workspace()
    shapes = [(5, 3, 2, 4), (5, 3, 2, 4), (2, 6, 2, 4), (5, 3, 2, 4), (9, 1, 3, 6), (9, 1, 3, 6), (9, 1, 3, 6)]
    for i, (T, B, I, H) in enumerate(shapes):
        reset_after = i != 5  # the cached step views must follow the convention too
        p, x, h0, dy, dhT = _cell_problem(be, T, B, I, H, seed=i)
        ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, be, p, x, h0, dy, dhT, reset_after)
        got, _ = _cell_run(fgru.gru_forward, fgru.gru_backward, be, p, x, h0, dy, dhT, reset_after, ws=ws, reuse=True)
        for name, a, b in zip(NAMES, got, ref):
            _close(a, b, "float64", name)
    assert ws.nbytes() > 0


def _layer_run(layer, x, s0, dy, ds):
    layer.zero_grad()
    y, sn = layer.forward(x, s0)
    y, sn = np.array(to_host(y)), np.array(to_host(sn))
    dx, ds0 = layer.backward(dy, ds)
    return [y, sn, np.array(to_host(dx)), np.array(to_host(ds0))] + [np.array(to_host(layer.grads[k]))
                                                                      for k in sorted(layer.grads)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("L,bi", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("reuse", [False, True])
def test_wrapper_fast_equals_reference_stacked_bidirectional(L, bi, reset_after, dtype, reuse):
    T, B, I, H = 6, 3, 2, 5
    D = 2 if bi else 1
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, I))
    s0 = rng.standard_normal((L * D, B, H))
    dy = rng.standard_normal((T, B, D * H))
    ds = rng.standard_normal((L * D, B, H))
    runs = []
    for fast_on in (False, True):
        layer = gru_xp.GRU(I, H, num_layers=L, bidirectional=bi, reset_after=reset_after, dtype=dtype, seed=5)
        layer.fast, layer.reuse_buffers = fast_on, reuse
        runs.append(_layer_run(layer, x, s0, dy, ds))
        runs.append(_layer_run(layer, x, None, None, None))  # zeros states, dy=None
        if fast_on:
            assert layer.fast_cell() is not None
            assert isinstance(layer.caches[0], fgru.FastGRUCache)
        else:
            assert layer.fast_cell() is None
    ref, got = runs[:2], runs[2:]
    for r, g in zip(ref, got):
        for i, (a, b) in enumerate(zip(g, r)):
            _close(a, b, dtype, f"output {i}")


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_wrapper_fast_with_dropout_equals_reference(reset_after):
    T, B, I, H, L = 5, 4, 3, 4, 3
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))
    runs = []
    for fast_on in (False, True):
        layer = gru_xp.GRU(I, H, num_layers=L, bidirectional=True, dropout=0.3, reset_after=reset_after,
                           dtype="float64", seed=9)  # same seed: same masks
        layer.fast = fast_on
        runs.append(_layer_run(layer, x, None, dy, None))
    for i, (a, b) in enumerate(zip(runs[1], runs[0])):
        _close(a, b, "float64", f"output {i}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=2, bidirectional=True), dict(reset_after=False)])
def test_forecaster_training_steps_fast_equal_reference(dtype, cfg):
    """Several Adam steps (workspaces reused, shapes changing in between): same losses and parameters."""
    _training_steps_fast_equal_reference("gru", cfg, dtype)


def _training_steps_fast_equal_reference(cell, cfg, dtype):
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((T, B, 2)), rng.standard_normal((B, 3))) for T, B in
               [(7, 5), (7, 5), (3, 2), (7, 5), (1, 1)]]
    results = []
    for fast_on in (False, True):
        m = Forecaster(cell, 2, 6, 3, dtype=dtype, seed=1, fast=fast_on, **cfg)
        assert (m.rnn.fast_cell() is not None) == fast_on
        opt = Adam(1e-2)
        losses = []
        for x, y in batches:
            losses.append(float(to_host(m.loss_and_grads(x, y))))
            opt.step(m.backend.xp, m.params, m.grads)
        results.append((losses, {k: np.array(to_host(v)) for k, v in m.params.items()}))
    (l0, p0), (l1, p1) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-10 if dtype == "float64" else 1e-4)
    for k in p0:
        _close(p1[k], p0[k], dtype, k)


def test_fast_dispatch_only_where_out_is_supported():
    np_be = resolve("cpu", "float32")
    assert fast.supports_out(np_be.xp)
    assert fast.fast_cell_for(gru_ref, np_be.xp) is not None
    if importlib.util.find_spec("array_api_strict") is not None:
        st = resolve("strict", "float64")
        assert not fast.supports_out(st.xp)
        layer = gru_xp.GRU(2, 3, device="strict", dtype="float64")
        layer.fast = True
        assert layer.fast_cell() is None  # the reference runs there


def test_defaults_fast_layers_and_forecaster():
    layer = gru_xp.GRU(2, 3)
    assert layer.fast and not layer.reuse_buffers and layer.fast_cell() is not None  # see test_public_layers.py
    assert gru_xp.GRU(2, 3, fast=False).fast_cell() is None  # checks prove both paths explicitly
    m = Forecaster("gru", 2, 3)
    assert m.rnn.fast and m.rnn.reuse_buffers and m.rnn.fast_cell() is not None
    assert Forecaster("gru", 2, 3, fast=False).rnn.fast_cell() is None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_cuda_fused_kernels_equal_portable_path(T, B, I, H, reset_after, dtype):
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA: {why}")
    cpu, gpu = resolve("cpu", dtype), resolve("cuda", dtype)
    p, x, h0, dy, dhT = _cell_problem(cpu, T, B, I, H)
    gp = CellParams(*(gpu.asarray(a) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
    for dy_c, dy_g in ((dy, gpu.asarray(dy)), (cpu.zeros(dy.shape), None)):
        ref, _ = _cell_run(gru_ref.forward, gru_ref.backward, cpu, p, x, h0, dy_c, dhT, reset_after, tbptt=2)
        got, _ = _cell_run(fgru.gru_forward, fgru.gru_backward, gpu, gp, gpu.asarray(x), gpu.asarray(h0), dy_g,
                           gpu.asarray(dhT), reset_after, tbptt=2)
        for name, a, b in zip(NAMES, got, ref):
            _close(a, b, dtype, name)


@pytest.mark.cuda
def test_cuda_forecaster_step_equals_cpu():
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA: {why}")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 4, 2)), rng.standard_normal((4, 1))
    out = []
    for dev in ("cpu", "cuda"):
        m = Forecaster("gru", 2, 7, 1, device=dev, dtype="float64", seed=3, num_layers=2, bidirectional=True)
        loss = float(to_host(m.loss_and_grads(x, y)))
        out.append((loss, {k: np.array(to_host(v)) for k, v in m.grads.items()}))
    assert abs(out[0][0] - out[1][0]) < 1e-12
    for k in out[0][1]:
        _close(out[1][1][k], out[0][1][k], "float64", k)


# ---- LSTM and RNN fast paths ---------------------------------------------------------------------------------
from gru_xp.nn import lstm as lstm_ref  # noqa: E402
from gru_xp.nn import rnn as rnn_ref  # noqa: E402

CELLS = {  # name -> (reference module, fast forward, fast backward, cell options, layer class and kwargs)
    "lstm": (lstm_ref, flstm.lstm_forward, flstm.lstm_backward, {}),
    "rnn_tanh": (rnn_ref, frnn.rnn_forward, frnn.rnn_backward, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn_ref, frnn.rnn_forward, frnn.rnn_backward, {"nonlinearity": "relu"}),
}


def _any_problem(be, mod, T, B, I, H, seed=0):
    """Random weights AND biases, input, initial states, dy and dstate_T for any cell module."""
    rng = np.random.default_rng(seed)
    G = mod.GATES * H
    bound = 1.0 / np.sqrt(H)
    p = CellParams(*(be.asarray(rng.uniform(-bound, bound, s)) for s in ((G, I), (G, H), (G,), (G,))))
    x = be.asarray(rng.standard_normal((T, B, I)))
    s0 = tuple(be.asarray(rng.standard_normal((B, H)) * 0.5) for _ in range(mod.STATES))
    dy = be.asarray(rng.standard_normal((T, B, H)))
    dsT = tuple(be.asarray(rng.standard_normal((B, H))) for _ in range(mod.STATES))
    return p, x, s0, dy, dsT


def _any_run(fwd, bwd, be, p, x, s0, dy, dsT, tbptt=0, opts=None, **kw):
    xp = be.xp
    y, sT, cache = fwd(xp, p, x, s0, **(opts or {}), **kw)
    out = [xp.asarray(y, copy=True)] + [xp.asarray(s, copy=True) for s in sT]
    g = _zeros_like(be, p)
    dx, ds0 = bwd(xp, p, cache, dy, dsT, g, tbptt=tbptt, **kw)
    return out + [xp.asarray(dx, copy=True)] + list(ds0) + [g.w_ih, g.w_hh, g.b_ih, g.b_hh], cache


def _any_names(mod):
    st = ["h_T", "c_T"][: mod.STATES]
    return ["y"] + st + ["dx"] + [f"d{s[0]}0" for s in st] + ["dW_ih", "dW_hh", "db_ih", "db_hh"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_lstm_rnn_cell_fast_equals_reference(cell, T, B, I, H, dtype):
    mod, ffwd, fbwd, opts = CELLS[cell]
    be = resolve("cpu", dtype)
    p, x, s0, dy, dsT = _any_problem(be, mod, T, B, I, H)
    ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, dy, dsT, opts=opts)
    got, cache = _any_run(ffwd, fbwd, be, p, x, s0, dy, dsT, opts=opts)
    for name, a, b in zip(_any_names(mod), got, ref):
        _close(a, b, dtype, f"{cell} {name}")
    ref_cache_type = lstm_ref.LSTMCache if mod is lstm_ref else rnn_ref.RNNCache
    assert isinstance(cache, ref_cache_type)  # typed dataclass, stacked (T, B, .) views
    assert tuple(cache.h.shape) == (T + 1, B, H)
    if mod is lstm_ref:
        assert tuple(cache.c.shape) == (T + 1, B, H)
        for f in ("i", "f", "g", "o", "tc"):
            assert tuple(getattr(cache, f).shape) == (T, B, H)
            _close(getattr(cache, f), getattr(lstm_ref.forward(be.xp, p, x, s0)[2], f), dtype, f)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_cuda_lstm_rnn_fused_kernels_equal_portable_path(cell, T, B, I, H, dtype):
    """The LSTM and RNN fast paths on CuPy (fused kernels) against the reference on NumPy: with and without dy,
    truncated BPTT."""
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA: {why}")
    mod, ffwd, fbwd, opts = CELLS[cell]
    cpu, gpu = resolve("cpu", dtype), resolve("cuda", dtype)
    p, x, s0, dy, dsT = _any_problem(cpu, mod, T, B, I, H)
    gp = CellParams(*(gpu.asarray(a) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
    for dy_c, dy_g in ((dy, gpu.asarray(dy)), (cpu.zeros(dy.shape), None)):
        ref, _ = _any_run(mod.forward, mod.backward, cpu, p, x, s0, dy_c, dsT, tbptt=2, opts=opts)
        got, cache = _any_run(ffwd, fbwd, gpu, gp, gpu.asarray(x), tuple(gpu.asarray(s) for s in s0), dy_g,
                              tuple(gpu.asarray(d) for d in dsT), tbptt=2, opts=opts)
        assert type(cache).__name__.startswith("Fast")
        for name, a, b in zip(_any_names(mod), got, ref):
            _close(a, b, dtype, f"{cell} {name}")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("tbptt", [1, 3])
def test_lstm_rnn_cell_fast_tbptt_no_dy_no_dstate(cell, tbptt):
    mod, ffwd, fbwd, opts = CELLS[cell]
    be = resolve("cpu", "float64")
    T, B, I, H = 8, 3, 2, 4
    p, x, s0, dy, dsT = _any_problem(be, mod, T, B, I, H, seed=3)
    ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, dy, dsT, tbptt=tbptt, opts=opts)
    got, _ = _any_run(ffwd, fbwd, be, p, x, s0, dy, dsT, tbptt=tbptt, opts=opts)
    for name, a, b in zip(_any_names(mod), got, ref):
        _close(a, b, "float64", name)
    zeros = be.zeros((T, B, H))  # dy=None means zeros; dstate_T None / (None, ...) means zeros
    for ds in (None, tuple(None for _ in dsT), (dsT[0],) + (None,) * (len(dsT) - 1)):
        ref_ds = tuple(be.zeros((B, H)) if ds is None or d is None else d
                       for d in (ds if ds is not None else (None,) * len(dsT)))
        ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, zeros, ref_ds, opts=opts)
        got, _ = _any_run(ffwd, fbwd, be, p, x, s0, None, ds, opts=opts)
        for name, a, b in zip(_any_names(mod), got, ref):
            _close(a, b, "float64", name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_lstm_rnn_fast_cache_feeds_the_reference_backward(cell):
    mod, ffwd, _, opts = CELLS[cell]
    be = resolve("cpu", "float64")
    p, x, s0, dy, dsT = _any_problem(be, mod, 6, 3, 2, 5, seed=7)
    ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, dy, dsT, opts=opts)
    got, _ = _any_run(ffwd, mod.backward, be, p, x, s0, dy, dsT, opts=opts)
    for name, a, b in zip(_any_names(mod), got, ref):
        _close(a, b, "float64", name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_lstm_rnn_workspaces_reused_across_calls_and_shapes(cell):
    mod, ffwd, fbwd, opts = CELLS[cell]
    be = resolve("cpu", "float64")
    ws = fast.Workspace()
    for i, (T, B, I, H) in enumerate([(5, 3, 2, 4), (5, 3, 2, 4), (2, 6, 2, 4), (5, 3, 2, 4), (9, 1, 3, 6)]):
        p, x, s0, dy, dsT = _any_problem(be, mod, T, B, I, H, seed=i)
        ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, dy, dsT, opts=opts)
        got, _ = _any_run(ffwd, fbwd, be, p, x, s0, dy, dsT, opts=opts, ws=ws, reuse=True)
        for name, a, b in zip(_any_names(mod), got, ref):
            _close(a, b, "float64", name)
    assert ws.nbytes() > 0


def _layer_run_any(layer, x, s0, dy, ds, tbptt=0):
    layer.zero_grad()
    y, sn = layer.forward(x, s0)
    sn = sn if isinstance(sn, tuple) else (sn,)
    out = [np.array(to_host(y))] + [np.array(to_host(s)) for s in sn]
    dx, ds0 = layer.backward(dy, ds, tbptt=tbptt)
    ds0 = ds0 if isinstance(ds0, tuple) else (ds0,)
    return out + [np.array(to_host(dx))] + [np.array(to_host(d)) for d in ds0] + \
        [np.array(to_host(layer.grads[k])) for k in sorted(layer.grads)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("L,bi", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("reuse", [False, True])
def test_lstm_rnn_wrapper_fast_equals_reference_stacked_bidirectional(cell, L, bi, dtype, reuse):
    T, B, I, H = 6, 3, 2, 5
    D = 2 if bi else 1
    cls, kw = (gru_xp.LSTM, {}) if cell == "lstm" else (gru_xp.RNN, {"nonlinearity": cell[4:]})
    n_states = 2 if cell == "lstm" else 1
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, I))
    s0 = tuple(rng.standard_normal((L * D, B, H)) for _ in range(n_states))
    dy = rng.standard_normal((T, B, D * H))
    ds = tuple(rng.standard_normal((L * D, B, H)) for _ in range(n_states))
    s0, ds = (s0, ds) if n_states == 2 else (s0[0], ds[0])
    runs = []
    for fast_on in (False, True):
        layer = cls(I, H, num_layers=L, bidirectional=bi, dropout=0.2, dtype=dtype, seed=5, **kw)
        for v in layer.params.values():  # random biases too (the default init already is), larger weights
            v *= 1.5
        layer.fast, layer.reuse_buffers = fast_on, reuse
        runs.append(_layer_run_any(layer, x, s0, dy, ds))
        runs.append(_layer_run_any(layer, x, None, None, None))  # zeros states, dy=None
        runs.append(_layer_run_any(layer, x, s0, dy, ds, tbptt=2))
        if fast_on:
            fc = layer.fast_cell()
            assert fc is not None and fc.ref is layer.cell
            assert isinstance(layer.caches[0], flstm.FastLSTMCache if cell == "lstm" else frnn.FastRNNCache)
        else:
            assert layer.fast_cell() is None
    ref, got = runs[:3], runs[3:]
    for r, g in zip(ref, got):
        for i, (a, b) in enumerate(zip(g, r)):
            _close(a, b, dtype, f"output {i}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell,cfg", [("lstm", {}), ("lstm", dict(num_layers=2, bidirectional=True)),
                                      ("rnn", {}), ("rnn", dict(nonlinearity="relu", num_layers=2))])
def test_lstm_rnn_forecaster_training_steps_fast_equal_reference(cell, cfg, dtype):
    _training_steps_fast_equal_reference(cell, cfg, dtype)


def test_ops_resolve_the_wrapped_library_functions():
    """Ops takes multiply/matmul/... from the library the array-api-compat namespace wraps (no wrapper layer);
    same values as the namespace's own functions."""
    xp = resolve("cpu", "float64").xp
    ops = _common.Ops(xp)
    assert ops.matmul is np.matmul and ops.mul is np.multiply and ops.sign is np.sign
    a, b = np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(3, 2)
    out = np.empty((2, 2))
    assert ops.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, xp.matmul(a, b))


def test_ops_refuse_a_namespace_without_out():
    """Namespaces without out= never reach the fast path (the wrapper runs the reference cells there)."""
    import array_api_strict

    with pytest.raises(ValueError, match="out="):
        _common.Ops(array_api_strict)


@pytest.mark.parametrize("cell", ["gru_after", "gru_before", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("tiny", [False, True], ids=["default_chunks", "tiny_chunks"])
@pytest.mark.parametrize("reuse", [False, True])
def test_chunked_paths_equal_reference(cell, tiny, reuse, monkeypatch):
    """Several chunks of backward factors / weight-grad GEMMs / input projection (and the copy variants of the
    weight-grad operands on and off), tbptt and dy, over two calls on one workspace: equal to the reference."""
    if tiny:
        for name, v in (("CHUNK_ELEMS", 24), ("DW_CHUNK_ELEMS", 200), ("GI_CHUNK_ELEMS", 40),
                        ("GI_FULL_MAX_ELEMS", 0), ("DW_COPY_MAX_B", 0), ("XB_COPY_MIN", 1)):
            assert not any(hasattr(mod, name) for mod in (fgru, flstm, frnn))  # one copy, read at call time
            monkeypatch.setattr(_common, name, v)
    be = resolve("cpu", "float64")
    T, B, I, H = (13, 3, 2, 4) if tiny else (13, 64, 2, 64)
    if cell.startswith("gru"):
        mod, ffwd, fbwd, opts = gru_ref, fgru.gru_forward, fgru.gru_backward, {"reset_after": cell == "gru_after"}
    else:
        mod, ffwd, fbwd, opts = CELLS[cell]
    ws = fast.Workspace()
    for seed in (0, 1):
        p, x, s0, dy, dsT = _any_problem(be, mod, T, B, I, H, seed=seed)
        ref, _ = _any_run(mod.forward, mod.backward, be, p, x, s0, dy, dsT, tbptt=5, opts=opts)
        got, _ = _any_run(ffwd, fbwd, be, p, x, s0, dy, dsT, tbptt=5, opts=opts, ws=ws, reuse=reuse)
        for name, a, b in zip(_any_names(mod), got, ref):
            _close(a, b, "float64", f"{cell} {name}")
