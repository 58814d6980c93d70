"""Hyperparameter sweeps and many-series training on Dask (`gru-xp sweep`).

    read_grid(path) -> (name, {key: [values]})      a grid TOML, validated against RunConfig's fields
    build_tasks(config, grid, data_glob) -> [Task]  one task per grid point (x per series): settings built and
                                                    validated on the host, keyed by a hash of settings + data
    run_task(settings, key, threads, ...) -> row    what a worker runs: BLAS threads pinned, device picked, train
    sweep(tasks, out, ...) -> SweepResult           submit to Dask (LocalCluster or --scheduler) or run serially,
                                                    stream rows into OUT/results.csv + results.json (the table:
                                                    sweeptable.py), skip finished

Keys: sha256 of the canonical JSON of the task's settings (every RunConfig field except the output-only ones
`name`, `out`, `plots`, `quiet`) and the sha256 of its data (the CSV's bytes, or the sine generator's parameters).
Re-running into the same folder skips every key already recorded with status "ok"; failed ones are retried.

Exit codes of run_cli: 0 every task ok (or skipped as already done), 1 some task failed (recorded in the table, the
others still ran), 2 a user error before anything ran (bad grid, bad config, no data file; raised as UserError).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .config import (CONFIG_DIR, FIELDS, PROJECT_ROOT, RunConfig, config_base, from_dict, make_config,
                     resolve_config_path, suggest)
from .backend import installed
from .errors import UserError
from .sweeptable import ResultsTable, progress_line, summary_table

OUTPUT_ONLY = ("name", "out", "plots", "quiet", "diagnostics")  # settings that do not change a result: not keyed
GRID_FORBIDDEN = ("out", "plots", "quiet", "diagnostics")  # per-task output is managed by the sweep
SPLITS = ("train", "val", "test")
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
            "NUMEXPR_NUM_THREADS")


# ==== grid ===================================================================================================


def read_grid(path: str | Path) -> tuple[str, dict]:
    """-> (grid name = file stem, {RunConfig field: [values]}) from a TOML file with a [grid] table (a flat file of
    key = [values] is accepted too). Unknown keys, empty or non-list values are UserErrors."""
    p = Path(path)
    if not p.is_file():
        # like configs: as given, else relative to the project, else a name in configs/grids/
        cands = (PROJECT_ROOT / p, CONFIG_DIR / "grids" / p)
        for c in (c for base in cands for c in (base, base.with_suffix(".toml"))):
            if c.is_file():
                p = c
                break
        else:
            raise UserError(f"grid file {str(path)!r} not found; pass a TOML file with a [grid] table of "
                            f"key = [values], e.g. configs/grids/small.toml")
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"grid {p} is not valid TOML ({e}); fix the file") from None
    except OSError as e:
        raise UserError(f"cannot read grid {p}: {e.strerror}") from None
    table = raw.get("grid", raw)
    if not isinstance(table, dict) or not table:
        raise UserError(f"grid {p} has no [grid] table; add e.g. [grid] hidden_size = [16, 32]")
    extra = [k for k in raw if k != "grid"] if "grid" in raw else []
    if extra:
        raise UserError(f"grid {p} has keys outside [grid] ({', '.join(extra)}); put base settings in --config and "
                        f"lists of values under [grid]")
    grid = {}
    for k, v in table.items():
        if k not in FIELDS:
            raise UserError(f"unknown grid key {k!r} in {p}{suggest(k)}")
        if k in GRID_FORBIDDEN:
            raise UserError(f"grid key {k!r} in {p} cannot be swept: the sweep writes its own output (use --out)")
        if k == "difference":  # a list-valued setting: a grid of lists, e.g. difference = [[], [1], [1, 12]]
            if not isinstance(v, list) or not v or not all(isinstance(x, list) for x in v):
                raise UserError(f"grid key 'difference' in {p} must be a non-empty list of lag lists, "
                                f"e.g. [[], [1], [1, 12]]")
        elif not isinstance(v, list):
            raise UserError(f"grid key {k!r} in {p} must be a list of values, e.g. {k} = [{v!r}]")
        if not v:
            raise UserError(f"grid key {k!r} in {p} has an empty list; give at least one value or remove the key")
        grid[k] = list(v)
    return p.stem, grid


def expand(grid: dict) -> list[dict]:
    """Cartesian product in a deterministic order: keys in file order, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def expand_data(pattern: str) -> list[str]:
    """A --data glob -> sorted file list; no match is a UserError."""
    files = sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f))
    if not files:
        raise UserError(f"--data {pattern!r} matches no file; quote the pattern (e.g. --data 'data/*.csv') and "
                        f"check the folder")
    return files


