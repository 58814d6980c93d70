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
