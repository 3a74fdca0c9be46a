"""Claims with their uncertainty: the bootstrap, the verdict rules, their thresholds, the
convergence criterion, and how a table of claims is rendered.

Every reproduced number that decides a verdict carries a 95 % percentile-bootstrap interval.
Resampled are the units the number is an average over: test images (an accuracy, an ECE, an
AUC over images), architectures (a mean, a spread or a rank correlation over architectures),
or both samples independently when two groups are compared (seen vs unseen architectures,
in- vs out-of-distribution images). An ordering between two models on the same test images is
tested *paired*: each resample draws one set of images and scores both models on it, so the
interval is that of the difference.

A claim's verdict follows from the interval of a difference oriented so that positive is the
paper's direction: it *holds* when the interval lies above zero, *does not hold* when it lies
below, and is *inconclusive* when it contains zero. A claim about trained models (absolute
levels, Sec. 5's orderings) is *not comparable at this profile* unless the compared models are
trained to convergence (`convergence`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import metrics

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
NOT_COMPARABLE = "not comparable at this profile"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_COMPARABLE)

PAPER_CLAIM = "paper claim"
BEYOND = "beyond the paper"
SANITY = "sanity check"
CLAIM_KINDS = (PAPER_CLAIM, BEYOND, SANITY)
PLURAL = {PAPER_CLAIM: "paper claims", BEYOND: "claims beyond the paper", SANITY: "sanity checks"}

N_RESAMPLES = 1000
CONFIDENCE = 0.95

# ---------------------------------------------------------------- verdict thresholds
# Training has converged when the training loss over the last tenth of training (at least
# the last logged epoch) changed by less than this fraction.
CONVERGED_REL_CHANGE = 0.05
# A test curve's instability is the standard deviation of its last tenth of points; fewer
# points than this say nothing about it.
MIN_CURVE_POINTS = 5
# Seen and unseen architectures are "nearly indistinguishable" when |AUC - 0.5| is below this
# (the paper calls 0.57 and 0.52 nearly indistinguishable, 0.77 not).
INDISTINGUISHABLE = 0.15
# "No further gain after T = 20": the mean gain over T >= 20 against T = 20 stays below this.
NO_FURTHER_GAIN = 0.005
# "Small" ensemble gain (paper: about 0.003).
SMALL_GAIN = 0.01
# Tolerances of the absolute-level claims, judged only at the paper's scale.
SPEARMAN_TOL = 0.15
TABLE1_TOL_PP = 0.5
TABLE2_ERROR_TOL_PP = 0.5
TABLE2_ECE_TOL = 0.01
TABLE3_TOL = 0.03
SEMI_TOL_PP = 1.0


@dataclass(frozen=True)
class Estimate:
    """A number and its bootstrap interval."""
    value: float
    low: float
    high: float
    n_resamples: int = N_RESAMPLES

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        v, lo, hi = (scale * x for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    def __str__(self) -> str:
        return self.fmt()

    def __neg__(self) -> "Estimate":
        return Estimate(-self.value, -self.high, -self.low, self.n_resamples)

    def __rsub__(self, other: float) -> "Estimate":
        return Estimate(other - self.value, other - self.high, other - self.low, self.n_resamples)


def proportion(p: float, n: int, seed: int = 0, n_resamples: int = N_RESAMPLES,
               confidence: float = CONFIDENCE) -> Estimate:
    """An accuracy p on n test images known only as a number: resampling n 0/1 outcomes is
    a binomial draw, so its bootstrap needs no per-image record."""
    draws = np.random.default_rng(seed).binomial(n, p, n_resamples) / n
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [alpha, 100 - alpha])
    return Estimate(float(p), float(low), float(high), n_resamples)


def within(estimate: Estimate, target: float, tolerance: float) -> Estimate:
    """tolerance - |estimate - target| with its interval: positive when the estimate lies
    within `tolerance` of the paper's `target` (a level claim)."""
    lo, hi = estimate.low - target, estimate.high - target
    far = max(abs(lo), abs(hi))
    near = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    return Estimate(tolerance - abs(estimate.value - target), tolerance - far, tolerance - near,
                    estimate.n_resamples)


def resample(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] indices drawn with replacement from range(n), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


# Index entries a statistic sees at once: resamples are scored in chunks of rows so that a
# statistic over 10,000 test images needs tens of MB, not a gigabyte.
_CHUNK_ENTRIES = 4_000_000


