"""The fused CPU kernels (nn/fast/_cpu.py, numba, optional; GRU in both conventions, LSTM, the RNN's backward)
against the portable NumPy fast path they replace:
bit for bit (the same +, -, * in the same order, no fused multiply-add), float64 and float32, over chunk
boundaries, tbptt, dy=None, reused workspaces, through the layer, no_grad and a Forecaster's training steps.
Skipped where numba is not installed (the portable path then runs everywhere)."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

import gru_xp
from gru_xp.backend import resolve, to_host
from gru_xp.model import Forecaster
from gru_xp.nn._cell import CellParams
from gru_xp.nn.fast import (Workspace, _common, _cpu, _cpu_blas, counted_cpu_kernels, gru as fgru, lstm as flstm,
                             per_step_kernels, portable_loops, rnn as frnn, whole_sequence_backward,
                             whole_sequence_forward)
from gru_xp.nn.optim import Adam

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")


@pytest.fixture
def kernels_on_off(monkeypatch):
    """-> switch(on, whole=False, whole_forward=False): the kernels (counted: switch(True) returns an object whose
    .calls counts each kernel's calls) for every size (MIN_STEP_ELEMS 0), step by step (per_step_kernels: the
    whole-sequence loops off, so that every result is bit-identical to the portable loops) or, whole=True, with the
    whole-sequence backwards, and whole_forward=True the GRU's float32 whole-sequence forward too; or the portable
    loops (switch(False) returns None)."""
    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)
    assert _cpu.kernels() is not None
    with contextlib.ExitStack() as stack:
        def switch(on: bool, whole: bool = False, whole_forward: bool = False):
            stack.close()  # leave the previous mode
            if on:
                calls = stack.enter_context(counted_cpu_kernels())
                if not (whole and whole_forward):
                    stack.enter_context(per_step_kernels(forward_only=whole))
                return SimpleNamespace(calls=calls)
            stack.enter_context(portable_loops())
            return None

        yield switch


def _problem(be, T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    p = CellParams(*(be.asarray(rng.uniform(-0.6, 0.6, s)) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))))
    return (p, be.asarray(rng.standard_normal((T, B, I))), be.asarray(rng.standard_normal((B, H))),
            be.asarray(rng.standard_normal((T, B, H))), be.asarray(rng.standard_normal((B, H))))


def _run(be, p, x, h0, dy, dhT, tbptt, ws=None, reuse=False, reset_after=True):
    xp = be.xp
    g = CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
    y2, (hT2,), none = fgru.gru_forward(xp, p, x, (h0,), ws=ws, reuse=reuse, reset_after=reset_after,
                                        keep_cache=False)  # no_grad: one step's gate buffers
    assert none is None
    out = [np.array(y2), np.array(hT2)]
    y, (hT,), c = fgru.gru_forward(xp, p, x, (h0,), ws=ws, reuse=reuse, reset_after=reset_after)
    out += [np.array(y), np.array(hT)]
    dx, (dh0,) = fgru.gru_backward(xp, p, c, dy, (dhT,), g, tbptt=tbptt, ws=ws, reuse=reuse)
    return out + [np.array(a) for a in (dx, dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("T,B,I,H,tiny_chunks", [(1, 1, 1, 1, False), (7, 4, 3, 5, False), (13, 3, 2, 4, True),
                                                 (20, 64, 1, 32, False)])
@pytest.mark.parametrize("tbptt,with_dy", [(0, True), (0, False), (3, True)])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_kernels_bit_identical_to_the_portable_path(kernels_on_off, monkeypatch, dtype, T, B, I, H,
                                                        tiny_chunks, tbptt, with_dy, reset_after):
    if tiny_chunks:  # several backward chunks, chunked input projection
        for name, v in (("CHUNK_ELEMS", 24), ("GI_CHUNK_ELEMS", 40), ("GI_FULL_MAX_ELEMS", 0)):
            monkeypatch.setattr(_common, name, v)
    be = resolve("cpu", dtype)
    p, x, h0, dy, dhT = _problem(be, T, B, I, H, seed=T + H)
    dy = dy if with_dy else None
    runs = []
    for on in (False, True):
        counting = kernels_on_off(on)
        ws = Workspace()
        runs.append([_run(be, p, x, h0, dy, dhT, tbptt, ws, True, reset_after) for _ in range(2)])  # 2nd reuses ws
    bwd = ("gru_bwd_after",) if reset_after else ("gru_bwd_before_zn", "gru_bwd_before_r")
    fwd = "gru_fwd_after_gates" if reset_after else "gru_fwd_before_rz"
    assert counting.calls["gru_fwd_state"] == 4 * T and counting.calls[fwd] == 4 * T  # with and without a cache
    assert all(counting.calls[k] == 2 * T for k in bwd)
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_array_equal(b, a)


def test_kernels_run_only_where_they_should(monkeypatch):
    """NumPy namespaces, steps of at least MIN_STEP_ELEMS (B·H), both GRU conventions; GRU_XP_CPU_KERNELS=0 turns
    them off."""
    xp = resolve("cpu", "float32").xp
    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 1024)
    assert _cpu.usable(xp, 1024) and not _cpu.usable(xp, 1023)
    strict = pytest.importorskip("array_api_strict")
    assert not _cpu.usable(strict, 1 << 20)
    with counted_cpu_kernels() as calls, per_step_kernels():
        for reset_after in (False, True):
            layer = gru_xp.GRU(1, 32, reset_after=reset_after)
            layer.forward(np.zeros((3, 32, 1), dtype=np.float32))
            assert calls.get("gru_fwd_state", 0) == (6 if reset_after else 3)  # counted over both layers
            assert calls.get("gru_fwd_after_gates" if reset_after else "gru_fwd_before_rz", 0) == 3
        layer = gru_xp.GRU(1, 31, reset_after=False)  # B·H = 992 < 1024: the portable loops
        layer.forward(np.zeros((3, 32, 1), dtype=np.float32))
        assert calls.get("gru_fwd_state", 0) == 6
    with counted_cpu_kernels() as calls:  # the float32 forward as one call where NumPy's BLAS is reachable
        gru_xp.GRU(1, 32).forward(np.zeros((3, 32, 1), dtype=np.float32))
        gru_xp.GRU(1, 31).forward(np.zeros((3, 32, 1), dtype=np.float32))  # too small: the portable loops
        assert calls.get("gru_fwd_seq_float32", 0) == (1 if whole_sequence_forward() else 0)
        assert calls.get("gru_fwd_after_gates", 0) == (0 if whole_sequence_forward() else 3)
    monkeypatch.delitem(_cpu.STATE, "k")
    monkeypatch.setenv("GRU_XP_CPU_KERNELS", "0")
    assert _cpu.kernels() is None and not _cpu.usable(xp, 1 << 20)
    monkeypatch.delitem(_cpu.STATE, "k")


@pytest.mark.parametrize("L,bi,reset_after", [(1, False, True), (2, True, True), (2, True, False)])
def test_layer_and_forecaster_bit_identical_with_kernels(kernels_on_off, L, bi, reset_after):
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((9, 5, 3)), rng.standard_normal((9, 5, 2 * 6 if bi else 6))
    batches = [(rng.standard_normal((7, 5, 2)), rng.standard_normal((5, 3))) for _ in range(3)]
    out = []
    for on in (False, True):
        counting = kernels_on_off(on)
        layer = gru_xp.GRU(3, 6, num_layers=L, bidirectional=bi, dtype="float64", seed=2, reset_after=reset_after)
        layer.zero_grad()
        y, hn = layer.forward(x)
        dx, dh0 = layer.backward(dy, hn)
        with layer.no_grad():
            y2, _ = layer.eval().forward(x)
        res = [np.array(to_host(a)) for a in (y, hn, dx, dh0, y2)] + [np.array(v) for v in layer.grads.values()]
        m = Forecaster("gru", 2, 6, 3, dtype="float64", seed=1, num_layers=L, bidirectional=bi,
                       reset_after=reset_after)
        opt = Adam(1e-2)
        for xb, yb in batches:
            res.append(np.array(to_host(m.loss_and_grads(xb, yb))))
            opt.step(m.backend.xp, m.params, m.grads)
        out.append(res + [np.array(v) for v in m.params.values()])
    bwd = "gru_bwd_after" if reset_after else "gru_bwd_before_zn"
    assert counting.calls[bwd] == L * (2 if bi else 1) * (9 + 3 * 7)  # the layer's and the model's
    for a, b in zip(*out):
        np.testing.assert_array_equal(b, a)


def _lstm_run(be, p, x, s0, dy, dsT, tbptt, ws, reuse, dc_steps=None):
    xp = be.xp
    g = CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
    y, (hT, cT), c = flstm.lstm_forward(xp, p, x, s0, ws=ws, reuse=reuse)
    out = [np.array(a) for a in (y, hT, cT)]
    y2, (hT2, cT2), _ = flstm.lstm_forward(xp, p, x, s0, ws=ws, reuse=reuse, keep_cache=False)  # no cache
    out += [np.array(a) for a in (y2, hT2, cT2)]
    y, (hT, cT), c = flstm.lstm_forward(xp, p, x, s0, ws=ws, reuse=reuse)  # again: backward needs this cache
    dx, (dh0, dc0) = flstm.lstm_backward(xp, p, c, dy, dsT, g, tbptt=tbptt, ws=ws, reuse=reuse, dc_steps=dc_steps)
    return out + [np.array(a) for a in (dx, dh0, dc0, g.w_ih, g.w_hh, g.b_ih, g.b_hh)]


def _lstm_runs(kernels_on_off, whole: bool, dtype, T, B, I, H, tbptt, with_dy, with_dc, whole_forward=False):
    """([portable runs, kernel runs], the kernels' counter): one random LSTM problem (dc_steps, when with_dc, half
    zeros) through _lstm_run with reused, reused and fresh workspaces, the portable loops, then the kernels (whole:
    with the whole-sequence backward; whole_forward: the float32 forward as one call too)."""
    be = resolve("cpu", dtype)
    rng = np.random.default_rng(T + H)
    p = CellParams(*(be.asarray(rng.uniform(-0.6, 0.6, s)) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))))
    x = be.asarray(rng.standard_normal((T, B, I)))
    s0 = tuple(be.asarray(rng.standard_normal((B, H))) for _ in range(2))
    dy = be.asarray(rng.standard_normal((T, B, H))) if with_dy else None
    dsT = tuple(be.asarray(rng.standard_normal((B, H))) for _ in range(2))
    dc_steps = be.asarray(rng.standard_normal((T, B, H)) * (rng.random((T, B, 1)) < 0.5)) if with_dc else None
    runs = []
    for on in (False, True):
        counting = kernels_on_off(on, whole=whole, whole_forward=whole_forward)
        ws = Workspace()
        runs.append([_lstm_run(be, p, x, s0, dy, dsT, tbptt, ws, reuse, dc_steps) for reuse in (True, True, False)])
    return runs, counting


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("T,B,I,H,tiny_chunks", [(1, 1, 1, 1, False), (7, 4, 3, 5, False), (13, 3, 2, 4, True),
                                                 (20, 64, 1, 32, False)])
@pytest.mark.parametrize("tbptt,with_dy,with_dc", [(0, True, False), (0, False, False), (3, True, False),
                                                   (0, True, True), (0, False, True)])
def test_lstm_kernels_bit_identical_to_the_portable_path(kernels_on_off, monkeypatch, dtype, T, B, I, H,
                                                         tiny_chunks, tbptt, with_dy, with_dc):
    """with_dc: a per-step upstream dc (dc_steps, as variable lengths give), half of it zeros."""
    if tiny_chunks:
        monkeypatch.setattr(_common, "CHUNK_ELEMS", 24)
    runs, counting = _lstm_runs(kernels_on_off, False, dtype, T, B, I, H, tbptt, with_dy, with_dc)
    assert counting.calls["lstm_fwd_gates"] == 3 * 3 * T and counting.calls["lstm_bwd"] == 3 * T
    for a, b in zip(sum(runs[0], []), sum(runs[1], [])):
        np.testing.assert_array_equal(b, a)


def test_lstm_layer_and_forecaster_bit_identical_with_kernels(kernels_on_off):
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((9, 5, 3)), rng.standard_normal((9, 5, 12))
    batches = [(rng.standard_normal((7, 5, 2)), rng.standard_normal((5, 3))) for _ in range(3)]
    out = []
    for on in (False, True):
        counting = kernels_on_off(on)
        layer = gru_xp.LSTM(3, 6, num_layers=2, bidirectional=True, dtype="float64", seed=2)
        y, (hn, cn) = layer.forward(x)
        dx, (dh0, dc0) = layer.backward(dy, (hn, cn))
        res = [np.array(a) for a in (y, hn, cn, dx, dh0, dc0)] + [np.array(v) for v in layer.grads.values()]
        m = Forecaster("lstm", 2, 6, 3, dtype="float64", seed=1, num_layers=2)
        opt = Adam(1e-2)
        for xb, yb in batches:
            res.append(np.array(to_host(m.loss_and_grads(xb, yb))))
            opt.step(m.backend.xp, m.params, m.grads)
        out.append(res + [np.array(v) for v in m.params.values()])
    assert counting.calls["lstm_bwd"] == 4 * 9 + 2 * 3 * 7
    for a, b in zip(*out):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("cls", [gru_xp.GRU, functools.partial(gru_xp.GRU, reset_after=False), gru_xp.LSTM,
                                 gru_xp.RNN, functools.partial(gru_xp.RNN, nonlinearity="relu")],
                         ids=["gru", "gru_reset_before", "lstm", "rnn", "rnn_relu"])
def test_variable_lengths_bit_identical_with_kernels(kernels_on_off, cls):
    """Variable lengths (the LSTM's backward then gets a per-step dc, which its backward kernel takes) through a
    stacked bidirectional layer: the same outputs and grads with the kernels on and off, the kernels counted."""
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((9, 5, 3)), rng.standard_normal((9, 5, 12))
    lengths = np.array([9, 4, 1, 7, 9])
    out = []
    for on in (False, True):
        counting = kernels_on_off(on)
        layer = cls(3, 6, num_layers=2, bidirectional=True, dtype="float64", seed=2)
        y, sn = layer.forward(x, lengths=lengths)
        dx, ds0 = layer.backward(dy, sn)
        parts = list(sn) + list(ds0) if isinstance(sn, tuple) else [sn, ds0]
        out.append([np.array(a) for a in (y, dx, *parts)] + [np.array(v) for v in layer.grads.values()])
    base = getattr(cls, "func", cls)
    bwd = {gru_xp.LSTM: "lstm_bwd", gru_xp.RNN: "rnn_bwd"}.get(
        base, "gru_bwd_after" if cls is gru_xp.GRU else "gru_bwd_before_zn")
    assert counting.calls[bwd] == 4 * 9  # 2 layers x 2 directions
    for a, b in zip(*out):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("T,B,I,H,tiny_chunks", [(1, 1, 1, 1, False), (7, 4, 3, 5, False), (13, 3, 2, 4, True),
                                                 (20, 64, 1, 32, False)])
@pytest.mark.parametrize("tbptt,with_dy", [(0, True), (0, False), (3, True)])
def test_rnn_kernel_bit_identical_to_the_portable_path(kernels_on_off, monkeypatch, dtype, nonlinearity, T, B, I, H,
                                                       tiny_chunks, tbptt, with_dy):
    """The RNN's backward kernel (its forward has none: a step is its GEMM and one activation) against the portable
    loop: the same outputs, dx, dh0 and grads, over chunk boundaries, tbptt, dy=None and a reused workspace."""
    if tiny_chunks:
        monkeypatch.setattr(_common, "CHUNK_ELEMS", 24)
    be = resolve("cpu", dtype)
    rng = np.random.default_rng(T + H)
    p = CellParams(*(be.asarray(rng.uniform(-0.6, 0.6, s)) for s in ((H, I), (H, H), (H,), (H,))))
    x, h0 = be.asarray(rng.standard_normal((T, B, I))), be.asarray(rng.standard_normal((B, H)))
    dy = be.asarray(rng.standard_normal((T, B, H))) if with_dy else None
    dhT = be.asarray(rng.standard_normal((B, H)))

    def run(ws, reuse):
        g = CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
        y, (hT,), c = frnn.rnn_forward(be.xp, p, x, (h0,), nonlinearity=nonlinearity, ws=ws, reuse=reuse)
        dx, (dh0,) = frnn.rnn_backward(be.xp, p, c, dy, (dhT,), g, tbptt=tbptt, ws=ws, reuse=reuse)
        return [np.array(a) for a in (y, hT, dx, dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh)]

    runs = []
    for on in (False, True):
        counting = kernels_on_off(on)
        ws = Workspace()
        runs.append(sum((run(ws, reuse) for reuse in (True, True, False)), []))
    assert counting.calls["rnn_bwd"] == 3 * T
    for a, b in zip(*runs):
        np.testing.assert_array_equal(b, a)
    if nonlinearity == "relu":  # some units are off (h = 0): their da must be exactly zero on both paths
        assert (runs[1][0] == 0).any()


KERNEL_CELLS = {  # name -> (layer factory, a backward kernel that must run, torch has the cell)
    "gru": (lambda **kw: gru_xp.GRU(3, 4, **kw), "gru_bwd_after", True),
    "gru_whole_sequence": (lambda **kw: gru_xp.GRU(3, 4, **kw), "gru_bwd_seq_float64", True),
    "gru_reset_before": (lambda **kw: gru_xp.GRU(3, 4, reset_after=False, **kw), "gru_bwd_before_r", False),
    "lstm": (lambda **kw: gru_xp.LSTM(3, 4, **kw), "lstm_bwd", True),
    "lstm_whole_sequence": (lambda **kw: gru_xp.LSTM(3, 4, **kw), "lstm_bwd_seq_float64", True),
    "rnn_tanh": (lambda **kw: gru_xp.RNN(3, 4, **kw), "rnn_bwd", True),
    "rnn_relu": (lambda **kw: gru_xp.RNN(3, 4, nonlinearity="relu", **kw), "rnn_bwd", True),
}


@pytest.mark.parametrize("cell", list(KERNEL_CELLS))
def test_kernel_paths_against_finite_differences_and_torch(kernels_on_off, cell):
    """The kernel paths proven directly, not only through their bit-identity with the portable loops: float64
    central finite differences (random weights, random biases, random upstream grads on every output) and, where
    torch has the cell, torch's autograd with the weights copied in; the kernels counted, so they did run."""
    from gru_xp.check import finite_difference, random_problem, randomize_params, rel_err, torch_parity

    make, kernel, in_torch = KERNEL_CELLS[cell]
    whole = "_bwd_seq_" in kernel
    if whole and not whole_sequence_backward("float64"):
        pytest.skip("NumPy's BLAS is not reachable here: no whole-sequence backward")
    counting = kernels_on_off(True, whole=whole)
    layer = make(num_layers=2, bidirectional=True, dtype="float64", seed=0)
    randomize_params(layer, seed=1)
    problem = random_problem(layer, T=4, B=3, seed=2)
    res = finite_difference(layer, *problem)
    assert max(rel_err(a, n) for a, n in res.values()) < 1e-7, res
    assert counting.calls[kernel] > 0
    if in_torch:
        pytest.importorskip("torch")
        errs = torch_parity(layer, *problem)
        assert max(errs.values()) < 1e-10, errs


# ---- the GRU's backward as one call on NumPy's BLAS (_cpu.py, _cpu_blas.py) -----------------------------------------
needs_blas = pytest.mark.skipif(importlib.util.find_spec("numba") is None or not whole_sequence_backward("float64"),
                                reason="no whole-sequence backward here (numba, or NumPy's bundled OpenBLAS, missing)")


def _close(a, b, dtype, tol=None):
    """Agreement to rounding: relative to b's scale, 1e-12 (float64) or 2e-6 (float32), or tol."""
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b), initial=0.0)) / scale
    assert err <= (tol if tol is not None else 1e-12 if dtype == "float64" else 2e-6), err


