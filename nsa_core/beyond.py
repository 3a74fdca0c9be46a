"""Beyond the paper: per-architecture BN recalibration (the third BN mode) and the shared
weights as a NAS proxy (notebook 09): the cached scores, the rank correlations with their
intervals, and the figures.

Recalibration re-estimates BN's running statistics for one architecture on K training
batches before scoring it (evaluate.recalibrated_scores), as one-shot NAS supernets do. The
proxy question: does an architecture's accuracy under the shared weights of NSA-i or NSA-id
order the architectures as their accuracies when each is trained alone?
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import claims, data as D, evaluate, metrics, models, understand

if TYPE_CHECKING:
    from .config import ModelSpec
    from .experiment import Experiment

BN_LABELS = {"train": "BN train mode", "test": "BN test mode", "recalibrated": "BN recalibrated"}
BN_COLOURS = {"train": "C0", "test": "C1", "recalibrated": "C2"}   # as plot_histograms orders the modes
SHARED_KINDS = ("nsa-i", "nsa-id")
# architectures compared at each profile (the paper has no such experiment: "paper" is the paper's
# profile). At tiny, 5: notebook 05's five individuals and the S = 5 models of 04 and 05, so
# 09 trains nothing of its own (seven models fewer); five ranks decide little, and 09 says so.
PROXY_ARCHS = {"smoke": 6, "tiny": 5, "paper": 20}
# "Recalibration lifts test mode to the training-mode level": the mean over architectures lies
# at most this far (accuracy, one point) below the training-mode mean.
LEVEL_TOL = 0.01


# ------------------------------------------------------------------------ recalibration

def calibration_images(exp: Experiment) -> torch.Tensor:
    """The training images (uint8) the profile's supervised models were trained on: BN is
    re-estimated on the data it was trained on, never on the test images it is scored on."""
    r = exp.profile.train
    train = D.load(r.dataset, "train", exp.data_dir, synthetic_size=r.synthetic_size)
    if r.train_size:
        train = train.subset(D.balanced_subset(train.labels, r.train_size, seed=exp.seed))
    return train.images


def recalibrated(exp: Experiment, spec: ModelSpec, archs: list[int], ks: tuple[int, ...]) -> pd.DataFrame:
    """evaluate.recalibrated_scores of the architectures `archs` of the model `spec` on
    exp.test_set(), K in `ks`, training batches of the training batch size; columns arch,
    batches, acc, loss. Cached in results/<profile>/_shared, keyed by the model, the
    architectures, the test set and the K."""
    test, r = exp.test_set(), exp.profile.train
    tag = f"a{min(archs)}-{max(archs)}n{len(archs)}_k{'-'.join(map(str, ks))}"
    path = exp.shared_dir / f"recal_{spec.key}_{tag}_{test.fingerprint()}_b{r.batch_size}.csv"
    if path.exists():
        return pd.read_csv(path)
    model, _ = exp.trained(spec)
    scores = evaluate.recalibrated_scores(model, calibration_images(exp), test.images, test.labels, r.dataset,
                                          archs=archs, batches=list(ks), batch_size=r.batch_size,
                                          batch=r.eval_batch, seed=exp.seed)
    tmp = path.with_suffix(".tmp")
    scores.to_csv(tmp, index=False)
    tmp.replace(path)
    return scores


def plain_scores(exp: Experiment, spec: ModelSpec, archs: list[int]) -> pd.DataFrame:
    """Accuracy and loss of `archs` of the model `spec`, BN in test mode (columns arch, acc, loss)."""
    test, r = exp.test_set(), exp.profile.train
    model, _ = exp.trained(spec)
    return evaluate.arch_scores(model, test.images, test.labels, r.dataset, archs=archs, bn="test",
                                batch=r.eval_batch)


def three_modes(exp: Experiment, kind: str, spaces: tuple[int, ...], n: int, k: int,
                sweep: tuple[int, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, sweep) of the first n architectures of the `kind` model at every S: scores has
    columns S, bn ('train', 'test' as notebooks 01-02 score them, cached there; 'recalibrated'
    with K = k), arch, acc, loss. With `sweep` (several K, k among them), the first S is
    recalibrated at each of them, at the cost of the largest; sweep has columns S, arch,
    batches, acc, loss (empty without)."""
    modes, swept = [], []
    for j, S in enumerate(spaces):
        archs = list(range(min(n, S)))
        for bn in ("train", "test"):
            modes.append(understand.seen_scores(exp, kind, S, bn, len(archs)).assign(S=S, bn=bn))
        ks = tuple(sorted(set(sweep) | {k})) if sweep and j == 0 else (k,)
        rec = recalibrated(exp, exp.spec(kind, space=S), archs, ks).assign(S=S)
        if len(ks) > 1:
            swept.append(rec)
        modes.append(rec[rec.batches == k].drop(columns="batches").assign(bn="recalibrated"))
    scores = pd.concat(modes, ignore_index=True)[["S", "bn", "arch", "acc", "loss"]]
    return scores, pd.concat(swept, ignore_index=True) if swept else pd.DataFrame()


