"""The one exception type a user sees: what is wrong and how to fix it, in one line."""


class UserError(ValueError):
    """Bad input from a user (flag, config, file, state dict). `cli.py` prints it as one line and exits 2."""
