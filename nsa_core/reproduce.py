"""`make reproduce`: run the notebooks headless with papermill, then write REPORT.md, which
gathers every notebook's claims.json (see experiment.py) into one document.

Each notebook runs from notebooks/ with parameters PROFILE, DATA_DIR, RESULTS_DIR (and
OVERRIDES for --set values); its executed copy goes to results/<profile>/executed/. Cell
output streams to stderr; stdout gets only the report's path. The first failing notebook
stops the run with one line naming the notebook, the cell and the error; its partial
executed copy stays for inspection.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from . import paths, runtime
from .claims import (CONFIDENCE, CONVERGED_CHANGE, FAILS, HOLDS, INCONCLUSIVE, N_RESAMPLES, NOT_COMPARABLE,
                     PAPER_CLAIM, UNDERPOWERED, markdown_table, tally_sentence)
from .experiment import CLAIM_FIELDS, save_timings, saved_timings
from .paths import repo_root, results_dir
from .profiles import get_profile


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def select_notebooks(numbers: list[str] | None) -> list[Path]:
    """The notebooks NN_*.ipynb to run, in order: all of them, or those numbered in `numbers`
    ('01', '1' or the full stem '01_bn_disparity')."""
    found = sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if not numbers:
        return found
    by_stem = {nb.stem: nb for nb in found}
    return [by_stem[stem] for stem in paths.pick_numbered(numbers, list(by_stem))]


def kernel_name() -> str:
    """The kernelspec that runs this interpreter: 'nsa' (installed by `make env`) when it
    points here, else 'python3', whose 'python' jupyter_client replaces by sys.executable."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    for name in ("nsa", "python3"):
        try:
            argv0 = ksm.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in ("python", "python3") or os.path.abspath(argv0) == os.path.abspath(sys.executable):
            return name
    raise KeyError("no Jupyter kernel runs this Python; install one with "
                   f"`{sys.executable} -m ipykernel install --user --name nsa`")


def _declares(nb: Path, name: str) -> bool:
    """Whether the notebook's `parameters` cell assigns `name`."""
    cells = json.loads(nb.read_text())["cells"]
    return any("parameters" in c.get("metadata", {}).get("tags", []) and
               any(line.lstrip().startswith((f"{name} ", f"{name}=")) for line in "".join(c["source"]).splitlines())
               for c in cells)


