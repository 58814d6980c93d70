"""One RunConfig: defaults <- TOML file <- command-line flags, validated once; every mistake is a UserError.

TOML keys are the field names below (flat, snake_case); unknown keys get the closest valid key suggested.
The command-line flags of every command that takes a RunConfig (train, backtest, ...) are added by
`add_config_flags` and read back by `overrides`. The choices of cell, optimizer and nonlinearity are the math
floor's registries (nn.recurrent.CELLS, nn.optim.OPTIMIZERS, nn.rnn.NONLINEARITIES).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError
from .nn.optim import OPTIMIZERS as OPTIMIZER_REGISTRY
from .nn.recurrent import CELLS as CELL_REGISTRY
from .nn.rnn import NONLINEARITIES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
DATA_DIR = PROJECT_ROOT / "data"

CELLS = tuple(CELL_REGISTRY)
SCALERS = ("standard", "minmax", "none", "window")  # window: each window by its own mean (issue 18)
OPTIMIZERS = tuple(OPTIMIZER_REGISTRY)
MISSING = ("error", "drop", "ffill", "interpolate")
LOSSES = ("mse", "quantile", "mae")
FLOAT_LISTS = ("intervals", "quantiles")  # list fields of levels in (0, 1) (the other list field holds integer lags)
STR_LISTS = ("covariates", "future_covariates")  # list fields of column names (issue 18)
DEVICES_HINT = "cpu | cuda | cuda:N | auto"


@dataclass
class RunConfig:
    # ---- data ------------------------------------------------------------------------------------------
    name: str = "run"  # used in the default run folder name runs/<name>-<timestamp>
    data: str = "Electric_Production.csv"  # CSV path (bare names also looked up in data/), or "sine"
    target: str = ""  # target column ("" = Close for Yahoo files, else the non-date column of a 2-column file)
    date: str = ""  # date column ("" = Date/DATE when present; "none" = no date, row order is time order)
    missing: str = "error"  # missing target values: error | drop | ffill | interpolate
    sort_dates: bool = False  # sort rows by date instead of refusing unsorted dates
    sine_length: int = 1000  # --data sine: number of points
    sine_period: float = 40.0  # --data sine: period in steps
    sine_noise: float = 0.0  # --data sine: std of added Gaussian noise (seeded)
    # ---- windows, splits, transforms ---------------------------------------------------------------------
    split_ratio: float = 0.7  # train+validation fraction of the series (the rest is test)
    val_ratio: float = 0.1  # validation = this tail fraction of the train+validation part
    seq_length: int = 24  # input window length
    horizon: int = 1  # outputs of the direct head (K steps ahead)
    difference: list = field(default_factory=list)  # lags differenced in order, e.g. [1] or [12] or [1, 12]
    log: bool = False  # model log(y): multiplicative seasonality/growth; needs y > 0; inverted before metrics
    shrink: bool = False  # shrink forecasts toward naive by a factor in [0, 1] fitted on validation (needs val)
    scaler: str = "standard"  # standard | minmax | none; fitted on the training part only
    season: int = 0  # seasonal-naive lag; 0 = infer from dates (12 monthly, 7 daily, 5 business days, 1 none)
    calendar: bool = False  # extra inputs sin/cos of the season's phase (month, quarter, weekday; else row % season)
    # ---- model -------------------------------------------------------------------------------------------
    cell: str = "gru"
    hidden_size: int = 32
    layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    reset_after: bool = True  # GRU convention: True = cuDNN/PyTorch/Keras v3, False = the original paper
    nonlinearity: str = "tanh"  # vanilla RNN only: tanh | relu
    # ---- training ----------------------------------------------------------------------------------------
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # adam only
    batch_size: int = 32  # 0 = full batch
    epochs: int = 200
    patience: int = 0  # early stopping on validation loss; 0 = never stop early (best epoch still restored)
    clip: float = 0.0  # global gradient-norm clip; 0 = off
    tbptt: int = 0  # truncated BPTT window; 0 = full
    seed: int = 0
    ensemble: int = 1  # train this many models (seeds seed, seed+1, ...) and average their forecasts
    loss: str = "mse"  # mse (point forecasts) | quantile (pinball loss on `quantiles`; the point is the median)
    quantiles: list = field(default_factory=lambda: [0.1, 0.5, 0.9])  # --loss quantile: levels, 0.5 among them
    # ---- prediction intervals (intervals.py) -------------------------------------------------------------
    intervals: list = field(default_factory=lambda: [0.8, 0.95])  # levels; [] (--intervals none) = off
    # defaults chosen on pre-test data only (benchmarks/intervals.py --inner, results/intervals-inner.json)
    interval_window: int = 30  # conformal scores kept per horizon step: the latest N observed (0 = all)
    interval_gamma: float = 0.005  # adaptive conformal inference step size (0 = off)
    calibration_size: int = 20  # out-of-sample errors per step wanted before the test part (refit if fewer)
    # ---- panels and covariates (issue 18; panel.py, panelrun.py, covariates.py) -------------------------------
    id_col: str = ""  # long CSV: the series id column (Nixtla's unique_id) -> a panel; "" = one series (.tsf: a panel)
    covariates: list = field(default_factory=list)  # past-observed input columns, used only lagged
    future_covariates: list = field(default_factory=list)  # known-ahead input columns: each forecast step's value
    series_embedding: bool = False  # panels: the series' identity as inputs (one-hot: a learned per-series embedding)
    partial_windows: bool = True  # panels: also windows whose later targets pass the training part (those masked)
    scale_weight: bool = False  # panels: each window's loss weighted by its series' scale in MASE units
    refit: bool = False  # panels: after choosing the epochs on validation, refit on the whole training part
    device: str = "cpu"
    dtype: str = "float32"
    # ---- output ------------------------------------------------------------------------------------------
    out: str = ""  # run folder; "" = runs/<name>-<timestamp>
    plots: bool = True
    diagnostics: bool = False  # record per-step ||dL/dh_t|| and gate statistics -> diagnostics.png/.json
    quiet: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(RunConfig)}
DEFAULTS = RunConfig()


def _type_of(name: str, defaults=DEFAULTS):
    return type(getattr(defaults, name))


def _coerce(name: str, value: Any, source: str, defaults=DEFAULTS) -> Any:
    """Turn a TOML value or a flag string into the field's type (the type of `defaults`' field), or raise
    UserError naming the key."""
    want = _type_of(name, defaults)
    flag = f"--{name.replace('_', '-')}"
    where = f"{flag} in {source}" if source != "command line" else flag

    def bad(kind):
        return UserError(f"{where} must be {kind}, got {value!r}")

    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise bad("true or false")
    if want is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                    if f.is_integer():
                        return int(f)
                except ValueError:
                    pass
        raise bad("an integer")
    if want is float:
        if isinstance(value, bool):
            raise bad("a number")
        f = None
        if isinstance(value, (int, float)):
            try:
                f = float(value)
            except OverflowError:
                pass
        elif isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                pass
        if f is None:
            raise bad("a number")
        if not math.isfinite(f):
            raise bad("a finite number")
        return f
    if want is list and name in FLOAT_LISTS + STR_LISTS:  # levels; column names (issue 18)
        return _levels(name, value, where) if name in FLOAT_LISTS else _columns_list(value, where)
    if want is list:  # difference lags: [1, 12], 12, "1,12", "0"/"none"/"" = no differencing
        items = value
        if isinstance(value, bool):
            raise bad("a list of positive integer lags, e.g. [1] or [1, 12]")
        if isinstance(value, int):
            items = [value]
        elif isinstance(value, str):
            s = value.strip().lower()
            items = [] if s in ("", "0", "none", "off") else [t for t in s.replace(" ", ",").split(",") if t]
        if not isinstance(items, (list, tuple)):
            raise bad("a list of positive integer lags, e.g. [1] or [1, 12]")
        out = []
        for it in items:
            try:
                v = int(it) if not isinstance(it, bool) else None
            except (TypeError, ValueError):
                v = None
            if v is None or v < 0 or (isinstance(it, float) and not it.is_integer()):
                raise bad("a list of positive integer lags, e.g. [1] or [1, 12]")
            if v:
                out.append(v)
        return out
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _columns_list(value: Any, where: str) -> list:
    """Column names: a list of strings, or "a,b" ("" / "none" = none); a name given twice is an error."""
    items = value
    if isinstance(value, str):
        items = [] if value.strip().lower() in ("", "none") else value.split(",")
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise UserError(f"{where} must be column names separated by commas, e.g. price,promo; got {value!r}")
    out = [v.strip() for v in items if v.strip()]
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise UserError(f"{where} names column {dup[0]!r} twice; give each column once")
    return out


def _levels(name: str, value: Any, where: str) -> list:
    """Levels strictly between 0 and 1, increasing and distinct: a list, one number, or "0.8,0.95"; for
    intervals also "none" / "" / [] (off)."""
    example = "0.8,0.95" if name == "intervals" else "0.1,0.5,0.9"
    items = value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("none", "off", "") and name == "intervals":
            return []
        items = [t for t in s.replace(" ", ",").split(",") if t]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    out = []
    for it in items if isinstance(items, (list, tuple)) else [None]:
        try:
            v = float(it) if not isinstance(it, bool) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if not 0.0 < v < 1.0:
            raise UserError(f"{where} must be levels strictly between 0 and 1 separated by commas, e.g. {example}"
                            + (" (or none)" if name == "intervals" else "") + f"; got {value!r} (0.8 means 80%)")
        out.append(v)
    if not out and name != "intervals":
        raise UserError(f"{where} must list at least one level, e.g. {example}")
    if len(set(out)) != len(out):
        raise UserError(f"{where} lists a level twice ({value!r}); give each level once, e.g. {example}")
    return sorted(out)


def need(ok, msg: str) -> None:
    """A config check: `msg` (what is wrong and how to fix it) as a UserError unless ok."""
    if not ok:
        raise UserError(msg)


def _check_common(cfg) -> None:
    """The checks of what a forecasting run and a classifier share: the model, the optimizer, training, device, name."""
    need(0.0 <= cfg.val_ratio < 1.0, f"--val-ratio must be in [0, 1), got {cfg.val_ratio}")
    need(cfg.cell in CELLS, f"unknown cell {cfg.cell!r}: use one of {', '.join(CELLS)}")
    need(cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    need(cfg.nonlinearity in NONLINEARITIES,
         f"unknown nonlinearity {cfg.nonlinearity!r}: use one of {', '.join(NONLINEARITIES)}")
    need(cfg.hidden_size >= 1, f"--hidden-size must be at least 1, got {cfg.hidden_size}")
    need(cfg.layers >= 1, f"--layers must be at least 1, got {cfg.layers}")
    need(0.0 <= cfg.dropout < 1.0, f"--dropout must be in [0, 1), got {cfg.dropout}")
    need(cfg.lr > 0.0, f"--lr must be positive, got {cfg.lr}")
    need(cfg.weight_decay >= 0.0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.batch_size >= 0, f"--batch-size must be >= 0 (0 = full batch), got {cfg.batch_size}")
    need(cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}")
    need(cfg.patience >= 0, f"--patience must be >= 0 (0 = off), got {cfg.patience}")
    need(cfg.clip >= 0.0, f"--clip must be >= 0 (0 = off), got {cfg.clip}")
    need(cfg.dtype in ("float32", "float64"), f"unknown dtype {cfg.dtype!r}: use float32 or float64")
    dev = cfg.device.strip().lower()
    need(dev in ("cpu", "cuda", "auto") or (dev.startswith("cuda:") and dev[5:].isdigit()),
         f"unknown device {cfg.device!r}: use {DEVICES_HINT}")
    need(all(c.isalnum() or c in "-_." for c in cfg.name) and cfg.name,
         f"--name {cfg.name!r} must be letters, digits, '-', '_' or '.'")


def _check(cfg: RunConfig) -> RunConfig:
    need(0.0 < cfg.split_ratio < 1.0, f"--split-ratio must be between 0 and 1 (exclusive), got {cfg.split_ratio}")
    _check_common(cfg)
    need(cfg.seq_length >= 1, f"--seq-length must be at least 1, got {cfg.seq_length}")
    need(cfg.horizon >= 1, f"--horizon must be at least 1, got {cfg.horizon}")
    need(cfg.season >= 0, f"--season must be >= 0 (0 = infer from the dates), got {cfg.season}")
    need(cfg.scaler in SCALERS, f"unknown scaler {cfg.scaler!r}: use one of {', '.join(SCALERS)}")
    need(cfg.missing in MISSING, f"--missing must be one of {', '.join(MISSING)}, got {cfg.missing!r}")
    need(cfg.momentum >= 0.0, f"--momentum must be >= 0, got {cfg.momentum}")
    need(cfg.ensemble >= 1, f"--ensemble must be at least 1 (the number of models averaged), got {cfg.ensemble}")
    need(cfg.tbptt >= 0, f"--tbptt must be >= 0 (0 = full BPTT), got {cfg.tbptt}")
    need(cfg.sine_length >= 10, f"--sine-length must be at least 10, got {cfg.sine_length}")
    need(cfg.sine_period > 0, f"--sine-period must be positive, got {cfg.sine_period}")
    need(cfg.sine_noise >= 0, f"--sine-noise must be >= 0, got {cfg.sine_noise}")
    need(not (cfg.shrink and cfg.val_ratio == 0), "--shrink is fitted on validation data: set --val-ratio > 0")
    need(cfg.loss in LOSSES, f"unknown loss {cfg.loss!r}: use one of {', '.join(LOSSES)}")
    need(0.5 in cfg.quantiles, f"--quantiles must include 0.5 (the point forecast is the median), got "
         f"{','.join(f'{q:g}' for q in cfg.quantiles)}; e.g. --quantiles 0.1,0.5,0.9")
    need(cfg.interval_window >= 0, f"--interval-window must be >= 0 (0 = every observed error), got "
         f"{cfg.interval_window}")
    few = [c for c in cfg.intervals if 0 < cfg.interval_window < math.ceil(c / (1.0 - c) - 1e-9)]
    need(not few, f"--interval-window {cfg.interval_window} is too small for {100 * max(few or [0]):g}% intervals: "
         f"they need at least {math.ceil(max(few or [0]) / (1.0 - max(few or [0])) - 1e-9)} errors; use a larger "
         f"--interval-window (or 0 = every error)")
    need(0.0 <= cfg.interval_gamma < 1.0, f"--interval-gamma must be in [0, 1) (0 = off), got {cfg.interval_gamma}")
    need(cfg.calibration_size >= 0, f"--calibration-size must be >= 0 (0 = the validation tail only), got "
         f"{cfg.calibration_size}")
    need(bool(str(cfg.data).strip()), "--data is empty: give a CSV path or 'sine'")
    _check_panel(cfg)
    return cfg


def is_panel_config(cfg: RunConfig) -> bool:
    """Many series: a long CSV (--id-col) or a Monash .tsf file."""
    return bool(cfg.id_col.strip()) or str(cfg.data).strip().lower().endswith(".tsf")


def _check_panel(cfg: RunConfig) -> None:
    """Covariates and the panel settings (issue 18)."""
    both = [c for c in cfg.covariates if c in cfg.future_covariates]
    need(not both, f"column {both[0] if both else ''!r} is in both --covariates and --future-covariates; name it "
         f"once (future: known ahead, past: observed only)")
    need(not (cfg.scaler == "window" and cfg.difference), "--scaler window normalises each window by the mean of "
         "its levels: drop --difference (or use another --scaler)")
    panel = is_panel_config(cfg)
    for flag, on in (("--series-embedding", cfg.series_embedding), ("--scale-weight", cfg.scale_weight),
                     ("--refit", cfg.refit)):
        need(panel or not on, f"{flag} is for panels (a .tsf file or a long CSV with --id-col); drop it")
    need(not (panel and cfg.shrink), "--shrink is not available on panels; drop it")
    need(not (panel and cfg.diagnostics), "--diagnostics is for single series; drop it on a panel")
    need(not (panel and str(cfg.data).strip().lower() == "sine"), "--id-col needs a long CSV, not 'sine'")


def suggest(key: str, valid=None) -> str:
    valid = list(FIELDS if valid is None else valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def resolve_config_path(path: str) -> Path:
    """A config path as given, else configs/<path>, else configs/<path>.toml."""
    p = Path(path)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{path}.toml"):
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name too long, or with a NUL byte: it is not a config file
            continue
    raise UserError(f"config file {path!r} not found; pass a .toml path or a name from {CONFIG_DIR} "
                    f"({', '.join(sorted(q.stem for q in CONFIG_DIR.glob('*.toml')))})")


def read_toml(path: str | Path, valid=None) -> dict:
    """A config file's settings, flattened; every key must be in `valid` (default: RunConfig's fields)."""
    valid = FIELDS if valid is None else valid
    p = resolve_config_path(str(path))
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config {p} is not valid TOML ({e}); fix the file") from None
    except UnicodeDecodeError:
        raise UserError(f"config {p} is not valid TOML (not UTF-8 text); fix the file") from None
    except OSError as e:
        raise UserError(f"cannot read config {p}: {e.strerror}") from None
    flat = {}
    for k, v in raw.items():  # tables ([data], [model], [train]) are accepted and flattened
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[k2] = v2
        else:
            flat[k] = v
    for k in flat:
        if k not in valid:
            raise UserError(f"unknown key {k!r} in {p}{suggest(k, valid)}")
    flat.setdefault("name", p.stem)
    return flat


def config_base(config_file: str | Path | None) -> dict:
    """The TOML's settings, read and checked once (a sweep builds many configs on one base): {} for None."""
    if config_file is None:
        return {}
    source = str(resolve_config_path(str(config_file)))
    return {k: _coerce(k, v, source) for k, v in read_toml(config_file).items()}


