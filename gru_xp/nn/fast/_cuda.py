"""CuPy-only: the fused elementwise kernels of the fast path's feature-major layout (gru.py, lstm.py, rnn.py).
The only module that imports cupy, and only inside functions: importing gru_xp never needs CuPy; the fast twins
call these when their namespace is CuPy. The portable path is the reference they are tested against:
tests/nn/test_kernels.py compiles every kernel as CuPy generates it (NVRTC, sm_80 and sm_90) and runs every body,
compiled on the CPU, inside the CuPy branches' orchestration against the reference cells.

Legend: H hidden, B batch; HB = H*B, the elements of one gate block of one step; inside the kernel strings, T is the
element type (CuPy's type placeholder), not the number of steps; G, gi, D are a step's gates, input projection and
gate grads (raw: indexed by the body), the other array parameters are bound to element i.

Layout: each step's state is (H, B) contiguous; its gates are (3H, B) or (4H, B) contiguous, gate g at flat offset
g*HB. Every kernel runs over the HB elements of one step, and every array it gets is C-contiguous, so CuPy gives it
a 1-D indexer (a transposed view would cost a division and a modulo per element and argument). With the recurrent
GEMM (cuBLAS through cupy.matmul) a step is 2 launches forward and 2 backward (GRU reset_before: 4 and 4).
Pre-activations of sigmoid gates arrive halved (the weights carry the 1/2): sigmoid(a) = tanh(a/2)/2 + 1/2.
No host sync anywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# ==== Embedding backward (issue 17): a scatter-add of rows ========================================================
# gw (V, E) += rows (N, E) at row ids (N,), repeated ids accumulating (atomic adds). Called by nn/fast/embedding.py
# when the namespace is CuPy; the portable one-hot GEMM in nn/embedding.py is its reference.


def embedding_scatter_add(gw, ids, rows) -> None:
    import cupyx

    cupyx.scatter_add(gw, ids, rows)


# ==== end of the Embedding section; the recurrent kernels follow =================================================


@dataclass(frozen=True)
class Param:
    """One kernel parameter as CuPy reads it: `raw T G` is Param("G", "T", raw=True, output=...)."""

    name: str
    dtype: str  # "T" (the element type, from the arrays) or a fixed dtype name (e.g. "int64", a scalar here)
    raw: bool  # indexed by the body (G[k]); else bound to element i of a same-shape array
    output: bool


@dataclass(frozen=True)
class Kernel:
    """A fused elementwise kernel: cupy.ElementwiseKernel's parameter lists, its body (C statements over element i;
    `k` is i, the element's offset inside one gate block) and its CUDA function name."""

    name: str
    in_params: str
    out_params: str
    body: str

    @property
    def operation(self) -> str:
        return "const ptrdiff_t k = i;\n" + self.body

    @property
    def params(self) -> tuple[Param, ...]:
        """In order: inputs, then outputs (the order of the call's arguments)."""
        out = []
        for text, output in ((self.in_params, False), (self.out_params, True)):
            for item in filter(None, (s.strip() for s in text.split(","))):
                words = item.split()
                if len(words) not in (2, 3) or (len(words) == 3 and words[0] != "raw"):
                    raise ValueError(f"kernel {self.name}: cannot read parameter {item!r}")
                out.append(Param(words[-1], words[-2], raw=len(words) == 3, output=output))
        return tuple(out)


KERNELS: dict[str, Kernel] = {}  # every fused kernel, by name (the tests iterate over it)


def _kernel(name: str, in_params: str, out_params: str, body: str) -> Kernel:
    if not re.fullmatch(r"[a-z0-9_]+", name) or name in KERNELS:
        raise ValueError(f"bad or duplicate kernel name {name!r}")
    k = KERNELS[name] = Kernel(f"gru_xp_{name}", in_params, out_params, body)
    return k


_COMPILED: dict = {}


