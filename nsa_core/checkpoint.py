"""Checkpoints: the one atomic save every writer uses, the random state a resumed run needs,
and loading with checks.

A resumed run is the same run: a checkpoint holds the model, the optimiser, every random
generator and the position in the epoch, so on the CPU the weights end bit-identical to an
uninterrupted run's (same machine, same thread count).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"
MODEL_FILES = ("model.pt", "history.csv", "curve.csv", "spec.json")


class CheckpointError(RuntimeError):
    pass


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:   # a failed save (disk full, unpicklable, a signal) leaves no temp file
        tmp.unlink(missing_ok=True)
        # torch's writer reports a failed write (a full disk) as "[enforce fail at
        # inline_container.cc] unexpected pos": the OSError it was handling says what happened
        if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
            raise OSError(e.__context__.errno, e.__context__.strerror, str(path)) from None
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writers that were killed before their rename."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def rotate(folder: Path, state: dict) -> None:
    """Write `state` as checkpoint.pt, keeping the one before as checkpoint.prev.pt. Written
    first under its final name's temporary, so a crash at any point leaves at least one
    whole checkpoint; the rename of an absent file (another writer got there) is no error."""
    cur, prev = folder / "checkpoint.pt", folder / "checkpoint.prev.pt"
    with suppress(FileNotFoundError):
        os.replace(cur, prev)
    atomic_save(state, cur)


def load_checkpoint(path: Path, spec: Any) -> dict:
    """A checkpoint's state, or CheckpointError naming the file and what is wrong with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or corrupt files fail in many ways inside torch.load
        raise CheckpointError(f"checkpoint {path} could not be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(state, dict) or "spec" not in state:
        raise CheckpointError(f"checkpoint {path} is not an nsa_core checkpoint")
    if state["spec"] != spec.to_json():
        raise CheckpointError(f"checkpoint {path} was written for another spec")
    if bad := [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise CheckpointError(f"checkpoint {path} holds non-finite values in {bad[0]}")
    return state


def rng_state(gens: dict[str, torch.Generator]) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{k: g.get_state() for k, g in gens.items()}}


def set_rng_state(state: dict, gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in gens.items():
        g.set_state(state[k])


# ------------------------------------------------------------ finished models

def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, spec: Any, data_identity: str) -> None:
    """The last write of a finished model: what it is, what it was trained on, and the
    checksum of each of its files."""
    record = {"spec": spec.to_json(), "data": data_identity,
              "files": {name: _sha256(folder / name) for name in MODEL_FILES}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(folder / MANIFEST)


def damage(folder: Path, spec: Any, data_identity: str) -> str | None:
    """What is wrong with the finished model in `folder`, in a few words naming the file, or
    None when its manifest, checksums and spec all agree."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{folder / MANIFEST} cannot be read"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return f"{folder / MANIFEST} is not a manifest (no table of files)"
    if record.get("spec") != spec.to_json():
        return f"{folder / MANIFEST} names another spec"
    if record.get("data") != data_identity:
        return f"{folder / MANIFEST}: trained on other data"
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if files.get(name) != _sha256(path):
            return f"{path} does not match its checksum (changed or damaged)"
    return None


