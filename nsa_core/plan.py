"""The plan: which trained models each notebook needs, at a profile, and where each stands in
the model cache (trained, partial at some epoch, missing).

`NOTEBOOK_MODELS` is the one declaration. It builds specs the way the notebooks do: through
`Experiment.spec` (the profile, the seed, the overrides) and, for the Sec. 5 notebooks,
through `explore.method_specs`, the very function their `ensemble_models` and
`table2_probs` call. What a notebook really asked for is recorded in its claims.json
("models"), and tests/test_plan.py compares the two after the smoke runs of the notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import data as D
from . import paths
from .config import ModelSpec
from .experiment import Experiment
from .profiles import Profile, get_profile


def _mode_collapse_space(p: Profile) -> int:
    # 03's parameter S defaults to the paper's 500, except at smoke, whose spaces are small
    return 500 if p.name != "smoke" else p.spaces_bn[0]


def _table2(exp: Experiment, datasets: tuple[str, ...], methods: tuple[str, ...] | None = None
            ) -> list[ModelSpec]:
    from . import explore   # imports the metrics (torchmetrics: seconds) only for the Sec. 5 notebooks
    return [s for ds in datasets for m in methods or explore.METHODS for s in explore.method_specs(exp, ds)[m]]


def _tour(e: Experiment, sets: dict[str, Any]) -> list[ModelSpec]:
    from .understand import synthetic_fallback
    settings = {**TOUR, **sets}   # as 00's setup cell: the tour's settings, the overrides winning
    prof = get_profile(e.profile.name, settings)
    # synthetic_fallback decodes the data to see whether they load; the plan must not decode
    # (`models` only reads), and a copy on disk is all it looks for
    fallback = None if D.on_disk(prof.train.dataset, "test", e.data_dir) else synthetic_fallback(prof, e.data_dir)
    prof = get_profile(e.profile.name, {**settings, **(fallback or {})})
    tour = Experiment(notebook=e.notebook, profile=prof, out=e.out, models_dir=e.models_dir,
                      data_dir=e.data_dir, device=e.device, seed=e.seed)
    return [tour.spec(k, space=TOUR_SPACE) for k in ("nsa", "nsa-i")]


def _nas_proxy(e: Experiment) -> list[ModelSpec]:
    from . import beyond
    specs = beyond.proxy_specs(e, beyond.PROXY_ARCHS.get(e.profile.name, 10))
    return [s for kind in ("single", *beyond.SHARED_KINDS) for s in specs[kind]]


TOUR = {"epochs": 1, "test_size": 500, "n_archs": 20}   # 00's TOUR and SPACE parameters
TOUR_SPACE = 500

# notebook stem -> the specs it asks the cache for (given its Experiment and the --set values)
NOTEBOOK_MODELS: dict[str, Callable[[Experiment, dict[str, Any]], list[ModelSpec]]] = {
    "00_tour": _tour,
    # 01 also asks for NSA-i: its test curve is the stable reference of the instability claim
    "01_bn_disparity": lambda e, _: [e.spec(k, space=S) for k in ("nsa", "nsa-i") for S in e.profile.spaces_bn],
    "02_instance_archs": lambda e, _: [e.spec(k, space=S) for k in ("nsa-i", "nsa") for S in e.profile.spaces_bn],
    "03_mode_collapse": lambda e, _: [e.spec(k, space=_mode_collapse_space(e.profile)) for k in ("nsa-i", "nsa-id-agg")],
    # 04's App. D reuses 01's NSA models at the spaces both notebooks have
    "04_unseen_archs": lambda e, _: [e.spec("nsa-i", space=S) for S in e.profile.spaces_unseen] +
    [e.spec("nsa", space=S) for S in e.profile.spaces_unseen if S in e.profile.spaces_bn],
    "05_ensemble": lambda e, _: _table2(e, e.profile.ensemble_datasets),
    "06_calibration": lambda e, _: _table2(e, e.profile.ensemble_datasets),
    "07_uncertainty": lambda e, _: _table2(e, (e.profile.train.dataset,), ("wrn-dropout", "nsa-id")),
    "08_semisupervised": lambda e, _: [e.spec("nsa-id", space=e.profile.space_ensemble, semi="consistency"),
                                       e.spec("wrn-dropout", semi="consistency"),
                                       e.spec("wrn", semi="labelled-only")],
    "09_nas_proxy": lambda e, _: _nas_proxy(e),
}

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
        return s.kind + (f" ({s.semi})" if s.semi else "") + (f" #{s.arch_index}" if s.kind == "single" else "")

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

    def describe(self) -> str:
        if self.state == PARTIAL:
            return f"partial ({self.epoch}/{self.spec.recipe.epochs} epochs)"
        return self.state


def notebook_stems(numbers: list[str] | None = None) -> list[str]:
    """The declared notebooks that notebooks/ holds, all or those numbered ('01', '1' or a
    full stem)."""
    present = {p.stem for p in (paths.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    declared = [stem for stem in NOTEBOOK_MODELS if stem in present]
    if not numbers:
        return declared
    return paths.pick_numbered(numbers, declared)


def asked_by(notebook: str, profile: str | None = None, seed: int = 0, sets: dict[str, Any] | None = None,
             data_dir=None) -> list[ModelSpec]:
    """The specs notebook `notebook` (its full stem) asks for at `profile`, `seed` and `sets`."""
    # a bare Experiment: setup() would create result folders, and the plan writes nothing
    exp = Experiment(notebook=notebook, profile=get_profile(profile, sets), out=Path("."), models_dir=Path("."),
                     data_dir=paths.data_dir(data_dir), device=torch.device("cpu"), seed=seed)
    return NOTEBOOK_MODELS[notebook](exp, dict(sets or {}))


def specs(profile: str | None = None, notebooks: list[str] | None = None, seed: int = 0,
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
        except FileNotFoundError:
            continue
        except Exception:   # a damaged checkpoint: the trainer will fall back as it does
            continue
    return None


def state_of(spec: ModelSpec, models_dir: Path | str | None = None, data_dir=None,
             users: tuple[str, ...] = ()) -> Item:
    """Where `spec` stands in the model cache, found by reading alone: no data are decoded or
    downloaded, nothing is written. A finished model gets the check every load makes
    (cache.status): one that fails it is DAMAGED."""
    from . import cache   # the cache imports the trainer: only when a state is asked

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
    if epoch is not None:
        return Item(spec, users, folder, PARTIAL, epoch, note)
    return Item(spec, users, folder, MISSING, note=note)


def build_plan(profile: str | None = None, notebooks: list[str] | None = None,
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
