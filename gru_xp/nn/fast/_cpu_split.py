"""The batch in column blocks over the cores: each block a problem of its own (its own arrays), its compiled calls run
on a thread of its own, NumPy's OpenBLAS held to one thread meanwhile. Used by fast/blocks.py for the GRU's and the
LSTM's float32 one-call loops (_cpu.gru_fwd_sequence, _cpu.gru_bwd_sequence and the LSTM's), each a GIL-free call.

Why (benchmarks/NOTES.md, "Ninth session"): at the default thread count OpenBLAS splits each step's GEMMs over the
cores, but the gate math between them runs on one; and after each multi-threaded GEMM OpenBLAS's idle workers spin
(~0.1 s, its THREAD_TIMEOUT) on the cores another thread would need, so a second thread of ours ran at half speed.
With OpenBLAS at one thread its workers are never woken, and the blocks run GEMMs and gate math alike on every core
with no handoff between them: a block's columns are independent through the whole sequence. Each block has arrays
of its own: blocks of columns inside shared (rows, B) arrays ran 2x slower than apart (the cores' prefetchers pull
the other block's lines of every row).

How a split runs (run): every block's Python (buffers, views, small prep kernels) runs on the calling thread, block
after block, its compiled calls recorded, not run; then all blocks' calls start at once, block 0's on the calling
thread and each other block's on a worker thread of its own. The workers wait for work spinning (GIL-free, a
sched_yield between looks, ~1 ms) before they sleep, and the caller spins while it waits for them. On Linux, when the
blocks take every CPU the process may run on (the default: OpenBLAS's threads = cores), during a run the calling
thread is held to the CPU it is on and each worker to another of them (GRU_XP_CPU_PIN=0: left to the scheduler).
Why all three (benchmarks/NOTES.md, "Eleventh session"; at the seed shape on a 2-vCPU virtual machine they took the
training step from ~3.9 to ~2.6 ms as benchmarked): two threads running Python take turns on the GIL, and each
compiled call one makes lets the other in; waking a sleeping thread through a lock cost ~50-100 us there (a thread
pool's submit and result: 66-135 us a round trip), several a step; and a virtual machine's halted CPU reads as busy
to its guest's scheduler, so a thread woken after a pause was put on the CPU of the thread that woke it, where the
two ran one after the other for ~40 ms, until the load balancer moved one.

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
from dataclasses import dataclass, field
from typing import Any

from . import _cpu, _cpu_blas

MIN_COLS = 64  # columns a block keeps at least: the step kernels' vector loops run 64 columns at a time
WORKER_SPIN = 2000  # sched_yield calls a worker makes looking for work before it sleeps (~1 ms at ~0.5 us each)
CALLER_SPIN = 50000  # ... and the calling thread waiting for the workers (~25 ms: they run what it runs)
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


def run(prepare, n: int) -> list:
    """prepare(k, launch) for k = 0, ..., n-1 on this thread: block k's Python, its compiled calls handed to
    launch(f, *args) (recorded in order, not run yet). Then every block's calls at once, block 0's on this thread and
    block k's on worker k, OpenBLAS at one thread until all have run (its count restored after, also on an error).
    Returns [what prepare returned for block 0, ...] once every call has run; an error in a block's calls is raised
    once every block stopped. What prepare returns may be views of arrays the calls fill: read them after."""
    ctl = _cpu_blas.thread_control()
    get, put = ctl if ctl is not None else (lambda: 0, lambda count: None)  # no OpenBLAS: nothing to hold
    with _LOCK:
        STATE["runs"], STATE["last_blocks"] = STATE.get("runs", 0) + 1, n  # what ran (fast.batch_split_runs)
        calls = [[] for _ in range(n)]
        results = [prepare(k, _recorder(calls[k])) for k in range(n)]
        crew = _crew(n - 1)
        crew.wait(crew.size)  # a run interrupted while it waited (Ctrl-C) may have left a worker busy
        mask = crew.place(n)
        threads = get()
        put(1)
        try:
            crew.start(calls[1:])
            try:
                _call_all(calls[0])
            finally:
                errors = crew.wait(n - 1)  # every block has stopped
            for e in errors:
                if e is not None:
                    raise e
            return results
        finally:
            put(threads)
            if mask is not None:
                crew.release(mask)


def _recorder(calls: list):
    def launch(f, *args):
        calls.append((f, args))
    return launch


def _call_all(calls: list) -> None:
    for f, args in calls:
        f(*args)


@dataclass
class _Crew:
    """Worker threads 0..size-1 (block k's calls go to worker k-1), started by start_threads(). go[w] counts the jobs
    given to worker w, done[w] those it finished (machine integers in array('q')s, which the GIL-free spin reads);
    the rest under cond."""

    size: int
    go: Any = None
    done: Any = None
    cond: threading.Condition = field(default_factory=threading.Condition)
    jobs: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    retired: bool = False
    cpus: list = field(default_factory=list)  # the CPUs this process may run on (Linux, where placed), else []
    threads: list = field(default_factory=list)
    caller_cpu: int = -1  # the CPU the calling thread ran on when the workers were last placed

    def __post_init__(self):
        array = importlib.import_module("array").array  # machine integers the compiled spin can read
        self.go, self.done = array("q", [0] * self.size), array("q", [0] * self.size)
        self.jobs, self.errors = [None] * self.size, [None] * self.size

    def start_threads(self, placeable: bool) -> None:
        """The worker threads (daemons: a process may end while they sleep); placeable: place() may pin them."""
        self.threads = [threading.Thread(target=self.work, args=(w,), name=f"gru_xp-block{w + 1}", daemon=True)
                        for w in range(self.size)]
        for t in self.threads:
            t.start()
        if placeable:
            self.cpus = sorted(os.sched_getaffinity(0))

    def retire(self) -> None:
        """The workers end (when they next look for work)."""
        with self.cond:
            self.retired = True
            self.cond.notify_all()

    def place(self, n: int):
        """Linux, a split of n blocks over every CPU the process may run on: the calling thread held to the CPU it
        runs on until release(), each worker pinned to one of the process's other CPUs (round robin; re-pinned only
        when the caller has moved). Returns the caller's CPU mask to restore, or None (nothing held). Why: a virtual
        machine's halted CPU reads as busy to the guest's scheduler, so a thread woken after a pause was put on the
        CPU of the thread that woke it, and the two ran one after the other until the load balancer moved one, ~40
        ms later (benchmarks/NOTES.md, "Eleventh session"). Why only when the blocks take every CPU: with CPUs to
        spare (other processes' splits, Dask workers) we cannot know which are free, and pinned threads of two
        processes could stack on one CPU that no load balancer may move them from; workers pinned before are set
        free again."""
        cpu = _current_cpu()
        if cpu < 0 or len(self.cpus) < 2 or len(self.cpus) > n or \
                os.environ.get("GRU_XP_CPU_PIN", "1") == "0":
            self.unpin()
            return None
        try:
            mask = os.sched_getaffinity(0)
            if cpu != self.caller_cpu:
                others = [c for c in self.cpus if c != cpu] or self.cpus
                for w, t in enumerate(self.threads):
                    os.sched_setaffinity(t.native_id, {others[w % len(others)]})
                self.caller_cpu = cpu
            os.sched_setaffinity(0, {cpu})
        except OSError:  # a CPU taken away since (a cpuset): leave the placement to the scheduler
            self.caller_cpu = cpu  # so that unpin() frees the workers pinned before the error
            self.unpin()
            self.cpus = []
            return None
        return mask

    def unpin(self) -> None:
        """Workers pinned by an earlier place() free to run on every CPU of the process again."""
        if self.caller_cpu < 0:
            return
        self.caller_cpu = -1
        try:
            for t in self.threads:
                os.sched_setaffinity(t.native_id, self.cpus)
        except OSError:
            self.cpus = []

    def release(self, mask) -> None:
        """The caller's CPU mask as it was before place()."""
        try:
            os.sched_setaffinity(0, mask)
        except OSError:
            pass

    def start(self, jobs: list) -> None:
        with self.cond:
            for w, job in enumerate(jobs):
                self.jobs[w], self.errors[w] = job, None
                self.go[w] += 1
            self.cond.notify_all()

    def wait(self, m: int) -> list:
        """Wait until workers 0..m-1 finished their jobs; their errors (None where none)."""
        for w in range(m):
            if not _spin(self.done, w, self.go[w], CALLER_SPIN):
                with self.cond:
                    while self.done[w] != self.go[w]:
                        self.cond.wait()
        with self.cond:  # (the lock also orders the workers' writes before the caller's reads)
            return self.errors[:m]

    def work(self, w: int) -> None:
        """Worker w's loop: wait for a job (spin, then sleep), run it, say so."""
        seen = 0
        while True:
            want = seen + 1
            if not _spin(self.go, w, want, WORKER_SPIN):
                with self.cond:
                    while self.go[w] != want and not self.retired:
                        self.cond.wait()
            with self.cond:
                if self.retired:
                    return
                job = self.jobs[w]
            seen = want
            err = None
            try:
                _call_all(job)
            except BaseException as e:  # raised on the calling thread, once every block stopped
                err = e
            with self.cond:
                self.jobs[w], self.errors[w] = None, err
                self.done[w] = seen
                self.cond.notify_all()


def _crew(size: int) -> _Crew:
    """The process's workers, at least `size` of them (a bigger crew replaces a smaller one, whose threads end)."""
    crew = STATE.get("crew")
    if crew is None or crew.size < size:
        if crew is not None:
            crew.retire()
        if "spin" not in STATE:  # found here, on the calling thread, before any worker looks
            STATE["spin"] = _spinner()
        if "getcpu" not in STATE:
            STATE["getcpu"] = _libc_function("sched_getcpu")
        crew = STATE["crew"] = _Crew(size)
        crew.start_threads(placeable=hasattr(os, "sched_setaffinity") and STATE["getcpu"] is not None)  # Linux
    return crew


def _current_cpu() -> int:
    """The CPU the calling thread runs on (the C library's sched_getcpu), or -1."""
    getcpu = STATE.get("getcpu")
    return getcpu() if getcpu is not None else -1


def _spin(flags, i: int, value: int, tries: int) -> bool:
    """flags[i] == value, looked at up to `tries` times with a sched_yield between, GIL-free (_cpu_glue.spin_until);
    where that is not available, one look."""
    spin = STATE.get("spin")  # set by _crew
    return spin(flags, i, value, tries) if spin else flags[i] == value


def _spinner():
    """spin(flags, i, value, tries) on the compiled kernel and the C library's sched_yield, or False."""
    kern = _cpu.kernels()
    if kern is None or getattr(kern, "spin_until", None) is None:
        return False
    yield_fn = _libc_function("sched_yield")
    if yield_fn is None:
        return False
    return lambda flags, i, value, tries: kern.spin_until(yield_fn, flags, i, value, tries)


def _libc_function(name: str):
    """The C library's int name(void) as a ctypes function (POSIX), or None."""
    if os.name != "posix":
        return None
    ctypes = importlib.import_module("ctypes")
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], ctypes.c_int
    return fn


def _cores() -> int:
    """Cores this process may run on: more blocks than that would take turns on them."""
    if "cores" not in STATE:
        try:
            STATE["cores"] = len(os.sched_getaffinity(0))
        except AttributeError:  # no affinity masks (macOS, Windows)
            STATE["cores"] = os.cpu_count() or 1
    return STATE["cores"]


def _after_fork() -> None:
    """In a forked child: the parent's worker threads and a lock held by one of them do not exist there."""
    global _LOCK
    _LOCK = threading.Lock()
    STATE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
