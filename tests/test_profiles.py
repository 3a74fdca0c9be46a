"""Profiles and model specs: the paper profile is SPEC section 4, overrides are typed, and
every mistake is one clear KeyError."""
from __future__ import annotations

import pytest

from nsa_core.models import KINDS, ModelSpec, architectures
from nsa_core.profiles import PROFILES, get_profile, parse_sets


def test_paper_profile_is_spec_section_4():
    p = get_profile("paper")
    assert (p.dataset, p.lr, p.momentum, p.weight_decay, p.batch_size, p.epochs) == \
        ("cifar10", 0.1, 0.9, 5e-4, 128, 300)
    assert (p.schedule, p.milestones, p.gamma, p.warmup_epochs) == ("step", (90, 180, 240), 0.2, 0.0)
    assert (p.cutout, p.width, p.nodes, p.dropout) == (16, 10.0, 8, 0.2)
    assert (p.train_size, p.test_size) == (None, None)


def test_paper_spec_carries_the_profile():
    spec = ModelSpec.from_profile(get_profile("paper"), "nsa-i", space=500)
    assert (spec.lr, spec.momentum, spec.weight_decay, spec.batch_size, spec.epochs) == (0.1, 0.9, 5e-4, 128, 300)
    assert (spec.milestones, spec.gamma, spec.cutout, spec.width, spec.nodes) == ((90, 180, 240), 0.2, 16, 10.0, 8)
    assert (spec.space, spec.sampling, spec.dropout) == (500, "example", 0.0)
    assert ModelSpec.from_profile(get_profile("paper"), "wrn-dropout").dropout == 0.2


def test_profiles_are_named_and_default_from_the_environment(monkeypatch):
    assert set(PROFILES) == {"paper", "tiny", "smoke"}
    assert all(p.name == n for n, p in PROFILES.items())
    monkeypatch.delenv("NSA_PROFILE", raising=False)
    assert get_profile().name == "tiny"
    monkeypatch.setenv("NSA_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile().dataset == "synthetic"


def test_overrides_are_typed():
    p = get_profile("tiny", {"epochs": "4", "milestones": "(1,2)", "lr": "0.05", "width": "1",
                             "train_size": "None", "dataset": "svhn", "attacks": "PGD1-2-1"})
    assert p.epochs == 4 and type(p.epochs) is int
    assert p.milestones == (1, 2)
    assert p.lr == 0.05 and type(p.width) is float and p.width == 1.0
    assert p.train_size is None and p.dataset == "svhn"
    assert p.attacks == ("PGD1-2-1",)
    assert get_profile("tiny", {"attacks": "PGD1-2-1, PGD2-3-1"}).attacks == ("PGD1-2-1", "PGD2-3-1")
    assert get_profile("tiny", {"ensemble_datasets": "('svhn',)"}).ensemble_datasets == ("svhn",)
    assert get_profile("tiny", {"milestones": "[3, 4]"}).milestones == (3, 4)
    assert get_profile("tiny", {"milestones": "5"}).milestones == (5,)
    assert get_profile("tiny", {"milestones": [6, 7]}).milestones == (6, 7)
    assert get_profile("tiny", {"epochs": 3}).epochs == 3
    assert get_profile("tiny", {}) is PROFILES["tiny"]


@pytest.mark.parametrize("overrides, words", [
    ({"epoch": "4"}, "unknown profile key 'epoch'"),
    ({"name": "x"}, "unknown profile key 'name'"),
    ({"epochs": "four"}, "epochs"),
    ({"epochs": "4.5"}, "epochs"),
    ({"lr": "[0.1]"}, "lr"),
])
def test_bad_overrides_are_one_line_key_errors(overrides, words):
    with pytest.raises(KeyError) as e:
        get_profile("tiny", overrides)
    msg = e.value.args[0]
    assert words in msg and "\n" not in msg


def test_unknown_profile():
    with pytest.raises(KeyError, match="unknown profile 'huge'; choose one of paper, tiny, smoke"):
        get_profile("huge")


def test_parse_sets():
    assert parse_sets(["epochs=4", " lr = 0.2 ", "milestones=(1,2)"]) == \
        {"epochs": "4", "lr": "0.2", "milestones": "(1,2)"}
    assert parse_sets(None) == {}
    for bad in ("epochs", "=4"):
        with pytest.raises(KeyError, match="key=value"):
            parse_sets([bad])


# ------------------------------------------------------------------------ model specs

def test_spec_key_and_json_round_trip():
    spec = ModelSpec.from_profile(get_profile("smoke"), "nsa-id", space=3, aux=True)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.key == spec.key and isinstance(again.milestones, tuple)
    assert spec.key.startswith("nsa-id-")
    assert spec.with_(seed=1).key != spec.key
    assert ModelSpec.from_profile(get_profile("smoke"), "nsa-id", space=3, aux=True).key == spec.key


def test_spec_kinds():
    p = get_profile("smoke")
    assert {k: ModelSpec(kind=k, space=1).sampling for k in KINDS} == {
        "nsa": "batch", "nsa-i": "example", "nsa-id": "example", "nsa-id-agg": "example",
        "wrn": "fixed", "wrn-dropout": "fixed", "single": "fixed"}
    assert ModelSpec.from_profile(p, "wrn").space == 1
    single = ModelSpec.from_profile(p, "single", space=5, arch_index=3)
    nsa = ModelSpec.from_profile(p, "nsa", space=5)
    assert (architectures(single) == architectures(nsa)[3:4]).all()
    with pytest.raises(KeyError, match="unknown kind 'nsa-x'"):
        ModelSpec(kind="nsa-x")
    with pytest.raises(ValueError, match="space must be 1"):
        ModelSpec(kind="wrn", space=5)
    with pytest.raises(ValueError, match="outside the space"):
        ModelSpec(kind="single", space=5, arch_index=5)
    with pytest.raises(KeyError, match="semi-supervised mode"):
        ModelSpec(kind="nsa-i", semi="pseudo-label")


def test_semi_spec_takes_the_semi_values():
    p = get_profile("smoke")
    spec = ModelSpec.from_profile(p, "nsa-id", space=3, semi="consistency")
    assert (spec.epochs, spec.milestones, spec.batch_size) == (p.semi_epochs, p.semi_milestones, p.semi_batch)
    assert (spec.labelled, spec.consistency) == (p.labelled, p.consistency)
    assert ModelSpec.from_profile(p, "wrn", semi="labelled-only").consistency == 0.0
    assert ModelSpec.from_profile(p, "nsa-id", space=3, semi="consistency", epochs=7).epochs == 7
