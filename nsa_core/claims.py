"""Claims with their uncertainty: the bootstrap, the verdict rules and their thresholds, the
training gate (convergence, matched budgets), and how a table of claims is rendered.

Intervals. Every number that decides a verdict carries a 95 % bootstrap interval over the
units it averages (test images, architectures); two groups (seen vs unseen architectures, in-
vs out-of-distribution images) are resampled independently, two models on the same test images
*paired* (each resample scores both on the same images). It is the percentile interval, which
holds the plug-in estimate when the statistic's bias is small beside its spread. Where it is
not (the ECE of a well calibrated model: the resamples' ECEs all lie above the plug-in one),
the estimate is the bias-corrected 2 x plug-in - median of the resamples, with the basic
interval [2 x plug-in - q97.5, 2 x plug-in - q2.5], which holds it by construction; the text
then says "bias-corrected" and gives the plug-in value.

Verdicts, on the interval of a number oriented so that positive is the paper's direction:
- an ordering (`verdict`): *holds* above zero, *does not hold* below, else *inconclusive*;
- a tolerance (`equivalence`: |x| < tol, `below`: x < limit): *holds* when the interval lies
  inside, *does not hold* when it lies wholly outside, *underpowered* when its half-width
  exceeds the tolerance (no run of this size could show it), else *inconclusive*;
- *not comparable at this profile*: absolute levels away from the paper's scale, and claims
  whose training gate is shut (`gate`).

The training gate. A model has *converged* when its test accuracy changes by less than
+-CONVERGED_CHANGE over the last fifth of training (the slope of its test curve there times a
fifth, bootstrap over the curve's points). Sec. 5's claims rank methods that learn at different
speeds (shared weights over S architectures, per-architecture parameters, stand-alone networks)
by their final numbers: judged only when every compared model converged ("converged"). Secs.
3-4 compare models of one training procedure (NSA and NSA-i differ only in their sampling rule;
BN modes, seen and unseen architectures are one model evaluated two ways), as the paper's own
curves do along training: judged at matched budgets (the same steps of the same batch), saying
whether the models converged ("matched").
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import pandas as pd
import torch

from . import metrics

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
UNDERPOWERED = "underpowered"
NOT_COMPARABLE = "not comparable at this profile"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNDERPOWERED, NOT_COMPARABLE)

PAPER_CLAIM = "paper claim"
BEYOND = "beyond the paper"
SANITY = "sanity check"
CLAIM_KINDS = (PAPER_CLAIM, BEYOND, SANITY)
PLURAL = {PAPER_CLAIM: "paper claims", BEYOND: "claims beyond the paper", SANITY: "sanity checks"}

N_RESAMPLES = 1000
CONFIDENCE = 0.95
# Intervals drawn in figures: fewer resamples than a verdict's, since a figure draws many of
# them (one per curve point or bar) and only shows their width.
PLOT_RESAMPLES = 200

# ---------------------------------------------------------------- verdict thresholds
# Converged: test accuracy changes by less than this over the last fifth of training, judged
# on at least MIN_CURVE_POINTS evaluations there.
CONVERGED_CHANGE = 0.01
LAST_PART = 0.2
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
    """A number and its bootstrap interval, low <= value <= high. `plug_in` is set when the
    value is the bias-corrected estimate, the statistic of the sample itself differing."""
    value: float
    low: float
    high: float
    n_resamples: int = N_RESAMPLES
    plug_in: float | None = None

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        v, lo, hi = (scale * x for x in (self.value, self.low, self.high))
        text = f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        if self.plug_in is not None:
            text += f" (bias-corrected; plug-in {scale * self.plug_in:.{digits}f})"
        return text

    __str__ = fmt

    def shifted(self, by: float) -> Estimate:
        """The same estimate of x + by."""
        plug = None if self.plug_in is None else self.plug_in + by
        return replace(self, value=self.value + by, low=self.low + by, high=self.high + by, plug_in=plug)

    def __rsub__(self, other: float) -> Estimate:
        """other - x: a level minus the estimate."""
        plug = None if self.plug_in is None else other - self.plug_in
        return replace(self, value=other - self.value, low=other - self.high, high=other - self.low, plug_in=plug)


def interval(value: float, stats: np.ndarray, n_resamples: int, confidence: float = CONFIDENCE,
             bounds: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """The Estimate of a statistic from its value on the sample and on the resamples (NaN
    resamples left out), as the module docstring says, within the statistic's `bounds`."""
    stats = np.asarray(stats, float)
    stats = stats[np.isfinite(stats)]
    if not len(stats) or not np.isfinite(value):
        return Estimate(value, np.nan, np.nan, n_resamples)
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [alpha, 100 - alpha])
    if low <= value <= high:
        return Estimate(value, float(low), float(high), n_resamples)
    lo, hi = bounds
    corrected = float(np.clip(2 * value - np.median(stats), lo, hi))
    return Estimate(corrected, float(np.clip(2 * value - high, lo, hi)), float(np.clip(2 * value - low, lo, hi)),
                    n_resamples, plug_in=value)


