"""The notebook infrastructure (experiment.py) and the report (reproduce.write_report),
without training anything."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from nsa_core import claims as C
from nsa_core import data as D
from nsa_core import experiment as X
from nsa_core.cache import Obtained
from nsa_core.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, SANITY
from nsa_core.experiment import Trained, setup
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
    assert exp.seed == 0


def test_relative_results_dir_resolves_against_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("NSA_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    exp = setup("99_try", profile="smoke", results_dir=str(tmp_path / "abs"))
    assert exp.out == tmp_path / "abs" / "smoke" / "99_try"
    assert (repo_root() / "pyproject.toml").is_file()


def test_test_set_is_the_training_logs_evaluation_subset(exp):
    test = exp.test_set()
    size = exp.profile.understand.test_size
    assert len(test) == size
    full = D.load("synthetic", "test")
    order = D.eval_order(len(full), seed=0)[:size]
    assert (test.labels == full.labels[order]).all()
    assert len(exp.test_set(n=10)) == 10
    assert exp.test_set() is test                                       # loaded once
    assert len(exp.test_set(exp.profile.explore)) == exp.profile.explore.test_size


def test_claims_figures_tables_and_notes_land_in_claims_json(exp):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    exp.save_figure(fig, "curve")
    plt.close(fig)
    exp.save_table(pd.DataFrame({"a": [1]}), "numbers")
    above = C.Estimate(1.0, 0.5, 1.5)
    exp.claim("x beats y", paper="1 > 0", reproduced=f"x - y = {above}", verdict=C.verdict(above), rule="x > y")
    exp.claim("levels match", paper="1", reproduced="2", verdict=C.verdict(above, comparable=False), rule="|x-1|<0.1")
    exp.note("a data set was missing")
    table = exp.finish()
    assert {"curve.png", "curve.svg", "numbers.csv", "claims.json"} <= {p.name for p in exp.out.iterdir()}
    record = json.loads((exp.out / "claims.json").read_text())
    assert record["notebook"] == "99_try" and record["profile"] == "smoke"
    assert [c["verdict"] for c in record["claims"]] == [HOLDS, NOT_COMPARABLE]
    assert record["figures"] == ["99_try/curve.png"] and record["tables"] == ["99_try/numbers.csv"]
    assert record["notes"] == ["a data set was missing"]
    assert list(table.columns) == ["statement", "paper", "reproduced", "verdict", "rule", "kind"]
    assert record["claims"][0]["reproduced"] == "x - y = 1.000 [0.500, 1.500]"
    assert C.verdict(0 - above) == FAILS
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
    assert "**1 claims tested.** 1 paper claim: 1 hold, 0 do not hold, 0 inconclusive" in text
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


# ----------------------------------------------------------- models, cached results, gate

def _curve(final: float, slope: float, steps: int = 100, points: int = 20) -> pd.DataFrame:
    step = np.linspace(steps / points, steps, points)
    return pd.DataFrame({"step": step, "epoch": step / steps, "test_loss": 1.0,
                         "test_acc": final + slope * (step / steps - 1)})


def test_trained_returns_the_cached_model_with_its_curve(exp, monkeypatch, tmp_path):
    """exp.trained: the model of a spec from the cache (cache.obtain, with the experiment's
    models folder, data folder, device and settings), its history and its test curve
    (curve.csv), and the spec's key recorded once in claims.json's models."""
    folder = tmp_path / "one-model"
    folder.mkdir()
    _curve(0.5, 0.0).to_csv(folder / "curve.csv", index=False)
    history = pd.DataFrame({"epoch": [1], "test_acc": [0.5]})
    calls = []

    def obtain(spec, root, data_dir, device, progress=True, settings=None):
        calls.append((spec, root, data_dir, device, settings))
        return Obtained("the model", history, "loaded", folder)

    monkeypatch.setattr(X, "obtain", obtain)
    spec = exp.profile.spec("nsa-i", space=5)
    run = exp.trained(spec)
    assert isinstance(run, Trained) and (run.spec, run.model, run.history) == (spec, "the model", history)
    pd.testing.assert_frame_equal(run.curve, pd.read_csv(folder / "curve.csv"))
    assert calls == [(spec, exp.models_dir, exp.data_dir, exp.device, exp.settings)]
    assert run.label == "NSA-i S=5"
    exp.trained(spec)
    assert exp.models == [spec.key]
    exp.finish()
    assert json.loads((exp.out / "claims.json").read_text())["models"] == [spec.key]


def test_cached_computes_once_per_key(exp):
    """exp.cached keeps a result under results/<profile>/_shared by name and a hash of its key:
    the same key is computed once (also by another notebook of the profile), another key again."""
    calls = []

    def compute(v):
        calls.append(v)
        return {"value": v}

    assert exp.cached("numbers", {"model": "a", "n": 1}, lambda: compute(1)) == {"value": 1}
    assert exp.cached("numbers", {"n": 1, "model": "a"}, lambda: compute(2)) == {"value": 1}   # key order: same
    assert exp.cached("numbers", {"model": "b", "n": 1}, lambda: compute(3)) == {"value": 3}
    other = setup("98_other", profile="smoke")
    assert other.cached("numbers", {"model": "a", "n": 1}, lambda: compute(4)) == {"value": 1}
    assert calls == [1, 3]
    shared = exp.out.parent / "_shared"
    assert len(list(shared.glob("numbers_*.pt"))) == 2
    next(shared.glob("numbers_*.pt")).write_bytes(b"torn")              # unreadable: computed again
    exp.cached("numbers", {"model": "a", "n": 1}, lambda: compute(5))
    exp.cached("numbers", {"model": "b", "n": 1}, lambda: compute(6))
    assert len(calls) == 3 and calls[-1] in (5, 6)


def test_gate_judges_the_runs_curves(exp):
    """exp.gate is claims.gate on the runs' test curves and training batch sizes."""
    spec = exp.profile.spec("nsa-i", space=5)
    flat = Trained(spec, None, pd.DataFrame(), _curve(0.5, 0.0))
    rising = Trained(spec, None, pd.DataFrame(), _curve(0.5, 0.5))
    assert exp.gate({"a": flat, "b": flat}, "converged").comparable
    gate = exp.gate({"a": flat, "b": rising}, "converged")
    assert not gate.comparable and "b: " in gate.text and "not converged" in gate.text
    matched = exp.gate({"a": flat, "b": rising}, "matched")
    assert matched.comparable and f"of {spec.recipe.batch_size} images" in matched.text
    short = Trained(spec, None, pd.DataFrame(), _curve(0.5, 0.0, steps=50))
    assert not exp.gate({"a": flat, "b": short}, "matched").comparable


def test_figure_is_saved_and_closed_outside_a_notebook(exp, capsys):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    exp.figure(fig, "line")
    assert not plt.fignum_exists(fig.number)
    assert (exp.out / "line.png").is_file() and (exp.out / "line.svg").is_file()
    assert exp.figures == ["99_try/line.png"]
    exp.say(f"read {repo_root() / 'data'} and **bold**")
    assert "read data and **bold**" in capsys.readouterr().err


def test_settings_table_names_the_training_precision_beside_the_authors_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    row = "precision (training here)"
    auto = setup("99_try", profile="smoke", device="cpu")   # on CUDA "auto" is bf16 whatever the CPU
    monkeypatch.setattr(X.runtime, "native_bf16", lambda: True)
    assert auto.settings_table("understand", ["width"]).loc[row].tolist() == ["bf16", "fp32"]
    fp32 = setup("99_try", profile="smoke", device="cpu", overrides={"precision": "fp32"})
    assert fp32.settings_table("understand", ["width"]).loc[row, "this run"] == "fp32"   # asked beats native
    monkeypatch.setattr(X.runtime, "native_bf16", lambda: False)
    assert auto.settings_table("explore", ["width"]).loc[row, "this run"] == "fp32"
