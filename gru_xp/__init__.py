"""gru_xp: recurrent networks written once against an array namespace (NumPy on CPU, CuPy on CUDA)."""
from .backend import Backend, resolve, to_host
from .errors import UserError
from .nn.recurrent import GRU, LSTM, RNN

__version__ = "0.1.0"
__all__ = ["GRU", "LSTM", "RNN", "Backend", "UserError", "resolve", "to_host", "__version__"]
