"""Atomic writes: a process killed at any moment never leaves a half-written checkpoint under the final name, a
damaged checkpoint is never loaded as a good one, and a failed or killed run never damages a good run folder."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gru_xp import checkpoint
from gru_xp.cli import main
from gru_xp.errors import UserError

TINY = ["--data", "sine", "--sine-length", "120", "--seq-length", "6", "--hidden-size", "4", "--batch-size", "16",
        "--quiet", "--no-plots"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}

SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from gru_xp import checkpoint
    path = sys.argv[1]
    i = int(sys.argv[2])
    while True:
        params = {"w": np.full((600_000,), float(i)), "b": np.full((7, 3), float(i))}  # ~4.8 MB
        checkpoint.save(path, params, {"i": i, "model": {}, "pipeline": {}, "config": {}})
        print(i, flush=True)
        i += 1
""")


def verify(path: Path) -> int:
    """A checkpoint under the final name is complete: every array holds the counter its metadata names."""
    params, meta = checkpoint.load(path)
    i = meta["i"]
    assert set(params) == {"w", "b"} and params["w"].shape == (600_000,)
    assert np.all(params["w"] == i) and np.all(params["b"] == i)
    return i


def test_sigkill_during_repeated_saves_never_leaves_a_partial_checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    rnd = random.Random(1234)
    last = -1
    for k in range(6):
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(1000 * k)], stdout=subprocess.PIPE,
                             text=True, env=ENV)
        p.stdout.readline()  # one save completed
        time.sleep(rnd.uniform(0.0, 0.25))  # then kill it somewhere inside a later save
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        i = verify(path)  # the final name always holds a complete checkpoint: the old one or a new one
        assert i > last
        last = i
    leftovers = [q.name for q in tmp_path.iterdir() if q.name != "model.npz"]
    assert all(q.startswith(".model.npz.") and q.endswith(".tmp") for q in leftovers), leftovers


def test_temporary_file_never_has_the_final_name(tmp_path):
    path = tmp_path / "x.json"
    checkpoint.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_path(path) as tmp:
            assert tmp != path and tmp.name.startswith(".x.json.") and tmp.parent == path.parent
            tmp.write_text('{"v": 2, "half')
            assert json.loads(path.read_text()) == {"v": 1}  # still the old one while writing
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


@pytest.fixture(scope="module")
def good_npz(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("npz")
    params = {f"p{j}": np.arange(50 * (j + 1), dtype=np.float64) * (j + 1) for j in range(4)}
    checkpoint.save(d / "m.npz", params, {"model": {}, "pipeline": {}, "config": {}})
    return (d / "m.npz").read_bytes()


def test_truncated_checkpoint_is_always_refused(tmp_path, good_npz):
    p = tmp_path / "m.npz"
    for n in sorted(set(np.linspace(0, len(good_npz) - 1, 60).astype(int).tolist()) | {len(good_npz) - 1}):
        p.write_bytes(good_npz[:n])
        with pytest.raises(UserError, match="corrupt|not found|no metadata"):
            checkpoint.load(p)


def test_damaged_checkpoint_is_refused_or_loads_exactly(tmp_path, good_npz):
    p = tmp_path / "m.npz"
    p.write_bytes(good_npz)
    want, _ = checkpoint.load(p)
    rnd = random.Random(7)
    refused = 0
    for _ in range(150):
        b = bytearray(good_npz)
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        p.write_bytes(bytes(b))
        try:
            got, _ = checkpoint.load(p)
        except UserError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)  # a harmless byte
    assert refused > 100


def test_killed_training_never_damages_a_good_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    rnd = random.Random(99)
    before = {q.name: q.read_bytes() for q in out.iterdir()}
    replaced = 0
    for k in range(4):
        p = subprocess.Popen([sys.executable, "-m", "gru_xp", "train", *TINY, "--epochs", str(3 + k), "--out",
                              str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.3, 2.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert out.is_dir()  # never a moment without the run folder
        now = {q.name: q.read_bytes() for q in out.iterdir()}
        if now != before:  # the kill came after the swap: a complete new run
            replaced += 1
            assert {"model.npz", "config.json", "metrics.json", "history.json", "predictions.csv"} <= set(now)
            c = json.loads(now["config.json"])
            assert c["run"]["status"] == "ok" and c["config"]["epochs"] == 3 + k
            checkpoint.load(out / "model.npz")
            before = now
    assert main(["predict", "--run", str(out), "--horizon", "2", "--out", str(tmp_path / "f.csv")]) == 0


def test_exchange_replaces_a_run_folder_in_one_step(tmp_path):
    final = tmp_path / "r"
    for v in ("old", "new"):
        with checkpoint.atomic_dir(final) as tmp:
            checkpoint.save(tmp / "model.npz", {"x": np.zeros(2)}, {"model": {}, "pipeline": {}, "config": {}})
            (tmp / "v.txt").write_text(v)
    assert (final / "v.txt").read_text() == "new"
    assert [q.name for q in tmp_path.iterdir()] == ["r"]  # the old folder went away, no temporaries remain
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.atomic_dir(final) as tmp:
            (tmp / "v.txt").write_text("half")
            raise KeyboardInterrupt
    assert (final / "v.txt").read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["r"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only (elsewhere: two renames)")
def test_linux_uses_an_atomic_exchange(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not checkpoint._exchange(a, b):
        pytest.skip("this filesystem does not support RENAME_EXCHANGE")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_stale_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    """A SIGKILL leaves a dot-named temporary; the next successful write of the same name removes it once it is
    older than STALE_SECONDS, and leaves a young one (a writer may still be at work) and other names alone."""
    path, run = tmp_path / "x.json", tmp_path / "run"
    checkpoint.write_json(path, {"v": 1})
    old_file, young_file = tmp_path / ".x.json.abc123.tmp", tmp_path / ".x.json.def456.tmp"
    other = tmp_path / ".y.json.a.tmp"
    old_dir, young_dir, old_aside = tmp_path / ".run.tmp-abc", tmp_path / ".run.tmp-def", tmp_path / ".run.old-abc"
    for f in (old_file, young_file, other):
        f.write_text("half")
    for d in (old_dir, young_dir, old_aside):
        d.mkdir()
        (d / "model.npz").write_bytes(b"half")
    past = time.time() - checkpoint.STALE_SECONDS - 60
    for q in (old_file, other, old_dir, old_aside):
        os.utime(q, (past, past))
    checkpoint.write_json(path, {"v": 2})
    with checkpoint.atomic_dir(run) as tmp:
        checkpoint.save(tmp / "model.npz", {"x": np.zeros(2)}, {"model": {}, "pipeline": {}, "config": {}})
    assert json.loads(path.read_text()) == {"v": 2} and checkpoint.is_run_folder(run)
    assert not old_file.exists() and not old_dir.exists()
    assert young_file.exists() and young_dir.exists() and other.exists()
    assert old_aside.exists()  # a folder moved aside is never deleted: it may be the only copy of a run