@needs_blas
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (20, 64, 1, 32), (10, 256, 1, 70)])
@pytest.mark.parametrize("tbptt,with_dy", [(0, True), (0, False), (3, True)])
def test_whole_sequence_backward_against_the_portable_path(kernels_on_off, dtype, T, B, I, H, tbptt, with_dy):
    """The whole-sequence backward against the portable loops: the forward bit for bit (it is the per-step
    kernels'), dx, dh0 and every grad to rounding (dW sums its terms in another order); with a reused workspace
    too; the kernel counted: one call a backward, and gru_bwd_after never through Python."""
    be = resolve("cpu", dtype)
    p, x, h0, dy, dhT = _problem(be, T, B, I, H, seed=T + H)
    dy = dy if with_dy else None
    runs = []
    for on in (False, True):
        counting = kernels_on_off(on, whole=True)
        ws = Workspace()
        runs.append([_run(be, p, x, h0, dy, dhT, tbptt, ws, True) for _ in range(2)])  # 2nd reuses ws
    assert counting.calls[f"gru_bwd_seq_{dtype}"] == 2 and "gru_bwd_after" not in counting.calls
    n_fwd = 4  # y and h_T without, then with a cache
    for run_off, run_on in zip(runs[0], runs[1]):
        for k, (a, b) in enumerate(zip(run_on, run_off)):
            if k < n_fwd:
                np.testing.assert_array_equal(a, b)
            else:
                _close(a, b, dtype)