def mode_difference(scores: pd.DataFrame, a: str, b: str, stat=None, seed: int = 0) -> claims.Estimate:
    """stat(acc with BN in mode a) - stat(acc in mode b) of the same architectures, with a
    bootstrap over architectures (both modes of one architecture stay together); `stat`
    reduces the last axis (default the mean; claims.spread)."""
    return understand.arch_difference(scores, "bn", a, b, stat, seed)


def shifted(d: claims.Estimate, by: float) -> claims.Estimate:
    """d + by, interval included: a difference judged against a tolerance instead of 0."""
    return claims.Estimate(d.value + by, d.low + by, d.high + by, d.n_resamples)


def mode_correlations(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Spearman's rho between every two BN modes over the same architectures, with its
    bootstrap interval: columns pair, rho, low, high."""
    wide = scores.pivot(index="arch", columns="bn", values="acc").dropna()
    rows = []
    for a, b in (("train", "test"), ("train", "recalibrated"), ("test", "recalibrated")):
        e = rank_agreement(wide[a], wide[b], seed)["rho"]
        rows.append((f"{a} vs {b}", e.value, e.low, e.high))
    return pd.DataFrame(rows, columns=["pair", "rho", "low", "high"])


# ------------------------------------------------------------------------ the NAS proxy

def proxy_specs(exp: Experiment, m: int) -> dict[str, list[ModelSpec]]:
    """The models of notebook 09: "single": architectures 0..m-1 of one training space, each
    trained alone; the first profile.space_ensemble of them are notebook 05's individuals
    (their spec names that space); "nsa-i", "nsa-id": the shared weights on the space of the
    first m architectures. Spaces of one space seed share their first architectures, so
    architecture k is one wiring in every spec (checked)."""
    s05 = exp.profile.space_ensemble
    singles = [exp.spec("single", space=s05 if k < s05 else m, arch_index=k) for k in range(m)]
    shared = {kind: [exp.spec(kind, space=m)] for kind in SHARED_KINDS}
    space = models.architectures(shared["nsa-i"][0])
    for k, spec in enumerate(singles):
        if not np.array_equal(models.architectures(spec)[0], space[k]):
            raise RuntimeError(f"architecture {k} of the space of {spec.space} differs from the space of {m}")
    return {"single": singles, **shared}


def proxy_scores(exp: Experiment, m: int, k: int) -> pd.DataFrame:
    """One row per (architecture, shared model, BN mode): arch, kind, bn ('test' or
    'recalibrated', K = k batches), acc under the shared weights, alone (the stand-alone test
    accuracy of that architecture trained by itself)."""
    specs = proxy_specs(exp, m)
    archs = list(range(m))
    alone = [float(plain_scores(exp, spec, [0]).acc[0]) for spec in specs["single"]]
    rows = []
    for kind in SHARED_KINDS:
        spec = specs[kind][0]
        rows.append(plain_scores(exp, spec, archs).assign(kind=kind, bn="test"))
        rec = recalibrated(exp, spec, archs, (k,)).drop(columns="batches")
        rows.append(rec.assign(kind=kind, bn="recalibrated"))
    out = pd.concat(rows, ignore_index=True)
    out["alone"] = np.asarray(alone)[out.arch.to_numpy()]
    return out[["arch", "kind", "bn", "acc", "loss", "alone"]]


def rank_agreement(x, y, seed: int = 0) -> dict[str, claims.Estimate]:
    """Kendall's tau and Spearman's rho of x and y (paired per architecture), each with a
    bootstrap interval over architectures (a resample of one repeated architecture has no
    rank: NaN, left out)."""
    return {"tau": claims.paired(metrics.kendall_rows, x, y, seed=seed),
            "rho": claims.paired(metrics.spearman_rows, x, y, seed=seed)}


def rank_gain(x1, x2, y, seed: int = 0) -> claims.Estimate:
    """tau(x1, y) - tau(x2, y) over the same resampled architectures."""
    x1, x2, y = (np.asarray(v, float) for v in (x1, x2, y))
    return claims.bootstrap(lambda i: metrics.kendall_rows(x1[i], y[i]) - metrics.kendall_rows(x2[i], y[i]),
                            len(y), seed=seed)


def plot_proxy(scores: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per shared model: stand-alone accuracy (x) against accuracy under the shared
    weights (y) per architecture, one colour per BN mode, the diagonal dashed."""
    kinds = list(scores.kind.unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 4), squeeze=False)
    df = scores
    lo = 100 * min(df.acc.min(), df.alone.min()) - 1
    hi = 100 * max(df.acc.max(), df.alone.max()) + 1
    for ax, kind in zip(axes[0], kinds):
        part = df[df.kind == kind]
        for bn, marker in (("test", "o"), ("recalibrated", "X")):
            one = part[part.bn == bn]
            ax.scatter(100 * one.alone, 100 * one.acc, s=45, marker=marker, color=BN_COLOURS[bn], label=BN_LABELS[bn])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="diagonal")
        for a, x, y in part[part.bn == "recalibrated"][["arch", "alone", "acc"]].itertuples(index=False):
            ax.annotate(str(a), (100 * x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(models.KINDS[kind].label)
        ax.set_xlabel("trained alone: test accuracy (%)")
        ax.set_ylabel("shared weights: test accuracy (%)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_k_sweep(sweep: pd.DataFrame, reference: pd.DataFrame, title: str) -> plt.Figure:
    """Mean accuracy over architectures (band: their standard deviation) against K, one panel per
    (model, S); horizontal lines: the same architectures with BN in test and in training mode.
    `sweep`: columns model, S, arch, batches, acc; `reference`: model, S, bn, arch, acc."""
    groups = list(sweep.groupby(["model", "S"], sort=False).groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, (model, S) in zip(axes[0], groups):
        part = sweep[(sweep.model == model) & (sweep.S == S)]
        agg = part.groupby("batches").acc.agg(["mean", "std"]) * 100
        colour = BN_COLOURS["recalibrated"]
        ax.plot(agg.index, agg["mean"], "o-", color=colour, label=BN_LABELS["recalibrated"])
        ax.fill_between(agg.index, agg["mean"] - agg["std"], agg["mean"] + agg["std"], color=colour, alpha=0.2)
        for bn in ("train", "test"):
            ref = reference[(reference.model == model) & (reference.S == S) & (reference.bn == bn)].acc * 100
            ax.axhline(ref.mean(), color=BN_COLOURS[bn], ls="--", label=BN_LABELS[bn])
        ax.set_xscale("log")
        ax.set_xticks(list(agg.index), [str(k) for k in agg.index])
        ax.set_xlabel("K (training batches per architecture)")
        ax.set_ylabel("test accuracy (%), mean ± std")
        ax.set_title(f"{model}, S = {S}")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
