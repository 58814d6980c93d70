"""Derive the coefficients of tanh32 (gru_xp/nn/fast/_cpu.py): tanh(x) ~ x P(x^2) / Q(x^2), P of degree 6, Q of
degree 3 with Q(0) = 1, on x in (0, 9], for the least largest relative error; then report how the float32 evaluation
the kernel does (Horner, no fused multiply-add here) compares with tanh and with NumPy's float32 tanh, in ulps.

Method: y = tanh(x)/x ~ P(u)/Q(u) with u = x^2/81 in [0, 1] (scaled, so the least-squares systems stay well
conditioned); linearised weighted least squares y Q - P ~ 0 divided by the previous iterate's y Q (Sanathanan-Koerner),
then Lawson-style reweighting toward the minimax solution, keeping the best iterate.

    python benchmarks/tanh32_fit.py
"""
from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial as P

CLAMP = 9.0  # 1 - tanh(9) = 3e-8: half an ulp below 1 in float32
N_P, N_Q = 7, 4  # coefficients of P (degree 6) and Q (degree 3)


def fit(iterations: int = 200):
    x = np.concatenate([np.linspace(1e-3, 1, 3000), np.linspace(1, CLAMP, 9000)])
    scale = CLAMP * CLAMP
    u, y = x * x / scale, np.tanh(x) / x
    w, q_prev, best = np.ones_like(x), np.ones_like(x), None
    for it in range(iterations):
        a = np.hstack([u[:, None] ** np.arange(N_P), -(y[:, None] * u[:, None] ** np.arange(1, N_Q))])
        s = np.sqrt(w) / (y * q_prev)
        coef, *_ = np.linalg.lstsq(a * s[:, None], y * s, rcond=None)
        p, q = coef[:N_P], np.concatenate([[1.0], coef[N_P:]])
        q_prev = P.polyval(u, q)
        rel = (P.polyval(u, p) / q_prev - y) / y
        worst = float(np.abs(rel).max())
        if best is None or worst < best[0]:
            best = (worst, p.copy(), q.copy())
        if it >= 10:
            w = w * np.sqrt(np.abs(rel) / worst) + 1e-12
            w /= w.mean()
    worst, p, q = best
    assert P.polyval(np.linspace(0, 1, 1001), q).min() > 0, "Q has a zero on the interval"
    return worst, p / scale ** np.arange(N_P), q / scale ** np.arange(N_Q)  # coefficients in x^2


def tanh32(x, p, q):
    """The kernel's float32 evaluation (without its fused multiply-adds)."""
    x = np.clip(x.astype(np.float32), np.float32(-CLAMP), np.float32(CLAMP))
    s = x * x
    num = np.float32(p[-1])
    for c in p[-2::-1]:
        num = s * num + np.float32(c)
    den = np.float32(q[-1])
    for c in q[-2::-1]:
        den = s * den + np.float32(c)
    return np.clip((x * num) / den, np.float32(-1), np.float32(1))


def main() -> None:
    worst, p, q = fit()
    print(f"largest relative error on (0, {CLAMP}] in float64: {worst:.2e}")
    print("TANH32_P =", tuple(float(v) for v in p))
    print("TANH32_Q =", tuple(float(v) for v in q))
    grid = np.linspace(-12, 12, 4_000_001, dtype=np.float32)
    ref = np.tanh(grid.astype(np.float64))
    ulp = np.spacing(np.maximum(np.abs(ref), 1e-45).astype(np.float32)).astype(np.float64)
    for name, got in (("tanh32 (float32 Horner)", tanh32(grid, p, q)), ("NumPy's float32 tanh", np.tanh(grid))):
        err = np.abs(got.astype(np.float64) - ref) / ulp
        print(f"{name}: max {err.max():.2f} ulp, mean {err.mean():.3f} ulp over [-12, 12]")


if __name__ == "__main__":
    main()