@needs_blas
def test_whole_sequence_backward_without_dx_and_with_a_reference_cache(kernels_on_off):
    """input_grad=False: no dx (None), the same grads; a cache from the reference forward still goes to the
    reference backward (the kernel does not run)."""
    from gru_xp.nn import gru as rgru

    be = resolve("cpu", "float64")
    p, x, h0, dy, dhT = _problem(be, 6, 8, 2, 5, seed=3)
    counting = kernels_on_off(True, whole=True)
    grads = []
    for input_grad in (True, False):
        g = CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
        _, _, c = fgru.gru_forward(be.xp, p, x, (h0,))
        dx, (dh0,) = fgru.gru_backward(be.xp, p, c, dy, (dhT,), g, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([np.array(a) for a in (dh0, g.w_ih, g.w_hh, g.b_ih, g.b_hh)])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    assert counting.calls["gru_bwd_seq_float64"] == 2
    g = CellParams(*(be.zeros(a.shape) for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh)))
    _, _, c = rgru.forward(be.xp, p, x, (h0,))
    fgru.gru_backward(be.xp, p, c, dy, (dhT,), g)
    assert counting.calls["gru_bwd_seq_float64"] == 2
    for a, b in zip(grads[0][1:], (g.w_ih, g.w_hh, g.b_ih, g.b_hh)):
        _close(a, np.array(b), "float64")


