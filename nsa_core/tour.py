"""The guided tour (notebook 00): the steps and figures of a 20-minute lecture on what
training one network over many wirings does. It replicates nothing and tests no claim; its
models are 01's (plan.tour), so after 01 or `train-all` it only loads and evaluates.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator

from . import claims as C
from . import evaluate, kinds
from . import space as wspace
from .network import count_params
from .profiles import Profile

if TYPE_CHECKING:
    from .config import Recipe
    from .data import Split
    from .experiment import Experiment, Trained


def data_statement(exp: Experiment, recipe: Recipe) -> None:
    """Say which data the tour runs on: the profile's, or the synthetic stand-in plan.tour
    takes when the profile's is not on disk (then as a note, so that the report says it too)."""
    asked = exp.profile.understand.dataset
    if recipe.dataset != asked:
        exp.note(f"{asked} was not found in the data folder `{exp.data_dir}`, so this tour runs on the synthetic "
                 "data set instead, with the profile's shorter explore recipe: the same phenomena, other numbers "
                 "(README, 'Data', says how to add it).")
    elif asked == "synthetic":
        exp.say("**Data: the synthetic data set** (the profile asks for it).")
    else:
        exp.say(f"**Data: {asked}** from `{exp.data_dir}`.")


def method_code(names: tuple[str, ...] = ("nsa", "nsa-i", "nsa-id")) -> str:
    """The registry lines of `names` and the sampling rule the trainer calls, read from the
    library's own source, so that the tour shows the code that runs rather than a copy that can drift."""
    source = inspect.getsource(kinds).splitlines()
    lines = [line for line in source if any(line.strip().startswith(f'"{n}":') for n in names)]
    return "\n".join(lines) + "\n\n" + inspect.getsource(kinds.draw_archs)


def residual_odds(space: np.ndarray, p: float = wspace.P_EDGE) -> pd.DataFrame:
    """How likely the ER-p sampler is to draw the residual wiring, with the symbols of the
    tour's answer: per stage (p), the expected number of architectures of `space`
    [S, 3, N+1, N+1] whose given stage is residual (S p), the count found in each stage, and
    the expected number of whole residual architectures (S p^3); one row each, column "this run"."""
    S, nodes = len(space), space.shape[-1] - 1
    residual = wspace.residual_wiring(nodes)
    k = int(np.tril(residual, k=-1).sum())
    m = nodes * (nodes + 1) // 2
    per_stage = p ** k * (1 - p) ** (m - k)
    significant = "{:.3g}".format   # the odds span many orders of magnitude: fixed decimals print most as 0
    found = [int((space[:, s] == residual).all((1, 2)).sum()) for s in range(wspace.STAGES)]
    return pd.Series({"N (nodes per stage)": nodes, "M (possible skip edges)": m,
                      "k (skip edges of the residual wiring)": k,
                      "p (a given stage is residual)": significant(per_stage), "S (training space)": S,
                      "S p (architectures with a given stage residual, expected)": significant(S * per_stage),
                      "found in stages 1, 2, 3": found,
                      "S p^3 (whole residual architectures, expected)": significant(S * per_stage ** 3)},
                     name="this run", dtype=object).to_frame()


def _parameters(profile: Profile, kind: str, space: int, classes: int) -> int:
    with torch.random.fork_rng(devices=[]):   # building draws initial weights: the caller's RNG stays as it was
        return count_params(kinds.build(profile.spec(kind, space=space), classes))


def parameter_counts(profile: Profile, spaces: tuple[int, ...], classes: int = 10) -> pd.DataFrame:
    """Parameters of NSA, NSA-i and NSA-id at each S of `spaces` (built, not trained), the extra
    over NSA (absolute, % of NSA) and what each architecture adds to NSA-id ("per architecture").
    NSA-id's per-architecture BN affines replace the shared ones, so its extra is S x per
    architecture minus those: the extra divided by S is not the cost of one architecture."""
    per = _parameters(profile, "nsa-id", 2, classes) - _parameters(profile, "nsa-id", 1, classes)
    rows = [{"model": kinds.KINDS[kind].label, "S": S, "parameters": _parameters(profile, kind, S, classes),
             "per architecture": per if kind == "nsa-id" else 0}
            for S in dict.fromkeys(spaces)   # a profile whose S is the paper's 5 lists it once
            for kind in ("nsa", "nsa-i", "nsa-id")]
    counts = pd.DataFrame(rows)
    nsa = counts.groupby("S").parameters.transform("first")
    counts.insert(3, "extra vs NSA", counts.parameters - nsa)
    counts.insert(4, "extra (% of NSA)", (100 * counts["extra vs NSA"] / nsa).round(2))
    return counts


def sampling_example(space: int, n: int = 16, batch: int = 8, seed: int = 0) -> pd.DataFrame:
    """The architecture indices kinds.draw_archs gives n examples in batches of `batch`: one
    row per sampling rule (NSA: per batch; NSA-i: per example), one column per example."""
    g = torch.Generator().manual_seed(seed)
    return pd.DataFrame({label: kinds.draw_archs(sampling, space, n, batch, g).numpy()
                         for label, sampling in (("NSA", "batch"), ("NSA-i", "example"))}).T.rename_axis(
        columns="example")


