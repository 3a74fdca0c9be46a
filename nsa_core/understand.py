"""Understanding NSA (the paper's Secs. 3-4): shared steps of notebooks (01 BN disparity, 02 instance-specific
architectures, 03 mode collapse, 04 unseen architectures): scores of seen architectures in
either BN mode (cached, since 02 and 04 reuse what 01 and 02 computed) and the figures that
more than one notebook draws.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
import seaborn as sns
import torch

from typing import TYPE_CHECKING

from . import claims, evaluate

if TYPE_CHECKING:
    from .experiment import Experiment

CURVES = (("loss", "train_loss", "test_loss"), ("accuracy", "train_acc", "test_acc"))


def seen_scores(exp: Experiment, kind: str, space: int, bn: str, n: int | None = None) -> pd.DataFrame:
    """Accuracy and loss (columns arch, acc, loss) of the first min(n, S) architectures of
    the training space of the `kind` model trained at S = `space`, on exp.test_set(), with BN
    in `bn` mode: 'train' in batches of the training batch size, one architecture each, as
    NSA trains; 'test' in mixed batches of profile.eval_batch. n defaults to profile.n_archs.
    Cached in results/<profile>/_shared, keyed by the model, the test set and the batches."""
    p, r = exp.profile, exp.profile.train
    n = min(n or p.n_archs, space)
    test = exp.test_set()
    batch = r.batch_size if bn == "train" else r.eval_batch
    spec = exp.spec(kind, space=space)
    path = exp.shared_dir / f"scores_{spec.key}_{bn}_n{n}_{test.fingerprint()}_b{batch}.csv"
    if path.exists():
        return pd.read_csv(path)
    model, _ = exp.model(kind, space=space)
    scores = evaluate.arch_scores(model, test.images, test.labels, r.dataset, archs=torch.arange(n),
                                  bn=bn, batch=batch)
    tmp = path.with_suffix(".tmp")
    scores.to_csv(tmp, index=False)
    tmp.replace(path)
    return scores


def bn_mode_scores(exp: Experiment, kind: str, spaces: tuple[int, ...], n: int | None = None) -> pd.DataFrame:
    """seen_scores in both BN modes for every S: columns S, bn ('train'/'test'), arch, acc, loss."""
    return pd.concat([seen_scores(exp, kind, S, bn, n).assign(S=S, bn=bn)
                      for S in spaces for bn in ("train", "test")], ignore_index=True)


def plot_curves(hists: dict[int, pd.DataFrame], title: str) -> plt.Figure:
    """Training curves per S (paper Figs. 2-3 (a)-(b)): loss and accuracy per epoch, training
    (BN in training mode, architectures as trained) against test (BN in test mode)."""
    fig, axes = plt.subplots(2, len(hists), figsize=(4 * len(hists), 6), squeeze=False)
    for col, (S, hist) in enumerate(hists.items()):
        for row, (what, train, test) in enumerate(CURVES):
            ax = axes[row, col]
            ax.plot(hist.epoch, hist[train], "o-", label="train (BN train mode)")
            ax.plot(hist.epoch, hist[test], "s--", label="test (BN test mode)")
            ax.set_title(f"S = {S}: {what}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
    axes[0, 0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_histograms(scores: pd.DataFrame, by: str, hue: str, title: str, labels: dict | None = None) -> plt.Figure:
    """One panel per value of `by` (e.g. S): histograms of the architectures' test accuracy
    (%) for each value of `hue` (e.g. the BN mode), on shared bins (paper Figs. 2, 3, 5)."""
    df = scores.assign(accuracy=100 * scores.acc)
    if labels:
        df[hue] = df[hue].map(labels)
    groups = list(df[by].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        part = df[df[by] == g]
        # about 2 sqrt(n) bins: 9 for 20 architectures per group, 20 for 100
        bins = int(np.clip(round(2 * np.sqrt(part.groupby(hue).size().max())), 5, 20))
        sns.histplot(part, x="accuracy", hue=hue, bins=bins, binrange=(part.accuracy.min(), part.accuracy.max() + 1e-6),
                     element="step", stat="count", common_bins=True, ax=ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{by} = {g}")
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("architectures")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ claims' statistics

def arch_difference(scores: pd.DataFrame, column: str, a, b, stat=np.mean, seed: int = 0) -> claims.Estimate:
    """stat(accuracies under `a`) - stat(accuracies under `b`) of the same architectures
    (`column` tells a from b: the BN mode, or the model on one training space), with the
    interval of a bootstrap over architectures: the rows of one resample are the same
    architectures under both."""
    wide = scores.pivot(index="arch", columns=column, values="acc").dropna()
    x, y = wide[a].to_numpy(float), wide[b].to_numpy(float)
    return claims.bootstrap(lambda i: stat(x[i]) - stat(y[i]), len(x), seed=seed)


def spread(values: np.ndarray) -> float:
    """Standard deviation over architectures (ddof 1, as pandas' std)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def ensemble_hits(member_probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """[T, N]: whether the ensemble of the first t members is right on each test image (the
    per-image form of evaluate.ensemble_curve, so that its gains can be bootstrapped)."""
    p = torch.as_tensor(member_probs).double()
    return (p.cumsum(0).argmax(2) == torch.as_tensor(labels).long()).numpy().astype(float)