@needs_blas
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_layer_and_forecaster_with_the_whole_sequence_backward(kernels_on_off, cell, L, bi):
    """Through the public layer (stacked, bidirectional, variable lengths: the LSTM then gets a per-step dc) and a
    Forecaster's training steps with Adam: the whole-sequence backward agrees with the portable loops to rounding,
    and it did run."""
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((9, 5, 3)), rng.standard_normal((9, 5, 2 * 6 if bi else 6))
    lengths = np.array([9, 4, 1, 7, 9])
    batches = [(rng.standard_normal((7, 5, 2)), rng.standard_normal((5, 3))) for _ in range(3)]
    out = []
    for on in (False, True):
        counting = kernels_on_off(on, whole=True)
        layer = {"gru": gru_xp.GRU, "lstm": gru_xp.LSTM}[cell](3, 6, num_layers=L, bidirectional=bi, dtype="float64",
                                                        seed=2)
        layer.zero_grad()
        y, sn = layer.forward(x, lengths=lengths)
        dx, ds0 = layer.backward(dy, sn)
        states = list(sn) + list(ds0) if isinstance(sn, tuple) else [sn, ds0]
        res = [np.array(to_host(a)) for a in (y, dx, *states)] + [np.array(v) for v in layer.grads.values()]
        m = Forecaster(cell, 2, 6, 3, dtype="float64", seed=1, num_layers=L, bidirectional=bi)
        opt = Adam(1e-2)
        for xb, yb in batches:
            res.append(np.array(to_host(m.loss_and_grads(xb, yb))))
            opt.step(m.backend.xp, m.params, m.grads)
        out.append(res + [np.array(v) for v in m.params.values()])
    assert counting.calls[f"{cell}_bwd_seq_float64"] == L * (2 if bi else 1) * (1 + 3)
    for a, b in zip(out[1], out[0]):
        _close(a, b, "float64")


