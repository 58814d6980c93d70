"""The exception types a user sees: what is wrong and how to fix it, in one line.

    UserError            bad input (flag, config, file, run folder, state dict)   -> cli exit 2
    TrainingDiverged     loss became NaN/inf; the best checkpoint so far is kept   -> cli exit 3
    TrainingInterrupted  Ctrl-C during training; best checkpoint + resume state    -> cli exit 130
"""


class UserError(ValueError):
    """Bad input from a user (flag, config, file, state dict). `cli.py` prints it as one line and exits 2.

    One line whatever the input put into the message (a CSV column named "a\nb", a path with a line break): every
    character that does not print (line breaks, tabs, NUL) is written as its escape sequence."""

    def __init__(self, message="", *args):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """text with every non-printing character (\n, \r, \t, \x00, \u2028, ...) escaped as Python would write it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class TrainingDiverged(UserError):
    """The training loss (or validation loss) became NaN or inf. Training stopped at the end of that epoch.

    `epoch` is the epoch that diverged; `history` the train.History so far (the model holds the best epoch's
    parameters); `result` the train.RunResult built from the best epoch (None when no epoch was finite, or when
    raised by `fit`); `out_dir` the run folder written with the best checkpoint (None when nothing was written).
    `cli.py` prints it as one line and exits 3."""

    def __init__(self, message: str, *, epoch: int = 0, history=None, result=None, out_dir=None):
        super().__init__(message)
        self.epoch, self.history, self.result, self.out_dir = epoch, history, result, out_dir


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the epoch in progress was finished, then training stopped.

    `state` is a train.FitState (everything needed to continue bit-identically); `out_dir` the run folder where the
    best checkpoint and the resume state were saved (None when nothing was saved, e.g. run(save=False)).
    A KeyboardInterrupt subclass so that code which does not know about it still sees an ordinary Ctrl-C.
    `cli.py` prints it as one line and exits 130."""

    def __init__(self, message: str, *, state=None, out_dir=None):
        super().__init__(message)
        self.state, self.out_dir = state, out_dir

    def __str__(self):
        return str(self.args[0]) if self.args else "interrupted"