def bootstrap(statistic: Callable[..., np.ndarray], *sizes: int, n_resamples: int = N_RESAMPLES, seed: int = 0,
              confidence: float = CONFIDENCE) -> Estimate:
    """`statistic` of the full samples and its percentile interval: each of the samples (of
    `sizes`) is resampled with replacement, independently, `n_resamples` times.

    The statistic is vectorised: it takes one index array per sample, of shape [..., n_k],
    and reduces the last axis, returning [...] (e.g. `lambda i: x[i].mean(-1)`). It is called
    once on the samples themselves (indices [n_k]) and once per chunk of resamples (indices
    [rows, n_k]): the resamples are one indexed array operation, not a Python loop. A
    resample on which the statistic is undefined (NaN) is left out."""
    if not sizes or min(sizes) < 1:
        raise ValueError(f"bootstrap needs non-empty samples, got sizes {sizes}")
    value = float(statistic(*(np.arange(n) for n in sizes)))
    draws = [resample(n, n_resamples, seed + 7919 * k) for k, n in enumerate(sizes)]
    rows = max(1, _CHUNK_ENTRIES // sum(sizes))
    stats = np.concatenate([np.broadcast_to(np.asarray(statistic(*(d[r:r + rows] for d in draws)), float),
                                            (min(rows, n_resamples - r),))
                            for r in range(0, n_resamples, rows)])
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return Estimate(value, np.nan, np.nan, n_resamples)
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [alpha, 100 - alpha])
    return Estimate(value, float(low), float(high), n_resamples)


# Intervals drawn in figures: fewer resamples than a verdict's, since a figure draws many of
# them (one per curve point or bar) and only shows their width.
PLOT_RESAMPLES = 200


def draw_intervals(ax, at, low, high, horizontal: bool = False, **style) -> None:
    """Whiskers spanning each interval [low, high] at positions `at`. They are drawn about the
    interval's middle, not the point estimate: the percentile interval of a biased statistic
    (ECE, Spearman, AUC) can lie beside the estimate, which whiskers measured from the
    estimate would misdraw (and matplotlib refuses as negative)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    mid, half = (low + high) / 2, (high - low) / 2
    if horizontal:
        ax.errorbar(mid, at, xerr=half, fmt="none", **style)
    else:
        ax.errorbar(at, mid, yerr=half, fmt="none", **style)


def mean_bands(values, n_resamples: int = PLOT_RESAMPLES, seed: int = 0,
               confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the mean of each row of `values` [K, N] over its N units (test images),
    every row resampled on the same draws: one matrix product per call, so a whole curve's band
    (a [T, N] hit matrix) is cheap."""
    v = np.atleast_2d(np.asarray(values, float))
    n = v.shape[1]
    idx = resample(n, n_resamples, seed)
    counts = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)   # [B, N]
    means = counts @ v.T / n                                                        # [B, K]
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [alpha, 100 - alpha], axis=0)
    return low, high


METRICS = ("accuracy", "error", "nll", "brier", "ece")


def metric_rows(metric: str, preds, labels: torch.Tensor, n_bins: int = 15) -> Callable[[np.ndarray], np.ndarray]:
    """The per-resample form of a metric of predicted probabilities [N, C] (one of METRICS;
    error and accuracy as fractions): a function of test-image indices [..., n] returning
    [...], for `bootstrap`. A list of predictions is scored one by one and averaged (the
    average of individuals, as Table 2 scores them)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    y = torch.as_tensor(labels).long()
    parts = []
    for p in preds if isinstance(preds, list) else [preds]:
        p = torch.as_tensor(p).detach().cpu()
        metrics._check(p, y)
        p = p.double()
        conf, pred = p.max(1)
        right = (pred == y).double()
        per_image = {"accuracy": right, "error": 1 - right,
                     "nll": -p.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log(),
                     "brier": (p - torch.nn.functional.one_hot(y, p.shape[1])).pow(2).sum(1)}
        parts.append((conf.numpy(), right.numpy()) if metric == "ece" else per_image[metric].numpy())

    def rows(i: np.ndarray) -> np.ndarray:
        if metric == "ece":
            return np.mean([metrics.ece_rows(c[i], r[i], n_bins) for c, r in parts], axis=0)
        return np.mean([v[i].mean(-1) for v in parts], axis=0)
    return rows


def metric_estimate(metric: str, preds, labels: torch.Tensor, n_resamples: int = PLOT_RESAMPLES, seed: int = 0,
                    n_bins: int = 15) -> Estimate:
    """A metric (one of METRICS) of `preds` over resampled test images (metric_rows)."""
    return bootstrap(metric_rows(metric, preds, labels, n_bins), len(labels), n_resamples=n_resamples, seed=seed)


def verdict(difference: Estimate, comparable: bool = True) -> str:
    """The verdict from the interval of a difference oriented so that positive is the paper's
    direction."""
    if not comparable:
        return NOT_COMPARABLE
    if difference.low > 0:
        return HOLDS
    if difference.high < 0:
        return FAILS
    return INCONCLUSIVE


def all_of(verdicts: Iterable[str]) -> str:
    """A claim made "at every S" (or for every attack): it does not hold if any part does not,
    holds if every comparable part holds, and is inconclusive otherwise."""
    verdicts = list(verdicts)
    comparable = [v for v in verdicts if v != NOT_COMPARABLE]
    if not comparable:
        return NOT_COMPARABLE
    if FAILS in comparable:
        return FAILS
    return HOLDS if all(v == HOLDS for v in comparable) else INCONCLUSIVE


# ------------------------------------------------------------- statistics with intervals

def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def correct(probs: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    """Per test image, 1 if the prediction is right: [N]; for a list of predictions (the
    individuals of "average of individuals") the mean over them, so its mean is their mean
    accuracy."""
    preds = probs if isinstance(probs, list) else [probs]
    y = _np(labels)
    return np.mean([_np(p).argmax(1) == y for p in preds], axis=0).astype(float)


def spread(values: np.ndarray) -> np.ndarray:
    """Standard deviation over the last axis (ddof 1, as pandas' std): over architectures,
    or over the last points of a curve."""
    values = np.asarray(values, float)
    return np.std(values, axis=-1, ddof=1) if values.shape[-1] > 1 else np.full(values.shape[:-1], np.nan)


def mean_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for per-unit values paired on the same units (test images)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return bootstrap(lambda i: d[i].mean(-1), len(d), seed=seed)


def mean_estimate(a: np.ndarray, seed: int = 0) -> Estimate:
    a = np.asarray(a, float)
    return bootstrap(lambda i: a[i].mean(-1), len(a), seed=seed)


def paired(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], a, b, seed: int = 0) -> Estimate:
    """statistic(a, b) of values paired on the same units (architectures), the units resampled
    together; `statistic` reduces the last axis of its two [..., n] arguments."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bootstrap(lambda i: statistic(a[i], b[i]), len(a), seed=seed)


def two_sample(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], a, b, seed: int = 0) -> Estimate:
    """statistic(a, b) of two independent samples, each resampled on its own; `statistic`
    reduces the last axis of its two arguments."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bootstrap(lambda i, j: statistic(a[i], b[j]), len(a), len(b), seed=seed)


def auc_estimate(negatives, positives, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Estimate:
    """ROC AUC of positives vs negatives (metrics.auc), both samples resampled."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    return bootstrap(lambda i, j: metrics.auc_rows(neg[i], pos[j]), len(neg), len(pos), seed=seed,
                     n_resamples=n_resamples)