# ==== tasks ==================================================================================================
@dataclass
class Task:
    index: int
    key: str
    settings: dict  # RunConfig.to_dict() of the task, validated on the host
    point: dict  # the grid overrides (and the data file with --data)
    data_sha256: str
    data_path: str | None  # resolved CSV path on the host (None for sine)

    def label(self) -> str:
        return " ".join(f"{k}={_short(v)}" for k, v in self.point.items())


def _short(v) -> str:
    if isinstance(v, str) and (os.sep in v or "/" in v):
        return os.path.basename(v)
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)


def data_fingerprint(cfg: RunConfig) -> tuple[str, str | None]:
    """(sha256 of the data, resolved path or None): the CSV's bytes, or the sine generator's parameters."""
    from .data import resolve_data_path, sha256_file

    if str(cfg.data).strip().lower() == "sine":
        tag = f"sine(length={cfg.sine_length},period={cfg.sine_period},noise={cfg.sine_noise},seed={cfg.seed})"
        return hashlib.sha256(tag.encode()).hexdigest(), None
    path = resolve_data_path(cfg.data)
    return sha256_file(path), str(path)


# settings added after sweeps existed: left out of the key at their default, so a sweep started by an older version
# keeps its keys (its finished rows are not re-run)
LATER_DEFAULTS = {"calendar": False, "ensemble": 1, "nonlinearity": "tanh", "loss": "mse", "quantiles": [0.1, 0.5, 0.9],
                  "intervals": [0.8, 0.95], "interval_window": 30, "interval_gamma": 0.005, "calibration_size": 20,
                  "id_col": "", "covariates": [], "future_covariates": [], "series_embedding": False,
                  "partial_windows": True, "scale_weight": False, "refit": False}


def task_key(settings: dict, data_sha256: str) -> str:
    s = {k: v for k, v in settings.items() if k not in OUTPUT_ONLY
         and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    return hashlib.sha256(_canonical({"settings": s, "data_sha256": data_sha256}).encode()).hexdigest()


def build_tasks(config_file: str | Path | None, grid: dict, data_glob: str | None = None,
                overrides: dict | None = None) -> list[Task]:
    """Every (grid point x data file) as a validated Task, on the host: a bad value fails here, before any worker
    starts. `overrides` (e.g. {"device": "auto"}) apply under the grid point."""
    points = expand(grid)
    files = expand_data(data_glob) if data_glob else [None]
    if data_glob and "data" in grid:
        raise UserError("both --data and a 'data' grid key given; use one of them")
    base = config_base(config_file)  # the TOML read once
    fingerprints: dict = {}  # each data file hashed once (a grid reuses a few files many times)
    tasks, seen = [], {}
    for point in points:
        for f in files:
            ov = {**(overrides or {}), **point}
            if f is not None:
                ov["data"] = f
            try:
                cfg = make_config(None, ov, base=base)
            except UserError as e:
                where = " ".join(f"{k}={_short(v)}" for k, v in {**point, **({"data": f} if f else {})}.items())
                raise UserError(f"grid point {where}: {e}") from None
            settings = cfg.to_dict()
            sine = str(cfg.data).strip().lower() == "sine"  # the generator's settings are its data
            fp_key = (cfg.data, cfg.sine_length, cfg.sine_period, cfg.sine_noise, cfg.seed) if sine else cfg.data
            if fp_key not in fingerprints:
                fingerprints[fp_key] = data_fingerprint(cfg)
            sha, path = fingerprints[fp_key]
            key = task_key(settings, sha)
            full_point = {**point, **({"data": f} if f is not None else {})}
            if key in seen:  # e.g. two identical files, or a grid listing a value twice
                continue
            seen[key] = True
            tasks.append(Task(len(tasks), key, settings, full_point, sha, path))
    return tasks


# ==== the worker side ========================================================================================
def _worker_info() -> tuple[str, object]:
    """(address, name) of the Dask worker running this, or ("local", None) in serial mode."""
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.address), w.name
    except (ImportError, ValueError):
        return "local", None


