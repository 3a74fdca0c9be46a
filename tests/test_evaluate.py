"""Evaluation (nsa_core.evaluate): batched scores equal one-architecture-at-a-time ones, both
BN modes leave the model bit-identical, ensembles, MC dropout, the batch-mean variance of
paper App. C, OOD sets, and PGD against whole ensembles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nsa_core import attacks, data as D, evaluate as E, explore as X, kinds as K, metrics, space as sp, train as T
from nsa_core.network import NetConfig, WiredNet
from nsa_core.profiles import get_profile

NORM = "synthetic"


@pytest.fixture(scope="module")
def smoke(smoke_model):
    """The session's smoke NSA-i model (S = 5) and its evaluation images, in the fixed
    shuffled order that train.load_data gives them."""
    spec, _, model, _ = smoke_model
    data = T.load_data(spec, dev=torch.device("cpu"))
    return model, data.x_test[:128], data.y_test[:128], data.x


@pytest.fixture
def dropout_net():
    """A randomly initialised fixed network with dropout (the MC-dropout baseline's shape)."""
    torch.manual_seed(1)
    arch = sp.fixed_architecture(sp.residual_wiring(3))
    return WiredNet(arch, NetConfig(width=0.25, nodes=3, dropout=0.2)).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Every parameter and buffer, and every parameter's .grad (PGD must not write it)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"{k}.grad": None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()})
    return state


def _assert_untouched(model: nn.Module, saved: dict[str, torch.Tensor | None], flags: list[bool]) -> None:
    now = _state(model)
    assert now.keys() == saved.keys()
    same = lambda a, b: a is b is None or (a is not None and b is not None and torch.equal(a, b))  # noqa: E731
    assert [k for k in now if not same(now[k], saved[k])] == []
    assert [m.training for m in model.modules()] == flags


# ------------------------------------------------------------------ model untouched

CALLS = {
    "predict-train": lambda m, x, y, xt: E.predict(m, x, NORM, arch=torch.arange(len(x)) % 5, bn="train", batch=50),
    "predict-test": lambda m, x, y, xt: E.predict(m, x, NORM, arch=2, batch=50),
    "arch_scores-train": lambda m, x, y, xt: E.arch_scores(m, x, y, NORM, bn="train", batch=50),
    "arch_scores-test": lambda m, x, y, xt: E.arch_scores(m, x, y, NORM, batch=50),
    "member_probs": lambda m, x, y, xt: E.member_probs(m, x, NORM, batch=50),
    "batch_mean_variance": lambda m, x, y, xt: E.batch_mean_variance(m, xt, NORM, "example", batches=3, batch_size=32),
    "attack_outcomes": lambda m, x, y, xt: X.attack_outcomes(m, x[:16], y[:16], NORM, attacks.PGD.from_name("PGD2-3-1"),
                                                          batch=40),
    "attacked_members-fixed": lambda m, x, y, xt: E.attacked_members(m, x[:16], y[:16], NORM,
                                                                     attacks.PGD.from_name("PGD2-3-1"), batch=40,
                                                                     fresh=False),
    "member_probs-fresh": lambda m, x, y, xt: E.member_probs(m, x, NORM, batch=50, fresh=True, seed=1),
    "arch_scores-train-mixed": lambda m, x, y, xt: E.arch_scores(m, x, y, NORM, bn="train", batch=50, mixed=True),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("training", [False, True])
def test_evaluation_leaves_the_model_bit_identical(smoke, name, training):
    model, x, y, xt = smoke
    model.train(training)
    model.stem_bn.train(not training)   # a module left in another mode keeps it
    saved, flags = _state(model), [m.training for m in model.modules()]
    try:
        CALLS[name](model, x, y, xt)
        _assert_untouched(model, saved, flags)
    finally:
        model.eval()


def test_mc_dropout_leaves_the_model_and_the_callers_rng_untouched(dropout_net):
    x = D.synthetic("test", 16, seed=0).images
    saved, flags = _state(dropout_net), [m.training for m in dropout_net.modules()]
    rng = torch.get_rng_state()
    E.mc_dropout_probs(dropout_net, x, NORM, samples=3, batch=20)
    X.attack_outcomes(dropout_net, x, torch.zeros(16, dtype=torch.long), NORM,
                      attacks.PGD.from_name("PGD1-2-1"), mc_samples=3, batch=24)
    _assert_untouched(dropout_net, saved, flags)
    assert torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------- per-architecture

def _one_at_a_time(model, x, y, arch: int, bn: str, batch: int) -> tuple[float, float]:
    logits = E.predict(model, x, NORM, arch=arch, bn=bn, batch=batch)
    return (logits.argmax(1) == y).double().mean().item(), F.cross_entropy(logits, y).item()


def test_arch_scores_test_mode_equals_one_architecture_at_a_time(smoke):
    model, x, y, _ = smoke
    archs = torch.tensor([3, 0, 4, 1])
    # 128 images x 4 architectures in forwards of 100: every forward but the first mixes two.
    got = E.arch_scores(model, x, y, NORM, archs=archs, bn="test", batch=100)
    assert list(got.columns) == ["arch", "acc", "loss"] and got.arch.tolist() == [3, 0, 4, 1]
    for row in got.itertuples():
        acc, loss = _one_at_a_time(model, x, y, row.arch, "test", batch=len(x))
        assert row.acc == pytest.approx(acc, abs=1e-5) and row.loss == pytest.approx(loss, abs=1e-5)


def test_arch_scores_train_mode_runs_one_architecture_per_batch(smoke):
    model, x, y, _ = smoke
    got = E.arch_scores(model, x, y, NORM, bn="train", batch=32)
    assert got.arch.tolist() == list(range(model.num_archs))
    for row in got.itertuples():
        acc, loss = _one_at_a_time(model, x, y, row.arch, "train", batch=32)
        assert row.acc == pytest.approx(acc, abs=1e-6) and row.loss == pytest.approx(loss, abs=1e-5)


def test_bn_modes_give_different_numbers(smoke):
    model, x, y, _ = smoke
    train = E.arch_scores(model, x, y, NORM, bn="train", batch=64)
    test = E.arch_scores(model, x, y, NORM, bn="test", batch=64)
    assert (train.loss - test.loss).abs().min() > 1e-4
    assert not torch.allclose(E.predict(model, x, NORM, arch=1, bn="train"), E.predict(model, x, NORM, arch=1))


def test_predict_with_per_example_indices_matches_member_probs(smoke):
    model, x, _, _ = smoke
    arch = torch.arange(len(x)) % model.num_archs
    probs = E.predict(model, x, NORM, arch=arch, batch=30).softmax(1)
    members = E.member_probs(model, x, NORM, batch=70)
    assert members.shape == (model.num_archs, len(x), 10)
    torch.testing.assert_close(probs, members[arch, torch.arange(len(x))], atol=1e-5, rtol=0)


def test_member_probs_from_wirings_equal_those_from_indices(smoke):
    model, x, _, _ = smoke
    wirings = model.space.to(torch.uint8).numpy()
    by_index = E.member_probs(model, x, NORM, archs=torch.arange(model.num_archs), batch=90)
    by_wiring = E.member_probs(model, x, NORM, wirings=wirings, batch=90)
    torch.testing.assert_close(by_wiring, by_index, atol=1e-5, rtol=0)
    scores = E.arch_scores(model, x, smoke[2], NORM, wirings=wirings[[2, 4]], batch=90)
    assert scores.arch.tolist() == [0, 1]   # positions in wirings
    ref = E.arch_scores(model, x, smoke[2], NORM, archs=[2, 4], batch=90)
    np.testing.assert_allclose(scores[["acc", "loss"]], ref[["acc", "loss"]], atol=1e-5)


def test_bad_arguments_are_clear_errors(smoke, dropout_net):
    model, x, y, _ = smoke
    with pytest.raises(ValueError, match="bn must be"):
        E.predict(model, x, NORM, bn="eval")
    with pytest.raises(ValueError, match="not both"):
        E.member_probs(model, x, NORM, archs=[0], wirings=model.space[:1].numpy())
    with pytest.raises(ValueError, match="one index per image"):
        E.predict(model, x, NORM, arch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="has none"):
        E.mc_dropout_probs(model, x, NORM, samples=2)
    with pytest.raises(ValueError, match="sampling"):
        E.batch_mean_variance(model, x, NORM, "fixed")


# ------------------------------------------------------------------------ ensembles

def test_ensemble_curve_by_hand():
    # Member 1 is right on image 0 only; member 2 is confidently right on both; member 3
    # confidently wrong on image 1, so the three-member average is wrong there again.
    p = torch.tensor([[[0.9, 0.1], [0.6, 0.4]],
                      [[0.4, 0.6], [0.0, 1.0]],
                      [[0.5, 0.5], [1.0, 0.0]]])
    y = torch.tensor([0, 1])
    np.testing.assert_allclose(E.ensemble_curve(p, y), [0.5, 1.0, 0.5])


def test_ensemble_curve_equals_separate_ensembles(smoke):
    model, x, y, _ = smoke
    probs = E.member_probs(model, x, NORM, archs=[4, 2, 0, 3, 1], batch=200)
    curve = E.ensemble_curve(probs, y)
    assert curve.shape == (5,)
    for t in (1, 3, 5):
        assert curve[t - 1] == (probs[:t].mean(0).argmax(1) == y).double().mean().item()


# ---------------------------------------------------------------------- MC dropout

def test_mc_dropout_samples_differ_and_reproduce(dropout_net):
    x = D.synthetic("test", 24, seed=0).images
    a = E.mc_dropout_probs(dropout_net, x, NORM, samples=4, batch=40, seed=3)
    assert a.shape == (4, 24, 10)
    torch.testing.assert_close(a.sum(2), torch.ones(4, 24))
    assert all((a[i] - a[j]).abs().max() > 1e-4 for i in range(4) for j in range(i))
    assert torch.equal(E.mc_dropout_probs(dropout_net, x, NORM, samples=4, batch=40, seed=3), a)
    assert not torch.equal(E.mc_dropout_probs(dropout_net, x, NORM, samples=4, batch=40, seed=4), a)
    # During the passes dropout is on and BN normalises with its running statistics.
    modes: dict[type, set[bool]] = {nn.BatchNorm2d: set(), nn.Dropout: set()}
    hooks = [m.register_forward_hook(lambda mod, i, o, t=t: modes[t].add(mod.training))
             for m in dropout_net.modules() for t in modes if isinstance(m, t)]
    E.mc_dropout_probs(dropout_net, x, NORM, samples=2, batch=40)
    for h in hooks:
        h.remove()
    assert modes == {nn.BatchNorm2d: {False}, nn.Dropout: {True}}


# ------------------------------------------------------------ batch-mean variance

def test_batch_mean_variance_rows_and_sampling(smoke):
    model, _, _, x_train = smoke
    kw = dict(batches=10, batch_size=32, seed=5)
    per_batch = E.batch_mean_variance(model, x_train, NORM, "batch", **kw)
    per_example = E.batch_mean_variance(model, x_train, NORM, "example", **kw)
    bn_layers = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not n.startswith("aux.")]
    for v in (per_batch, per_example):
        assert list(v.columns) == ["layer", "var_mean"] and v.layer.tolist() == bn_layers
        assert (v.var_mean >= 0).all() and np.isfinite(v.var_mean).all()
    # The same image batches for both samplings: the stem sees no architecture at all.
    assert per_batch.var_mean[0] == per_example.var_mean[0] > 0
    # Paper App. C: one architecture per batch shifts whole batches; i.i.d. architectures
    # average the shifts out. Seen on the smoke model: 10x to 25x in the mean over layers
    # (about 0.004 against 0.0003 to 0.00015), whatever the seed and batch size.
    assert per_batch.var_mean[1:].mean() > 3 * per_example.var_mean[1:].mean()
    pd.testing.assert_frame_equal(per_batch, E.batch_mean_variance(model, x_train, NORM, "batch", **kw))


# ----------------------------------------------------------------------------- OOD

def test_load_ood_synthetic_is_other_patterns():
    ood = E.load_ood("synthetic-ood", n=100, seed=0)
    assert ood.name == "synthetic-ood" and ood.images.shape == (100, 3, 32, 32) and ood.images.dtype == torch.uint8
    assert torch.equal(E.load_ood("synthetic-ood", n=100, seed=0).images, ood.images)
    # Class means of the in-distribution set and of the OOD set are different patterns.
    ind = D.synthetic("test", 100, seed=0)
    mean = lambda s: torch.stack([s.images[s.labels == c].float().mean(0) for c in range(10)])  # noqa: E731
    assert (mean(ind) - mean(ood)).abs().mean() > 10
    with pytest.raises(ValueError, match="synthetic-ood"):
        E.load_ood("synthetic")


def test_load_ood_takes_the_first_n_of_the_eval_order(monkeypatch):
    fake = D.Split(torch.zeros(50, 3, 32, 32, dtype=torch.uint8), torch.arange(50), ["x"], "svhn")
    monkeypatch.setattr(D, "load", lambda name, split, data_dir=None: fake)
    got = E.load_ood("svhn", n=7, seed=3)
    assert torch.equal(got.labels, D.eval_order(50, seed=3)[:7])
    assert len(E.load_ood("svhn")) == 50


# ----------------------------------------------------------------------------- PGD

def test_fixed_members_are_the_differentiable_member_probabilities(smoke):
    model, x, _, _ = smoke
    f, T = E.ensemble_members(model, NORM, archs=[0, 3], fresh=False)
    xu = D.to_unit(x[:20]).requires_grad_(True)
    p = f(xu)
    assert T == 2
    torch.testing.assert_close(p.detach(), E.member_probs(model, x[:20], NORM, archs=[0, 3]), atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(p.mean(0)[:, 0].sum(), xu)
    assert g.abs().sum() > 0


def test_fresh_members_in_every_forward(smoke):
    """The authors' attack: each forward of the ensemble draws new architectures per image."""
    model, x, _, _ = smoke
    f, T = E.ensemble_members(model, NORM, fresh=True, seed=0)
    with torch.no_grad():
        a, b = f(D.to_unit(x[:20])), f(D.to_unit(x[:20]))
    assert T == model.num_archs and not torch.equal(a, b)
    fixed, _ = E.ensemble_members(model, NORM, fresh=False)
    with torch.no_grad():
        assert torch.equal(fixed(D.to_unit(x[:20])), fixed(D.to_unit(x[:20])))


def test_pgd_on_the_ensemble_stays_in_the_ball(smoke):
    model, x, y, _ = smoke
    xu, attack = D.to_unit(x[:32]), attacks.PGD.from_name("PGD3-4-1")
    members, _ = E.ensemble_members(model, NORM)
    x_adv = attacks.pgd_attack(lambda z: members(z).mean(0), xu, y[:32], attack, torch.Generator().manual_seed(0))
    assert (x_adv - xu).abs().max() <= attack.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not torch.equal(x_adv, xu)


def _accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """The ensemble's accuracy: its members' mean prediction [T, N, C] against labels [N]."""
    return (probs.mean(0).argmax(1) == y).double().mean().item()


def test_attacked_members_accuracy_falls_with_the_budget(smoke):
    """On one fixed set of members (the deterministic variant) the clean predictions are the
    same for every budget and accuracy under attack falls as the budget grows; the attack is
    reproducible."""
    model, x, y, _ = smoke
    runs = [E.attacked_members(model, x[:32], y[:32], NORM, attacks.PGD.from_name(a), batch=100, seed=0, fresh=False)
            for a in attacks.PAPER_ATTACKS]
    for p_clean, p_adv, labels in runs:
        assert p_clean.shape == p_adv.shape == (model.num_archs, 32, 10)
        assert torch.equal(labels, y[:32])
        torch.testing.assert_close(p_adv.sum(2), torch.ones(model.num_archs, 32))
    assert all(torch.equal(r[0], runs[0][0]) for r in runs)     # clean: the same members, the same numbers
    accs = [_accuracy(runs[0][0], y[:32])] + [_accuracy(p_adv, y[:32]) for _, p_adv, _ in runs]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0]
    again = E.attacked_members(model, x[:32], y[:32], NORM, attacks.PGD.from_name(attacks.PAPER_ATTACKS[0]),
                               batch=100, seed=0, fresh=False)
    assert all(torch.equal(a, b) for a, b in zip(again, runs[0]))


def _same_outcomes(a: dict, b: dict) -> bool:
    return a["summary"] == b["summary"] and all(np.array_equal(a[k], b[k]) for k in a if k != "summary")


def test_attack_outcomes_summarise_the_attacked_members(smoke):
    """explore.attack_outcomes keeps per image what attacked_members gives (the authors' fresh
    members): correctness of the ensemble's mean prediction and mutual information, and a
    summary of them."""
    model, x, y, _ = smoke
    attack = attacks.PGD.from_name("PGD2-3-1")
    out = X.attack_outcomes(model, x[:32], y[:32], NORM, attack, batch=100, seed=2)
    p_clean, p_adv, labels = E.attacked_members(model, x[:32], y[:32], NORM, attack, batch=100, seed=2)
    np.testing.assert_array_equal(out["correct_clean"], (p_clean.mean(0).argmax(1) == labels).numpy())
    np.testing.assert_array_equal(out["correct_adv"], (p_adv.mean(0).argmax(1) == labels).numpy())
    np.testing.assert_allclose(out["mi_adv"], metrics.mutual_information(p_adv).numpy())
    summary = out["summary"]
    assert (summary["attack"], summary["eps"], summary["n"]) == ("PGD2-3-1", attack.eps, 32)
    assert summary["acc_clean"] == pytest.approx(_accuracy(p_clean, labels))
    assert summary["acc_adv"] == pytest.approx(_accuracy(p_adv, labels))
    assert summary["auc"] == pytest.approx(metrics.auc(out["mi_clean"], out["mi_adv"])) and 0 <= summary["auc"] <= 1


def test_fresh_attack_is_reproducible_by_seed(smoke):
    """The authors' attack draws fresh members in every forward: the same seed gives the same
    outcomes, another seed other draws."""
    model, x, y, _ = smoke
    run = lambda seed: X.attack_outcomes(model, x[:32], y[:32], NORM, attacks.PGD.from_name("PGD3-4-1"),  # noqa: E731
                                         batch=100, seed=seed)
    a = run(0)
    assert _same_outcomes(a, run(0)) and a["summary"]["acc_adv"] < a["summary"]["acc_clean"]
    assert not np.array_equal(a["mi_clean"], run(1)["mi_clean"])


def test_attack_outcomes_mc_dropout(dropout_net):
    data = D.synthetic("test", 16, seed=0)
    run = lambda: X.attack_outcomes(dropout_net, data.images, data.labels, NORM,  # noqa: E731
                                    attacks.PGD.from_name("PGD3-4-1"), mc_samples=3, batch=24, seed=1)
    r = run()
    s = r["summary"]
    assert s["acc_adv"] <= s["acc_clean"] and s["n"] == 16 and s["eps"] == pytest.approx(3 / 255)
    assert len(r["mi_clean"]) == 16 and (r["mi_clean"] > 0).all()    # dropout members disagree
    assert _same_outcomes(r, run())


# ------------------------------------------------------ architectures drawn as trained

def test_member_probs_fresh_draws_members_per_image(smoke):
    """fresh=True (the authors' ensemble for OOD): member t of image i is an architecture drawn
    for that image on its own, with replacement, reproducibly by seed; not the distinct
    architectures in order."""
    model, x, _, _ = smoke
    distinct = E.member_probs(model, x, NORM, batch=70)                       # [S, N, C]
    fresh = E.member_probs(model, x, NORM, batch=70, fresh=True, seed=3)
    assert fresh.shape == distinct.shape
    # which architecture each (member, image) is: the one whose probabilities it equals
    gap = (fresh[:, None] - distinct[None]).abs().amax(-1)                    # [T, S, N]
    assert (gap.amin(1) < 1e-5).all()
    drawn = gap.argmin(1)                                                     # [T, N]
    assert not torch.equal(drawn, torch.arange(model.num_archs)[:, None].expand_as(drawn))
    assert len({tuple(c) for c in drawn.T.tolist()}) > 1                     # per image, not shared
    assert any(len(set(c)) < model.num_archs for c in drawn.T.tolist())      # with replacement
    assert torch.equal(E.member_probs(model, x, NORM, batch=70, fresh=True, seed=3), fresh)
    assert not torch.equal(E.member_probs(model, x, NORM, batch=70, fresh=True, seed=4), fresh)


def _recorded_archs(model: WiredNet) -> tuple[list[torch.Tensor], object]:
    """The architecture argument of every forward of `model`, recorded by a hook."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda mod, args: seen.append(torch.as_tensor(args[1]).clone()))
    return seen, handle


def test_arch_scores_train_mode_mixed_as_nsa_i_trains(smoke):
    """bn='train', mixed=True (NSA-i's scores in training mode): every forward mixes
    architectures, one per image, as NSA-i trains; over the T passes each image meets every
    architecture once; and the scores are those of exactly these forwards."""
    model, x, y, _ = smoke
    T_, batch = model.num_archs, 32
    seen, handle = _recorded_archs(model)
    try:
        got = E.arch_scores(model, x, y, NORM, bn="train", batch=batch, mixed=True)
    finally:
        handle.remove()
    assert got.arch.tolist() == list(range(T_))
    assert len(seen) == T_ * -(-len(x) // batch)
    assert all(len(a.unique()) > 1 for a in seen)                              # mixed forwards
    per_pass = torch.cat(seen).view(T_, len(x))                               # pass-major, images in order
    assert (per_pass.sort(0).values == torch.arange(T_)[:, None]).all()       # every image, every arch once
    correct, loss = torch.zeros(T_, dtype=torch.float64), torch.zeros(T_, dtype=torch.float64)
    for a in per_pass:
        logits = E.predict(model, x, NORM, arch=a, bn="train", batch=batch)
        correct.index_add_(0, a, (logits.argmax(1) == y).double())
        loss.index_add_(0, a, F.cross_entropy(logits, y, reduction="none").double())
    np.testing.assert_allclose(got.acc, correct / len(x), atol=1e-9)
    np.testing.assert_allclose(got.loss, loss / len(x), atol=1e-5)
    # and it is not NSA's one-architecture-per-batch scoring
    assert (got.loss - E.arch_scores(model, x, y, NORM, bn="train", batch=batch).loss).abs().max() > 1e-4


def test_nsa_test_pass_draws_one_architecture_per_test_batch(tmp_path, monkeypatch):
    """train.test_pass (every point of the test curves, paper Figs. 2-3) draws NSA's
    architectures one per kinds.TEST_BATCH = 128 test images (the authors' test batch),
    whatever the evaluation forward's size: ceil(n / 128) architectures, NSA-i one per image."""
    assert K.TEST_BATCH == 128
    n = 300
    draws = []
    real = T.draw_archs

    def spy(sampling, space, count, batch, generator):
        out = real(sampling, space, count, batch, generator)
        draws.append((sampling, count, batch, out))
        return out

    monkeypatch.setattr(T, "draw_archs", spy)
    for kind, forward in (("nsa", 500), ("nsa", 100), ("nsa-i", 500)):
        spec = get_profile("smoke").spec(kind, space=20, test_size=n, width=0.25, eval_batch=forward)
        run = T.prepare(spec, tmp_path / f"{kind}-{forward}", device="cpu")
        seen, handle = _recorded_archs(run.model)
        try:
            draws.clear()
            loss, acc = T.test_pass(run, torch.Generator().manual_seed(0))
        finally:
            handle.remove()
        assert np.isfinite(loss) and 0 <= acc <= 1
        assert [(d[0], d[1], d[2]) for d in draws] == [(K.KINDS[kind].sampling, n, 128)]
        archs = torch.cat(seen)
        assert torch.equal(archs, draws[0][3]) and len(seen) == -(-n // forward)
        blocks = [archs[s:s + 128] for s in range(0, n, 128)]
        if kind == "nsa":
            assert len(blocks) == 3 and all(len(b.unique()) == 1 for b in blocks)
            assert len({int(b[0]) for b in blocks}) > 1        # a new architecture per test batch
        else:
            assert all(len(b.unique()) > 1 for b in blocks)    # one per image


@pytest.mark.parametrize("kind, mixed", [("nsa", False), ("nsa-i", True)])
def test_seen_scores_mix_training_mode_batches_as_the_model_trained(monkeypatch, kind, mixed):
    """Experiment.seen_scores (notebooks 01-02): training-mode BN scores NSA-i in mixed batches of
    its training batch size (arch_scores mixed=True) and NSA one architecture per batch; test
    mode in batches of eval_batch."""
    from types import SimpleNamespace

    from nsa_core.experiment import Experiment

    calls = []
    monkeypatch.setattr(E, "arch_scores", lambda *a, **kw: calls.append(kw) or pd.DataFrame())
    spec = get_profile("smoke").spec(kind, space=5)
    test = D.synthetic("test", 8, seed=0)
    exp = SimpleNamespace(test_set=lambda r=None, dataset=None, n=None: test,
                          cached=lambda name, key, compute: compute())
    run = SimpleNamespace(spec=spec, model=None)
    Experiment.seen_scores(exp, run, "train", 3)
    Experiment.seen_scores(exp, run, "test", 3)
    assert [(c["bn"], c["batch"], c.get("mixed", False)) for c in calls] == [
        ("train", spec.recipe.batch_size, mixed), ("test", spec.recipe.eval_batch, mixed)]
    assert calls[0]["archs"].tolist() == [0, 1, 2]
