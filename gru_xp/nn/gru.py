"""GRU cell: forward, then its hand-derived backward, written once against an array namespace `xp`.

Legend: T time steps, B batch, I input features, H hidden units; gate rows in torch's order r, z, n (G = 3H).

reset_after=True  (PyTorch, cuDNN, Keras >= 2.3)
    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
reset_after=False (Cho et al. 2014, Keras reset_after=False, ONNX default): the reset gate acts before the GEMM
    n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)

Backward, per step, with dh = dL/dh_t (upstream dy_t plus what flows back from t+1):
    dn = dh ⊙ (1 - z)          dz = dh ⊙ (h_{t-1} - n)          dh_{t-1} = dh ⊙ z + (recurrent GEMM terms)
    da_n = dn ⊙ (1 - n²)       da_z = dz ⊙ z(1 - z)             da_r = dr ⊙ r(1 - r)
    reset_after:  dr = da_n ⊙ (W_hn h_{t-1} + b_hn);  dgh = [da_r, da_z, da_n ⊙ r];  dh_{t-1} += dgh W_hh
    reset_before: d(rh) = da_n W_hn;  dr = d(rh) ⊙ h_{t-1};  dh_{t-1} += d(rh) ⊙ r + [da_r, da_z] W_hrz
Parameter gradients are one GEMM each after the loop, over the stacked (T, B, ·) cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ._cell import CellParams, cut, input_backward, input_projection, recurrent_weight_grads, sigmoid

GATES = 3  # r, z, n
STATES = 1  # (h,)


@dataclass
class GRUCache:
    x: Any  # (T, B, I) input of this direction
    h: Any  # (T+1, B, H) h[0] = h0, h[t+1] = h_t
    r: Any  # (T, B, H) reset gate
    z: Any  # (T, B, H) update gate
    n: Any  # (T, B, H) candidate
    hn: Any  # (T, B, H) reset_after: W_hn h_{t-1} + b_hn; reset_before: r ⊙ h_{t-1}
    reset_after: bool


def forward(xp, p: CellParams, x, state0, *, reset_after: bool = True):
    """x (T, B, I), state0 = (h0 (B, H),) -> y (T, B, H), (h_T (B, H),), cache."""
    T, B, _ = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    gi = input_projection(xp, p, x)  # (T, B, 3H), b_ih folded in
    h = xp.empty((T + 1, B, H), dtype=dt, device=dev)  # (T+1, B, H)
    h[0, ...] = h0
    r = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    z = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    n = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    hn = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    if reset_after:
        w_hh_t = xp.matrix_transpose(p.w_hh)  # (H, 3H)
        for t in range(T):
            hp = h[t, ...]  # (B, H)
            gh = hp @ w_hh_t + p.b_hh  # (B, 3H): the one recurrent GEMM
            r_t = sigmoid(xp, gi[t, :, :H] + gh[:, :H])  # (B, H)
            z_t = sigmoid(xp, gi[t, :, H : 2 * H] + gh[:, H : 2 * H])  # (B, H)
            hn_t = gh[:, 2 * H :]  # (B, H)
            n_t = xp.tanh(gi[t, :, 2 * H :] + r_t * hn_t)  # (B, H)
            h[t + 1, ...] = n_t + z_t * (hp - n_t)  # (1-z) n + z h
            r[t, ...], z[t, ...], n[t, ...], hn[t, ...] = r_t, z_t, n_t, hn_t
    else:
        w_rz_t = xp.matrix_transpose(p.w_hh[: 2 * H, :])  # (H, 2H)
        w_n_t = xp.matrix_transpose(p.w_hh[2 * H :, :])  # (H, H)
        b_rz, b_n = p.b_hh[: 2 * H], p.b_hh[2 * H :]  # (2H,), (H,)
        for t in range(T):
            hp = h[t, ...]  # (B, H)
            gh = hp @ w_rz_t + b_rz  # (B, 2H)
            r_t = sigmoid(xp, gi[t, :, :H] + gh[:, :H])  # (B, H)
            z_t = sigmoid(xp, gi[t, :, H : 2 * H] + gh[:, H:])  # (B, H)
            rh_t = r_t * hp  # (B, H)
            n_t = xp.tanh(gi[t, :, 2 * H :] + rh_t @ w_n_t + b_n)  # (B, H)
            h[t + 1, ...] = n_t + z_t * (hp - n_t)
            r[t, ...], z[t, ...], n[t, ...], hn[t, ...] = r_t, z_t, n_t, rh_t
    cache = GRUCache(x=x, h=h, r=r, z=z, n=n, hn=hn, reset_after=reset_after)
    return h[1:, ...], (h[T, ...],), cache


def backward(xp, p: CellParams, c: GRUCache, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
             dh_record=None, input_grad: bool = True):
    """dy (T, B, H) or None (zeros),
    dstate_T = (dh_T (B, H),) or None -> dx (T, B, I), (dh0 (B, H),). Accumulates into g.
    input_grad=False: dx is not computed (None), as when nothing upstream needs it (a model's input).
    dh_record: optional (T, B, H) array; when given, dL/dh_t (total, before the step's backward) is written to it."""
    T, B, H = c.r.shape
    dev, dt = device_of(c.x), c.x.dtype
    dgi = xp.empty((T, B, 3 * H), dtype=dt, device=dev)  # (T, B, 3H) pre-activation grads, gates r, z, n
    dgh = xp.empty((T, B, 3 * H), dtype=dt, device=dev) if c.reset_after else dgi  # (T, B, 3H) at the h GEMM
    dh = xp.zeros((B, H), dtype=dt, device=dev) if dstate_T is None or dstate_T[0] is None else dstate_T[0]
    w_rz, w_n = p.w_hh[: 2 * H, :], p.w_hh[2 * H :, :]  # (2H, H), (H, H)
    for t in range(T - 1, -1, -1):
        if dy is not None:  # None: no upstream gradient on y (e.g. a head on the last state only)
            dh = dh + dy[t, ...]  # (B, H)
        if dh_record is not None:
            dh_record[t, ...] = dh
        hp, r, z, n = c.h[t, ...], c.r[t, ...], c.z[t, ...], c.n[t, ...]  # (B, H) each
        dhp = dh * z  # (B, H) direct path h_{t-1} -> h_t
        da_n = dh * (1.0 - z) * (1.0 - n * n)  # (B, H)
        da_z = dh * (hp - n) * z * (1.0 - z)  # (B, H)
        if c.reset_after:
            da_r = da_n * c.hn[t, ...] * r * (1.0 - r)  # (B, H)
            dgi[t, :, :H], dgi[t, :, H : 2 * H], dgi[t, :, 2 * H :] = da_r, da_z, da_n
            dgh[t, :, :H], dgh[t, :, H : 2 * H], dgh[t, :, 2 * H :] = da_r, da_z, da_n * r
            dhp = dhp + dgh[t, ...] @ p.w_hh  # (B, 3H) @ (3H, H)
        else:
            drh = da_n @ w_n  # (B, H)
            da_r = drh * hp * r * (1.0 - r)  # (B, H)
            dgi[t, :, :H], dgi[t, :, H : 2 * H], dgi[t, :, 2 * H :] = da_r, da_z, da_n
            dhp = dhp + drh * r + dgi[t, :, : 2 * H] @ w_rz  # (B, H)
        dh = xp.zeros_like(dhp) if cut(tbptt, T, t) else dhp
    if c.reset_after:
        dw, db = recurrent_weight_grads(xp, dgh, c.h[:T, ...])  # (3H, H), (3H,)
    else:  # rows r, z multiply h_{t-1}; rows n multiply r ⊙ h_{t-1}
        dw_rz, db_rz = recurrent_weight_grads(xp, dgi[:, :, : 2 * H], c.h[:T, ...])  # (2H, H), (2H,)
        dw_n, db_n = recurrent_weight_grads(xp, dgi[:, :, 2 * H :], c.hn)  # (H, H), (H,)
        dw, db = xp.concat([dw_rz, dw_n], axis=0), xp.concat([db_rz, db_n], axis=0)
    g.w_hh += dw
    g.b_hh += db
    dx = input_backward(xp, p, c.x, dgi, g, dx=input_grad)  # (T, B, I) or None
    return dx, (dh,)
