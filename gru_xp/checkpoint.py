"""Checkpoints: parameters (host NumPy arrays) + JSON metadata in one .npz, written atomically.

Layout of model.npz: one array per parameter (the model's flat names, e.g. "rnn.weight_ih_l0", "head.weight") and
"__meta__", a 0-d unicode array holding JSON: {"format_version", "gru_xp_version", "model": {Forecaster kwargs},
"pipeline": {...}, "config": {...}, "data": {...}, "arrays": {name: [shape, dtype]}}. An ensemble of N > 1 models
(format version 2, meta["model"]["ensemble"] = N) stores member i's parameters as "m{i}.NAME"; a single model keeps
the plain names, so version 1 files (always one model) load unchanged. Loading never unpickles
anything, and checks every array against that manifest (and the zip CRCs): a damaged file is a UserError, never a
model with wrong numbers.

Atomicity: a file is written under a temporary name in the target's folder (".NAME.XXXX.tmp"), flushed to disk, then
renamed onto its name; a run folder is built as ".NAME.tmp-XXXX" and swapped in with one atomic exchange
(renameat2(RENAME_EXCHANGE) on Linux). A process killed at any moment leaves either the old file/folder or the
complete new one under the final name, never a half-written one (at worst a stale dot-named temporary beside it,
which the next successful write of the same name removes once it is over STALE_SECONDS old: a younger one may
belong to a writer still at work).
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .backend import to_host
from .errors import UserError

FORMAT_VERSION = 2  # 1: one model; 2 adds ensembles (meta["model"]["ensemble"] = N > 1: arrays "m{i}.NAME") and
#                    calendar inputs (meta["pipeline"]["calendar"]); version 1 files are read as before
META_KEY = "__meta__"
STALE_SECONDS = 3600  # a temporary this much older than now is left over from a killed writer


def _remove_stale(folder: Path, prefix: str, suffix: str = "") -> None:
    """Best effort: delete `prefix*suffix` temporaries (files or folders) in `folder` older than STALE_SECONDS."""
    cutoff = time.time() - STALE_SECONDS
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if not (e.name.startswith(prefix) and e.name.endswith(suffix)):
            continue
        try:
            if e.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
        except OSError:
            pass


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path in the target's directory; on success os.replace it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        _fsync(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _remove_stale(path.parent, f".{path.name}.", ".tmp")


def _fsync(path) -> None:
    """Flush a file's (or a folder's) contents to disk; best effort (some filesystems refuse it on folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save(path, params: dict, meta: dict) -> None:
    """params: {name: array of any namespace}; meta: JSON-able dict."""
    from . import __version__

    arrays = {k: np.asarray(to_host(v)) for k, v in params.items()}
    if META_KEY in arrays:
        raise ValueError(f"parameter name {META_KEY!r} is reserved")
    full = {"format_version": FORMAT_VERSION, "gru_xp_version": __version__, **meta,
            "arrays": {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()}}
    arrays[META_KEY] = np.array(json.dumps(full, allow_nan=False))
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path, require=("model", "pipeline", "config")) -> tuple[dict, dict]:
    """-> (params as NumPy arrays, meta). Missing, truncated, corrupt or too-new files are UserErrors."""
    from . import __version__

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass --run a folder written by 'gru-xp train'")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except MemoryError:
        raise UserError(f"checkpoint {path} is corrupt (it claims arrays too large to load); "
                        f"retrain with 'gru-xp train'") from None
    except Exception as e:  # noqa: BLE001 - zipfile/zlib/struct/numpy each raise their own type on damaged files
        raise UserError(f"checkpoint {path} is corrupt, truncated or not a gru-xp checkpoint ({type(e).__name__}); "
                        f"retrain with 'gru-xp train'") from None
    if META_KEY not in arrays:
        raise UserError(f"checkpoint {path} has no metadata; it was not written by gru-xp, retrain with 'gru-xp train'")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
        version = int(meta["format_version"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"checkpoint {path} has corrupt metadata; retrain with 'gru-xp train'") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} has corrupt metadata; retrain with 'gru-xp train'")
    if version > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this gru-xp {__version__} "
                        f"reads (up to {FORMAT_VERSION}); upgrade gru-xp (it was written by gru-xp "
                        f"{meta.get('gru_xp_version', '?')})")
    manifest = meta.get("arrays")
    if manifest is not None:  # written since the manifest exists: every array must be there, as described
        try:
            want = {str(k): (tuple(int(n) for n in v[0]), np.dtype(v[1])) for k, v in manifest.items()}
        except (TypeError, ValueError, IndexError, AttributeError):
            raise UserError(f"checkpoint {path} has corrupt metadata; retrain with 'gru-xp train'") from None
        want.pop(META_KEY, None)
        got = {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}
        if got != want:
            bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise UserError(f"checkpoint {path} is corrupt: arrays {bad[:4]} do not match its manifest; "
                            f"retrain with 'gru-xp train'")
    for k in require:
        if k not in meta:
            raise UserError(f"checkpoint {path} metadata lacks {k!r}; retrain with 'gru-xp train'")
    return arrays, meta


