"""What every notebook shares: one `setup` call gives the profile, the output folder, cached
models, the evaluation subset, and a record of the claims the notebook tests.

    exp = setup("01_bn_disparity", profile=PROFILE, data_dir=DATA_DIR, results_dir=RESULTS_DIR)
    model, hist = exp.model("nsa", space=500)
    d = claims.mean_difference(correct_a, correct_b)          # paired over test images
    exp.claim("...", paper="...", reproduced=f"a - b = {d}", verdict=claims.verdict(d), rule="...")
    exp.finish()   # -> results/<profile>/<notebook>/claims.json, read by REPORT.md

Verdicts, kinds of claims and their thresholds live in claims.py.

Folders follow paths.py's one rule: relative paths resolve against the repository root, so
a notebook runs the same from notebooks/ (papermill, Jupyter) as from anywhere else.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from . import data as D
from . import paths, runtime
from .claims import (BEYOND, CLAIM_KINDS, FAILS, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, PAPER_CLAIM, SANITY, VERDICTS,
                     markdown_table, tally_sentence)
from .cache import get_or_train, model_dir
from .config import ModelSpec
from .network import WiredNet
from .profiles import Profile, at_paper_scale, get_profile

__all__ = ["Experiment", "setup", "CLAIM_FIELDS", "HOLDS", "FAILS", "INCONCLUSIVE", "NOT_COMPARABLE",
           "VERDICTS", "CLAIM_KINDS", "PAPER_CLAIM", "BEYOND", "SANITY"]
CLAIM_FIELDS = ("statement", "paper", "reproduced", "verdict", "rule", "kind")


def relative_text(text: str) -> str:
    """`text` with the repository's absolute path and the home folder taken out, so that what a
    run writes reads the same on every machine."""
    root = str(paths.repo_root())
    return text.replace(root + os.sep, "").replace(root, ".").replace(os.path.expanduser("~"), "~")


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _show(text: str) -> None:
    """Markdown in a notebook, a line on stderr elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    tqdm.write(text, file=sys.stderr)