def make_config(config_file: str | Path | None = None, overrides: dict | None = None, *,
                base: dict | None = None) -> RunConfig:
    """Defaults <- TOML (or `base`, from config_base) <- overrides (flag values; None means 'not given')."""
    kw = {k: list(v) if isinstance(v, list) else v  # a shared base's lists are never shared by two configs
          for k, v in (config_base(config_file) if base is None else base).items()}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in FIELDS:
            raise UserError(f"unknown setting {k!r}{suggest(k)}")
        kw[k] = _coerce(k, v, "command line")
    return _check(RunConfig(**kw))


def from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig saved in a run folder (ignores keys a newer version may have added)."""
    if not isinstance(d, dict):
        raise UserError(f"saved config must be a table of settings, got {type(d).__name__}; retrain with 'gru-xp train'")
    kw = {k: _coerce(k, v, "saved config") for k, v in d.items() if k in FIELDS}
    return _check(RunConfig(**kw))


# ---- the shared command-line flags -------------------------------------------------------------------------------
SEED_ALIASES = {"data": ["--data_file"], "split_ratio": ["--split_ratio"], "seq_length": ["--seq_length"],
                "hidden_size": ["--hidden_size"], "epochs": ["--num_epochs", "--num-epochs"],
                "lr": ["--learning_rate"]}
HELP = {
    "data": "CSV path (bare names are looked up in data/) or 'sine'", "target": "target column (default: Close, or "
    "the one non-date column)", "date": "date column (default Date/DATE; 'none' = row order)",
    "missing": "missing target values: error|drop|ffill|interpolate", "split_ratio": "train+validation fraction",
    "val_ratio": "validation tail fraction of the train+validation part", "seq_length": "input window length",
    "horizon": "K outputs of the direct head",
    "shrink": "shrink forecasts toward naive by a factor fitted on validation",
    "log": "model log(y) (y > 0), inverted before metrics", "difference": "difference lags, e.g. 1 or 12 or 1,12 (0 = none)",
    "scaler": "standard|minmax|none (fitted on training data only) | window (each window by its own mean)", "season": "seasonal-naive lag (0 = infer)",
    "cell": " | ".join(CELLS), "layers": "stacked recurrent layers", "reset_after": "GRU convention (PyTorch/Keras v3 "
    "vs the original paper)", "nonlinearity": "vanilla RNN activation: " + " | ".join(NONLINEARITIES),
    "optimizer": " | ".join(OPTIMIZERS), "lr": "learning rate", "batch_size": "minibatch size (0 = "
    "full batch)", "patience": "early-stopping patience in epochs (0 = off)", "clip": "global gradient-norm clip "
    "(0 = off)", "tbptt": "truncated BPTT window (0 = full)", "device": DEVICES_HINT,
    "out": "run folder (default runs/<name>-<timestamp>)", "quiet": "no progress bar or table",
    "diagnostics": "record per-step gradient norms and gate statistics to diagnostics.png/.json",
    "calendar": "extra inputs: sin/cos of the season's phase at each step's target (month, quarter, weekday; "
    "else row index modulo --season)",
    "ensemble": "train N models (seeds SEED..SEED+N-1, each early-stopped) and average their forecasts on the "
    "original scale (default 1)",
    "loss": "mse (point forecasts) | quantile (pinball loss on --quantiles, non-crossing; point = the median) | mae "
    "(absolute error)",
    "quantiles": "levels of --loss quantile, including 0.5 (default 0.1,0.5,0.9)",
    "intervals": "prediction interval levels, e.g. 0.8,0.95 (default), or none",
    "interval_window": "conformal errors kept per horizon step: the latest N observed (default 30; 0 = all)",
    "interval_gamma": "adaptive conformal inference step size (default 0.005; 0 = off)",
    "calibration_size": "out-of-sample errors per step wanted before the test part: when the validation tail has "
    "fewer, the ensemble is refitted on the series cut earlier to supply them (default 20; 0 = never refit)",
    "id_col": "long CSV: the series id column (e.g. unique_id): one global model over every series",
    "covariates": "past-observed input columns, used only lagged, e.g. price,promo",
    "future_covariates": "known-ahead input columns: the value at each forecast step is an input (predict --data "
    "reads them from rows after the last observed target)",
    "series_embedding": "panels: the series' identity as inputs (one-hot: a learned per-series embedding)",
    "partial_windows": "panels: also train on windows whose later targets pass the training part (masked out of the "
    "loss), so short series contribute (default on)",
    "scale_weight": "panels: weight each window's loss by its series' scale in MASE units (training tracks MASE)",
    "refit": "panels: after choosing the epochs on validation, refit on the whole training part",
}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (--hidden-size for hidden_size; booleans also as --no-FLAG), plus the seed
    project's spellings; every value is None unless given, so a TOML config's setting stands."""
    for f in fields(RunConfig):
        names = ["--" + f.name.replace("_", "-")] + SEED_ALIASES.get(f.name, [])
        if isinstance(f.default, bool):
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=HELP.get(f.name))
        else:
            p.add_argument(*names, dest=f.name, default=None, metavar=f.name.upper(), help=HELP.get(f.name))


