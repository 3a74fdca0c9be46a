"""Understanding NSA (the paper's Secs. 3-4): the scores, figures and claims of notebooks 01
(BN disparity), 02 (instance-specific architectures), 03 (mode collapse) and 04 (unseen
architectures). A notebook makes one call per figure and one for its claims; the models come
from the plan (plan.disparity, plan.collapse, plan.unseen), so each is declared once.

Every claim here compares models of one training procedure or one model evaluated two ways,
so it is judged at matched budgets and says whether the models converged (claims.gate).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

from . import beyond, evaluate, metrics, paper
from . import claims as C
from . import space as wspace
from .kinds import KINDS, TEST_BATCH, architectures

if TYPE_CHECKING:
    from .experiment import Experiment, Trained

MODEL_COLOURS = {"NSA": "#1f77b4", "NSA-i": "#d62728"}
LABEL = {"nsa": "NSA", "nsa-i": "NSA-i"}


def runs(exp: Experiment, specs: dict) -> dict:
    """key -> exp.trained(spec) for the plan's specs (trained now if missing)."""
    return {key: exp.trained(spec) for key, spec in specs.items()}


def _gate_rule(gate: C.Gate, rule: str) -> str:
    return f"{rule}. Training gate: {gate.text}"


def _log_x(ax: plt.Axes, ticks: list) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())


# ------------------------------------------------------------------------ scores

def bn_mode_scores(exp: Experiment, runs_by_S: dict[int, Trained], n: int) -> pd.DataFrame:
    """seen_scores in both BN modes for every S: columns S, bn ('train'/'test'), arch, acc, loss."""
    return pd.concat([exp.seen_scores(run, bn, n).assign(S=S, bn=bn)
                      for S, run in runs_by_S.items() for bn in ("train", "test")], ignore_index=True)


def curve_claim(exp: Experiment, runs: dict, gate: C.Gate, column: str, statement: str, paper: str, what: str,
                rule: str) -> None:
    """The claim that NSA's test curve (`column`) is less stable than NSA-i's at every S of
    spaces_bn: std of NSA's last points (claims.curve_instability) - NSA-i's, each resampled on
    its own; not comparable when a curve is too short."""
    spaces = exp.profile.spaces_bn
    last = {S: [C.curve_instability(runs[k, S].curve, column) for k in ("nsa", "nsa-i")] for S in spaces}
    known = all(len(a) and len(b) for a, b in last.values())
    spread = {S: C.two_sample(lambda x, y: C.spread(x) - C.spread(y), a, b, seed=exp.seed)
              for S, (a, b) in last.items()} if known else {}
    exp.claim(statement, paper=paper,
              reproduced=f"{what}, NSA - NSA-i: {C.by_S(spread)}" if known
              else f"{len(runs['nsa', spaces[0]].curve)} test evaluations per model",
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in spread.values()) if known else C.NOT_COMPARABLE,
              rule=_gate_rule(gate, rule))


def rank_correlation(scores: pd.DataFrame, model: str, S: int, seed: int = 0) -> C.Estimate:
    """Spearman correlation between the BN modes' accuracies of `model`'s architectures at S
    (scores: columns model, S, arch, bn, acc), bootstrap over architectures."""
    w = scores[(scores.model == model) & (scores.S == S)].pivot(index="arch", columns="bn", values="acc")
    return C.paired(metrics.spearman_rows, w["train"], w["test"], seed=seed)


# ------------------------------------------------------------------------ figures

def example_architectures(exp: Experiment) -> dict[str, np.ndarray]:
    """Fig. 1's examples: an architecture of the first training space, the residual wiring and the chain."""
    P, nodes = exp.profile, exp.profile.understand.nodes
    return {f"an architecture of the training space (S = {P.spaces_bn[0]})":
            architectures(P.spec("nsa", space=P.spaces_bn[0], seed=exp.seed))[0],
            "the residual wiring (WRN-28-10†)": wspace.fixed_architecture(wspace.residual_wiring(nodes)),
            "the chain": wspace.fixed_architecture(wspace.chain_wiring(nodes))}


