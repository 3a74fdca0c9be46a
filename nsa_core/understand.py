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


def plot_histograms(scores: pd.DataFrame, by: str, hue: str, title: str, labels: dict | None = None,
                    titles: dict | None = None, palette: dict | None = None) -> plt.Figure:
    """One panel per value of `by` (e.g. S; `titles` may name the panels): histograms of the
    architectures' test accuracy (%) for each value of `hue` (e.g. the BN mode), on shared
    bins (paper Figs. 2, 3, 5). One legend, right of the panels, covers no data."""
    df = scores.assign(accuracy=100 * scores.acc)
    if labels:
        df[hue] = df[hue].map(labels)
    order = list(dict.fromkeys(df[hue]))   # the same colour for a hue value in every panel
    groups = list(df[by].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        part = df[df[by] == g]
        # about 2 sqrt(n) bins: 9 for 20 architectures per group, 20 for 100
        bins = int(np.clip(round(2 * np.sqrt(part.groupby(hue).size().max())), 5, 20))
        sns.histplot(part, x="accuracy", hue=hue, bins=bins, binrange=(part.accuracy.min(), part.accuracy.max() + 1e-6),
                     element="step", stat="count", common_bins=True, hue_order=order,
                     palette=palette, ax=ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title((titles or {}).get(g, f"{by} = {g}"))
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("architectures")
    for ax in axes[0, :-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8,
                        title_fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ claims' statistics

def arch_difference(scores: pd.DataFrame, column: str, a, b, stat=None, seed: int = 0) -> claims.Estimate:
    """stat(accuracies under `a`) - stat(accuracies under `b`) of the same architectures
    (`column` tells a from b: the BN mode, or the model on one training space), with the
    interval of a bootstrap over architectures: the rows of one resample are the same
    architectures under both. `stat` reduces the last axis (default the mean; claims.spread)."""
    stat = stat or (lambda v: v.mean(-1))
    wide = scores.pivot(index="arch", columns=column, values="acc").dropna()
    return claims.paired(lambda x, y: stat(x) - stat(y), wide[a], wide[b], seed=seed)


def ensemble_hits(member_probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """[T, N]: whether the ensemble of the first t members is right on each test image (the
    per-image form of evaluate.ensemble_curve, so that its gains can be bootstrapped)."""
    p = torch.as_tensor(member_probs).double()
    return (p.cumsum(0).argmax(2) == torch.as_tensor(labels).long()).numpy().astype(float)


# ------------------------------------------------------------------ the guided tour (00)

def synthetic_fallback(profile, data_dir=None) -> dict | None:
    """Overrides that put the synthetic data set in place of `profile`'s when that cannot be
    read from the data folder here, else None. Nothing is downloaded: a tour must start in
    seconds, and the synthetic set keeps the profile's number of training images so that the
    run takes as long as it would on real data."""
    from . import data as D

    r = profile.train
    if r.dataset == "synthetic":
        return None
    try:
        D.load(r.dataset, "test", data_dir, download=False)
    except D.DataMissing:
        return {"dataset": "synthetic", "train_size": None, "synthetic_size": r.train_size or r.synthetic_size}
    return None


def draw_wirings(wirings: dict[str, np.ndarray], title: str | None = None) -> plt.Figure:
    """One column per stage wiring (title -> 0/1 matrix (N+1, N+1), space.py's convention:
    row = consumer, column = producer): the wiring as a graph on top and as its matrix below,
    in the same colours (grey: the chain, red: skip edges), so a reader can go from one to
    the other. The matrix's upper triangle is shaded: no node may read a later output."""
    import numpy as np
    from matplotlib.patches import FancyArrowPatch

    from . import space as wspace

    chain, skip = "#555555", "#c0392b"
    fig, axes = plt.subplots(2, len(wirings), figsize=(3.6 * len(wirings), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2.4]})
    for col, (name, wiring) in enumerate(wirings.items()):
        a = wspace.validate_wiring(wiring)
        n1 = a.shape[0]                       # N + 1 rows: N nodes and the stage output
        ax = axes[0, col]
        # Vertices on a line: 0 is the stage input, k the node k, n1 the output; row i of the
        # matrix is vertex i + 1, column j is vertex j.
        ax.scatter(range(n1 + 1), np.zeros(n1 + 1), s=330, c="#cfe3f7", edgecolors="#2b5d8a", zorder=3)
        for v in range(n1 + 1):
            ax.text(v, 0, "in" if v == 0 else "out" if v == n1 else str(v), ha="center", va="center",
                    fontsize=7, zorder=4)
        for i, j in zip(*np.nonzero(a)):
            u, v = j, i + 1
            is_skip = v - u > 1
            ax.add_patch(FancyArrowPatch((u, 0), (v, 0), arrowstyle="-|>", mutation_scale=9, lw=1.0,
                                         connectionstyle=f"arc3,rad={-0.45 if is_skip else 0}",
                                         color=skip if is_skip else chain, shrinkA=8, shrinkB=8))
        ax.set_xlim(-0.6, n1 + 0.6)
        # Equal aspect keeps arcs round; the widest (rad 0.45 over n1 nodes) rises 0.225 n1.
        ax.set_ylim(-0.4, 0.23 * n1 + 0.3)
        ax.set_aspect("equal")
        ax.axis("off")
        skips = int(a.sum()) - n1
        ax.set_title(f"{name}\n{skips} skip edge{'' if skips == 1 else 's'}", fontsize=9)

        ax = axes[1, col]
        rgb = np.ones((n1, n1, 3))
        rgb[np.triu(np.ones((n1, n1), bool), k=1)] = (0.93, 0.93, 0.93)
        rgb[np.eye(n1, dtype=bool)] = (0.62, 0.62, 0.62)
        rgb[np.tril(a.astype(bool), k=-1)] = (0.94, 0.60, 0.55)
        ax.imshow(rgb)
        for i in range(n1):
            for j in range(i + 1):
                ax.text(j, i, str(a[i, j]), ha="center", va="center", fontsize=8,
                        color="black" if a[i, j] else "#999999")
        ax.set_xticks(range(n1), ["in"] + [str(k) for k in range(1, n1)], fontsize=7)
        ax.set_yticks(range(n1), [str(k) for k in range(1, n1)] + ["out"], fontsize=7)
        ax.set_xlabel("producer (column)", fontsize=8)
        ax.set_ylabel("consumer (row)", fontsize=8)
        ax.grid(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _registry():
    """The module that defines the registry of kinds and, beside it, the sampling rule."""
    import sys

    from .models import KINDS

    return sys.modules[type(KINDS["nsa"]).__module__]


def kind_lines(names: tuple[str, ...] = ("nsa", "nsa-i", "nsa-id")) -> str:
    """The lines of the registry of kinds that define `names`, read from the library's own
    source, so that a notebook shows the code that runs rather than a copy that can drift."""
    import inspect

    return "\n".join(line for line in inspect.getsource(_registry()).splitlines()
                     if any(line.strip().startswith(f'"{n}":') for n in names))


def sampling_rule():
    """The function the trainer calls to give each example its architecture (`draw_archs`)."""
    return _registry().draw_archs


def plot_bn_disparity(scores: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """One panel per model (column `model`, in order of appearance): histograms of the same
    architectures' test accuracy with BN in training mode and in test mode (column `bn`), on
    bins and an x axis shared by all panels, so that the panels compare as well as the modes.
    The legend gives each histogram's mean and standard deviation."""
    import numpy as np

    acc = 100 * scores.acc
    bins = np.linspace(acc.min() - 0.5, acc.max() + 0.5, 21)
    models = list(dict.fromkeys(scores.model))
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.0), sharex=True, sharey=True,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        for bn, colour, label in (("train", "#1f77b4", "BN train mode"), ("test", "#d62728", "BN test mode")):
            a = 100 * scores[(scores.model == model) & (scores.bn == bn)].acc
            ax.hist(a, bins=bins, histtype="stepfilled", alpha=0.35, color=colour)
            ax.hist(a, bins=bins, histtype="step", lw=1.5, color=colour,
                    label=f"{label}: {a.mean():.1f} ± {a.std(ddof=1):.1f} %")
        ax.set_title(model)
        ax.set_xlabel("test accuracy (%)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))   # below the x label, clear of the bars
    axes[0, 0].set_ylabel("architectures")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_batch_mean_variance(variance: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """evaluate.batch_mean_variance of several models (column `model`) in one panel: per BN
    layer, the variance over batches of the per-channel batch mean of that layer's input,
    averaged over channels; log scale, one tick per layer named as the module is (in the order
    the rows come, the network's module order). Markers only, side by side per layer: the
    layers are separate measurements, so no line joins them."""
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    layers = list(dict.fromkeys(variance.layer))
    groups = list(variance.groupby("model", sort=False))
    for k, (model, part) in enumerate(groups):
        shift = 0.15 * (k - (len(groups) - 1) / 2)
        ax.plot([layers.index(name) + shift for name in part.layer], part.var_mean.to_numpy(), "o", ms=4,
                ls="none", label=model)
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), [name.removesuffix(".bn") for name in layers], rotation=90, fontsize=7)
    ax.grid(True, axis="x", lw=0.3, alpha=0.5)
    ax.set_xlabel("BN layer")
    ax.set_ylabel("var over batches of the batch mean\nof the BN input (mean over channels)", fontsize=8)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_small_ensemble(member_probs: torch.Tensor, labels: torch.Tensor, title: str | None = None) -> plt.Figure:
    """A few ensemble members [T, N, C]: each member's own test accuracy (bars) against the
    accuracy of the ensemble of the first t members (line, evaluate.ensemble_curve)."""
    import numpy as np

    y = torch.as_tensor(labels).long()
    own = (member_probs.argmax(2) == y).double().mean(1).numpy() * 100
    ens = evaluate.ensemble_curve(member_probs, y) * 100
    t = np.arange(1, len(own) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar(t, own, color="#9ecae1", label="member t alone")
    ax.plot(t, ens, "o-", color="#d62728", label="ensemble of members 1..t")
    ax.axhline(own.mean(), color="#555555", ls=":", lw=1, label=f"mean member: {own.mean():.1f} %")
    lo, hi = min(own.min(), ens.min()), max(own.max(), ens.max())
    # Bars start well below the data so that their differences show; accuracies stay in 0..100.
    ax.set_ylim(max(0.0, lo - 2 * (hi - lo) - 0.5), min(100.0, hi + 0.5 * (hi - lo) + 0.5))
    ax.set_xticks(t)
    ax.set_xlabel("t (architecture)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)   # below the x label
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------- dense test curves (01, 02)

MODEL_COLOURS = {"NSA": "#1f77b4", "NSA-i": "#d62728"}


def plot_dense_curves(runs: dict[str, tuple[dict[int, pd.DataFrame], dict[int, pd.DataFrame]]],
                      title: str) -> plt.Figure:
    """Training curves per S (paper Figs. 2-3 (a)-(b)) of one or more models on the same
    axes: model name -> (history per S, test curve per S). Training loss and accuracy per
    epoch (solid, BN in training mode) against every test evaluation of the curve (thin,
    BN in test mode), the epoch-end ones marked. The legend sits below the panels."""
    spaces = list(next(iter(runs.values()))[0])
    fig, axes = plt.subplots(2, len(spaces), figsize=(4.2 * len(spaces), 6), squeeze=False)
    for col, S in enumerate(spaces):
        for row, (what, train, test) in enumerate(CURVES):
            ax = axes[row, col]
            for k, (model, (hists, curves)) in enumerate(runs.items()):
                colour = MODEL_COLOURS.get(model, f"C{k + 2}")
                hist, curve = hists[S], curves[S]
                ax.plot(hist.epoch, hist[train], "o-", color=colour, lw=2, label=f"{model} train (BN train mode)")
                ends = [i for i, e in enumerate(curve.epoch) if e == round(e)]
                ax.plot(curve.epoch, curve[test], "-s", color=colour, lw=0.9, ms=4, mfc="white", markevery=ends,
                        label=f"{model} test (BN test mode)")
            ax.set_title(f"S = {S}: {what}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    return fig


def curve_spread(curves: dict[str, pd.DataFrame], a: str, b: str, column: str = "test_acc",
                 seed: int = 0) -> claims.Estimate | None:
    """std(last points of a's test curve) - std(b's), claims.curve_instability's points of
    each, both resampled (two_sample); None when either curve is too short."""
    ta, tb = (claims.curve_instability(curves[m], column) for m in (a, b))
    if not (len(ta) and len(tb)):
        return None
    return claims.two_sample(lambda x, y: claims.spread(x) - claims.spread(y), ta, tb, seed=seed)


def plot_variance_by_space(variance: pd.DataFrame) -> plt.Figure:
    """02's App. C figure: one panel per S (column `S`), the variance across batches of each
    BN layer's batch mean (log scale) against the layer's position, one line per model."""
    spaces = list(dict.fromkeys(variance.S))
    fig, axes = plt.subplots(1, len(spaces), figsize=(5 * len(spaces), 3.5), squeeze=False)
    for ax, S in zip(axes[0], spaces):
        for k, (model, part) in enumerate(variance[variance.S == S].groupby("model", sort=False)):
            ax.plot(part.position, part.var_mean, "o-", ms=4, color=MODEL_COLOURS.get(model, f"C{k + 2}"), label=model)
        ax.set_yscale("log")
        ax.set_title(f"S = {S}")
        ax.set_xlabel("BN layer (in forward order)")
        ax.set_ylabel("variance of the batch mean")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rank_correlation(scores: pd.DataFrame, model: str, S: int, seed: int = 0) -> claims.Estimate:
    """Spearman correlation between the BN modes' accuracies of `model`'s architectures at S
    (scores: columns model, S, arch, bn, acc), bootstrap over architectures."""
    from . import metrics

    w = scores[(scores.model == model) & (scores.S == S)].pivot(index="arch", columns="bn", values="acc")
    return claims.paired(metrics.spearman_rows, w["train"], w["test"], seed=seed)


def plot_spearman(rows: pd.DataFrame, title: str) -> plt.Figure:
    """Grouped bars per S (rows: columns S, model, value, low, high; low/high NaN where there
    is no interval, as for the paper's values), with the bootstrap interval as an error bar."""
    spaces, models = list(dict.fromkeys(rows.S)), list(dict.fromkeys(rows.model))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k, model in enumerate(models):
        part = rows[rows.model == model].set_index("S").reindex(spaces)
        x = np.arange(len(spaces)) + (k - (len(models) - 1) / 2) * width
        colour = MODEL_COLOURS.get(model.removeprefix("paper "), f"C{k}")   # the paper's value: faded
        ax.bar(x, part.value, width, color=colour, alpha=0.35 if model.startswith("paper") else 0.9, label=model)
        has = np.isfinite(part.low.to_numpy()) & np.isfinite(part.high.to_numpy())
        claims.draw_intervals(ax, x[has], part.low[has], part.high[has], ecolor="k", capsize=3, lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(spaces)), [f"S = {S}" for S in spaces])
    ax.set_ylabel("Spearman")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig
