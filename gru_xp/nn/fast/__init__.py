"""The fast path: twins of the reference cells (nn/gru.py, nn/lstm.py, nn/rnn.py), name for name, same contract,
built for speed and tested against them. `fast_cell_for` picks the twin of a reference cell module.

Legend: T steps, B batch, I inputs, H hidden; a slot is one (layer, direction) of a stacked layer.
"""
from __future__ import annotations

from contextlib import contextmanager

from . import _cpu, _cpu_split, blocks, gru, lstm, rnn
from ._common import Workspace, supports_out


def cpu_kernels(step_elems: int | None = None) -> str | None:
    """'numba X.Y.Z' when the fused CPU kernels (_cpu.py) are on (numba installed, GRU_XP_CPU_KERNELS not 0) and,
    with step_elems = B·H given, run for steps of that size on NumPy; else None."""
    if step_elems is not None and step_elems < _cpu.MIN_STEP_ELEMS:
        return None
    return _cpu.version()


@contextmanager
def portable_loops():
    """Inside: the NumPy fast path runs its portable ufunc loops instead of the fused CPU kernels (a comparison)."""
    with _kernels_replaced(None):
        yield


SEQUENCE_KERNELS = ("gru_bwd_seq_", "lstm_bwd_seq_", "gru_fwd_seq_", "lstm_fwd_seq_")  # whole-sequence kernels


@contextmanager
def per_step_kernels(forward_only: bool = False):
    """Inside: the fused CPU kernels run step by step, the whole-sequence loops (_cpu.py) off: a comparison bit for
    bit with the portable loops (the whole-sequence backwards sum dW in another order, the float32 forwards compute
    tanh their own way). forward_only: only the whole-sequence forward off (the backwards as usual)."""
    kern = _cpu.kernels()
    if kern is None:
        yield
        return
    off = ("gru_fwd_seq_", "lstm_fwd_seq_") if forward_only else SEQUENCE_KERNELS
    proxy = type(kern)(**{n: None if n.startswith(off) else f for n, f in vars(kern).items()})
    with _kernels_replaced(proxy):
        yield


@contextmanager
def forced_batch_blocks(n: int):
    """Inside: a GRU (reset_after) or LSTM layer on NumPy splits its batch into n blocks of near-equal width
    (fast/blocks.py) whatever its dtype and OpenBLAS's thread count (a comparison: `gru-xp check`)."""
    saved = blocks.FORCED.get("n")
    blocks.FORCED["n"] = n
    try:
        yield
    finally:
        if saved is None:
            blocks.FORCED.pop("n", None)
        else:
            blocks.FORCED["n"] = saved


def batch_split_runs() -> tuple[int, int]:
    """(calls, blocks): how many forwards and backwards in this process ran with the batch in blocks over the cores
    (fast/blocks.py), and how many blocks the last one had (0 before any). A benchmark row reads it around its
    timing to say whether (and how) the split ran."""
    return _cpu_split.STATE.get("runs", 0), _cpu_split.STATE.get("last_blocks", 0)


def batch_blocks(B: int) -> list | None:
    """[(lo, hi), ...]: the split's column blocks for a batch of B at OpenBLAS's present thread count
    (_cpu_split.blocks), or None: no split. A layer splits by them only where its one-call loops run (float32, the
    CPU kernels, reset_after for the GRU: fast/blocks.py)."""
    return _cpu_split.blocks(B)


def run_in_blocks(prepare, n: int) -> list:
    """The split's runner (_cpu_split.run): prepare(k, launch) for each block k on this thread, the calls it hands to
    launch(f, *args) then run all at once, block k's on a thread of its own, OpenBLAS at one thread meanwhile. For a
    measurement of work other than a cell's with the split's threads (benchmarks/gemm_floor.py)."""
    return _cpu_split.run(prepare, n)


def whole_sequence_backward(dtype_name: str = "float32", cell: str = "gru") -> bool:
    """True when the backward of `cell` ('gru': reset_after; 'lstm') runs as one call on NumPy's BLAS (_cpu.py,
    _cpu_blas.py) for that dtype."""
    kern = _cpu.kernels()
    return kern is not None and getattr(kern, f"{cell}_bwd_seq_{dtype_name}", None) is not None


def whole_sequence_forward(dtype_name: str = "float32", cell: str = "gru") -> bool:
    """True when the forward of `cell` ('gru': reset_after; 'lstm') runs as one call on NumPy's BLAS
    (_cpu.gru_fwd_sequence, _cpu.lstm_fwd_sequence): float32 only (their tanh is float32's, tanh32)."""
    kern = _cpu.kernels()
    return kern is not None and getattr(kern, f"{cell}_fwd_seq_{dtype_name}", None) is not None


