"""The batch in column blocks over the cores (nn/fast/_cpu_split.py, nn/fast/blocks.py): the block rule, the
runner (OpenBLAS's thread count held and restored, errors raised), and the blocked GRU and LSTM against the one-call
path they split (outputs, states and their grads bit for bit at a benchmark shape's blocks, to float32 rounding at
uneven ones; weight grads to float32 rounding; the same bits every run), proven on their own by float64 central
finite differences and torch (blocks forced: the library blocks float32 only)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import gru_xp
from gru_xp.backend import to_host
from gru_xp.check import finite_difference, random_lengths, random_problem, randomize_params, rel_err, torch_parity
from gru_xp.diagnostics import record
from gru_xp.nn.fast import _cpu, _cpu_split, blocks, whole_sequence_backward, whole_sequence_forward

needs_seq = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None or not (whole_sequence_forward("float32")
                                                      and whole_sequence_backward("float32")),
    reason="no float32 whole-sequence loops here (numba, or NumPy's bundled OpenBLAS, missing)")


def _even(n):
    """blocks(B) replaced: n blocks of nearly equal width, edges anywhere (not on multiples of 16)."""
    return lambda B: [(B * k // n, B * (k + 1) // n) for k in range(n)]


@pytest.fixture
def fake_threads(monkeypatch):
    """OpenBLAS's thread control replaced by a counter: -> state dict {'n': count, 'sets': [...]}."""
    state = {"n": 4, "sets": []}

    def put(n):
        state["sets"].append(n)
        state["n"] = n

    monkeypatch.setattr(_cpu_split._cpu_blas, "thread_control", lambda: (lambda: state["n"], put))
    monkeypatch.setattr(_cpu_split, "_cores", lambda: 64)
    monkeypatch.delenv("GRU_XP_CPU_SPLIT", raising=False)
    return state


def test_block_rule(fake_threads, monkeypatch):
    """One block a thread of OpenBLAS's count (at most one a core), each at least MIN_COLS wide, edges on multiples
    of 16 covering the batch; no split at one thread, for a batch too narrow to give every such core a block (the
    one call's GEMMs then use them all), with GRU_XP_CPU_SPLIT=0 or without OpenBLAS."""
    assert _cpu_split.blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert _cpu_split.blocks(255) is None  # 4 threads, 255 // 64 = 3 blocks: a core would stay idle
    assert _cpu_split.blocks(200) is None
    fake_threads["n"] = 3
    parts = _cpu_split.blocks(200)  # 3 threads, 200 // 64 = 3 blocks
    assert len(parts) == 3 and parts[0][0] == 0 and parts[-1][1] == 200
    assert all(a[1] == b[0] and a[1] % 16 == 0 for a, b in zip(parts, parts[1:]))
    assert all(hi - lo >= 48 for lo, hi in parts)
    assert _cpu_split.blocks(127) is None  # one block of at least 64
    fake_threads["n"] = 2
    assert _cpu_split.blocks(256) == [(0, 128), (128, 256)]
    fake_threads["n"] = 1
    assert _cpu_split.blocks(4096) is None
    fake_threads["n"] = 2
    monkeypatch.setenv("GRU_XP_CPU_SPLIT", "0")
    assert _cpu_split.blocks(256) is None
    monkeypatch.delenv("GRU_XP_CPU_SPLIT")
    fake_threads["n"] = 8  # more OpenBLAS threads than cores: one block a core
    monkeypatch.setattr(_cpu_split, "_cores", lambda: 3)
    assert len(_cpu_split.blocks(1024)) == 3
    assert _cpu_split.blocks(191) is None  # 2 blocks for 3 cores
    monkeypatch.setattr(_cpu_split._cpu_blas, "thread_control", lambda: None)
    assert _cpu_split.blocks(256) is None


