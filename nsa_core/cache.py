"""The model cache: one folder per (spec, data) under the models folder. A notebook asks for
a spec; the cache loads the finished model, resumes an unfinished one, or trains a missing
one, so every notebook that needs the same model shares one training.

A folder is named by the spec's key and the identity of the data it was trained on, so a
model trained on one copy of a data set is never served for another. A model is finished
when its manifest.json exists: written last, it holds the spec, the data's identity and a
checksum of every file of the model, and every load checks them all, and that every weight
is finite. A damaged model is named in one line and trained again; an error that is not
damage (a device that does not exist, a folder that cannot be written) is the user's, in one
line, and never starts a retrain.
"""
from __future__ import annotations

import fcntl
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tqdm import tqdm

from . import data as D
from . import paths, runtime
from .checkpoint import MANIFEST, MODEL_FILES, damage
from .config import ModelSpec
from .models import build
from .network import WiredNet
from .train import train

def model_dir(spec: ModelSpec, root: Path | str | None = None, data_dir=None) -> Path:
    """<models>/<spec key>-<data identity>."""
    r = spec.recipe
    return paths.models_dir(root) / f"{spec.key}-{D.identity(r.dataset, data_dir, r.synthetic_size)[:8]}"


@contextmanager
def model_lock(folder: Path) -> Iterator[bool]:
    """Hold the lock of one model folder: two processes that need the same model never
    train it at once; the second waits (and says so), then finds the model finished. An OS
    file lock (flock), so a lock of a killed process dies with it. Yields whether it waited."""
    locks = paths.writable_folder(paths.writable_folder(folder.parent, "models folder") / ".locks", "models folder")
    with open(locks / f"{folder.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            tqdm.write(f"nsa: another process is training {folder.name}; waiting for it ({folder})",
                       file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_trained(folder: Path, device=None) -> tuple[WiredNet, pd.DataFrame, ModelSpec]:
    """The model of a finished folder (its own spec), checked for non-finite weights."""
    folder = Path(folder)
    dev = runtime.device(device)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    spec = ModelSpec.from_json(state["spec"])
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{folder / 'model.pt'} holds non-finite values in {bad[0]}")
    model = build(spec, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), pd.read_csv(folder / "history.csv"), spec


def _discard(folder: Path, problem: str) -> None:
    tqdm.write(f"nsa: cached model {folder.name} is damaged: {problem}; training it again", file=sys.stderr)
    for name in (MANIFEST, *MODEL_FILES):
        (folder / name).unlink(missing_ok=True)


def get_or_train(spec: ModelSpec, root: Path | str | None = None, data_dir=None, device=None,
                 progress: bool = True) -> tuple[WiredNet, pd.DataFrame]:
    """Load a finished model, resume an unfinished one, or train a missing one."""
    runtime.device(device)   # a device that does not exist is the user's error, never a retrain
    r = spec.recipe
    identity = D.identity(r.dataset, data_dir, r.synthetic_size)
    folder = model_dir(spec, root, data_dir)
    with model_lock(folder):
        if (folder / MANIFEST).exists():
            problem = damage(folder, spec, identity)
            if problem is None:
                try:
                    model, hist, _ = load_trained(folder, device)
                    return model, hist
                except (ValueError, RuntimeError, KeyError, OSError) as e:   # unpickling fails in many ways
                    problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            _discard(folder, problem)
        return train(spec, folder, data_dir, device, progress)