# ---- run folders ----------------------------------------------------------------------------------------------
def is_run_folder(p: Path) -> bool:
    return p.is_dir() and (p / "model.npz").is_file()


def run_status(p: Path) -> str | None:
    """None (not a run folder), "ok" (a completed run), "interrupted" (holds a resume state) or "diverged"."""
    p = Path(p)
    if not is_run_folder(p):
        return None
    if (p / "resume.npz").exists():
        return "interrupted"
    try:
        with open(p / "config.json", encoding="utf-8") as f:
            status = json.load(f).get("run", {}).get("status", "ok")
    except (OSError, ValueError, AttributeError):
        return "ok"  # unreadable config: treat it as precious, never replace it with a failed run
    return status if status in ("ok", "diverged", "interrupted") else "ok"


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0


def check_out(final: str | Path) -> None:
    """`final` may become a run folder: it does not exist, is an empty folder, or is a gru-xp run folder; its
    parent can be created. Else a UserError naming the fix."""
    final = Path(final)
    try:
        final.exists()
    except (OSError, ValueError) as e:
        raise UserError(f"--out {str(final)!r} is not a usable path ({type(e).__name__}); choose another --out") \
            from None
    if final.exists():
        if not final.is_dir():
            raise UserError(f"--out {final} exists and is not a folder; choose another --out")
        if any(final.iterdir()) and not is_run_folder(final):
            raise UserError(f"--out {final} is a non-empty folder that is not a gru-xp run; choose another --out")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {final.parent}: {e.strerror}; choose another --out") from None


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` atomically: a new `final` is one
    rename; an existing run folder is swapped with the new one in one atomic exchange (Linux; elsewhere it is moved
    aside first, a short window without `final`) and deleted only after the new one is in place. On failure
    (exception, Ctrl-C) the temporary folder is removed and `final` is untouched; a SIGKILL leaves `final` untouched
    or complete and at most a stale ".NAME.tmp-*" folder beside it."""
    final = Path(final)
    check_out(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync(tmp)
        if final.exists() and _exchange(tmp, final):  # tmp now holds the old run folder
            _fsync(final.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_stale(final.parent, f".{final.name}.tmp-")
            return
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rmdir(old)
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        _fsync(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(final.parent, f".{final.name}.tmp-")  # never ".old-": it may be the only copy of a run


def run_kind(p: Path) -> str | None:
    """None (not a run folder), "classify" (written by gru-xp classify), "panel" (gru-xp train on many series) or
    "forecast" (gru-xp train on one series): config.json's "kind", absent in single-series forecasting folders."""
    p = Path(p)
    if not is_run_folder(p):
        return None
    try:
        with open(p / "config.json", encoding="utf-8") as f:
            kind = json.load(f).get("kind", "forecast")
    except (OSError, ValueError, AttributeError):
        return "forecast"
    return kind if kind in ("classify", "forecast", "panel") else "forecast"


# ==== where a job writes ======================================================================================
def default_out(cfg) -> Path:
    """runs/<name>-<timestamp>: where a job (train, classify, a panel) writes without --out."""
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def checked_out(cfg, save: bool) -> Path | None:
    """A job's run folder (--out or default_out), checked writable before hours of training, not after; None when
    nothing is saved."""
    out = (Path(cfg.out) if cfg.out else default_out(cfg)) if save else None
    if out is not None:
        check_out(out)
    return out


def failed_out(out: Path, status: str) -> Path:
    """Where a diverged or interrupted run is written: `out` itself unless it holds a completed run (a failed run
    never replaces a good run folder), else the sibling OUT-<status> (or OUT-<status>-<timestamp>)."""
    out = Path(out)
    cands = [out, out.with_name(f"{out.name}-{status}"),
             out.with_name(f"{out.name}-{status}-{time.strftime('%Y%m%d-%H%M%S')}")]
    for c in cands:
        if not c.exists() or (run_status(c) not in (None, "ok")) or (c.is_dir() and not any(c.iterdir())):
            return c
    return cands[-1]
