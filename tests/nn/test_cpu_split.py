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


def test_a_forked_child_gets_workers_of_its_own(fake_threads):
    """After a fork the parent's worker threads do not exist in the child: the child starts its own workers and lock
    (os.register_at_fork), so a split there runs instead of waiting forever."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    assert _cpu_split.run(lambda k, launch: k, 2) == [0, 1]  # the parent's workers exist
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when the split ran its calls
        ok = False
        try:
            out = []
            ok = _cpu_split.run(lambda k, launch: launch(out.append, k + 1), 2) == [None, None]
            ok = ok and sorted(out) == [1, 2]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_runner_prepares_here_runs_the_calls_at_once_and_restores_openblas(fake_threads):
    """run(prepare, n): prepare(k, launch) for every block in order on the calling thread, OpenBLAS untouched; then
    the launched calls, each block's in its order on one thread (block 0's on the calling thread), all with OpenBLAS
    at one thread; results in block order; the count restored after."""
    import threading

    prepared, ran = [], []

    def call(k, i):
        ran.append((k, i, fake_threads["n"], threading.current_thread() is threading.main_thread(),
                    threading.get_ident()))

    def prepare(k, launch):
        prepared.append((k, fake_threads["n"], threading.current_thread() is threading.main_thread()))
        for i in range(3):
            launch(call, k, i)
        return k * 10

    fake_threads["n"] = 3
    assert _cpu_split.run(prepare, 3) == [0, 10, 20]
    assert prepared == [(0, 3, True), (1, 3, True), (2, 3, True)]  # before any call, OpenBLAS as it was
    assert sorted(r[:4] for r in ran) == [(k, i, 1, k == 0) for k in range(3) for i in range(3)]
    for k in range(3):  # a block's calls in launch order, on one thread each, a different thread per block
        mine = [r for r in ran if r[0] == k]
        assert [r[1] for r in mine] == [0, 1, 2] and len({r[4] for r in mine}) == 1
    assert len({r[4] for r in ran}) == 3
    assert fake_threads["n"] == 3 and fake_threads["sets"] == [1, 3]


def test_runner_raises_a_blocks_error_after_every_block_stopped(fake_threads):
    """An error in one block's calls is raised on the calling thread once the others have finished (their later
    calls still run: they write only their own block's arrays); the count restored. An error while preparing:
    no call runs, OpenBLAS untouched."""
    import threading

    done = []

    def fail():
        raise ValueError("block 1 failed")

    def slow(k):
        threading.Event().wait(0.05)
        done.append(k)

    def prepare(k, launch):
        launch(fail) if k == 1 else launch(slow, k)
        return k

    with pytest.raises(ValueError, match="block 1 failed"):
        _cpu_split.run(prepare, 3)
    assert sorted(done) == [0, 2] and fake_threads["n"] == 4 and fake_threads["sets"] == [1, 4]

    def bad_prepare(k, launch):
        launch(done.append, 99)
        if k == 1:
            raise KeyError("prepare failed")
        return k

    with pytest.raises(KeyError, match="prepare failed"):
        _cpu_split.run(bad_prepare, 2)
    assert 99 not in done and fake_threads["sets"] == [1, 4]
    assert _cpu_split.run(lambda k, launch: launch(done.append, k), 2) == [None, None]  # the workers still serve


def _needs_cpu_affinity():
    """Skips the test without Linux CPU affinity that this process may set, two CPUs and sched_getcpu."""
    import os

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2 or \
            _cpu_split._libc_function("sched_getcpu") is None:
        pytest.skip("needs Linux CPU affinity and two CPUs")
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
    except OSError:
        pytest.skip("this process may not set CPU affinity")


def _no_workers():
    """The process's workers retired (their threads end): the next run starts new ones."""
    old = _cpu_split.STATE.pop("crew", None)
    if old is not None:
        old.retire()


@pytest.mark.parametrize("spin", [True, False])
def test_workers_woken_after_they_slept_and_without_the_spin(fake_threads, monkeypatch, spin):
    """A worker spins a short while for work, then sleeps: a later run wakes it; without the compiled spin (no numba,
    not POSIX) the workers and the caller wait on the condition only. Either way every call runs, and a bigger split
    replaces the workers (the old ones end)."""
    import threading
    import time

    monkeypatch.setattr(_cpu_split, "WORKER_SPIN", 1)
    monkeypatch.setattr(_cpu_split, "CALLER_SPIN", 1)
    _no_workers()  # an earlier test's may be bigger
    if not spin:
        monkeypatch.setitem(_cpu_split.STATE, "spin", False)
    out = []
    for n in (2, 2, 3, 2):
        assert _cpu_split.run(lambda k, launch: launch(out.append, (n, k)), n) == [None] * n
        time.sleep(0.02)  # past the spin: the workers sleep
    assert sorted(out) == sorted((n, k) for n in (2, 2, 3, 2) for k in range(n))
    deadline = time.time() + 5
    while time.time() < deadline:
        names = [t.name for t in threading.enumerate() if t.name.startswith("gru_xp-block")]
        if len(names) == 2:
            break
        time.sleep(0.01)
    assert sorted(names) == ["gru_xp-block1", "gru_xp-block2"]  # the crew of 1 ended, the crew of 2 serves


