"""The notebooks, end to end, as `make reproduce PROFILE=smoke` runs them: one smoke run per
test session (`smoke_run`: `train-all --jobs 2` trains the smoke plan, then `reproduce`
executes every notebook 00-09 once with papermill, which stops at the first cell that raises),
and every check reads from that run: each notebook's executed copy has no error output and
carries no absolute path, its claims.json is well formed, the models it asked for are the ones
the plan declares, and REPORT.md reports it. Nothing is written into the repository's results/.
How `reproduce` fails is tested without a second real run (a stand-in executor)."""
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nsa_core import cli, plan
from nsa_core.claims import CLAIM_KINDS, VERDICTS
from nsa_core.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _env(results: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSA_MODELS_DIR", "NSA_DATA_DIR")}
    return env | {"NSA_PROFILE": "smoke", "NSA_RESULTS_DIR": str(results), "MPLBACKEND": "Agg"}


def _nsa(results: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsa_core", *args], cwd=ROOT, env=_env(results),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class SmokeRun:
    results: Path                        # the scratch results folder (NSA_RESULTS_DIR)
    train: subprocess.CompletedProcess   # train-all
    run: subprocess.CompletedProcess     # reproduce

    @property
    def folder(self) -> Path:
        return self.results / "smoke"

    def claims(self, stem: str) -> dict:
        return json.loads((self.folder / stem / "claims.json").read_text())

    def executed(self, stem: str) -> dict:
        return json.loads((self.folder / "executed" / f"{stem}.ipynb").read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The whole suite at the smoke profile, once per session: the plan trained by two workers,
    then every notebook run by `reproduce`, which writes REPORT.md."""
    results = tmp_path_factory.mktemp("smoke_results")
    train = _nsa(results, "train-all", "--profile", "smoke", "--jobs", "2", "--device", "cpu")
    assert train.returncode == 0, train.stderr[-3000:]
    return SmokeRun(results, train, _nsa(results, "reproduce", "--profile", "smoke"))


# A number in a notebook's prose must be one the reader can trace: the paper's (paper.py), a
# profile's setting (profiles.py) or one the notebook's own code holds; a run's result is said
# by the code (exp.say), so it cannot go stale when the run changes.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)")
_REFERENCE = re.compile(r"(?:Figs?\.|Secs?\.|Eqs?\.|Table|App\.|notebooks?)\s*[\d(),\-–a-d ]+|/\s*255|\b(?:19|20)\d\d\b")


def prose_numbers_untraced(nb: Path) -> set[str]:
    cells = json.loads(nb.read_text())["cells"]
    known = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    known += (ROOT / "nsa_core" / "paper.py").read_text() + (ROOT / "nsa_core" / "profiles.py").read_text()
    prose = (_REFERENCE.sub(" ", "".join(c["source"])) for c in cells if c["cell_type"] == "markdown")
    return {n for text in prose for n in _NUMBER.findall(text) if n not in known}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_prose_quotes_no_number_of_a_run(notebook):
    assert not prose_numbers_untraced(notebook), f"{notebook.stem}: numbers in markdown that no code prints"


def test_a_run_number_in_prose_is_caught(tmp_path):
    nb = json.loads(NOTEBOOKS[1].read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["NSA-i reached 52.83 % after 1,187 steps."]})
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert prose_numbers_untraced(tmp_path / "x.ipynb") == {"52.83", "1,187"}


def test_notebooks_define_no_functions():
    for nb in NOTEBOOKS:
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        assert not re.search(r"^\s*def |\blambda\b", code, re.M), f"{nb.stem}: logic belongs in nsa_core"


def test_orphan_results_are_removed(tmp_path):
    from nsa_core.reproduce import remove_orphans

    folder = tmp_path / "01_bn_disparity"
    folder.mkdir()
    for name in ("fig2.png", "fig2.svg", "scores.csv", "fig1_architecture_1.png", "old.csv", "claims.json"):
        (folder / name).write_text("x")
    (folder / "claims.json").write_text(json.dumps({"figures": ["01_bn_disparity/fig2.png"],
                                                    "tables": ["01_bn_disparity/scores.csv"]}))
    gone = remove_orphans(folder)
    assert sorted(f.name for f in gone) == ["fig1_architecture_1.png", "old.csv"]
    assert sorted(f.name for f in folder.iterdir()) == ["claims.json", "fig2.png", "fig2.svg", "scores.csv"]


def test_changed_verdicts_name_the_old_and_new_rule():
    import pandas as pd

    from nsa_core.reproduce import changed_verdicts

    old = pd.DataFrame({"notebook": ["01", "01", "02"], "statement": ["a", "b", "c"],
                        "verdict": ["holds", "inconclusive", "holds"], "rule": ["r1", "r2", "r3"]})
    new = pd.DataFrame({"notebook": ["01", "01", "03"], "statement": ["a", "b", "d"],
                        "verdict": ["holds", "underpowered", "holds"], "rule": ["r1", "r2'", "r4"]})
    assert changed_verdicts(old, new) == [["01", "b", "inconclusive", "underpowered", "r2", "r2'"],
                                          ["02", "c", "holds", "-", "r3", "-"], ["03", "d", "-", "holds", "-", "r4"]]


def test_notebooks_are_committed_without_outputs():
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb.name
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells), f"{nb.name}: no parameters cell"


@pytest.mark.slow
def test_every_notebook_runs_and_the_report_is_written(smoke_run):
    assert smoke_run.run.returncode == 0, smoke_run.run.stderr[-4000:]
    assert smoke_run.run.stdout.strip().endswith("REPORT.md")
    text = (smoke_run.folder / "REPORT.md").read_text()
    assert " paper claims: " in text and " sanity checks: " in text and "bootstrap interval" in text
    assert "underpowered" in text and "bias-corrected" in text   # every verdict and interval rule explained
    assert "](01_bn_disparity/fig2cd_histograms.png)" in text
    # every model with its final accuracy and training time (smoke: 3 epochs)
    assert re.search(r"\| nsa \| 5 \| synthetic \| 00 01[0-9 ]* \| 3 \| \d+\.\d % \| \d+ s \|", text), text
    # the plan's training counts in the wall time
    assert "train-all (the plan's models, trained before the notebooks)" in text
    assert (smoke_run.folder / "claims.csv").read_text().startswith("notebook,statement,paper,reproduced,verdict,rule")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_in_the_smoke_run(notebook, smoke_run):
    stem = notebook.stem
    executed = smoke_run.executed(stem)
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{stem}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(c.get("execution_count") for c in executed["cells"] if c["cell_type"] == "code"), \
        f"{stem}: not every cell ran"
    assert str(ROOT) not in json.dumps(executed)   # executed copies carry relative paths only

    record = smoke_run.claims(stem)
    # The tour (00) is teaching, not a replication: it finishes with figures and no claims.
    assert record["profile"] == "smoke" and (record["claims"] or stem == "00_tour"), f"{stem} recorded no claims"
    assert record["paper_scale"] is False
    for c in record["claims"]:
        assert c["kind"] in CLAIM_KINDS and c["verdict"] in VERDICTS and c["statement"] and c["rule"], c
    assert str(ROOT) not in json.dumps(record)
    for rel in record["figures"] + record["tables"]:
        assert (smoke_run.folder / rel).is_file(), rel
    assert f"[{stem}](executed/{stem}.ipynb)" in (smoke_run.folder / "REPORT.md").read_text()

    # the plan declares exactly the models the notebook asked the cache for
    assert record["seed"] == 0
    assert record["settings"] == json.loads(json.dumps(get_profile("smoke").as_dict()))
    declared = [s.key for s in plan.asked_by(stem, "smoke")]
    asked = record["models"]
    if stem == "06_calibration" and not asked:   # 06 reads 05's cached probabilities when 05 ran first
        return
    assert set(asked) == set(declared) and len(asked) == len(declared), stem


@pytest.mark.slow
def test_train_all_trained_the_whole_plan_once(smoke_run):
    items = plan.build_plan("smoke", models_dir=smoke_run.results / "models")
    assert items and all(it.state == plan.TRAINED for it in items)
    assert f"{len(items)} trained, 0 failed" in smoke_run.train.stdout


def test_reproduce_reports_a_failing_notebook_in_one_line(tmp_path, capsys, monkeypatch):
    """A cell that raises: one line naming the notebook, the cell and the error; exit 1; the
    partial executed copy kept; the notebooks after it not run."""
    import papermill

    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    ran = []

    def failing(src, out, **kwargs):
        ran.append(Path(src).stem)
        Path(out).write_text(json.dumps({"partial": True}))
        raise papermill.PapermillExecutionError(cell_index=3, exec_count=4, source="", ename="ValueError",
                                                evalue="unknown data set 'nonexistent'\nmore", traceback=[])

    monkeypatch.setattr(papermill, "execute_notebook", failing)
    assert cli.main(["reproduce", "--profile", "smoke", "--notebooks", "01", "02"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa: notebook")]
    assert lines == [f"nsa: notebook 01_bn_disparity failed in cell 4: ValueError: unknown data set 'nonexistent' "
                     f"more (partial output: {tmp_path / 'smoke' / 'executed' / '01_bn_disparity.ipynb'})"]
    assert ran == ["01_bn_disparity"] and (tmp_path / "smoke" / "executed" / "01_bn_disparity.ipynb").is_file()


def test_a_report_after_one_notebook_gives_every_notebooks_latest_time(tmp_path, monkeypatch):
    """Rerunning one notebook rewrites REPORT.md from every notebook's claims, so its wall-time
    table gives every notebook's latest time (and the plan's training), not only the rerun's."""
    import papermill

    from nsa_core.experiment import save_timings

    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    save_timings(tmp_path / "smoke", {"train-all": 600.0, "01_bn_disparity": 120.0, "02_instance_archs": 60.0})
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, **kw: Path(out).write_text('{"cells": []}'))
    assert cli.main(["reproduce", "--profile", "smoke", "--notebooks", "02"]) == 0
    text = (tmp_path / "smoke" / "REPORT.md").read_text()
    for row in ("| train-all (the plan's models, trained before the notebooks) | 10.0 min |",
                "| 01_bn_disparity | 2.0 min |", "| 02_instance_archs |"):
        assert row in text
    assert "| 02_instance_archs | 1.0 min |" not in text   # the rerun's own time replaced the old one


def test_reproduce_rejects_a_missing_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    assert cli.main(["reproduce", "--profile", "smoke", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "does not exist" in err
    assert not (tmp_path / "smoke").exists()   # nothing ran


def test_reproduce_rejects_an_unknown_notebook(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    assert cli.main(["reproduce", "--profile", "smoke", "--notebooks", "42"]) == 2
    assert capsys.readouterr().err.strip() == "nsa: error: no notebook numbered '42'; choose from " + \
        ", ".join(nb.name[:2] for nb in NOTEBOOKS)
