"""Classification, calibration and uncertainty metrics (paper Sec. 5.1-5.2).

Every function takes predicted *probabilities* (rows sum to 1), never logits: an ensemble's
prediction is the average of its members' softmax, and averaging logits instead would be a
different model, so logits raise instead of giving a silently wrong number. torchmetrics
computes ECE and scikit-learn ROC AUC.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

ArrayLike = torch.Tensor | np.ndarray


def _check(probs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if probs.dim() < 2:
        raise ValueError(f"probs must have shape [..., N, C], got {tuple(probs.shape)}")
    # Averaged float32 softmax rows sum to 1 to about 1e-6; 1e-3 still catches logits.
    if probs.numel() and (probs.min() < 0 or probs.max() > 1 or (probs.sum(-1) - 1).abs().max() > 1e-3):
        raise ValueError("probs must be probabilities (in [0, 1], rows summing to 1); apply softmax to logits first")
    if labels is not None and labels.shape != probs.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match probs shape {tuple(probs.shape)}")


def _as_tensors(probs: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = torch.as_tensor(probs).detach(), torch.as_tensor(labels).detach().long()
    _check(probs, labels)
    return probs, labels


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of examples whose arg-max class is the label."""
    probs, labels = _as_tensors(probs, labels)
    return (probs.argmax(1) == labels).double().mean().item()


def error(probs: ArrayLike, labels: ArrayLike) -> float:
    """1 - accuracy, as a fraction (the paper's tables print it as a percentage)."""
    return 1.0 - accuracy(probs, labels)


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the labels; eps keeps a zero probability finite."""
    probs, labels = _as_tensors(probs, labels)
    return -probs.double().gather(1, labels[:, None]).squeeze(1).clamp_min(eps).log().mean().item()


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over examples of sum_c (p_c - onehot_c)^2 (the multi-class Brier score, in [0, 2])."""
    probs, labels = _as_tensors(probs, labels)
    return (probs.double() - torch.nn.functional.one_hot(labels, probs.shape[1])).pow(2).sum(1).mean().item()


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, the paper's Table 2): top-class confidences
    in `n_bins` equal-width bins, ECE = sum_b |B_b|/N |acc_b - conf_b|. torchmetrics puts a
    confidence of exactly 1.0 (a saturated float32 softmax) in a bin of its own, `reliability`
    folds it into the top bin, so the two agree unless some confidence is exactly 1.0."""
    # imported here: torchmetrics pulls in torchvision's models, seconds of every import of this module
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = _as_tensors(probs, labels)
    return multiclass_calibration_error(probs.float(), labels, num_classes=probs.shape[1],
                                        n_bins=n_bins, norm="l1").item()


def confidence_bins(conf: np.ndarray | torch.Tensor, n_bins: int = 15) -> np.ndarray:
    """Bin index of each top-class confidence: torchmetrics' float32 edges and left-closed bins
    [lower, upper), with a confidence of exactly 1.0 folded into the top bin."""
    conf = np.asarray(torch.as_tensor(conf).detach().cpu().float())
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def reliability(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> pd.DataFrame:
    """The reliability diagram behind `ece`: one row per confidence bin with columns
    bin_lower, bin_upper, confidence (mean top-class probability), accuracy, count.
    Empty bins have NaN confidence and accuracy."""
    probs, labels = _as_tensors(probs, labels)
    conf, pred = probs.max(1)
    idx = confidence_bins(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    conf_sum = np.bincount(idx, conf.double().numpy(), minlength=n_bins)
    hit_sum = np.bincount(idx, (pred == labels).double().numpy(), minlength=n_bins)
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:],
                             "confidence": np.where(count > 0, conf_sum / count, np.nan),
                             "accuracy": np.where(count > 0, hit_sum / count, np.nan),
                             "count": count.astype(int)})


def entropy(probs: ArrayLike) -> torch.Tensor:
    """Predictive entropy in nats over the last axis, [..., C] -> [...]; 0 log 0 = 0."""
    probs = torch.as_tensor(probs).detach()
    _check(probs.reshape(-1, probs.shape[-1]))
    return -torch.special.xlogy(probs, probs).sum(-1)


def mutual_information(member_probs: ArrayLike) -> torch.Tensor:
    """The paper's uncertainty (Sec. 5.2): H[mean_t p_t] - mean_t H[p_t] for the T members'
    predictions, [T, N, C] -> [N]. It is the part of the ensemble's entropy that comes from
    the members disagreeing, so confident-but-agreeing members score 0."""
    member_probs = torch.as_tensor(member_probs).detach()
    if member_probs.dim() != 3:
        raise ValueError(f"member_probs must have shape [T, N, C], got {tuple(member_probs.shape)}")
    # float64: the two entropies nearly cancel for agreeing members.
    p = member_probs.double()
    mi = entropy(p.mean(0)) - entropy(p).mean(0)
    # MI >= 0 (Jensen); a negative value is only rounding, and would reorder ties in an AUC.
    return mi.clamp_min(0).to(member_probs.dtype)


def _flat_numpy(x: ArrayLike) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)


def auc(negatives: ArrayLike, positives: ArrayLike) -> float:
    """ROC AUC of telling positives (class 1: OOD, adversarial, unseen) from negatives
    (class 0) by the score, higher meaning more positive. Ties count half, so 0.5 is chance."""
    neg, pos = _flat_numpy(negatives), _flat_numpy(positives)
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("auc needs at least one negative and one positive score")
    y = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    return float(roc_auc_score(y, np.concatenate([neg, pos])))


# ------------------------------------------------------------------ row-wise (bootstrap) forms
# The bootstrap scores a statistic on a thousand resamples at once: these reduce the last axis
# (the units: test images, architectures) of arrays whose leading axes are the resamples. Each
# equals its readable form (above, or scipy's) on one row (tests/test_metrics.py). Ranks: ties get their average.

def auc_rows(negatives: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """`auc` of every row: [..., n] negatives and [..., m] positives -> [...]; the
    Mann-Whitney statistic from the ranks of both together, ties counting half."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    n, m = neg.shape[-1], pos.shape[-1]
    lead = np.broadcast_shapes(neg.shape[:-1], pos.shape[:-1])
    both = np.concatenate([np.broadcast_to(neg, lead + (n,)), np.broadcast_to(pos, lead + (m,))], -1)
    return (rankdata(both, axis=-1)[..., n:].sum(-1) - m * (m + 1) / 2) / (n * m)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of every row: Pearson's r of the ranks, NaN where a row is constant."""
    a, b = (rankdata(np.asarray(x, float), axis=-1) for x in (a, b))
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of every row (ties allowed, as a resample has them), NaN where a row is
    constant. All pairs at once: [..., n, n] signs, fine for the few dozen architectures it ranks."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):   # a constant row: 0 / 0
        return (sa * sb).sum((-1, -2)) / np.sqrt((sa * sa).sum((-1, -2)) * (sb * sb).sum((-1, -2)))


def ece_rows(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """`ece` of every row from per-example top-class confidence and correctness (0/1):
    [..., n] -> [...], with `confidence_bins`' bins."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    lead, n = conf.shape[:-1], conf.shape[-1]
    rows = int(np.prod(lead))
    bins = confidence_bins(conf.reshape(-1), n_bins).reshape(rows, n) + n_bins * np.arange(rows)[:, None]
    gap = np.bincount(bins.ravel(), (correct - conf).reshape(-1), minlength=rows * n_bins)
    return np.abs(gap.reshape(rows, n_bins)).sum(-1).reshape(lead) / n
