"""CuPy-only: fused elementwise kernels for the GRU gate math of the fast path's feature-major layout (gru.py).
The only module that imports cupy, and only inside functions: importing gru_xp never needs CuPy; gru.py calls these
when its namespace is CuPy. The portable path is the reference they are tested against (tests/nn/test_fast.py).

Legend: H hidden, B batch; HB = H*B, the elements of one gate block of one step; inside the kernel strings, T is the
element type (CuPy's type placeholder), not the number of steps, and G, gi, D are a step's gates, input projection
and gate grads.

Layout (see gru.py): each step's state is (H, B) contiguous; its gates are (3H, B) or (4H, B) contiguous, gate g
at flat offset g*HB. Every kernel runs over the HB elements of one step: with the recurrent GEMM (cuBLAS through
cupy.matmul) a step is 2 launches forward and 2 backward (reset_after), no host sync anywhere.
Pre-activations of r, z arrive halved (gru.py folds 1/2 into their weights): sigmoid(a) = tanh(a/2)/2 + 1/2.
"""
from __future__ import annotations

# ==== Embedding backward (issue 17): a scatter-add of rows ========================================================
# gw (V, E) += rows (N, E) at row ids (N,), repeated ids accumulating (atomic adds). Called by nn/fast/embedding.py
# when the namespace is CuPy; the portable one-hot GEMM in nn/embedding.py is its reference.


def embedding_scatter_add(gw, ids, rows) -> None:
    import cupyx

    cupyx.scatter_add(gw, ids, rows)


# ==== end of the Embedding section; the recurrent kernels follow =================================================

_KERNELS: dict = {}


def _k(name: str, in_params: str, out_params: str, body: str):
    """The compiled kernel `name` (built on first use, then cached)."""
    kernel = _KERNELS.get(name)
    if kernel is None:
        import cupy

        kernel = _KERNELS[name] = cupy.ElementwiseKernel(in_params, out_params, "const ptrdiff_t k = i;\n" + body,
                                                         f"gru_xp_{name}")
    return kernel


_FWD_AFTER = """
T r = tanh(G[k] + gi[k]) * (T)0.5 + (T)0.5;
T z = tanh(G[k + HB] + gi[k + HB]) * (T)0.5 + (T)0.5;
G[k] = r;
G[k + HB] = z;
T nn = tanh(r * G[k + 2 * HB] + gi[k + 2 * HB]);
n = nn;
hx = (hp - nn) * z + nn;
"""


def gru_fwd_after(proj_t, gates_t, h_prev, cand_t, h_next):
    """reset_after, one step. gates_t (3H, B) holds the GEMM's [a_r/2, a_z/2, W_hn h + b_hn] (minus the input
    projection proj_t) and becomes [r, z, hn]; writes cand_t and h_next = h_t (H, B)."""
    HB = h_prev.size
    _k("fwd_after", "raw T gi, T hp, int64 HB", "raw T G, T n, T hx", _FWD_AFTER)(proj_t, h_prev, HB, gates_t, cand_t,
                                                                                   h_next)


def gru_fwd_before_rz(proj_t, gates_t, h_prev):
    """reset_before, before the n GEMM: gates_t[:2H] (GEMM output) becomes r, z; gates_t[2H:] = r ⊙ h."""
    body = """
T r = tanh(G[k] + gi[k]) * (T)0.5 + (T)0.5;
T z = tanh(G[k + HB] + gi[k + HB]) * (T)0.5 + (T)0.5;
G[k] = r;
G[k + HB] = z;
G[k + 2 * HB] = r * hp;
"""
    _k("fwd_before_rz", "raw T gi, T hp, int64 HB", "raw T G", body)(proj_t, h_prev, h_prev.size, gates_t)


def gru_fwd_before_n(proj_t, wn_rh, gates_t, h_prev, cand_t, h_next):
    """reset_before, after the n GEMM (wn_rh = W_hn (r ⊙ h)): n = tanh(proj_n + wn_rh); h_t = n + z (h - n)."""
    body = """
T nn = tanh(tmp + gi[k + 2 * HB]);
n = nn;
hx = (hp - nn) * G[k + HB] + nn;
"""
    _k("fwd_before_n", "raw T gi, T tmp, raw T G, T hp, int64 HB", "T n, T hx", body)(proj_t, wn_rh, gates_t, h_prev,
                                                                                     h_prev.size, cand_t, h_next)


_BWD_AFTER = """
T dh = dhz + dhp{dy};
T r = G[k], z = G[k + HB], hn = G[k + 2 * HB];
T da_n = dh * (((T)1 - z) * ((T)1 - n * n));
T da_z = dh * (z * ((T)1 - z) * (hp - n));
D[k] = da_n * r;
D[k + HB] = da_n * (r * ((T)1 - r) * hn);
D[k + 2 * HB] = da_z;
D[k + 3 * HB] = da_n;
dhz = dh * z;
"""


def gru_bwd_after(dhz, dhp, dy_t, gates_t, h_prev, cand_t, dgates_t):
    """reset_after, one step before its GEMM: dh = dhz + dhp (+ dy); dgates_t (4H, B) = [da_n ⊙ r, da_r, da_z,
    da_n]; dhz <- dh ⊙ z (in place)."""
    HB = h_prev.size
    if dy_t is None:
        _k("bwd_after", "T dhp, raw T G, T hp, T n, int64 HB", "T dhz, raw T D",
           _BWD_AFTER.format(dy=""))(dhp, gates_t, h_prev, cand_t, HB, dhz, dgates_t)
    else:
        _k("bwd_after_dy", "T dhp, T dy, raw T G, T hp, T n, int64 HB", "T dhz, raw T D",
           _BWD_AFTER.format(dy=" + dy"))(dhp, dy_t, gates_t, h_prev, cand_t, HB, dhz, dgates_t)


_BWD_BEFORE_ZN = """
T d = dhz + dhp{dy};
dh = d;
T z = G[k + HB];
D[k + HB] = d * (z * ((T)1 - z) * (hp - n));
D[k + 2 * HB] = d * (((T)1 - z) * ((T)1 - n * n));
"""


def gru_bwd_before_zn(dhz, dhp, dy_t, gates_t, h_prev, cand_t, dgates_t, dh):
    """reset_before, first half of a step: dh = dhz + dhp (+ dy); dgates_t (3H, B) rows z, n = da_z, da_n."""
    HB = h_prev.size
    if dy_t is None:
        _k("bwd_before_zn", "T dhz, T dhp, raw T G, T hp, T n, int64 HB", "raw T D, T dh",
           _BWD_BEFORE_ZN.format(dy=""))(dhz, dhp, gates_t, h_prev, cand_t, HB, dgates_t, dh)
    else:
        _k("bwd_before_zn_dy", "T dhz, T dhp, T dy, raw T G, T hp, T n, int64 HB", "raw T D, T dh",
           _BWD_BEFORE_ZN.format(dy=" + dy"))(dhz, dhp, dy_t, gates_t, h_prev, cand_t, HB, dgates_t, dh)


def gru_bwd_before_r(drh, dh, gates_t, h_prev, dgates_t, dhz):
    """reset_before, second half (drh = W_n^T da_n): dgates_t rows r = drh h r(1-r); dhz = dh z + drh r."""
    body = """
T r = G[k];
D[k] = drh * (r * ((T)1 - r) * hp);
dhz = dh * G[k + HB] + drh * r;
"""
    _k("bwd_before_r", "T drh, T dh, raw T G, T hp, int64 HB", "raw T D, T dhz", body)(drh, dh, gates_t, h_prev,
                                                                                       h_prev.size, dgates_t, dhz)