def test_whole_sequence_backward_is_optional(monkeypatch):
    """No OpenBLAS next to NumPy (a conda or macOS build), or GRU_XP_CPU_SEQ=0: no whole-sequence kernels, and the
    GRU's backward runs on the per-step kernels (counted) with the same results as the reference."""
    from gru_xp.check import finite_difference, random_problem, randomize_params, rel_err

    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)
    for env, paths in (("1", []), ("0", None)):
        monkeypatch.setenv("GRU_XP_CPU_SEQ", env)
        monkeypatch.setattr(_cpu_blas, "STATE", {})
        if paths is not None:
            monkeypatch.setattr(_cpu_blas, "_library_paths", lambda: paths)
        assert _cpu_blas.gemm() is None
        monkeypatch.setattr(_cpu, "STATE", {})
        if _cpu.kernels() is None:
            pytest.skip("numba not installed")
        assert not any(whole_sequence_backward(dt, cell) for dt in ("float32", "float64") for cell in ("gru", "lstm"))
        with counted_cpu_kernels() as calls:
            layer = gru_xp.GRU(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0)
            randomize_params(layer, seed=1)
            res = finite_difference(layer, *random_problem(layer, T=4, B=3, seed=2))
        assert max(rel_err(a, n) for a, n in res.values()) < 1e-7, res
        assert calls["gru_bwd_after"] > 0 and not any("_bwd_seq_" in k for k in calls)
    monkeypatch.setattr(_cpu, "STATE", {})


