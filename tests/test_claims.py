"""The verdict rules of claims.py: a clear difference holds, the opposite one does not, and
pure noise (two models of the same quality) is inconclusive as often as a 95 % interval
promises."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nsa_core import claims, metrics, understand
from nsa_core.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_COMPARABLE

TINY = Path(__file__).resolve().parents[1] / "results" / "tiny"

N = 1000   # test images, as in the tiny profile


def _model_correct(p_right: float, seed: int) -> np.ndarray:
    """Per-image correctness of a model that is right with probability p_right, its errors
    drawn by its own seed (a model trained with another seed)."""
    return (np.random.default_rng(seed).random(N) < p_right).astype(float)


def test_a_clear_difference_holds_and_the_opposite_does_not():
    good, bad = _model_correct(0.40, 1), _model_correct(0.30, 2)
    d = claims.mean_difference(good, bad)
    assert d.low > 0 and claims.verdict(d) == HOLDS
    assert claims.verdict(claims.mean_difference(bad, good)) == FAILS
    assert claims.verdict(d, comparable=False) == NOT_COMPARABLE


def test_pure_noise_is_inconclusive_in_at_least_18_of_20_seeds():
    # Two models of the same accuracy whose errors fall on different images (different seeds).
    verdicts = [claims.verdict(claims.mean_difference(_model_correct(0.3, 2 * s), _model_correct(0.3, 2 * s + 1),
                                                      seed=s)) for s in range(20)]
    assert verdicts.count(INCONCLUSIVE) >= 18, verdicts


def test_paired_metric_difference_on_probabilities():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=g)
    sharp = torch.nn.functional.one_hot(labels, 10).float() * 5 + torch.randn(400, 10, generator=g)
    vague = torch.randn(400, 10, generator=g)
    d = claims.metric_difference("accuracy", sharp.softmax(1), vague.softmax(1), labels, seed=0)
    assert claims.verdict(d) == HOLDS and d.low <= d.value <= d.high
    assert d.value == pytest.approx(metrics.accuracy(sharp.softmax(1), labels) - metrics.accuracy(vague.softmax(1), labels))
    # a list of predictions is scored one by one and averaged ("average of individuals")
    both = claims.metric_difference("accuracy", [sharp.softmax(1), vague.softmax(1)], vague.softmax(1), labels)
    assert both.value == pytest.approx(d.value / 2)
    # every metric's per-resample form gives the readable metric on the full sample
    p = sharp.softmax(1)
    for name, readable in (("error", metrics.error), ("nll", metrics.nll), ("brier", metrics.brier), ("ece", metrics.ece)):
        assert claims.metric_rows(name, p, labels)(np.arange(400)) == pytest.approx(readable(p, labels), abs=1e-6)
    with pytest.raises(ValueError, match="unknown metric"):
        claims.metric_rows("f1", p, labels)


def test_bootstrap_is_seeded_and_skips_undefined_resamples():
    a = np.arange(10.0)
    e1 = claims.mean_estimate(a, seed=3)
    assert e1 == claims.mean_estimate(a, seed=3) and e1.value == pytest.approx(4.5)
    e = claims.bootstrap(lambda i: np.full(i.shape[:-1], np.nan), 5)
    assert np.isnan(e.low) and claims.verdict(e) == INCONCLUSIVE
    with pytest.raises(ValueError):
        claims.bootstrap(lambda i: i.mean(-1), 0)


def test_auc_estimate_and_two_sided_indistinguishability():
    rng = np.random.default_rng(0)
    same = claims.auc_estimate(rng.normal(size=20), rng.normal(size=20))
    assert same.low < 0.5 < same.high
    apart = claims.auc_estimate(rng.normal(size=20), rng.normal(3, size=20))
    assert apart.low > 0.9


def test_all_of_combines_parts():
    assert claims.all_of([HOLDS, HOLDS]) == HOLDS
    assert claims.all_of([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.all_of([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert claims.all_of([NOT_COMPARABLE, HOLDS]) == HOLDS
    assert claims.all_of([NOT_COMPARABLE]) == NOT_COMPARABLE


def test_convergence_criterion():
    flat = pd.DataFrame({"train_loss": [2.0] * 5 + [1.0] * 15})
    falling = pd.DataFrame({"train_loss": [2.0, 1.8, 1.6, 1.4]})
    ok, why = claims.convergence({"a": flat})
    assert ok and "a 0.0 %" in why
    ok, why = claims.convergence({"a": flat, "b": falling})
    assert not ok and "b 12.5 %" in why
    assert claims.curve_instability(pd.DataFrame({"test_acc": [0.1, 0.2, 0.3]})).size == 0
    assert len(claims.curve_instability(pd.DataFrame({"test_acc": np.arange(60.0)}))) == 6


def test_tally_and_markdown_keep_kinds_apart_and_cells_whole():
    df = pd.DataFrame({"statement": ["x" * 80, "y | z"], "verdict": [HOLDS, INCONCLUSIVE],
                       "kind": [claims.PAPER_CLAIM, claims.SANITY]})
    t = claims.tally(df)
    assert t.loc[claims.PAPER_CLAIM, HOLDS] == 1 and t.loc[claims.SANITY, INCONCLUSIVE] == 1
    md = claims.markdown_table(df)
    assert "x" * 80 in md and "y \\| z" in md
    assert "1 paper claim: 1 hold" in claims.tally_sentence(df)


def test_plot_intervals_match_the_bootstrap_of_a_mean():
    # mean_bands draws the same images as bootstrap (same seed), so a figure's band is the
    # interval a claim on that mean would use, only with fewer resamples.
    hits = (np.random.default_rng(1).random((3, 400)) < [[0.5], [0.7], [0.9]]).astype(float)
    low, high = claims.mean_bands(hits, n_resamples=200)
    for k in range(3):
        e = claims.bootstrap(lambda i: hits[k][i].mean(-1), 400, n_resamples=200)
        assert low[k] == pytest.approx(e.low) and high[k] == pytest.approx(e.high)
    y = torch.arange(400) % 4
    probs = torch.nn.functional.one_hot(y, 4).float()
    e = claims.metric_estimate("accuracy", [probs, probs.roll(1, 0)], y)
    assert e.n_resamples == claims.PLOT_RESAMPLES and e.low <= e.value <= e.high


def test_intervals_are_drawn_where_they_lie_even_beside_the_estimate():
    """A percentile interval of a biased statistic (ECE) can exclude its point estimate; the
    whiskers span the interval itself (05 failed on real data when they were measured from
    the estimate)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    claims.draw_intervals(ax, [0, 1], [0.52, 0.1], [0.60, 0.3], horizontal=True)
    spans = sorted(tuple(np.round(seg[:, 0], 6)) for seg in ax.collections[0].get_segments())
    plt.close(fig)
    assert spans == [(0.1, 0.3), (0.52, 0.6)]


