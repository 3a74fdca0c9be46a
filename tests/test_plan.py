"""The plan: which models each notebook needs, their state in the cache, and that the
declaration matches what the notebooks really asked for (their claims.json "models")."""
from pathlib import Path

import pytest
import torch

from nsa_core import plan
from nsa_core.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_is_declared():
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert set(stems) <= set(plan.NOTEBOOK_MODELS) and plan.notebook_stems() == stems


def test_the_tiny_plan():
    specs = plan.specs("tiny", [f"{i:02d}" for i in range(1, 9)])
    kinds = [s.kind for s, _ in specs.values()]
    # 01/02: NSA and NSA-i at S = 500, 5000; 03: NSA-id-agg at 500; 04: NSA-i at 5, 50 (and 01's);
    # 05-07: WRN, WRN + dropout, 5 individuals, NSA-id on CIFAR-10 and CIFAR-100; 08: three semi
    assert len(specs) == 26 and kinds.count("single") == 10 and kinds.count("nsa-i") == 4
    shared = specs[get_profile("tiny").spec("nsa-i", space=500, seed=0).key][1]
    assert shared == ("01_bn_disparity", "02_instance_archs", "03_mode_collapse", "04_unseen_archs")
    assert set(plan.specs("tiny", ["1", "03"])) < set(specs)
    with pytest.raises(KeyError, match="no notebook numbered"):
        plan.specs("tiny", ["99"])


def test_09_trains_nothing_of_its_own_at_tiny():
    """At tiny, 09 compares five architectures: 05's individuals and the S = 5 models."""
    others = set(plan.specs("tiny", [f"{i:02d}" for i in range(1, 9)]))
    assert set(plan.specs("tiny", ["09"])) <= others


def test_overrides_and_seed_give_other_specs():
    base = set(plan.specs("smoke", ["01"]))
    assert set(plan.specs("smoke", ["01"], sets={"epochs": 1})).isdisjoint(base)
    assert set(plan.specs("smoke", ["01"], seed=1)).isdisjoint(base)


def test_states_in_the_cache(tmp_path):
    items = plan.build_plan("smoke", ["03"], tmp_path)
    assert [it.state for it in items] == [plan.MISSING, plan.MISSING]
    partial, finished = items[0].folder, items[1].folder
    partial.mkdir(parents=True)
    torch.save({"progress": {"epoch": 2}}, partial / "checkpoint.pt")
    finished.mkdir(parents=True)
    (finished / "manifest.json").write_text("{}")
    items = plan.build_plan("smoke", ["03"], tmp_path)
    assert items[0].state == plan.PARTIAL and items[0].epoch == 2 and items[0].describe() == "partial (2/3 epochs)"
    # a manifest alone is no trained model: listed damaged, and train-all trains it again
    assert items[1].state == plan.DAMAGED and items[1].needs_training and "is not a manifest" in items[1].note


def test_missing_data_is_named_not_trained(tmp_path):
    items = plan.build_plan("tiny", ["07"], tmp_path / "models", data_dir=tmp_path / "nowhere")
    assert items and all(it.state == plan.NO_DATA and not it.needs_training for it in items)
    assert "cifar10" in items[0].note
