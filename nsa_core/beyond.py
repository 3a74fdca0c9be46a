"""Beyond the paper: per-architecture BN recalibration (a third BN mode, in 01 and 02) and the
shared weights as a NAS proxy (notebook 09): the scores, the rank correlations with their
intervals, the figures and the claims.

Recalibration re-estimates BN's running statistics for one architecture on K training
batches before scoring it (`recalibrated_scores`), as one-shot NAS supernets do. The proxy
question: does an architecture's accuracy under the shared weights of NSA-i or NSA-id order
the architectures as their accuracies when each is trained alone?
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from . import claims as C
from . import data as D
from . import evaluate, metrics
from .kinds import KINDS, architectures
from .network import WiredNet

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .config import Recipe
    from .experiment import Experiment, Trained

BN_LABELS = {"train": "BN train mode", "test": "BN test mode", "recalibrated": "BN recalibrated"}
BN_COLOURS = {"train": "C0", "test": "C1", "recalibrated": "C2"}   # as plot_histograms orders the modes
SHARED_KINDS = ("nsa-i", "nsa-id")
# "Recalibration lifts test mode to the training-mode level": the mean over architectures lies
# within this (accuracy, one point) of the training-mode mean.
LEVEL_TOL = 0.01


# ------------------------------------------------------------------------ recalibration

def _calibration_batches(n: int, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """`batches` index batches of `batch_size` from consecutive seeded permutations of range(n):
    no image repeats before every image was used once."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BN cannot normalise one image), got {batch_size}")
    if n < batch_size:
        raise ValueError(f"{n} calibration images are fewer than one batch of {batch_size}")
    g = torch.Generator().manual_seed(seed)
    need = batches * batch_size
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-need // n))])
    return list(order[:need].view(batches, batch_size))