def pick_device(requested: str, worker_name=None) -> str:
    """One GPU per worker: "auto" -> cuda when this process sees a GPU, else cpu; "auto"/"cuda" on a worker that
    sees several GPUs -> cuda:(worker index mod GPU count). Explicit "cuda:N" and "cpu" are kept."""
    req = requested.strip().lower()
    if req not in ("auto", "cuda"):
        return req
    from .backend import cuda_available

    ok, _ = cuda_available()
    if not ok:
        return "cpu" if req == "auto" else req  # "cuda" without a GPU: let runs.run raise its one-line error
    import cupy

    n = int(cupy.cuda.runtime.getDeviceCount())
    idx = 0
    if n > 1 and worker_name is not None:
        try:
            idx = int(str(worker_name).rsplit("-", 1)[-1]) % n
        except ValueError:
            idx = abs(hash(str(worker_name))) % n
    return f"cuda:{idx}"


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, UserError):
        return msg or "UserError"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _materialize(data_blob, settings: dict) -> dict:
    """With --scheduler the host ships the CSV bytes: use the worker's own copy when it is the same file, else
    write the bytes to a local temporary file and point the settings there."""
    if data_blob is None:
        return settings
    name, sha, payload = data_blob
    from .data import sha256_file

    p = Path(settings["data"])
    if p.is_file() and sha256_file(p) == sha:
        return settings
    import tempfile

    d = Path(tempfile.gettempdir()) / "gru_xp-sweep-data" / sha[:16]
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    if not target.is_file():
        from .checkpoint import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_bytes(payload)
    return {**settings, "data": str(target)}


def result_row(key: str, settings: dict, point: dict) -> dict:
    """An empty row in the table's column order: key, status, error, point, every setting, then results."""
    row = {"key": key, "status": "failed", "error": "", "point": " ".join(f"{k}={_short(v)}" for k, v in point.items())}
    row.update({f"cfg_{k}": v for k, v in settings.items() if k not in GRID_FORBIDDEN})
    row.update({"val_loss": math.nan, "best_epoch": 0, "epochs_run": 0})
    from .metrics import METRICS, MODELS

    for split in SPLITS:
        for m in MODELS:
            for met in METRICS:
                row[f"{split}_{m}_{met}"] = math.nan
        row[f"{split}_skill_naive"] = math.nan
        row[f"{split}_skill_seasonal_naive"] = math.nan
    row.update({"seconds": math.nan, "device": "", "worker": "", "finished": ""})
    return row


def run_task(settings: dict, key: str, point: dict, threads: int | None = 1, save_dir: str | None = None,
             data_blob=None) -> dict:
    """Train one task and return its flat result row, its BLAS pools held to `threads` threads (threadpoolctl;
    None: left as the process has them, no threadpoolctl needed). Any Exception (a UserError such as a too-short
    series, a diverged training, a bug) becomes a row with status "failed" and a one-line error; Ctrl-C in --serial
    mode (KeyboardInterrupt) is not caught and stops the sweep, keeping the rows written so far."""
    t0 = time.perf_counter()
    worker, wname = _worker_info()
    row = result_row(key, settings, point)
    row["worker"] = worker
    try:
        from . import metrics as M
        from .panelrun import is_panel, run_panel
        from .runs import run

        with _blas_threads(threads):
            s = _materialize(data_blob, settings)
            cfg = from_dict({**s, "device": pick_device(settings["device"], wname), "quiet": True,
                             "plots": bool(save_dir) and bool(settings.get("plots", True)),
                             "diagnostics": bool(save_dir) and bool(settings.get("diagnostics", False)),
                             "out": str(Path(save_dir) / key[:16]) if save_dir else ""})
            kw = {"interruptible": False}  # a worker is not the terminal: no SIGINT handling there
            job = run_panel if is_panel(cfg) else run  # issue 18: a panel task trains one global model
            r = job(cfg, save=bool(save_dir), progress=False, log=lambda *a, **k: None, **kw)
        row["device"] = r.model.backend.describe()
        row["val_loss"] = float(r.history.best_loss)
        row["best_epoch"] = int(r.history.best_epoch)
        row["epochs_run"] = len(r.history.train_loss)
        for split, sm in r.metrics.items():
            for m in M.MODELS:
                for met in M.METRICS:
                    row[f"{split}_{m}_{met}"] = float(sm[m][met])
                if "mase_median" in sm[m]:  # panels: the median over series and sMAPE too
                    row[f"{split}_{m}_mase_median"], row[f"{split}_{m}_smape"] = sm[m]["mase_median"], sm[m]["smape"]
            row[f"{split}_skill_naive"] = M.skill(sm, "naive")
            row[f"{split}_skill_seasonal_naive"] = M.skill(sm, "seasonal_naive")
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - every failure becomes a row; the sweep goes on
        row["status"] = "failed"
        row["error"] = _one_line(e)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


