"""Per-architecture BN recalibration (beyond.recalibrated_scores, beyond the paper): it
changes nothing but BN running statistics, restores them bit for bit, averages exactly K
batches, and one architecture recalibrated on one batch scores as training-mode BN on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from nsa_core import beyond as R, data as D, evaluate as E, space as sp
from nsa_core.network import NetConfig, WiredNet

NORM = "synthetic"


def _net(cond_bn: bool = False, aux: bool = True) -> WiredNet:
    torch.manual_seed(3)
    space = sp.training_space(4, nodes=3, seed=0)
    net = WiredNet(space, NetConfig(width=0.25, nodes=3, cond_bn=cond_bn, cond_agg=cond_bn, aux=aux))
    # shared statistics that are not the defaults, so that a reset left unrestored shows
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return net.eval()


@pytest.fixture(scope="module")
def images():
    split = D.synthetic("train", size=192, seed=0)
    return split.images, split.labels


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bn_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("cond_bn", [False, True], ids=["shared-affine", "nsa-id"])
def test_restores_everything_bit_for_bit(images, cond_bn):
    net = _net(cond_bn)
    x, y = images
    before = _state(net)
    momenta = [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    flags = [m.training for m in net.modules()]
    scores = R.recalibrated_scores(net, x, x[:64], y[:64], NORM, archs=[0, 2], batches=[1, 3], batch_size=32)
    assert list(scores.columns) == ["arch", "batches", "acc", "loss"]
    assert scores[["arch", "batches"]].values.tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]
    after = _state(net)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert [m.training for m in net.modules()] == flags


def test_changes_nothing_but_bn_statistics_while_recalibrated(images):
    net = _net(cond_bn=True)
    x, _ = images
    before = _state(net)
    with R._bn_statistics_kept(net) as bns:
        for m in bns:
            m.reset_running_stats()
        R._calibrate(net, bns, x, NORM, R._calibration_batches(len(x), 2, 32, 0), torch.arange(4), None, 1)
        inside = _state(net)
        changed = {k for k in before if not torch.equal(before[k], inside[k])}
    assert changed and all(_bn_buffer(k) for k in changed), sorted(changed)
    # the auxiliary head is not part of an architecture's forward: its statistics were reset, not estimated
    assert all(k.startswith("aux.") or "running" in k or "num_batches" in k for k in changed)


def test_statistics_are_the_exact_average_of_k_batches(images):
    net = _net()
    x, _ = images
    index = R._calibration_batches(len(x), 3, 32, seed=5)
    seen = []
    hook = net.stem_bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().double()))
    with R._bn_statistics_kept(net) as bns:
        for m in bns:
            m.reset_running_stats()
        R._calibrate(net, bns, x, NORM, index, torch.arange(4), None, 2)
        mean, var = net.stem_bn.running_mean.double(), net.stem_bn.running_var.double()
    hook.remove()
    assert len(seen) == 3
    means = torch.stack([h.mean((0, 2, 3)) for h in seen])
    variances = torch.stack([h.var((0, 2, 3), unbiased=True) for h in seen])
    torch.testing.assert_close(mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, variances.mean(0), rtol=1e-5, atol=1e-6)


def test_one_batch_recalibration_matches_training_mode_bn(images):
    """Recalibrated on exactly the batch it is scored on, test mode normalises as training-mode
    BN does on that batch, up to running_var's unbiased n / (n - 1) (n = images x pixels)."""
    net = _net()
    x, y = images
    x, y = x[:128], y[:128]
    for arch in (0, 3):
        recal = R.recalibrated_scores(net, x, x, y, NORM, archs=[arch], batches=1, batch_size=len(x), batch=len(x))
        train = E.arch_scores(net, x, y, NORM, archs=[arch], bn="train", batch=len(x))
        test = E.arch_scores(net, x, y, NORM, archs=[arch], bn="test", batch=len(x))
        assert recal.acc[0] == pytest.approx(train.acc[0], abs=1 / 128 + 1e-9)
        assert recal.loss[0] == pytest.approx(train.loss[0], rel=1e-4)
        # the shared statistics were set to unrelated values: without recalibration test mode differs
        assert abs(test.loss[0] - train.loss[0]) > 50 * abs(recal.loss[0] - train.loss[0])


def test_sweep_over_k_equals_separate_runs(images):
    net = _net()
    x, y = images
    sweep = R.recalibrated_scores(net, x, x[:64], y[:64], NORM, archs=[1], batches=[5, 2], batch_size=32, seed=4)
    for k in (2, 5):
        alone = R.recalibrated_scores(net, x, x[:64], y[:64], NORM, archs=[1], batches=k, batch_size=32, seed=4)
        row = sweep[sweep.batches == k]
        assert np.allclose(row[["acc", "loss"]].to_numpy(), alone[["acc", "loss"]].to_numpy(), atol=1e-6)


def test_explicit_wirings_and_bad_arguments(images):
    net = _net()
    x, y = images
    w = sp.unseen_architectures(2, sp.training_space(4, nodes=3, seed=0))
    scores = R.recalibrated_scores(net, x, x[:32], y[:32], NORM, wirings=w, batches=1, batch_size=32)
    assert scores.arch.tolist() == [0, 1]
    with pytest.raises(ValueError, match="batches"):
        R.recalibrated_scores(net, x, x[:32], y[:32], NORM, batches=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        R.recalibrated_scores(net, x[:16], x[:32], y[:32], NORM, batch_size=32)
