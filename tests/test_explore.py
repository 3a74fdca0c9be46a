"""The Sec. 5 helpers: how Table 2 methods are scored, and the OOD set fallback."""
from types import SimpleNamespace

import pytest
import torch

from nsa_core import explore as app
from nsa_core import data as D
from nsa_core import metrics
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
        app.ensemble_models(SimpleNamespace(profile=get_profile("smoke")), "synthetic", ["dropout"])


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
