"""The batch in column blocks over the cores: each block a problem of its own (its own arrays), run on a thread of
its own, NumPy's OpenBLAS held to one thread meanwhile. Used by fast/blocks.py for the GRU's and the LSTM's float32
one-call loops (_cpu.gru_fwd_sequence, _cpu.gru_bwd_sequence and the LSTM's), each a GIL-free call.

Why (benchmarks/NOTES.md, "Ninth session"): at the default thread count OpenBLAS splits each step's GEMMs over the
cores, but the gate math between them runs on one; and after each multi-threaded GEMM OpenBLAS's idle workers spin
(~0.1 s, its THREAD_TIMEOUT) on the cores another thread would need, so a second thread of ours ran at half speed.
With OpenBLAS at one thread its workers are never woken, and the blocks run GEMMs and gate math alike on every core
with no handoff between them: a block's columns are independent through the whole sequence. Each block has arrays
of its own: blocks of columns inside shared (rows, B) arrays ran 2x slower than apart (the cores' prefetchers pull
the other block's lines of every row).

Blocks: one per core that OpenBLAS's threads would use (its count, the user's: OPENBLAS_NUM_THREADS, threadpoolctl;
at most the cores), each at least MIN_COLS columns wide; one thread, or a batch too narrow to give every such core a
block: no split. Why not fewer blocks than cores: the split holds OpenBLAS to one thread, so its GEMMs would leave the
other cores idle, where the one call's GEMMs use them all; the split was measured to win where its blocks cover every
core (benchmarks/NOTES.md), not where they leave some idle. While blocks run, NumPy GEMMs on another Python
thread get OpenBLAS's one thread too (its count is process-wide); splits started from several Python threads take
turns (a lock). GRU_XP_CPU_SPLIT=0 turns it off.
"""
from __future__ import annotations

import importlib
import os
import threading

from . import _cpu_blas

MIN_COLS = 64  # columns a block keeps at least: the step kernels' vector loops run 64 columns at a time
STATE: dict = {}
_LOCK = threading.Lock()


def blocks(B: int) -> list | None:
    """[(lo, hi), ...]: the batch's column blocks, one a core OpenBLAS would use (edges on multiples of 16), or None:
    the one call (see the module's doc)."""
    ctl = _cpu_blas.thread_control()
    if ctl is None or os.environ.get("GRU_XP_CPU_SPLIT", "1") == "0":
        return None
    n = min(int(ctl[0]()), _cores())  # one block per core OpenBLAS's GEMMs would use
    if n < 2 or B // MIN_COLS < n:
        return None
    edges = [0] + [(B * k // n) // 16 * 16 for k in range(1, n)] + [B]
    return list(zip(edges[:-1], edges[1:]))


def run(fn, n: int) -> list:
    """[fn(0), ..., fn(n-1)], run at once: fn(0) on this thread, the others on the pool's, with OpenBLAS at one
    thread until all have returned (its count restored after, also on an error, raised once every block stopped)."""
    ctl = _cpu_blas.thread_control()
    get, put = ctl if ctl is not None else (lambda: 0, lambda count: None)  # no OpenBLAS: nothing to hold
    with _LOCK:
        STATE["runs"], STATE["last_blocks"] = STATE.get("runs", 0) + 1, n  # what ran (fast.batch_split_runs)
        threads = get()
        put(1)
        try:
            futures = [_pool(n - 1).submit(fn, k) for k in range(1, n)]
            try:
                first = fn(0)
            finally:
                errors = [f.exception() for f in futures]  # waits for every block
            for e in errors:
                if e is not None:
                    raise e
            return [first] + [f.result() for f in futures]
        finally:
            put(threads)


def _cores() -> int:
    """Cores this process may run on: more blocks than that would take turns on them."""
    if "cores" not in STATE:
        try:
            STATE["cores"] = len(os.sched_getaffinity(0))
        except AttributeError:  # no affinity masks (macOS, Windows)
            STATE["cores"] = os.cpu_count() or 1
    return STATE["cores"]


def _after_fork() -> None:
    """In a forked child: the parent's pool threads and a lock held by one of them do not exist there."""
    global _LOCK
    _LOCK = threading.Lock()
    STATE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _pool(n: int):
    """A ThreadPoolExecutor of n workers at least, kept for the process (its threads sleep between calls)."""
    pool = STATE.get("pool")
    if pool is None or STATE["workers"] < n:
        # concurrent.futures from the standard library, loaded as this floor loads its optional modules
        futures = importlib.import_module("concurrent.futures")
        if pool is not None:
            pool.shutdown(wait=True)
        pool = STATE["pool"] = futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="gru_xp-block")
        STATE["workers"] = n
    return pool