@needs_blas
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (20, 64, 1, 32)])
@pytest.mark.parametrize("tbptt,with_dy,with_dc", [(0, True, False), (0, False, False), (3, True, False),
                                                   (0, True, True), (0, False, True)])
def test_lstm_whole_sequence_backward_against_the_portable_path(kernels_on_off, dtype, T, B, I, H, tbptt, with_dy,
                                                                with_dc):
    """The LSTM's whole-sequence backward against the portable loops: the forwards bit for bit, dx, dh0, dc0 and
    every grad to rounding, with a per-step dc (variable lengths) half zeros, reused and fresh workspaces; one call
    a backward, lstm_bwd never through Python."""
    runs, counting = _lstm_runs(kernels_on_off, True, dtype, T, B, I, H, tbptt, with_dy, with_dc)
    assert counting.calls[f"lstm_bwd_seq_{dtype}"] == 3 and "lstm_bwd" not in counting.calls
    for run_off, run_on in zip(runs[0], runs[1]):
        for k, (a, b) in enumerate(zip(run_on, run_off)):
            if k < 6:  # y, h_T, c_T with a cache and without
                np.testing.assert_array_equal(a, b)
            else:
                _close(a, b, dtype)


@needs_blas
def test_numpy_blas_found_is_numpys_own():
    """The gemm found multiplies like NumPy's matmul (same library: results bit for bit on a small product), for
    both dtypes, with the row-major, transposed-B call the kernel makes."""
    import ctypes

    for dtype in ("float32", "float64"):
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
        c = np.zeros((5, 3), dtype=dtype)
        one, zero = np.dtype(dtype).type(1), np.dtype(dtype).type(0)
        _cpu_blas.gemm()[dtype](_cpu_blas.ROW_MAJOR, _cpu_blas.NO_TRANS, _cpu_blas.TRANS, 5, 3, 7, one,
                                a.ctypes.data_as(ctypes.c_void_p), 7, b.ctypes.data_as(ctypes.c_void_p), 7, zero,
                                c.ctypes.data_as(ctypes.c_void_p), 3)
        np.testing.assert_allclose(c, a @ b.T, rtol=1e-5 if dtype == "float32" else 1e-13)


_CACHE_PROBE = """
import json, numpy as np, gru_xp
from gru_xp.nn.fast import _cpu
for cell in (gru_xp.GRU, gru_xp.LSTM):
    layer = cell(2, 40, dtype="float32", seed=0)
    y, _ = layer.forward(np.ones((3, 30, 2), dtype=np.float32))
    layer.backward(np.ones(y.shape, dtype=np.float32))
k = _cpu.kernels()
names = ("gru_bwd_seq_float32", "lstm_bwd_seq_float32", "gru_fwd_seq_float32", "lstm_fwd_seq_float32")
stats = {n: getattr(k, n).func.stats for n in names}
print(json.dumps({n: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for n, s in stats.items()}))
"""


@needs_blas
def test_whole_sequence_backwards_are_cached_on_disk(tmp_path):
    """The one-call loops compile once (~1 s) and later processes load them from numba's disk cache: a fresh
    cache directory, two processes, the second one hits for the GRU's and the LSTM's backward and float32 forward
    loops and misses nothing.
    (They closed over the step kernels once, which gave them a new cache key every process.)"""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "GRU_XP_CPU_SEQ": "1", "GRU_XP_CPU_KERNELS": "1"}
    runs = [json.loads(subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, check=True, capture_output=True,
                                      text=True).stdout) for _ in range(2)]
    for name in ("gru_bwd_seq_float32", "lstm_bwd_seq_float32", "gru_fwd_seq_float32", "lstm_fwd_seq_float32"):
        assert runs[0][name] == [0, 1], runs  # compiled (and saved) in the first process
        assert runs[1][name] == [1, 0], runs  # loaded in the second


# ---- the float32 forwards as one call (_cpu.gru_fwd_sequence, _cpu.lstm_fwd_sequence, tanh32) --------------------
needs_seq_fwd = pytest.mark.skipif(importlib.util.find_spec("numba") is None or not whole_sequence_forward(),
                                   reason="no one-call forward here (numba, or NumPy's bundled OpenBLAS, missing)")


def _ulps(a, ref):
    """|a - ref| in units in the last place of float32 at ref (ref float64)."""
    spacing = np.spacing(np.maximum(np.abs(ref), np.finfo(np.float32).smallest_subnormal).astype(np.float32))
    return np.abs(a.astype(np.float64) - ref) / spacing.astype(np.float64)


