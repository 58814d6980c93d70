"""Sequence classification end to end: the training loop on variable-length batches (padding width and bucketing,
--val-ratio 0, accuracy per epoch), the metrics and baselines, `gru-xp classify` on .ts files, on a text folder and a
CSV (the word-order corpus: a bag of words cannot, a recurrent model can), `gru-xp predict` on a classifier, and
every bad input (one line, exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gru_xp import metrics
from gru_xp.classdata import stratified_tail
from gru_xp.cli import main
from gru_xp.nn.classifier import Classifier
from gru_xp.text import negation_corpus, write_text_folder
from gru_xp.train import AccuracyHistory, batch_order, fit


def one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("gru-xp: error: ") and "\n" not in err and "Traceback" not in err
    assert fragment.lower() in err.lower(), err
    return err


def _series(n, seed, T=9):
    """n variable-length 2-channel series in 3 classes (the class sets the sign of the mean of each channel),
    right-padded, with their lengths."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    L = rng.integers(2, T + 1, n)
    X = np.zeros((n, T, 2))
    for i in range(n):
        mu = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])[y[i]]
        X[i, :L[i]] = mu + rng.normal(size=(L[i], 2))
    return X, L, y


# ---- the loop --------------------------------------------------------------------------------------------------------
def _fit(trim, bucket=False, epochs=3):
    X, L, y = _series(14, 0)
    Xv, Lv, yv = _series(5, 1)
    m = Classifier("lstm", 2, 4, 3, dense_size=3, num_layers=2, bidirectional=True, dropout=0.5, dtype="float64",
                   seed=2)
    h = fit(m, X, np.eye(3)[y], Xv, np.eye(3)[yv], lengths=L, val_lengths=Lv, epochs=epochs, batch_size=4, seed=3,
            progress=False, trim=trim, bucket=bucket)
    return m, h


def test_padding_width_changes_nothing_with_dropout_and_shuffling():
    """Each minibatch cut to its longest sequence (trim) or run over the whole padded width: the same shuffled
    batches, the same dropout masks on real steps (drawn per layer, time-major), so the same training to
    rounding (float64): every parameter and every epoch's losses and accuracies."""
    (a, ha), (b, hb) = _fit(trim=True), _fit(trim=False)
    assert isinstance(ha, AccuracyHistory) and len(ha.train_accuracy) == 3 and not np.isnan(ha.val_accuracy).any()
    for k in a.params:
        assert np.max(np.abs(np.asarray(a.params[k]) - np.asarray(b.params[k]))) <= 1e-10, k
    for f in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        assert np.allclose(getattr(ha, f), getattr(hb, f), rtol=1e-10, atol=0), f
    c, hc = _fit(trim=True, bucket=True)  # other batches: another trajectory, same kind of result
    assert not np.allclose(ha.train_loss, hc.train_loss) and np.isfinite(hc.train_loss).all()