def overrides(args: argparse.Namespace) -> dict:
    """The RunConfig fields given on the command line (see add_config_flags)."""
    return {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}


# ==== classify (issue 17): ClassifyConfig, its TOML files and its flags ===========================================
@dataclass
class ClassifyConfig:
    """`gru-xp classify`: defaults <- TOML <- flags, like RunConfig (same coercion, same one-line errors)."""

    # ---- data --------------------------------------------------------------------------------------------------
    name: str = "classify"  # the default run folder is runs/<name>-<timestamp>
    data: str = ""  # training data: a .ts file, a folder DIR/<class>/*.txt, or a CSV (--text-col, --label-col)
    test: str = ""  # test data of the same kind ("" = none)
    text_col: str = "text"  # CSV text column
    label_col: str = "label"  # CSV label column
    classes: list = field(default_factory=list)  # text folders: the class folders to use, in this order
    val_ratio: float = 0.2  # stratified tail of each training class held out for early stopping; 0 = none
    max_length: int = 0  # steps (tokens) kept per sequence, the first ones; 0 = all
    vocab_size: int = 1000  # text: the most frequent training words + padding (0) + unknown (1)
    embedding_dim: int = 64  # text: embedding dimension
    # ---- model -------------------------------------------------------------------------------------------------
    cell: str = "gru"
    hidden_size: int = 64
    layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    reset_after: bool = True
    nonlinearity: str = "tanh"
    dense_size: int = 32  # Dense(relu) units between the recurrent state and the logits; 0 = none
    # ---- training ----------------------------------------------------------------------------------------------
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip: float = 0.0
    batch_size: int = 64  # 0 = full batch
    epochs: int = 50
    patience: int = 0  # early stopping on validation loss; 0 = off (the best epoch is still restored)
    bucket: bool = False  # batches of similar lengths (less padding; same numbers per batch either way)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    # ---- output ------------------------------------------------------------------------------------------------
    out: str = ""  # run folder; "" = runs/<name>-<timestamp>
    plots: bool = True
    quiet: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CLASSIFY_FIELDS = {f.name: f for f in fields(ClassifyConfig)}