def elementwise_kernel(kernel: Kernel):
    """The cupy.ElementwiseKernel of `kernel`, built once (CuPy compiles it at its first launch per dtype)."""
    ek = _COMPILED.get(kernel)
    if ek is None:
        import cupy

        ek = _COMPILED[kernel] = cupy.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.operation,
                                                        kernel.name)
    return ek


def launch(kernel: Kernel, *args) -> None:
    """Run `kernel` over the elements of its non-raw arrays. args: in the kernel's parameter order, outputs
    included (preallocated). Every call of the fast path goes through here (the tests record and replay it)."""
    elementwise_kernel(kernel)(*args)


def _k(name: str, in_params: str, out_params: str, body: str):
    """A one-off kernel outside KERNELS (so outside the compile and CPU tests): its cupy.ElementwiseKernel, built
    on first use, then cached. Prefer _kernel + launch."""
    return elementwise_kernel(Kernel(f"gru_xp_{name}", in_params, out_params, body))


def _with_dy(name: str, in_params: str, out_params: str, body: str) -> tuple[Kernel, Kernel]:
    """(kernel without dy, kernel with an extra `T dy` input added to dh): `{dy}` in the body marks the spot."""
    if "T dhp," not in in_params:
        raise ValueError(f"kernel {name}: the dy variant needs a 'T dhp,' input to follow")
    return (_kernel(name, in_params, out_params, body.format(dy="")),
            _kernel(f"{name}_dy", in_params.replace("T dhp,", "T dhp, T dy,", 1), out_params,
                    body.format(dy=" + dy")))


# ---- GRU (gru.py) -----------------------------------------------------------------------------------------------
GRU_FWD_AFTER = _kernel("gru_fwd_after", "raw T gi, T hp, int64 HB", "raw T G, T n, T hx", """
T r = tanh(G[k] + gi[k]) * (T)0.5 + (T)0.5;
T z = tanh(G[k + HB] + gi[k + HB]) * (T)0.5 + (T)0.5;
G[k] = r;
G[k + HB] = z;
T nn = tanh(r * G[k + 2 * HB] + gi[k + 2 * HB]);
n = nn;
hx = (hp - nn) * z + nn;
""")

GRU_FWD_BEFORE_RZ = _kernel("gru_fwd_before_rz", "raw T gi, T hp, int64 HB", "raw T G", """
T r = tanh(G[k] + gi[k]) * (T)0.5 + (T)0.5;
T z = tanh(G[k + HB] + gi[k + HB]) * (T)0.5 + (T)0.5;
G[k] = r;
G[k + HB] = z;
G[k + 2 * HB] = r * hp;
""")

GRU_FWD_BEFORE_N = _kernel("gru_fwd_before_n", "raw T gi, T tmp, raw T G, T hp, int64 HB", "T n, T hx", """
T nn = tanh(tmp + gi[k + 2 * HB]);
n = nn;
hx = (hp - nn) * G[k + HB] + nn;
""")

GRU_BWD_AFTER, GRU_BWD_AFTER_DY = _with_dy(
    "gru_bwd_after", "T dhp, raw T G, T hp, T n, int64 HB", "T dhz, raw T D", """
T dh = dhz + dhp{dy};
T r = G[k], z = G[k + HB], hn = G[k + 2 * HB];
T da_n = dh * (((T)1 - z) * ((T)1 - n * n));
T da_z = dh * (z * ((T)1 - z) * (hp - n));
D[k] = da_n * r;
D[k + HB] = da_n * (r * ((T)1 - r) * hn);
D[k + 2 * HB] = da_z;
D[k + 3 * HB] = da_n;
dhz = dh * z;
""")

GRU_BWD_BEFORE_ZN, GRU_BWD_BEFORE_ZN_DY = _with_dy(
    "gru_bwd_before_zn", "T dhz, T dhp, raw T G, T hp, T n, int64 HB", "raw T D, T dh", """
T d = dhz + dhp{dy};
dh = d;
T z = G[k + HB];
D[k + HB] = d * (z * ((T)1 - z) * (hp - n));
D[k + 2 * HB] = d * (((T)1 - z) * ((T)1 - n * n));
""")

