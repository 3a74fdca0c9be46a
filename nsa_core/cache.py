"""The model cache: one folder per (spec, data) under the models folder. A notebook asks for
a spec; the cache loads the finished model, resumes an unfinished one, or trains a missing
one, so every notebook that needs the same model shares one training.

A folder is named by the spec's key and the identity of the data it was trained on, so a
model trained on one copy of a data set is never served for another. A model is finished
when its manifest.json exists: written last, it holds the spec, the data's identity and a
checksum of every file of the model. `status` is the one check of a finished model, made by
every load and every listing (`models`, `train-all`): manifest, checksums, spec and data,
then that model.pt holds the spec and only finite weights and that the history can be read.
A damaged model, or model files that lost their manifest, is named in one line and trained
again. An error that is not damage (a device that does not exist, a folder that cannot be
written) is the user's, in one line, and never starts a retrain.
"""
from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from . import data as D
from . import paths, runtime
from .checkpoint import MANIFEST, MODEL_FILES, damage
from .config import ModelSpec
from .kinds import build
from .network import WiredNet
from .train import StopSignals, train

TRAINED, DAMAGED, UNFINISHED = "trained", "damaged", "unfinished"


def folder_of(spec: ModelSpec, root: Path | str | None, data_identity: str) -> Path:
    """<models>/<spec key>-<data identity[:8]>."""
    return paths.models_dir(root) / f"{spec.key}-{data_identity[:8]}"


def model_dir(spec: ModelSpec, root: Path | str | None = None, data_dir=None, download: bool = True) -> Path:
    """The folder of `spec` trained on the data in `data_dir` (see `folder_of`). With
    download=False nothing is downloaded or decoded (DataMissing instead)."""
    r = spec.recipe
    return folder_of(spec, root, D.identity(r.dataset, data_dir, r.synthetic_size, download=download))


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
            tqdm.write(f"nsa: another process is training {folder.name}; waiting for it ({folder})", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Damaged(Exception):
    """A finished model that must not be served; the message names the file and the problem."""


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _finished(folder: Path, spec: ModelSpec, data_identity: str) -> tuple[WiredNet, pd.DataFrame] | None:
    """The finished model in `folder` (on the CPU) and its history; None when the folder holds
    no finished model (nothing, or a run to resume); Damaged otherwise."""
    if not (folder / MANIFEST).exists():
        # model files but neither a manifest nor a checkpoint: not a run to resume but a
        # finished model whose manifest went (a resumable run keeps its checkpoints until
        # the manifest is written)
        if any((folder / n).exists() for n in ("model.pt", "history.csv")) and \
                not any((folder / n).exists() for n in ("checkpoint.pt", "checkpoint.prev.pt")):
            raise Damaged(f"{folder / MANIFEST} is missing")
        return None
    if (problem := damage(folder, spec, data_identity)) is not None:
        raise Damaged(problem)
    try:   # unpickling fails in many ways
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
        weights, classes = state["model"], state["classes"]
    except Exception as e:
        raise Damaged(f"{folder / 'model.pt'} cannot be read ({_first_line(e)})") from None
    if state.get("spec") != spec.to_json():
        raise Damaged(f"{folder / 'model.pt'} holds another spec")
    if bad := [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise Damaged(f"{folder / 'model.pt'} holds non-finite values in {bad[0]}")
    if not classes:
        raise Damaged(f"{folder / 'model.pt'} names no classes")
    try:
        hist = pd.read_csv(folder / "history.csv")
    except Exception as e:
        raise Damaged(f"{folder / 'history.csv'} cannot be read ({_first_line(e)})") from None
    if hist.empty or "test_acc" not in hist:
        raise Damaged(f"{folder / 'history.csv'} has no test accuracy")
    model = build(spec, len(classes))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise Damaged(f"{folder / 'model.pt'} does not fit the spec's network ({_first_line(e)})") from None
    return model, hist


def status(folder: Path, spec: ModelSpec, data_identity: str) -> tuple[str, str]:
    """(TRAINED, ""), (DAMAGED, what is wrong) or (UNFINISHED, "") for the model of `spec` in
    `folder`: the check every load makes, for the listings. Reads, never writes."""
    try:
        with torch.random.fork_rng(devices=[]):   # building the network draws initial weights
            return (TRAINED, "") if _finished(folder, spec, data_identity) is not None else (UNFINISHED, "")
    except Damaged as e:
        return DAMAGED, str(e)


@dataclass
class Obtained:
    model: WiredNet
    history: pd.DataFrame
    how: str    # "loaded" (finished before), "waited" (finished by another process this one waited for), "trained"
    folder: Path


def obtain(spec: ModelSpec, root: Path | str | None = None, data_dir=None, device=None, progress: bool = True,
           signals: StopSignals | None = None, settings: runtime.Settings = runtime.Settings()) -> Obtained:
    """Load a finished model, resume an unfinished one, or train a missing one, and say which.
    `signals`: how the trainer answers signals (train.StopSignals; default SIGINT and SIGTERM
    stop it); `settings`: how this machine runs the network (runtime.Settings)."""
    dev = runtime.device(device)   # a device that does not exist is the user's error, never a retrain
    identity = D.identity(spec.recipe.dataset, data_dir, spec.recipe.synthetic_size)
    folder = folder_of(spec, root, identity)
    with model_lock(folder) as waited:
        try:
            found = _finished(folder, spec, identity)
        except Damaged as e:
            tqdm.write(f"nsa: cached model {folder.name} is damaged: {e}; training it again", file=sys.stderr)
            for name in (MANIFEST, *MODEL_FILES):
                (folder / name).unlink(missing_ok=True)
            found = None
        if found is not None:
            model, hist = found
            model.use_fast(settings.fast_stage(dev))
            return Obtained(model.to(dev).eval(), hist, "waited" if waited else "loaded", folder)
        model, hist = train(spec, folder, data_dir, device, progress, signals=signals, settings=settings)
        return Obtained(model, hist, "trained", folder)


def get_or_train(spec: ModelSpec, root: Path | str | None = None, data_dir=None, device=None, progress: bool = True,
                 settings: runtime.Settings = runtime.Settings()) -> tuple[WiredNet, pd.DataFrame]:
    """Load a finished model, resume an unfinished one, or train a missing one."""
    got = obtain(spec, root, data_dir, device, progress, settings=settings)
    return got.model, got.history
