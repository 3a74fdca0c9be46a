"""The plan: which trained models each notebook uses, at a profile, and where each stands in
the model cache (trained, partial at some epoch, missing, damaged).

Each model is declared once, here: the notebooks' helpers ask these functions for their specs
(a profile and a seed in, specs out), and `models` / `train-all` list and train the same
specs. What a notebook really asked the cache for is recorded in its claims.json ("models"),
and tests/test_notebooks.py compares the two after the smoke run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import data as D
from . import paths
from .config import ModelSpec
from .kinds import KINDS
from .profiles import Profile, get_profile

# Table 2's methods, one list of specs each ("single": the individuals, one per architecture)
METHODS = ("wrn", "wrn-dropout", "single", "nsa-id")


def disparity(p: Profile, seed: int = 0) -> dict[tuple[str, int], ModelSpec]:
    """01, 02: NSA and NSA-i at every S of spaces_bn, (kind, S) -> spec."""
    return {(k, S): p.spec(k, space=S, seed=seed) for k in ("nsa", "nsa-i") for S in p.spaces_bn}


def collapse(p: Profile, seed: int = 0) -> dict[str, ModelSpec]:
    """03: NSA-i and NSA-id with per-architecture aggregation only, at space_collapse."""
    return {k: p.spec(k, space=p.space_collapse, seed=seed) for k in ("nsa-i", "nsa-id-agg")}


def unseen(p: Profile, seed: int = 0) -> dict[tuple[str, int], ModelSpec]:
    """04: NSA-i at every S of spaces_unseen; App. D's NSA (01's models) at the S both have."""
    return {**{("nsa-i", S): p.spec("nsa-i", space=S, seed=seed) for S in p.spaces_unseen},
            **{("nsa", S): p.spec("nsa", space=S, seed=seed) for S in p.spaces_unseen if S in p.spaces_bn}}


def table2(p: Profile, dataset: str, seed: int = 0) -> dict[str, list[ModelSpec]]:
    """05-07: the specs behind each Table 2 method on `dataset` (several for "single")."""
    S = p.space_ensemble
    spec = lambda kind, **v: p.spec(kind, "explore", seed=seed, dataset=dataset, **v)
    return {"wrn": [spec("wrn")], "wrn-dropout": [spec("wrn-dropout")],
            "single": [spec("single", space=S, arch_index=k) for k in range(S)],
            "nsa-id": [spec("nsa-id", space=S)]}


def sanity(p: Profile, seed: int = 0) -> dict[str, ModelSpec]:
    """05's sanity section: NSA-i on one architecture and on the S of Table 2, that
    architecture trained alone (05's first individual) and WRN-28-10†, all with one recipe."""
    spec = lambda kind, **v: p.spec(kind, "explore", seed=seed, **v)
    return {"nsa-i S=1": spec("nsa-i", space=1), f"nsa-i S={p.space_ensemble}": spec("nsa-i", space=p.space_ensemble),
            "single": spec("single", space=p.space_ensemble, arch_index=0), "wrn": spec("wrn")}


def semisupervised(p: Profile, seed: int = 0) -> dict[str, ModelSpec]:
    """08: NSA-id + consistency, the Pi model, the labelled-only baseline."""
    return {"nsa-id": p.spec("nsa-id", space=p.space_ensemble, semi="consistency", seed=seed),
            "pi": p.spec("wrn-dropout", semi="consistency", seed=seed),
            "labelled-only": p.spec("wrn", semi="labelled-only", seed=seed)}


def proxy(p: Profile, seed: int = 0) -> dict[str, list[ModelSpec]]:
    """09: architectures 0..M-1 of one training space each trained alone ("single"; the first
    space_ensemble of them are 05's individuals, whose spec names that space) and the shared
    weights of NSA-i and NSA-id on the space of the first M. Spaces of one seed share their
    first architectures, so architecture k is one wiring in every spec."""
    m, s05 = p.proxy_archs, p.space_ensemble
    return {"single": [p.spec("single", "explore", space=s05 if k < s05 else m, arch_index=k, seed=seed)
                       for k in range(m)],
            **{kind: [p.spec(kind, "explore", space=m, seed=seed)] for kind in ("nsa-i", "nsa-id")}}


def tour(p: Profile, seed: int = 0, data_dir=None) -> dict[str, ModelSpec]:
    """00: NSA and NSA-i at the first S of spaces_bn, 01's models. Where the profile's data
    set is not on disk here, the tour runs on the synthetic set instead, with the shorter
    explore recipe (as many synthetic images as it trains on), so that a class can start it
    anywhere in minutes."""
    if p.understand.dataset != "synthetic" and not D.on_disk(p.understand.dataset, "test", data_dir):
        r = p.explore
        p = replace(p, understand=replace(r, dataset="synthetic", train_size=None,
                                          synthetic_size=r.train_size or r.synthetic_size))
    return {k: p.spec(k, space=p.spaces_bn[0], seed=seed) for k in ("nsa", "nsa-i")}


def _flat(d) -> list[ModelSpec]:
    """The specs of a declaration, each once (05's sanity section shares models with Table 2)."""
    return list(dict.fromkeys(s for v in d.values() for s in (v if isinstance(v, list) else [v])))


# notebook stem -> the specs it asks the cache for, given the profile, seed and data folder
NOTEBOOK_MODELS: dict[str, Callable[[Profile, int, Any], list[ModelSpec]]] = {
    "00_tour": lambda p, seed, data: _flat(tour(p, seed, data)),
    "01_bn_disparity": lambda p, seed, _: _flat(disparity(p, seed)),
    "02_instance_archs": lambda p, seed, _: _flat(disparity(p, seed)),
    "03_mode_collapse": lambda p, seed, _: _flat(collapse(p, seed)),
    "04_unseen_archs": lambda p, seed, _: _flat(unseen(p, seed)),
    "05_ensemble": lambda p, seed, _: _flat({**{ds: _flat(table2(p, ds, seed)) for ds in p.ensemble_datasets},
                                             **sanity(p, seed)}),
    "06_calibration": lambda p, seed, _: [s for ds in p.ensemble_datasets for s in _flat(table2(p, ds, seed))],
    "07_uncertainty": lambda p, seed, _: [s for m in ("wrn-dropout", "nsa-id")
                                          for s in table2(p, p.explore.dataset, seed)[m]],
    "08_semisupervised": lambda p, seed, _: _flat(semisupervised(p, seed)),
    "09_nas_proxy": lambda p, seed, _: _flat(proxy(p, seed)),
}

# the training images of CIFAR-10 and CIFAR-100, for the work estimate of a model without a subset
FULL_TRAIN_SIZE = 50000

TRAINED, PARTIAL, MISSING, DAMAGED, NO_DATA = "trained", "partial", "missing", "damaged", "no data"


@dataclass(frozen=True)
class Item:
    """One model of the plan: its spec, the notebooks that need it, its folder and state."""
    spec: ModelSpec
    notebooks: tuple[str, ...]
    folder: Path | None          # None when its data set cannot be had
    state: str                   # TRAINED, PARTIAL, MISSING, DAMAGED or NO_DATA
    epoch: int = 0               # PARTIAL: epochs finished
    note: str = ""               # NO_DATA, DAMAGED: why; otherwise a failure left by an earlier try

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def needs_training(self) -> bool:
        return self.state in (PARTIAL, MISSING, DAMAGED)

    @property
    def label(self) -> str:
        """kind, the semi-supervised mode and the individual's index: 'single #3', 'wrn (labelled-only)'."""
        s = self.spec
        return s.kind + (f" ({s.semi})" if s.semi else "") + (f" #{s.arch_index}" if KINDS[s.kind].wiring == "one" else "")

    @property
    def name(self) -> str:
        """What tells this model from the others of a plan, for progress lines: the label, S
        and the key ('wrn (labelled-only) S=1 wrn-3f2a...')."""
        return f"{self.label} S={self.spec.space} {self.key}"

    def final(self) -> dict[str, float] | None:
        """A trained model's last evaluation (history.csv): epochs, test accuracy (BN in test
        mode, architectures drawn as the model was trained) and training seconds."""
        if self.state != TRAINED:
            return None
        import pandas as pd
        h = pd.read_csv(self.folder / "history.csv")
        return {"epochs": int(h.epoch.iloc[-1]), "test_acc": float(h.test_acc.iloc[-1]),
                "seconds": float(h.seconds.sum())}

    @property
    def work(self) -> float:
        """Images its training still has to process, in units of one supervised image (a
        semi-supervised step trains on a labelled and an unlabelled batch and runs one more
        forward without gradients over both, about 2.7x; a per-architecture aggregation or BN
        costs about 1.25x, measured by `make bench`): train-all starts the longest first, so
        that its workers finish together."""
        r = self.spec.recipe
        size = r.synthetic_size if r.dataset == "synthetic" else FULL_TRAIN_SIZE
        images = (r.unlabelled or size - r.labelled) if self.spec.semi else (r.train_size or size)
        kind = KINDS[self.spec.kind]
        per_image = (2.7 if self.spec.semi else 1) * (1.25 if kind.cond_agg and not kind.fixed else 1)
        return (r.epochs - self.epoch) * images * per_image

    def describe(self) -> str:
        return f"partial ({self.epoch}/{self.spec.recipe.epochs} epochs)" if self.state == PARTIAL else self.state


def notebook_stems(numbers: list[str] | None = None) -> list[str]:
    """The declared notebooks that notebooks/ holds, all or those numbered ('01', '1' or a
    full stem)."""
    present = {p.stem for p in (paths.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    declared = [stem for stem in NOTEBOOK_MODELS if stem in present]
    return paths.pick_numbered(numbers, declared) if numbers else declared


def asked_by(notebook: str, profile: str = "tiny", seed: int = 0, sets: dict[str, Any] | None = None,
             data_dir=None) -> list[ModelSpec]:
    """The specs notebook `notebook` (its full stem) asks for at `profile`, `seed` and `sets`."""
    return NOTEBOOK_MODELS[notebook](get_profile(profile, sets), seed, data_dir)


def specs(profile: str = "tiny", notebooks: list[str] | None = None, seed: int = 0,
          sets: dict[str, Any] | None = None, data_dir=None) -> dict[str, tuple[ModelSpec, tuple[str, ...]]]:
    """key -> (spec, the notebooks that need it), in the order the notebooks first ask."""
    out: dict[str, tuple[ModelSpec, tuple[str, ...]]] = {}
    for stem in notebook_stems(notebooks):
        for spec in asked_by(stem, profile, seed, sets, data_dir):
            known, users = out.get(spec.key, (spec, ()))
            if stem not in users:
                out[spec.key] = (known, users + (stem,))
    return out


def _checkpoint_epoch(folder: Path) -> int | None:
    """Epochs finished by the newest readable checkpoint of `folder`, None without one."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        try:   # mmap: only the small progress record is read, not the weights
            state = torch.load(folder / name, map_location="cpu", weights_only=False, mmap=True)
            return int(state["progress"]["epoch"])
        except Exception:   # missing, or damaged: the trainer will fall back as it does
            continue
    return None


def state_of(spec: ModelSpec, models_dir: Path | str | None = None, data_dir=None,
             users: tuple[str, ...] = ()) -> Item:
    """Where `spec` stands in the model cache, found by reading alone: no data are decoded or
    downloaded, nothing is written. A finished model gets the check every load makes
    (cache.status): one that fails it is DAMAGED."""
    from . import cache  # the cache imports the trainer: only when a state is asked

    r = spec.recipe
    try:
        identity = D.identity(r.dataset, data_dir, r.synthetic_size, download=False)
    except (D.DataMissing, D.DataError) as e:
        return Item(spec, users, None, NO_DATA, note=str(e).splitlines()[0])
    folder = cache.folder_of(spec, models_dir, identity)
    state, problem = cache.status(folder, spec, identity)
    if state == cache.TRAINED:
        return Item(spec, users, folder, TRAINED)
    if state == cache.DAMAGED:
        return Item(spec, users, folder, DAMAGED, note=problem)
    failed = folder / "failed.txt"
    note = f"failed before: {failed.read_text().strip()}" if failed.is_file() else ""
    epoch = _checkpoint_epoch(folder)
    return Item(spec, users, folder, MISSING if epoch is None else PARTIAL, epoch or 0, note)


def build_plan(profile: str = "tiny", notebooks: list[str] | None = None,
               models_dir: Path | str | None = None, data_dir=None, seed: int = 0,
               sets: dict[str, Any] | None = None) -> list[Item]:
    """Every model the chosen notebooks of `profile` need, with its state in the cache."""
    root = paths.models_dir(models_dir)
    items: list[Item] = []
    absent: dict[str, str] = {}   # data set -> why it cannot be had: asked once, not per model
    for spec, users in specs(profile, notebooks, seed, sets, data_dir).values():
        if spec.recipe.dataset in absent:
            items.append(Item(spec, users, None, NO_DATA, note=absent[spec.recipe.dataset]))
            continue
        items.append(state_of(spec, root, data_dir, users))
        if items[-1].state == NO_DATA:
            absent[spec.recipe.dataset] = items[-1].note
    return items


def table(items: list[Item]) -> list[str]:
    """The plan as aligned text lines: kind, S, key, state, notebooks, folder."""
    rows = [("kind", "S", "key", "state", "notebooks", "folder")]
    for it in items:
        where = str(it.folder) if it.folder else it.note
        rows.append((it.label, str(it.spec.space), it.key, it.describe(),
                     " ".join(n[:2] for n in it.notebooks), where + (f" ({it.note})" if it.state == DAMAGED else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
