"""The notebook infrastructure (experiment.py) and the report (reproduce.write_report),
without training anything."""
import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from nsa_core import data as D
from nsa_core.experiment import FAILS, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, SANITY, setup
from nsa_core.paths import repo_root
from nsa_core.reproduce import select_notebooks, write_report


@pytest.fixture
def exp(tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("NSA_MODELS_DIR", raising=False)
    return setup("99_try", profile="smoke", overrides={"n_archs": 3})


def test_setup_places_outputs_and_models_under_the_results_dir(exp, tmp_path):
    assert exp.out == tmp_path / "smoke" / "99_try" and exp.out.is_dir()
    assert exp.models_dir == tmp_path / "models"
    assert exp.profile.n_archs == 3
    assert exp.data_dir == repo_root() / "data"          # relative paths follow the repo, not the cwd
    assert exp.spec("nsa-i", space=5).seed == exp.seed == 0


def test_relative_results_dir_resolves_against_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("NSA_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    exp = setup("99_try", profile="smoke", results_dir=str(tmp_path / "abs"))
    assert exp.out == tmp_path / "abs" / "smoke" / "99_try"
    assert (repo_root() / "pyproject.toml").is_file()


def test_test_set_is_the_training_logs_evaluation_subset(exp):
    test = exp.test_set()
    assert len(test) == exp.profile.train.test_size
    full = D.load("synthetic", "test")
    order = D.eval_order(len(full), seed=0)[: exp.profile.train.test_size]
    assert (test.labels == full.labels[order]).all()
    assert len(exp.test_set(n=10)) == 10


def test_claims_figures_tables_and_notes_land_in_claims_json(exp):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    exp.save_figure(fig, "curve")
    plt.close(fig)
    exp.save_table(pd.DataFrame({"a": [1]}), "numbers")
    exp.claim("x beats y", paper="1 > 0", reproduced="2 > 1", verdict=exp.verdict(True), rule="x > y")
    exp.claim("levels match", paper="1", reproduced="2", verdict=exp.verdict(True, comparable=False), rule="|x-1|<0.1")
    exp.note("a data set was missing")
    table = exp.finish()
    assert {"curve.png", "curve.svg", "numbers.csv", "claims.json"} <= {p.name for p in exp.out.iterdir()}
    record = json.loads((exp.out / "claims.json").read_text())
    assert record["notebook"] == "99_try" and record["profile"] == "smoke"
    assert [c["verdict"] for c in record["claims"]] == [HOLDS, NOT_COMPARABLE]
    assert record["figures"] == ["99_try/curve.png"] and record["tables"] == ["99_try/numbers.csv"]
    assert record["notes"] == ["a data set was missing"]
    assert list(table.columns) == ["statement", "paper", "reproduced", "verdict", "rule", "kind"]
    assert exp.verdict(False) == FAILS
    assert record["knobs"] == {} and record["paper_scale"] is False


def test_knobs_are_recorded_and_enter_the_paper_scale_test(exp):
    assert exp.knob("N_BINS", 10, 15) == 10
    assert not exp.paper_scale
    exp.finish()
    record = json.loads((exp.out / "claims.json").read_text())
    assert record["knobs"] == {"N_BINS": {"value": 10, "paper": 15}}


def test_claims_and_notes_carry_no_absolute_paths_and_a_kind(exp):
    exp.claim("s", "p", f"read {repo_root() / 'data'}", INCONCLUSIVE, "r", kind=SANITY)
    exp.note(f"missing {repo_root() / 'data' / 'svhn'}")
    with pytest.raises(ValueError, match="kind must be one of"):
        exp.claim("s", "p", "r", HOLDS, "r", kind="opinion")
    assert exp.claims[0]["reproduced"] == "read data" and exp.claims[0]["kind"] == SANITY
    assert exp.notes == ["missing data/svhn"]


def test_claim_rejects_a_made_up_verdict(exp):
    with pytest.raises(ValueError, match="verdict must be one of"):
        exp.claim("s", "p", "r", "probably", "rule")


def test_setup_removes_a_stale_claims_json(exp, tmp_path):
    exp.finish()
    setup("99_try", profile="smoke")
    assert not (exp.out / "claims.json").exists()


def test_write_report_gathers_every_notebook(exp, tmp_path):
    fig, _ = plt.subplots()
    exp.save_figure(fig, "fig a")
    plt.close(fig)
    exp.claim("a | b", paper="p", reproduced="r", verdict=HOLDS, rule="rule")
    exp.note("note one")
    exp.finish()
    path = write_report("smoke", tmp_path, {"99_try": 75.0})
    text = path.read_text()
    assert path == tmp_path / "smoke" / "REPORT.md"
    assert "| 99_try | a \\| b | p | r | holds | rule | paper claim |" in text      # pipes escaped in cells
    assert "![fig a](99_try/fig%20a.png)" in text and "- 99_try: note one" in text
    assert "| 99_try | 1.2 min |" in text and "| n_archs | 3 |" in text
    assert "## Models\n\nNone recorded." in text      # no declared notebook, no models
    assert "1 claims tested" in text and "paper claims: 1**: 1 hold" in text
    assert pd.read_csv(tmp_path / "smoke" / "claims.csv").notebook.tolist() == ["99_try"]


def test_select_notebooks_by_number():
    every = select_notebooks(None)
    assert [nb.name[:2] for nb in every] == sorted(nb.name[:2] for nb in every)
    first = every[0].name[:2]
    assert select_notebooks([first, str(int(first)), every[0].stem]) == [every[0]]
    with pytest.raises(KeyError, match="no notebook numbered '99'"):
        select_notebooks(["99"])


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    from nsa_core.reproduce import update_readme

    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True)
    pd.DataFrame([{"notebook": "01_x", "statement": "s | pipe", "paper": "0.3", "reproduced": "0.4",
                   "verdict": "holds", "rule": "r"}]).to_csv(folder / "claims.csv", index=False)
    (folder / "timings.json").write_text('{"01_x": 120}')
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:tiny:start -->\nOLD-BLOCK\n<!-- claims:tiny:end -->\noutro\n")
    assert update_readme("tiny", tmp_path / "results", readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "OLD-BLOCK" not in text
    assert "| 01_x | s \\| pipe | 0.3 | 0.4 | holds | paper claim |" in text and "2.0 min" in text
    assert not update_readme("smoke", tmp_path / "results", readme)   # no block for smoke