def proportion(p: float, n: int, seed: int = 0, n_resamples: int = N_RESAMPLES,
               confidence: float = CONFIDENCE) -> Estimate:
    """An accuracy p on n test images known only as a number: resampling n 0/1 outcomes is
    a binomial draw, so its bootstrap needs no per-image record."""
    draws = np.random.default_rng(seed).binomial(n, p, n_resamples) / n
    return interval(float(p), draws, n_resamples, confidence, bounds=(0.0, 1.0))


def resample(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] indices drawn with replacement from range(n), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


# Index entries a statistic sees at once: resamples are scored in chunks of rows so that a
# statistic over 10,000 test images needs tens of MB, not a gigabyte.
_CHUNK_ENTRIES = 4_000_000


def bootstrap(statistic: Callable[..., np.ndarray], *sizes: int, n_resamples: int = N_RESAMPLES, seed: int = 0,
              confidence: float = CONFIDENCE, bounds: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """`statistic` of the samples (of `sizes`) and its interval (`interval`), each sample
    resampled with replacement, independently, `n_resamples` times. The statistic is vectorised:
    it takes one index array per sample, [n_k] for the samples themselves or [rows, n_k] for a
    chunk of resamples, and reduces the last axis (e.g. `lambda i: x[i].mean(-1)`). A resample
    on which it is undefined (NaN) is left out."""
    if not sizes or min(sizes) < 1:
        raise ValueError(f"bootstrap needs non-empty samples, got sizes {sizes}")
    value = float(statistic(*(np.arange(n) for n in sizes)))
    draws = [resample(n, n_resamples, seed + 7919 * k) for k, n in enumerate(sizes)]
    rows = max(1, _CHUNK_ENTRIES // sum(sizes))
    stats = np.concatenate([np.broadcast_to(np.asarray(statistic(*(d[r:r + rows] for d in draws)), float),
                                            (min(rows, n_resamples - r),))
                            for r in range(0, n_resamples, rows)])
    return interval(value, stats, n_resamples, confidence, bounds)


def draw_intervals(ax, at, estimates: Iterable[Estimate], horizontal: bool = False, scale: float = 1.0,
                   **style) -> None:
    """Each estimate's interval as whiskers from its value at positions `at`."""
    est = list(estimates)
    v = scale * np.array([e.value for e in est], float)
    err = scale * np.array([[e.value - e.low for e in est], [e.high - e.value for e in est]], float)
    if horizontal:
        ax.errorbar(v, at, xerr=err, fmt="none", **style)
    else:
        ax.errorbar(at, v, yerr=err, fmt="none", **style)


def mean_bands(values, n_resamples: int = PLOT_RESAMPLES, seed: int = 0,
               confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the mean of each row of `values` [K, N] over its N units (test images),
    every row resampled on the same draws: one matrix product for a whole curve's band."""
    v = np.atleast_2d(np.asarray(values, float))
    n = v.shape[1]
    counts = np.stack([np.bincount(i, minlength=n) for i in resample(n, n_resamples, seed)]).astype(float)
    alpha = 100 * (1 - confidence) / 2
    return tuple(np.percentile(counts @ v.T / n, [alpha, 100 - alpha], axis=0))   # [B, K] means


METRICS = ("accuracy", "error", "nll", "brier", "ece")


def metric_rows(metric: str, preds, labels: torch.Tensor, n_bins: int = 15) -> Callable[[np.ndarray], np.ndarray]:
    """The per-resample form of a metric of predicted probabilities [N, C] (one of METRICS;
    error and accuracy as fractions) for `bootstrap`: test-image indices [..., n] -> [...]. A
    list of predictions is scored one by one and averaged (Table 2's average of individuals)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    y = torch.as_tensor(labels).long()
    parts = []
    for p in preds if isinstance(preds, list) else [preds]:
        p = metrics._as_tensors(p, y)[0].cpu().double()
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
    bounds = (0.0, np.inf) if metric in ("nll", "brier") else (0.0, 1.0)
    return bootstrap(metric_rows(metric, preds, labels, n_bins), len(labels), n_resamples=n_resamples, seed=seed,
                     bounds=bounds)


def verdict(difference: Estimate, comparable: bool = True) -> str:
    """An ordering: the verdict on a difference oriented so that positive is the paper's direction."""
    if not comparable:
        return NOT_COMPARABLE
    return HOLDS if difference.low > 0 else FAILS if difference.high < 0 else INCONCLUSIVE


def equivalence(difference: Estimate, tolerance: float, comparable: bool = True) -> str:
    """A tolerance, |x| < tolerance, for the estimate x of a difference from a target (a level,
    an AUC against 0.5), as the module docstring says."""
    if not comparable:
        return NOT_COMPARABLE
    if -tolerance < difference.low and difference.high < tolerance:
        return HOLDS
    if difference.low > tolerance or difference.high < -tolerance:
        return FAILS
    return UNDERPOWERED if difference.half_width > tolerance else INCONCLUSIVE


def below(estimate: Estimate, limit: float, comparable: bool = True) -> str:
    """A one-sided tolerance, x < limit (a small gain), as the module docstring says."""
    if not comparable:
        return NOT_COMPARABLE
    if estimate.high < limit:
        return HOLDS
    if estimate.low > limit:
        return FAILS
    return UNDERPOWERED if estimate.half_width > limit else INCONCLUSIVE


def all_of(verdicts: Iterable[str]) -> str:
    """A claim made "at every S" (or for every attack): does not hold if any part does not, holds
    if every comparable part holds, else underpowered if any part is, else inconclusive."""
    comparable = [v for v in verdicts if v != NOT_COMPARABLE]
    if not comparable:
        return NOT_COMPARABLE
    if FAILS in comparable:
        return FAILS
    if all(v == HOLDS for v in comparable):
        return HOLDS
    return UNDERPOWERED if UNDERPOWERED in comparable else INCONCLUSIVE


# ------------------------------------------------------------- statistics with intervals

def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def correct(probs: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    """Per test image [N], 1 if the prediction is right; for a list of predictions (the
    individuals of "average of individuals") the mean over them."""
    preds = probs if isinstance(probs, list) else [probs]
    y = _np(labels)
    return np.mean([_np(p).argmax(1) == y for p in preds], axis=0).astype(float)


def spread(values: np.ndarray) -> np.ndarray:
    """Standard deviation over the last axis (ddof 1, as pandas' std): over architectures,
    or over the last points of a curve."""
    values = np.asarray(values, float)
    return np.std(values, axis=-1, ddof=1) if values.shape[-1] > 1 else np.full(values.shape[:-1], np.nan)


def mean_estimate(a: np.ndarray, seed: int = 0) -> Estimate:
    a = np.asarray(a, float)
    return bootstrap(lambda i: a[i].mean(-1), len(a), seed=seed)


def mean_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for per-unit values paired on the same units (test images)."""
    return mean_estimate(np.asarray(a, float) - np.asarray(b, float), seed)


def paired(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], a, b, seed: int = 0) -> Estimate:
    """statistic(a, b) of values paired on the same units (architectures), the units resampled
    together; `statistic` reduces the last axis of its two [..., n] arguments."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bootstrap(lambda i: statistic(a[i], b[i]), len(a), seed=seed)


def arch_difference(scores: pd.DataFrame, column: str, a, b, stat=None, seed: int = 0) -> Estimate:
    """stat(accuracies under `a`) - stat(accuracies under `b`) of the same architectures
    (`column` tells a from b: the BN mode, or the model on one training space), paired over
    architectures. `stat` reduces the last axis (default the mean; spread)."""
    stat = stat or (lambda v: v.mean(-1))
    wide = scores.pivot(index="arch", columns=column, values="acc").dropna()
    return paired(lambda x, y: stat(x) - stat(y), wide[a], wide[b], seed=seed)


def two_sample(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], a, b, seed: int = 0) -> Estimate:
    """statistic(a, b) of two independent samples, each resampled on its own; `statistic`
    reduces the last axis of its two arguments."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bootstrap(lambda i, j: statistic(a[i], b[j]), len(a), len(b), seed=seed)


def auc_estimate(negatives, positives, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Estimate:
    """ROC AUC of positives vs negatives (metrics.auc), both samples resampled."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    return bootstrap(lambda i, j: metrics.auc_rows(neg[i], pos[j]), len(neg), len(pos), seed=seed,
                     n_resamples=n_resamples, bounds=(0.0, 1.0))


def falls(xs, groups: list[tuple], statistic: Callable[..., np.ndarray], seed: int = 0) -> Estimate:
    """A trend over every x, not its endpoints: -Kendall's tau between `xs` and statistic(*group)
    over the groups (one per x, each a tuple of samples; `statistic` reduces their last axis),
    every sample resampled on its own. Positive when the statistic falls as x grows."""
    flat = [np.asarray(a, float) for g in groups for a in g]
    starts = np.cumsum([0] + [len(g) for g in groups])
    x = np.asarray(xs, float)

    def stat(*idx: np.ndarray) -> np.ndarray:
        values = [statistic(*(flat[k][idx[k]] for k in range(s, e))) for s, e in pairwise(starts)]
        v = np.stack(np.broadcast_arrays(*values), -1)
        return -metrics.kendall_rows(np.broadcast_to(x, v.shape), v)

    return bootstrap(stat, *map(len, flat), seed=seed, bounds=(-1.0, 1.0))


def metric_difference(metric: str, a, b, labels: torch.Tensor, seed: int = 0, n_bins: int = 15) -> Estimate:
    """metric(a) - metric(b) (one of METRICS) on the same resampled test images (paired); `a`
    or `b` may be a list of predictions [N, C], scored one by one and averaged."""
    ra, rb = metric_rows(metric, a, labels, n_bins), metric_rows(metric, b, labels, n_bins)
    return bootstrap(lambda i: ra(i) - rb(i), len(labels), seed=seed)


# ---------------------------------------------------------------------- the training gate

def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x along the last axis (NaN where x is constant)."""
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / (x * x).sum(-1)


def late_change(curve: pd.DataFrame, seed: int = 0) -> Estimate | None:
    """How much the test accuracy still changes over the last fifth of training: the slope of
    the test curve (curve.csv: step, test_acc) over its points there, times a fifth of the
    run, bootstrap over those points. None with fewer than MIN_CURVE_POINTS points there."""
    steps = curve.step.to_numpy(float)
    last = curve[steps >= (1 - LAST_PART) * steps.max()]
    if len(last) < MIN_CURVE_POINTS:
        return None
    x, y = last.step.to_numpy(float) / steps.max(), last.test_acc.to_numpy(float)
    return bootstrap(lambda i: LAST_PART * _slope(x[i], y[i]), len(x), seed=seed)


def converged(curve: pd.DataFrame, seed: int = 0) -> tuple[bool, str]:
    """(whether the model converged, what its curve says): its late change lies within
    +-CONVERGED_CHANGE. A model in the cache has finished its schedule."""
    change = late_change(curve, seed)
    if change is None:
        return False, f"too few test evaluations there (fewer than {MIN_CURVE_POINTS})"
    ok = -CONVERGED_CHANGE < change.low and change.high < CONVERGED_CHANGE
    return ok, f"{change} ({'converged' if ok else 'not converged'})"


@dataclass(frozen=True)
class Gate:
    """Whether the claims on some trained models may be judged, and the sentence that says why."""
    comparable: bool
    text: str


def gate(curves: Mapping[str, pd.DataFrame], batches: Mapping[str, int], rule: str, seed: int = 0) -> Gate:
    """The training gate (module docstring) of a claim on the models named in `curves` (their
    test curves) and `batches` (images per step): rule "converged" or "matched"."""
    if rule not in ("converged", "matched"):
        raise ValueError(f"rule must be 'converged' or 'matched', got {rule!r}")
    states = {name: converged(c, seed) for name, c in curves.items()}
    texts = {text for _, text in states.values()}
    said = f"every model: {texts.pop()}" if len(texts) == 1 and len(states) > 1 else \
        "; ".join(f"{name}: {text}" for name, (_, text) in states.items())
    change = f"test accuracy's change over the last fifth of training (converged: within +-{CONVERGED_CHANGE}) {said}"
    if rule == "converged":
        return Gate(all(c for c, _ in states.values()), f"judged only when every compared model converged; {change}")
    budgets = {(int(c.step.max()), batches[name]) for name, c in curves.items()}
    if len(budgets) > 1:
        return Gate(False, f"the compared models were trained with different budgets; {change}")
    steps, batch = budgets.pop()
    return Gate(True, f"judged at matched budgets ({steps} steps of {batch} images each); {change}")


def curve_instability(history: pd.DataFrame, column: str = "test_acc") -> np.ndarray:
    """The last tenth of a logged test curve (at least MIN_CURVE_POINTS points), whose spread
    measures how unstable the curve is; empty when the curve is too short."""
    values = history[column].dropna().to_numpy(float)
    k = max(MIN_CURVE_POINTS, round(len(values) / 10))
    return values[-k:] if len(values) >= k else np.array([])


# ---------------------------------------------------------------------- rendering

def by_S(estimates: dict) -> str:
    """'S=500: a [lo, hi], S=5000: ...' of estimates keyed by S."""
    return ", ".join(f"S={S}: {e}" for S, e in estimates.items())


def tally(claims: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per kind of claim: rows CLAIM_KINDS (those present), columns VERDICTS."""
    counts = pd.crosstab(claims["kind"], claims["verdict"])
    return counts.reindex(index=[k for k in CLAIM_KINDS if k in counts.index], columns=list(VERDICTS), fill_value=0)


def tally_sentence(claims: pd.DataFrame) -> str:
    """'N paper claims: a hold, b do not hold, ...; M sanity checks: ...'."""
    parts = [f"{row.sum()} {PLURAL[kind] if row.sum() != 1 else kind}: {row[HOLDS]} hold, {row[FAILS]} do not "
             f"hold, {row[INCONCLUSIVE]} inconclusive, {row[UNDERPOWERED]} underpowered, "
             f"{row[NOT_COMPARABLE]} not comparable" for kind, row in tally(claims).iterrows()]
    return "; ".join(parts) if parts else "no claims"


def markdown_table(rows: pd.DataFrame | list[list], columns: Iterable[str] | None = None) -> str:
    """A markdown table, every cell in full on one line (pipes escaped): a DataFrame's
    `columns` (default all), or rows of values under the header `columns`."""
    if isinstance(rows, pd.DataFrame):
        cols = list(columns or rows.columns)
        rows = rows[cols].values.tolist()
    else:
        cols = list(columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(" ".join(str(v).split()).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)
