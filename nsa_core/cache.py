"""The model cache: one folder per spec (named by its key) under the models folder. A
notebook asks for a spec; the cache loads the finished model, resumes an unfinished one, or
trains a missing one, so every notebook that needs the same model shares one training.
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

from . import paths, runtime
from .config import ModelSpec
from .models import build
from .network import WiredNet
from .train import train


def model_dir(spec: ModelSpec, root: Path | str | None = None) -> Path:
    return paths.models_dir(root) / spec.key


@contextmanager
def model_lock(folder: Path) -> Iterator[bool]:
    """Hold the lock of one model folder: two processes that need the same model never
    train it at once; the second waits (and says so), then finds the model finished. An OS
    file lock (flock), so a lock of a killed process dies with it. Yields whether it waited."""
    locks = paths.writable_folder(folder.parent / ".locks", "models folder")
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
    folder = Path(folder)
    dev = runtime.device(device)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    spec = ModelSpec.from_json(state["spec"])
    model = build(spec, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), pd.read_csv(folder / "history.csv"), spec


def get_or_train(spec: ModelSpec, root: Path | str | None = None, data_dir=None, device=None,
                 progress: bool = True) -> tuple[WiredNet, pd.DataFrame]:
    """Load a finished model, resume an unfinished one, or train a missing one."""
    runtime.device(device)   # a device that does not exist is the user's error, never a retrain
    folder = model_dir(spec, root)
    with model_lock(folder):
        if (folder / "model.pt").exists():
            try:
                model, hist, _ = load_trained(folder, device)
                return model, hist
            except Exception as e:  # a damaged final file: say so and train again
                tqdm.write(f"nsa: could not load {folder / 'model.pt'} ({type(e).__name__}); training again",
                           file=sys.stderr)
        return train(spec, folder, data_dir, device, progress)