@needs_seq_fwd
def test_tanh32_accuracy_and_edges():
    """tanh32, through the fused step kernel (hn = 0, so n = tanh32(the candidate's input) exactly): within 8 ulp of
    tanh over [-12, 12] and on tiny and subnormal inputs (measured ~6), odd bit for bit, |tanh| <= 1, tanh(0) = 0,
    NaN stays NaN, +-inf saturates; r and z are sigmoids (tanh32(a/2)/2 + 1/2) in [0, 1]. Every value also lands
    in a SIMD lane and in the scalar tail (B = 1027 is not a multiple of the vector width)."""
    k = _cpu.kernels()
    grid = np.linspace(-12, 12, 3 * 1027 * 337, dtype=np.float32)
    tiny = np.float32(2.0) ** -np.arange(1, 149, dtype=np.float32)
    xs = np.concatenate([grid, tiny, -tiny, np.float32([0.0, -0.0, 9.0, -9.0, 1e30, -1e30])])
    B = 1027
    xs = np.concatenate([xs, np.zeros((-xs.size) % B, np.float32)]).reshape(-1, B)  # (H, B)
    H = xs.shape[0]
    a = np.linspace(-20, 20, H * B, dtype=np.float32).reshape(H, B)  # sigmoid pre-activations
    gates = np.concatenate([a / 2, -a / 2, np.zeros((H, B), np.float32)])  # (3H, B) [a_r/2 | a_z/2 | hn = 0]
    cand, h_prev, h_next = xs.copy(), np.zeros((H, B), np.float32), np.empty((H, B), np.float32)
    k.gru_fwd_step32(gates, cand, h_prev, h_next, np.float32(0.5))
    ref = np.tanh(xs.astype(np.float64))
    assert float(_ulps(cand, ref).max()) <= 8.0
    assert float(np.abs(cand).max()) <= 1.0
    neg = np.concatenate([-grid, -tiny, tiny, np.float32([-0.0, 0.0])])
    c2 = np.concatenate([neg, np.zeros((-neg.size) % B, np.float32)]).reshape(-1, B)
    g2 = np.zeros((3 * c2.shape[0], B), np.float32)
    k.gru_fwd_step32(g2, c2, np.zeros_like(c2), np.empty_like(c2), np.float32(0.5))
    n_pos = cand.ravel()[: grid.size + 2 * tiny.size + 2]
    np.testing.assert_array_equal(c2.ravel()[: n_pos.size], -n_pos)  # odd, bit for bit
    assert not cand.ravel()[grid.size + 2 * tiny.size: grid.size + 2 * tiny.size + 2].any()  # tanh(+-0) = 0
    assert float(cand.ravel()[grid.size + 2 * tiny.size + 4]) > 1 - 1e-6  # 1e30: saturated
    sig = 1 / (1 + np.exp(-a.astype(np.float64)))
    assert float(np.abs(gates[:H] - sig).max()) < 1e-6 and float(np.abs(gates[H:2 * H] - (1 - sig)).max()) < 1e-6
    assert float(gates[:2 * H].min()) >= 0.0 and float(gates[:2 * H].max()) <= 1.0
    nan = np.full((1, 16), np.nan, np.float32)
    g3 = np.concatenate([nan, nan, np.zeros((1, 16), np.float32)])
    c3, h3 = np.full((1, 16), np.nan, np.float32), np.empty((1, 16), np.float32)
    k.gru_fwd_step32(g3, c3, np.zeros((1, 16), np.float32), h3, np.float32(0.5))
    assert np.isnan(c3).all() and np.isnan(g3[:2]).all() and np.isnan(h3).all()
    inf = np.float32([[np.inf, -np.inf]])
    c4 = inf.copy()
    k.gru_fwd_step32(np.zeros((3, 2), np.float32), c4, np.zeros((1, 2), np.float32), np.empty((1, 2), np.float32),
                     np.float32(0.5))
    assert c4[0, 0] > 1 - 1e-6 and c4[0, 1] < -1 + 1e-6 and np.abs(c4).max() <= 1.0


@needs_seq_fwd
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (20, 64, 1, 32), (10, 256, 1, 70)])
@pytest.mark.parametrize("tbptt,with_dy", [(0, True), (0, False), (3, True)])
def test_whole_sequence_forward_against_the_portable_path(kernels_on_off, T, B, I, H, tbptt, with_dy):
    """The float32 forward as one call against the portable loops: y and h_T with and without a cache, dx, dh0 and
    every grad (the backward runs on each forward's own cache), to float32 rounding (tanh32 is not NumPy's tanh);
    with a reused workspace too; one call a forward, the per-step forward kernels never through Python."""
    be = resolve("cpu", "float32")
    p, x, h0, dy, dhT = _problem(be, T, B, I, H, seed=T + H)
    dy = dy if with_dy else None
    runs = []
    for on in (False, True):
        counting = kernels_on_off(on, whole=True, whole_forward=True)
        ws = Workspace()
        runs.append([_run(be, p, x, h0, dy, dhT, tbptt, ws, True) for _ in range(2)])  # 2nd reuses ws
    assert counting.calls["gru_fwd_seq_float32"] == 4 and "gru_fwd_after_gates" not in counting.calls
    assert counting.calls["gru_bwd_seq_float32"] == 2
    for run_off, run_on in zip(runs[0], runs[1]):
        for a, b in zip(run_on, run_off):
            _close(a, b, "float32", tol=2e-5)  # tanh32 is not NumPy's tanh


