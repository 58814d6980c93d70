"""Every mistake a user can make gets one line saying what is wrong and how to fix it: exit 2 from the CLI (3 when
training diverged), a ValueError/TypeError with the same kind of message from the Python API, never a traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gru_xp import checkpoint
from gru_xp.cli import main

TINY = ["--data", "sine", "--sine-length", "120", "--seq-length", "6", "--hidden-size", "4", "--epochs", "2",
        "--batch-size", "16", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny good run folders with different model shapes (hidden 4 and 6)."""
    d = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out", str(d / "h4")]) == 0
    assert main(["train", *TINY, "--hidden-size", "6", "--out", str(d / "h6")]) == 0
    return d


def csv(tmp, text: str | bytes, name="d.csv") -> str:
    p = Path(tmp) / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def toml(tmp, text: str) -> str:
    p = Path(tmp) / "c.toml"
    p.write_text(text)
    return str(p)


def copy_run(runs, tmp, name="h4") -> Path:
    dst = Path(tmp) / f"copy-{name}"
    shutil.copytree(runs / name, dst)
    return dst


def swapped_model(runs, tmp):
    d = copy_run(runs, tmp)
    shutil.copy(runs / "h6" / "model.npz", d / "model.npz")  # model.npz from a run with another shape
    return ["predict", "--run", str(d)]


def edited_shape(runs, tmp):
    d = copy_run(runs, tmp)
    params, meta = checkpoint.load(d / "model.npz")
    meta["model"]["hidden_size"] = 6  # metadata says 6, arrays are 4 wide
    checkpoint.save(d / "model.npz", params, {k: v for k, v in meta.items() if k not in ("format_version", "arrays")})
    (d / "config.json").unlink()
    return ["predict", "--run", str(d)]