def curves_figure(exp: Experiment, runs: dict, kinds: tuple[str, ...]) -> plt.Figure:
    """Figs. 2-3 (a)-(b) of the models `kinds` at every S of spaces_bn (runs keyed (kind, S)),
    on the same axes: training loss and accuracy per epoch (solid, BN in training mode) against
    every test evaluation of the curve (thin, BN in test mode), the epoch-end ones marked; the
    title says how many architectures stand behind a test point, the legend sits below."""
    P, images, spaces = exp.profile, len(exp.test_set()), exp.profile.spaces_bn
    every = f"every {P.understand.eval_every} steps" if P.understand.eval_every else "every epoch"
    behind = "; ".join(f"{LABEL[k]}: " + (f"{-(-images // TEST_BATCH)} architectures (one per {TEST_BATCH} test images)"
                                          if KINDS[runs[k, spaces[0]].spec.kind].sampling == "batch"
                                          else f"one architecture per test image ({images})") for k in kinds)
    fig, axes = plt.subplots(2, len(spaces), figsize=(4.2 * len(spaces), 6), squeeze=False)
    for col, S in enumerate(spaces):
        for row, (what, train, test) in enumerate((("loss", "train_loss", "test_loss"),
                                                   ("accuracy", "train_acc", "test_acc"))):
            ax = axes[row, col]
            for k in kinds:
                model, hist, curve = LABEL[k], runs[k, S].history, runs[k, S].curve
                ax.plot(hist.epoch, hist[train], "o-", color=MODEL_COLOURS[model], lw=2,
                        label=f"{model} train (BN train mode)")
                ends = [i for i, e in enumerate(curve.epoch) if e == round(e)]
                ax.plot(curve.epoch, curve[test], "-s", color=MODEL_COLOURS[model], lw=0.9, ms=4, mfc="white",
                        markevery=ends, label=f"{model} test (BN test mode)")
            ax.set_title(f"S = {S}: {what}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"{' and '.join(LABEL[k] for k in kinds)}: test evaluated {every} on {images} images, BN in test "
                 f"mode\n{behind}")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    return fig


def curve_tables(exp: Experiment, runs: dict, kinds: tuple[str, ...]) -> None:
    """Save the histories ("curves") and test curves ("test_curve") behind curves_figure."""
    for attr, name in (("history", "curves"), ("curve", "test_curve")):
        exp.save_table(pd.concat([getattr(runs[k, S], attr).assign(S=S, model=LABEL[k]) for k in kinds
                                  for S in exp.profile.spaces_bn], ignore_index=True), name)


def mode_summary(scores: pd.DataFrame, by: tuple[str, ...] = ("S", "bn")) -> pd.DataFrame:
    """Mean, standard deviation, min and max accuracy (%) per group of architectures."""
    return (100 * scores.groupby(list(by)).acc.agg(["mean", "std", "min", "max"])).round(2)


def histograms_title(what: str, n: int, images: int) -> str:
    return f"{what}\nup to {n} architectures per S (all of S when S is smaller), each scored on {images} test images"


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
                     palette=palette, legend=ax is axes[0, -1], ax=ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title((titles or {}).get(g, f"{by} = {g}"))
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("architectures")
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8,
                        title_fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ 01: the disparity

def disparity_claims(exp: Experiment, runs: dict, scores: pd.DataFrame, modes: pd.DataFrame, n: int, k: int) -> None:
    """01's claims on NSA at every S of spaces_bn (runs keyed (kind, S), NSA-i the stable
    reference of the instability claim; scores: bn_mode_scores; modes: the three BN modes,
    beyond.three_modes)."""
    seed, spaces, images = exp.seed, exp.profile.spaces_bn, len(exp.test_set())
    gate = exp.gate({r.label: r for r in runs.values()}, "matched")
    hists = {S: runs["nsa", S].history for S in spaces}
    sane = all(h.train_loss.notna().all() and h.train_loss.iloc[-1] < h.train_loss.iloc[0] for h in hists.values())
    exp.claim("NSA's training loss is finite and falls at every S", paper="training curves converge (Fig. 2(a)-(b))",
              reproduced="first -> last epoch: " + ", ".join(
                  f"S={S}: {h.train_loss.iloc[0]:.3f} -> {h.train_loss.iloc[-1]:.3f}" for S, h in hists.items()),
              verdict=C.HOLDS if sane else C.FAILS, kind=C.SANITY,
              rule="holds if every logged training loss is finite and the last is below the first (any working run passes)")
    conv = {S: C.converged(runs["nsa", S].curve, seed) for S in spaces}
    done = all(c for c, _ in conv.values())
    exp.claim("NSA trains stably to convergence at every S",
              paper="stable and well converged for S = 500, 5000, 50000 (Fig. 2(a)-(b), App. B)",
              reproduced="test accuracy's change over the last fifth of training: "
                         + ", ".join(f"S={S}: {text}" for S, (_, text) in conv.items()),
              verdict=C.HOLDS if done else C.FAILS if exp.paper_scale else C.NOT_COMPARABLE,
              rule=f"converged: that change lies within +-{C.CONVERGED_CHANGE}, interval included, at every S; a "
                   "profile that stops before convergence by design is not comparable; at the paper's scale a model "
                   "still moving does not hold")
    below = {S: h.train_acc.iloc[-1] - C.proportion(h.test_acc.iloc[-1], images, seed=seed) for S, h in hists.items()}
    exp.claim("At the end of training NSA's test accuracy (BN test mode) is below its training accuracy at every S",
              paper="test curves far below the training curves (Fig. 2(a)-(b))",
              reproduced="last epoch, training - test accuracy: " + C.by_S(below),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in below.values()),
              rule=_gate_rule(gate, f"a gap, not the instability of the test curve (the next claim); the interval is "
                                    f"binomial over the {images} test images; holds if it lies above 0 at every S"))
    curve_claim(exp, runs, gate, "test_acc", "NSA's test accuracy curve is unstable: its last points spread more than NSA-i's",
                paper="NSA's test curves severely unstable (Fig. 2(b)); NSA-i's stable (Fig. 3(b))",
                what="std of the last test accuracies",
                rule=f"the last tenth of each test curve (at least {C.MIN_CURVE_POINTS} evaluations), each model's "
                     "points resampled on their own; holds if the interval of the difference lies above 0 at every S; "
                     "not comparable with fewer evaluations")
    at = {S: scores[scores.S == S] for S in spaces}
    wider = {S: C.arch_difference(at[S], "bn", "test", "train", C.spread, seed) for S in spaces}
    exp.claim("With BN in test mode the architectures' accuracies spread more than with BN in training mode",
              paper="test-mode histogram wide, training-mode histogram tight (Fig. 2(c)-(d))",
              reproduced="std test mode - std training mode: " + C.by_S(wider),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in wider.values()),
              rule=_gate_rule(gate, f"standard deviation over the {n} architectures, bootstrap over architectures; "
                                    "holds if the interval of the difference lies above 0 at every S"))
    lower = {S: C.arch_difference(at[S], "bn", "train", "test", seed=seed) for S in spaces}
    exp.claim("With BN in test mode the architectures' accuracies are lower than with BN in training mode",
              paper="test-mode accuracies mostly far below the training-mode ones (Fig. 2(c)-(d))",
              reproduced="mean accuracy training mode - test mode: " + C.by_S(lower),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in lower.values()),
              rule=_gate_rule(gate, "mean over the architectures, bootstrap over architectures; holds if the interval "
                                    "lies above 0 at every S"))
    beyond.recalibration_claim(exp, modes, n, k, gate)


