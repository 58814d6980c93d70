"""How far is a GRU training step from its BLAS floor? (issue 6: where the CPU ratios stop)

For each CPU row of `gru-xp bench`, times on one thread, in one process:
  step   the whole gru_xp training step (fast path, as `gru-xp bench` times it),
  gemms  only the step's three recurrent GEMMs per time step, with the fast path's shapes and layouts
         (K = H+I+1: u_t = [h_{t-1}; x_t; 1]): forward W (3H, K) @ u_t (K, B), backward W_hh^T (H, 3H) @
         dg (3H, B), and the weight-grad GEMMs dg (3H, B) @ u_t^T (B, K) (batched per chunk), nothing else,
  torch  PyTorch's training step (as in `gru-xp bench`),
and prints both times as a fraction of torch's. The GEMMs already run near single-core peak (see the GFLOP/s
column), so `gemms / torch` is a lower bound no NumPy implementation of this algorithm can beat, and
`step - gemms` is what the elementwise work, the input projection, the head and Adam cost.

    python benchmarks/gemm_floor.py            # all GRU rows
    python benchmarks/gemm_floor.py H64 H128   # some rows
"""
import os
import sys

os.environ.update({k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})

import time  # noqa: E402

import numpy as np  # noqa: E402

from gru_xp.bench_worker import CPU_ROWS, gx_step, median, torch_step  # noqa: E402


def _time(fn, seconds=0.3, repeats=7):
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return median(out)


def gemms(T, B, I, H, chunk=16):
    rng = np.random.default_rng(0)
    f32 = np.float32
    K = H + I + 1
    w = rng.standard_normal((3 * H, K)).astype(f32)  # (3H, K)
    wt = rng.standard_normal((H, 3 * H)).astype(f32)  # (H, 3H)
    h = rng.standard_normal((T + 1, K, B)).astype(f32)  # (T+1, K, B)
    g = np.empty((T, 3 * H, B), f32)  # (T, 3H, B)
    dh = np.empty((H, B), f32)
    dwt = np.empty((chunk, 3 * H, K), f32)

    def run():
        for t in range(T):
            np.matmul(w, h[t], out=g[t])
        for t in range(T - 1, -1, -1):
            np.matmul(wt, g[t], out=dh)
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            np.matmul(g[t0:t1], h[t0:t1].transpose(0, 2, 1), out=dwt[: t1 - t0])

    return run


def main(argv):
    import torch

    torch.set_num_threads(1)
    rows = [r for r in CPU_ROWS if not argv or r[0] in argv]
    print(f"numpy {np.__version__}, torch {torch.__version__}, 1 thread\n")
    print("| row | T, B, I, H | step ms | recurrent GEMMs ms | GEMM GFLOP/s | torch ms | step / torch | GEMMs / torch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, T, B, I, H, _target in rows:
        step, _, _ = gx_step("gru", T, B, I, H, "cpu")
        tstep, _ = torch_step("gru", T, B, I, H, "cpu")
        s, g, tt = _time(step), _time(gemms(T, B, I, H)), _time(tstep)
        gflops = T * 2 * 3 * H * B * (2 * (H + I + 1) + H) / g / 1e9
        print(f"| {name} | {T}, {B}, {I}, {H} | {1e3 * s:.2f} | {1e3 * g:.2f} | {gflops:.0f} | {1e3 * tt:.2f} "
              f"| {s / tt:.3f} | {g / tt:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
