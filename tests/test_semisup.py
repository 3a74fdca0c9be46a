"""Semi-supervised training (paper Sec. 5.3, notebook 08) as the authors' script does it:
every image of a step (labelled and unlabelled) augmented twice, independently; both views of
all of them through the network; the consistency over all outputs divided by classes x
images; the labelled-only baseline the same steps at weight 0; a random labelled split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nsa_core import cache as C, data as D, step as ST, train as T
from nsa_core.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.mark.parametrize("kind,space", [("nsa-id", 3), ("wrn-dropout", 1)])
def test_consistency_training_logs_its_loss(tmp_path, kind, space):
    spec = SMOKE.spec(kind, space=space, semi="consistency")
    r = spec.recipe
    assert r == SMOKE.semi == SMOKE.spec(kind, "explore", space=space, semi="consistency").recipe
    assert r.consistency == 20.0 and r.labelled == SMOKE.semi.labelled and r.aux_weight == 0
    model, hist = C.get_or_train(spec, tmp_path, device="cpu", progress=False)
    assert model.aux is None   # the semi-supervised runs have no auxiliary head
    assert "consistency" in hist.columns and len(hist) == SMOKE.semi.epochs
    assert np.isfinite(hist.consistency).all() and (hist.consistency > 0).all()
    assert np.isfinite(hist.train_loss).all() and not model.training


def _record_steps(monkeypatch) -> list[dict]:
    calls = []
    original = T.semi_step

    def recording(model, opt, view1, view2, y, arch1, arch2, weight, amp):
        calls.append(dict(view1=view1.clone(), view2=view2.clone(), y=y.clone(), arch1=arch1.clone(),
                          arch2=arch2.clone(), weight=weight))
        return original(model, opt, view1, view2, y, arch1, arch2, weight, amp)

    monkeypatch.setattr(T, "semi_step", recording)
    return calls


@pytest.mark.parametrize("mode", ["consistency", "labelled-only"])
def test_both_views_hold_all_images_augmented_independently(tmp_path, monkeypatch, mode):
    calls = _record_steps(monkeypatch)
    spec = SMOKE.spec("nsa-id", space=3, semi=mode, epochs=1, labelled=64, batch_size=16, synthetic_size=256)
    T.train(spec, tmp_path / mode, progress=False)
    data = T.load_data(spec, dev=torch.device("cpu"))
    steps = T.steps_per_epoch(256 - 64, 16)
    assert len(calls) == steps
    for c in calls:
        assert len(c["view1"]) == len(c["view2"]) == 32 and len(c["y"]) == 16   # 16 labelled + 16 unlabelled
        assert not torch.equal(c["view1"], c["view2"])         # two augmentations, not one reused
        assert not torch.equal(c["arch1"], c["arch2"])         # other architectures for view 2
    # the labelled images come from the labelled part, in passes without replacement
    assert set(torch.cat([c["y"] for c in calls[:4]]).tolist()) <= set(data.y[:64].tolist())
    weights = [c["weight"] for c in calls]
    if mode == "labelled-only":
        assert weights == [0.0] * steps
    else:
        assert all(0 < w <= 20.0 for w in weights) and weights == sorted(weights)


def test_consistency_is_the_authors_formula():
    a, b = torch.randn(128, 10), torch.randn(128, 10)
    by_hand = sum(((a[i, k] - b[i, k]) ** 2).item() for i in range(128) for k in range(10)) / (10 * 128)
    assert ST.consistency(a, b).item() == pytest.approx(by_hand, rel=1e-6)


class _Toy(nn.Module):
    """A linear model that records what each forward sees."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x, arch):
        self.seen.append((len(x), torch.is_grad_enabled()))
        return self.fc(x)


def test_semi_step_loss_and_forwards():
    torch.manual_seed(0)
    model = _Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    v1, v2, y = torch.randn(8, 4), torch.randn(8, 4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        l1, l2 = model.fc(v1), model.fc(v2)
    expected = F.cross_entropy(l1[:4], y) + 2.0 * ((l1 - l2) ** 2).sum() / (3 * 8)
    loss, logits, cons = ST.semi_step(model, opt, v1, v2, y, None, None, 2.0, _nullcontext())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.seen == [(8, True), (8, False)]   # view 1 with gradient, view 2 without, all 8 images
    assert logits.shape == (4, 3) and cons.item() == pytest.approx(((l1 - l2) ** 2).mean().item(), rel=1e-6)


def _nullcontext():
    from contextlib import nullcontext
    return nullcontext()


def test_rampup_is_laine_and_ailas_schedule():
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert ST.rampup(t) == pytest.approx(math.exp(-5 * (1 - t) ** 2), rel=1e-12)
    assert ST.rampup(-0.5) == ST.rampup(0.0) and ST.rampup(1.5) == ST.rampup(1.0) == 1.0


def test_labelled_split_is_a_seeded_random_draw():
    labels = torch.arange(50_000) % 10
    lab, unlab = D.labelled_split(labels, 4000, seed=0)
    assert len(lab) == 4000 and len(unlab) == 46_000
    assert torch.equal(torch.sort(torch.cat([lab, unlab])).values, torch.arange(50_000))
    counts = torch.bincount(labels[lab], minlength=10)
    assert counts.sum() == 4000 and counts.max() - counts.min() > 0   # not balanced by class
    again, _ = D.labelled_split(labels, 4000, seed=0)
    other, _ = D.labelled_split(labels, 4000, seed=1)
    assert torch.equal(again, lab) and not torch.equal(other, lab)


def test_labelled_batches_are_passes_without_replacement():
    first = T.cycled(10, 0, 10, seed=3, device=torch.device("cpu"))
    assert sorted(first.tolist()) == list(range(10))
    both = T.cycled(10, 5, 10, seed=3, device=torch.device("cpu"))
    assert torch.equal(both[:5], first[5:])            # stateless: position 5.. of the same pass
    assert sorted(T.cycled(10, 10, 10, seed=3, device=torch.device("cpu")).tolist()) == list(range(10))
