"""Weight converters: gru_xp <-> torch.nn.{GRU,LSTM,RNN}. Host edge: torch is imported only when used."""
from __future__ import annotations

import numpy as np

from .backend import to_host


def to_torch_state_dict(layer) -> dict:
    """gru_xp layer -> {name: torch.Tensor} (float64 stays float64)."""
    import torch

    return {k: torch.from_numpy(np.array(to_host(v))) for k, v in layer.params.items()}


def to_torch_module(layer):
    """A torch.nn module with the same sizes and weights (time-major, CPU, the layer's dtype)."""
    import torch

    kw = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional, dropout=layer.dropout)
    mode = layer.mode
    if mode == "GRU":
        if not layer.cell_opts.get("reset_after", True):
            raise ValueError("torch.nn.GRU has only reset_after=True; reset_after=False has no torch equivalent")
        mod = torch.nn.GRU(layer.input_size, layer.hidden_size, **kw)
    elif mode == "LSTM":
        mod = torch.nn.LSTM(layer.input_size, layer.hidden_size, **kw)
    else:
        mod = torch.nn.RNN(layer.input_size, layer.hidden_size, nonlinearity=layer.cell_opts["nonlinearity"], **kw)
    mod = mod.to(getattr(torch, layer.backend.dtype_name))
    mod.load_state_dict(to_torch_state_dict(layer))
    return mod


# ---- Keras (TensorFlow) weights -> gru_xp ------------------------------------------------------------------------
# Keras stores one layer as kernel (I, G), recurrent_kernel (H, G), bias, with the gate blocks side by side along
# the columns (x @ kernel). GRU blocks are z, r, h (torch's rows are r, z, n); LSTM blocks are i, f, c, o (torch's
# rows i, f, g, o: the same order). Assumes Keras's default activations (tanh, recurrent sigmoid) and
# time-major use; Keras's own h_t = z ⊙ h_{t-1} + (1 - z) ⊙ hh is torch's GRU update with the same z.
def _keras_arrays(name, kernel, recurrent_kernel, blocks):
    from .errors import UserError

    k = np.asarray(to_host(kernel), dtype=np.float64)
    r = np.asarray(to_host(recurrent_kernel), dtype=np.float64)
    if k.ndim != 2 or r.ndim != 2 or k.shape[1] % blocks or r.shape != (k.shape[1] // blocks, k.shape[1]):
        raise UserError(f"Keras {name} weights: kernel must be (I, {blocks}H) and recurrent_kernel (H, {blocks}H), "
                        f"got {k.shape} and {r.shape}")
    return k, r, k.shape[1] // blocks


def keras_gru_state_dict(kernel, recurrent_kernel, bias=None, reset_after: bool = True) -> dict:
    """Keras GRU weights -> torch-named float64 NumPy state dict for a one-layer gru_xp.GRU(reset_after=...).
    bias: (2, 3H) when reset_after=True (row 0 input bias, row 1 recurrent bias), (3H,) when reset_after=False
    (the single bias is the input bias; bias_hh is zero), None when the Keras layer had use_bias=False."""
    from .errors import UserError

    k, r, H = _keras_arrays("GRU", kernel, recurrent_kernel, 3)
    if bias is None:
        b_i = b_h = np.zeros(3 * H)
    else:
        b = np.asarray(to_host(bias), dtype=np.float64)
        want = (2, 3 * H) if reset_after else (3 * H,)
        if b.shape != want:
            raise UserError(f"Keras GRU bias with reset_after={reset_after} must be {want}, got {b.shape}; "
                            f"pass the reset_after the Keras layer was built with")
        b_i, b_h = (b[0], b[1]) if reset_after else (b, np.zeros(3 * H))

    def reorder(a):  # columns z, r, h -> torch rows r, z, n
        return np.concatenate([a[..., H : 2 * H], a[..., :H], a[..., 2 * H :]], axis=-1)

    return {"weight_ih_l0": reorder(k).T.copy(), "weight_hh_l0": reorder(r).T.copy(),
            "bias_ih_l0": reorder(b_i), "bias_hh_l0": reorder(b_h)}


def keras_lstm_state_dict(kernel, recurrent_kernel, bias=None) -> dict:
    """Keras LSTM weights (kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,) or None) -> torch-named float64
    NumPy state dict for a one-layer gru_xp.LSTM; bias goes to bias_ih, bias_hh is zero."""
    from .errors import UserError

    k, r, H = _keras_arrays("LSTM", kernel, recurrent_kernel, 4)
    b = np.zeros(4 * H) if bias is None else np.asarray(to_host(bias), dtype=np.float64)
    if b.shape != (4 * H,):
        raise UserError(f"Keras LSTM bias must be ({4 * H},), got {b.shape}")
    return {"weight_ih_l0": k.T.copy(), "weight_hh_l0": r.T.copy(), "bias_ih_l0": b, "bias_hh_l0": np.zeros(4 * H)}


def from_keras_gru(kernel, recurrent_kernel, bias=None, reset_after: bool = True, *, device="cpu",
                   dtype="float32"):
    """A one-layer gru_xp.GRU holding a Keras GRU's weights (e.g. `from_keras_gru(*keras_layer.get_weights())`)."""
    from .nn.recurrent import GRU

    sd = keras_gru_state_dict(kernel, recurrent_kernel, bias, reset_after)
    I, H = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
    layer = GRU(I, H, reset_after=reset_after, device=device, dtype=dtype, seed=0)
    layer.load_state_dict(sd)
    return layer


def from_keras_lstm(kernel, recurrent_kernel, bias=None, *, device="cpu", dtype="float32"):
    """A one-layer gru_xp.LSTM holding a Keras LSTM's weights (e.g. `from_keras_lstm(*keras_layer.get_weights())`)."""
    from .nn.recurrent import LSTM

    sd = keras_lstm_state_dict(kernel, recurrent_kernel, bias)
    I, H = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
    layer = LSTM(I, H, device=device, dtype=dtype, seed=0)
    layer.load_state_dict(sd)
    return layer
