"""Kept as an import path: the forecaster model lives in gru_xp.nn.forecaster."""
from .nn.forecaster import Forecaster
from .nn.recurrent import build_recurrent

__all__ = ["Forecaster", "build_recurrent"]