CLASSIFY_DEFAULTS = ClassifyConfig()
CLASSIFY_HELP = {
    "data": "training data: a UEA/UCR .ts file, a folder DIR/<class>/*.txt (aclImdb layout) or a CSV",
    "test": "test data of the same kind (never used for a choice)", "text_col": "CSV text column (default text)",
    "label_col": "CSV label column (default label)", "classes": "text folders: class folder names, e.g. neg,pos",
    "val_ratio": "stratified tail of each training class held out for early stopping (0 = train on all for "
    "exactly --epochs)", "max_length": "steps (tokens) kept per sequence (0 = all)",
    "vocab_size": "text: vocabulary size including padding (0) and unknown (1)",
    "embedding_dim": "text: embedding dimension", "cell": " | ".join(CELLS), "layers": "stacked recurrent layers",
    "dense_size": "Dense(relu) units before the output layer (0 = none)", "optimizer": " | ".join(OPTIMIZERS),
    "batch_size": "minibatch size (0 = full batch)", "patience": "early-stopping patience in epochs (0 = off)",
    "bucket": "batch sequences of similar length together", "device": DEVICES_HINT,
    "out": "run folder (default runs/<name>-<timestamp>)", "quiet": "no progress bar or table",
}


def _classify_value(name: str, value: Any, source: str) -> Any:
    if name == "classes":  # a list of folder names: ["neg", "pos"] or "neg,pos"
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise UserError(f"--classes in {source} must be a list of folder names, got {value!r}")
        return [v.strip() for v in items if v.strip()]
    return _coerce(name, value, source, CLASSIFY_DEFAULTS)


