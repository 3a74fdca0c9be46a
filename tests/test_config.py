"""The one configuration: the paper profile is the paper's recipe, every value is written
once and overridden through one typed path, and every mistake is one clear ValueError."""
from __future__ import annotations

from dataclasses import fields

import pytest

from nsa_core.config import ModelSpec, Recipe, override, parse_sets
from nsa_core.kinds import KINDS, architectures
from nsa_core.profiles import PROFILES, at_paper_scale, get_profile


def test_paper_recipe_is_the_papers():
    p = get_profile("paper")
    r = p.understand
    assert p.explore == r   # the paper trains Secs. 3-4's and Sec. 5's supervised models alike
    assert (r.dataset, r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs) == \
        ("cifar10", 0.1, 0.9, 5e-4, 128, 300)
    assert (r.schedule, r.milestones, r.gamma, r.warmup_epochs) == ("step", (90, 180, 240), 0.2, 0.0)
    assert (r.cutout, r.width, r.nodes, r.dropout, r.aux_weight) == (16, 10.0, 8, 0.2, 0.1)
    assert (r.train_size, r.test_size) == (None, None)
    semi = p.semi
    assert (semi.epochs, semi.milestones, semi.batch_size, semi.aux_weight) == (100, (40, 80), 64, 0.0)
    assert (semi.labelled, semi.unlabelled, semi.consistency) == (4000, None, 20.0)


def test_paper_spec_carries_the_recipe():
    p = get_profile("paper")
    spec = p.spec("nsa-i", space=500)
    assert spec.recipe == p.understand and (spec.space, spec.sampling) == (500, "example")
    assert p.spec("nsa-i", recipe="explore", space=5).recipe == p.explore
    assert p.spec("wrn-dropout", semi="consistency").recipe == p.semi
    assert p.spec("wrn-dropout", recipe="explore", semi="consistency").recipe == p.semi
    tiny = get_profile("tiny", {"explore.epochs": 2})
    assert tiny.spec("nsa", recipe="explore", space=5).recipe.epochs == 2
    assert tiny.spec("nsa", space=5).recipe.epochs == tiny.understand.epochs != 2
    with pytest.raises(ValueError, match="unknown recipe 'train'"):
        p.spec("nsa", recipe="train")


def test_profiles_are_named_and_default_from_the_environment(monkeypatch, tmp_path):
    """The library reads no environment: get_profile() is tiny whatever $NSA_PROFILE says;
    the entry points read $NSA_PROFILE (a notebook's `setup` here; the CLI in test_cli)."""
    from nsa_core.experiment import setup

    assert set(PROFILES) == {"paper", "gpu", "tiny", "smoke"}
    assert all(p.name == n for n, p in PROFILES.items())
    monkeypatch.setenv("NSA_PROFILE", "smoke")
    assert get_profile().name == "tiny"
    exp = setup("00_x", results_dir=tmp_path, device="cpu")
    assert exp.profile.name == "smoke" and exp.profile.understand.dataset == "synthetic"
    assert setup("00_x", "paper", results_dir=tmp_path, device="cpu").profile.name == "paper"
    monkeypatch.delenv("NSA_PROFILE")
    assert setup("00_x", results_dir=tmp_path, device="cpu").profile.name == "tiny"


def test_overrides_are_typed_and_reach_the_right_recipe():
    p = get_profile("tiny", {"epochs": "4", "milestones": "(1,2)", "lr": "0.05", "width": "1",
                             "train_size": "None", "dataset": "svhn", "attacks": "PGD1-2-1",
                             "semi.epochs": "1", "n_archs": "7"})
    for r in (p.understand, p.explore):
        assert r.epochs == 4 and type(r.epochs) is int and r.milestones == (1, 2)
        assert r.lr == 0.05 and type(r.width) is float and r.width == 1.0
        assert r.train_size is None and r.dataset == "svhn"
    assert p.attacks == ("PGD1-2-1",) and p.n_archs == 7
    assert p.semi.epochs == 1 and p.semi.lr == 0.05   # a bare key reaches every recipe, semi.KEY only semi
    one = get_profile("tiny", {"explore.lr": "0.3"})
    assert one.explore.lr == 0.3 and one.understand.lr == one.semi.lr == PROFILES["tiny"].understand.lr != 0.3
    assert get_profile("tiny", {"attacks": "PGD1-2-1, PGD2-3-1"}).attacks == ("PGD1-2-1", "PGD2-3-1")
    assert get_profile("tiny", {"ensemble_datasets": "('svhn',)"}).ensemble_datasets == ("svhn",)
    assert get_profile("tiny", {"milestones": "[3, 4]"}).understand.milestones == (3, 4)
    assert get_profile("tiny", {"milestones": "5"}).understand.milestones == (5,)
    assert get_profile("tiny", {"milestones": [6, 7]}).understand.milestones == (6, 7)
    assert get_profile("tiny", {}) is PROFILES["tiny"]


def test_semi_spec_takes_bare_keys_too():
    """`--set semi=consistency --set epochs=7` trains 7 epochs: a bare key sets the recipe
    of the model being trained."""
    p = get_profile("smoke")
    spec = p.spec("nsa-id", space=3, semi="consistency", epochs=7, batch_size=8, milestones="(2,)")
    r = spec.recipe
    assert (r.epochs, r.batch_size, r.milestones, r.aux_weight) == (7, 8, (2,), 0.0)