def _loop_bootstrap(statistic, *sizes, n_resamples=claims.N_RESAMPLES, seed=0):
    """The readable bootstrap: the same resamples as claims.bootstrap, scored one at a time."""
    value = float(statistic(*(np.arange(n) for n in sizes)))
    draws = [claims.resample(n, n_resamples, seed + 7919 * k) for k, n in enumerate(sizes)]
    stats = np.array([statistic(*(d[b] for d in draws)) for b in range(n_resamples)], dtype=float)
    low, high = np.percentile(stats[np.isfinite(stats)], [2.5, 97.5])
    return claims.Estimate(value, float(low), float(high), n_resamples)


def test_the_vectorised_bootstrap_equals_one_resample_at_a_time():
    rng = np.random.default_rng(0)
    a, b, noise = rng.normal(size=40), rng.normal(0.5, size=25), rng.normal(size=40)
    for stat, sizes in ((lambda i: a[i].mean(-1), (40,)), (lambda i: claims.spread(a[i]), (40,)),
                        (lambda i, j: metrics.auc_rows(a[i], b[j]), (40, 25)),
                        (lambda i: metrics.spearman_rows(a[i], a[i] ** 3 + noise[i]), (40,))):
        fast, slow = claims.bootstrap(stat, *sizes, seed=3), _loop_bootstrap(stat, *sizes, seed=3)
        assert (fast.value, fast.low, fast.high) == pytest.approx((slow.value, slow.low, slow.high), abs=1e-12)


def _claim(notebook: str, starts: str) -> dict:
    record = json.loads((TINY / notebook / "claims.json").read_text())
    return next(c for c in record["claims"] if c["statement"].startswith(starts))


@pytest.mark.skipif(not (TINY / "04_unseen_archs" / "arch_scores.csv").is_file(), reason="no committed tiny run")
def test_the_committed_tiny_claims_come_out_the_same_from_the_vectorised_bootstrap():
    """The committed tiny run's intervals were computed one resample at a time; recomputed from
    its saved per-architecture scores, the vectorised bootstrap prints the same numbers."""
    scores = pd.read_csv(TINY / "01_bn_disparity" / "arch_scores.csv")
    claim = _claim("01_bn_disparity", "With BN in test mode the architectures' accuracies spread more")
    for S in (500, 5000):
        d = understand.arch_difference(scores[scores.S == S], "bn", "test", "train", claims.spread)
        assert f"S={S}: {d}" in claim["reproduced"] and claims.verdict(d) == "holds"
    arch = pd.read_csv(TINY / "04_unseen_archs" / "arch_scores.csv")
    claim = _claim("04_unseen_archs", "The AUC of telling seen from unseen")
    for S in (5, 50, 500, 5000):
        part = arch[arch.S == S]
        auc = claims.auc_estimate(part[part.kind == "unseen"].acc, part[part.kind == "seen"].acc)
        assert f"S={S}: {auc}" in claim["reproduced"]
    two = pd.read_csv(TINY / "02_instance_archs" / "arch_scores.csv")
    claim = _claim("02_instance_archs", "The Spearman correlations are at the paper's values")
    for S in (500, 5000):
        for model in ("NSA", "NSA-i"):
            assert f"{model} S={S}: {understand.rank_correlation(two, model, S)}" in claim["reproduced"]
