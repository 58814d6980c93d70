"""SGD, Adam and global-norm clipping, in place on device arrays; no host sync.

Parameters and gradients are dicts with the same keys (the model's names); state is keyed by those names.
`state_dict()` / `load_state_dict()` give and take the state as {"kind", "t", "arrays": {"NAME/PART": array}}
(PART m, v for Adam, momentum for SGD), the layout of a resume state; arrays stay on their device.
"""
from __future__ import annotations

import math

from ..errors import UserError
from .fast import adam_fused


class Optimizer:
    """What SGD and Adam share: the step count t, per-parameter state, and its (de)serialisation."""

    name = ""  # the registry key (OPTIMIZERS)
    parts: tuple = ()  # the arrays kept per parameter

    def __init__(self):
        self.state: dict = {}  # {param name: tuple of arrays, one per part}
        self.t = 0

    def state_dict(self) -> dict:
        arrays = {f"{k}/{part}": a for k, v in self.state.items() for part, a in zip(self.parts, v)}
        return {"kind": self.name, "t": int(self.t), "arrays": arrays}

    def load_state_dict(self, sd: dict) -> None:
        """Arrays already on the parameters' device (the caller moves them)."""
        if sd.get("kind") != self.name:
            raise UserError(f"saved optimizer state is {sd.get('kind')!r}, this run uses {self.name!r}; "
                            f"resume with the saved config")
        grouped: dict = {}
        for key, a in sd["arrays"].items():
            name, _, part = key.rpartition("/")
            grouped.setdefault(name, {})[part] = a
        state = {}
        for name, got in grouped.items():
            if set(got) != set(self.parts):
                raise UserError(f"saved optimizer state has an incomplete entry for {name!r}; start a new run")
            state[name] = tuple(got[part] for part in self.parts)
        self.state, self.t = state, int(sd["t"])


def global_norm(xp, grads: dict):
    """sqrt(sum of squares over every gradient): a 0-d device array."""
    total = None
    for g in grads.values():
        s = xp.sum(g * g)
        total = s if total is None else total + s
    return xp.sqrt(total)


def clip_grad_norm(xp, grads: dict, max_norm: float):
    """Scale all grads by min(1, max_norm / (norm + 1e-6)) in place (torch's clip_grad_norm_ definition),
    without a branch on a device value. Returns the norm before clipping (0-d device array)."""
    norm = global_norm(xp, grads)
    scale = max_norm / xp.maximum(norm + 1e-6, xp.full_like(norm, max_norm))  # 1 when norm + 1e-6 <= max_norm
    for g in grads.values():
        g *= scale
    return norm


class SGD(Optimizer):
    """Plain gradient descent (the seed project's update), optional momentum."""

    name, parts = "sgd", ("momentum",)

    def __init__(self, lr: float, momentum: float = 0.0):
        super().__init__()
        self.lr, self.momentum = lr, momentum

    def step(self, xp, params: dict, grads: dict) -> None:
        self.t += 1
        for k, p in params.items():
            g = grads[k]
            if self.momentum:
                if k not in self.state:
                    self.state[k] = (xp.zeros_like(p),)
                (v,) = self.state[k]
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), torch's defaults and bias correction."""

    name, parts = "adam", ("m", "v")

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__()
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def step(self, xp, params: dict, grads: dict) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        step = self.lr / c1
        # NumPy with the CPU kernels: one call a parameter, the same values
        fused = adam_fused(xp, params, b1, b2, self.eps, step, math.sqrt(c2), self.weight_decay)
        for k, p in params.items():
            g = grads[k]
            if k not in self.state:
                self.state[k] = (xp.zeros_like(p), xp.zeros_like(p))
            m, v = self.state[k]
            if fused is not None and fused(p, g, m, v):
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p
            # the same operations in the same order as m = b1 m + (1-b1) g, v = b2 v + (1-b2) g², then
            # p -= step m / (sqrt(v)/sqrt(c2) + eps) (same values), with in-place updates of the temporaries:
            # 4 arrays allocated per parameter instead of 8
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            gg = g * g
            gg *= 1.0 - b2
            v += gg
            den = xp.sqrt(v)
            den /= math.sqrt(c2)
            den += self.eps
            upd = step * m
            upd /= den
            p -= upd


OPTIMIZERS = {cls.name: cls for cls in (Adam, SGD)}  # the one registry: config validation derives from it