@pytest.mark.parametrize("overrides, words", [
    ({"epoch": "4"}, "unknown setting 'epoch'"),
    ({"name": "x"}, "unknown setting 'name'"),
    ({"epochs": "four"}, "epochs takes a number"),
    ({"epochs": "4.5"}, "epochs takes a whole number"),
    ({"lr": "[0.1]"}, "lr takes a number"),
    ({"epochs": "0"}, "epochs must be positive"),
    ({"batch_size": "-1"}, "batch_size must be positive"),
    ({"width": "0"}, "width must be positive"),
    ({"semi.epochs": "0"}, "epochs must be positive"),
    ({"semi.epoch": "3"}, "unknown setting 'semi.epoch'"),
    ({"explore.epochs": "four"}, "explore.epochs takes a number"),
    ({"train.epochs": "3"}, "unknown setting 'train.epochs'"),
])
def test_bad_overrides_are_one_line_value_errors(overrides, words):
    with pytest.raises(ValueError) as e:
        get_profile("tiny", overrides)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'huge'; choose one of paper, tiny, gpu, smoke"):
        get_profile("huge")


def test_parse_sets():
    assert parse_sets(["epochs=4", " lr = 0.2 ", "milestones=(1,2)"]) == \
        {"epochs": "4", "lr": "0.2", "milestones": "(1,2)"}
    assert parse_sets(None) == {}
    for bad in ("epochs", "=4"):
        with pytest.raises(ValueError, match="key=value"):
            parse_sets([bad])


def test_at_paper_scale_ignores_only_how_a_run_is_carried_out():
    assert at_paper_scale(get_profile("paper"))
    assert at_paper_scale(get_profile("paper", {"eval_batch": 100, "log_every": 5}))
    assert not at_paper_scale(get_profile("paper", {"epochs": 4}))
    assert not at_paper_scale(get_profile("paper", {"semi.epochs": 4}))
    assert not at_paper_scale(get_profile("paper", {"n_archs": 20}))
    assert not at_paper_scale(get_profile("tiny"))
    assert not at_paper_scale(get_profile("paper"), {"T_MAX": (50, 500)})
    assert at_paper_scale(get_profile("paper"), {"T_MAX": (500, 500)})


# ------------------------------------------------------------------------ model specs

def test_spec_key_and_json_round_trip():
    spec = get_profile("smoke").spec("nsa-id", space=3)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.key == spec.key and isinstance(again.recipe.milestones, tuple)
    assert spec.key.startswith("nsa-id-")
    assert override(spec, {"seed": 1}).key != spec.key and override(spec, {"recipe.lr": 0.2}).key != spec.key
    assert override(spec, {"recipe.lr": "0.2"}).recipe.lr == 0.2
    assert get_profile("smoke").spec("nsa-id", space=3).key == spec.key


def test_key_ignores_what_does_not_change_the_weights():
    spec = get_profile("smoke").spec("nsa-i", space=3)
    assert override(spec, {"recipe.eval_batch": 7, "recipe.log_every": 3}).key == spec.key
    assert get_profile("smoke").spec("nsa-i", space=3, eval_every=2).key == spec.key
    # semi-only keys, supervised model
    assert override(spec, {"recipe.labelled": 30, "recipe.consistency": 1.0}).key == spec.key
    semi = get_profile("smoke").spec("nsa-id", space=3, semi="consistency")
    assert override(semi, {"recipe.labelled": 30}).key != semi.key


def test_every_recipe_field_is_validated_or_typed():
    for f in fields(Recipe):
        assert f.type, f.name
    with pytest.raises(ValueError, match="schedule"):
        Recipe(schedule="cosine")
    with pytest.raises(ValueError, match="dropout"):
        Recipe(dropout=1.0)


def test_spec_kinds():
    p = get_profile("smoke")
    assert {k: ModelSpec(kind=k).sampling for k in KINDS} == {
        "nsa": "batch", "nsa-i": "example", "nsa-id": "example", "nsa-id-agg": "example",
        "wrn": "fixed", "wrn-dropout": "fixed", "single": "fixed", "residual": "fixed"}
    assert p.spec("wrn").space == 1 and p.spec("residual").space == 1
    # WRN-28-10† is the residual wiring with learnable aggregation coefficients, "residual" without
    assert (architectures(p.spec("residual")) == architectures(p.spec("wrn"))).all()
    assert (architectures(p.spec("wrn-dropout")) == architectures(p.spec("wrn"))).all()
    assert architectures(p.spec("wrn")).shape[0] == 1
    assert KINDS["wrn"].cond_agg and not KINDS["residual"].cond_agg
    single = p.spec("single", space=5, arch_index=3)
    nsa = p.spec("nsa", space=5)
    assert (architectures(single) == architectures(nsa)[3:4]).all()
    with pytest.raises(ValueError, match="unknown kind 'nsa-x'"):
        ModelSpec(kind="nsa-x")
    with pytest.raises(ValueError, match="space must be 1"):
        ModelSpec(kind="wrn", space=5)
    with pytest.raises(ValueError, match="space must be 1"):
        ModelSpec(kind="residual", space=5)
    with pytest.raises(ValueError, match="outside the space"):
        ModelSpec(kind="single", space=5, arch_index=5)
    with pytest.raises(ValueError, match="semi-supervised mode"):
        ModelSpec(kind="nsa-i", semi="pseudo-label")