def _shown(path: Path) -> str:
    """A path as the user should read it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def for_notebooks(path: Path) -> str:
    """`path` as the notebooks' parameters get it: relative to the root of the checkout the
    kernels import nsa_core from when it lies under it (they resolve it there, paths.resolve),
    so executed notebooks carry no absolute path of this machine; absolute otherwise."""
    root = repo_root().resolve()
    if not (root / "pyproject.toml").is_file() or not Path(paths.__file__).resolve().is_relative_to(root):
        return str(path)
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _prepare(profile: str, data_dir: str | None, notebooks: list[str] | None, sets: dict[str, Any] | None):
    """Everything `reproduce` checks before a notebook runs; a ValueError names the mistake."""
    try:
        prof = get_profile(profile, sets)          # unknown profile or --set key: fail now
        selected = select_notebooks(notebooks)
        kernel = kernel_name()
    except (KeyError, ValueError) as e:
        raise ValueError(e.args[0]) from None
    if not selected:
        raise ValueError(f"no notebooks found in {notebooks_dir()}")
    if data_dir is not None:
        data = paths.data_dir(data_dir)   # a relative path: from the repository root, as in every subcommand
        if not data.is_dir():
            raise ValueError(f"data folder {data} does not exist; pass an existing --data-dir "
                             "(or leave it out for $NSA_DATA_DIR, else data/ in the repository)")
        data_dir = for_notebooks(data)
    blind = [nb.stem for nb in selected if sets and not _declares(nb, "OVERRIDES")]
    if blind:
        raise ValueError(f"--set cannot reach {', '.join(blind)}: no OVERRIDES parameter there")

    results = paths.writable_folder(results_dir(), "results folder")
    executed = paths.writable_folder(results / prof.name / "executed", "results folder")
    return prof, selected, kernel, data_dir, results, executed


def reproduce(profile: str = "tiny", data_dir: str | None = None, notebooks: list[str] | None = None,
              report: bool = True, sets: dict[str, Any] | None = None,
              settings: runtime.Settings = runtime.Settings()) -> int:
    """Run the notebooks of `profile`; returns the exit code (0 ok, 1 a notebook failed,
    2 a usage error caught before anything ran). The kernels run with `settings`."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    try:
        prof, selected, kernel, data_dir, results, executed = _prepare(profile, data_dir, notebooks, sets)
    except ValueError as e:
        print(f"nsa: error: {e}", file=sys.stderr)
        return 2
    params = dict(PROFILE=prof.name, DATA_DIR=data_dir, RESULTS_DIR=for_notebooks(results))
    if sets:
        params["OVERRIDES"] = dict(sets)
    # Kernels inherit the environment. Training bars redraw at most every 2 s, else the
    # executed copies of a long run carry megabytes of progress updates.
    os.environ.setdefault("TQDM_MININTERVAL", "2")
    os.environ.update(runtime.child_environment(settings))   # the kernels run as this process was told
    for i, nb in enumerate(selected, 1):
        out = executed / nb.name
        print(f"nsa: [{i}/{len(selected)}] {nb.stem} ({prof.name}) -> {_shown(out)}", file=sys.stderr)
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name=kernel,
                                cwd=str(nb.parent), progress_bar=True,
                                stdout_file=sys.stderr, stderr_file=sys.stderr)
        except (pm.PapermillExecutionError, DeadKernelError) as e:
            why = (f" in cell {e.exec_count}: {e.ename}: {' '.join(str(e.evalue).split())}"
                   if isinstance(e, pm.PapermillExecutionError) else ": its kernel died (out of memory?)")
            print(f"nsa: notebook {nb.stem} failed{why} (partial output: {_shown(out)})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:   # papermill saves the executed part before this reaches us
            print(f"\nnsa: interrupted in notebook {nb.stem}; its partial output is in {_shown(out)}; "
                  "run the same command again to go on (trained models are cached, training resumes)",
                  file=sys.stderr)
            return 130
        _relative_paths(out)
        remove_orphans(results / prof.name / nb.stem)
        save_timings(results / prof.name, {nb.stem: time.time() - t0})   # kept if a later one fails
    if report:
        # the report gathers every notebook's latest claims, so it gives every notebook's latest
        # wall time (timings.json), and the plan's last training, not only this call's notebooks
        path = write_report(prof.name, results, None, data_dir)
        if results.resolve() == (repo_root() / "results").resolve():   # not for scratch result folders
            update_readme(prof.name, results)
        print(_shown(path))
    return 0


# ---------------------------------------------------------------------------- report

def _relative_paths(executed: Path) -> None:
    """Papermill records the input and output paths as given, absolute: keep them relative to
    the repository root, so a committed run carries no path of the machine that ran it."""
    nb = json.loads(executed.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            with suppress(ValueError):   # outside the checkout: nothing of it to keep relative
                meta[key] = str(Path(meta[key]).resolve().relative_to(repo_root()))
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def remove_orphans(folder: Path) -> list[Path]:
    """Delete what an earlier run of a notebook wrote and this run did not (its claims.json lists
    every figure and table it wrote); returns the deleted files."""
    record = folder / "claims.json"
    if not record.is_file():
        return []
    r = json.loads(record.read_text())
    figures = [Path(f) for f in r["figures"]]
    keep = {record.name, *(f.name for f in figures), *(f.with_suffix(".svg").name for f in figures),
            *(Path(t).name for t in r["tables"])}
    gone = [f for f in folder.iterdir() if f.is_file() and f.name not in keep]
    for f in gone:
        f.unlink()
    return gone


# timings.json's entry for `train-all`, the plan's models trained before the notebooks run
TRAIN_ALL = "train-all"


def _hardware() -> list[str]:
    import torch

    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return [f"CPU: {cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)",
            f"torch {torch.__version__}, Python {platform.python_version()}, device {device}, precision "
            f"{runtime.precision(runtime.device())} (auto: bf16 on CUDA and on CPUs with native bf16, else fp32)"]


def _flat_settings(settings: dict[str, Any]) -> list[list[Any]]:
    """One row per setting: the understanding recipe as understand.KEY, the others as
    explore.KEY and semi.KEY where they differ from it, then the profile's knobs."""
    recipes = ("understand", "explore", "semi")
    base = settings.get("understand", {})
    rows = [[f"understand.{k}", v] for k, v in base.items()]
    rows += [[f"{r}.{k}", v] for r in recipes[1:] for k, v in settings.get(r, {}).items() if base.get(k) != v]
    return rows + [[k, v] for k, v in settings.items() if k not in recipes]


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    return markdown_table(rows, header).splitlines()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _tally_lines(claims: pd.DataFrame) -> list[str]:
    """The verdict counts, the paper's claims apart from the rest."""
    if not len(claims):
        return ["No claims recorded."]
    return [f"**{len(claims)} claims tested.** {tally_sentence(claims)}."]


def _verdict_legend() -> list[str]:
    return [f"Every reproduced number that decides a verdict carries a {100 * CONFIDENCE:g} % bootstrap interval "
            f"({N_RESAMPLES} resamples of the test images, or of the architectures where the number is over "
            "architectures; orderings are paired). Where a statistic is biased so that the percentile interval "
            "would exclude its own estimate, the interval is bias-corrected and contains it. A verdict is taken on "
            f"the interval: *{HOLDS}* (it lies on the paper's side of zero, or within the tolerance of an "
            f"equivalence), *{FAILS}* (on the other side, or outside the tolerance), *{INCONCLUSIVE}* (it "
            f"includes zero), *{UNDERPOWERED}* (its half-width exceeds the tolerance the claim needs: too few "
            f"architectures or images to tell), *{NOT_COMPARABLE}* (absolute levels away from the paper's scale, "
            "or models that the claim's training gate rejects). The training gate: claims comparing models of "
            "one recipe are judged at matched budgets; claims quoting trained models need every model converged "
            f"(the test-accuracy slope over the last fifth of training, times that fifth, within "
            f"+-{CONVERGED_CHANGE}, interval included). The kind separates the paper's claims from those beyond "
            "the paper and from sanity checks."]


def changed_verdicts(old: pd.DataFrame, new: pd.DataFrame) -> list[list[Any]]:
    """Rows (notebook, statement, old verdict, new verdict, old rule, new rule) of the claims whose
    verdict differs between two tables, matched by notebook and statement ('-' on a missing side)."""
    key = ["notebook", "statement"]
    both = old[key + ["verdict", "rule"]].merge(new[key + ["verdict", "rule"]], on=key, how="outer",
                                                suffixes=(" old", " new")).fillna("-")
    both = both[both["verdict old"] != both["verdict new"]]
    return both[key + ["verdict old", "verdict new", "rule old", "rule new"]].values.tolist()


def _models_table(profile_name: str, notebooks: list[str], data_dir: str | Path | None) -> list[str]:
    """Every model the notebooks used, with its final test accuracy and training time."""
    from . import plan   # the plan builds the notebooks' specs; only the report needs it here
    declared = [nb[:2] for nb in notebooks if nb in plan.NOTEBOOK_MODELS]
    if not declared:
        return ["None recorded."]
    rows = []
    for it in plan.build_plan(profile_name, declared, None, data_dir):
        final = it.final()
        rows.append([it.label, it.spec.space, it.spec.recipe.dataset, " ".join(n[:2] for n in it.notebooks),
                     *([final["epochs"], f"{100 * final['test_acc']:.1f} %", _minutes(final["seconds"])]
                       if final else ["", it.describe(), ""])])
    return ["Final test accuracy: BN in test mode, architectures drawn as the model was trained (NSA: one per "
            "test batch of 128 images, as the authors test), on the profile's test images (the trainer's last "
            "evaluation, `history.csv`); training time: the model's own, in its worker.", "",
            *_table(rows, ["model", "S", "data", "notebooks", "epochs", "test accuracy", "training time"])]


def _settings_lines(profile_name: str, records: list[dict]) -> list[str]:
    """The report's settings section: the profile's, and the notebooks' knobs."""
    # the replications' settings: the tour (no claims) trains with its own small ones
    replications = [r for r in records if r["claims"]]
    settings = replications[0]["settings"] if replications else get_profile(profile_name).as_dict()
    differing = sorted({r["notebook"] for r in replications if r["settings"] != settings})
    md = ["", "## Profile settings", "", *_table(_flat_settings(settings), ["setting", "value"])]
    if differing:
        md += ["", f"Notebooks {', '.join(differing)} ran with other settings than these "
               "(an earlier run with other --set values); rerun them to make the report consistent."]
    knobs = [[r["notebook"], k, v["value"], v["paper"]] for r in records for k, v in r.get("knobs", {}).items()]
    if knobs:
        md += ["", "Notebook settings (they enter the paper-scale test too):", "",
               *_table(knobs, ["notebook", "setting", "this run", "paper"])]
    return md


def write_report(profile_name: str, results_dir: str | Path, timings: dict[str, float] | None = None,
                 data_dir: str | Path | None = None) -> Path:
    """Write <results_dir>/<profile>/REPORT.md and claims.csv from the notebooks' claims.json.
    `timings` (notebook or `train-all` -> seconds) defaults to the ones saved by the last runs."""
    folder = Path(results_dir) / profile_name
    timings = saved_timings(folder) if timings is None else timings
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/claims.json"))]

    # claims.json of older runs has no kind: they were all counted as paper claims
    rows = [{"notebook": r["notebook"], **{k: c.get(k, PAPER_CLAIM) for k in CLAIM_FIELDS}}
            for r in records for c in r["claims"]]
    claims = pd.DataFrame(rows, columns=["notebook", *CLAIM_FIELDS])
    previous = pd.read_csv(folder / "claims.csv") if (folder / "claims.csv").is_file() else None
    claims.to_csv(folder / "claims.csv", index=False)

    md = [f"# NSA replication report: profile `{profile_name}`", "",
          f"Written {time.strftime('%Y-%m-%d %H:%M')}. Paper: *Understanding and Exploring the Network "
          "with Stochastic Architectures* (NeurIPS 2020).", "",
          *_tally_lines(claims), "",
          "## Hardware", "", *[f"- {line}" for line in _hardware()], "",
          "## Wall time", ""]
    if timings:
        order = sorted(timings.items(), key=lambda kv: (kv[0] != TRAIN_ALL, kv[0]))   # training first
        md += _table([[f"{nb} (the plan's models, trained before the notebooks)" if nb == TRAIN_ALL else nb,
                       _minutes(s)] for nb, s in order] +
                     [["**total**", f"**{_minutes(sum(timings.values()))}**"]], ["notebook", "wall time"])
    else:
        md.append("No timings recorded (the notebooks were not run by `make reproduce`).")
    md += ["", "## Models", "", *_models_table(profile_name, [r["notebook"] for r in records], data_dir)]
    md += _settings_lines(profile_name, records)
    md += ["", "## Claims", "", *_verdict_legend(), ""]
    md += _table(claims.values.tolist(), list(claims.columns))
    if previous is not None and "rule" in previous:
        changed = changed_verdicts(previous, claims)
        md += ["", "### Verdicts changed since the previous report", ""]
        md += _table(changed, ["notebook", "statement", "before", "now", "rule before", "rule now"]) if changed \
            else ["None."]
    md += ["", "## Notes", "", *([f"- {r['notebook']}: {n}" for r in records for n in r["notes"]] or ["None."])]
    md += ["", "## Figures", ""]
    for r in records:
        if r["figures"]:
            md += [f"### {r['notebook']}", "", *[f"![{Path(f).stem}]({quote(f)})" for f in r["figures"]], ""]
    md += ["## Notebooks", ""]
    md += [f"- [{r['notebook']}](executed/{r['notebook']}.ipynb) (finished {r['finished']}; tables: "
           + (", ".join(f"[{Path(t).name}]({quote(t)})" for t in r["tables"]) or "none") + ")" for r in records]
    path = folder / "REPORT.md"
    path.write_text("\n".join(md) + "\n")
    return path


def update_readme(profile_name: str, results_dir: str | Path, readme: Path | None = None) -> bool:
    """Replace the README block between `<!-- claims:PROFILE:start -->` and
    `<!-- claims:PROFILE:end -->` with this profile's claims table and wall time, generated
    rather than copied by hand. Returns whether the README has such a block."""
    readme = readme or repo_root() / "README.md"
    start, end = f"<!-- claims:{profile_name}:start -->", f"<!-- claims:{profile_name}:end -->"
    text = readme.read_text() if readme.is_file() else ""
    if start not in text or end not in text:
        return False
    folder = Path(results_dir) / profile_name
    claims = pd.read_csv(folder / "claims.csv")
    if "kind" not in claims:
        claims["kind"] = PAPER_CLAIM
    columns = ["notebook", "statement", "paper", "reproduced", "verdict", "kind"]
    block = [start, "",
             f"Generated from [results/{profile_name}/REPORT.md](results/{profile_name}/REPORT.md) "
             f"(total wall time {_minutes(sum(saved_timings(folder).values()))}; hardware and settings there).", "",
             *_tally_lines(claims), "", *_table(claims[columns].values.tolist(), columns), "", end]
    head, rest = text.split(start, 1)
    readme.write_text(head + "\n".join(block) + rest.split(end, 1)[1])
    return True