# --------------------------------------------------------------- 02: instance-specific architectures

def instance_scores(exp: Experiment, runs: dict, n: int) -> pd.DataFrame:
    """bn_mode_scores of NSA-i and NSA at every S of spaces_bn (runs keyed (kind, S)), column model."""
    return pd.concat([bn_mode_scores(exp, {S: runs[kind, S] for S in exp.profile.spaces_bn}, n).assign(model=LABEL[kind])
                      for kind in ("nsa-i", "nsa")], ignore_index=True)


def instance_histograms(exp: Experiment, scores: pd.DataFrame) -> plt.Figure:
    """Fig. 3(c)-(d): one panel per S and BN mode, NSA-i and NSA on the same bins."""
    panels = scores.assign(panel=[f"S = {S}, BN {bn} mode" for S, bn in zip(scores.S, scores.bn)])
    n = scores.groupby(["model", "S", "bn"]).size().max()
    return plot_histograms(panels.sort_values(["S", "bn"], ascending=[True, False], kind="stable"), by="panel",
                           hue="model", titles={p: p for p in panels.panel}, palette=MODEL_COLOURS,
                           title=histograms_title("NSA-i and NSA: test accuracy of seen architectures", n,
                                                  len(exp.test_set())))


def instance_three_modes(exp: Experiment, runs: dict, n: int, k: int) -> pd.DataFrame:
    """beyond.three_modes of NSA-i and NSA at every S of spaces_bn, column model."""
    return pd.concat([beyond.three_modes(exp, {S: runs[kind, S] for S in exp.profile.spaces_bn}, n, k)[0]
                      .assign(model=LABEL[kind]) for kind in ("nsa-i", "nsa")], ignore_index=True)


def batch_mean_variances(exp: Experiment, runs: dict, batches: int) -> pd.DataFrame:
    """App. C: evaluate.batch_mean_variance of NSA and NSA-i at every S of spaces_bn, each
    with the sampling it trained with; columns layer, var_mean, S, model, position."""
    r, test = exp.profile.understand, exp.test_set()
    out = []
    for S in exp.profile.spaces_bn:
        for kind in ("nsa", "nsa-i"):
            v = evaluate.batch_mean_variance(runs[kind, S].model, test.images, r.dataset, KINDS[kind].sampling,
                                             batches=batches, batch_size=min(r.batch_size, len(test)), seed=exp.seed)
            out.append(v.assign(S=S, model=LABEL[kind], position=np.arange(len(v))))
    return pd.concat(out, ignore_index=True)


