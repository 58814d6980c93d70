"""JapaneseVowels (UEA): sequence classification quality, measured, beside the baselines and a torch calibration.

Two stages, so that nothing is chosen on test data:
    python benchmarks/classify_quality.py select   # settings chosen on VALIDATION only (the test file is never read)
        -> benchmarks/results/japanese-vowels-select.json
    python benchmarks/classify_quality.py final    # configs/japanese-vowels.toml (written from the selection), 3 seeds
        -> benchmarks/results/japanese-vowels.json
    python benchmarks/classify_quality.py spread   # the same config on seeds 0-9: random batches, bucketed, torch
        -> benchmarks/results/japanese-vowels-spread.json   (information on the seed spread; chooses nothing)
    python benchmarks/classify_quality.py text     # the text path on the word-order corpus (gru_xp.text)
        -> benchmarks/results/negation-corpus.json

select: each candidate (a small grid fixed in advance, below) is trained on the training file minus a stratified
20% tail (val_ratio 0.2), for MAX_EPOCHS epochs, seeds 0-2; its score is the lowest mean-over-seeds validation loss
over the epochs, and that epoch count goes with it. The winner (lowest score) becomes configs/japanese-vowels.toml
with val_ratio 0: trained on all 270 training cases for that many epochs (the issue's --val-ratio 0 case: 30 cases
per class, where holding out costs more than it gains).
final: the config on seeds 0-2 on variable-length batches, random batches and --bucket (batches of similar
lengths), plus: the same seed-0 run with no per-batch cutting (every batch padded to the longest case: the masking
makes the padding irrelevant, so the results agree to float32 rounding), the majority class, 1-NN (Euclidean on
standardised series resampled to one length), the published 1-NN DTW figure, and a PyTorch calibration (the same
model and protocol in torch: nn.GRU on packed sequences, Adam, the same epochs, batches and data).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gru_xp import checkpoint, metrics  # noqa: E402
from gru_xp.backend import installed  # noqa: E402
from gru_xp.classdata import prepare  # noqa: E402
from gru_xp.classify import make_optimizer, model_spec, predict_log_probs, run_classify, targets  # noqa: E402
from gru_xp.config import make_classify_config  # noqa: E402
from gru_xp.nn.classifier import Classifier  # noqa: E402
from gru_xp.train import fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEEDS = (0, 1, 2)
MAX_EPOCHS = 100
BASE = {"data": "JapaneseVowels_TRAIN.ts", "batch_size": 32, "dense_size": 32, "optimizer": "adam", "quiet": True}
CANDIDATES = {  # fixed before looking at any result
    "bigru64-lr1e-3": {"cell": "gru", "bidirectional": True, "hidden_size": 64, "lr": 1e-3},
    "bigru64-lr3e-3": {"cell": "gru", "bidirectional": True, "hidden_size": 64, "lr": 3e-3},
    "gru64-lr1e-3": {"cell": "gru", "bidirectional": False, "hidden_size": 64, "lr": 1e-3},
    "bilstm64-lr1e-3": {"cell": "lstm", "bidirectional": True, "hidden_size": 64, "lr": 1e-3},
    "bigru128-lr1e-3": {"cell": "gru", "bidirectional": True, "hidden_size": 128, "lr": 1e-3},
}
PUBLISHED_DTW = {"accuracy": 0.95, "what": "1-NN DTW, UEA archive (about 0.95, as issue 17 quotes it)"}


def _machine() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d")}


def select() -> dict:
    out = {"protocol": "train minus a stratified 20% tail; lowest mean-over-seeds validation loss; test never read",
           "seeds": list(SEEDS), "max_epochs": MAX_EPOCHS, "base": BASE, "candidates": {}}
    for name, cand in CANDIDATES.items():
        curves = []
        for seed in SEEDS:
            cfg = make_classify_config(None, {**BASE, **cand, "val_ratio": 0.2, "epochs": MAX_EPOCHS, "seed": seed})
            t0 = time.perf_counter()
            r = run_classify(cfg, save=False, progress=False)
            h = r.history
            curves.append({"seed": seed, "val_loss": h.val_loss, "val_accuracy": h.val_accuracy,
                           "seconds": round(time.perf_counter() - t0, 1)})
        mean_loss = np.mean([c["val_loss"] for c in curves], axis=0)
        mean_acc = np.mean([c["val_accuracy"] for c in curves], axis=0)
        best = int(np.argmin(mean_loss))
        out["candidates"][name] = {"settings": cand, "best_epochs": best + 1, "val_loss": float(mean_loss[best]),
                                   "val_accuracy": float(mean_acc[best]), "curves": curves}
        print(f"{name:<18} best epoch {best + 1:>3}  mean val loss {mean_loss[best]:.4f}  "
              f"mean val accuracy {mean_acc[best]:.4f}", flush=True)
    win = min(out["candidates"], key=lambda k: out["candidates"][k]["val_loss"])
    out["selected"] = {"candidate": win, **out["candidates"][win]["settings"],
                       "epochs": out["candidates"][win]["best_epochs"]}
    print(f"selected: {out['selected']}")
    return out


def _torch_run(data, cfg, seed: int) -> float:
    """The same model in torch: [bi]GRU on packed sequences -> Dense(relu) -> Dense -> cross-entropy, Adam; the same
    data, epochs and batch size; float32. Returns test accuracy."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(seed)
    D = 2 if cfg.bidirectional else 1
    C = len(data.encoder.classes)
    rnn = torch.nn.GRU(data.encoder.channels, cfg.hidden_size, bidirectional=cfg.bidirectional)
    dense, out = torch.nn.Linear(D * cfg.hidden_size, cfg.dense_size), torch.nn.Linear(cfg.dense_size, C)
    params = [*rnn.parameters(), *dense.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)

    def logits(X, L):
        x = torch.tensor(np.transpose(X, (1, 0, 2)), dtype=torch.float32)
        _, h = rnn(pack_padded_sequence(x, torch.tensor(L), enforce_sorted=False))
        feat = torch.cat([h[-D + d] for d in range(D)], dim=-1)
        return out(torch.relu(dense(feat)))

    tr, rng = data.train, np.random.default_rng(seed)
    for _ in range(cfg.epochs):
        perm = rng.permutation(tr.n)
        for s in range(0, tr.n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            steps = int(tr.lengths[idx].max())
            loss = torch.nn.functional.cross_entropy(logits(tr.X[idx, :steps], tr.lengths[idx]),
                                                     torch.tensor(tr.y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = logits(data.test.X, data.test.lengths).argmax(-1).numpy()
    return metrics.accuracy(data.test.y, pred)


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "per_seed": [float(x) for x in v]}


def final() -> dict:
    cfg0 = make_classify_config("japanese-vowels", {"quiet": True})
    res = {"config": cfg0.to_dict(), "seeds": list(SEEDS), "runs": {}}
    for label, extra in (("random batches", {}), ("bucketed batches", {"bucket": True})):
        rows = []
        for seed in SEEDS:
            t0 = time.perf_counter()
            r = run_classify(make_classify_config("japanese-vowels", {"quiet": True, "seed": seed, **extra}),
                             save=False, progress=False)
            rows.append({"seed": seed, "test": r.metrics["test"]["model"], "train": r.metrics["train"]["model"],
                         "epochs": len(r.history.train_loss), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{label:<17} seed {seed}: test accuracy {rows[-1]['test']['accuracy']:.4f}", flush=True)
        res["runs"][label] = {"per_seed": rows, "test_accuracy": _summary([x["test"]["accuracy"] for x in rows]),
                              "test_macro_f1": _summary([x["test"]["macro_f1"] for x in rows])}
        baselines = r.metrics["test"]
    res["baselines"] = {"majority": baselines["majority"], "nearest_neighbor": baselines["nearest_neighbor"],
                        "published_1nn_dtw": PUBLISHED_DTW}
    res["padding_check"] = _padding_check(cfg0)
    data = prepare(cfg0)
    tacc = [_torch_run(data, cfg0, s) for s in SEEDS]
    import torch

    res["torch_calibration"] = {"what": "torch.nn.GRU, the same model, data, epochs, batches, Adam; float32",
                                "torch": torch.__version__, "test_accuracy": _summary(tacc)}
    print(f"torch calibration: {res['torch_calibration']['test_accuracy']}")
    return res


def spread(seeds=range(10)) -> dict:
    """Seeds 0-9 of the final config: random batches, bucketed batches, the torch calibration (nothing chosen)."""
    cfg = make_classify_config("japanese-vowels", {"quiet": True})
    data = prepare(cfg)
    acc = {"random batches": [], "bucketed batches": [], "torch calibration": []}
    for seed in seeds:
        for label, extra in (("random batches", {}), ("bucketed batches", {"bucket": True})):
            r = run_classify(make_classify_config("japanese-vowels", {"quiet": True, "seed": seed, **extra}),
                             save=False, progress=False)
            acc[label].append(r.metrics["test"]["model"]["accuracy"])
        acc["torch calibration"].append(_torch_run(data, cfg, seed))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in acc.items()), flush=True)
    return {"config": cfg.to_dict(), "seeds": list(seeds), "test_accuracy": {k: _summary(v) for k, v in acc.items()}}


def text(seeds=SEEDS) -> dict:
    """The whole text path (folder layout, tokenizer, vocabulary, embedding, masking) on the word-order corpus: the
    tutorial's model (bidirectional LSTM-64, embedding 64, Dense(32, relu)) at settings fixed in advance (lr 3e-3, 10
    epochs, validation tail 20% for the best epoch), 2000 training and 1000 test reviews, beside majority and 1-NN
    on bag-of-words counts."""
    import tempfile

    from gru_xp.text import negation_corpus, write_text_folder

    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_text_folder(Path(d) / "train", negation_corpus(2000, seed=0))
        write_text_folder(Path(d) / "test", negation_corpus(1000, seed=1))
        for seed in seeds:
            cfg = make_classify_config("imdb-keras", {"data": str(Path(d) / "train"), "test": str(Path(d) / "test"),
                                                      "lr": 3e-3, "epochs": 10, "seed": seed, "quiet": True})
            t0 = time.perf_counter()
            r = run_classify(cfg, save=False, progress=False)
            rows.append({"seed": seed, **{k: r.metrics["test"][k] for k in ("model", "majority", "nearest_neighbor")},
                         "best_epoch": r.history.best_epoch, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"seed {seed}: test accuracy {rows[-1]['model']['accuracy']:.4f}, 1-NN bag of words "
                  f"{rows[-1]['nearest_neighbor']['accuracy']:.4f}", flush=True)
    return {"corpus": "gru_xp.text.negation_corpus: 2000 train (seed 0), 1000 test (seed 1)",
            "config": "configs/imdb-keras.toml with lr 3e-3, 10 epochs", "per_seed": rows,
            "test_accuracy": _summary([x["model"]["accuracy"] for x in rows]),
            "nearest_neighbor": _summary([x["nearest_neighbor"]["accuracy"] for x in rows]),
            "majority": rows[0]["majority"]}


def _padding_check(cfg) -> dict:
    """Seed 0 with each batch cut to its longest case vs every batch at the full padded width (29 steps): the same
    batches, the same dropout-free model; the parameters agree to float32 rounding, the accuracy is the same."""
    data = prepare(cfg)
    C = len(data.encoder.classes)
    out = {}
    for trim in (True, False):
        m = Classifier(**model_spec(cfg, data.encoder), dtype=cfg.dtype, seed=0)
        fit(m, data.train.X, targets(data.train.y, C), optimizer=make_optimizer(cfg), epochs=cfg.epochs,
            batch_size=cfg.batch_size, seed=0, progress=False, lengths=data.train.lengths, trim=trim, keep_last=True)
        pred = np.argmax(predict_log_probs(m, data.test.X, data.test.lengths), axis=1)
        out[trim] = (metrics.accuracy(data.test.y, pred), {k: np.asarray(v) for k, v in m.params.items()})
    diff = max(float(np.max(np.abs(out[True][1][k] - out[False][1][k]))) for k in out[True][1])
    scale = max(float(np.max(np.abs(v))) for v in out[True][1].values())
    return {"test_accuracy_cut_batches": out[True][0], "test_accuracy_full_width": out[False][0],
            "max_parameter_difference": diff, "max_parameter": scale}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("select", "final", "spread", "text"))
    a = ap.parse_args()
    if a.stage in ("final", "spread") and not installed("torch"):  # their torch calibration runs after the training
        print(f"classify_quality.py {a.stage}: it trains torch's GRU beside gru_xp's, and torch is not installed: "
              "pip install -e '.[test]'", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = {"select": select, "final": final, "spread": spread, "text": text}[a.stage]()
    res["machine"], res["seconds"] = _machine(), round(time.perf_counter() - t0, 1)
    path = RESULTS / {"select": "japanese-vowels-select.json", "final": "japanese-vowels.json",
                      "spread": "japanese-vowels-spread.json", "text": "negation-corpus.json"}[a.stage]
    checkpoint.write_json(path, metrics.jsonable(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
