"""What every notebook shares: one `setup` call gives the profile, the output folder, cached
models and results, the evaluation subset, prose rendered from the run's own numbers, and a
record of the claims the notebook tests.

    exp = setup("01_bn_disparity", profile=PROFILE, data_dir=DATA_DIR)
    run = exp.trained(spec)                    # model, history and test curve (the plan's spec)
    d = claims.mean_difference(correct_a, correct_b)          # paired over test images
    exp.claim("...", paper="...", reproduced=f"a - b = {d}", verdict=claims.verdict(d), rule="...")
    exp.finish()   # -> results/<profile>/<notebook>/claims.json, read by REPORT.md

`setup` is an entry point: it reads the environment (NSA_PROFILE, the folders, runtime.Settings)
once. Verdicts, kinds of claims and their thresholds live in claims.py. Folders follow
paths.py's one rule: relative paths resolve against the repository root, so a notebook runs
the same from notebooks/ (papermill, Jupyter) as from anywhere else.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm import tqdm

from . import claims as C
from . import data as D
from . import evaluate, paths, runtime
from .cache import obtain
from .checkpoint import atomic_save
from .config import ModelSpec, Recipe
from .kinds import KINDS
from .network import WiredNet
from .paper import AUTHORS_PRECISION
from .profiles import PROFILES, Profile, at_paper_scale, get_profile, override_profile

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
    return type(get_ipython()).__name__ == "ZMQInteractiveShell"   # None outside IPython


def show(text: str) -> None:
    """Markdown in a notebook, a line on stderr elsewhere."""
    if _in_notebook():
        from IPython.display import Markdown, display
        display(Markdown(text))
    else:
        tqdm.write(text, file=sys.stderr)


def saved_timings(folder: Path) -> dict[str, float]:
    path = folder / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_timings(folder: Path, timings: dict[str, float]) -> None:
    """timings.json holds the latest wall time of every notebook (and of `train-all`), for
    reports written later."""
    known = saved_timings(folder) | {k: round(v, 1) for k, v in timings.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timings.json").write_text(json.dumps(known, indent=2, sort_keys=True))


@dataclass
class Trained:
    """A trained model of the cache: its spec, the network, its history (one row per epoch)
    and its test curve (curve.csv: a test evaluation every recipe.eval_every steps)."""
    spec: ModelSpec
    model: WiredNet
    history: pd.DataFrame
    curve: pd.DataFrame

    @property
    def label(self) -> str:
        s, k = self.spec, KINDS[self.spec.kind]
        return k.label + ("" if k.fixed else f" S={s.space}") + (f" #{s.arch_index}" if k.wiring == "one" else "")


@dataclass
class Experiment:
    notebook: str
    profile: Profile
    out: Path                # results/<profile>/<notebook>/
    models_dir: Path         # the model cache shared by every notebook
    data_dir: Path
    device: torch.device
    seed: int = 0
    settings: runtime.Settings = runtime.Settings()
    claims: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)   # paths relative to results/<profile>/
    tables: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)    # keys of the specs this run asked for, in order
    knobs: dict[str, tuple[Any, Any]] = field(default_factory=dict)   # notebook knob -> (value, paper's)
    _tests: dict[tuple[str, int | None], D.Split] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- models and data
    def trained(self, spec: ModelSpec) -> Trained:
        """The model of `spec` (a spec the plan declares), from the cache or trained now."""
        first = spec.key not in self.models
        if first:
            self.models.append(spec.key)
        # A kernel's progress bar lands in the executed notebook as one output per redraw: a
        # notebook gets one line per model instead.
        quiet = _in_notebook()
        t0 = time.time()
        got = obtain(spec, self.models_dir, self.data_dir, self.device, progress=not quiet, settings=self.settings)
        if quiet and (first or got.how == "trained"):
            print(f"{spec.kind} S={spec.space}{' ' + spec.semi if spec.semi else ''}: "
                  + (f"trained in {time.time() - t0:.0f} s" if got.how == "trained" else "from the model cache"))
        return Trained(spec, got.model, got.history, pd.read_csv(got.folder / "curve.csv"))

    def test_set(self, recipe: Recipe | None = None, dataset: str | None = None, n: int | None = None) -> D.Split:
        """The evaluation subset of `dataset` (default: the recipe's, itself by default the
        understand recipe), first `n` images of the fixed shuffled order (default: the
        recipe's test_size): the images training logged."""
        r = recipe or self.profile.understand
        key = (dataset or r.dataset, n or r.test_size)
        if key not in self._tests:
            self._tests[key] = D.eval_subset(key[0], self.data_dir, key[1])
        return self._tests[key]

    def cached(self, name: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """compute(), kept in results/<profile>/_shared under `name` and a hash of `key` (what
        the result depends on: models, test images, settings), so that notebooks that need the
        same numbers (02 reuses 01's scores, 06 and 07 reuse 05's probabilities) compute them once."""
        folder = paths.writable_folder(self.out.parent / "_shared", "results folder")
        tag = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = folder / f"{name}_{tag}.pt"
        if path.is_file():
            with suppress(Exception):   # torn or foreign: computed again
                return torch.load(path, weights_only=False)
        value = compute()
        atomic_save(value, path)
        return value

    def seen_scores(self, run: Trained, bn: str, n: int) -> pd.DataFrame:
        """Accuracy and loss (columns arch, acc, loss) of the first min(n, S) architectures of the
        model's training space on self.test_set(), with BN in `bn` mode: 'test' in mixed batches of
        eval_batch; 'train' in batches of the training batch size mixed as the model trained (one
        architecture per batch for NSA, one per example for NSA-i: evaluate.arch_scores). Cached
        (02 and 04 reuse what 01 and 02 computed)."""
        r, test = run.spec.recipe, self.test_set(run.spec.recipe)
        n = min(n, run.spec.space)
        batch = r.batch_size if bn == "train" else r.eval_batch
        mixed = KINDS[run.spec.kind].sampling == "example"
        key = dict(model=run.spec.key, bn=bn, n=n, test=test.fingerprint(), batch=batch, mixed=mixed)
        return self.cached("scores", key, lambda: evaluate.arch_scores(
            run.model, test.images, test.labels, r.dataset, archs=torch.arange(n), bn=bn, batch=batch, mixed=mixed))

    def gate(self, runs: dict[str, Trained], rule: str) -> C.Gate:
        """The training gate (claims.gate) of a claim on `runs` (name -> Trained)."""
        return C.gate({n: t.curve for n, t in runs.items()}, {n: t.spec.recipe.batch_size for n, t in runs.items()},
                      rule, self.seed)

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

    # ---------------------------------------------------------------------- outputs
    def _record(self, path: Path, into: list[str]) -> Path:
        """Keep `path` in `into` (self.figures or self.tables), relative to results/<profile>/."""
        rel = path.relative_to(self.out.parent).as_posix()
        if rel not in into:
            into.append(rel)
        return path

    def save_figure(self, fig, name: str) -> Path:
        """`name`.png (dpi 150) and `name`.svg under exp.out; the figure stays open."""
        png = self.out / f"{name}.png"
        fig.savefig(png, dpi=150, bbox_inches="tight")
        fig.savefig(self.out / f"{name}.svg", bbox_inches="tight")
        return self._record(png, self.figures)

    def figure(self, fig, name: str) -> None:
        """Save the figure (save_figure), then show it in a notebook; close it elsewhere."""
        import matplotlib.pyplot as plt

        self.save_figure(fig, name)
        plt.show() if _in_notebook() else plt.close(fig)

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        path = self.out / f"{name}.csv"
        df.to_csv(path, index=False)
        return self._record(path, self.tables)

    def settings_table(self, recipe: str, keys: list[str]) -> pd.DataFrame:
        """This run's values of some settings beside the paper's: a recipe key of the profile's
        `recipe` ('understand', 'explore'; 'semi.KEY' of the semi-supervised one) or a knob, and
        last the precision this machine trains in (bf16 autocast where the hardware has it)."""
        recipe_keys = {f.name for f in fields(Recipe)}

        def value(p: Profile, key: str) -> Any:
            r, _, k = key.rpartition(".")
            return getattr(p.recipe(r or recipe), k) if k in recipe_keys else getattr(p, k)

        rows = [[value(self.profile, k), value(PROFILES["paper"], k)] for k in keys]
        # the numerics are a deliberate difference from the authors' fp32 wherever bf16 is native
        rows.append([runtime.precision(self.device, self.profile.recipe(recipe).precision), AUTHORS_PRECISION])
        return pd.DataFrame(rows, index=[*keys, "precision (training here)"], columns=["this run", "paper"],
                            dtype=object)

    def overview(self, specs: list[ModelSpec]) -> None:
        """Say which models this notebook uses (the plan's), and how long its last run took
        (timings.json of `make reproduce`), from the run's own records."""
        kinds = ", ".join(dict.fromkeys(KINDS[s.kind].label + (f" ({s.semi})" if s.semi else "") for s in specs))
        last = saved_timings(self.out.parent).get(self.notebook)
        self.say(f"**Models.** {len(specs)} from the model cache (trained first if missing: `make reproduce` trains "
                 f"them all before the notebooks): {kinds}. "
                 + (f"**Last run** of this notebook by `make reproduce` at this profile: {last / 60:.1f} min "
                    "(the models already trained)." if last else ""))

    def say(self, text: str) -> None:
        """Prose whose numbers come from this run (the notebooks' markdown cells hold none)."""
        show(relative_text(text))

    # ----------------------------------------------------------------------- claims
    def claim(self, statement: str, paper: str, reproduced: str, verdict: str, rule: str,
              kind: str = C.PAPER_CLAIM) -> None:
        """Record one tested statement: what the paper reports, what this run measured (with
        its interval), the rule that turned the measurement into the verdict, and its kind
        (a paper claim, beyond the paper, or a sanity check)."""
        if verdict not in C.VERDICTS:
            raise ValueError(f"verdict must be one of {C.VERDICTS} (use claims.verdict(...)), got {verdict!r}")
        if kind not in C.CLAIM_KINDS:
            raise ValueError(f"kind must be one of {C.CLAIM_KINDS}, got {kind!r}")
        values = (statement, paper, reproduced, verdict, rule, kind)
        self.claims.append(dict(zip(CLAIM_FIELDS, (relative_text(str(v)) for v in values))))

    def note(self, text: str) -> None:
        """Something the reader must know about this run (a data set that was missing, a
        deviation forced by the profile); it goes to claims.json and REPORT.md."""
        text = relative_text(text)
        self.notes.append(text)
        show(f"**Note:** {text}")

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
        if len(table):
            show(f"**{C.tally_sentence(table)}.**\n\n" + C.markdown_table(table))
        return table


def setup(notebook: str, profile: str | Profile | None = None, data_dir: str | Path | None = None,
          results_dir: str | Path | None = None, seed: int = 0, device: str | torch.device | None = None,
          overrides: dict[str, Any] | None = None) -> Experiment:
    """Start a notebook's experiment (an entry point: the environment is read here). profile
    None -> $NSA_PROFILE, else tiny; data_dir None -> $NSA_DATA_DIR, else <repo>/data;
    results_dir None -> $NSA_RESULTS_DIR, else <repo>/results; models cached in
    $NSA_MODELS_DIR, else <results>/models (paths.py)."""
    import seaborn as sns

    prof = override_profile(profile, overrides) if isinstance(profile, Profile) else \
        get_profile(profile or os.environ.get("NSA_PROFILE") or "tiny", overrides)
    results = paths.results_dir(results_dir)
    out = paths.writable_folder(results / prof.name / notebook, "results folder")
    # A claims.json left by an earlier run must not pass for this run's if this one fails.
    (out / "claims.json").unlink(missing_ok=True)
    settings = runtime.Settings.from_env()
    runtime.keep_freed_memory(settings)
    torch.manual_seed(seed)
    sns.set_theme(context="notebook", style="whitegrid")
    return Experiment(notebook=notebook, profile=prof, out=out, models_dir=paths.models_dir(results=results),
                      data_dir=paths.data_dir(data_dir), device=runtime.device(device), seed=seed, settings=settings)