@dataclass
class Experiment:
    notebook: str
    profile: Profile
    out: Path                # results/<profile>/<notebook>/
    models_dir: Path         # the model cache shared by every notebook
    data_dir: Path
    device: torch.device
    seed: int = 0
    claims: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)   # paths relative to results/<profile>/
    tables: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)    # keys of the specs this run asked for, in order
    knobs: dict[str, tuple[Any, Any]] = field(default_factory=dict)   # notebook knob -> (value, paper's)
    _tests: dict[tuple[str, int | None], D.Split] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- models and data
    def spec(self, kind: str, semi: str | None = None, **overrides: Any) -> ModelSpec:
        """The spec of a model of `kind` at this profile and seed; overrides win."""
        return self.profile.spec(kind, semi=semi, **{"seed": self.seed, **overrides})

    def model(self, kind: str, semi: str | None = None, **overrides: Any) -> tuple[WiredNet, pd.DataFrame]:
        """The trained model of `kind` (from the cache, or trained now) and its history."""
        return self.trained(self.spec(kind, semi=semi, **overrides))

    def trained(self, spec: ModelSpec) -> tuple[WiredNet, pd.DataFrame]:
        """The model of `spec`, from the cache or trained now, and its history."""
        first = spec.key not in self.models
        if first:
            self.models.append(spec.key)
        if not _in_notebook():
            return get_or_train(spec, self.models_dir, self.data_dir, self.device, progress=True)
        # A kernel's progress bar lands in the executed notebook as one output per redraw: a
        # notebook gets one line per model instead.
        t0 = time.time()
        model, hist = get_or_train(spec, self.models_dir, self.data_dir, self.device, progress=False)
        took = time.time() - t0
        what = f"trained in {took:.0f} s" if took > 5 else "from the model cache"
        if first or took > 5:
            print(f"{spec.kind} S={spec.space}{' ' + spec.semi if spec.semi else ''}: {what}")
        return model, hist

    def curve(self, kind: str, semi: str | None = None, **overrides: Any) -> pd.DataFrame:
        """The test curve of the model of `kind` (train.CURVE_COLUMNS: a test evaluation every
        recipe.eval_every steps and at every epoch's end), trained now if missing."""
        spec = self.spec(kind, semi=semi, **overrides)
        self.trained(spec)
        return pd.read_csv(model_dir(spec, self.models_dir, self.data_dir) / "curve.csv")   # train.CURVE

    # ------------------------------------------------------------------ knobs and scale
    def knob(self, name: str, value: Any, paper_value: Any) -> Any:
        """Record a notebook setting (and the paper's value of it): it goes to claims.json and
        into `paper_scale`. Returns `value`."""
        self.knobs[name] = (value, paper_value)
        return value

    @property
    def paper_scale(self) -> bool:
        """Whether the profile and every recorded knob are the paper's."""
        return at_paper_scale(self.profile, self.knobs)

    @property
    def shared_dir(self) -> Path:
        """results/<profile>/_shared: what several notebooks of one profile reuse."""
        folder = Path(self.out).parent / "_shared"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def test_set(self, dataset: str | None = None, n: int | None = None) -> D.Split:
        """The evaluation subset of `dataset` (default: the profile's), first `n` images of the
        fixed shuffled order (default: profile.test_size): the images training logged."""
        key = (dataset or self.profile.train.dataset, n or self.profile.train.test_size)
        if key not in self._tests:
            self._tests[key] = D.eval_subset(key[0], self.data_dir, key[1])
        return self._tests[key]

    # ---------------------------------------------------------------------- outputs
    def _record(self, path: Path) -> str:
        return path.relative_to(self.out.parent).as_posix()

    def save_figure(self, fig, name: str) -> Path:
        """`name`.png (dpi 150) and `name`.svg under exp.out; the figure stays open."""
        png = self.out / f"{name}.png"
        fig.savefig(png, dpi=150, bbox_inches="tight")
        fig.savefig(self.out / f"{name}.svg", bbox_inches="tight")
        rel = self._record(png)
        if rel not in self.figures:
            self.figures.append(rel)
        return png

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        path = self.out / f"{name}.csv"
        df.to_csv(path, index=False)
        rel = self._record(path)
        if rel not in self.tables:
            self.tables.append(rel)
        return path

    # ----------------------------------------------------------------------- claims
    @staticmethod
    def verdict(holds: bool, comparable: bool = True) -> str:
        """The verdict of an exact check (no sampling noise: a parameter count, a sanity
        check). A reproduced number with noise takes claims.verdict on its interval."""
        if not comparable:
            return NOT_COMPARABLE
        return HOLDS if holds else FAILS

    def claim(self, statement: str, paper: str, reproduced: str, verdict: str, rule: str,
              kind: str = PAPER_CLAIM) -> None:
        """Record one tested statement: what the paper reports, what this run measured (with
        its interval), the rule that turned the measurement into the verdict, and its kind
        (a paper claim, beyond the paper, or a sanity check)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS} (use claims.verdict(...)), got {verdict!r}")
        if kind not in CLAIM_KINDS:
            raise ValueError(f"kind must be one of {CLAIM_KINDS}, got {kind!r}")
        values = (statement, paper, reproduced, verdict, rule, kind)
        self.claims.append(dict(zip(CLAIM_FIELDS, (relative_text(str(v)) for v in values))))

    def note(self, text: str) -> None:
        """Something the reader must know about this run (a data set that was missing, a
        deviation forced by the profile); it goes to claims.json and REPORT.md."""
        text = relative_text(text)
        self.notes.append(text)
        _show(f"**Note:** {text}")

    def finish(self) -> pd.DataFrame:
        """Write <out>/claims.json, show the claims as a markdown table (in full) and return
        them as a DataFrame."""
        record = dict(notebook=self.notebook, profile=self.profile.name, seed=self.seed,
                      finished=time.strftime("%Y-%m-%d %H:%M:%S"), settings=self.profile.as_dict(),
                      knobs={k: dict(value=v, paper=p) for k, (v, p) in self.knobs.items()},
                      paper_scale=self.paper_scale, claims=self.claims, notes=self.notes,
                      figures=self.figures, tables=self.tables, models=self.models)
        (self.out / "claims.json").write_text(json.dumps(record, indent=2, default=str))
        table = pd.DataFrame(self.claims, columns=list(CLAIM_FIELDS))
        _show(f"**{tally_sentence(table)}.**\n\n" + markdown_table(table))
        return table


def setup(notebook: str, profile: str | Profile | None = None, data_dir: str | Path | None = None,
          results_dir: str | Path = "results", seed: int = 0, device: str | torch.device | None = None,
          overrides: dict[str, Any] | None = None) -> Experiment:
    """Start a notebook's experiment: profile None/"" -> $NSA_PROFILE, else tiny; data_dir
    None -> $NSA_DATA_DIR, else <repo>/data; models cached in $NSA_MODELS_DIR, else
    <results>/models (paths.py)."""
    import seaborn as sns

    prof = profile.with_overrides(overrides) if isinstance(profile, Profile) else \
        get_profile(profile or None, overrides)
    out = paths.writable_folder(paths.results_dir(results_dir) / prof.name / notebook, "results folder")
    # A claims.json left by an earlier run must not pass for this run's if this one fails.
    (out / "claims.json").unlink(missing_ok=True)
    torch.manual_seed(seed)
    sns.set_theme(context="notebook", style="whitegrid")
    return Experiment(notebook=notebook, profile=prof, out=out, models_dir=paths.models_dir(),
                      data_dir=paths.data_dir(data_dir), device=runtime.device(device), seed=seed)