# ==== the sweep ==============================================================================================
@dataclass
class SweepResult:
    out: Path
    rows: list  # rows of this sweep's tasks, in task order
    submitted: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: list = field(default_factory=list)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def sweep(tasks: list[Task], out: str | Path, *, scheduler: str | None = None, workers: int | None = None,
          threads: int | None = None, serial: bool = False, save_runs: bool = False, log=print,
          client=None, cluster_kwargs: dict | None = None) -> SweepResult:
    """Run the tasks not yet recorded as ok in OUT, streaming each finished row into OUT/results.{csv,json}.

    Where they run: serial=True in this process; `client` an existing dask.distributed.Client (left open);
    `scheduler` an address to connect to; else a LocalCluster of `workers` processes (1 task at a time each) that
    is closed at the end. `threads` = BLAS threads per worker (default cores // workers locally, 1 on a cluster;
    serially: the process's own, as the user set them).
    """
    check_runner(serial, threads, client)
    t0 = time.perf_counter()
    out = Path(out)
    table = ResultsTable(out)
    order = [t.key for t in tasks]
    todo = [t for t in tasks if not table.done(t.key)]
    res = SweepResult(out, [], skipped=len(tasks) - len(todo))
    if res.skipped:
        log(f"sweep: skipping {res.skipped} task(s) already done in {out}")
    save_dir = str((out / "runs").resolve()) if save_runs else None

    def finish(row: dict, i: int) -> None:
        table.add(row, order)
        if row["status"] == "ok":
            res.ok += 1
        else:
            res.failed += 1
        log(progress_line(i, len(todo), row))

    if todo:
        out.mkdir(parents=True, exist_ok=True)
        if serial:  # the process's own BLAS threads (the user's settings), unless `threads` says otherwise
            n_threads = threads
            log(f"sweep: {len(todo)} task(s) serially in this process, "
                + (f"{n_threads} BLAS thread(s)" if n_threads else "its BLAS threads as they are"))
            res.workers = ["local"]
            for i, t in enumerate(todo, 1):
                res.submitted += 1
                finish(run_task(t.settings, t.key, t.point, n_threads, save_dir, None), i)
        else:
            _run_dask(todo, res, finish, scheduler, workers, threads, save_dir, log, client, cluster_kwargs or {})
    res.rows = [table.rows[k] for k in order if k in table.rows]
    res.seconds = time.perf_counter() - t0
    return res


def check_runner(serial: bool, threads: int | None, client=None) -> None:
    """The packages the chosen way of running needs (the sweep extra's), asked for in one line before anything
    runs or is written: Dask for a cluster, threadpoolctl for --threads-per-worker with --serial."""
    if serial:
        if threads is not None and not installed("threadpoolctl"):
            raise UserError("--threads-per-worker needs threadpoolctl: pip install -e '.[sweep]' (or drop "
                            "--threads-per-worker: --serial alone keeps this process's BLAS threads)")
    elif client is None and not installed("distributed"):
        raise UserError("gru-xp sweep needs Dask: pip install -e '.[sweep]' (or pass --serial)")