def last_epoch(runs: dict[str, Trained]) -> pd.DataFrame:
    """Each model's epochs and its last epoch's training accuracy (BN in training mode, the
    batches as it trained) and test accuracy (BN in test mode)."""
    last = {kinds.KINDS[k].label: run.history.iloc[-1] for k, run in runs.items()}
    table = pd.DataFrame(last).T[["epoch", "train_acc", "test_acc"]]
    table.columns = ["epochs", "training accuracy (BN train mode)", "test accuracy (BN test mode)"]
    return table.astype({"epochs": int}).round(3)


def bn_scores(runs: dict[str, Trained], test: Split, n: int) -> pd.DataFrame:
    """The first n architectures of each model's space scored on `test` in both BN modes: 'train'
    in training-size batches of one architecture each, for NSA-i too, so that each is normalised
    by statistics that fit it exactly (one reference for both models); 'test' with the running
    statistics. Columns model, bn, arch, acc, loss."""
    out = []
    for kind, run in runs.items():
        r = run.spec.recipe
        archs = torch.arange(min(n, run.spec.space))
        for bn, batch in (("train", r.batch_size), ("test", r.eval_batch)):
            s = evaluate.arch_scores(run.model, test.images, test.labels, r.dataset, archs=archs, bn=bn, batch=batch)
            out.append(s.assign(model=kinds.KINDS[kind].label, bn=bn))
    return pd.concat(out, ignore_index=True)[["model", "bn", "arch", "acc", "loss"]]


def batch_mean_variances(runs: dict[str, Trained], test: Split, batches: int, seed: int = 0) -> pd.DataFrame:
    """evaluate.batch_mean_variance of each model with the sampling it trained with, on
    `test`; columns layer, var_mean, model (its label and sampling)."""
    out = []
    for kind, run in runs.items():
        r, sampling = run.spec.recipe, kinds.KINDS[kind].sampling
        v = evaluate.batch_mean_variance(run.model, test.images, r.dataset, sampling, batches=batches,
                                         batch_size=min(r.batch_size, len(test)), seed=seed)
        per = "batch" if sampling == "batch" else "example"
        out.append(v.assign(model=f"{kinds.KINDS[kind].label} (one architecture per {per})"))
    return pd.concat(out, ignore_index=True)


def variance_ratio(variance: pd.DataFrame) -> float:
    """var(mu) of the second model (column model, in order of appearance) over the first's,
    geometric mean over BN layers: layers differ by orders of magnitude, so a plain mean of
    ratios would be one layer's."""
    wide = variance.pivot(index="layer", columns="model", values="var_mean")[list(dict.fromkeys(variance.model))]
    return float(np.exp(np.log(wide.iloc[:, 1] / wide.iloc[:, 0]).mean()))


def small_ensemble(run: Trained, test: Split, T: int) -> torch.Tensor:
    """Test-mode probabilities [T, N, C] of the first T architectures of a model's space (all
    of them when it has fewer) on `test`."""
    r = run.spec.recipe
    return evaluate.member_probs(run.model, test.images, r.dataset, archs=torch.arange(min(T, run.spec.space)),
                                 batch=r.eval_batch)


def ensemble_gain(member_probs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, float, C.Estimate]:
    """(ensemble accuracy, mean member accuracy, their difference with a bootstrap interval
    over test images) of members [T, N, C]."""
    ensemble = C.correct(member_probs.mean(0), labels)
    members = C.correct(list(member_probs), labels)   # per image: the share of members right
    return float(ensemble.mean()), float(members.mean()), C.mean_difference(ensemble, members, seed=seed)


def plot_sampled_wirings(space: np.ndarray, n: int = 3) -> plt.Figure:
    """Stage 1 of the first n architectures of a training space [S, 3, N+1, N+1], each as a
    graph and as its matrix."""
    n = min(n, len(space))
    return wspace.draw_wirings({f"architecture {k}, stage 1": space[k, 0] for k in range(n)},
                               title=f"{n} architectures of the training space (S = {len(space)}), stage 1")


def plot_familiar_wirings(nodes: int) -> plt.Figure:
    """The chain and the residual wiring of WRN-28-10†, two points of the space."""
    return wspace.draw_wirings({"the chain (a plain CNN)": wspace.chain_wiring(nodes),
                                "the residual wiring (WRN-28-10†)": wspace.residual_wiring(nodes)},
                               title="Two familiar networks as points of the space")


def plot_bn_disparity(scores: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """One panel per model (column `model`): histograms of the same architectures' test accuracy
    with BN in training and in test mode (column `bn`) on bins and an x axis shared by all panels,
    so that panels compare as well as modes; the legend gives each mean and std, the default title
    the number of architectures."""
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
    fig.suptitle(title if title is not None else
                 f"The same {scores.arch.nunique()} architectures, BN in training vs test mode")
    fig.tight_layout()
    return fig


def plot_batch_mean_variance(variance: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """evaluate.batch_mean_variance of several models (column `model`) in one panel, log scale, one
    tick per BN layer in the rows' (the network's module) order. Markers only, side by side per
    layer: the layers are separate measurements, so no line joins them."""
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