def spearman_figure(exp: Experiment, scores: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """The Spearman correlations between BN modes of NSA and NSA-i at every S as grouped bars with
    their bootstrap intervals, beside the paper's (faded, no interval); and the table of them
    (columns S, model, value, low, high; low and high NaN for the paper's)."""
    spaces = list(exp.profile.spaces_bn)
    rows = [dict(S=S, model=m, **vars(rank_correlation(scores, m, S, exp.seed)))
            for S in spaces for m in ("NSA", "NSA-i")]
    rows += [{"S": S, "model": f"paper {m}", "value": paper.SPEARMAN[S][j], "low": np.nan, "high": np.nan}
             for S in spaces if S in paper.SPEARMAN for j, m in enumerate(("NSA", "NSA-i"))]
    table = pd.DataFrame(rows)[["S", "model", "value", "low", "high"]]
    models = list(dict.fromkeys(table.model))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k, model in enumerate(models):
        part = table[table.model == model].set_index("S").reindex(spaces)
        x = np.arange(len(spaces)) + (k - (len(models) - 1) / 2) * width
        colour = MODEL_COLOURS.get(model.removeprefix("paper "), f"C{k}")
        ax.bar(x, part.value, width, color=colour, alpha=0.35 if model.startswith("paper") else 0.9, label=model)
        has = np.isfinite(part.low.to_numpy()) & np.isfinite(part.high.to_numpy())
        C.draw_intervals(ax, x[has], [C.Estimate(v, lo, hi) for v, lo, hi in
                                      part[["value", "low", "high"]].to_numpy()[has]], ecolor="k", capsize=3, lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(spaces)), [f"S = {S}" for S in spaces])
    ax.set_ylabel("Spearman")
    ax.set_title(f"rank correlation of {scores.groupby(['model', 'S', 'bn']).size().max()} architectures, BN train vs "
                 "test mode (95 % interval)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig, table


def _paper_spearman(between: str) -> str:
    values = [" / ".join(f"{v[j]:g}" for v in paper.SPEARMAN.values()) for j in (0, 1)]
    return f"NSA {values[0]}{between}NSA-i {values[1]} (S = {' / '.join(map(str, paper.SPEARMAN))})"


def instance_claims(exp: Experiment, runs: dict, scores: pd.DataFrame, variance: pd.DataFrame,
                    three: pd.DataFrame, n: int, k: int) -> None:
    """02's claims: NSA-i against NSA at every S of spaces_bn (scores: both models' bn_mode_scores
    with a column model; variance: batch_mean_variances; three: both models' three BN modes)."""
    seed, spaces = exp.seed, exp.profile.spaces_bn
    gate = exp.gate({r.label: r for r in runs.values()}, "matched")
    at = lambda S, m: scores[(scores.S == S) & (scores.model == m)]

    def rho_gain(S: int) -> C.Estimate:   # NSA-i minus NSA, the same architectures resampled for both
        (ai, bi), (an, bn) = ((w["train"].to_numpy(), w["test"].to_numpy()) for w in
                              (at(S, m).pivot(index="arch", columns="bn", values="acc") for m in ("NSA-i", "NSA")))
        return C.bootstrap(lambda i: metrics.spearman_rows(ai[i], bi[i]) - metrics.spearman_rows(an[i], bn[i]),
                           len(ai), seed=seed, bounds=(-2, 2))

    gain = {S: rho_gain(S) for S in spaces}
    exp.claim("NSA-i's Spearman correlation between BN modes exceeds NSA's at every S",
              paper=_paper_spearman(" vs "),
              reproduced="NSA-i - NSA: " + C.by_S(gain) + f" ({n} architectures per S)",
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in gain.values()),
              rule=_gate_rule(gate, "bootstrap over architectures (the same ones for both models); holds if the "
                                    "interval of the difference lies above 0 at every S"))
    rho = {(S, m): rank_correlation(scores, m, S, seed) for S in spaces for m in ("NSA", "NSA-i")}
    levels = [C.equivalence(rho[S, m].shifted(-paper.SPEARMAN[S][j]), C.SPEARMAN_TOL, exp.paper_scale)
              for S in spaces if S in paper.SPEARMAN for j, m in enumerate(("NSA", "NSA-i"))]
    exp.claim("The Spearman correlations are at the paper's values",
              paper=_paper_spearman(", "),
              reproduced="; ".join(f"{m} S={S}: {e}" for (S, m), e in rho.items()),
              verdict=C.all_of(levels) if levels else C.NOT_COMPARABLE,
              rule=f"comparable only at the paper's scale (the full test set, 100 architectures, full training); there "
                   f"it holds if every value lies within {C.SPEARMAN_TOL} of the paper's, interval included")
    test_mode = scores[scores.bn == "test"]
    higher = {S: C.arch_difference(test_mode[test_mode.S == S], "model", "NSA-i", "NSA", seed=seed) for S in spaces}
    tighter = {S: C.arch_difference(test_mode[test_mode.S == S], "model", "NSA", "NSA-i", C.spread, seed)
               for S in spaces}
    exp.claim("With BN in test mode NSA-i's accuracies are higher and tighter than NSA's at every S",
              paper="NSA-i's test-mode histogram narrow and high, NSA's wide and low (Fig. 3(c)-(d) vs Fig. 2(c)-(d))",
              reproduced="mean NSA-i - NSA: " + C.by_S(higher) + "; std NSA - NSA-i: " + C.by_S(tighter),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in [*higher.values(), *tighter.values()]),
              rule=_gate_rule(gate, "bootstrap over architectures; holds if both intervals lie above 0 at every S"))
    better = {S: C.arch_difference(at(S, "NSA-i"), "bn", "test", "train", seed=seed) for S in spaces}
    exp.claim("For NSA-i, BN in test mode gives better accuracy than BN in training mode",
              paper="test-mode BN induces notably better validation accuracy (Fig. 3(c)-(d))",
              reproduced="mean accuracy test mode - training mode: " + C.by_S(better),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in better.values()),
              rule=_gate_rule(gate, "training mode in batches of the training size that mix the architectures one per "
                                    "image, as NSA-i trains; bootstrap over architectures; holds if the interval lies "
                                    "above 0 at every S"))
    curve_claim(exp, runs, gate, "test_loss", "NSA-i's test loss curve is more stable than NSA's",
                paper="NSA's test curves severely unstable, NSA-i's stable and consistent with training (Figs. 2-3 (a))",
                what="std of the last test losses",
                rule=f"the spread of the last tenth of each test-loss curve (at least {C.MIN_CURVE_POINTS} evaluations), "
                     "each model's points resampled on their own; holds if NSA's exceeds NSA-i's at every S (01 tests "
                     "the accuracy curves)")
    _variance_claim(exp, variance, gate)
    beyond.instance_recalibration_claim(exp, three, n, k, gate)