def test_a_forked_child_gets_a_pool_of_its_own(fake_threads):
    """After a fork the parent's block threads do not exist in the child: the child makes its own pool and lock
    (os.register_at_fork), so a split there runs instead of waiting forever."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    assert _cpu_split.run(lambda k: k, 2) == [0, 1]  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when the split ran
        ok = False
        try:
            ok = _cpu_split.run(lambda k: k + 1, 2) == [1, 2]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_runner_holds_openblas_to_one_thread_and_restores_it(fake_threads):
    """run(fn, n): results in block order, every block run while OpenBLAS has one thread (the first on the calling
    thread), the count restored after; an error in one block is raised after all blocks stopped, count restored."""
    import threading

    seen = []

    def fn(k):
        seen.append((k, fake_threads["n"], threading.current_thread() is threading.main_thread()))
        return k * 10

    fake_threads["n"] = 3
    assert _cpu_split.run(fn, 3) == [0, 10, 20]
    assert sorted(seen) == [(0, 1, True), (1, 1, False), (2, 1, False)]
    assert fake_threads["n"] == 3 and fake_threads["sets"] == [1, 3]
    done = []

    def bad(k):
        if k == 1:
            raise ValueError("block 1 failed")
        threading.Event().wait(0.05)
        done.append(k)
        return k

    with pytest.raises(ValueError, match="block 1 failed"):
        _cpu_split.run(bad, 3)
    assert sorted(done) == [0, 2] and fake_threads["n"] == 3


def _layer_run(blocks, monkeypatch, *, cell="gru", dtype="float32", T=7, B=50, I=3, H=16, lengths=None, seed=0):
    monkeypatch.setattr(_cpu, "MIN_STEP_ELEMS", 0)  # the kernels at these tiny shapes, every block too
    """A stacked bidirectional GRU (LSTM) layer's forward + backward with `blocks` (None: one call) -> host arrays
    [y, h_n, (c_n,) dx, dh_0, (dc_0,) grads...], the layer."""
    monkeypatch.setattr(_cpu_split, "blocks", blocks or (lambda B: None))
    layer = {"gru": gru_xp.GRU, "lstm": gru_xp.LSTM}[cell](I, H, num_layers=2, bidirectional=True, dtype=dtype,
                                                        seed=seed)
    randomize_params(layer, seed=1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    dsn = tuple(rng.standard_normal((4, B, H)).astype(dtype) for _ in range(layer.cell.STATES))
    layer.zero_grad()
    y, sn = layer.forward(x, lengths=lengths)
    dx, ds0 = layer.backward(dy, dsn if cell == "lstm" else dsn[0], tbptt=0 if lengths is not None else 3)
    states = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    out = [y, *states(sn), dx, *states(ds0)]  # tbptt (no lengths with it) above
    return [np.array(to_host(a)) for a in out] + [np.array(v) for v in layer.grads.values()], layer


@needs_seq
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_blocked_layer_against_one_call(monkeypatch, cell, n, with_lengths):
    """float32 (the one-call loops), blocks of uneven widths (not multiples of 16: a column's vector-tail handling
    may change, blocks' doc), variable lengths, truncated BPTT: y, h_n, dx, dh_0 and every weight grad to
    float32 rounding of the one call; the blocked cache read by the backward; the same bits on a second run."""
    lengths = random_lengths(7, 50, seed=3) if with_lengths else None
    ref, layer0 = _layer_run(None, monkeypatch, cell=cell, lengths=lengths)
    got, layer = _layer_run(_even(n), monkeypatch, cell=cell, lengths=lengths)
    again, _ = _layer_run(_even(n), monkeypatch, cell=cell, lengths=lengths)
    assert type(layer.caches[0]).__name__ == "BlockedCache" and type(layer0.caches[0]).__name__ != "BlockedCache"
    for k, (a, b, c) in enumerate(zip(got, ref, again)):
        np.testing.assert_array_equal(a, c)
        assert rel_err(a, b) < 2e-6, (k, rel_err(a, b))


@needs_seq
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_blocked_layer_at_a_benchmark_shape_is_bit_for_bit(monkeypatch, cell):
    """Blocks as the library cuts them at the seed shape's batch (2 of 128 columns, the block rule with 2 threads):
    y, h_n, dx, dh_0 bit for bit with the one call, the weight grads to rounding."""
    monkeypatch.setattr(_cpu_split._cpu_blas, "thread_control", lambda: (lambda: 2, lambda n: None))
    monkeypatch.delenv("GRU_XP_CPU_SPLIT", raising=False)
    rule = _cpu_split.blocks
    assert rule(256) == [(0, 128), (128, 256)]
    ref, _ = _layer_run(None, monkeypatch, cell=cell, T=5, B=256, I=1, H=70)
    got, layer = _layer_run(rule, monkeypatch, cell=cell, T=5, B=256, I=1, H=70)
    assert type(layer.caches[0]).__name__ == "BlockedCache"
    n_out = 4 if cell == "gru" else 6  # outputs, states and their grads; then the weight grads
    for k, (a, b) in enumerate(zip(got, ref)):
        if k < n_out:
            np.testing.assert_array_equal(a, b)
        else:
            assert rel_err(a, b) < 2e-6, (k, rel_err(a, b))


@pytest.mark.parametrize("cls", [gru_xp.GRU, gru_xp.LSTM])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_blocked_gradients_by_finite_differences_and_torch(monkeypatch, cls, with_lengths):
    """The blocked composition (column slices, per-block grads summed, dx and dh_0 joined) proven in float64: blocks
    forced for every dtype (blocks._parts), central finite differences with random weights, biases and upstream
    grads on every output, then torch's autograd; with and without variable lengths; with truncated BPTT against
    the one-call path (finite differences see the whole sequence)."""
    monkeypatch.setattr(blocks, "_parts", lambda cell, xp, p, x, reset_after: _even(2)(x.shape[1]))
    layer = cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    randomize_params(layer, seed=1)
    problem = random_problem(layer, T=4, B=5, seed=2)
    lengths = random_lengths(4, 5, seed=4) if with_lengths else None
    res = finite_difference(layer, *problem, lengths=lengths)
    assert type(layer.caches[0]).__name__ == "BlockedCache"
    assert max(rel_err(a, n) for a, n in res.values()) < 1e-7, res
    pytest.importorskip("torch")
    errs = torch_parity(layer, *problem, lengths=lengths)
    assert max(errs.values()) < 1e-10, errs
    if lengths is None:
        runs = []
        for parts in (_even(2), lambda B: None):
            monkeypatch.setattr(blocks, "_parts", lambda cell, xp, p, x, reset_after, parts=parts: parts(x.shape[1]))
            layer.zero_grad()
            layer.forward(problem[0], problem[1])
            dx, ds0 = layer.backward(problem[2], problem[3], tbptt=2)
            ds0 = ds0 if isinstance(ds0, tuple) else (ds0,)
            runs.append([np.array(to_host(a)) for a in (dx, *ds0)] + [np.array(v) for v in layer.grads.values()])
        for a, b in zip(*runs):
            assert rel_err(a, b) < 1e-13


@needs_seq
def test_blocked_outputs_are_the_callers_and_no_grad_and_diagnostics(monkeypatch):
    """y from one forward is not overwritten by the next (a fresh array each call); a forward under no_grad gives
    the same y with no cache; the blocked cache reads as whole-batch gate arrays (diagnostics' z, r) equal to the
    one-call cache's."""
    monkeypatch.setattr(_cpu_split, "blocks", _even(2))
    layer = gru_xp.GRU(3, 16, dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((5, 40, 3)).astype(np.float32) for _ in range(2))
    y1, h1 = layer.forward(x1)
    saved = np.array(y1), np.array(h1)
    layer.forward(x2)
    np.testing.assert_array_equal(y1, saved[0])
    np.testing.assert_array_equal(h1, saved[1])
    with layer.no_grad():
        y_ng, _ = layer.forward(x1)
    np.testing.assert_array_equal(y_ng, saved[0])
    assert layer.caches == []
    blocked = record(layer, x1, dy=rng.standard_normal((5, 40, 16)).astype(np.float32))
    monkeypatch.setattr(_cpu_split, "blocks", lambda B: None)
    whole = record(layer, x1, dy=rng.standard_normal((5, 40, 16)).astype(np.float32))
    for name in ("update z", "reset r"):
        np.testing.assert_array_equal(blocked.gates[name], whole.gates[name])
        np.testing.assert_array_equal(blocked.saturation[name], whole.saturation[name])