def _check_classify(cfg: ClassifyConfig) -> ClassifyConfig:
    need(bool(cfg.data.strip()), "--data is required: a .ts file, a folder DIR/<class>/*.txt or a CSV")
    _check_common(cfg)
    need(cfg.max_length >= 0, f"--max-length must be >= 0 (0 = all steps), got {cfg.max_length}")
    need(cfg.vocab_size >= 2, f"--vocab-size must be at least 2 (0 = padding, 1 = unknown word), got "
         f"{cfg.vocab_size}")
    need(cfg.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {cfg.embedding_dim}")
    need(cfg.dense_size >= 0, f"--dense-size must be >= 0 (0 = none), got {cfg.dense_size}")
    return cfg


def make_classify_config(config_file: str | Path | None = None, overrides: dict | None = None) -> ClassifyConfig:
    """Defaults <- TOML <- overrides (flag values; None means 'not given')."""
    kw = {}
    if config_file is not None:
        source = str(resolve_config_path(str(config_file)))
        kw = {k: _classify_value(k, v, source) for k, v in read_toml(config_file, CLASSIFY_FIELDS).items()}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in CLASSIFY_FIELDS:
            raise UserError(f"unknown setting {k!r}{suggest(k, CLASSIFY_FIELDS)}")
        kw[k] = _classify_value(k, v, "command line")
    return _check_classify(ClassifyConfig(**kw))


def classify_from_dict(d: dict) -> ClassifyConfig:
    """Rebuild a ClassifyConfig saved in a run folder (ignores keys a newer version may have added)."""
    if not isinstance(d, dict):
        raise UserError(f"saved config must be a table of settings, got {type(d).__name__}")
    return _check_classify(ClassifyConfig(**{k: _classify_value(k, v, "saved config") for k, v in d.items()
                                             if k in CLASSIFY_FIELDS}))


def add_classify_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ClassifyConfig field (booleans also as --no-FLAG); None unless given."""
    for f in fields(ClassifyConfig):
        names = ["--" + f.name.replace("_", "-")]
        if isinstance(f.default, bool):
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=CLASSIFY_HELP.get(f.name, HELP.get(f.name)))
        else:
            p.add_argument(*names, dest=f.name, default=None, metavar=f.name.upper(),
                           help=CLASSIFY_HELP.get(f.name, HELP.get(f.name)))


def classify_overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(ClassifyConfig) if getattr(args, f.name, None) is not None}