def truncated(runs, tmp):
    d = copy_run(runs, tmp)
    b = (d / "model.npz").read_bytes()
    (d / "model.npz").write_bytes(b[: len(b) * 2 // 3])
    return ["predict", "--run", str(d)]


def flipped(runs, tmp):
    d = copy_run(runs, tmp)
    b = bytearray((d / "model.npz").read_bytes())
    b[200] ^= 0xFF  # inside the first array's data: the zip CRC catches it
    (d / "model.npz").write_bytes(bytes(b))
    return ["predict", "--run", str(d)]


def newer_format(runs, tmp):
    d = copy_run(runs, tmp)
    params, meta = checkpoint.load(d / "model.npz")
    meta.pop("arrays")
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    checkpoint.save(d / "model.npz", params, meta)
    return ["predict", "--run", str(d)]


def cuda_without_gpu(runs, tmp, monkeypatch):
    from gru_xp import backend

    monkeypatch.setattr(backend, "cuda_available", lambda: (False, "CuPy is not installed (ImportError)"))
    return ["train", *TINY, "--device", "cuda", "--out", str(Path(tmp) / "r")]


def huge_values(tmp):
    return csv(tmp, "v\n" + "\n".join(str(1e30 * np.sin(i / 3)) for i in range(120)) + "\n")


def big_values(tmp):
    return csv(tmp, "v\n" + "\n".join(str(1e12 * np.sin(i / 3)) for i in range(120)) + "\n")


DIVERGE = ["--seq-length", "6", "--hidden-size", "4", "--epochs", "8", "--batch-size", "16", "--quiet", "--no-plots",
           "--optimizer", "sgd", "--scaler", "none", "--difference", "0", "--clip", "0"]

# (id, argv builder, expected exit code, fragment of the one-line message)
CASES = [
    # ---- CSV files ----
    ("empty-file", lambda t: ["train", "--data", csv(t, "")], 2, "is empty"),
    ("header-only", lambda t: ["train", "--data", csv(t, "Date,Close\n")], 2, "has no rows"),
    ("non-numeric-target", lambda t: ["train", "--data", csv(t, "v\n1\n2\nabc\n")], 2, "non-numeric value 'abc' on line 4"),
    ("missing-targets", lambda t: ["train", "--data", csv(t, "v\n1\n\n2\nNA\n3\n\n")], 2,
     "2 missing value(s), first on line 3; fill them or pass --missing drop|ffill|interpolate"),
    ("missing-date-cell", lambda t: ["train", "--data", csv(t, "Date,v\n2020-01-01,1\n,2\n")], 2, "--date none"),
    ("unknown-target-column", lambda t: ["train", "--data", csv(t, "a,b\n1,2\n"), "--target", "c"], 2,
     "target column 'c' not in the file (columns: a, b)"),
    ("unknown-date-column", lambda t: ["train", "--data", csv(t, "a,b\n1,2\n"), "--date", "when"], 2,
     "date column 'when' not in the file"),
    ("ambiguous-columns", lambda t: ["train", "--data", csv(t, "a,b,c\n1,2,3\n")], 2, "pass --target COL"),
    ("unsorted-dates", lambda t: ["train", "--data", csv(t, "Date,v\n2020-01-02,1\n2020-01-01,2\n")], 2,
     "--sort-dates"),
    ("infinite-target", lambda t: ["train", "--data", csv(t, "v\n1\ninf\n")], 2, "infinite on line 3"),
    ("binary-garbage", lambda t: ["train", "--data", csv(t, b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 20)], 2, "d.csv"),
    ("no-such-data", lambda t: ["train", "--data", str(Path(t) / "nope.csv")], 2, "not found"),
    ("seq-longer-than-train", lambda t: [*["train"], *TINY, "--seq-length", "100"], 2, "too short"),
    # ---- flags ----
    ("split-0", lambda t: ["train", "--split-ratio", "0"], 2, "--split-ratio must be between 0 and 1"),
    ("split-1", lambda t: ["train", "--split-ratio", "1"], 2, "--split-ratio must be between 0 and 1"),
    ("split-negative", lambda t: ["train", "--split-ratio", "-0.3"], 2, "--split-ratio must be between 0 and 1"),
    ("split-above-1", lambda t: ["train", "--split-ratio", "1.5"], 2, "--split-ratio must be between 0 and 1"),
    ("val-ratio-1", lambda t: ["train", "--val-ratio", "1"], 2, "--val-ratio must be in [0, 1)"),
    ("hidden-0", lambda t: ["train", "--hidden-size", "0"], 2, "--hidden-size must be at least 1"),
    ("hidden-negative", lambda t: ["train", "--hidden-size", "-4"], 2, "--hidden-size must be at least 1"),
    ("layers-0", lambda t: ["train", "--layers", "0"], 2, "--layers must be at least 1"),
    ("seq-length-0", lambda t: ["train", "--seq-length", "0"], 2, "--seq-length must be at least 1"),
    ("batch-negative", lambda t: ["train", "--batch-size", "-1"], 2, "--batch-size must be >= 0"),
    ("epochs-0", lambda t: ["train", "--epochs", "0"], 2, "--epochs must be at least 1"),
    ("lr-0", lambda t: ["train", "--lr", "0"], 2, "--lr must be positive"),
    ("lr-negative", lambda t: ["train", "--lr", "-0.01"], 2, "--lr must be positive"),
    ("lr-not-a-number", lambda t: ["train", "--lr", "fast"], 2, "--lr must be a number, got 'fast'"),
    ("dropout-1", lambda t: ["train", "--dropout", "1"], 2, "--dropout must be in [0, 1)"),
    ("unknown-optimizer", lambda t: ["train", "--optimizer", "adamw"], 2, "unknown optimizer 'adamw': use one of adam, sgd"),
    ("unknown-cell", lambda t: ["train", "--cell", "transformer"], 2, "unknown cell 'transformer': use one of gru"),
    ("unknown-dtype", lambda t: ["train", "--dtype", "float16"], 2, "use float32 or float64"),
    ("unknown-flag-suggests", lambda t: ["train", "--hiden-size", "3"], 2, "did you mean --hidden-size?"),
    ("other-command-flag", lambda t: ["predict", "--run", str(t), "--epochs", "3"], 2,
     "--epochs is an option of gru-xp train, gru-xp classify, gru-xp backtest, not of gru-xp predict (see 'gru-xp "
     "predict --help')"),
    ("typo-suggests-own-flag-only", lambda t: ["predict", "--run", str(t), "--horizn", "3"], 2,
     "did you mean --horizon? (see 'gru-xp predict --help')"),
    ("unknown-command", lambda t: ["trian"], 2, "invalid choice"),
    ("out-is-a-file", lambda t: ["train", *TINY, "--out", csv(t, "x")], 2, "exists and is not a folder"),
    # ---- TOML configs ----
    ("malformed-toml", lambda t: ["train", "--config", toml(t, "epochs = = 3\n")], 2, "is not valid TOML"),
    ("unknown-toml-key", lambda t: ["train", "--config", toml(t, "hiden_size = 3\n")], 2, "did you mean 'hidden_size'"),
    ("toml-wrong-type", lambda t: ["train", "--config", toml(t, "epochs = 'many'\n")], 2, "must be an integer"),
    ("toml-bad-lags", lambda t: ["train", "--config", toml(t, "difference = [1.5]\n")], 2, "positive integer lags"),
    ("toml-binary", lambda t: ["train", "--config", csv(t, b"\xff\xfe\x00bad", "c.toml")], 2, "not valid TOML"),
    ("no-such-config", lambda t: ["train", "--config", "no-such-config"], 2, "not found"),
    # ---- run folders and checkpoints ----
    ("run-not-found", lambda t: ["predict", "--run", str(Path(t) / "nope")], 2, "not found"),
    ("run-without-model", lambda t: ["predict", "--run", str(t)], 2, "model.npz not found"),
]
RUN_CASES = [  # need the two trained runs
    ("run-from-other-shape", swapped_model, 2, "is inconsistent: config.json has hidden_size=4"),
    ("checkpoint-shape-mismatch", edited_shape, 2, "checkpoint does not fit this model"),
    ("truncated-model-npz", truncated, 2, "is corrupt, truncated or not a gru-xp checkpoint"),
    ("bit-flipped-model-npz", flipped, 2, "corrupt"),
    ("newer-checkpoint-format", newer_format, 2, "upgrade gru-xp"),
    ("resume-a-finished-run", lambda r, t: ["train", "--resume", str(copy_run(r, t))], 2, "has no resume state"),
    ("predict-horizon-0", lambda r, t: ["predict", "--run", str(r / "h4"), "--horizon", "0"], 2, "--horizon"),
]


def check_one_line(capsys, rc, want_rc, fragment):
    err = capsys.readouterr().err.strip()
    assert rc == want_rc, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err, err
    return err


@pytest.mark.parametrize("build, want_rc, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_user_errors(build, want_rc, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the repository, even by mistake
    check_one_line(capsys, main(build(tmp_path)), want_rc, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("build, want_rc, fragment", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_folder_errors(build, want_rc, fragment, runs, tmp_path, capsys):
    check_one_line(capsys, main(build(runs, tmp_path)), want_rc, fragment)


def test_cuda_without_gpu(runs, tmp_path, capsys, monkeypatch):
    check_one_line(capsys, main(cuda_without_gpu(runs, tmp_path, monkeypatch)), 2, "pip install -e '.[cuda12]'")


def test_all_issue_cases_are_covered():
    assert len(CASES) + len(RUN_CASES) + 1 >= 25


# ---- divergence: exit 3 ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_without_a_finite_epoch_saves_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data", huge_values(tmp_path), *DIVERGE, "--lr", "1", "--out", str(out)])
    err = check_one_line(capsys, rc, 3, "before any epoch with a finite loss; nothing was saved")
    assert "lower --lr" in err and not out.exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_keeps_the_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", "--data", big_values(tmp_path), *DIVERGE, "--lr", "3", "--out", str(out)])
    err = check_one_line(capsys, rc, 3, f"kept the best checkpoint in {out} (epoch 1")
    assert "training diverged (train loss" in err
    c = json.loads((out / "config.json").read_text())
    h = json.loads((out / "history.json").read_text())
    assert c["run"]["status"] == "diverged" and c["run"]["diverged_epoch"] == h["diverged_epoch"] >= 2
    assert h["status"] == "diverged" and h["best_epoch"] == 1
    assert len(h["train_loss"]) == h["diverged_epoch"]  # stopped at the end of the diverged epoch
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["model"]["rmse"] is not None  # metrics of the best (finite) epoch
    assert checkpoint.run_status(out) == "diverged"
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--horizon", "2"]) == 0  # the kept checkpoint is usable


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_never_replaces_a_good_run(tmp_path, capsys):
    out = tmp_path / "r"
    data = big_values(tmp_path)
    assert main(["train", "--data", data, *DIVERGE, "--lr", "1e-30", "--epochs", "2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc = main(["train", "--data", data, *DIVERGE, "--lr", "3", "--out", str(out)])
    check_one_line(capsys, rc, 3, f"kept the best checkpoint in {out}-diverged")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert checkpoint.run_status(Path(f"{out}-diverged")) == "diverged"


# ---- through a real process: no traceback anywhere ---------------------------------------------------------------
@pytest.mark.parametrize("build, want_rc, fragment", [
    (lambda t, r: ["train", "--data", csv(t, "")], 2, "is empty"),
    (lambda t, r: truncated(r, t), 2, "truncated"),
    (lambda t, r: ["train", "--config", toml(t, "lr = -1\n")], 2, "--lr must be positive"),
], ids=["empty-csv", "truncated-npz", "negative-lr"])
def test_subprocess_has_no_traceback(build, want_rc, fragment, tmp_path, runs):
    p = subprocess.run([sys.executable, "-m", "gru_xp", *build(tmp_path, runs)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == want_rc, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("gru-xp: error: ") and fragment in p.stderr, p.stderr


# ---- the Python API: ValueError / TypeError, one line ------------------------------------------------------------
def _gru(**kw):
    import gru_xp

    return gru_xp.GRU(1, 2, **kw)


API_CASES = [
    ("gru-input-0", lambda: __import__("gru_xp").GRU(0, 3), "input_size must be a positive integer"),
    ("gru-hidden-negative", lambda: __import__("gru_xp").GRU(1, -2), "hidden_size must be a positive integer"),
    ("gru-float-size", lambda: __import__("gru_xp").GRU(1.5, 2), "input_size must be a positive integer"),
    ("gru-dropout-text", lambda: _gru(dropout="x"), "dropout must be a number in [0, 1)"),
    ("gru-bad-device", lambda: _gru(device="tpu"), "unknown device 'tpu'"),
    ("gru-bad-dtype", lambda: _gru(dtype="int8"), "unknown dtype 'int8'"),
    ("gru-input-2d", lambda: _gru().forward(np.zeros((3, 2))), "input must be (T, B, 1) time-major"),
    ("gru-input-features", lambda: _gru().forward(np.zeros((3, 2, 5))), "input must be (T, B, 1) time-major"),
    ("gru-input-no-steps", lambda: _gru().forward(np.zeros((0, 2, 1))), "input has no time steps"),
    ("gru-state-shape", lambda: _gru().forward(np.zeros((3, 2, 1)), np.zeros((2, 2))), "initial state has shape"),
    ("sd-not-a-mapping", lambda: _gru().load_state_dict([1, 2]), "state dict must be a mapping"),
    ("sd-wrong-names", lambda: _gru().load_state_dict({"weight": np.zeros(3)}), "missing ['weight_ih_l0'"),
    ("sd-wrong-shapes", lambda: _gru().load_state_dict({k: np.zeros(3) for k in _gru().state_dict()}),
     "has shape (3,), this layer needs (6, 1)"),
    ("forecaster-sd-list", lambda: __import__("gru_xp.model").model.Forecaster().load_state_dict([1]),
     "state dict must be a mapping"),
    ("forecaster-sd-shape", lambda: __import__("gru_xp.model").model.Forecaster(hidden_size=4).load_state_dict(
        __import__("gru_xp.model").model.Forecaster(hidden_size=5).state_dict()), "checkpoint does not fit"),
    ("forecaster-horizon-0", lambda: __import__("gru_xp.model").model.Forecaster(horizon=0), "horizon must be"),
    ("forecaster-cell", lambda: __import__("gru_xp.model").model.Forecaster("tcn"), "unknown cell 'tcn'"),
    ("forecaster-targets-rows", lambda: __import__("gru_xp.model").model.Forecaster(horizon=2).loss_and_grads(
        np.zeros((5, 4, 1)), np.zeros((3, 2))), "targets y has shape (3, 2); the model predicts (4, 2)"),
    ("forecaster-targets-horizon", lambda: __import__("gru_xp.model").model.Forecaster(horizon=2).loss(
        np.zeros((5, 4, 1)), np.zeros((4, 1))), "targets y has shape (4, 1); the model predicts (4, 2)"),
    ("classifier-integer-labels", lambda: __import__("gru_xp.nn.classifier").nn.classifier.Classifier(
        "gru", 1, 4, 3).loss_and_grads(np.zeros((5, 4, 1)), np.array([0, 1, 2, 1])),
     "targets y have shape (4,); the model needs (4, 3) for this input: one-hot rows (B, 3)"),
    ("classifier-binary-one-hot", lambda: __import__("gru_xp.nn.classifier").nn.classifier.Classifier(
        "gru", 1, 4, 2).loss(np.zeros((5, 4, 1)), np.eye(2)[[0, 1, 1, 0]]), "0/1 labels as one column (B, 1)"),
    ("forecaster-weight", lambda: __import__("gru_xp.model").model.Forecaster(quantiles=(0.1, 0.9)).loss_and_grads(
        np.zeros((5, 4, 1)), np.zeros((4, 1)), weight=np.ones((4, 2))), "weight has shape (4, 2); the model predicts"),
    ("make-config-unknown", lambda: __import__("gru_xp.config").config.make_config(None, {"hiden_size": 3}),
     "did you mean 'hidden_size'"),
]


@pytest.mark.parametrize("call, fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_errors(call, fragment):
    with pytest.raises((ValueError, TypeError)) as ei:
        call()
    msg = str(ei.value)
    assert fragment in msg and "\n" not in msg, msg
