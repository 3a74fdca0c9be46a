import math

import numpy as np
import pytest
import torch

from nsa_core import metrics as M


def _hand_probs(rows: list[tuple[float, int, bool]], classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples with top-class confidence `conf` on class `top`, labelled correct or not."""
    probs, labels = [], []
    for conf, top, correct in rows:
        rest = (1 - conf) / (classes - 1)
        p = [rest] * classes
        p[top] = conf
        probs.append(p)
        labels.append(top if correct else (top + 1) % classes)
    return torch.tensor(probs), torch.tensor(labels)


def _reference_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    # Guo et al.'s formula written out independently: (lower, upper] bins, float64.
    conf, pred = probs.double().max(1)
    hit = (pred == labels).double()
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.double().mean().item() * abs(hit[inside].mean() - conf[inside].mean()).item()
    return total


def _random_probs(n: int = 2000, c: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Right half the time whatever the confidence (which spans (1/c, 1)): under-confident in
    # low bins, over-confident in high ones, so the ECE depends on how the bins are cut.
    g = torch.Generator().manual_seed(seed)
    probs = (4 * torch.rand(n, 1, generator=g) * torch.randn(n, c, generator=g)).softmax(1)
    pred = probs.argmax(1)
    right = torch.rand(n, generator=g) < 0.5
    return probs, torch.where(right, pred, (pred + 1) % c)


# Bins of width 1/15: 0.9 in [0.867, 0.933), 0.62 in [0.6, 0.667), 0.75 in [0.733, 0.8).
HAND = [(0.9, 0, True), (0.9, 1, False), (0.62, 2, True), (0.75, 0, True), (0.75, 1, True)]
HAND_ECE = (2 * abs(0.5 - 0.9) + abs(1 - 0.62) + 2 * abs(1 - 0.75)) / 5  # = 0.336


def test_ece_hand_example():
    probs, labels = _hand_probs(HAND)
    assert M.ece(probs, labels) == pytest.approx(HAND_ECE, abs=1e-6)
    assert _reference_ece(probs, labels) == pytest.approx(HAND_ECE, abs=1e-6)


def test_ece_zero_when_calibrated():
    # conf 0.75 right 3 of 4 times, conf 0.5 right 1 of 2 times.
    rows = [(0.75, 0, True)] * 3 + [(0.75, 1, False), (0.5, 2, True), (0.5, 0, False)]
    probs, labels = _hand_probs(rows)
    assert M.ece(probs, labels) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("n_bins", [15, 10])
def test_ece_matches_reference_on_random_data(n_bins):
    probs, labels = _random_probs()
    ours = M.ece(probs, labels, n_bins=n_bins)
    assert ours > 0.05  # random logits are far from calibrated, so the check is not vacuous
    assert ours == pytest.approx(_reference_ece(probs, labels, n_bins), abs=1e-5)


def test_reliability_bins_and_counts():
    probs, labels = _hand_probs(HAND)
    table = M.reliability(probs, labels)
    assert list(table.columns) == ["bin_lower", "bin_upper", "confidence", "accuracy", "count"]
    assert len(table) == 15 and table["count"].sum() == 5
    np.testing.assert_allclose(table["bin_lower"], np.arange(15) / 15, atol=1e-6)
    np.testing.assert_allclose(table["bin_upper"], np.arange(1, 16) / 15, atol=1e-6)
    assert table["count"].tolist() == [0] * 9 + [1, 0, 2, 0, 2, 0]
    assert table.loc[13, "accuracy"] == 0.5 and table.loc[13, "confidence"] == pytest.approx(0.9)
    assert table.loc[9, "confidence"] == pytest.approx(0.62)
    assert table["confidence"].isna().sum() == 12 and table["accuracy"].isna().sum() == 12


def test_reliability_reproduces_ece():
    probs, labels = _random_probs(seed=1)
    table = M.reliability(probs, labels).dropna()
    from_table = (table["count"] / len(labels) * (table["accuracy"] - table["confidence"]).abs()).sum()
    assert from_table == pytest.approx(M.ece(probs, labels), abs=1e-6)
    assert M.reliability(probs, labels)["count"].sum() == len(labels)


def test_bins_are_left_closed_like_torchmetrics():
    # With 4 bins a confidence of exactly 0.5 sits on an edge. torchmetrics bins [lower,
    # upper), so it joins [0.5, 0.75): ECE = (0.45 + 0.5) / 2. Guo's (lower, upper] would
    # pool it with the 0.45 and give 0.025. reliability() must cut the same way.
    probs, labels = _hand_probs([(0.5, 0, True), (0.45, 1, False)])
    assert M.ece(probs, labels, n_bins=4) == pytest.approx(0.475, abs=1e-6)
    assert M.reliability(probs, labels, n_bins=4)["count"].tolist() == [0, 1, 1, 0]


def test_reliability_puts_certainty_in_top_bin():
    probs, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    table = M.reliability(probs, labels)
    assert table["count"].iloc[-1] == 2 and table["accuracy"].iloc[-1] == 0.5


def test_accuracy_error_nll_brier_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert M.accuracy(probs, labels) == 0.5
    assert M.error(probs, labels) == 0.5
    # The last example puts 0 on its label: eps caps its loss at -log(1e-12).
    expected_nll = -(math.log(0.7) + math.log(0.8) + math.log(0.25) + math.log(1e-12)) / 4
    assert M.nll(probs, labels) == pytest.approx(expected_nll, rel=1e-6)
    expected_brier = ((0.09 + 0.04 + 0.01) + (0.01 + 0.04 + 0.01)
                      + (0.25 + 0.5625 + 0.0625) + (1 + 0 + 1)) / 4
    assert M.brier(probs, labels) == pytest.approx(expected_brier, rel=1e-6)


def test_perfect_predictions():
    labels = torch.tensor([2, 0, 1])
    probs = torch.nn.functional.one_hot(labels, 3).float()
    assert M.accuracy(probs, labels) == 1.0
    assert M.nll(probs, labels) == pytest.approx(0.0, abs=1e-9)
    assert M.brier(probs, labels) == 0.0
    assert M.ece(probs, labels) == pytest.approx(0.0, abs=1e-7)


def test_logits_are_rejected():
    logits, labels = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1])
    for fn in (M.accuracy, M.nll, M.brier, M.ece):
        with pytest.raises(ValueError, match="softmax"):
            fn(logits, labels)
    with pytest.raises(ValueError, match="labels shape"):
        M.accuracy(logits.softmax(1), torch.tensor([0, 1, 1]))


def test_entropy():
    for c in (2, 10, 100):
        assert M.entropy(torch.full((3, c), 1 / c)) == pytest.approx([math.log(c)] * 3, rel=1e-6)
    onehot = torch.eye(4)  # contains exact zeros: 0 log 0 must be 0, not NaN
    assert torch.equal(M.entropy(onehot), torch.zeros(4))
    assert M.entropy(torch.tensor([[0.5, 0.5, 0.0]])).item() == pytest.approx(math.log(2))


def test_mutual_information_identical_members_is_zero():
    probs, _ = _random_probs(n=50)
    member_probs = probs.expand(5, -1, -1)
    mi = M.mutual_information(member_probs)
    assert mi.shape == (50,)
    assert mi.abs().max() < 1e-6


def test_mutual_information_disagreeing_members_is_log_k():
    k, c = 4, 6
    # Member t is certain of class t, for every one of 3 examples.
    member_probs = torch.eye(c)[:k, None, :].expand(k, 3, c)
    mi = M.mutual_information(member_probs)
    assert mi == pytest.approx([math.log(k)] * 3, rel=1e-6)


def test_mutual_information_is_total_minus_expected_entropy():
    g = torch.Generator().manual_seed(3)
    member_probs = torch.randn(5, 20, 10, generator=g).softmax(-1)
    expected = M.entropy(member_probs.mean(0)) - M.entropy(member_probs).mean(0)
    mi = M.mutual_information(member_probs)
    assert (mi > 0).all()
    torch.testing.assert_close(mi, expected, atol=1e-6, rtol=0)


def test_auc():
    neg, pos = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5, 0.9, 0.95])
    assert M.auc(neg, pos) == 1.0
    assert M.auc(pos, neg) == 0.0
    same = torch.tensor([1.0, 2.0, 2.0, 3.0])
    assert M.auc(same, same.clone()) == 0.5
    assert M.auc(torch.zeros(5), torch.zeros(7)) == 0.5
    # One swapped pair out of 2 x 2: AUC 3/4.
    assert M.auc([0.1, 0.6], [0.5, 0.9]) == 0.75
    with pytest.raises(ValueError):
        M.auc(torch.tensor([]), pos)


def test_row_forms_equal_the_readable_metrics():
    """The bootstrap's vectorised forms, row by row, against scikit-learn, scipy and torchmetrics."""
    from scipy import stats

    rng = np.random.default_rng(0)
    neg, pos = rng.normal(size=(6, 30)).round(1), rng.normal(0.3, size=(6, 20)).round(1)   # ties included
    assert M.auc_rows(neg, pos) == pytest.approx([M.auc(n, p) for n, p in zip(neg, pos)], abs=1e-12)
    a, b = rng.integers(0, 5, (6, 12)).astype(float), rng.normal(size=(6, 12)).round(1)
    assert M.spearman_rows(a, b) == pytest.approx([stats.spearmanr(x, y).statistic for x, y in zip(a, b)], abs=1e-12)
    assert M.kendall_rows(a, b) == pytest.approx([stats.kendalltau(x, y).statistic for x, y in zip(a, b)], abs=1e-12)
    assert np.isnan(M.kendall_rows([1.0, 1, 1], [1.0, 2, 3])) and np.isnan(M.spearman_rows([1.0, 1, 1], [1.0, 2, 3]))
    for seed in range(3):
        probs, labels = _random_probs(seed=seed)
        conf, pred = probs.max(1)
        assert M.ece_rows(conf.numpy(), (pred == labels).numpy()) == pytest.approx(M.ece(probs, labels), abs=1e-6)
    probs, labels = _random_probs(n=300)
    conf, right = probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy()
    rows = np.stack([np.arange(300), np.roll(np.arange(300), 7) % 150])
    assert M.ece_rows(conf[rows], right[rows]) == pytest.approx(
        [M.ece(probs[torch.as_tensor(r)], labels[torch.as_tensor(r)]) for r in rows], abs=1e-6)
