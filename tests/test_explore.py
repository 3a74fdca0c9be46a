"""The Sec. 5 helpers: how Table 2 methods are scored, the OOD set fallback, NSA-id's OOD
ensemble (fresh architectures per image) and the below-chance flag of an OOD AUC."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nsa_core import claims as C
from nsa_core import explore as app
from nsa_core import data as D
from nsa_core import evaluate, metrics
from nsa_core import space as sp
from nsa_core.network import NetConfig, WiredNet
from nsa_core.profiles import at_paper_scale, get_profile


def _probs(T: int, N: int = 40, C: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, C, generator=g).mul(2).softmax(-1)


def test_scores_average_individuals_but_ensemble_the_others():
    labels = torch.randint(4, (40,), generator=torch.Generator().manual_seed(1))
    probs = {"wrn": _probs(1, seed=1), "single": _probs(3, seed=2), "nsa-id": _probs(3, seed=3)}
    table = app.scores(probs, labels, n_bins=5)
    assert list(table.index) == ["wrn", "single", "nsa-id"]
    indiv = [metrics.ece(p, labels, 5) for p in probs["single"]]
    assert table.loc["single", "ece"] == pytest.approx(sum(indiv) / 3)
    ensemble = probs["nsa-id"].mean(0)
    assert table.loc["nsa-id", "error"] == pytest.approx(100 * metrics.error(ensemble, labels))
    assert table.loc["nsa-id", "nll"] == pytest.approx(metrics.nll(ensemble, labels))
    assert table.loc["wrn", "brier"] == pytest.approx(metrics.brier(probs["wrn"][0], labels))


def test_paper_scale_only_for_the_paper_settings():
    assert at_paper_scale(get_profile("paper"))
    assert at_paper_scale(get_profile("paper", {"eval_batch": 100}))   # speed knob only
    assert not at_paper_scale(get_profile("paper", {"epochs": 4}))
    assert not at_paper_scale(get_profile("tiny"))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Table 2 method"):
        app.table2_runs(SimpleNamespace(profile=get_profile("smoke"), seed=0), "synthetic", ["dropout"])


@pytest.mark.parametrize("have", [{"svhn", "fashion-mnist"}, {"fashion-mnist"}, set()])
def test_ood_set_falls_back_to_fashion_mnist_and_says_so(monkeypatch, have):
    exp_notes: list[str] = []
    exp = SimpleNamespace(data_dir="/nonexistent", seed=0, note=exp_notes.append)
    split = D.Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), ["a"], "x")

    def load_ood(name, data_dir=None, n=None, seed=0):
        if name not in have:
            raise D.DataMissing(f"{name} missing")
        return split

    monkeypatch.setattr(app.evaluate, "load_ood", load_ood)
    got, name = app.ood_set(exp, "svhn", n=2)
    if "svhn" in have:
        assert (got, name, exp_notes) == (split, "svhn", [])
    elif have:
        assert name == "fashion-mnist" and got is split
        assert len(exp_notes) == 1 and "not comparable" in exp_notes[0] and "SVHN" in exp_notes[0]
    else:
        assert (got, name) == (None, None) and "skipped" in exp_notes[0]


# ----------------------------------------------------------------------------- 07: OOD

def test_below_chance_flags_an_interval_below_one_half():
    """An OOD AUC whose whole interval lies below 0.5 is named: the detector points the wrong way."""
    assert "BELOW CHANCE" in app.below_chance(C.Estimate(0.30, 0.20, 0.45))
    assert "BELOW CHANCE" in app.below_chance(C.Estimate(0.49, 0.48, 0.499))
    for e in (C.Estimate(0.45, 0.35, 0.55), C.Estimate(0.45, 0.40, 0.50), C.Estimate(0.8, 0.7, 0.9)):
        assert app.below_chance(e) == "", e


def test_ood_claim_names_a_below_chance_detector():
    """07's OOD claim says so when a row's AUC lies below chance, whatever the verdict."""
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0.0, 0.1, 60), rng.uniform(0.5, 1.0, 60)
    mi = {"nsa-id": (high, low), "wrn-dropout": (low, high), "nsa-id distinct": (low, high)}  # nsa-id: OOD *less* uncertain
    aucs = {row: C.auc_estimate(a, b) for row, (a, b) in mi.items()}
    assert aucs["nsa-id"].high < 0.5 < aucs["wrn-dropout"].low
    claims = []
    exp = SimpleNamespace(seed=0, claim=lambda statement, **kw: claims.append(dict(statement=statement, **kw)))
    app._ood_claims(exp, mi, aucs, "svhn", C.Gate(True, "test gate"))
    assert len(claims) == 1 and claims[0]["verdict"] == C.FAILS
    said = claims[0]["reproduced"]
    assert "BELOW CHANCE" in said and app.OOD_ROWS["nsa-id"] in said.split("BELOW CHANCE")[0]
    assert said.count("BELOW CHANCE") == 1    # the other rows lie above chance: not flagged


def test_ood_members_nsa_id_draws_fresh_architectures_per_image():
    """The "nsa-id" OOD row is NSA-id's ensemble as the authors evaluate it: T architectures
    drawn for each image on its own (evaluate.member_probs fresh=True, seeded by exp.seed), on
    the test images and the OOD ones alike; "nsa-id distinct" is its S architectures once each."""
    torch.manual_seed(0)
    nsa = WiredNet(sp.training_space(4, nodes=3, seed=0), NetConfig(width=0.25, nodes=3, cond_agg=True,
                                                                   cond_bn=True)).eval()
    mc = WiredNet(sp.fixed_architecture(sp.residual_wiring(3)), NetConfig(width=0.25, nodes=3, dropout=0.2)).eval()
    test, ood = D.synthetic("test", 24, seed=0), D.synthetic("test", 20, seed=1000)
    profile = get_profile("smoke")
    exp = SimpleNamespace(profile=profile, seed=3, test_set=lambda r=None, dataset=None, n=None: test)
    norm, batch = profile.explore.dataset, profile.explore.eval_batch
    distinct_in = evaluate.member_probs(nsa, test.images, norm, batch=batch)
    runs = {"wrn-dropout": [SimpleNamespace(model=mc)], "nsa-id": [SimpleNamespace(model=nsa)]}
    probs_in = {"wrn-dropout": evaluate.mc_dropout_probs(mc, test.images, norm, profile.mc_samples, batch=batch),
                "nsa-id": distinct_in}
    got = app.ood_members(exp, runs, probs_in, ood)
    assert set(got) == set(app.OOD_ROWS)
    for images, fresh in zip((test.images, ood.images), got["nsa-id"]):
        want = evaluate.member_probs(nsa, images, norm, batch=batch, fresh=True, seed=3)
        torch.testing.assert_close(fresh, want)
        assert not torch.allclose(fresh, evaluate.member_probs(nsa, images, norm, batch=batch))
    assert got["nsa-id distinct"][0] is distinct_in
    torch.testing.assert_close(got["nsa-id distinct"][1], evaluate.member_probs(nsa, ood.images, norm, batch=batch))
