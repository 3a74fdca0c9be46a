"""The notebooks run end to end in the smoke profile (nbval, --nbval-lax: every cell must run,
outputs are not compared), and `python -m nsa_core reproduce` runs them, reports, and fails
the way it promises. Every run shares one scratch results folder, so each model trains once;
nothing is written into the repository's results/."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke_results")


def _env(results: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSA_MODELS_DIR", "NSA_DATA_DIR")}
    return env | {"NSA_PROFILE": "smoke", "NSA_RESULTS_DIR": str(results), "MPLBACKEND": "Agg"}


def _nsa(results: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsa_core", *args], cwd=ROOT, env=_env(results),
                          capture_output=True, text=True, timeout=timeout)


def test_notebooks_are_committed_without_outputs():
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb.name
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells), f"{nb.name}: no parameters cell"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_smoke_profile(notebook, results):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-current-env", str(notebook)],
                         cwd=ROOT, env=_env(results), capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    claims = json.loads((results / "smoke" / notebook.stem / "claims.json").read_text())
    # The tour (00) is teaching, not a replication: it finishes with figures and no claims.
    assert claims["profile"] == "smoke" and (claims["claims"] or notebook.stem == "00_tour"), \
        f"{notebook.stem} recorded no claims"
    assert claims["paper_scale"] is False
    assert all(c["kind"] in ("paper claim", "beyond the paper", "sanity check") for c in claims["claims"])
    assert str(ROOT) not in json.dumps(claims["claims"]) + json.dumps(claims["notes"])   # relative paths only


@pytest.mark.slow
def test_reproduce_writes_report(results):
    run = _nsa(results, "reproduce", "--profile", "smoke", "--notebooks", "01")
    assert run.returncode == 0, run.stderr[-3000:]
    report = results / "smoke" / "REPORT.md"
    assert run.stdout.strip().endswith("REPORT.md")
    text = report.read_text()
    assert "01_bn_disparity" in text and "| notebook | statement |" in text
    assert "**paper claims: " in text and "**sanity checks: " in text and "bootstrap interval" in text
    assert "](01_bn_disparity/fig2cd_histograms.png)" in text
    # every model with its final accuracy and training time (smoke: 3 epochs)
    assert re.search(r"\| nsa \| 5 \| synthetic \| 01[0-9 ]* \| 3 \| \d+\.\d % \| \d+ s \|", text), text
    assert (results / "smoke" / "executed" / "01_bn_disparity.ipynb").is_file()
    assert (results / "smoke" / "claims.csv").read_text().startswith("notebook,statement,paper,reproduced,verdict,rule")


@pytest.mark.slow
def test_reproduce_reports_a_failing_notebook_in_one_line(results):
    # A data set no loader knows passes the profile but makes the notebook's setup cell raise.
    run = _nsa(results, "reproduce", "--profile", "smoke", "--notebooks", "01", "--set", "dataset=nonexistent")
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("nsa: notebook")]
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("nsa: notebook 01_bn_disparity failed in cell ")
    assert "ValueError: unknown data set 'nonexistent'" in lines[0]
    assert "(partial output: " in lines[0] and "Traceback" not in run.stderr
    assert (results / "smoke" / "executed" / "01_bn_disparity.ipynb").is_file()


def test_reproduce_rejects_a_missing_data_dir(tmp_path):
    run = _nsa(tmp_path, "reproduce", "--profile", "smoke", "--data-dir", str(tmp_path / "nowhere"), timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "does not exist" in run.stderr
    assert not (tmp_path / "smoke").exists()   # nothing ran


def test_reproduce_rejects_an_unknown_notebook(tmp_path):
    run = _nsa(tmp_path, "reproduce", "--profile", "smoke", "--notebooks", "42", timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "nsa: error: no notebook numbered '42'; choose from " + \
        ", ".join(nb.name[:2] for nb in NOTEBOOKS)
