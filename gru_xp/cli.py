"""Command line: argparse subcommands. The only place that turns a UserError into one stderr line and exit 2."""
from __future__ import annotations

import argparse
import sys

from .config import add_config_flags, make_config, overrides
from .errors import UserError


def _cmd_check(args) -> int:
    from .check import format_rows, run_checks

    rows = run_checks(args.device)
    print(format_rows(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


# ---- train / predict -------------------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    from .runs import resume_run, run

    if getattr(args, "resume", None) is not None:
        if args.config is not None:
            raise UserError("--config cannot be combined with --resume: the run's own config is used; drop --config")
        resume_run(args.resume, overrides(args))
        return 0
    cfg_file = args.config if args.config is not None else "default"
    cfg = make_config(cfg_file, overrides(args))
    from .panelrun import is_panel, run_panel

    if is_panel(cfg):  # issue 18: a .tsf file or a long CSV with --id-col: one global model
        run_panel(cfg)
        return 0
    run(cfg)
    return 0


def _cmd_predict(args) -> int:
    import numpy as np
    import pandas as pd

    from .checkpoint import run_kind
    from .metrics import level_name
    from .runs import predict_bands, predict_run

    kind = run_kind(args.run) if args.run else None
    if kind == "classify":
        return _predict_classes(args)
    if args.text:
        raise UserError(f"--text needs a classification run folder (written by 'gru-xp classify'); {args.run} is "
                        f"{'a forecasting run' if kind else 'not a run folder'}")
    if kind == "panel":
        return _predict_panel(args)
    if args.series is not None:
        raise UserError(f"--series picks a series of a panel run; {args.run} is "
                        f"{'a single-series run' if kind else 'not a run folder'} (drop --series)")

    steps, levels = _predict_steps(args), _predict_levels(args)
    labels, fc, series, lr = predict_run(args.run, args.data, steps, args.device)
    col = "date" if series.dates is not None else "step"
    df = pd.DataFrame({col: labels, "forecast": fc})
    bands = predict_bands(lr, series, len(fc), levels)
    if bands is not None:  # lower_80, upper_80, lower_95, upper_95 for every step
        for c in sorted(bands.lower):
            df[f"lower_{level_name(c)}"], df[f"upper_{level_name(c)}"] = bands.lower[c][0], bands.upper[c][0]
            if not np.all(np.isfinite(bands.upper[c][0])):
                print(f"gru-xp: note: the {level_name(c)}% interval is unbounded at some steps: too few calibration "
                      f"errors for that level (the run keeps the latest {lr.config.interval_window or 'all'} per "
                      f"step; retrain with a larger --interval-window)", file=sys.stderr)
    return _emit_csv(df, args.out, f"{len(fc)} forecast step(s)", "%.8g")


def _predict_steps(args):
    """--horizon as a positive integer, or None."""
    if args.horizon is None:
        return None
    try:
        steps = int(args.horizon)
    except ValueError:
        raise UserError(f"--horizon must be a positive integer, got {args.horizon!r}") from None
    if steps < 1:
        raise UserError(f"--horizon must be a positive integer, got {args.horizon!r}")
    return steps


def _predict_levels(args):
    """--intervals as levels (checked before any work, like every config value), or None: the run's own."""
    if args.intervals is None:
        return None
    return make_config(None, {"intervals": args.intervals, "interval_window": 0}).intervals


def _emit_csv(df, out: str | None, what: str, float_format: str) -> int:
    """A predict command's table: to --out (written atomically, a line on stderr saying so) or to stdout."""
    from .checkpoint import write_text

    text = df.to_csv(index=False, float_format=float_format)
    if out:
        write_text(out, text)
        print(f"wrote {what} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _predict_panel(args) -> int:
    """`gru-xp predict --run DIR` on a panel run (issue 18): every series, or --series NAME, past its end."""
    import numpy as np

    from .panelrun import predict_panel

    steps, levels = _predict_steps(args), _predict_levels(args)
    df, _ = predict_panel(args.run, args.data, steps, args.series, args.device, levels)
    upper = [c for c in df.columns if c.startswith("upper_")]
    if upper and not np.isfinite(df[upper].to_numpy()).all():
        print("gru-xp: note: some intervals are unbounded (-inf, inf): too few pooled calibration errors at those "
              "steps for that level (level C needs at least C / (1 - C) of them, 19 at 95%; steps past the run's "
              "horizons have none)", file=sys.stderr)
    return _emit_csv(df, args.out, f"{len(df)} forecast row(s)", "%.8g")


# ---- classify (issue 17) -------------------------------------------------------------------------------------------
def _cmd_classify(args) -> int:
    from .classify import run_classify
    from .config import classify_overrides, make_classify_config

    run_classify(make_classify_config(args.config, classify_overrides(args)))
    return 0


def _predict_classes(args) -> int:
    """`gru-xp predict --run DIR` on a classify run folder: one row per input, label, probability per class."""
    from .classify import load_classifier, predict_frame

    for flag, given in (("--horizon", args.horizon), ("--intervals", args.intervals), ("--series", args.series)):
        if given is not None:
            raise UserError(f"{flag} is for forecasting runs; {args.run} is a classifier (drop {flag})")
    df = predict_frame(load_classifier(args.run, args.device), texts=args.text or None, data=args.data)
    return _emit_csv(df, args.out, f"{len(df)} prediction(s)", "%.6g")


def _cmd_vanishing(args) -> int:
    from . import plots
    from .diagnostics import format_vanishing, vanishing_gradient_experiment

    r = vanishing_gradient_experiment(T=args.T, hidden=args.hidden, batch=args.batch, seed=args.seed,
                                      device=args.device, dtype=args.dtype, train_steps=args.train_steps, lr=args.lr,
                                      repeats=args.repeats)
    print(format_vanishing(r))
    print(f"plot: {plots.vanishing(r, args.out)}")
    return 0


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s):
    return 0 if str(s).strip() == "0" else _positive_int(s)


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line, exit 2, like every other mistake."""

    argv: list | None = None  # what parse_args was given: the suggestion looks at its command's flags only

    def parse_known_args(self, args=None, namespace=None):
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        command = self._command()
        where = self.prog if command is None else f"{self.prog} {command}"
        raise UserError(f"{message}{self._suggest(message)} (see '{where} --help')")

    def _commands(self) -> dict:
        return {name: sp for a in self._actions if isinstance(a, argparse._SubParsersAction)
                for name, sp in a.choices.items()}

    def _command(self):
        """The subcommand named on the command line, or None."""
        commands = self._commands()
        return next((t for t in self.argv or () if t in commands), None)

    def _suggest(self, message: str) -> str:
        """'; did you mean --hidden-size?' for the first unrecognized --flag close to one of its command's flags, or
        '; --epochs is an option of gru-xp train, ..., not of gru-xp predict' for another command's flag."""
        if "unrecognized arguments" not in message:
            return ""
        import difflib

        commands, command = self._commands(), self._command()

        def flags(p):
            return {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}

        own = flags(self) | (flags(commands[command]) if command else set())
        for tok in message.split(":", 1)[-1].split():
            if not tok.startswith("--"):
                continue
            flag = tok.split("=", 1)[0]
            others = [name for name, sp in commands.items() if name != command and flag in flags(sp)]
            if command and others:
                return f"; {flag} is an option of {', '.join(f'{self.prog} {n}' for n in others)}, not of " \
                       f"{self.prog} {command}"
            close = difflib.get_close_matches(flag, sorted(own), n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="gru-xp", description="Recurrent networks from scratch on NumPy or CuPy.")
    p.add_argument("--version", action="version", version=f"gru-xp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="prove the install: finite differences, PyTorch parity, CPU vs device")
    c.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    c.set_defaults(func=_cmd_check)

    t = sub.add_parser("train", help="train a forecaster, print metrics beside baselines, write a run folder")
    t.add_argument("--config", default=None, help="TOML config (path or name in configs/; default configs/default.toml)")
    t.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted run from its folder (its saved config; only --epochs, --patience, "
                        "--device, --out, --quiet, --plots, --diagnostics may be given)")
    add_config_flags(t)
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser("predict", help="forecast past the end of a series with a trained run, or classify inputs "
                                       "with a 'gru-xp classify' run")
    f.add_argument("--run", required=True, help="run folder written by 'gru-xp train' or 'gru-xp classify'")
    f.add_argument("--data", default=None, help="CSV to forecast from (default: the run's training data); for a "
                                                "classifier: a .ts file, or a text folder / CSV, to classify")
    f.add_argument("--text", action="append", default=None, metavar="TEXT",
                   help="classifier runs: a document to classify (repeatable)")
    f.add_argument("--horizon", default=None, help="steps to forecast (default: the trained horizon; recursive beyond)")
    f.add_argument("--out", default=None, help="CSV file to write (default: stdout)")
    f.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    f.add_argument("--intervals", default=None, metavar="LEVELS",
                   help="prediction interval levels, e.g. 0.8,0.95, or none (default: the run's)")
    f.add_argument("--series", default=None, metavar="NAME",
                   help="panel runs: forecast only this series (default: every series)")
    f.set_defaults(func=_cmd_predict)

    from .config import add_classify_flags

    cl = sub.add_parser("classify", help="train a sequence classifier (.ts series or text) on variable-length "
                                         "batches, beside majority and 1-NN baselines; write a run folder")
    cl.add_argument("--config", default=None, help="TOML config (path or name in configs/, e.g. japanese-vowels)")
    add_classify_flags(cl)
    cl.set_defaults(func=_cmd_classify)

    v = sub.add_parser("vanishing", help="RNN vs GRU vs LSTM: per-step gradient norms on the adding problem, one plot")
    v.add_argument("--T", type=_positive_int, default=100, help="sequence length (default 100)")
    v.add_argument("--hidden", type=_positive_int, default=32, help="hidden units (default 32)")
    v.add_argument("--batch", type=_positive_int, default=32, help="batch size (default 32)")
    v.add_argument("--repeats", type=_positive_int, default=8, help="seeds averaged, geometric mean (default 8)")
    v.add_argument("--train-steps", type=_nonneg_int, default=0, help="Adam steps before measuring (default 0: at init)")
    v.add_argument("--lr", type=_positive_float, default=3e-3, help="learning rate for --train-steps (default 3e-3)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    v.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    v.add_argument("--out", default="vanishing_gradient.png", help="PNG to write (default vanishing_gradient.png)")
    v.set_defaults(func=_cmd_vanishing)

    from . import bench

    b = sub.add_parser("bench", help="time a training step, a layer forward + backward and an inference forward "
                                     "against PyTorch in the same run (ratios, medians)")
    bench.add_arguments(b)
    b.set_defaults(func=bench.run)

    from . import sweep

    w = sub.add_parser("sweep", help="hyperparameter sweeps and many series on Dask (LocalCluster or --scheduler)")
    sweep.add_arguments(w)
    w.set_defaults(func=sweep.run_cli)

    from . import backtest

    k = sub.add_parser("backtest", help="walk-forward backtest: expanding window over the last N blocks, beside baselines")
    backtest.add_arguments(k)
    k.set_defaults(func=backtest.run_cli)
    return p




EXIT_OK, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    """Exit codes: 0 ok; 1 `check` found failures; 2 a user error (one line on stderr); 3 training diverged (the
    best checkpoint so far is kept when there is one); 130 interrupted (Ctrl-C; resume state saved when training)."""
    from .errors import TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"gru-xp: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except UserError as e:
        print(f"gru-xp: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as e:
        print(f"gru-xp: {_one_line(e)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("gru-xp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("gru-xp: error: out of memory; use a smaller --hidden-size, --layers, --batch-size or --seq-length",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the file system said no (permissions, disk full, read-only): one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"gru-xp: error: {e.strerror or _one_line(e)}{where}; check the path, its permissions and free space",
              file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