def _blas_threads(threads: int | None):
    """A context holding BLAS (and OpenMP) pools to `threads` threads; None: a context that changes nothing."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def _run_dask(todo, res, finish, scheduler, workers, threads, save_dir, log, given, cluster_kwargs) -> None:
    from distributed import Client, LocalCluster, as_completed  # installed: check_runner

    cluster = client = None
    try:
        if given is not None:
            client, remote, n_threads = given, True, threads or 1
            scheduler = scheduler or str(given.scheduler.address)
        elif scheduler:
            n_threads = threads or 1  # the remote machines' cores are unknown: never oversubscribe
            try:
                client = Client(scheduler, timeout="10s")
            except OSError as e:
                raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({_one_line(e)}); start one with "
                                f"'dask scheduler' and workers with 'dask worker {scheduler} --nthreads 1'") from None
            remote = True
        else:
            n_workers = workers or min(2, os.cpu_count() or 1)
            n_threads = threads or default_threads(n_workers)
            env = {k: str(n_threads) for k in BLAS_ENV}
            kw = dict(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env=env)
            kw.update(cluster_kwargs)
            import dask

            # BLAS reads these once, at import: set them before the worker processes spawn (env= covers the rest)
            pre = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": pre}):
                cluster = LocalCluster(**kw)
            client = Client(cluster)
            remote = False
        info = client.scheduler_info(n_workers=-1)["workers"]
        if not info:
            raise UserError(f"the Dask scheduler at {scheduler} has no workers; start some with "
                            f"'dask worker {scheduler} --nthreads 1'")
        res.workers = sorted(info)
        where = f"cluster {scheduler}" if remote else "LocalCluster"
        log(f"sweep: {len(todo)} task(s) on {where} with {len(info)} worker(s), {n_threads} BLAS thread(s) each"
            + (f"; dashboard {client.dashboard_link}" if remote and client.dashboard_link else ""))
        futs = {}
        for t in todo:
            blob = None
            if remote and t.data_path is not None:
                blob = (os.path.basename(t.data_path), t.data_sha256, Path(t.data_path).read_bytes())
            f = client.submit(run_task, t.settings, t.key, t.point, n_threads, save_dir, blob, key=f"gru-xp-{t.key}",
                              pure=False, retries=0)
            futs[f] = t
            res.submitted += 1
        for i, f in enumerate(as_completed(futs), 1):
            t = futs[f]
            try:
                row = f.result()
            except Exception as e:  # noqa: BLE001 - a worker died, or the task could not be deserialized
                row = result_row(t.key, t.settings, t.point)
                row["error"] = _one_line(e)
                row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            finish(row, i)
    finally:
        if client is not None and client is not given:
            client.close()
        if cluster is not None:
            cluster.close()


# ==== command line ===========================================================================================
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gru-xp sweep`."""
    parser.add_argument("--config", default=None, help="base TOML config (path or name in configs/; default "
                        "configs/default.toml)")
    parser.add_argument("--grid", required=True, help="grid TOML: a [grid] table of RunConfig key = [values]")
    parser.add_argument("--data", default=None, help="CSV glob (quote it): one task per file per grid point")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a LocalCluster here)")
    parser.add_argument("--workers", default=None, metavar="N",
                        help="LocalCluster worker processes (default min(2, cores)); one GPU each on GPU machines")
    parser.add_argument("--threads-per-worker", dest="threads_per_worker", default=None, metavar="N",
                        help="BLAS threads per worker (default cores // workers; 1 with --scheduler; with --serial: "
                        "this process's own)")
    parser.add_argument("--serial", action="store_true", help="run the tasks one by one in this process (no Dask)")
    parser.add_argument("--device", default=None, help="override the config's device: cpu | cuda | auto "
                        "(auto: cuda on workers that see a GPU, one GPU per worker)")
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder (default runs/sweep-<grid name>); "
                        "re-running into it skips finished tasks")
    parser.add_argument("--save-runs", dest="save_runs", action="store_true",
                        help="also write each task's run folder to OUT/runs/<key> (on the worker's filesystem)")


def _positive(value, flag: str) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise UserError(f"{flag} must be a positive integer, got {value!r}")
    return n


def run_cli(args) -> int:
    """`gru-xp sweep`: 0 all ok, 1 some task failed, UserError (exit 2 in cli.main) before anything ran."""
    workers = _positive(args.workers, "--workers")
    threads = _positive(args.threads_per_worker, "--threads-per-worker")
    if args.scheduler and workers:
        raise UserError("--workers sizes a LocalCluster; with --scheduler the cluster's own workers are used "
                        "(drop --workers)")
    if args.serial and args.scheduler:
        raise UserError("--serial and --scheduler exclude each other; pass one")
    cfg_file = args.config if args.config is not None else "default"
    resolve_config_path(cfg_file)
    name, grid = read_grid(args.grid)
    overrides = {"device": args.device} if args.device else {}
    tasks = build_tasks(cfg_file, grid, args.data, overrides)
    check_runner(args.serial, threads)
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{name}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    print(f"sweep {name}: {len(tasks)} task(s) ({len(expand(grid))} grid point(s)"
          + (f" x {len(expand_data(args.data))} series" if args.data else "") + f") -> {out}", file=sys.stderr)
    r = sweep(tasks, out, scheduler=args.scheduler, workers=workers, threads=threads, serial=args.serial,
              save_runs=args.save_runs, log=lambda s: print(s, file=sys.stderr))
    print(summary_table(r.rows))
    print(f"{r.ok} ok, {r.failed} failed, {r.skipped} skipped (already done) in {r.seconds:.1f}s; "
          f"results: {out / 'results.csv'} and {out / 'results.json'}")
    return 1 if any(row["status"] != "ok" for row in r.rows) else 0


def main(argv=None) -> int:  # `python -m gru_xp.sweep ...`, the same as `gru-xp sweep`
    p = argparse.ArgumentParser(prog="gru-xp sweep", description="hyperparameter sweeps / many series on Dask")
    add_arguments(p)
    try:
        return run_cli(p.parse_args(argv))
    except UserError as e:
        print(f"gru-xp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