@contextmanager
def counted_cpu_kernels():
    """Inside: the fused CPU kernels as usual, each call counted; yields {kernel name: calls} (so a comparison knows
    the kernels really ran). Empty when the kernels are off."""
    calls: dict = {}
    kern = _cpu.kernels()
    if kern is None:
        yield calls
        return

    def counted(name, f):
        def call(*a):
            calls[name] = calls.get(name, 0) + 1
            return f(*a)
        return call

    proxy = type(kern)(**{n: None if f is None else counted(n, f) for n, f in vars(kern).items()})
    with _kernels_replaced(proxy):
        yield calls


@contextmanager
def _kernels_replaced(kern):
    had, saved = "k" in _cpu.STATE, _cpu.STATE.get("k")
    _cpu.STATE["k"] = kern
    try:
        yield
    finally:
        if had:
            _cpu.STATE["k"] = saved
        else:
            _cpu.STATE.pop("k", None)


class FastCell:
    """A cell with the reference module's interface (GATES, STATES, forward, backward) plus a `slot` keyword:
    one Workspace per (layer, direction) slot. `reuse` keeps caches and outputs in the workspaces too."""

    def __init__(self, ref, fwd, bwd, reuse: bool = False, fwd_opts=None):
        self.ref, self._fwd, self._bwd, self.reuse = ref, fwd, bwd, reuse
        self._fwd_opts = dict(fwd_opts or {})
        self.GATES, self.STATES = ref.GATES, ref.STATES
        self.workspaces: dict = {}

    def _ws(self, slot) -> Workspace:
        ws = self.workspaces.get(slot)
        if ws is None:
            ws = self.workspaces[slot] = Workspace()
        return ws

    def forward(self, xp, p, x, state0, *, slot=0, keep_cache: bool = True, **opts):
        """keep_cache=False: a forward without gradients (only the states are stored; the cache is None)."""
        return self._fwd(xp, p, x, state0, ws=self._ws(slot), reuse=self.reuse, keep_cache=keep_cache,
                         **self._fwd_opts, **opts)

    def backward(self, xp, p, cache, dy, dstate_T, g, *, tbptt: int = 0, input_grad: bool = True, slot=0, **kw):
        """kw: the cell's own extra keywords (the LSTM's dc_steps)."""
        return self._bwd(xp, p, cache, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=self._ws(slot),
                         reuse=self.reuse, **kw)

    def nbytes(self) -> int:
        return sum(ws.nbytes() for ws in self.workspaces.values())


def fast_cell_for(cell_module, xp, *, reuse: bool = False):
    """The fast twin of a reference cell module for namespace xp, or None (then the reference runs)."""
    if not supports_out(xp):
        return None
    name = getattr(cell_module, "__name__", "").rsplit(".", 1)[-1]
    impl = _IMPLS.get(name)
    if impl is None:
        return None
    fwd, bwd, fwd_opts = impl
    return FastCell(cell_module, fwd, bwd, reuse=reuse, fwd_opts=fwd_opts)


# (forward, backward, forward options): the GRU and the LSTM keep their internal cache arrays in the slot's workspace
# (a layer holds a cache only until its next forward; see gru_forward's private_cache); the RNN's cache is its
# operands alone, whose rows are the output
_IMPLS = {"gru": (blocks.gru_forward, blocks.gru_backward, {"private_cache": True}),
          "lstm": (blocks.lstm_forward, blocks.lstm_backward, {"private_cache": True}),
          "rnn": (rnn.rnn_forward, rnn.rnn_backward, {})}


def adam_fused(xp, params: dict, b1: float, b2: float, eps: float, step_size: float, sqrt_c2: float,
               weight_decay: float):
    """For one Adam step (nn/optim.Adam.step, whose scalars these are): a function (p, g, m, v) -> bool that updates
    one parameter with _cpu_glue.adam_update (one call, bit for bit Adam.step's NumPy operations) and returns True,
    or returns False where it does not apply (an array not C-contiguous or of another dtype); None when the CPU
    kernels do not run for these parameters (not NumPy, numba off, or fewer than _cpu.MIN_STEP_ELEMS of them)."""
    if not _cpu.usable(xp, _cpu.MIN_STEP_ELEMS) or sum(int(p.size) for p in params.values()) < _cpu.MIN_STEP_ELEMS:
        return None  # the namespace first: a torch tensor's size is a method
    update, scalars = _cpu.kernels().adam_update, {}

    def step(p, g, m, v) -> bool:
        dt = p.dtype
        if not all(a.dtype == dt and a.flags.c_contiguous for a in (p, g, m, v)):
            return False
        coef = scalars.get(dt)
        if coef is None:  # the Python floats in this dtype, as NumPy casts them in Adam.step's ufunc calls; one
            # array, not 8 scalars: numba's dispatch types an array argument faster (~0.3 us a scalar)
            coef = scalars[dt] = xp.asarray([b1, 1.0 - b1, b2, 1.0 - b2, sqrt_c2, eps, step_size, weight_decay],
                                            dtype=dt)
        update(p, g, m, v, coef, bool(weight_decay))
        return True

    return step