def _variance_claim(exp: Experiment, variance: pd.DataFrame, gate: C.Gate) -> None:
    """App. C: the variance of the batch mean, NSA over NSA-i, in log ratio over BN layers."""
    log_ratio = (variance.pivot_table(index=["S", "layer"], columns="model", values="var_mean")
                 .pipe(lambda t: np.log(t["NSA"] / t["NSA-i"])))
    lower = {S: C.mean_estimate(log_ratio.loc[S].to_numpy(), seed=exp.seed) for S in exp.profile.spaces_bn}
    exp.claim("The variance of the batch mean is lower for NSA-i than for NSA",
              paper="NSA-i reduces var(µ), ideally by an order of magnitude (Sec. 3, App. C)",
              reproduced="mean over BN layers of log(var NSA / var NSA-i): " + C.by_S(lower),
              verdict=C.all_of(C.verdict(d, gate.comparable) for d in lower.values()),
              rule=_gate_rule(gate, "bootstrap over BN layers; holds if the interval lies above 0 (NSA-i's variance "
                                    "lower) at every S"))


# --------------------------------------------------------------------------- 03: mode collapse

def ensembles(exp: Experiment, runs: dict[str, Trained], T: int) -> dict[str, dict]:
    """Per model, from the test probabilities of T architectures of its space in a seeded random
    order: the ensemble curve (accuracy of the first t, t = 1..T), each member's accuracy, whether
    the first t are right per test image ("hits" [T, N]) and the members' mean correctness [N]."""
    test = exp.test_set()
    out = {}
    for kind, run in runs.items():
        order = torch.randperm(run.spec.space, generator=torch.Generator().manual_seed(exp.seed))[:T]
        probs = evaluate.member_probs(run.model, test.images, run.spec.recipe.dataset, archs=order,
                                      batch=run.spec.recipe.eval_batch)
        right = (probs.argmax(2) == test.labels).double()
        hits = (probs.double().cumsum(0).argmax(2) == test.labels).double().numpy()
        out[kind] = {"curve": hits.mean(1), "members": right.mean(1).numpy(), "hits": hits,
                     "member_mean": right.mean(0).numpy()}
    return out


