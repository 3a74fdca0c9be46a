"""The plan: which models each notebook needs, their state in the cache, and that the
declaration matches what the notebooks really asked for (their claims.json "models")."""
from pathlib import Path

import pytest
import torch

from nsa_core import data as D
from nsa_core import plan
from nsa_core.kinds import architectures
from nsa_core.profiles import PROFILES, get_profile

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_is_declared():
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert set(stems) <= set(plan.NOTEBOOK_MODELS) and plan.notebook_stems() == stems


def test_the_tiny_plan():
    specs = plan.specs("tiny", [f"{i:02d}" for i in range(1, 9)])
    kinds = [s.kind for s, _ in specs.values()]
    # 01/02: NSA and NSA-i at S = 500, 5000; 03: NSA-id-agg at 500; 04: NSA-i at 5, 50 (and 01's);
    # 05-07: WRN, WRN + dropout, 5 individuals, NSA-id on CIFAR-10 and CIFAR-100, and 05's sanity
    # section's NSA-i at S = 1 and S = 5 (not 04's: at tiny Sec. 5's models train a shorter
    # recipe; its individual and WRN are Table 2's); 08: three semi
    assert len(specs) == 28 and kinds.count("single") == 10 and kinds.count("nsa-i") == 6
    assert sorted(s.space for s, _ in specs.values() if s.kind == "nsa-i") == [1, 5, 5, 50, 500, 5000]
    shared = specs[get_profile("tiny").spec("nsa-i", space=500, seed=0).key][1]
    assert shared == ("01_bn_disparity", "02_instance_archs", "03_mode_collapse", "04_unseen_archs")
    assert specs[get_profile("tiny").spec("nsa-i", "explore", space=1).key][1] == ("05_ensemble",)
    assert set(plan.specs("tiny", ["1", "03"])) < set(specs)
    with pytest.raises(KeyError, match="no notebook numbered"):
        plan.specs("tiny", ["99"])


def test_09_trains_nothing_of_its_own_at_tiny():
    """At tiny, 09 compares five architectures: 05's individuals and the S = 5 models."""
    others = set(plan.specs("tiny", [f"{i:02d}" for i in range(1, 9)]))
    assert set(plan.specs("tiny", ["09"])) <= others


def test_the_whole_tiny_plan_and_the_tour(monkeypatch):
    """00's models are 01's where the profile's data are on disk, else the same two kinds on the
    synthetic set; 09 adds nothing at tiny."""
    monkeypatch.setattr(D, "on_disk", lambda *a, **k: True)
    with_data = plan.specs("tiny")
    assert len(with_data) == 28 and set(plan.specs("tiny", ["00"])) <= set(plan.specs("tiny", ["01"]))
    monkeypatch.setattr(D, "on_disk", lambda *a, **k: False)
    without = plan.specs("tiny")
    tour = [s for s, _ in plan.specs("tiny", ["00"]).values()]
    assert len(without) == 30 and set(without) - set(with_data) == {s.key for s in tour}
    assert [(s.kind, s.space, s.recipe.dataset) for s in tour] == [("nsa", 500, "synthetic"), ("nsa-i", 500, "synthetic")]
    explore = get_profile("tiny").explore   # the shorter recipe: minutes, not the understand models' 9 min each
    assert tour[0].recipe.synthetic_size == explore.train_size and tour[0].recipe.epochs == explore.epochs


def test_the_tiny_budget_goes_to_secs_3_and_4():
    """01-04's models train about 1,200 steps of 128 images, Sec. 5's a shorter demonstration;
    every test curve has at least the convergence gate's points in its last fifth."""
    from nsa_core.claims import LAST_PART, MIN_CURVE_POINTS
    from nsa_core.train import steps_per_epoch
    p = get_profile("tiny")
    steps = {name: r.epochs * steps_per_epoch(r.train_size or r.unlabelled, r.batch_size)
             for name, r in (("understand", p.understand), ("explore", p.explore), ("semi", p.semi))}
    assert steps["understand"] == 1200 and p.understand.batch_size == 128
    assert steps["explore"] * p.explore.batch_size < steps["understand"] * p.understand.batch_size / 4
    for name, r in (("understand", p.understand), ("explore", p.explore), ("semi", p.semi)):
        per_epoch = steps[name] // r.epochs   # evaluations every eval_every steps and at each epoch's end
        points = set(range(r.eval_every, steps[name] + 1, r.eval_every)) | set(range(per_epoch, steps[name] + 1, per_epoch))
        assert sum(t >= (1 - LAST_PART) * steps[name] for t in points) >= MIN_CURVE_POINTS, name


def test_train_all_starts_the_longest_model_first(tmp_path):
    """Longest first, so that the workers finish together: at tiny the per-architecture
    aggregation model of 03 (the most work), then 01-04's models, Sec. 5's last."""
    items = sorted(plan.build_plan("tiny", [f"{i:02d}" for i in range(1, 10)], models_dir=tmp_path),
                   key=lambda it: -it.work)
    assert items[0].spec.kind == "nsa-id-agg"
    understand = set(plan.specs("tiny", ["01", "02", "03", "04"]))
    n = len(understand)
    assert {it.key for it in items[:n]} == understand
    half = plan.Item(items[0].spec, (), None, plan.PARTIAL, epoch=items[0].spec.recipe.epochs // 2)
    assert half.work == items[0].work / 2


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_model_is_declared_once(profile):
    """No notebook asks for one model twice (05's sanity section shares Table 2's), and every
    spec of the plan is one model (one key, one spec)."""
    for stem in plan.NOTEBOOK_MODELS:
        keys = [s.key for s in plan.asked_by(stem, profile, data_dir="/nonexistent")]
        assert len(keys) == len(set(keys)), stem
    every = plan.specs(profile, data_dir="/nonexistent")
    assert all(spec.key == key for key, (spec, _) in every.items())
    assert len({spec for spec, _ in every.values()}) == len(every)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_05s_sanity_section_trains_one_architecture_three_ways(profile):
    p = get_profile(profile)
    s = plan.sanity(p)
    one = architectures(s["single"])
    assert (architectures(s["nsa-i S=1"]) == one).all()
    assert (architectures(s[f"nsa-i S={p.space_ensemble}"])[:1] == one).all()
    assert s["single"] == plan.table2(p, p.explore.dataset)["single"][0]
    assert s["wrn"] == plan.table2(p, p.explore.dataset)["wrn"][0]
    assert {spec.recipe for spec in s.values()} == {p.explore}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_09s_first_singles_are_05s_individuals(profile):
    p = get_profile(profile)
    singles = plan.proxy(p)["single"]
    assert len(singles) == p.proxy_archs and [s.arch_index for s in singles] == list(range(p.proxy_archs))
    assert singles[:p.space_ensemble] == plan.table2(p, p.explore.dataset)["single"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_09s_architecture_k_is_the_shared_spaces_architecture_k(profile):
    """Trained alone or under shared weights, architecture k of 09 is one wiring: each single's
    wiring is architecture k of the NSA-i (and NSA-id) space, whatever space its spec names."""
    p = get_profile(profile)
    d = plan.proxy(p)
    shared = architectures(d["nsa-i"][0])
    assert shared.shape[0] == p.proxy_archs
    assert (architectures(d["nsa-id"][0]) == shared).all()
    for k, single in enumerate(d["single"]):
        wiring = architectures(single)
        assert wiring.shape[0] == 1 and (wiring[0] == shared[k]).all(), k
    # the check can fail: the architectures of one space differ from one another
    assert len({shared[k].tobytes() for k in range(p.proxy_archs)}) == p.proxy_archs


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