@contextlib.contextmanager
def _bn_statistics_kept(model: nn.Module) -> Iterator[list[nn.BatchNorm2d]]:
    """Every BN layer's running statistics, counter, momentum and flags, and every module's training
    flag, restored bit for bit on exit; inside, BN layers average the batches they see with equal
    weights (momentum None), so K batches give their exact mean."""
    flags = evaluate._training_flags(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum,
              m.track_running_stats) for m in bns]
    try:
        model.eval()   # dropout stays off; BN layers are switched on one by one below
        for m in bns:
            m.momentum = None
            m.track_running_stats = True
        yield bns
    finally:
        for m, (mean, var, count, momentum, track) in zip(bns, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum, m.track_running_stats = momentum, track
        evaluate._restore_training_flags(flags)


def _calibrate(model: WiredNet, bns: list[nn.BatchNorm2d], images: torch.Tensor, norm: str,
               index: list[torch.Tensor], idx: torch.Tensor | None, wirings: torch.Tensor | None, member: int) -> None:
    """Run the batches `index` of `images` through member `member` alone, BN in training mode,
    accumulating the running statistics (no gradient, no parameter touched)."""
    dev = evaluate._device(model)
    for m in bns:
        m.train()
    try:
        with torch.no_grad():
            for i in index:
                evaluate._forward(model, D.normalize(images[i.to(images.device)].to(dev), norm), idx, wirings, member)
    finally:
        for m in bns:
            m.eval()


def recalibrated_scores(model: WiredNet, calibration: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                        norm: str, archs: evaluate.ArchLike | None = None, wirings: torch.Tensor | np.ndarray | None = None,
                        batches: int | list[int] = 20, batch_size: int = 128, batch: int = 500,
                        seed: int = 0) -> pd.DataFrame:
    """Accuracy and loss of each architecture with BN *recalibrated* for it, the third BN mode:
    every BN layer's running statistics reset, then the exact average of those of K batches of
    `batch_size` `calibration` images (uint8 training images, unaugmented as the test images)
    through that architecture alone, then scored on `images` in test mode. Everything is
    restored afterwards, bit for bit; no parameter changes.

    `batches` is K, or several K: one row per (architecture, K), at the cost of the largest K
    (the cumulative average after k batches is the K = k one). Every architecture sees the same
    batches (seeded by `seed`). Columns arch (index, or position in `wirings`), batches, acc, loss."""
    ks = sorted({int(k) for k in np.atleast_1d(batches)})
    if not ks or ks[0] < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    idx, w, T = evaluate._members(model, archs, wirings)
    index = _calibration_batches(len(calibration), ks[-1], batch_size, seed)
    rows = []
    with _bn_statistics_kept(model) as bns:
        for t in range(T):
            for m in bns:
                m.reset_running_stats()
            for done, k in zip([0, *ks], ks):
                _calibrate(model, bns, calibration, norm, index[done:k], idx, w, t)
                one = {"archs": idx[t:t + 1]} if idx is not None else {"wirings": w[t:t + 1]}
                s = evaluate.arch_scores(model, images, labels, norm, bn="test", batch=batch, **one)
                rows.append((int(idx[t]) if idx is not None else t, k, float(s.acc[0]), float(s.loss[0])))
    return pd.DataFrame(rows, columns=["arch", "batches", "acc", "loss"])


def calibration_images(exp: Experiment, r: Recipe) -> torch.Tensor:
    """The training images (uint8) the recipe's models were trained on: BN is re-estimated on
    the data it was trained on, never on the test images it is scored on."""
    train = D.load(r.dataset, "train", exp.data_dir, synthetic_size=r.synthetic_size)
    if r.train_size:
        train = train.subset(D.balanced_subset(train.labels, r.train_size, seed=exp.seed))
    return train.images


def recalibrated(exp: Experiment, run: Trained, archs: list[int], ks: tuple[int, ...]) -> pd.DataFrame:
    """recalibrated_scores of the architectures `archs` of a model on its recipe's test set, K
    in `ks`, training batches of the training batch size; columns arch, batches, acc, loss.
    Cached (exp.cached)."""
    r = run.spec.recipe
    test = exp.test_set(r)
    key = {"model": run.spec.key, "archs": archs, "ks": ks, "test": test.fingerprint(), "batch": r.batch_size}
    return exp.cached("recalibrated", key, lambda: recalibrated_scores(
        run.model, calibration_images(exp, r), test.images, test.labels, r.dataset, archs=archs, batches=list(ks),
        batch_size=r.batch_size, batch=r.eval_batch, seed=exp.seed))


def test_mode_scores(exp: Experiment, run: Trained, archs: list[int]) -> pd.DataFrame:
    """Accuracy and loss of `archs` of a model, BN in test mode (columns arch, acc, loss)."""
    r = run.spec.recipe
    test = exp.test_set(r)
    return evaluate.arch_scores(run.model, test.images, test.labels, r.dataset, archs=archs, bn="test",
                                batch=r.eval_batch)


def three_modes(exp: Experiment, runs_by_S: dict[int, Trained], n: int, k: int,
                sweep: tuple[int, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, sweep) of the first n architectures of a model at every S: scores has columns
    S, bn ('train', 'test' as notebooks 01-02 score them; 'recalibrated' with K = k), arch,
    acc, loss. With `sweep` (several K), the first S is recalibrated at each of them, at the
    cost of the largest; sweep has columns S, arch, batches, acc, loss (empty without)."""
    modes, swept = [], []
    for j, (S, run) in enumerate(runs_by_S.items()):
        archs = list(range(min(n, S)))
        for bn in ("train", "test"):
            modes.append(exp.seen_scores(run, bn, len(archs)).assign(S=S, bn=bn))
        ks = tuple(sorted(set(sweep) | {k})) if sweep and j == 0 else (k,)
        rec = recalibrated(exp, run, archs, ks).assign(S=S)
        if len(ks) > 1:
            swept.append(rec)
        modes.append(rec[rec.batches == k].drop(columns="batches").assign(bn="recalibrated"))
    scores = pd.concat(modes, ignore_index=True)[["S", "bn", "arch", "acc", "loss"]]
    return scores, pd.concat(swept, ignore_index=True) if swept else pd.DataFrame()


def recalibration_claim(exp: Experiment, modes: pd.DataFrame, n: int, k: int, gate: C.Gate) -> None:
    """01's claim beyond the paper, on NSA's three BN modes at every S: recalibration removes the
    disparity, i.e. it lifts the test-mode accuracy, to the training-mode level (within
    LEVEL_TOL), and shrinks the spread across architectures. One fact, one claim."""
    spaces = list(dict.fromkeys(modes.S))
    at = {S: modes[modes.S == S] for S in spaces}
    lift = {S: C.arch_difference(at[S], "bn", "recalibrated", "test", seed=exp.seed) for S in spaces}
    level = {S: C.arch_difference(at[S], "bn", "recalibrated", "train", seed=exp.seed) for S in spaces}
    shrink = {S: C.arch_difference(at[S], "bn", "test", "recalibrated", C.spread, exp.seed) for S in spaces}
    parts = [C.verdict(d, gate.comparable) for d in [*lift.values(), *shrink.values()]]
    parts += [C.equivalence(d, LEVEL_TOL, gate.comparable) for d in level.values()]
    exp.claim("Recalibrating BN per architecture removes NSA's disparity: test-mode accuracy rises to the "
              "training-mode level and its spread across architectures shrinks",
              paper="not studied (the paper attributes the disparity to BN's running statistics, Sec. 3)",
              reproduced=f"mean recalibrated - test mode: {C.by_S(lift)}; recalibrated - training mode: {C.by_S(level)}; "
                         f"std test mode - std recalibrated: {C.by_S(shrink)} ({n} architectures per S, K = {k})",
              verdict=C.all_of(parts), kind=C.BEYOND,
              rule=f"bootstrap over architectures; holds if the lift and the shrink lie above 0 and recalibrated - "
                   f"training mode within +-{LEVEL_TOL} at every S. Training gate: {gate.text}")


def instance_recalibration_claim(exp: Experiment, three: pd.DataFrame, n: int, k: int, gate: C.Gate) -> None:
    """02's claim beyond the paper: with BN recalibrated, NSA-i's architectures still score
    higher than NSA's (three: both models' three BN modes, column model)."""
    rec = three[three.bn == "recalibrated"]
    still = {S: C.arch_difference(rec[rec.S == S], "model", "NSA-i", "NSA", seed=exp.seed)
             for S in dict.fromkeys(three.S)}
    exp.claim("With BN recalibrated, NSA-i's architectures still score higher than NSA's (instance-level sampling "
              "still pays)", paper="not studied (NSA-i is the paper's fix for test-mode BN, Sec. 3)",
              reproduced=f"mean accuracy recalibrated, NSA-i - NSA: {C.by_S(still)} ({n} architectures per S, K = {k})",
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in still.values()), kind=C.BEYOND,
              rule=f"the same architectures of each space under both models, bootstrap over architectures; holds if "
                   f"the interval lies above 0 at every S. Training gate: {gate.text}")


# ------------------------------------------------------------------------ the NAS proxy

# A ranking worth searching with orders three pairs of architectures in four as training them
# alone does (Kendall's tau 0.5). A run whose interval could not tell a tau (or a gain in tau)
# that large from 0 is underpowered: its "inconclusive" says nothing about the proxy.
PROXY_TAU = 0.5


def proxy_scores(exp: Experiment, runs: dict[str, list[Trained]], k: int) -> pd.DataFrame:
    """One row per (architecture, shared model, BN mode 'test' or 'recalibrated' with K = k): arch,
    kind, bn, acc and loss under the shared weights, and alone, the test accuracy of that
    architecture trained by itself. runs: plan.proxy's specs, trained, in the plan's order."""
    # plan.proxy's premise: architecture k of each stand-alone model is architecture k of the
    # shared models' space (spaces of one seed share their first architectures)
    space = architectures(runs[SHARED_KINDS[0]][0].spec)
    for j, run in enumerate(runs["single"]):
        if not np.array_equal(architectures(run.spec)[0], space[j]):
            raise RuntimeError(f"architecture {j} of the space of {run.spec.space} differs from the shared space's")
    m = len(runs["single"])
    alone = [float(test_mode_scores(exp, run, [0]).acc[0]) for run in runs["single"]]
    rows = []
    for kind in SHARED_KINDS:
        run = runs[kind][0]
        rows.append(test_mode_scores(exp, run, list(range(m))).assign(kind=kind, bn="test"))
        rec = recalibrated(exp, run, list(range(m)), (k,)).drop(columns="batches")
        rows.append(rec.assign(kind=kind, bn="recalibrated"))
    out = pd.concat(rows, ignore_index=True)
    out["alone"] = np.asarray(alone)[out.arch.to_numpy()]
    return out[["arch", "kind", "bn", "acc", "loss", "alone"]]


def _part(proxy: pd.DataFrame, kind: str, bn: str) -> pd.DataFrame:
    # sorted, so that two parts pair architecture by architecture
    return proxy[(proxy.kind == kind) & (proxy.bn == bn)].sort_values("arch")


def rank_table(proxy: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Kendall's tau and Spearman's rho with their intervals, per shared model and BN mode,
    and the smallest tau the run could tell from 0 (`detectable`)."""
    rows = []
    for kind in SHARED_KINDS:
        for bn in ("test", "recalibrated"):
            part = _part(proxy, kind, bn)
            r = rank_agreement(part.acc, part.alone, seed)
            rows.append({"model": KINDS[kind].label, "bn": bn,
                         **{f"{s}{x}": getattr(r[s], a) for s in ("tau", "rho")
                            for x, a in (("", "value"), (" low", "low"), (" high", "high"))},
                         "detectable tau": detectable(r["tau"]), "architectures": len(part)})
    return pd.DataFrame(rows)


def powered_verdict(estimate: C.Estimate, effect: float, comparable: bool = True) -> str:
    """claims.verdict of an ordering, but 'underpowered' instead of 'inconclusive' when even a
    true effect of `effect` would not have been told from 0 (detectable(estimate) > effect)."""
    v = C.verdict(estimate, comparable)
    return C.UNDERPOWERED if v == C.INCONCLUSIVE and detectable(estimate) > effect else v


def _power_rule(what: str, gate: C.Gate) -> str:
    return (f"underpowered if the smallest {what} the run could tell from 0 four times in five (1.43 half-widths "
            f"of the interval) exceeds {PROXY_TAU}. Training gate: {gate.text}")


def proxy_claims(exp: Experiment, runs: dict[str, list[Trained]], proxy: pd.DataFrame, k: int) -> None:
    """09's claims (all beyond the paper): the shared weights rank architectures as training
    them alone does; recalibration makes that ranking closer. Stand-alone and shared-weight
    models learn at different speeds, so they are judged only when all converged; a run too
    small to tell a tau of PROXY_TAU from 0 is underpowered."""
    gate = exp.gate({r.label: r for rs in runs.values() for r in rs}, "converged")
    m = len(runs["single"])
    for kind in SHARED_KINDS:
        rec, plain = _part(proxy, kind, "recalibrated"), _part(proxy, kind, "test")
        r_rec, r_plain = rank_agreement(rec.acc, rec.alone, exp.seed), rank_agreement(plain.acc, plain.alone, exp.seed)
        exp.claim(f"Under {KINDS[kind].label}'s shared weights (BN recalibrated) architectures rank as when trained "
                  "alone: Kendall's tau > 0", paper="not studied (a NAS-proxy question)",
                  reproduced=f"tau {r_rec['tau']}, rho {r_rec['rho']}; BN test mode: tau {r_plain['tau']}, rho "
                             f"{r_plain['rho']} ({m} architectures, K = {k}); smallest tau this run could tell from 0: "
                             f"about {detectable(r_rec['tau']):.2f}",
                  verdict=powered_verdict(r_rec["tau"], PROXY_TAU, gate.comparable), kind=C.BEYOND,
                  rule="Kendall's tau-b between accuracy under the shared weights and stand-alone accuracy, bootstrap "
                       f"over architectures; holds if its interval lies above 0, does not hold if below; "
                       f"{_power_rule('tau', gate)}")
    gain = {kind: rank_gain(_part(proxy, kind, "recalibrated").acc, _part(proxy, kind, "test").acc,
                            _part(proxy, kind, "test").alone, exp.seed) for kind in SHARED_KINDS}
    exp.claim("Recalibration makes the shared weights rank architectures more like training them alone",
              paper="not studied",
              reproduced="tau recalibrated - tau test mode: " + ", ".join(
                  f"{KINDS[q].label}: {e} (smallest gain this run could tell from 0: about {detectable(e):.2f})"
                  for q, e in gain.items()) + f" ({m} architectures, K = {k})",
              verdict=C.all_of(powered_verdict(d, PROXY_TAU, gate.comparable) for d in gain.values()), kind=C.BEYOND,
              rule="the same architectures resampled for both BN modes; holds if the interval lies above 0 for both "
                   f"models, does not hold if below for either; {_power_rule('gain in tau', gate)}")


def detectable(estimate: C.Estimate) -> float:
    """The smallest true effect a run of this size would tell from 0 four times in five: about
    2.8 standard errors (1.96 + 0.84), i.e. 1.43 half-widths of a 95 % interval."""
    return 1.43 * estimate.half_width


def rank_agreement(x: ArrayLike, y: ArrayLike, seed: int = 0) -> dict[str, C.Estimate]:
    """Kendall's tau and Spearman's rho of x and y (paired per architecture), each with a
    bootstrap interval over architectures (a resample of one repeated architecture has no
    rank: NaN, left out)."""
    return {"tau": C.paired(metrics.kendall_rows, x, y, seed=seed),
            "rho": C.paired(metrics.spearman_rows, x, y, seed=seed)}


def rank_gain(x1: ArrayLike, x2: ArrayLike, y: ArrayLike, seed: int = 0) -> C.Estimate:
    """tau(x1, y) - tau(x2, y) over the same resampled architectures."""
    x1, x2, y = (np.asarray(v, float) for v in (x1, x2, y))
    return C.bootstrap(lambda i: metrics.kendall_rows(x1[i], y[i]) - metrics.kendall_rows(x2[i], y[i]),
                       len(y), seed=seed)


def plot_proxy(scores: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per shared model: stand-alone accuracy (x) against accuracy under the shared
    weights (y) per architecture, one colour per BN mode, the diagonal dashed."""
    kinds = list(scores.kind.unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 4), squeeze=False)
    lo, hi = 100 * min(scores.acc.min(), scores.alone.min()), 100 * max(scores.acc.max(), scores.alone.max())
    pad = max(1.0, 0.06 * (hi - lo))   # room for the markers and their numbers at the edges
    lo, hi = lo - pad, hi + pad
    for ax, kind in zip(axes[0], kinds):
        part = scores[scores.kind == kind]
        for bn, marker in (("test", "o"), ("recalibrated", "X")):
            one = part[part.bn == bn]
            ax.scatter(100 * one.alone, 100 * one.acc, s=45, marker=marker, color=BN_COLOURS[bn], label=BN_LABELS[bn])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="diagonal")
        for a, x, y in part[part.bn == "recalibrated"][["arch", "alone", "acc"]].itertuples(index=False):
            ax.annotate(str(a), (100 * x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(KINDS[kind].label)
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