@needs_seq_fwd
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (7, 4, 3, 5), (20, 64, 1, 32)])
@pytest.mark.parametrize("tbptt,with_dy,with_dc", [(0, True, False), (3, True, False), (0, False, True)])
def test_lstm_whole_sequence_forward_against_the_portable_path(kernels_on_off, T, B, I, H, tbptt, with_dy, with_dc):
    """The LSTM's float32 forward as one call against the portable loops: y, h_T, c_T with and without a cache (the
    cacheless one alternates two cell-state buffers), dx, dh0, dc0 and every grad, to float32 rounding; reused and
    fresh workspaces; one call a forward, the per-step forward kernel never through Python."""
    runs, counting = _lstm_runs(kernels_on_off, True, "float32", T, B, I, H, tbptt, with_dy, with_dc,
                                whole_forward=True)
    assert counting.calls["lstm_fwd_seq_float32"] == 3 * 3 and "lstm_fwd_gates" not in counting.calls
    for run_off, run_on in zip(runs[0], runs[1]):
        for a, b in zip(run_on, run_off):
            _close(a, b, "float32", tol=2e-5)  # tanh32 is not NumPy's tanh


@needs_seq_fwd
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_whole_sequence_forward_float32_only_and_torch_float64(kernels_on_off, cell):
    """float64 keeps the per-step kernels (its tanh is NumPy's: bit for bit with the portable path); the float32 layer
    (GRU, LSTM) on the one-call forward agrees with torch's run in float64 on the same weights (stacked,
    bidirectional, variable lengths, random upstream grads on every output) as closely as the float32 per-step path
    does."""
    torch = pytest.importorskip("torch")
    from gru_xp.check import random_lengths, random_problem, randomize_params, rel_err
    from gru_xp.interop import to_torch_module

    assert not whole_sequence_forward("float64", cell)
    errs = {}
    for whole in (False, True):
        counting = kernels_on_off(True, whole=True, whole_forward=whole)
        layer = {"gru": gru_xp.GRU, "lstm": gru_xp.LSTM}[cell](3, 40, num_layers=2, bidirectional=True,
                                                              dtype="float32", seed=0)
        randomize_params(layer, seed=1)
        x, s0, dy, ds = random_problem(layer, T=9, B=30, seed=2)
        lengths = random_lengths(9, 30, seed=3)
        layer.zero_grad()
        y, sn = layer.forward(x, s0, lengths=lengths)
        dx, ds0 = layer.backward(dy, ds)
        assert (counting.calls.get(f"{cell}_fwd_seq_float32", 0) > 0) == whole
        tm = to_torch_module(layer).double()
        xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
        states = list(s0) if cell == "lstm" else [s0]
        st = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in states]
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.as_tensor(lengths), enforce_sorted=False)
        yp, snt = tm(packed, tuple(st) if cell == "lstm" else st[0])
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, total_length=9)
        snt, sn, ds, ds0 = ([*a] if cell == "lstm" else [a] for a in (snt, sn, ds, ds0))
        obj = (yt * torch.tensor(np.asarray(dy, np.float64))).sum()
        for a, d in zip(snt, ds):
            obj = obj + (a * torch.tensor(np.asarray(d, np.float64))).sum()
        obj.backward()
        pairs = [(y, yt), (dx, xt.grad)] + list(zip(sn, snt)) + [(a, b.grad) for a, b in zip(ds0, st)] + \
            [(layer.grads[k], q.grad) for k, q in tm.named_parameters()]
        errs[whole] = max(rel_err(np.asarray(a), b.detach().numpy()) for a, b in pairs)
    assert errs[False] < 1e-5 and errs[True] < max(2 * errs[False], 1e-5), errs


def test_tiled_transpose_copies_exactly_and_serves_feature_major_copy(kernels_on_off):
    """transpose_tbh equals NumPy's transpose bit for bit over tile edges (B, F below, at and beyond multiples of 16);
    feature_major_copy takes it for a NumPy array of its dtype (counted), C-contiguous or a view (a block of batch
    columns, a strided view: numba compiles it for any layout), NumPy's copy for another dtype, with the same
    result."""
    k = _cpu.kernels()
    rng = np.random.default_rng(0)
    for T, B, F in [(1, 1, 1), (2, 16, 16), (3, 33, 17), (2, 15, 40), (1, 256, 70)]:
        a = rng.standard_normal((T, B, F)).astype(np.float32)
        out = np.full((T, F, B), np.nan, np.float32)
        k.transpose_tbh(a, out)
        np.testing.assert_array_equal(out, a.transpose(0, 2, 1))
    counting = kernels_on_off(True)
    xp = resolve("cpu", "float64").xp
    ops = _common.ops_for(xp)
    a = rng.standard_normal((4, 40, 30))
    for src, used in ((a, 1), (a[:, ::2], 1), (a[:, 8:24], 1), (a.astype(np.float32), 0)):
        before = counting.calls.get("transpose_tbh", 0)
        got = _common.feature_major_copy(xp, ops, Workspace(), "t", src, np.float64, "cpu")
        np.testing.assert_array_equal(got, np.asarray(src, np.float64).transpose(0, 2, 1))
        assert counting.calls.get("transpose_tbh", 0) - before == used