def test_bucketed_batches_hold_similar_lengths():
    rng = np.random.default_rng(0)
    L = rng.integers(1, 30, 103)
    batches = batch_order(L, 10, rng, bucket=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    spans = [np.ptp(L[b]) for b in batches]
    plain = [np.ptp(L[b]) for b in batch_order(L, 10, rng, bucket=False)]
    assert max(spans) <= 6 < np.mean(plain)
    assert [len(b) for b in batch_order(L, 200, rng, bucket=True)] == [103]


def test_val_ratio_0_trains_exactly_epochs_and_keeps_the_last():
    X, L, y = _series(12, 4)
    m = Classifier("gru", 2, 4, 3, dtype="float64", seed=0)
    h = fit(m, X, np.eye(3)[y], lengths=L, epochs=4, batch_size=5, patience=1, progress=False, keep_last=True)
    assert len(h.train_loss) == 4 and h.best_epoch == 4 and np.isnan(h.val_accuracy).all()


def test_stratified_tail():
    y = np.array([0, 1, 0, 1, 0, 2, 0, 1, 2, 3])
    v = stratified_tail(y, 0.5)
    assert v.tolist() == [False, False, False, True, True, False, True, True, True, False]
    assert not stratified_tail(y, 0.0).any()


def test_class_metrics_and_baselines():
    y, p = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert metrics.accuracy(y, p) == 0.6
    f1 = [2 * 1 / 4, 2 * 2 / 5, 0.0]
    assert metrics.macro_f1(y, p) == pytest.approx(np.mean(f1))
    assert metrics.confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    pred, lp = metrics.majority_baseline(np.array([2, 1, 2, 0]), 3, 2)
    assert pred.tolist() == [2, 2] and np.allclose(np.exp(lp[0]), [0.25, 0.25, 0.5])
    A = np.array([[0.0, 0], [1, 0], [5, 5]])
    assert metrics.nearest_neighbor(A, np.array([0, 1, 2]), np.array([[0.9, 0.1], [4, 4]])).tolist() == [1, 2]
    assert metrics.nearest_neighbor(A, np.array([0, 1, 2]), A, leave_one_out=True).tolist() == [1, 0, 1]
    z = np.array([[800.0], [-800.0]])
    lp = metrics.log_softmax_host(z)
    assert np.isfinite(lp).all() and lp[0, 1] == 0 and lp[1, 0] == 0
    assert metrics.log_loss([1, 0], lp) == 0.0


# ---- the command line: series (.ts) ----------------------------------------------------------------------------------
def _write_ts(path, X, L, y, dims=2, labels="a b c", header_dims=None):
    names = labels.split()
    lines = [f"@problemName toy\n@univariate false\n@dimensions {header_dims or dims}\n@equalLength false\n"
             f"@classLabel true {labels}\n@data"]
    for x, n, c in zip(X, L, y):
        lines.append(":".join(",".join(f"{v:.6f}" for v in x[:n, j]) for j in range(dims)) + f":{names[c]}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def ts_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ts")
    train = _write_ts(d / "tr.ts", *_series(60, 0))
    test = _write_ts(d / "te.ts", *_series(30, 1))
    out = d / "run"
    rc = main(["classify", "--data", train, "--test", test, "--out", str(out), "--hidden-size", "8", "--epochs",
               "15", "--batch-size", "16", "--bidirectional", "--bucket", "--lr", "0.02", "--quiet"])
    assert rc == 0
    return d, out, train, test


def test_classify_ts_writes_a_complete_run_folder(ts_run):
    d, out, _, test = ts_run
    for f in ("model.npz", "config.json", "metrics.json", "history.json", "predictions.csv", "curves.png",
              "confusion.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"train", "val", "test"}
    for split in m.values():
        assert set(split) == {"model", "majority", "nearest_neighbor"}
        for pred in split.values():
            assert set(pred) == {"accuracy", "macro_f1", "loss"}
    assert m["test"]["model"]["accuracy"] >= 0.8 > m["test"]["majority"]["accuracy"]
    assert m["test"]["nearest_neighbor"]["loss"] is None and m["test"]["majority"]["loss"] > 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "classify" and cfg["encoder"]["channels"] == 2 and cfg["encoder"]["classes"] == ["a", "b", "c"]
    h = json.loads((out / "history.json").read_text())
    assert len(h["train_accuracy"]) == len(h["val_accuracy"]) == len(h["train_loss"]) == 15
    pc = pd.read_csv(out / "predictions.csv")
    assert set(pc["split"]) == {"train", "val", "test"} and len(pc) == 90


def test_predict_on_a_ts_file(ts_run, capsys):
    d, out, _, test = ts_run
    rc = main(["predict", "--run", str(out), "--data", test, "--out", str(d / "p.csv")])
    assert rc == 0
    capsys.readouterr()
    p = pd.read_csv(d / "p.csv")
    assert list(p.columns) == ["case", "actual", "label", "probability", "probability_a", "probability_b",
                               "probability_c"]
    assert len(p) == 30 and np.allclose(p[["probability_a", "probability_b", "probability_c"]].sum(axis=1), 1, atol=1e-5)
    assert (p["label"] == p["actual"]).mean() == pytest.approx(
        json.loads((out / "metrics.json").read_text())["test"]["model"]["accuracy"])
    one_line_error(capsys, main(["predict", "--run", str(out), "--text", "hello"]), "pass --data FILE.ts")
    one_line_error(capsys, main(["predict", "--run", str(out), "--data", test, "--horizon", "2"]), "drop --horizon")
    one_line_error(capsys, main(["predict", "--run", str(out)]), "--text")
    X, L, _ = _series(4, 5)
    bad = _write_ts(d / "three.ts", np.concatenate([X, X[..., :1]], axis=2), L, [0, 1, 2, 0], dims=3)
    one_line_error(capsys, main(["predict", "--run", str(out), "--data", bad]), "trained on 2")


# ---- the command line: text --------------------------------------------------------------------------------------
def test_text_folder_word_order_decides(tmp_path, capsys):
    """The word-order corpus in the aclImdb layout: 1-NN on bag-of-words counts is at chance (the words of a
    review say nothing about its label), the bidirectional GRU reads the order and gets it right."""
    write_text_folder(tmp_path / "train", negation_corpus(300, seed=0))
    write_text_folder(tmp_path / "test", negation_corpus(200, seed=1))
    out = tmp_path / "run"
    rc = main(["classify", "--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out", str(out),
               "--vocab-size", "40", "--embedding-dim", "8", "--hidden-size", "16", "--bidirectional", "--epochs",
               "25", "--batch-size", "32", "--lr", "0.01", "--quiet"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())["test"]
    assert m["model"]["accuracy"] >= 0.95, m
    assert m["nearest_neighbor"]["accuracy"] <= 0.65 and m["majority"]["accuracy"] <= 0.6, m
    cfg = json.loads((out / "config.json").read_text())
    words = cfg["encoder"]["vocabulary"]["words"]
    assert "not" in words and cfg["model"]["vocab_size"] == len(words) + 2 <= 40  # the corpus has fewer words
    rc = main(["predict", "--run", str(out), "--text", "the plot was not good and the acting was bad.",
               "--text", "the acting was not bad , the plot was great"])
    assert rc == 0
    p = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(p.columns) == ["text", "label", "probability", "probability_neg", "probability_pos"]
    assert p["label"].tolist() == ["neg", "pos"] and (p["probability"] > 0.5).all()
    one_line_error(capsys, main(["predict", "--run", str(out), "--text", "  "]), "empty document")
    one_line_error(capsys, main(["predict", "--run", str(out), "--data", str(tmp_path / "x.ts")]), "classifies text")


def test_text_csv(tmp_path, capsys):
    docs = negation_corpus(60, seed=2)
    pd.DataFrame({"review": [t for t, _ in docs], "y": [lab for _, lab in docs]}).to_csv(tmp_path / "tr.csv",
                                                                                         index=False)
    out = tmp_path / "run"
    rc = main(["classify", "--data", str(tmp_path / "tr.csv"), "--text-col", "review", "--label-col", "y",
               "--val-ratio", "0", "--epochs", "2", "--hidden-size", "4", "--embedding-dim", "4", "--out", str(out),
               "--quiet", "--no-plots", "--cell", "lstm", "--max-length", "6"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"train"} and not (out / "curves.png").exists()
    h = json.loads((out / "history.json").read_text())
    assert len(h["train_loss"]) == 2 and h["best_epoch"] == 2
    rc = main(["predict", "--run", str(out), "--data", str(tmp_path / "tr.csv"), "--out", str(tmp_path / "p.csv")])
    capsys.readouterr()
    p = pd.read_csv(tmp_path / "p.csv")
    assert rc == 0 and len(p) == 60 and list(p.columns)[:3] == ["source", "actual", "label"]


def test_toml_configs_load():
    from gru_xp.config import make_classify_config

    imdb = make_classify_config("imdb-keras")
    assert (imdb.cell, imdb.bidirectional, imdb.hidden_size, imdb.vocab_size, imdb.dense_size, imdb.lr,
            imdb.epochs, imdb.batch_size, imdb.classes) == ("lstm", True, 64, 1000, 32, 1e-4, 25, 64, ["neg", "pos"])
    jv = make_classify_config("japanese-vowels")
    assert jv.data.endswith("JapaneseVowels_TRAIN.ts") and jv.val_ratio == 0.0


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    X, L, y = _series(12, 0)
    tr = _write_ts(tmp_path / "tr.ts", X, L, y)
    unseen = _write_ts(tmp_path / "unseen.ts", X, L, np.where(y == 0, 3, y), labels="a b c d")
    one_line_error(capsys, main(["classify", "--data", tr, "--test", unseen, "--quiet"]),
                   "label(s) ['d'] that do not occur in the training data")
    header = _write_ts(tmp_path / "hdr.ts", X, L, y, header_dims=3)
    one_line_error(capsys, main(["classify", "--data", header, "--quiet"]), "hdr.ts:7: the case has 2 dimension(s)")
    three = _write_ts(tmp_path / "three.ts", np.concatenate([X, X], axis=2), L, y, dims=4)
    one_line_error(capsys, main(["classify", "--data", tr, "--test", three, "--quiet"]),
                   "train has 2 channel(s) but test has 4")
    write_text_folder(tmp_path / "txt", [("good", "pos"), ("bad", "neg"), ("", "neg")])
    one_line_error(capsys, main(["classify", "--data", str(tmp_path / "txt"), "--quiet"]), "empty document")
    write_text_folder(tmp_path / "txt2", [("good", "pos"), ("bad", "neg")])
    one_line_error(capsys, main(["classify", "--data", str(tmp_path / "txt2"), "--vocab-size", "1"]),
                   "--vocab-size must be at least 2")
    one_line_error(capsys, main(["classify", "--data", tr, "--test", str(tmp_path / "txt2")]),
                   "both as .ts files or both as text")
    one_line_error(capsys, main(["classify", "--test", tr]), "--data is required")
    one_line_error(capsys, main(["classify", "--data", str(tmp_path / "nope.ts")]), "not found")
    one_line_error(capsys, main(["classify", "--data", tr, "--hiden-size", "3"]), "did you mean --hidden-size")
    one_line_error(capsys, main(["classify", "--data", tr, "--val-ratio", "1"]), "--val-ratio must be in [0, 1)")
    (tmp_path / "bad.toml").write_text("data = 'x.ts'\nseq_length = 3\n")
    one_line_error(capsys, main(["classify", "--config", str(tmp_path / "bad.toml")]), "unknown key 'seq_length'")


def test_predict_refuses_a_run_folder_of_the_wrong_kind(tmp_path, capsys):
    fc = tmp_path / "fc"
    assert main(["train", "--data", "sine", "--sine-length", "80", "--seq-length", "4", "--hidden-size", "3",
                 "--epochs", "1", "--quiet", "--no-plots", "--out", str(fc)]) == 0
    one_line_error(capsys, main(["predict", "--run", str(fc), "--text", "good"]), "is a forecasting run")
    from gru_xp.classify import load_classifier
    from gru_xp.errors import UserError

    with pytest.raises(UserError, match="forecasting run, not a classifier"):
        load_classifier(fc)
    assert main(["predict", "--run", str(fc), "--horizon", "2"]) == 0  # forecasting predict as before


def test_ctrl_c_keeps_the_model_so_far_and_never_replaces_a_completed_run(tmp_path, capsys, monkeypatch):
    """Ctrl-C (the test hook sends a real SIGINT during epoch 2): the epoch finishes, the model so far is written
    (status "interrupted"), exit 130; a completed run folder at --out is never replaced (OUT-interrupted instead)."""
    X, L, y = _series(24, 0)
    tr = _write_ts(tmp_path / "tr.ts", X, L, y)
    out = tmp_path / "run"
    args = ["classify", "--data", tr, "--out", str(out), "--epochs", "4", "--hidden-size", "4", "--quiet"]
    assert main(args) == 0
    before = (out / "model.npz").read_bytes()
    monkeypatch.setenv("GRU_XP_TEST_SIGINT_AT_EPOCH", "2")
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 2" in err and "not resumable" in err
    assert (out / "model.npz").read_bytes() == before
    cfg = json.loads((tmp_path / "run-interrupted" / "config.json").read_text())
    assert cfg["run"]["status"] == "interrupted" and cfg["run"]["epochs_run"] == 2
    assert main(["predict", "--run", str(tmp_path / "run-interrupted"), "--data", tr, "--out",
                 str(tmp_path / "p.csv")]) == 0
