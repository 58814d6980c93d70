"""gru-xp sweep: grid validation, LocalCluster results == serial results, failures recorded, re-runs skip, --data
globs on an existing cluster (--scheduler). Tiny data and 3 epochs: the whole file runs in well under a minute."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")
pytest.importorskip("threadpoolctl")

from gru_xp import sweep as S  # noqa: E402
from gru_xp.errors import UserError  # noqa: E402

BASE = """
name = "tiny"
data = "sine"
sine_length = 120
sine_period = 20.0
sine_noise = 0.05
seq_length = 8
hidden_size = 4
batch_size = 16
epochs = 3
patience = 0
seed = 3
plots = false
"""
RESULT_COLS = ["val_loss", "best_epoch", "epochs_run"] + [
    f"{s}_{m}_{k}" for s in S.SPLITS for m in ("model", "naive", "seasonal_naive")
    for k in ("rmse", "mae", "mape", "mase")
] + [f"{s}_skill_{b}" for s in S.SPLITS for b in ("naive", "seasonal_naive")]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture
def base(tmp_path):
    return _write(tmp_path / "base.toml", BASE)


# ---- grids ----------------------------------------------------------------------------------------------------
def test_grid_validation(tmp_path, base):
    with pytest.raises(UserError, match="unknown grid key 'hiden_size'.*did you mean 'hidden_size'"):
        S.read_grid(_write(tmp_path / "g1.toml", "[grid]\nhiden_size = [4, 8]\n"))
    with pytest.raises(UserError, match="empty list"):
        S.read_grid(_write(tmp_path / "g2.toml", "[grid]\nlr = []\n"))
    with pytest.raises(UserError, match="must be a list"):
        S.read_grid(_write(tmp_path / "g3.toml", "[grid]\nlr = 0.1\n"))
    with pytest.raises(UserError, match="cannot be swept"):
        S.read_grid(_write(tmp_path / "g4.toml", "[grid]\nout = ['a']\n"))
    name, grid = S.read_grid(_write(tmp_path / "g5.toml", "[grid]\ncell = ['gru', 'lstm']\nlr = [0.1, 0.01]\n"))
    assert name == "g5"
    assert S.expand(grid) == [{"cell": "gru", "lr": 0.1}, {"cell": "gru", "lr": 0.01},
                              {"cell": "lstm", "lr": 0.1}, {"cell": "lstm", "lr": 0.01}]
    # a bad value fails on the host, naming the point, before anything runs
    with pytest.raises(UserError, match="grid point cell=gru.*unknown cell"):
        S.build_tasks(base, {"cell": ["gru", "gruu"]})
    # the CLI turns it into exit 2 without starting a cluster
    assert S.main(["--config", str(base), "--grid", str(tmp_path / "g1.toml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    # keys: output-only settings do not change the key; anything else does
    t1, = S.build_tasks(base, {"lr": [0.01]})
    t2, = S.build_tasks(base, {"lr": [0.01]}, overrides={"name": "other"})
    t3, = S.build_tasks(base, {"lr": [0.02]})
    assert t1.key == t2.key != t3.key
    assert S.pick_device("cpu") == "cpu"


def test_build_tasks_reads_the_config_once_and_hashes_each_data_file_once(tmp_path, base, monkeypatch):
    import gru_xp.config as C
    import gru_xp.data as D

    csvs = [_write(tmp_path / f"s{i}.csv", "y\n" + "\n".join(str(i + 0.1 * k) for k in range(80))) for i in range(2)]
    reads, hashes = [], []
    real_read, real_hash = C.read_toml, D.sha256_file
    monkeypatch.setattr(C, "read_toml", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(D, "sha256_file", lambda p: hashes.append(p) or real_hash(p))
    tasks = S.build_tasks(base, {"lr": [0.01, 0.02, 0.03], "seed": [1, 2]}, str(tmp_path / "s*.csv"))
    assert len(tasks) == 12 and len(reads) == 1 and sorted(map(str, hashes)) == sorted(map(str, csvs))
    assert len({t.key for t in tasks}) == 12 and {t.data_sha256 for t in tasks} == {real_hash(c) for c in csvs}
    # sine data: the generator's settings (seed included) are the data
    sine = S.build_tasks(base, {"seed": [1, 2, 1]})
    assert len(sine) == 2 and sine[0].data_sha256 != sine[1].data_sha256


# ---- the sweep on a LocalCluster vs serially -------------------------------------------------------------------
def test_localcluster_equals_serial_failures_and_rerun(tmp_path, base):
    # 6 tasks: seq_length 400 is longer than the 120-point series -> 2 failures, 4 successes
    grid = {"cell": ["gru", "rnn"], "seq_length": [6, 12, 400]}
    tasks = S.build_tasks(base, grid)
    assert len(tasks) == 6 and len({t.key for t in tasks}) == 6
    logs = []
    serial = S.sweep(tasks, tmp_path / "serial", serial=True, threads=1, log=logs.append)
    dask = S.sweep(tasks, tmp_path / "dask", workers=2, threads=1, log=logs.append)

    assert (serial.submitted, serial.ok, serial.failed) == (6, 4, 2)
    assert (dask.submitted, dask.ok, dask.failed) == (6, 4, 2)
    assert len(dask.workers) == 2
    a = {r["key"]: r for r in serial.rows}
    b = {r["key"]: r for r in dask.rows}
    assert list(a) == list(b) == [t.key for t in tasks]  # table in grid order, whatever the completion order
    for t in tasks:
        ra, rb = a[t.key], b[t.key]
        assert ra["status"] == rb["status"] == ("failed" if t.point["seq_length"] == 400 else "ok"), ra["error"]
        if ra["status"] == "failed":
            assert "too short" in ra["error"] and "--seq-length 400" in ra["error"] and "\n" not in ra["error"]
            assert ra["error"] == rb["error"]
            continue
        assert rb["worker"].startswith("tcp://127.0.0.1:") and ra["worker"] == "local"
        assert ra["device"] == rb["device"] == "numpy on cpu, float32"
        assert ra["cfg_cell"] == t.point["cell"] and ra["cfg_seq_length"] == t.point["seq_length"]
        for c in RESULT_COLS:  # same seeded training, 1 BLAS thread on both sides: bit-identical
            assert _same(ra[c], rb[c]), (t.point, c, ra[c], rb[c])
        assert math.isfinite(ra["test_model_rmse"]) and ra["test_model_rmse"] > 0

    # streamed table on disk: strict JSON and a CSV with one row per task
    rows = json.loads((tmp_path / "dask" / "results.json").read_text())
    assert [r["key"] for r in rows] == [t.key for t in tasks]
    df = pd.read_csv(tmp_path / "dask" / "results.csv")
    assert len(df) == 6 and (df["status"] == "ok").sum() == 4
    ok = df[df["status"] == "ok"].set_index("key")
    for k, r in ok.iterrows():
        assert np.isclose(r["test_model_rmse"], b[k]["test_model_rmse"], rtol=1e-7)

    # re-run: finished keys are skipped, failed ones retried (and fail again)
    again = S.sweep(tasks, tmp_path / "serial", serial=True, threads=1, log=logs.append)
    assert (again.skipped, again.submitted, again.failed) == (4, 2, 2)
    done = [t for t in tasks if t.point["seq_length"] != 400]
    none = S.sweep(done, tmp_path / "dask", workers=2, threads=1, log=logs.append)
    assert (none.skipped, none.submitted) == (4, 0)
    assert none.workers == []  # nothing to do: no cluster was even started
    assert [r["test_model_rmse"] for r in none.rows] == [b[t.key]["test_model_rmse"] for t in done]


# ---- many series: --data glob, on an existing cluster (--scheduler) --------------------------------------------
def test_data_glob_on_existing_cluster(tmp_path, base, capsys):
    from distributed import LocalCluster

    d = tmp_path / "series"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["b_meter.csv", "a_meter.csv"]):
        y = 10 + np.sin(np.arange(100) * 2 * np.pi / (12 + i)) + 0.1 * rng.standard_normal(100)
        pd.DataFrame({"value": y}).to_csv(d / name, index=False)
    grid = _write(tmp_path / "g.toml", "[grid]\nhidden_size = [4]\n")
    out = tmp_path / "out"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        argv = ["--config", str(base), "--grid", str(grid), "--data", str(d / "*.csv"), "--out", str(out),
                "--scheduler", cluster.scheduler_address]
        assert S.main(argv) == 0
        first = capsys.readouterr().out
        assert "2 ok, 0 failed, 0 skipped" in first
        assert S.main(argv) == 0  # everything already done
        assert "0 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    finally:
        cluster.close()
    rows = json.loads((out / "results.json").read_text())
    assert [r["cfg_data"].rsplit("/", 1)[-1] for r in rows] == ["a_meter.csv", "b_meter.csv"]  # sorted
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["test_model_rmse"] != rows[1]["test_model_rmse"]
    # the same tasks serially give the same numbers (the CSVs were shipped to the workers as bytes)
    tasks = S.build_tasks(base, {"hidden_size": [4]}, str(d / "*.csv"))
    serial = S.sweep(tasks, tmp_path / "serial", serial=True, threads=1, log=lambda s: None)
    assert [r["test_model_rmse"] for r in serial.rows] == [r["test_model_rmse"] for r in rows]
    assert S.main(["--config", str(base), "--grid", str(grid), "--data", str(d / "*.txt"), "--serial",
                   "--out", str(tmp_path / "x")]) == 2


def test_worker_materializes_shipped_data(tmp_path):
    # a worker without the host's file system gets the CSV's bytes and writes them to a local temporary file
    payload = b"value\n1\n2\n3\n"
    import hashlib

    sha = hashlib.sha256(payload).hexdigest()
    s = S._materialize(("m.csv", sha, payload), {"data": str(tmp_path / "not-here" / "m.csv")})
    assert s["data"] != str(tmp_path / "not-here" / "m.csv")
    assert open(s["data"], "rb").read() == payload
    real = tmp_path / "m.csv"
    real.write_bytes(payload)
    assert S._materialize(("m.csv", sha, payload), {"data": str(real)})["data"] == str(real)  # same file: used as is


def test_readme_grid_path_works_from_any_directory(tmp_path, monkeypatch):
    """`--grid configs/grids/small.toml` (as the README writes it) resolves against the project from anywhere."""
    monkeypatch.chdir(tmp_path)
    name, grid = S.read_grid("configs/grids/small.toml")
    assert name == "small" and grid
    assert S.read_grid("small")[1] == grid  # a bare name in configs/grids/ too


def test_serial_runs_without_threadpoolctl(tmp_path, base, monkeypatch, capsys):
    """--serial is the way to sweep without the sweep extra (its error for a missing Dask says so): without
    threadpoolctl it runs at the process's own BLAS threads; --threads-per-worker then asks for the extra, in one
    line, before anything ran."""
    monkeypatch.setitem(__import__("sys").modules, "threadpoolctl", None)  # import threadpoolctl -> ImportError
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    tasks = S.build_tasks(base, {"cell": ["gru", "rnn"]})
    logs = []
    r = S.sweep(tasks, tmp_path / "serial", serial=True, log=logs.append)
    assert (r.submitted, r.ok, r.failed) == (2, 2, 0), [row["error"] for row in r.rows]
    assert "its BLAS threads as they are" in logs[0]
    with pytest.raises(UserError, match=r"--threads-per-worker needs threadpoolctl: pip install -e '\.\[sweep\]'"):
        S.sweep(tasks, tmp_path / "limited", serial=True, threads=1, log=logs.append)
    assert not (tmp_path / "limited").exists()
    with pytest.raises(UserError, match="needs Dask.*--serial"):
        S.sweep(tasks, tmp_path / "dask", workers=1, log=logs.append)
    assert not (tmp_path / "dask").exists()
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nhidden_size = [4]\n", encoding="utf-8")
    capsys.readouterr()
    assert S.main(["--config", str(base), "--grid", str(grid), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err  # the one line, before the sweep's plan and before its folder
    assert err.count("\n") == 1 and err.startswith("gru-xp: error: gru-xp sweep needs Dask") and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_readme_data_glob_takes_the_single_series_files():
    """The README's `--data 'data/[A-Z]*.csv'`: the four single-series CSVs shipped in data/, not the promo panel."""
    from gru_xp.config import PROJECT_ROOT

    files = [p.rsplit("/", 1)[-1] for p in S.expand_data(str(PROJECT_ROOT / "data" / "[A-Z]*.csv"))]
    assert files == ["AAPL.csv", "Electric_Production.csv", "GOOG.csv", "IBM.csv"]
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert "--data 'data/[A-Z]*.csv'" in readme