def ensemble_figure(exp: Experiment, ens: dict[str, dict]) -> plt.Figure:
    """Fig. 4: ensemble accuracy against T (log axis), bands of 95 % bootstrap intervals over
    test images, each model's mean single architecture dashed, T = 20 dotted."""
    fig, ax = plt.subplots(figsize=(7, 4))
    T = len(next(iter(ens.values()))["curve"])
    t = np.arange(1, T + 1)
    for (kind, e), colour in zip(ens.items(), ("C0", "C3")):
        name = KINDS[kind].label
        ax.plot(t, 100 * e["curve"], color=colour, label=f"{name} ensemble")
        low, high = C.mean_bands(e["hits"], seed=exp.seed)   # bootstrap over test images, every T at once
        ax.fill_between(t, 100 * low, 100 * high, color=colour, alpha=0.2, lw=0)
        ax.axhline(100 * e["members"].mean(), color=colour, ls="--", lw=1, label=f"{name}: mean single architecture")
    if T > paper.SATURATION_T:
        ax.axvline(paper.SATURATION_T, color="grey", ls=":", lw=1)
    _log_x(ax, [v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500) if v <= T])
    ax.set(xlabel="number of architectures ensembled T", ylabel="test accuracy (%)")
    ax.set_title(f"ensembles of architectures, {len(exp.test_set())} test images\nbands: 95 % bootstrap interval "
                 f"over test images ({C.PLOT_RESAMPLES} resamples)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def ensemble_summary(ens: dict[str, dict]) -> pd.DataFrame:
    T = len(next(iter(ens.values()))["curve"])
    s = min(paper.SATURATION_T, T)
    return pd.DataFrame({KINDS[k].label: {"T = 1": e["curve"][0], "mean single architecture": e["members"].mean(),
                                          f"T = {s}": e["curve"][s - 1], f"T = {T}": e["curve"][-1],
                                          "gain at T": e["curve"][-1] - e["members"].mean()}
                         for k, e in ens.items()}).T


def collapse_claims(exp: Experiment, runs: dict[str, Trained], ens: dict[str, dict]) -> None:
    """03's claims: the gain is the ensemble at the largest T minus the members' mean accuracy;
    the gain after T = 20 the mean over every T >= 20 of accuracy(T) - accuracy(20); every
    interval over test images, paired across the models and T."""
    i, d = "nsa-i", "nsa-id-agg"
    T, seed = len(ens[i]["curve"]), exp.seed
    gate = exp.gate({r.label: r for r in runs.values()}, "matched")
    gains = {k: e["hits"][-1] - e["member_mean"] for k, e in ens.items()}   # per image
    gain = {k: C.mean_estimate(g, seed=seed) for k, g in gains.items()}
    conv = all(C.converged(r.curve, seed)[0] for r in runs.values())
    exp.claim("NSA-i's ensemble gain is small (mode collapse)",
              paper=f"about {paper.ENSEMBLE_GAIN_NSA_I} (S = 500, T up to 500; Fig. 4)",
              reproduced=f"{gain[i]} (S = {runs[i].spec.space}, T = {T})",
              verdict=C.below(gain[i], C.SMALL_GAIN, exp.paper_scale and conv),
              rule=f"an absolute level: comparable only at the paper's scale with converged models; there it holds if "
                   f"the interval lies below {C.SMALL_GAIN}. Training gate: {gate.text}")
    more = C.mean_difference(gains[d], gains[i], seed=seed)
    exp.claim("NSA-id (aggregation only) gains more from ensembling than NSA-i",
              paper="the ensemble gain is more obvious for NSA-id than for NSA-i (Fig. 4)",
              reproduced=f"gain NSA-id {gain[d]} vs NSA-i {gain[i]}; difference {more}",
              verdict=C.verdict(more, gate.comparable),
              rule=_gate_rule(gate, "gain = ensemble at the largest T minus the mean single architecture; paired "
                                    "bootstrap over test images; holds if the interval of NSA-id's minus NSA-i's gain "
                                    "lies above 0"))
    s = paper.SATURATION_T
    late = {k: C.mean_estimate(e["hits"][s - 1:].mean(0) - e["hits"][s - 1], seed=seed)
            for k, e in ens.items()} if T > s else {}
    exp.claim(f"Neither model gains further after about {s} architectures",
              paper=f"no further ensemble gain after seeing almost {s} architectures (Fig. 4)",
              reproduced=(f"mean over T >= {s} of accuracy(T) - accuracy({s}): "
                          + ", ".join(f"{KINDS[k].label} {e}" for k, e in late.items())) if late
              else f"only T <= {T} ensembled",
              verdict=C.all_of(C.below(e, C.NO_FURTHER_GAIN, gate.comparable) for e in late.values()) if late
              else C.NOT_COMPARABLE,
              rule=_gate_rule(gate, f"comparable when more than {s} architectures are ensembled; holds if, for both "
                                    f"models, the interval of the mean later gain lies below {C.NO_FURTHER_GAIN}, "
                                    "does not hold if above it, underpowered if its half-width exceeds it"))


# ------------------------------------------------------------------- 04: unseen architectures

def unseen_scores(exp: Experiment, runs: dict, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig. 5 and App. D: (NSA-i's seen and unseen architectures in test mode at every S of
    spaces_unseen; NSA's in training mode at the S it shares with 01), columns S, kind
    ('seen'/'unseen'), arch, acc, loss. Unseen ones come from a stream disjoint from the
    training space's and are checked against it (space.unseen_architectures)."""
    P, test = exp.profile, exp.test_set()
    fig5, appd = [], []
    for (kind, S), run in runs.items():
        bn = "test" if kind == "nsa-i" else "train"
        r = run.spec.recipe
        wirings = wspace.unseen_architectures(n, architectures(P.spec("nsa-i", space=S, seed=exp.seed)), seed=exp.seed)
        unseen = evaluate.arch_scores(run.model, test.images, test.labels, r.dataset, wirings=wirings, bn=bn,
                                      batch=r.eval_batch if bn == "test" else r.batch_size)
        both = [exp.seen_scores(run, bn, n).assign(S=S, kind="seen"), unseen.assign(S=S, kind="unseen")]
        (fig5 if kind == "nsa-i" else appd).extend(both)
    empty = pd.DataFrame(columns=["arch", "acc", "loss", "S", "kind"])
    return pd.concat(fig5, ignore_index=True), pd.concat(appd, ignore_index=True) if appd else empty


def _groups(scores: pd.DataFrame, S: int) -> tuple[np.ndarray, np.ndarray]:
    """(unseen, seen) accuracies at S: the negatives and positives of the AUC."""
    at = scores[scores.S == S]
    return at[at.kind == "unseen"].acc.to_numpy(float), at[at.kind == "seen"].acc.to_numpy(float)


def table1(exp: Experiment, scores: pd.DataFrame) -> pd.DataFrame:
    """Table 1: per S, the AUC of telling seen from unseen architectures by accuracy (seen the
    positive class) with its interval, the mean accuracies, and the paper's."""
    rows = []
    for S in exp.profile.spaces_unseen:
        unseen, seen = _groups(scores, S)
        auc = C.auc_estimate(unseen, seen, seed=exp.seed)
        ref = paper.TABLE1.get(S, (np.nan,) * 3)
        rows.append({"S": S, "AUC": auc.value, "AUC low": auc.low, "AUC high": auc.high,
                     "seen (%)": 100 * seen.mean(), "unseen (%)": 100 * unseen.mean(), "seen archs": len(seen),
                     "unseen archs": len(unseen), "paper AUC": ref[0], "paper seen (%)": ref[1],
                     "paper unseen (%)": ref[2]})
    return pd.DataFrame(rows)


def auc_figure(table: pd.DataFrame) -> plt.Figure:
    """Table 1's AUC against S, this run's with its 95 % interval beside the paper's."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    est = [C.Estimate(v, lo, hi) for v, lo, hi in table[["AUC", "AUC low", "AUC high"]].itertuples(index=False)]
    ax.plot(table.S, table.AUC, "o-", label="this run (95 % bootstrap interval)")
    ax.set_title(f"{int(table['seen archs'].iloc[-1])} seen and unseen architectures per S, "
                 f"{C.N_RESAMPLES} resamples", fontsize=10)
    C.draw_intervals(ax, table.S, est, capsize=3, ecolor="C0")
    ax.plot(list(paper.TABLE1), [v[0] for v in paper.TABLE1.values()], "s--", label="paper (Table 1)")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    _log_x(ax, sorted(set(paper.TABLE1) | set(table.S)))
    ax.set(xlabel="training space size S", ylabel="AUC seen vs unseen", ylim=(0, 1.05))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def unseen_claims(exp: Experiment, runs: dict, scores: pd.DataFrame, appd: pd.DataFrame) -> None:
    """04's claims on NSA-i's seen and unseen architectures at every S of spaces_unseen, and
    App. D's vanilla NSA in training mode at the S it shares with 01."""
    seed, spaces = exp.seed, list(exp.profile.spaces_unseen)
    gate = exp.gate({r.label: r for (k, _), r in runs.items() if k == "nsa-i"}, "matched")
    groups = {S: _groups(scores, S) for S in spaces}
    auc = {S: C.auc_estimate(*groups[S], seed=seed) for S in spaces}
    falls = C.falls(spaces, [groups[S] for S in spaces], metrics.auc_rows, seed)
    exp.claim("The AUC of telling seen from unseen architectures falls as S grows",
              paper=" / ".join(f"{v[0]:.2f}" for v in paper.TABLE1.values()) + " for S = " + " / ".join(map(str, paper.TABLE1)),
              reproduced=C.by_S(auc) + f"; -Kendall tau between S and AUC over every S: {falls}",
              verdict=C.verdict(falls, gate.comparable and len(spaces) > 1),
              rule=_gate_rule(gate, "a trend over every S, not the endpoints: the architectures of every S resampled "
                                    "independently, each resample's AUCs ranked against S; holds if the interval of "
                                    "-tau lies above 0"))
    large = {S: auc[S].shifted(-0.5) for S in spaces if S >= 500}
    exp.claim("From S = 500 on, seen and unseen architectures are nearly indistinguishable",
              paper=f"AUC {paper.TABLE1[500][0]} (S = 500), {paper.TABLE1[5000][0]} (S = 5000)",
              reproduced=("AUC - 0.5: " + C.by_S(large)) if large else "no S >= 500 in this profile",
              verdict=C.all_of(C.equivalence(d, C.INDISTINGUISHABLE, gate.comparable) for d in large.values())
              if large else C.NOT_COMPARABLE,
              rule=_gate_rule(gate, f"two-sided: holds if the interval of AUC - 0.5 lies within "
                                    f"+-{C.INDISTINGUISHABLE} at every S >= 500, does not hold if outside, underpowered "
                                    "if its half-width exceeds that (too few architectures to tell)"))
    S0 = spaces[0]
    narrow = C.two_sample(lambda a, b: a.mean(-1) - b.mean(-1), groups[S0][1], groups[S0][0], seed=seed)
    exp.claim(f"With a narrow training space (S = {S0}) seen architectures score higher than unseen ones",
              paper=f"S = 5: {paper.TABLE1[5][1]} % seen vs {paper.TABLE1[5][2]} % unseen, AUC {paper.TABLE1[5][0]:.2f}",
              reproduced=f"S = {S0}: mean seen - unseen accuracy {narrow.fmt(2, 100)} points, AUC {auc[S0]}",
              verdict=C.verdict(narrow, gate.comparable),
              rule=_gate_rule(gate, "seen and unseen architectures resampled independently; holds if the interval of "
                                    "the difference of mean accuracies lies above 0"))
    trend = C.falls(spaces, [(groups[S][1],) for S in spaces], lambda a: a.mean(-1), seed)
    exp.claim("The mean accuracy of seen architectures falls slightly as S grows (Table 1)",
              paper=" / ".join(f"{v[1]}" for v in paper.TABLE1.values()) + " % for S = " + " / ".join(map(str, paper.TABLE1)),
              reproduced="mean seen accuracy " + ", ".join(f"S={S}: {100 * groups[S][1].mean():.2f} %" for S in spaces)
                         + f"; -Kendall tau between S and it over every S: {trend}",
              verdict=C.verdict(trend, gate.comparable and len(spaces) > 1),
              rule=_gate_rule(gate, "a trend over every S, the seen architectures of every S resampled independently; "
                                    "holds if the interval of -tau lies above 0"))
    conv = all(C.converged(r.curve, seed)[0] for r in runs.values())
    levels = [C.equivalence(C.mean_estimate(100 * groups[S][j], seed).shifted(-paper.TABLE1[S][2 - j]),
                            C.TABLE1_TOL_PP, exp.paper_scale and conv)
              for S in spaces if S in paper.TABLE1 for j in (1, 0)]
    exp.claim("Mean seen and unseen accuracies are at Table 1's levels",
              paper="; ".join(f"S={S}: {v[1]:.2f} / {v[2]:.2f} %" for S, v in paper.TABLE1.items()),
              reproduced="; ".join(f"S={S}: {100 * groups[S][1].mean():.2f} / {100 * groups[S][0].mean():.2f} %"
                                   for S in spaces),
              verdict=C.all_of(levels) if levels else C.NOT_COMPARABLE,
              rule=f"comparable only at the paper's scale with converged models; there it holds if every mean lies "
                   f"within {C.TABLE1_TOL_PP} percentage points of Table 1, interval included")
    _appd_claim(exp, groups, appd, gate)


def _appd_claim(exp: Experiment, groups: dict, appd: pd.DataFrame, gate: C.Gate) -> None:
    """App. D: vanilla NSA in training mode tells seen from unseen as NSA-i does (groups: NSA-i's
    (unseen, seen) accuracies per S)."""
    common = sorted(set(appd.S))
    van = {S: _groups(appd, S) for S in common}
    similar = {S: C.bootstrap(lambda a, b, c, d, S=S: metrics.auc_rows(van[S][0][a], van[S][1][b])
                              - metrics.auc_rows(groups[S][0][c], groups[S][1][d]),
                              len(van[S][0]), len(van[S][1]), *map(len, groups[S]), seed=exp.seed, bounds=(-1, 1))
               for S in common}
    exp.claim("Vanilla NSA with BN in training mode tells seen from unseen architectures about as NSA-i does (App. D)",
              paper="the naive NSA models with training-mode BN would provide similar results (Sec. 4, App. D)",
              reproduced=("AUC(NSA, training mode) - AUC(NSA-i, test mode): " + C.by_S(similar)) if common
              else "no S shared by spaces_unseen and spaces_bn in this profile",
              verdict=C.all_of(C.equivalence(d, C.INDISTINGUISHABLE, gate.comparable) for d in similar.values())
              if common else C.NOT_COMPARABLE,
              rule=_gate_rule(gate, f"the four groups of architectures resampled independently; holds if the interval "
                                    f"of the difference lies within +-{C.INDISTINGUISHABLE} at every shared S, does not "
                                    "hold if outside, underpowered if its half-width exceeds that"))


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
