import pytest
import torch
import torch.nn as nn

from nsa_core.attacks import PAPER_ATTACKS, PGD, pgd_attack

C, N = 4, 256
D = 3 * 8 * 8


def _problem() -> tuple[list[nn.Module], torch.Tensor, torch.Tensor]:
    """Three linear members that roughly agree on a 4-class problem whose classes differ by
    +-3/255 per pixel under noise: clearly better than chance when clean, and each extra
    1/255 of budget moves every margin by the same amount, so the paper's three attacks
    give clearly falling accuracies."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, 2, (C, D), generator=g).float() * 2 - 1
    y = torch.arange(N) % C
    x = (0.5 + 3 / 255 * pattern[y] + 0.05 * torch.randn(N, D, generator=g)).clamp(0, 1)
    members = []
    for _ in range(3):
        lin = nn.Linear(D, C)
        with torch.no_grad():
            lin.weight.copy_(pattern + 0.3 * torch.randn(C, D, generator=g))
            lin.bias.zero_()
        # Dropout is there to show the attack leaves each module's train/eval state alone.
        members.append(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), lin).eval())
    return members, x.view(N, 3, 8, 8), y


def _ensemble(members: list[nn.Module]):
    return lambda images: torch.stack([m(images).softmax(1) for m in members]).mean(0)


def _acc(f, x, y) -> float:
    with torch.no_grad():
        return (f(x).argmax(1) == y).float().mean().item()


def _nll(f, x, y) -> float:
    with torch.no_grad():
        return -f(x).gather(1, y[:, None]).log().mean().item()


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_from_name_and_name():
    a = PGD.from_name("PGD1-2-1")
    assert a == PGD(eps=1 / 255, steps=2, step_size=1 / 255, random_start=True)
    assert PGD.from_name("PGD3-4-1").eps == pytest.approx(3 / 255)
    assert PGD.from_name("PGD3-4-1").steps == 4
    for name in PAPER_ATTACKS + ("PGD8-10-2", "PGD0.5-1-0.25"):
        assert PGD.from_name(name).name == name
    assert PAPER_ATTACKS == ("PGD1-2-1", "PGD2-3-1", "PGD3-4-1")


@pytest.mark.parametrize("bad", ["PGD1-2", "pgd1-2-1", "FGSM1-1-1", "PGD1-2.5-1", "PGD-1-2-1", ""])
def test_from_name_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="PGDa-b-c"):
        PGD.from_name(bad)


def test_attack_stays_in_budget_and_pixel_range():
    members, x, y = _problem()
    for name in PAPER_ATTACKS:
        attack = PGD.from_name(name)
        x_adv = pgd_attack(_ensemble(members), x, y, attack, _gen())
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert (x_adv - x).abs().max() <= attack.eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() >= attack.eps - 1e-6  # it did use the budget


def test_projection_clips_to_unit_box():
    # Near-black and near-white images: the eps-ball pokes outside [0, 1].
    members, x, y = _problem()
    x = (x - 0.5).sign().clamp_min(0) * 0.999 + 0.0005
    x_adv = pgd_attack(_ensemble(members), x, y, PGD(eps=8 / 255, steps=3, step_size=4 / 255), _gen())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_attack_hurts_and_more_budget_hurts_more():
    members, x, y = _problem()
    f = _ensemble(members)
    clean_acc, clean_nll = _acc(f, x, y), _nll(f, x, y)
    assert clean_acc > 0.8
    accs = []
    for name in PAPER_ATTACKS:
        x_adv = pgd_attack(f, x, y, PGD.from_name(name), _gen())
        accs.append(_acc(f, x_adv, y))
        assert _nll(f, x_adv, y) > clean_nll
    assert clean_acc > accs[0] > accs[1] > accs[2]
    assert accs[2] < 0.5 * clean_acc


def test_attack_is_stronger_than_random_noise():
    members, x, y = _problem()
    f = _ensemble(members)
    attack = PGD.from_name("PGD2-3-1")
    noisy = (x + attack.eps * (2 * torch.rand(x.shape, generator=_gen()) - 1)).clamp(0, 1)
    x_adv = pgd_attack(f, x, y, attack, _gen())
    assert _acc(f, x_adv, y) < _acc(f, noisy, y) - 0.1


def test_no_random_start_and_zero_steps():
    members, x, y = _problem()
    f = _ensemble(members)
    assert torch.equal(pgd_attack(f, x, y, PGD(2 / 255, 0, 1 / 255, random_start=False)), x)
    start_only = pgd_attack(f, x, y, PGD(2 / 255, 0, 1 / 255), _gen())
    assert 0 < (start_only - x).abs().max() <= 2 / 255 + 1e-6
    # Deterministic without a random start: no generator needed.
    a = pgd_attack(f, x, y, PGD(2 / 255, 3, 1 / 255, random_start=False))
    b = pgd_attack(f, x, y, PGD(2 / 255, 3, 1 / 255, random_start=False))
    assert torch.equal(a, b)


def test_same_seed_same_result():
    members, x, y = _problem()
    f, attack = _ensemble(members), PGD.from_name("PGD2-3-1")
    a = pgd_attack(f, x, y, attack, _gen(7))
    b = pgd_attack(f, x, y, attack, _gen(7))
    c = pgd_attack(f, x, y, attack, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_parameters_grads_and_modes_untouched():
    members, x, y = _problem()
    members[1].train()  # a mixed ensemble: its modes must come back exactly as they were
    preset = members[2][2].weight
    preset.grad = torch.ones_like(preset)
    before = {id(p): p.detach().clone() for m in members for p in m.parameters()}
    pgd_attack(_ensemble(members), x, y, PGD.from_name("PGD3-4-1"), _gen())
    assert [m.training for m in members] == [False, True, False]
    assert all(sub.training == m.training for m in members for sub in m.modules())
    for m in members:
        for p in m.parameters():
            assert torch.equal(p, before[id(p)])
            if p is not preset:
                assert p.grad is None
    assert torch.equal(preset.grad, torch.ones_like(preset))


def test_works_under_no_grad():
    # Evaluation loops run under no_grad; the attack must still get its input gradient.
    members, x, y = _problem()
    f, attack = _ensemble(members), PGD.from_name("PGD2-3-1")
    with torch.no_grad():
        inside = pgd_attack(f, x, y, attack, _gen())
    assert torch.equal(inside, pgd_attack(f, x, y, attack, _gen()))
    assert _acc(f, inside, y) < _acc(f, x, y)