@pytest.mark.parametrize("pin", ["1", "0"])
def test_threads_held_to_cpus_of_their_own_during_a_run(fake_threads, monkeypatch, pin):
    """Linux, 2+ CPUs, one block a CPU: during a run the calling thread is held to the CPU it runs on and each worker
    to another one (a virtual machine's scheduler put a woken worker on the caller's CPU); after it the caller's CPU
    mask is what it was. GRU_XP_CPU_PIN=0: nobody's mask changes."""
    import os
    import threading

    _needs_cpu_affinity()
    monkeypatch.setenv("GRU_XP_CPU_PIN", pin)
    _no_workers()  # new workers start with the caller's mask
    before = os.sched_getaffinity(0)
    seen = {}

    def note(k):
        seen[k] = (os.sched_getaffinity(0), threading.current_thread().name)

    n = len(before)  # a block for every CPU of the process
    for _ in range(2):  # the second run re-uses the placement
        assert _cpu_split.run(lambda k, launch: launch(note, k), n) == [None] * n
        assert os.sched_getaffinity(0) == before
        masks = [seen[k][0] for k in range(n)]
        assert seen[0][1] == threading.main_thread().name
        assert all(seen[k][1].startswith("gru_xp-block") for k in range(1, n))
        if pin == "1":  # one CPU each, every one of the process's CPUs in use
            assert all(len(m) == 1 for m in masks) and set().union(*masks) == before
        else:
            assert all(m == before for m in masks)


def test_a_run_waits_for_work_an_interrupted_run_left(fake_threads):
    """A run interrupted while it waited (Ctrl-C) leaves its workers finishing their calls: the next run waits for
    them before it hands out its own, so no call of either is lost or run twice."""
    import time

    out = []
    _cpu_split.run(lambda k, launch: None, 2)
    crew = _cpu_split.STATE["crew"]
    crew.start([[(time.sleep, (0.1,)), (out.append, ("old",))]])  # as if the last run left without waiting
    assert _cpu_split.run(lambda k, launch: launch(out.append, k), 2) == [None, None]
    assert sorted(out, key=str) == [0, 1, "old"]


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


def test_no_cpus_held_where_the_blocks_leave_cpus_to_spare(fake_threads, monkeypatch):
    """With more CPUs than blocks (other processes' splits, Dask workers may use the rest) nothing is pinned, and
    workers pinned by an earlier run are set free: pinned threads of two processes could stack on one CPU."""
    import os

    _needs_cpu_affinity()
    monkeypatch.setenv("GRU_XP_CPU_PIN", "1")
    _no_workers()
    before = os.sched_getaffinity(0)
    seen = {}

    def note(k):
        seen[k] = os.sched_getaffinity(0)

    n = len(before)
    _cpu_split.run(lambda k, launch: launch(note, k), n)
    assert len(seen[1]) == 1  # a block for every CPU of the process: pinned
    crew = _cpu_split.STATE["crew"]
    monkeypatch.setattr(crew, "cpus", sorted(before) + [max(before) + 1])  # as if the process had a CPU to spare
    _cpu_split.run(lambda k, launch: launch(note, k), n)
    assert all(seen[k] == before for k in range(n)) and os.sched_getaffinity(0) == before


def test_the_compiled_spin_sees_a_flag_another_thread_sets():
    """_cpu_glue.spin_until: True at once when the flag holds the value, False after its looks when it never does,
    True when another thread sets it while it looks (it reads the flag again after every sched_yield)."""
    import array
    import threading

    if importlib.util.find_spec("numba") is None or _cpu.kernels() is None or \
            _cpu_split._libc_function("sched_yield") is None:
        pytest.skip("needs numba and the C library's sched_yield")
    spin = _cpu_split._spinner()
    flags = array.array("q", [0, 5])
    assert spin(flags, 1, 5, 1) and not spin(flags, 0, 1, 100)
    timer = threading.Timer(0.02, flags.__setitem__, (0, 1))
    timer.start()
    try:
        assert spin(flags, 0, 1, 10 ** 7)  # seconds of looks at most: returns once the timer has set it
    finally:
        timer.cancel()


def test_a_failed_placement_frees_the_workers_it_pinned(fake_threads, monkeypatch):
    """If setting a CPU mask fails midway (a CPU taken away by a cpuset), workers pinned before the error are set free
    and placement is off from then on; the run still runs every call."""
    import os

    _needs_cpu_affinity()
    monkeypatch.setenv("GRU_XP_CPU_PIN", "1")
    _no_workers()
    before = os.sched_getaffinity(0)
    n = len(before) + 1  # one more block than CPUs: a worker pinned, then the caller's own pin fails
    real = os.sched_setaffinity
    calls = []

    def flaky(pid, mask):
        calls.append((pid, set(mask)))
        if pid == 0 and len(set(mask)) == 1:
            raise OSError("CPU taken away")
        return real(pid, mask)

    monkeypatch.setattr(os, "sched_setaffinity", flaky)
    seen = {}
    assert _cpu_split.run(lambda k, launch: launch(lambda: seen.__setitem__(k, os.sched_getaffinity(0))), n) == \
        [None] * n
    assert all(seen[k] == before for k in range(n)) and os.sched_getaffinity(0) == before
    assert any(len(m) == 1 for pid, m in calls if pid != 0)  # a worker had been pinned, and was freed
    assert _cpu_split.STATE["crew"].cpus == []