def metric_difference(metric: str, a, b, labels: torch.Tensor, seed: int = 0, n_bins: int = 15) -> Estimate:
    """metric(a) - metric(b) (one of METRICS) on the same resampled test images (paired); `a`
    or `b` may be a list of predictions [N, C], scored one by one and averaged (the average
    of individuals)."""
    ra, rb = metric_rows(metric, a, labels, n_bins), metric_rows(metric, b, labels, n_bins)
    return bootstrap(lambda i: ra(i) - rb(i), len(labels), seed=seed)


# ---------------------------------------------------------------------- convergence

def loss_change(history: pd.DataFrame, column: str = "train_loss") -> float:
    """Relative change of the training loss over the last tenth of training, at least over
    the last logged epoch (a longer window than a tenth only makes the check stricter)."""
    loss = history[column].to_numpy(float)
    if len(loss) < 2:
        return float("nan")
    k = max(1, round(len(loss) / 10))
    before, last = loss[-1 - k], loss[-1]
    return abs(last - before) / abs(before) if before else float("nan")


def convergence(histories: Mapping[str, pd.DataFrame], column: str = "train_loss") -> tuple[bool, str]:
    """(whether every model converged, a sentence saying by how much each loss still moved)."""
    changes = {name: loss_change(h, column) for name, h in histories.items()}
    ok = all(np.isfinite(c) and c < CONVERGED_REL_CHANGE for c in changes.values())
    said = ", ".join(f"{name} {100 * c:.1f} %" for name, c in changes.items())
    return ok, (f"training loss over the last tenth of training (at least the last epoch) changed by {said}; "
                f"converged means below {100 * CONVERGED_REL_CHANGE:g} % for every compared model")


def curve_instability(history: pd.DataFrame, column: str = "test_acc") -> np.ndarray:
    """The last tenth of a logged test curve (at least MIN_CURVE_POINTS points), whose spread
    measures how unstable the curve is; empty when the curve is too short."""
    values = history[column].dropna().to_numpy(float)
    k = max(MIN_CURVE_POINTS, round(len(values) / 10))
    return values[-k:] if len(values) >= k else np.array([])


# ---------------------------------------------------------------------- rendering

def tally(claims: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per kind of claim: rows CLAIM_KINDS (those present), columns VERDICTS."""
    kinds = claims["kind"] if "kind" in claims else pd.Series(PAPER_CLAIM, index=claims.index)
    counts = pd.crosstab(kinds, claims["verdict"])
    return counts.reindex(index=[k for k in CLAIM_KINDS if k in counts.index], columns=list(VERDICTS), fill_value=0)


def tally_sentence(claims: pd.DataFrame) -> str:
    t = tally(claims)
    parts = []
    for kind, row in t.iterrows():
        parts.append(f"{row.sum()} {PLURAL[kind] if row.sum() != 1 else kind}: {row[HOLDS]} hold, {row[FAILS]} do not "
                     f"hold, {row[INCONCLUSIVE]} inconclusive, {row[NOT_COMPARABLE]} not comparable")
    return "; ".join(parts) if parts else "no claims"


def markdown_table(claims: pd.DataFrame, columns: Iterable[str] | None = None) -> str:
    """The claims as a markdown table, every cell in full (pipes escaped)."""
    cols = list(columns or claims.columns)
    cell = lambda v: " ".join(str(v).split()).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in claims[cols].itertuples(index=False)]
    return "\n".join(lines)
