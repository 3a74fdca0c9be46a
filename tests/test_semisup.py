"""Semi-supervised training (paper Sec. 5.3, SPEC section 5 notebook 08): NSA-id with a
consistency loss between two architectures, the Pi model (two dropout masks), labelled-only
training, the ramp-up of the consistency weight and the labelled split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nsa_core import data as D, train as T
from nsa_core.models import ModelSpec
from nsa_core.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.mark.parametrize("kind,space", [("nsa-id", 3), ("wrn-dropout", 1)])
def test_consistency_training_logs_its_loss(tmp_path, kind, space):
    spec = ModelSpec.from_profile(SMOKE, kind, space=space, semi="consistency")
    assert spec.consistency == SMOKE.consistency > 0 and spec.labelled == SMOKE.labelled
    model, hist = T.get_or_train(spec, tmp_path, device="cpu", progress=False)
    assert "consistency" in hist.columns and len(hist) == SMOKE.semi_epochs
    assert np.isfinite(hist.consistency).all() and (hist.consistency > 0).all()
    assert np.isfinite(hist.train_loss).all() and not model.training


def test_labelled_only_has_no_consistency_column(tmp_path):
    spec = ModelSpec.from_profile(SMOKE, "wrn", semi="labelled-only")
    assert spec.consistency == 0
    _, hist = T.get_or_train(spec, tmp_path, device="cpu", progress=False)
    assert "consistency" not in hist.columns and len(hist) == SMOKE.semi_epochs
    assert np.isfinite(hist.train_loss).all()


def test_rampup_is_laine_and_ailas_schedule():
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert T.rampup(t) == pytest.approx(math.exp(-5 * (1 - t) ** 2), rel=1e-12)
    assert T.rampup(-0.5) == T.rampup(0.0) and T.rampup(1.5) == T.rampup(1.0) == 1.0


def test_labelled_split_is_4000_images_400_per_class():
    labels = torch.arange(50_000) % 10
    labels = labels[torch.randperm(50_000, generator=torch.Generator().manual_seed(1))]
    lab, unlab = D.labelled_split(labels, 4000, seed=0)
    assert len(lab) == 4000 and len(unlab) == 46_000
    assert torch.bincount(labels[lab], minlength=10).tolist() == [400] * 10
    assert torch.equal(torch.sort(torch.cat([lab, unlab])).values, torch.arange(50_000))
    again, _ = D.labelled_split(labels, 4000, seed=0)
    other, _ = D.labelled_split(labels, 4000, seed=1)
    assert torch.equal(again, lab) and not torch.equal(other, lab)
