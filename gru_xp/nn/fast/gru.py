"""The GRU's fast twin: same contract as nn/gru.py, feature-major layout, fused CuPy kernels on GPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..gru import GRUCache
from ..gru import backward as reference_backward
from .._cell import CellParams, cut
from ._common import (CHUNK_ELEMS, DW_CHUNK_ELEMS, DW_COPY_MAX_B, GI_FULL_MAX_ELEMS, InputBackward, Ops, Workspace,
                      cache_buf, chunk_dw, chunked_steps, dg_buffer, dw_buffers, dw_operand, fold_weights, gi_buffer,
                      input_cache, is_cupy, operand, ops_for, rows, state_grad, tbh, unfold_grads)


@dataclass
class FastGRUCache(GRUCache):
    """GRUCache whose (T, B, .) fields are views of feature-major storage (every step's block contiguous):
    h = hT[:, :H] viewed (T+1, B, H), r, z, hn = views of G, n = view of nT. The reference backward reads it too."""

    hT: Any = None  # (T+1, K, B) hT[t] = [state after t steps (H); x[t] (I); 1] (fold_x), else [state; 1 if ra]
    G: Any = None  # (T, 3H, B) [r | z | hn] per step (reset_before: hn holds r ⊙ h_{t-1})
    nT: Any = None  # (T, H, B) candidate
    xT: Any = None  # (T, I+1, B) [x_t; 1] (fold_x: a view of hT's rows H:)
    fold_x: bool = False  # x_t and the ones row sit in hT: the recurrent GEMM also does the r, z input projection




# ---- GRU ----------------------------------------------------------------------------------------------------
# Layout: feature-major. Each step's state is h_t^T (H, B) and its gates (3H, B), so every gate is a contiguous
# block of rows: elementwise ops run on contiguous memory (NumPy is ~8x slower on row-strided slices), and the
# recurrent GEMM is W (3H, K) @ hT[t] (K, B) with W in its own layout.
# NumPy: step t's operand is [h; x[t]; 1] (see operand), so the one recurrent GEMM also does the r, z rows' input
# projection and all biases: the r, z pre-activations come out whole (no per-step add of a projected input), and
# only the n rows (whose input part must not be multiplied by r) keep a separate input projection. Costs I+1 more
# GEMM columns: at I 1 a net 3-4 % of the step saved (seed, H 64), at I 8 about 1 %.
def gru_forward(xp, p: CellParams, x, state0, *, reset_after: bool = True, ws: Workspace | None = None,
                reuse: bool = False):
    """Same contract as gru.forward: x (T, B, I), (h0 (B, H),) -> y (T, B, H), (h_T,), cache (FastGRUCache).
    `ws` holds the temporaries (a fresh one when None); `reuse=True` also keeps the cache (and so y) in it, valid
    until the next forward on this workspace."""
    if is_cupy(xp):
        return _gru_forward_cupy(xp, p, x, state0, reset_after=reset_after, ws=ws, reuse=reuse)
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    K = H + I + 1  # rows of the recurrent GEMM's operand [h; x[t]; 1]
    half = o.const(0.5, dt, dev)

    # recurrent weights on [h; x[t]; 1]. r, z rows: [W_h | W_i | b_i + b_h] / 2 (exact: sigmoid via tanh(a/2));
    # reset_after, n rows: [W_hn | 0 | b_hn] (the part multiplied by r)
    w_u = ws.get(xp, "w_u", (H3 if reset_after else H2, K), dt, dev)  # (3H or 2H, K)
    fold_weights(o, w_u, p, ((slice(0, H2), slice(0, H2)),), H, I)
    o.mul(w_u[:H2, :], half, out=w_u[:H2, :])
    if reset_after:
        o.copy(p.w_hh[H2:, :], w_u[H2:, :H])
        o.fill(w_u[H2:, H:H + I], 0.0)
        o.copy(p.b_hh[H2:], w_u[H2:, H + I])
    else:
        w_n = p.w_hh[H2:, :]  # (H, H), on r ⊙ h
    # n rows' input projection on [x_t; 1]: [W_in | b_in (+ b_hn, additive when reset_before)]
    w_in = ws.get(xp, "w_in", (H, I + 1), dt, dev)  # (H, I+1)
    o.copy(p.w_ih[H2:, :], w_in[:, :I])
    if reset_after:
        o.copy(p.b_ih[H2:], w_in[:, I])
    else:
        o.add(p.b_ih[H2:], p.b_hh[H2:], out=w_in[:, I])

    # cache storage (feature-major)
    hT = operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, K, B): step t's operand is hT[t]
    xT = hT[:T, H:, :]  # (T, I+1, B) [x_t; 1] view
    G = cache_buf(xp, ws, reuse, "G", (T, H3, B), dt, dev)  # (T, 3H, B)
    nT = cache_buf(xp, ws, reuse, "nT", (T, H, B), dt, dev)  # (T, H, B)

    mul, add, sub, tanh, matmul = o.mul, o.add, o.sub, o.tanh, o.matmul
    gi_buf = gi_buffer(xp, ws, T, H, 4 * H, B, dt, dev)  # n rows' input projection, chunks or all T
    key = (T, reset_after, id(hT), id(G), id(nT)) if reuse else None
    steps = chunked_steps(xp, o, w_in, xT, gi_buf, ((0, H),), hT[:T], hT[:T, :H, :], hT[1:, :H, :], G,
                           G[:, :H2, :], G[:, :H, :], G[:, H:H2, :], G[:, H2:, :], nT,
                           cache=None if key is None else (ws, key))
    if reset_after:
        # NumPy only (CuPy has its own branch), so `out` is passed positionally: ~40 ns a call less than out=
        for g_n, u, hp, hx, G_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_u, u, G_t)  # (3H, K) @ (K, B): [a_r/2, a_z/2, W_hn h + b_hn]
            tanh(rz_t, rz_t)  # r, z jointly
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)  # sigmoid
            mul(r_t, hn_t, n_t)
            add(n_t, g_n, n_t)
            tanh(n_t, n_t)
            sub(hp, n_t, hx)  # h - n (not cached: the backward recomputes it)
            mul(hx, z_t, hx)
            add(hx, n_t, hx)  # n + z (h - n)
    else:
        tmp = ws.get(xp, "tmp", (H, B), dt, dev)
        for g_n, u, hp, hx, G_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_u, u, rz_t)  # (2H, K) @ (K, B)
            tanh(rz_t, rz_t)
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)
            mul(r_t, hp, hn_t)  # r ⊙ h
            matmul(w_n, hn_t, tmp)  # (H, H) @ (H, B)
            add(tmp, g_n, n_t)
            tanh(n_t, n_t)
            sub(hp, n_t, hx)
            mul(hx, z_t, hx)
            add(hx, n_t, hx)
    return _gru_outputs(xp, x, hT, G, nT, xT, reset_after, fold_x=True)


def _gru_outputs(xp, x, hT, G, nT, xT, reset_after: bool, *, fold_x: bool):
    """y (T, B, H), (h_T,), FastGRUCache: views of the feature-major storage."""
    T, H = nT.shape[0], nT.shape[1]
    h_v = tbh(xp, hT[:, :H, :])  # (T+1, B, H) view
    cache = FastGRUCache(x=x, h=h_v, r=tbh(xp, G[:, :H, :]), z=tbh(xp, G[:, H:2 * H, :]), n=tbh(xp, nT),
                         hn=tbh(xp, G[:, 2 * H:, :]), reset_after=reset_after, hT=hT, G=G, nT=nT, xT=xT,
                         fold_x=fold_x)
    return h_v[1:, ...], (h_v[T, ...],), cache


def _gru_forward_cupy(xp, p: CellParams, x, state0, *, reset_after: bool, ws: Workspace | None, reuse: bool):
    """gru_forward on CuPy: the input projection of all T in one GEMM, the gate math in _cuda's fused kernels
    (one launch per step besides the GEMM); hT rows [h; 1 when reset_after], x kept in xT."""
    from . import _cuda

    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    Hk = H + 1 if reset_after else H  # rows of hT used by the recurrent GEMM

    # input weights with the biases as an extra column; r, z rows scaled by 1/2 (exact: sigmoid via tanh)
    w_in = ws.get(xp, "w_in", (H3, I + 1), dt, dev)  # (3H, I+1)
    o.copy(p.w_ih, w_in[:, :I])
    o.add(p.b_ih, p.b_hh, out=w_in[:, I])  # r, z: b_ih + b_hh; n: b_in + b_hn (reset_before)
    if reset_after:
        o.copy(p.b_ih[H2:], w_in[H2:, I])  # n: b_in only, b_hn is multiplied by r
    o.mul(w_in[:H2, :], 0.5, out=w_in[:H2, :])
    if reset_after:  # (3H, H+1): W_hh with [0, 0, b_hn] as the last column
        w_h = ws.get(xp, "w_h", (H3, H + 1), dt, dev)
        o.copy(p.w_hh, w_h[:, :H])
        o.fill(w_h[:H2, H], 0.0)
        o.copy(p.b_hh[H2:], w_h[H2:, H])
        o.mul(w_h[:H2, :], 0.5, out=w_h[:H2, :])
    else:
        w_h = o.mul(p.w_hh[:H2, :], 0.5, out=ws.get(xp, "w_h", (H2, H), dt, dev))  # (2H, H)
        w_n = p.w_hh[H2:, :]  # (H, H)

    xT = input_cache(xp, o, ws, reuse, x, dt, dev)  # (T, I+1, B)
    hT = cache_buf(xp, ws, reuse, "hT", (T + 1, Hk, B), dt, dev)  # (T+1, H(+1), B)
    G = cache_buf(xp, ws, reuse, "G", (T, H3, B), dt, dev)  # (T, 3H, B)
    nT = cache_buf(xp, ws, reuse, "nT", (T, H, B), dt, dev)  # (T, H, B)
    if reset_after:
        o.fill(hT[:, H, :], 1.0)
    o.copy(xp.matrix_transpose(h0), hT[0, :H, :])
    flat = ws.get(xp, "gates", (T * 4 * H * B,), dt, dev)  # gi now, the backward's gate grads later
    gi = xp.reshape(flat[: T * H3 * B], (T, H3, B))  # (T, 3H, B)
    o.matmul(w_in, xT, out=gi)
    tmp = None if reset_after else ws.get(xp, "tmp", (H, B), dt, dev)
    for t in range(T):
        hp, hx, g_t, G_t = hT[t], hT[t + 1, :H, :], gi[t], G[t]
        if reset_after:
            o.matmul(w_h, hp, out=G_t)
            _cuda.gru_fwd_after(g_t, G_t, hp[:H], nT[t], hx)
        else:
            o.matmul(w_h, hp, out=G_t[:H2])
            _cuda.gru_fwd_before_rz(g_t, G_t, hp)
            o.matmul(w_n, G_t[H2:], out=tmp)
            _cuda.gru_fwd_before_n(g_t, tmp, G_t, hp, nT[t], hx)
    return _gru_outputs(xp, x, hT, G, nT, xT, reset_after, fold_x=False)


def _gru_factors(xp, o: Ops, c: FastGRUCache, t0: int, t1: int, K, tmp):
    """For steps t0..t1-1, K (m, 3, H, B): [r(1-r)·(hn | h_{t-1}), z(1-z)(h_{t-1} - n), (1-z)(1-n^2)].
    8 calls for the whole chunk."""
    m = t1 - t0
    H = c.nT.shape[1]
    K, tmp = K[:m], tmp[:m]
    G = xp.reshape(c.G[t0:t1], (m, 3, H, -1))  # (m, 3, H, B) [r, z, hn]
    hp, n_ = c.hT[t0:t1, :H, :], c.nT[t0:t1]
    krz, kn = K[:, :2], K[:, 2]
    one = o.const(1.0, G.dtype, device_of(G))
    o.sub(one, G[:, :2], out=krz)  # 1-r, 1-z
    o.mul(n_, n_, out=kn)
    o.sub(one, kn, out=kn)
    o.mul(kn, K[:, 1], out=kn)  # (1-z)(1-n^2)
    o.mul(krz, G[:, :2], out=krz)  # r(1-r), z(1-z)
    o.mul(K[:, 0], G[:, 2] if c.reset_after else hp, out=K[:, 0])
    o.mul(K[:, 1], o.sub(hp, n_, out=tmp), out=K[:, 1])  # z(1-z)(h_{t-1} - n)
    return K


def gru_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as gru.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastGRUCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, H, B = c.nT.shape
    I = c.xT.shape[1] - 1
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    ra, fold = c.reset_after, c.fold_x
    Kc = c.hT.shape[1]  # columns of the recurrent weight grads: [h | x | 1] (fold_x), [h | 1] or [h]
    one = H + I if fold else (H if ra else None)  # the ones column (bias grads), if any
    dh = state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dhp = ws.get(xp, "dhp", (H, B), dt, dev)  # (H, B) the recurrent GEMM's output
    cuda = is_cupy(xp)
    # CPU: chunks sized for the cache; CuPy keeps every gate grad anyway, so only the weight-grad bound applies
    # (at B = H = 256 the cache bound would give 1-step chunks: extra kernel launches for nothing)
    cache_bound = T if cuda else CHUNK_ELEMS // max(1, B * H)
    chunk = max(1, min(T, cache_bound, DW_CHUNK_ELEMS // (H3 * Kc)))
    # gate grads of one chunk of steps (all T on CuPy): every use of them (recurrent GEMM, weight grads, input
    # backward) happens within the chunk, while they are in cache; step t lives at row t - off
    Tb = T if cuda else chunk
    # in the forward's full-T input-projection buffer when it used one (CuPy always does), else their own
    flat, flat_id = dg_buffer(xp, ws, T, Tb, 4 * H, B, dt, dev, shared=cuda or T * H * B <= GI_FULL_MAX_ELEMS)
    if ra:  # per step [n_h | r | z | n_i]: dgh = rows 0:3H (gate order n, r, z), dgi = rows H:4H (torch order)
        Dg = xp.reshape(flat, (Tb, 4 * H, B))
        dgh_all, dgi_all = Dg[:, :H3, :], Dg[:, H:, :]
        w_t = ws.get(xp, "w_perm_t", (H, H3), dt, dev)  # (W_hh rows n, r, z)^T
        o.copy(xp.matrix_transpose(p.w_hh[H2:, :]), w_t[:, :H])
        o.copy(xp.matrix_transpose(p.w_hh[:H2, :]), w_t[:, H:])
        D4 = xp.reshape(flat, (Tb, 4, H, B))
        z_out, ar_out, hn_out, an = D4[:, 2], D4[:, 1], D4[:, 0], D4[:, 3]
        dw = o.fill(ws.get(xp, "dw", (H3, Kc), dt, dev), 0.0)  # rows n, r, z x columns of hT
        dwn = None
    else:  # per step [r | z | n]
        Dg = xp.reshape(flat[: Tb * H3 * B], (Tb, H3, B))
        dgh_all, dgi_all = Dg[:, :H2, :], Dg
        w_rz_t = o.copy(xp.matrix_transpose(p.w_hh[:H2, :]), ws.get(xp, "w_rz_t", (H, H2), dt, dev))
        w_n_t = o.copy(xp.matrix_transpose(p.w_hh[H2:, :]), ws.get(xp, "w_n_t", (H, H), dt, dev))
        D4 = xp.reshape(Dg, (Tb, 3, H, B))
        z_out, ar_out, an = D4[:, 1], D4[:, 0], D4[:, 2]
        drh = ws.get(xp, "drh", (H, B), dt, dev)
        dw = o.fill(ws.get(xp, "dw", (H2, Kc), dt, dev), 0.0)  # rows r, z x columns of hT
        dwn = o.fill(ws.get(xp, "dwn", (H, H), dt, dev), 0.0)  # n rows x (r ⊙ h)
        dwtn = ws.get(xp, "dwtn", (chunk, H, H), dt, dev)
    dwt = ws.get(xp, "dwt", (chunk,) + tuple(dw.shape), dt, dev)  # per-step dW terms of one chunk
    zb = ws.get(xp, "zb", (chunk, B, Kc), dt, dev) if B <= DW_COPY_MAX_B else None
    K = ws.get(xp, "K", (chunk, 3, H, B), dt, dev)
    ktmp = ws.get(xp, "ktmp", (chunk, H, B), dt, dev)
    hT, G = c.hT, c.G
    if cuda:
        from . import _cuda

        dhz = ws.get(xp, "dhz", (H, B), dt, dev)  # dh ⊙ z of the step after; dh = dhz + dhp (+ dy)
        o.copy(dh, dhz)
        o.fill(dhp, 0.0)
    mul, add, matmul = o.mul, o.add, o.matmul
    # input backward: dx from all three gate rows; the weight grads from the n rows only when x sits in hT (the
    # recurrent weight grads above then hold the r, z rows' input weights and biases)
    n_rows = ((slice(0, H), slice(H2, H3)),)
    inb = InputBackward(xp, o, ws, reuse, p, ((slice(0, H3), slice(0, H3)),), c.xT, H3, chunk,
                         dw_rows=slice(H2, H3) if fold else None, dw_blocks=n_rows if fold else None,
                         dx=input_grad)
    if not cuda:
        def build():  # step t's views: its factors in K (chunks counted from the end), gate grads, gates
            out = []
            for t in range(T):
                j = t - max(0, T - ((T - 1 - t) // chunk + 1) * chunk)  # t - (its chunk's t0)
                k = K[j]
                out.append((k[0], k[1], k[2], z_out[j], an[j], ar_out[j], G[t, :H], G[t, H:H2],
                            hn_out[j] if ra else None, dgh_all[j]))
            return out

        key = (T, chunk, ra, flat_id, id(K), id(G))
        step_views = ws.views("bwd", key, build) if reuse else build()
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        off = 0 if cuda else t0  # step t's gate grads are Dg[t - off]
        if not cuda:
            _gru_factors(xp, o, c, t0, t1, K, ktmp)
        for t in range(t1 - 1, t0 - 1, -1):
            dy_t = None if dy is None else xp.matrix_transpose(dy[t, ...])  # (H, B) view
            if cuda:
                if ra:
                    _cuda.gru_bwd_after(dhz, dhp, dy_t, G[t], hT[t, :H, :], c.nT[t], Dg[t])
                    matmul(w_t, dgh_all[t], out=dhp)
                else:
                    _cuda.gru_bwd_before_zn(dhz, dhp, dy_t, G[t], hT[t], c.nT[t], Dg[t], dh)
                    matmul(w_n_t, an[t], out=drh)
                    _cuda.gru_bwd_before_r(drh, dh, G[t], hT[t], Dg[t], dhz)
                    matmul(w_rz_t, Dg[t, :H2], out=dhp)
                if cut(tbptt, T, t):
                    o.fill(dhz, 0.0)
                    o.fill(dhp, 0.0)
                continue
            k0, k1, k2, z_o, an_t, ar_o, r_t, z_t, hn_o, dgh_t = step_views[t]
            if dy_t is not None:
                add(dh, dy_t, dh)
            mul(dh, k1, z_o)  # da_z  (two calls: a broadcast one is slower for small H*B); NumPy: out positional
            mul(dh, k2, an_t)  # da_n
            if ra:
                mul(an_t, k0, ar_o)  # da_r = da_n · hn · r(1-r)
                mul(an_t, r_t, hn_o)  # da_n ⊙ r: the n row of dgh
                matmul(w_t, dgh_t, dhp)  # (H, 3H) @ (3H, B)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            else:
                matmul(w_n_t, an_t, drh)  # d(r ⊙ h) (H, B)
                mul(drh, k0, ar_o)  # da_r = drh · h · r(1-r)
                matmul(w_rz_t, dgh_t, dhp)  # (H, 2H) @ (2H, B)
                mul(drh, r_t, drh)
                add(dhp, drh, dhp)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            if tbptt and cut(tbptt, T, t):
                o.fill(dh, 0.0)
        # this chunk's recurrent weight grads: its steps' GEMMs in one batched call, then one sum
        m = t1 - t0
        u0, u1 = t0 - off, t1 - off
        matmul(dgh_all[u0:u1], dw_operand(xp, o, hT, t0, t1, zb), out=dwt[:m])  # rows x columns of hT
        for j in range(m):  # no temporary (a new (3H, K) array per chunk costs page faults)
            add(dw, dwt[j], out=dw)
        if not ra:  # n rows x (r ⊙ h), kept in G's hn slot
            matmul(Dg[u0:u1, H2:], xp.permute_dims(G[t0:t1, H2:], (0, 2, 1)), out=dwtn[:m])
            for j in range(m):
                add(dwn, dwtn[j], out=dwn)
        inb.chunk(t0, t1, dgi_all[u0:u1])
        t1 = t0
    if cuda:
        add(dhz, dhp, out=dh)

    # parameter gradients from the accumulated blocks. Recurrent: rows [n | r | z] (reset_after) or [r | z] (+ dwn)
    # x columns [h | x | 1] or [h | 1] or [h]; the ones column is each bias's grad (b_ih = b_hh for r, z)
    dw_rz, dw_n = (dw[H:], dw[:H, :H]) if ra else (dw, dwn)
    if fold:  # r, z rows: [W_hh | W_ih | b] as folded by the forward
        unfold_grads(o, g, dw_rz, ((slice(0, H2), slice(0, H2)),), H, I)
    else:
        add(g.w_hh[:H2, :], dw_rz[:, :H], out=g.w_hh[:H2, :])
        if ra:
            add(g.b_hh[:H2], dw_rz[:, one], out=g.b_hh[:H2])
    add(g.w_hh[H2:, :], dw_n, out=g.w_hh[H2:, :])
    if ra:
        add(g.b_hh[H2:], dw[:H, one], out=g.b_hh[H2:])  # b_hn: inside r ⊙ (...), its own grad
    # input weights: every row (no fold_x) or the n rows; reset_before: b_hn is additive, same grad as b_in
    dx = inb.finish(g, b_hh=not ra)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)


