"""Small fused CPU kernels around the whole-sequence loops and in the optimizer: each replaces a handful of NumPy
calls made once per layer call (weight folds, operand fills, grad unfolds) or once per parameter and step (Adam).

Why: at the seed shape a public GRU layer's forward + backward spent ~0.48 of its ~3.1 ms outside the two
whole-sequence loops (0.3 ms at T = 1, 0.17 ms of it at B = 16: the cost is the calls, not the data), ~40 NumPy and
array-api-compat calls of 2-35 us each; a training step's Adam took ~0.13 ms (12 ufunc calls a parameter).
benchmarks/NOTES.md, "Eighth session", has the numbers.

Legend: T steps, B batch, I inputs, H hidden, G gate rows (GRU 3H, torch's order r, z, n; LSTM 4H), n_cols = H+I+1.

Each kernel does, element by element, exactly the NumPy operations it replaces, in the same order (copies, +, *, /
and sqrt, all correctly rounded; no fastmath): bit-identical results, float32 and float64 (tested in
tests/nn/test_cpu_glue.py against the NumPy code they replace). Compiled by _cpu._build with its jit (cached on
disk); built only where _cpu's kernels are (numba installed, GRU_XP_CPU_KERNELS not 0).
"""
from __future__ import annotations

import math


def glue_kernels(jit, jit_vec) -> dict:
    """The kernels below, compiled on first call by `jit`, or `jit_vec` (numba's error_model="numpy", no fastmath:
    IEEE division without a zero check, so that a loop with a division vectorises) for Adam's."""

    @jit
    def gru_fold_after(w_ih, w_hh, b_ih, b_hh, w_rec, w_x, half):
        """The NumPy forward's folded weights (reset_after; fast/gru._weights_numpy): w_rec (3H, n_cols) rows r, z
        = [W_hh | W_ih | b_ih + b_hh] * half, rows n = [W_hn | 0 | b_hn]; w_x (H, I+1) = [W_in | b_in]."""
        G, H = w_hh.shape
        I = w_ih.shape[1]
        H2 = 2 * H
        zero = half - half
        for i in range(H2):
            for j in range(H):
                w_rec[i, j] = w_hh[i, j] * half
            for j in range(I):
                w_rec[i, H + j] = w_ih[i, j] * half
            w_rec[i, H + I] = (b_ih[i] + b_hh[i]) * half
        for i in range(H2, G):
            for j in range(H):
                w_rec[i, j] = w_hh[i, j]
            for j in range(I):
                w_rec[i, H + j] = zero
                w_x[i - H2, j] = w_ih[i, j]
            w_rec[i, H + I] = b_hh[i]
            w_x[i - H2, I] = b_ih[i]

    @jit
    def fill_operands(x, h0, operands, one):
        """_common.recurrent_operands' fill: operands (T+1, n_cols, B) [t] = [h; x[t]; 1] with h = h0^T at t = 0,
        rows H: of [T] = [0; 1]; x (T, B, I), h0 (B, H)."""
        T, B, I = x.shape
        H = h0.shape[1]
        zero = one - one
        for j in range(H):
            for b in range(B):
                operands[0, j, b] = h0[b, j]
        for t in range(T):
            for b in range(B):
                for i in range(I):
                    operands[t, H + i, b] = x[t, b, i]
        for i in range(I):
            for b in range(B):
                operands[T, H + i, b] = zero
        for t in range(T + 1):
            for b in range(B):
                operands[t, H + I, b] = one

    @jit
    def gru_unfold_after(g_w_ih, g_w_hh, g_b_ih, g_b_hh, dw, dw_in):
        """The one-call backward's weight grads into the parameter grads (fast/gru._add_recurrent_grads, then the n
        rows' input weights): dw (3H, n_cols) rows [n | r | z] x [h | x | 1], dw_in (H, I+1) rows n x [x | 1]; the
        ones column is each bias's grad (b_ih = b_hh for r, z; b_hn its own)."""
        G, H = g_w_hh.shape
        I = g_w_ih.shape[1]
        H2 = 2 * H
        for i in range(H2):  # rows r, z: dw row H + i
            for j in range(H):
                g_w_hh[i, j] = g_w_hh[i, j] + dw[H + i, j]
            for j in range(I):
                g_w_ih[i, j] = g_w_ih[i, j] + dw[H + i, H + j]
            g_b_ih[i] = g_b_ih[i] + dw[H + i, H + I]
            g_b_hh[i] = g_b_hh[i] + dw[H + i, H + I]
        for i in range(H):  # rows n: dw row i
            for j in range(H):
                g_w_hh[H2 + i, j] = g_w_hh[H2 + i, j] + dw[i, j]
            g_b_hh[H2 + i] = g_b_hh[H2 + i] + dw[i, H + I]
            for j in range(I):
                g_w_ih[H2 + i, j] = g_w_ih[H2 + i, j] + dw_in[i, j]
            g_b_ih[H2 + i] = g_b_ih[H2 + i] + dw_in[i, I]

    @jit
    def fold_rotated(w_ih, w_hh, b_ih, b_hh, w, shift, n_half, half):
        """_common.fold_weights for gate rows in torch's order rotated by `shift` (the LSTM: internal [o | i | f | g]
        = torch rows 3H.. then 0..; shift 3H), then rows :n_half times half: w (G, n_cols) row i =
        [W_hh | W_ih | b_ih + b_hh] of torch row (i + shift) mod G."""
        G, H = w_hh.shape
        I = w_ih.shape[1]
        for i in range(G):
            s = (i + shift) % G
            for j in range(H):
                w[i, j] = w_hh[s, j]
            for j in range(I):
                w[i, H + j] = w_ih[s, j]
            w[i, H + I] = b_ih[s] + b_hh[s]
            if i < n_half:
                for j in range(H + I + 1):
                    w[i, j] = w[i, j] * half

    @jit
    def transpose_rotated(w, w_t, shift):
        """w_t (K, G) = (w (G, K) with its rows rotated by `shift`)^T: column i is torch row (i + shift) mod G
        (the LSTM's weights: shift 3H; the GRU's W_hh in the one-call backward's row order [n | r | z]: 2H).
        In 16 x 16 tiles, each tile's rows of w_t written contiguously, the rotation as two ranges (no modulo per
        element): 4.5x faster than row by row with a modulo at (768, 256), 5x at (210, 70) (benchmarks/NOTES.md)."""
        G, K = w.shape
        n = G - shift  # w_t column i < n is w row i + shift, the rest w row i - n
        Gt, Kt = G - G % 16, K - K % 16
        for i0 in range(0, Gt, 16):
            for k0 in range(0, Kt, 16):
                for k in range(k0, k0 + 16):
                    row = w_t[k]
                    for i in range(i0, i0 + 16):
                        row[i] = w[i + shift if i < n else i - n, k]
            for k in range(Kt, K):
                for i in range(i0, i0 + 16):
                    w_t[k, i] = w[i + shift if i < n else i - n, k]
        for k in range(K):
            for i in range(Gt, G):
                w_t[k, i] = w[i + shift if i < n else i - n, k]

    @jit
    def unfold_rotated(g_w_ih, g_w_hh, g_b_ih, g_b_hh, dw, shift):
        """_common.unfold_grads for rows rotated by `shift` (fold_rotated's inverse for grads): torch row
        (i + shift) mod G of each grad += dw row i's [h | x | 1] part (both biases get the ones column)."""
        G, H = g_w_hh.shape
        I = g_w_ih.shape[1]
        for i in range(G):
            s = (i + shift) % G
            for j in range(H):
                g_w_hh[s, j] = g_w_hh[s, j] + dw[i, j]
            for j in range(I):
                g_w_ih[s, j] = g_w_ih[s, j] + dw[i, H + j]
            g_b_ih[s] = g_b_ih[s] + dw[i, H + I]
            g_b_hh[s] = g_b_hh[s] + dw[i, H + I]

    @jit
    def add_transposed(a, b, out):
        """out (B, H) = (a + b)^T for a, b (H, B): the carried grad's two parts, in the caller's layout."""
        H, B = a.shape
        for j in range(H):
            for k in range(B):
                out[k, j] = a[j, k] + b[j, k]

    @jit_vec
    def adam_update(p, g, m, v, coef, has_wd):
        """One Adam step on one parameter, in place (nn/optim.Adam.step's operations, in its order), with coef =
        [b1, 1 - b1, b2, 1 - b2, sqrt_c2, eps, step, wd] in the parameter's dtype: g' = g + wd p (has_wd);
        m = m b1 + (1 - b1) g'; v = v b2 + (g' g') (1 - b2); p -= (step m) / (sqrt(v) / sqrt_c2 + eps),
        sqrt_c2 = sqrt(1 - b2^t), step = lr / (1 - b1^t). p, g, m, v C-contiguous, one shape (read flat).
        Compiled with error_model="numpy" (no zero-division check: the loop vectorises; 14 against 63 us at 14,700
        float32 elements)."""
        b1, c_b1, b2, c_b2, sqrt_c2, eps, step, wd = (coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6],
                                                     coef[7])
        n = p.size
        p, g, m, v = p.reshape(n), g.reshape(n), m.reshape(n), v.reshape(n)
        if has_wd:  # two copies of the loop: the branch out of it, so that each vectorises
            for i in range(n):
                gi = g[i] + wd * p[i]
                mi = m[i] * b1 + c_b1 * gi
                vi = v[i] * b2 + (gi * gi) * c_b2
                m[i] = mi
                v[i] = vi
                p[i] = p[i] - (step * mi) / (math.sqrt(vi) / sqrt_c2 + eps)
        else:
            for i in range(n):
                gi = g[i]
                mi = m[i] * b1 + c_b1 * gi
                vi = v[i] * b2 + (gi * gi) * c_b2
                m[i] = mi
                v[i] = vi
                p[i] = p[i] - (step * mi) / (math.sqrt(vi) / sqrt_c2 + eps)

    @jit
    def spin_until(yield_fn, flags, i, value, tries):
        """True once flags[i] == value (flags: an array('q')), looked at up to `tries` times with yield_fn() (the C
        library's sched_yield) between looks; False if it never was. GIL-free: how _cpu_split's threads wait for
        each other. The call between looks also makes the compiler read flags[i] again each time."""
        for _ in range(tries):
            if flags[i] == value:
                return True
            yield_fn()
        return flags[i] == value

    return {"spin_until": spin_until, "gru_fold_after": gru_fold_after, "fill_operands": fill_operands,
            "gru_unfold_after": gru_unfold_after, "add_transposed": add_transposed, "adam_update": adam_update,
            "fold_rotated": fold_rotated, "transpose_rotated": transpose_rotated, "unfold_rotated": unfold_rotated}
