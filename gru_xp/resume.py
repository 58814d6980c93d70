"""Resume state of an interrupted run: what `fit` needs to continue bit-identically, as files and back.

    resume_files(st, cfg) -> (arrays, meta)   the contents of resume.npz (arrays + JSON metadata)
    load_resume(run_dir) -> (cfg, FitState)   read back; every problem is a one-line UserError
    resume_config(cfg, st, overrides, dir)    the saved config with the few settings a resume may change

resume.npz holds "param/NAME" (parameters after the last epoch), "best/NAME" (the best epoch's), "opt/NAME/PART"
(optimizer state), "hist/{train,val}_loss", and for an ensemble's members finished before the interrupted one
"done/J.NAME" and "donehist/J.{train,val}_loss"; its metadata the counters, both generators' states and the config.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checkpoint
from .config import RunConfig, from_dict
from .errors import UserError
from .train import FitState, History

RESUME_KIND = "gru-xp resume state"
RESUME_FLAGS = ("epochs", "patience", "device", "out", "quiet", "plots", "diagnostics")


def _losses(h: History) -> dict:
    return {"train_loss": np.asarray(h.train_loss, dtype=np.float64),
            "val_loss": np.asarray(h.val_loss, dtype=np.float64)}


def resume_files(st: FitState, cfg: RunConfig) -> tuple[dict, dict]:
    """(arrays, metadata) of resume.npz for an interrupted fit (see the module docstring)."""
    arrays = {**{f"param/{k}": v for k, v in st.params.items()},
              **{f"best/{k}": v for k, v in (st.best_params or {}).items()},
              **{f"opt/{k}": v for k, v in st.optimizer["arrays"].items()},
              **{f"hist/{k}": v for k, v in _losses(st.history).items()}}
    for j, (p, dh) in enumerate(st.done):
        arrays.update({f"done/{j}.{k}": v for k, v in p.items()})
        arrays.update({f"donehist/{j}.{k}": v for k, v in _losses(dh).items()})
    meta = {"kind": RESUME_KIND, "epoch": st.epoch, "bad_epochs": st.bad_epochs, **st.history.summary(),
            "has_best": st.best_params is not None,
            "optimizer": {"kind": st.optimizer["kind"], "t": st.optimizer["t"]},
            "rng": {"shuffle": st.shuffle_rng, "dropout": st.dropout_rng}, "data_sha256": st.data_sha256,
            "config": cfg.to_dict(), "member": st.member, "diverged_message": st.diverged_message,
            "done": [dh.summary() for _, dh in st.done]}
    return arrays, meta


def _check_folder(d: Path) -> None:
    if not d.is_dir():
        raise UserError(f"--resume {d}: folder not found; pass the folder named in the 'interrupted' message")
    if not (d / "resume.npz").is_file():
        if checkpoint.is_run_folder(d):
            raise UserError(f"--resume {d}: this run has no resume state (it finished or was not interrupted); "
                            f"start a new run with 'gru-xp train'")
        raise UserError(f"--resume {d}: not an interrupted gru-xp run (no resume.npz); pass the folder named in the "
                        f"'interrupted' message")


def _member(group: dict, j: int) -> dict:
    """Entries "J.NAME" of a group, for member j, as {NAME: array}."""
    return {k.partition(".")[2]: a for k, a in group.items() if k.partition(".")[0] == str(j)}


def _fit_state(arrays: dict, m: dict) -> FitState:
    groups: dict = {"param": {}, "best": {}, "opt": {}, "hist": {}, "done": {}, "donehist": {}}
    for key, a in arrays.items():
        g, _, name = key.partition("/")
        groups[g][name] = a
    hist = History.from_summary(m, groups["hist"]["train_loss"], groups["hist"]["val_loss"])
    epoch = int(m["epoch"])
    if epoch < 1 or len(hist.train_loss) != epoch or len(hist.val_loss) != epoch or not groups["param"]:
        raise ValueError("history length does not match the epoch")
    done = []  # an ensemble's members finished before the interrupted one (older files: none)
    for j, h in enumerate(m.get("done", [])):
        p, losses = _member(groups["done"], j), _member(groups["donehist"], j)
        if not p:
            raise ValueError(f"finished member {j} has no parameters")
        done.append((p, History.from_summary(h, losses["train_loss"], losses["val_loss"])))
    return FitState(epoch, groups["param"], groups["best"] if m["has_best"] else None, hist, int(m["bad_epochs"]),
                    {"kind": m["optimizer"]["kind"], "t": int(m["optimizer"]["t"]), "arrays": groups["opt"]},
                    m["rng"]["shuffle"], m["rng"]["dropout"], str(m.get("data_sha256", "")), int(m.get("member", 0)),
                    done, str(m.get("diverged_message", "")))


def load_resume(run_dir) -> tuple[RunConfig, FitState]:
    """(config, FitState) of an interrupted run folder; every problem is a one-line UserError."""
    d = Path(run_dir)
    _check_folder(d)
    arrays, m = checkpoint.load(d / "resume.npz", require=("kind", "config", "epoch", "optimizer", "rng"))
    if m.get("kind") != RESUME_KIND:
        raise UserError(f"--resume {d}: resume.npz is not a gru-xp resume state; start a new run")
    try:
        return from_dict(m["config"]), _fit_state(arrays, m)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"--resume {d}: the resume state is corrupt ({type(e).__name__}: {e}); start a new run") \
            from None


def resume_config(cfg: RunConfig, st: FitState, overrides: dict | None, run_dir) -> RunConfig:
    """The saved config with the overrides a resume allows (RESUME_FLAGS), written back to run_dir by default."""
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = [k for k in ov if k not in RESUME_FLAGS]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise UserError(f"{flags} cannot be changed when resuming (the run's settings are saved in "
                        f"{Path(run_dir) / 'resume.json'}); allowed with --resume: "
                        f"{', '.join('--' + k.replace('_', '-') for k in RESUME_FLAGS)}; or start a new run")
    changed = [k for k in ("epochs", "patience") if k in ov and ov[k] != getattr(cfg, k)]
    if st.member > 0 and changed:
        flags = " and ".join("--" + k for k in changed)
        raise UserError(f"{flags} cannot change when resuming this ensemble: members 1 to {st.member} already "
                        f"finished with the saved settings; resume without {flags}, or start a new run")
    cfg = from_dict({**cfg.to_dict(), **ov, "out": str(ov.get("out") or run_dir)})
    if cfg.epochs <= st.epoch:
        raise UserError(f"--epochs {cfg.epochs} is not more than the {st.epoch} epochs already run; "
                        f"pass a larger --epochs to resume")
    return cfg