GRU_BWD_BEFORE_R = _kernel("gru_bwd_before_r", "T drh, T dh, raw T G, T hp, int64 HB", "raw T D, T dhz", """
T r = G[k];
D[k] = drh * (r * ((T)1 - r) * hp);
dhz = dh * G[k + HB] + drh * r;
""")


def gru_fwd_after(proj_t, gates_t, h_prev, cand_t, h_next):
    """reset_after, one step. gates_t (3H, B) holds the GEMM's [a_r/2, a_z/2, W_hn h + b_hn] (minus the input
    projection proj_t) and becomes [r, z, hn]; writes cand_t and h_next = h_t (H, B)."""
    launch(GRU_FWD_AFTER, proj_t, h_prev, h_prev.size, gates_t, cand_t, h_next)


def gru_fwd_before_rz(proj_t, gates_t, h_prev):
    """reset_before, before the n GEMM: gates_t[:2H] (GEMM output) becomes r, z; gates_t[2H:] = r ⊙ h."""
    launch(GRU_FWD_BEFORE_RZ, proj_t, h_prev, h_prev.size, gates_t)


def gru_fwd_before_n(proj_t, wn_rh, gates_t, h_prev, cand_t, h_next):
    """reset_before, after the n GEMM (wn_rh = W_hn (r ⊙ h)): n = tanh(proj_n + wn_rh); h_t = n + z (h - n)."""
    launch(GRU_FWD_BEFORE_N, proj_t, wn_rh, gates_t, h_prev, h_prev.size, cand_t, h_next)


def gru_bwd_after(dhz, dhp, dy_t, gates_t, h_prev, cand_t, dgates_t):
    """reset_after, one step before its GEMM: dh = dhz + dhp (+ dy); dgates_t (4H, B) = [da_n ⊙ r, da_r, da_z,
    da_n]; dhz <- dh ⊙ z (in place)."""
    HB = h_prev.size
    if dy_t is None:
        launch(GRU_BWD_AFTER, dhp, gates_t, h_prev, cand_t, HB, dhz, dgates_t)
    else:
        launch(GRU_BWD_AFTER_DY, dhp, dy_t, gates_t, h_prev, cand_t, HB, dhz, dgates_t)


def gru_bwd_before_zn(dhz, dhp, dy_t, gates_t, h_prev, cand_t, dgates_t, dh):
    """reset_before, first half of a step: dh = dhz + dhp (+ dy); dgates_t (3H, B) rows z, n = da_z, da_n."""
    HB = h_prev.size
    if dy_t is None:
        launch(GRU_BWD_BEFORE_ZN, dhz, dhp, gates_t, h_prev, cand_t, HB, dgates_t, dh)
    else:
        launch(GRU_BWD_BEFORE_ZN_DY, dhz, dhp, dy_t, gates_t, h_prev, cand_t, HB, dgates_t, dh)


def gru_bwd_before_r(drh, dh, gates_t, h_prev, dgates_t, dhz):
    """reset_before, second half (drh = W_n^T da_n): dgates_t rows r = drh h r(1-r); dhz = dh z + drh r."""
    launch(GRU_BWD_BEFORE_R, drh, dh, gates_t, h_prev, h_prev.size, dgates_t, dhz)


# ---- LSTM (lstm.py): gate rows [o | i | f | g], the three sigmoid gates' pre-activations halved ------------------
LSTM_FWD = _kernel("lstm_fwd", "T cp, int64 HB", "raw T G, T c, T th, T h", """
T o = tanh(G[k]) * (T)0.5 + (T)0.5;
T ig = tanh(G[k + HB]) * (T)0.5 + (T)0.5;
T f = tanh(G[k + 2 * HB]) * (T)0.5 + (T)0.5;
T g = tanh(G[k + 3 * HB]);
G[k] = o;
G[k + HB] = ig;
G[k + 2 * HB] = f;
G[k + 3 * HB] = g;
T cc = f * cp + ig * g;
c = cc;
T tc = tanh(cc);
th = tc;
h = o * tc;
""")

