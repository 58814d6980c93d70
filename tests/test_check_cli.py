"""`gru-xp check` proves the install, and the README's two set-up commands stay true."""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _gru_xp(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gru_xp", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_check_passes_on_cpu():
    r = _gru_xp("check", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    for conv in ("True", "False"):
        for path in ("reference", "fast"):
            assert f"finite differences, GRU reset_after={conv}, {path} (cpu, float64)" in r.stdout
    assert "PyTorch torch.nn.GRU parity" in r.stdout
    assert re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M)


def test_check_on_a_non_default_device_compares_against_numpy():
    r = _gru_xp("check", "--device", "strict:device1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpu vs strict:device1 forward+backward (float32)" in r.stdout


def test_device_rows_cover_every_cell_on_the_fast_path():
    """The rows `gru-xp check --device cuda` adds for the fast path (the fused kernels there), run here with NumPy
    as the device: every cell, both dtypes; none where the namespace has no fast path."""
    from gru_xp.check import _device_fast_rows

    for dtype, limit in (("float64", 1e-10), ("float32", 1e-4)):
        rows = _device_fast_rows("cpu", dtype, limit)
        assert [r.check.split(", ")[1] for r in rows] == ["GRU reset_after=True", "GRU reset_after=False", "LSTM",
                                                           "RNN tanh", "RNN relu"]
        assert all(r.ok for r in rows), rows
    assert _device_fast_rows("strict", "float64", 1e-10) == []


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")
def test_check_proves_the_cpu_kernels_and_fails_when_they_err_or_never_run(monkeypatch):
    from gru_xp import check
    from gru_xp.nn.fast import _cpu, whole_sequence_backward, whole_sequence_forward

    whole = "GRU, backward as one call on NumPy's BLAS"
    whole_lstm = "LSTM, backward as one call on NumPy's BLAS"
    fwd32, fwd32_lstm = "GRU float32 forward as one call (tanh32)", "LSTM float32 forward as one call (tanh32)"
    cells = ["GRU"] + ([whole] if whole_sequence_backward("float64") else []) + ["GRU reset_after=False", "LSTM"] + (
        [whole_lstm] if whole_sequence_backward("float64", "lstm") else []) + ["RNN tanh", "RNN relu"]
    # one row each: against the float64 reference only
    extra = ([fwd32] if whole_sequence_forward("float32") else []) + (
        [fwd32_lstm] if whole_sequence_forward("float32", "lstm") else []) + ["Adam's update"]
    # two rows each (float64 against the reference, float32 against the one call): fast/blocks.py
    blocked = {"GRU with its batch in 3 blocks", "LSTM with its batch in 3 blocks"}
    extra += [label for label in sorted(blocked) for _ in (0, 1)]

    def failing():  # the cells with a failing row
        rows = check._cpu_kernel_rows()
        assert [r.check.split(" against")[0].split("), ", 1)[1] for r in rows] == \
            [c for c in cells for _ in (0, 1)] + extra
        return {r.check.split(" against")[0].split("), ", 1)[1] for r in rows if not r.ok}

    assert failing() == set()
    kern = _cpu.kernels()
    orig = kern.gru_fwd_state

    def off_by_a_rounding(h_prev, cand, gates, h_next):
        orig(h_prev, cand, gates, h_next)
        h_next *= 1 + 1e-15

    monkeypatch.setattr(kern, "gru_fwd_state", off_by_a_rounding)
    # within 1e-10 of the reference, but not bit for bit (the state kernel serves both GRU conventions; the
    # whole-sequence rows compare to rounding only); LSTM fine
    rows = check._cpu_kernel_rows()
    assert [r.ok for r in rows[:2]] == [True, False] and failing() == {"GRU", "GRU reset_after=False"}
    monkeypatch.undo()
    orig_r = kern.gru_bwd_before_r

    def r_grad_off(drh, gates, h_prev, dh, dgates, dhz, drr, one):
        orig_r(drh, gates, h_prev, dh, dgates, dhz, drr, one)
        dgates[: dh.shape[0]] *= 1 + 1e-6

    monkeypatch.setattr(kern, "gru_bwd_before_r", r_grad_off)  # only the reset_before backward is wrong
    assert failing() == {"GRU reset_after=False"}
    monkeypatch.undo()
    orig_rnn = kern.rnn_bwd

    def rnn_sign_flipped(dh, dy, has_dy, h, da, relu, tiny, one, zero):
        orig_rnn(dh, dy, has_dy, h, da, relu, tiny, one, zero)
        if relu:
            da *= -1.0

    monkeypatch.setattr(kern, "rnn_bwd", rnn_sign_flipped)  # only the relu RNN's backward is wrong
    assert failing() == {"RNN relu"}
    monkeypatch.undo()
    if whole in cells:
        orig_seq = kern.gru_bwd_seq_float64

        def dw_off(*args):  # args[11]: dw, the recurrent weight grads
            orig_seq(*args)
            args[11][0, 0] += 1e-9

        monkeypatch.setattr(kern, "gru_bwd_seq_float64", dw_off)  # only the whole-sequence backward is wrong
        assert failing() - blocked == {whole}  # (the blocks run it too)
        monkeypatch.undo()
    if whole_lstm in cells:
        orig_lstm = kern.lstm_bwd_seq_float64

        def dc_off(*args):  # args[1]: dc, the carried cell-state grad (dc_0 at the end)
            orig_lstm(*args)
            args[1][0, 0] += 1e-9

        monkeypatch.setattr(kern, "lstm_bwd_seq_float64", dc_off)  # only the LSTM's one-call backward is wrong
        assert failing() - blocked == {whole_lstm}
        monkeypatch.undo()
    for label, name, at in ((fwd32, "gru_fwd_seq_float32", 2), (fwd32_lstm, "lstm_fwd_seq_float32", 1)):
        if label not in extra:
            continue
        orig_fwd = getattr(kern, name)

        def h_off(*args, orig_fwd=orig_fwd, at=at):  # args[at]: the operands, rows :H of step t+1 the new state
            orig_fwd(*args)
            args[at][1:, 0, 0] += 1e-4

        monkeypatch.setattr(kern, name, h_off)  # only this cell's float32 one-call forward is wrong
        assert failing() - blocked == {label}
        monkeypatch.undo()
    orig_adam = kern.adam_update

    def adam_off(p, g, m, v, coef, has_wd):  # one parameter's update off by a rounding
        orig_adam(p, g, m, v, coef, has_wd)
        p.reshape(-1)[0] = np.nextafter(p.reshape(-1)[0], np.inf)

    monkeypatch.setattr(kern, "adam_update", adam_off)  # only Adam's fused update is wrong
    assert failing() == {"Adam's update"}
    monkeypatch.undo()
    from gru_xp.nn.fast import _cpu_split

    orig_run = _cpu_split.run
    monkeypatch.setattr(_cpu_split, "run", lambda fn, n: orig_run(fn, n)[::-1])  # the blocks joined out of order
    assert failing() == blocked
    monkeypatch.undo()
    monkeypatch.setattr(_cpu, "usable", lambda xp, n: False)  # kernels that never run prove nothing: rows fail
    assert not any(r.ok for r in check._cpu_kernel_rows())


def test_check_fails_with_exit_1_when_a_gradient_is_wrong():
    code = ("import sys, gru_xp.nn.gru as g\n"
            "orig = g.recurrent_weight_grads\n"
            "g.recurrent_weight_grads = lambda xp, d, h: (lambda w, b: (w * 1.01, b))(*orig(xp, d, h))\n"
            "from gru_xp.cli import main\nsys.exit(main(['check']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO" in r.stdout


def test_check_cuda_without_gpu_is_one_line_exit_2():
    from gru_xp.backend import cuda_available

    if cuda_available()[0]:
        return
    r = _gru_xp("check", "--device", "cuda")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "pip install -e '.[cuda12]'" in r.stderr


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert "pip install" in cmds[0] and "gru-xp" in cmds[0]
    assert "pip install" in cmds[1] and "pytest" in cmds[1] and "[test]" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci


def test_bench_user_errors_are_one_line_before_any_child_starts():
    for args in (["--cells", "foo"], ["--repeats", "0"], ["--threads", "0"], ["--processes", "0"], ["--kinds", "foo"],
                 ["--rows", "H32,nope"], ["--rows", "gpu-H256"]):
        r = _gru_xp("bench", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("gru-xp: error:") and "Traceback" not in r.stderr


def test_bench_without_torch_is_one_line(monkeypatch, capsys):
    """A base install (no test extra) has no torch: `gru-xp bench` says so in one line, exit 2, before any child."""
    import sys

    from gru_xp import cli

    monkeypatch.setitem(sys.modules, "torch", None)
    assert cli.main(["bench", "--quick", "--rows", "H32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch is not installed: pip install -e '.[test]'" in err and "Traceback" not in err


def test_bench_combines_processes_by_median():
    from gru_xp.bench import combine, format_table

    def run(gx, tt, load):
        row = {"cell": "gru", "row": "H32", "T": 50, "B": 64, "I": 1, "H": 32, "fast_path": True, "gru_xp_ms": gx,
               "torch_ms": tt, "ratio": gx / tt, "ratio_median_of_pairs": gx / tt, "target": 0.35,
               "timings": {"gx": gx}, "loadavg": [load]}
        machine = {"gru_xp": "x", "torch": "t", "numpy": "n", "numpy_blas": "b", "cpu": "c", "threads": 1,
                   "os_cpu_count": 2, "loadavg_start": [load], "loadavg_end": [load]}
        return {"machine": machine, "device": "cpu", "repeats": 3, "rows": [row]}

    runs = [run(2.0, 8.0, 0.1), run(2.2, 5.5, 0.2), run(1.9, 6.0, 0.3)]
    res = combine(runs)
    r = res["rows"][0]
    assert res["processes"] == 3 and r["gru_xp_ms"] == 2.0 and r["torch_ms"] == 6.0
    assert r["ratio"] == round(1.9 / 6.0, 4)  # the median of the per-process ratios 0.25, 0.4, 0.3167
    assert r["ratio_per_process"] == [0.25, 2.2 / 5.5, 1.9 / 6.0] and len(r["timings"]) == 3
    assert res["machine"]["loadavg_end"] == [0.3]
    assert "over 3 processes" in format_table(res) and "(0.250-0.400)" in format_table(res)
    assert combine(runs[:1])["rows"][0]["ratio"] == 0.25  # one process: unchanged


def test_bench_threads_default_to_every_core_and_take_a_list(monkeypatch):
    from gru_xp import bench
    from gru_xp.errors import UserError

    monkeypatch.setattr(bench, "available_cores", lambda: 6)
    assert bench.parse_threads("all") == [6] and bench.parse_threads("1,all") == [1, 6]
    assert bench.parse_threads("2, 2,1") == [2, 1]
    for bad in ("0", "x", "1,", "-2"):
        with pytest.raises(UserError, match="--threads"):
            bench.parse_threads(bad)
    p = bench.add_arguments(argparse.ArgumentParser())
    assert p.parse_args([]).threads == "all" and p.parse_args([]).kinds == "step,layer,infer"


def test_bench_readme_table_puts_thread_counts_side_by_side():
    from gru_xp.bench import format_readme_table, format_table, merge_threads

    def result(threads, ratios):
        rows = [{"cell": "gru", "kind": kind, "row": row, "threads": threads, "T": T, "B": B, "I": 1, "H": H,
                 "fast_path": True, "gru_xp_ms": 1.0, "torch_ms": 1.0 / r, "ratio": r,
                 "target": {("layer", "H32"): 0.3, ("infer", "H32"): None}.get((kind, row)) if threads > 1 else None,
                 "timings": {}, "loadavg": [0.0]}
                for (kind, row, T, B, H), r in zip([("layer", "H32", 50, 64, 32), ("infer", "H32", 50, 64, 32)],
                                                   ratios)]
        machine = {"gru_xp": "x", "torch": "t", "numpy": "n", "numpy_blas": "b", "cpu": "c", "threads": threads,
                   "cores": 2, "os_cpu_count": 2, "loadavg_start": [0.0], "loadavg_end": [0.0]}
        return {"machine": machine, "device": "cpu", "repeats": 3, "rows": rows}

    res = merge_threads([result(1, [0.5, 0.6]), result(2, [0.25, 0.4])])
    assert res["machine"]["threads"] == [1, 2] and res["machine"]["cores"] == 2 and len(res["rows"]) == 4
    table = format_readme_table(res)
    assert "2 cores" in table and "| 1 thread: gru_xp / torch ms |" in table and "| 2 threads:" in table
    line = next(ln for ln in table.splitlines() if "layer fwd + bwd" in ln)
    assert "**0.50**" in line and "**0.25**" in line and "≤ 0.3 at 2: met" in line
    assert "forward, no_grad" in table
    assert "| layer | 2 | H32 |" in format_table(res)
    assert merge_threads([result(2, [0.25, 0.4])])["machine"]["threads"] == 2  # one count: as before


def test_bench_worker_times_the_three_kinds_of_row():
    """One quick worker run in this process (the H32 row, 1 thread): a step, a layer and an inference row, each
    against torch, with the fields the tables and the JSON need."""
    import torch

    from gru_xp.bench_worker import worker

    before = torch.get_num_threads()
    try:
        res = worker({"device": "cpu", "cells": "gru", "rows": "H32", "repeats": 1, "min_block": 0.0,
                      "reference": True, "no_extras": True, "quick": True, "kinds": "step,layer,infer", "threads": 1})
    finally:
        torch.set_num_threads(before)
    assert [r["kind"] for r in res["rows"]] == ["step", "layer", "infer"]
    assert res["machine"]["threads"] == 1 and res["machine"]["cores"] >= 1
    for r in res["rows"]:
        assert r["fast_path"] and r["threads"] == 1 and r["gru_xp_ms"] > 0 and r["torch_ms"] > 0
        # the ratio of the unrounded medians, rounded to 4 places; the ms fields are rounded to 4 places too, so the
        # ratio recomputed from them may differ by their rounding (half a unit of each) plus its own
        ratio = r["gru_xp_ms"] / r["torch_ms"]
        slack = 5e-5 + ratio * (5e-5 / r["gru_xp_ms"] + 5e-5 / r["torch_ms"]) + 1e-12
        assert abs(r["ratio"] - ratio) <= slack and r["reference_ms"] > 0
    assert res["rows"][0]["target"] == 0.35 and res["rows"][1]["target"] is None  # 1 thread: issue 6's step targets
    assert [r["batch_blocks"] for r in res["rows"]] == [1, 1, 1]  # one thread: the one call
    from gru_xp.nn.fast import forced_batch_blocks

    with forced_batch_blocks(2):  # a row whose layer splits its batch says so
        split = worker({"device": "cpu", "cells": "gru", "rows": "H32", "repeats": 1, "min_block": 0.0,
                        "reference": False, "no_extras": True, "quick": True, "kinds": "layer", "threads": 1})
    assert [r["batch_blocks"] for r in split["rows"]] == [2]


def test_bench_settle_pauses_and_warms_before_every_timed_block(monkeypatch):
    """With more than one thread each timed block is preceded by a pause and one untimed step (the other library's
    worker threads go idle first); without it, blocks follow each other directly."""
    import gru_xp.bench_worker as bw

    sleeps, calls = [], {"a": 0, "b": 0}
    monkeypatch.setattr(bw.time, "sleep", lambda s: sleeps.append(s))

    def side(name):
        def step():
            calls[name] += 1
        return step, (lambda: None)

    bw.interleaved({"a": side("a"), "b": side("b")}, repeats=4, min_block=0.0, warmup=2, settle=0.3)
    assert sleeps == [0.3] * 8  # one pause per timed block: 4 repeats x 2 sides
    assert calls == {"a": 2 + 1 + 4 * (1 + 1), "b": 2 + 1 + 4 * (1 + 1)}  # warm-up, sizing, (untimed + block) x 4
    sleeps.clear()
    calls.update(a=0, b=0)
    bw.interleaved({"a": side("a"), "b": side("b")}, repeats=4, min_block=0.0, warmup=2)
    assert sleeps == [] and calls == {"a": 2 + 1 + 4, "b": 2 + 1 + 4}
    assert bw.SETTLE_S > 0
