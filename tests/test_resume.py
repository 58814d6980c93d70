"""Ctrl-C during training and `gru-xp train --resume DIR`: the resumed run ends bit-identical to an uninterrupted one
(CPU, float64), with dropout, shuffled minibatches and Adam (or SGD with momentum) all carrying state across the cut."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gru_xp import checkpoint
from gru_xp.cli import main
from gru_xp.config import make_config
from gru_xp.errors import TrainingInterrupted, UserError
from gru_xp.resume import load_resume
from gru_xp.runs import resume_run, run
from gru_xp.train import TEST_SIGINT_ENV

BASE = ["--data", "sine", "--sine-length", "120", "--sine-noise", "0.1", "--seq-length", "6", "--hidden-size", "5",
        "--layers", "2", "--dropout", "0.3", "--batch-size", "16", "--dtype", "float64", "--lr", "0.01", "--quiet",
        "--no-plots"]


def params(out) -> dict:
    p, _ = checkpoint.load(Path(out) / "model.npz")
    return p


def history(out) -> dict:
    return json.loads((Path(out) / "history.json").read_text())


def assert_identical(a, b):
    pa, pb = params(a), params(b)
    assert set(pa) == set(pb)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
    ha, hb = history(a), history(b)
    assert ha["train_loss"] == hb["train_loss"] and ha["val_loss"] == hb["val_loss"]
    assert ha["best_epoch"] == hb["best_epoch"]
    assert json.loads((Path(a) / "metrics.json").read_text()) == json.loads((Path(b) / "metrics.json").read_text())


@pytest.mark.parametrize("extra", [
    ["--optimizer", "adam", "--epochs", "6"],
    ["--optimizer", "sgd", "--momentum", "0.9", "--epochs", "6", "--patience", "20", "--clip", "1"],
])
def test_interrupt_then_resume_is_bit_identical(tmp_path, capsys, monkeypatch, extra):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", *BASE, *extra, "--out", str(full)]) == 0
    monkeypatch.setenv(TEST_SIGINT_ENV, "3")  # a real SIGINT, through the real handler, during epoch 3
    capsys.readouterr()
    assert main(["train", *BASE, *extra, "--out", str(cut)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gru-xp: interrupted at epoch 3;") and f"gru-xp train --resume {cut}" in err[-1]
    assert "Traceback" not in "\n".join(err)
    for f in ("model.npz", "config.json", "history.json", "resume.npz", "resume.json"):
        assert (cut / f).is_file(), f
    assert checkpoint.run_status(cut) == "interrupted"
    assert len(history(cut)["train_loss"]) == 3
    st = json.loads((cut / "resume.json").read_text())
    assert st["epoch"] == 3 and st["optimizer"]["t"] > 0 and "state" in st["rng"]["shuffle"]
    # the partial folder's model is usable already (the best epoch so far)
    assert main(["predict", "--run", str(cut), "--horizon", "2", "--out", str(tmp_path / "p.csv")]) == 0
    monkeypatch.delenv(TEST_SIGINT_ENV)
    assert main(["train", "--resume", str(cut)]) == 0
    assert not (cut / "resume.npz").exists() and checkpoint.run_status(cut) == "ok"
    assert_identical(full, cut)
    assert history(cut)["resumed_at"] == 4
    assert not [q for q in os.listdir(tmp_path) if q.startswith(".")]  # no temporaries left


def test_interrupted_twice_then_resumed_from_python(tmp_path, monkeypatch):
    cfg = make_config(None, {**dict(zip([a.lstrip("-").replace("-", "_") for a in BASE[0:-2:2]], BASE[1:-2:2])),
                             "quiet": True, "plots": False, "epochs": 7, "out": str(tmp_path / "full")})
    run(cfg)
    cut = tmp_path / "cut"
    monkeypatch.setenv(TEST_SIGINT_ENV, "2")
    with pytest.raises(TrainingInterrupted) as ei:
        run(make_config(None, {**cfg.to_dict(), "out": str(cut)}))
    assert ei.value.out_dir == cut and ei.value.state.epoch == 2
    monkeypatch.setenv(TEST_SIGINT_ENV, "5")
    with pytest.raises(TrainingInterrupted) as ei:
        resume_run(cut)
    assert ei.value.state.epoch == 5 and ei.value.state.history.resumed_at == 3
    monkeypatch.delenv(TEST_SIGINT_ENV)
    r = resume_run(cut)
    assert r.out_dir == cut and r.status == "ok" and len(r.history.train_loss) == 7
    assert_identical(tmp_path / "full", cut)


@pytest.mark.parametrize("cut_member", [1, 3])
def test_ensemble_interrupted_in_any_member_then_resumed_is_bit_identical(tmp_path, capsys, monkeypatch,
                                                                          cut_member):
    """Ctrl-C while member k of 3 trains: members 1..k-1 are saved whole, member k's resume state beside them;
    the partial folder predicts with the k members it has; --resume ends bit-identical to an uninterrupted run."""
    args = [*BASE, "--epochs", "5", "--ensemble", "3", "--seed", "7"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", *args, "--out", str(full)]) == 0
    monkeypatch.setenv(TEST_SIGINT_ENV, f"3@{7 + cut_member - 1}")  # epoch 3 of the member with that seed
    capsys.readouterr()
    assert main(["train", *args, "--out", str(cut)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"gru-xp: interrupted at epoch 3 of ensemble member {cut_member}/3;"), err[-1]
    _, st = load_resume(cut)
    assert st.member == cut_member - 1 and len(st.done) == cut_member - 1 and st.epoch == 3
    p, meta = checkpoint.load(cut / "model.npz")
    assert meta["model"].get("ensemble", 1) == cut_member  # the members there are so far
    assert meta["run"]["interrupted_member"] == cut_member and meta["run"]["members_saved"] == cut_member
    assert main(["predict", "--run", str(cut), "--horizon", "2", "--out", str(tmp_path / "p.csv")]) == 0
    monkeypatch.delenv(TEST_SIGINT_ENV)
    assert main(["train", "--resume", str(cut)]) == 0
    assert checkpoint.run_status(cut) == "ok" and not (cut / "resume.npz").exists()
    assert_identical(full, cut)
    assert [m["train_loss"] for m in history(full)["members"]] == [m["train_loss"] for m in history(cut)["members"]]


def test_ensemble_resume_keeps_a_finished_members_divergence_and_refuses_new_epochs(tmp_path, capsys,
                                                                                    monkeypatch):
    """Member 1 of 2 diverges (forced: its fit ends in TrainingDiverged after a finite epoch), member 2 is cut:
    the resumed run ends with the same divergence message and status as an uninterrupted one; changing --epochs
    when resuming such an ensemble is a one-line error (member 1 finished with the saved settings)."""
    import gru_xp.runs as R
    from gru_xp.errors import TrainingDiverged

    real = R.fit

    def member_1_diverges(*a, seed, **k):
        hist = real(*a, seed=seed, **k)
        if seed == 7:  # the first member of the run below (--seed 7)
            hist.diverged_epoch = len(hist.train_loss)
            raise TrainingDiverged(f"training diverged (train loss nan) at epoch {hist.diverged_epoch}; kept the best "
                                   f"checkpoint (epoch {hist.best_epoch}, loss 1); forced", epoch=hist.diverged_epoch,
                                   history=hist)
        return hist

    monkeypatch.setattr(R, "fit", member_1_diverges)
    args = [*BASE, "--epochs", "4", "--ensemble", "2", "--seed", "7"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", *args, "--out", str(full)]) == 3
    want = capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.setenv(TEST_SIGINT_ENV, "2@8")
    assert main(["train", *args, "--out", str(cut)]) == 130
    monkeypatch.delenv(TEST_SIGINT_ENV)
    capsys.readouterr()
    assert main(["train", "--resume", str(cut), "--epochs", "6"]) == 2
    e = capsys.readouterr().err.strip()
    assert "\n" not in e and "--epochs cannot change when resuming this ensemble" in e, e
    assert main(["train", "--resume", str(cut)]) == 3
    got = capsys.readouterr().err.strip().splitlines()[-1]
    assert got == want.replace(str(full), str(cut)) and "forced" in got
    assert_identical(full, cut)
    assert json.loads((cut / "config.json").read_text())["run"]["status"] == "diverged"


def test_resume_rejects_changed_settings_and_bad_folders(tmp_path, capsys, monkeypatch):
    cut = tmp_path / "cut"
    monkeypatch.setenv(TEST_SIGINT_ENV, "2")
    assert main(["train", *BASE, "--epochs", "4", "--out", str(cut)]) == 130
    monkeypatch.delenv(TEST_SIGINT_ENV)
    capsys.readouterr()

    def err(argv, frag):
        rc = main(argv)
        e = capsys.readouterr().err.strip()
        assert rc == 2 and e.startswith("gru-xp: error:") and "\n" not in e and frag in e, e

    err(["train", "--resume", str(cut), "--lr", "0.5"], "--lr cannot be changed when resuming")
    err(["train", "--resume", str(cut), "--config", "default"], "--config cannot be combined with --resume")
    err(["train", "--resume", str(cut), "--epochs", "2"], "not more than the 2 epochs already run")
    err(["train", "--resume", str(tmp_path / "nope")], "folder not found")
    (tmp_path / "empty").mkdir()
    err(["train", "--resume", str(tmp_path / "empty")], "not an interrupted gru-xp run")
    # --epochs may grow; the run continues to the new total
    assert main(["train", "--resume", str(cut), "--epochs", "5"]) == 0
    assert len(history(cut)["train_loss"]) == 5
    err(["train", "--resume", str(cut)], "has no resume state")


def test_corrupt_or_foreign_resume_state(tmp_path, monkeypatch):
    cut = tmp_path / "cut"
    monkeypatch.setenv(TEST_SIGINT_ENV, "2")
    assert main(["train", *BASE, "--epochs", "4", "--out", str(cut)]) == 130
    monkeypatch.delenv(TEST_SIGINT_ENV)
    good = (cut / "resume.npz").read_bytes()
    (cut / "resume.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_resume(cut)
    (cut / "resume.npz").write_bytes(good)
    cfg, st = load_resume(cut)
    assert st.epoch == 2 and cfg.dropout == 0.3
    # a resume state whose parameters do not fit the saved model shape
    arrays, meta = checkpoint.load(cut / "resume.npz", require=())
    arrays["param/head.weight"] = np.zeros((3, 3))
    checkpoint.save(cut / "resume.npz", arrays, {k: v for k, v in meta.items()
                                                 if k not in ("format_version", "gru_xp_version", "arrays")})
    with pytest.raises(UserError, match="does not fit"):
        resume_run(cut)


def test_interrupting_an_existing_good_run_folder_keeps_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "3", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setenv(TEST_SIGINT_ENV, "2")
    assert main(["train", *BASE, "--epochs", "4", "--out", str(out)]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the good run is untouched
    side = tmp_path / "run-interrupted"
    assert (side / "resume.npz").is_file()
    assert f"--resume {side}" in capsys.readouterr().err


def _spawn(args, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "gru_xp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_real_sigint_to_a_subprocess_then_resume(tmp_path):
    """An actual Ctrl-C from outside at an arbitrary moment of training; the resumed run still matches."""
    args = [*[a for a in BASE if a != "--quiet"], "--epochs", "400", "--sine-length", "400"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = _spawn(["train", *args, "--out", str(cut)])
    line = p.stdout.readline()  # the data line is printed just before training starts
    assert line.startswith("data "), line + p.stderr.read()
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    if p.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gru-xp: interrupted at epoch")
    k = json.loads((cut / "resume.json").read_text())["epoch"]
    assert 1 <= k < 400
    # the uninterrupted reference, and the resume, both shortened to k + 3 epochs to keep the test quick
    assert main(["train", *args, "--quiet", "--epochs", str(k + 3), "--out", str(full)]) == 0
    assert main(["train", "--resume", str(cut), "--epochs", str(k + 3), "--quiet"]) == 0
    assert_identical(full, cut)
