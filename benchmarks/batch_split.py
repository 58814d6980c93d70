"""Would splitting the batch across threads meet issue 16's 2-thread targets? (a measurement, not a code path)

The GRU layer's fast forward + backward (gru_xp/nn/fast/gru.py, fused CPU kernels when numba is there) on the whole
batch, against the same on two halves of the batch, each with its own workspace and grads, with OpenBLAS held to one
thread (threadpoolctl) so that the halves, not BLAS, use the cores. Timed in one process, interleaved, medians, each
block after a 0.3 s pause and one untimed call (as `gru-xp bench` does at 2+ threads):

  full      the whole batch, BLAS at its default thread count (what the layer does today)
  full_1    the whole batch, BLAS on one thread
  half_1    one half alone, BLAS on one thread: what each thread of `split` would take if the halves did not
            slow each other down (the ceiling of the idea on this machine)
  split     both halves at once in two Python threads, BLAS on one thread each (y and dx concatenated after)
  torch     torch.nn.GRU forward + backward at the default thread count

Needs the test extra (torch, threadpoolctl): `pip install -e '.[test]'`. Results of 2026-11-30 and what they mean:
benchmarks/NOTES.md, "Splitting the batch across threads, measured again on the idle machine".

`--processes` adds the same half in two concurrent processes (no shared GIL): the time each takes against half_1
separates what the GIL costs from what the machine's cores cost when both are busy.

    python benchmarks/batch_split.py                       # the seed shape and (100, 128, 8, 256)
    python benchmarks/batch_split.py --shapes 50,64,1,32 --processes --json benchmarks/results/batch-split.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import array_api_compat.numpy as xp
import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from gru_xp.bench_worker import SETTLE_S, interleaved, median
from gru_xp.nn._cell import CellParams
from gru_xp.nn.fast import Workspace
from gru_xp.nn.fast.gru import gru_backward, gru_forward


class Problem:
    """One GRU layer's inputs, weights and upstream grads at (T, B, I, H), float32, seeded."""

    def __init__(self, T, B, I, H):
        rng = np.random.default_rng(0)
        G = 3 * H

        def rand(*shape):
            return (0.1 * rng.standard_normal(shape)).astype(np.float32)

        self.p = CellParams(rand(G, I), rand(G, H), rand(G), rand(G))
        self.x, self.dy = rand(T, B, I), rand(T, B, H)  # (T, B, I), (T, B, H)
        self.h0 = np.zeros((B, H), np.float32)  # (B, H)
        self.B = B

    def grads(self):
        return CellParams(*(np.zeros_like(a) for a in (self.p.w_ih, self.p.w_hh, self.p.b_ih, self.p.b_hh)))

    def run(self, lo, hi, ws, g):
        """forward + backward of batch rows lo:hi -> (y (T, b, H), dx (T, b, I))."""
        y, _, cache = gru_forward(xp, self.p, self.x[:, lo:hi], (self.h0[lo:hi],), ws=ws, private_cache=True)
        dx, _ = gru_backward(xp, self.p, cache, self.dy[:, lo:hi], (None,), g, ws=ws)
        return y, dx


def sides(T, B, I, H):
    prob = Problem(T, B, I, H)
    blas = ThreadpoolController().select(internal_api="openblas")
    half = B // 2
    ws_full, ws_a, ws_b = Workspace(), Workspace(), Workspace()
    g_full, g_a, g_b = prob.grads(), prob.grads(), prob.grads()
    pool = ThreadPoolExecutor(1)

    def full():
        prob.run(0, B, ws_full, g_full)

    def full_1():
        with blas.limit(limits=1):
            prob.run(0, B, ws_full, g_full)

    def half_1():
        with blas.limit(limits=1):
            prob.run(0, half, ws_a, g_a)

    def split():
        with blas.limit(limits=1):
            other = pool.submit(prob.run, half, B, ws_b, g_b)
            ya, dxa = prob.run(0, half, ws_a, g_a)
            yb, dxb = other.result()
        np.concatenate([ya, yb], axis=1), np.concatenate([dxa, dxb], axis=1)  # what the layer would return

    rnn = torch.nn.GRU(I, H)
    tx, tdy = torch.from_numpy(prob.x).requires_grad_(True), torch.from_numpy(prob.dy)

    def torch_side():
        rnn.zero_grad(set_to_none=True)
        tx.grad = None
        y, _ = rnn(tx)
        y.backward(tdy)

    return {"full": full, "full_1": full_1, "half_1": half_1, "split": split, "torch": torch_side}


def half_in_process(shape, seconds: float) -> float:
    """Child mode: one half at one BLAS thread, timed for `seconds`; prints its median ms."""
    T, B, I, H = shape
    prob = Problem(T, B, I, H)
    ws, g = Workspace(), prob.grads()
    with ThreadpoolController().limit(limits=1, user_api="blas"):
        for _ in range(3):
            prob.run(0, B // 2, ws, g)
        out, end = [], time.time() + seconds
        while time.time() < end:
            t0 = time.perf_counter()
            prob.run(0, B // 2, ws, g)
            out.append((time.perf_counter() - t0) * 1e3)
    return median(out)


def processes(shape, seconds: float) -> dict:
    """The half alone in one process, then in two concurrent processes: {alone_ms, concurrent_ms: [a, b]}."""
    cmd = [sys.executable, __file__, "--child", ",".join(map(str, shape)), "--seconds", str(seconds)]
    alone = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return {"alone_ms": alone, "concurrent_ms": [float(p.communicate()[0]) for p in procs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["10,256,1,70", "100,128,8,256"], help="T,B,I,H ...")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--min-block", type=float, default=0.3)
    ap.add_argument("--processes", action="store_true", help="also time the half in two concurrent processes")
    ap.add_argument("--seconds", type=float, default=10.0, help="per child process (--processes)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(half_in_process(tuple(int(v) for v in a.child.split(",")), a.seconds))
        return 0
    info = ThreadpoolController().info()
    rows = []
    print("| T, B, I, H | full | full_1 | half_1 | split | torch | full / torch | split / torch | split / half_1 |"
          + (" half: alone / 2 processes |" if a.processes else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if a.processes else ""))
    for s in a.shapes:
        shape = tuple(int(v) for v in s.split(","))
        timed = interleaved({k: (f, lambda: None) for k, f in sides(*shape).items()}, a.repeats, a.min_block,
                            settle=SETTLE_S)
        ms = {k: v["median_ms"] for k, v in timed.items()}
        row = {"shape": shape, "ms": ms}
        line = (f"| {s.replace(',', ', ')} | " + " | ".join(f"{ms[k]:.2f}" for k in ms)
                + f" | {ms['full'] / ms['torch']:.2f} | {ms['split'] / ms['torch']:.2f} | {ms['split'] / ms['half_1']:.2f} |")
        if a.processes:
            row["processes"] = pr = processes(shape, a.seconds)
            line += f" {pr['alone_ms']:.2f} / {', '.join(f'{v:.2f}' for v in pr['concurrent_ms'])} |"
        rows.append(row)
        print(line, flush=True)
    if a.json:
        out = {"date": time.strftime("%Y-%m-%d"), "threadpools": [{k: i.get(k) for k in ("internal_api", "prefix",
               "num_threads", "version")} for i in info], "numpy": np.__version__, "torch": torch.__version__,
               "rows": rows}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