LSTM_BWD, LSTM_BWD_DY = _with_dy("lstm_bwd", "T dhp, raw T G, T cp, T th, int64 HB", "T dc, raw T D", """
T dh = dhp{dy};
T o = G[k], ig = G[k + HB], f = G[k + 2 * HB], g = G[k + 3 * HB];
T d = dc + dh * (((T)1 - th * th) * o);
D[k] = dh * (((T)1 - o) * o * th);
D[k + HB] = d * (((T)1 - ig) * ig * g);
D[k + 2 * HB] = d * (((T)1 - f) * f * cp);
D[k + 3 * HB] = d * (((T)1 - g * g) * ig);
dc = d * f;
""")


def lstm_fwd(gates_t, c_prev, c_next, tanh_c_t, h_next):
    """One step after its GEMM: gates_t (4H, B) pre-activations [a_o/2, a_i/2, a_f/2, a_g] become [o, i, f, g];
    c_next = f c_prev + i g; tanh_c_t = tanh(c_next); h_next = o tanh(c_next) (all (H, B))."""
    launch(LSTM_FWD, c_prev, c_prev.size, gates_t, c_next, tanh_c_t, h_next)


def lstm_bwd(dhp, dy_t, gates_t, c_prev, tanh_c_t, dc, dgates_t):
    """One step before its GEMM: dh = dhp (+ dy) (dhp: the GEMM's W_hh^T dgates of the step after);
    dc += dh o (1 - tanh(c)^2); dgates_t (4H, B) = [da_o, da_i, da_f, da_g]; dc <- dc f (in place)."""
    HB = c_prev.size
    if dy_t is None:
        launch(LSTM_BWD, dhp, gates_t, c_prev, tanh_c_t, HB, dc, dgates_t)
    else:
        launch(LSTM_BWD_DY, dhp, dy_t, gates_t, c_prev, tanh_c_t, HB, dc, dgates_t)


# ---- vanilla RNN (rnn.py) ----------------------------------------------------------------------------------------
RNN_FWD = {"tanh": _kernel("rnn_fwd_tanh", "", "T h", "h = tanh(h);\n"),
           # NaN stays NaN (as with maximum): divergence must stay visible
           "relu": _kernel("rnn_fwd_relu", "", "T h", "h = h < (T)0 ? (T)0 : h;\n")}
RNN_BWD = {  # h >= 0 for relu: da = d [h > 0] as d * sign(h) (d h is d 0 at h = 0, NaN at NaN)
    "tanh": _with_dy("rnn_bwd_tanh", "T dhp, T h", "T da", "T d = dhp{dy};\nda = d * ((T)1 - h * h);\n"),
    "relu": _with_dy("rnn_bwd_relu", "T dhp, T h", "T da", "T d = dhp{dy};\nda = h > (T)0 ? d : d * h;\n"),
}


def rnn_fwd(nonlinearity: str, h_next):
    """h_next (H, B) holds the GEMM's pre-activation; becomes the activation, in place."""
    launch(RNN_FWD[nonlinearity], h_next)


def rnn_bwd(nonlinearity: str, dhp, dy_t, h_t, da_t):
    """da_t = (dhp (+ dy)) act'(a_t), from h_t = act(a_t) (all (H, B)); dhp: the GEMM's W_hh^T da of the step
    after."""
    plain, with_dy = RNN_BWD[nonlinearity]
    if dy_t is None:
        launch(plain, dhp, h_t, da_t)
    else:
        launch(with_dy, dhp, dy_t, h_t, da_t)
