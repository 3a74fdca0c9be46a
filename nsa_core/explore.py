"""Exploring NSA (the paper's Sec. 5): shared steps of notebooks 05 ensemble, 06 calibration,
07 uncertainty and 08 semi-supervised.

Table 2 compares four methods on one test set. Each is kept as *member* probabilities
[T, N, C], so every notebook derives what it needs from the same numbers:
- "wrn":         WRN-28-10†, one deterministic pass (T = 1);
- "wrn-dropout": WRN-28-10† + MC dropout, one member per dropout mask (T = profile.mc_samples);
- "single":      the S individually trained architectures, member k = individual k alone;
                 the paper reports the *average of their metrics*, not their ensemble;
- "nsa-id":      NSA-id, one member per architecture of its training space (T = S).
The probabilities are cached per data set, keyed by the models and the test set, so 06 and
07 reuse what 05 computed instead of running the networks again.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from . import data as D
from . import evaluate, metrics
from .checkpoint import atomic_save
from .config import Recipe
from .models import build
from .network import WiredNet, count_params
from .paper import TABLE2 as PAPER_TABLE2
from .profiles import PROFILES, Profile

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    from .experiment import Experiment

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN",
                 "fashion-mnist": "Fashion-MNIST", "synthetic": "synthetic", "synthetic-ood": "synthetic OOD"}
OOD_FALLBACK = "fashion-mnist"   # a local stand-in where SVHN cannot be downloaded

METHODS = ("wrn", "wrn-dropout", "single", "nsa-id")
LABELS = {"wrn": "WRN-28-10†", "wrn-dropout": "WRN-28-10† + MC dropout",
          "single": "Average of individuals", "nsa-id": "NSA-id"}

def settings(profile: Profile, keys: Iterable[str]) -> pd.DataFrame:
    """This run's values of some settings next to the paper's: a profile knob by name, a
    recipe key from the supervised recipe, 'semi.KEY' from the semi-supervised one."""
    def value(p: Profile, key: str):
        if key.startswith("semi."):
            return getattr(p.semi_recipe, key[len("semi."):])
        return getattr(p.train, key) if key in {f.name for f in fields(Recipe)} else getattr(p, key)

    keys = list(keys)
    return pd.DataFrame([[value(profile, k), value(PROFILES["paper"], k)] for k in keys], index=keys,
                        columns=["this run", "paper"], dtype=object)


def paper_param_counts(dataset: str = "cifar10") -> pd.Series:
    """Parameters of each method's network at the paper's size (width 10, 8 nodes; built,
    not trained), to check against Table 2's # params column."""
    p = PROFILES["paper"]
    S = p.space_ensemble
    specs = {"wrn": p.spec("wrn", dataset=dataset), "wrn-dropout": p.spec("wrn-dropout", dataset=dataset),
             "single": p.spec("single", space=S, arch_index=0, dataset=dataset),
             "nsa-id": p.spec("nsa-id", space=S, dataset=dataset)}
    return pd.Series({m: count_params(build(s, D.NUM_CLASSES[dataset])) for m, s in specs.items()},
                     name="params")


def method_specs(exp: Experiment, dataset: str) -> dict[str, list]:
    """The ModelSpecs behind each Table 2 method on `dataset` (several for "single")."""
    S = exp.profile.space_ensemble
    return {
        "wrn": [exp.spec("wrn", dataset=dataset)],
        "wrn-dropout": [exp.spec("wrn-dropout", dataset=dataset)],
        "single": [exp.spec("single", space=S, arch_index=k, dataset=dataset) for k in range(S)],
        "nsa-id": [exp.spec("nsa-id", space=S, dataset=dataset)],
    }


def ensemble_models(exp: Experiment, dataset: str, methods: Iterable[str] = METHODS
                    ) -> dict[str, list[tuple[WiredNet, pd.DataFrame]]]:
    """The trained (cached) models of the Table 2 methods: method -> [(model, history)], one
    entry per individually trained network (S for "single", one otherwise)."""
    methods = tuple(methods)
    _check_methods(methods)
    specs = method_specs(exp, dataset)
    return {m: [exp.trained(spec) for spec in specs[m]] for m in methods}


def table2_probs(exp: Experiment, dataset: str, methods: Iterable[str] = METHODS
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({method: member probabilities [T, N, C]}, labels [N]) on the evaluation subset of
    `dataset`. Cached in results/<profile>/_shared/probs_<dataset>.pt; a method is computed
    again (training its models if they are missing) only when its models, the test set, the
    seed or MC dropout's samples (their number and batch layout) changed."""
    methods = tuple(methods)
    _check_methods(methods)
    test = exp.test_set(dataset=dataset)
    path = exp.shared_dir / f"probs_{dataset}.pt"
    cache = torch.load(path, weights_only=False) if path.exists() else {}
    specs = method_specs(exp, dataset)
    mc, batch = exp.profile.mc_samples, exp.profile.train.eval_batch
    changed = False
    for m in methods:
        # MC dropout's masks depend on the batch layout too.
        key = dict(specs=[s.key for s in specs[m]], test=test.fingerprint(),
                   mc=(mc, batch) if m == "wrn-dropout" else None, seed=exp.seed)
        if m in cache and cache[m]["key"] == key:
            continue
        models = [model for model, _ in ensemble_models(exp, dataset, [m])[m]]
        cache[m] = dict(key=key, probs=_member_probs(m, models, test.images, dataset, mc, batch, exp.seed))
        changed = True
    if changed:
        atomic_save(cache, path)
    return {m: cache[m]["probs"] for m in methods}, test.labels


def ood_set(exp: Experiment, name: str, n: int | None = None) -> tuple[D.Split | None, str | None]:
    """(split, name) of the out-of-distribution test set: `name` (n images; None: all), else the local
    Fashion-MNIST stand-in, else (None, None). Every substitution is recorded by exp.note."""
    try:
        return evaluate.load_ood(name, exp.data_dir, n=n, seed=exp.seed), name
    except D.DataMissing as e:
        reason = str(e)
    if name != OOD_FALLBACK:
        try:
            split = evaluate.load_ood(OOD_FALLBACK, exp.data_dir, n=n, seed=exp.seed)
        except D.DataMissing as e:
            reason += f"; the stand-in {OOD_FALLBACK} is missing too ({e})"
        else:
            exp.note(f"OOD set: {DATASET_NAMES.get(name, name)} could not be loaded ({reason}). "
                     f"{DATASET_NAMES[OOD_FALLBACK]} is used instead, so OOD AUCs are not comparable "
                     f"in absolute value with the paper's (which used SVHN).")
            return split, OOD_FALLBACK
    exp.note(f"OOD set: {DATASET_NAMES.get(name, name)} could not be loaded ({reason}); "
             f"the OOD part of Table 3 is skipped.")
    return None, None


def _member_probs(method: str, models: list[WiredNet], images: torch.Tensor, norm: str,
                  mc_samples: int, batch: int, seed: int) -> torch.Tensor:
    if method == "wrn-dropout":
        return evaluate.mc_dropout_probs(models[0], images, norm, mc_samples, batch=batch, seed=seed)
    if method == "nsa-id":
        return evaluate.member_probs(models[0], images, norm, archs=torch.arange(models[0].num_archs),
                                     batch=batch)
    # fixed wirings ("wrn", each individual): one deterministic pass each
    return torch.stack([evaluate.predict(m, images, norm, batch=batch).softmax(1) for m in models])


def predictions(method: str, member_probs: torch.Tensor) -> list[torch.Tensor]:
    """The predictive distributions [N, C] that a method is scored by: the mean over its
    members, except "single", whose individuals are scored one by one (paper Table 2)."""
    if method == "single":
        return list(member_probs)
    return [member_probs.mean(0)]


def scores(probs: dict[str, torch.Tensor], labels: torch.Tensor, n_bins: int = 15) -> pd.DataFrame:
    """Test error (%), ECE, NLL and Brier score per method (rows, in METHODS order);
    "single" is the average of the individuals' scores."""
    rows = {}
    for m in (m for m in METHODS if m in probs):
        each = [dict(error=100 * metrics.error(p, labels), ece=metrics.ece(p, labels, n_bins),
                     nll=metrics.nll(p, labels), brier=metrics.brier(p, labels))
                for p in predictions(m, probs[m])]
        rows[m] = pd.DataFrame(each).mean()
    return pd.DataFrame(rows).T.rename_axis("method")


def param_counts(models: dict[str, list[tuple[WiredNet, pd.DataFrame]]]) -> pd.Series:
    """Parameters of one network per method (the auxiliary head included: it is part of
    every Sec. 5 model during training); "single" averages its individuals."""
    return pd.Series({m: sum(count_params(net) for net, _ in pairs) / len(pairs)
                      for m, pairs in models.items()}, name="params")


def _check_methods(methods: Iterable[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown Table 2 method(s) {unknown}; choose from {', '.join(METHODS)}")


def histories(models: dict[str, list[tuple[WiredNet, pd.DataFrame]]]) -> dict[str, pd.DataFrame]:
    """Training history of every compared network, named for the convergence check."""
    return {(LABELS.get(m, m) + (f" #{k}" if len(pairs) > 1 else "")): h
            for m, pairs in models.items() for k, (_, h) in enumerate(pairs)}


def attack_outcomes(model: WiredNet, images: torch.Tensor, labels: torch.Tensor, norm: str, attack,
                    archs=None, mc_samples: int | None = None, batch: int = 250, seed: int = 0) -> dict:
    """evaluate.attack_report's attack (`evaluate.attacked_members`, so the same numbers), kept
    per image so that its accuracies and AUC can be bootstrapped: correct_clean, correct_adv
    (0/1 per image), mi_clean, mi_adv (mutual information per image), and the summary."""
    p_clean, p_adv, y = evaluate.attacked_members(model, images, labels, norm, attack, archs, mc_samples,
                                                  batch, seed)
    out = dict(correct_clean=(p_clean.mean(0).argmax(1) == y).numpy().astype(float),
               correct_adv=(p_adv.mean(0).argmax(1) == y).numpy().astype(float),
               mi_clean=metrics.mutual_information(p_clean).numpy(), mi_adv=metrics.mutual_information(p_adv).numpy())
    out["summary"] = dict(attack=attack.name, eps=attack.eps, acc_clean=out["correct_clean"].mean(),
                          acc_adv=out["correct_adv"].mean(), auc=metrics.auc(out["mi_clean"], out["mi_adv"]),
                          n=len(images))
    return out


# ------------------------------------------------------------------------ figures (05-07)

def paper_ref(dataset: str) -> str:
    """The data set of the paper's Table 2 a data set is read against: itself, or CIFAR-10
    for the smoke profile's synthetic set."""
    return dataset if dataset in PAPER_TABLE2 else "cifar10"


def plot_table2_bars(results: dict[str, tuple[pd.DataFrame, dict[str, torch.Tensor], torch.Tensor]]) -> plt.Figure:
    """05's Table 2 as bars, one row per data set: this run's test error and ECE per method
    (black dots: the individual architectures of "single") beside the paper's."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .claims import PLOT_RESAMPLES, draw_intervals

    palette = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
    names = [LABELS[m] for m in METHODS]
    fig, axes = plt.subplots(len(results), 4, figsize=(16, 2.6 + 1.2 * len(results)), squeeze=False, sharey=True)
    for row, (ds, (table, probs, labels)) in zip(axes, results.items()):
        ptab = PAPER_TABLE2[paper_ref(ds)]
        individual = {"error": [100 * metrics.error(p, labels) for p in probs["single"]],
                      "ece": [metrics.ece(p, labels) for p in probs["single"]]}
        bands = table2_intervals(probs, labels)
        panels = [("error", "test error (%)", "this run", table["error"]), ("ece", "ECE", "this run", table["ece"]),
                  ("error", "test error (%)", "paper", pd.Series({m: ptab[m][1] for m in METHODS})),
                  ("ece", "ECE", "paper", pd.Series({m: ptab[m][2] for m in METHODS}))]
        for ax, (col, label, source, values) in zip(row, panels):
            ax.barh(names, values[list(METHODS)], color=[palette[m] for m in METHODS])
            if source == "this run":
                ax.scatter(individual[col], [names[METHODS.index("single")]] * len(individual[col]), color="k",
                           s=14, zorder=3)
                lo, hi = (bands[col][b][list(METHODS)].to_numpy() for b in ("low", "high"))
                draw_intervals(ax, names, lo, hi, horizontal=True, ecolor="dimgrey", capsize=3, zorder=4)
            for y, m in enumerate(METHODS):
                v = values[m]
                dots = individual[col] if m == "single" else []
                at = v if source == "paper" else max([bands[col]["high"][m], *dots])   # right of bar and dots
                ax.text(at, y, f" {v:.2f}" if col == "error" else f" {v:.4f}", va="center", fontsize=8)
            ax.set_xlabel(label)
            ref = DATASET_NAMES[paper_ref(ds)]
            ax.set_title(f"{DATASET_NAMES.get(ds, ds)}, this run" if source == "this run" else f"paper, {ref}")
            ax.margins(x=0.25)
        row[0].invert_yaxis()
    fig.suptitle("bars: each method's score; grey whiskers: 95 % bootstrap interval over test images "
                 f"({PLOT_RESAMPLES} resamples); black dots: the individual architectures", y=1.02, fontsize=10)
    fig.tight_layout()
    return fig


def table2_intervals(probs: dict[str, torch.Tensor], labels: torch.Tensor, n_bins: int = 15
                     ) -> dict[str, pd.DataFrame]:
    """Bootstrap intervals over test images of each method's test error (%) and ECE, scored as
    `scores` scores them: {"error" | "ece": DataFrame, rows METHODS, columns low, high}."""
    from . import claims

    out = {}
    for col, metric, scale in (("error", "error", 100), ("ece", "ece", 1)):
        est = {m: claims.metric_estimate(metric, predictions(m, probs[m]), labels, n_bins=n_bins)
               for m in METHODS if m in probs}
        out[col] = pd.DataFrame({m: {"low": scale * e.low, "high": scale * e.high} for m, e in est.items()}).T
    return out


def draw_ece_intervals(ax, probs: dict[str, torch.Tensor], labels: torch.Tensor, n_bins: int = 15) -> None:
    """Error bars on a horizontal bar chart of ECE with one bar per method, in METHODS order
    (06's calibration scores): each method's bootstrap interval over test images."""
    from .claims import PLOT_RESAMPLES, draw_intervals

    ci = table2_intervals(probs, labels, n_bins)["ece"].reindex(list(METHODS))
    draw_intervals(ax, np.arange(len(METHODS)), ci["low"], ci["high"], horizontal=True, ecolor="k", capsize=3)
    ax.set_xlabel(f"lower is better; 95 % CI, {PLOT_RESAMPLES} resamples of images")


def pooled_ece(preds: list[torch.Tensor], labels: torch.Tensor, n_bins: int = 15):
    """ECE of predictions pooled over a list of predictors, with its interval: the test images
    are resampled, each drawn image bringing all of its predictions."""
    from . import claims

    y = torch.as_tensor(labels).long()
    conf = np.stack([p.max(1).values.double().numpy() for p in preds])          # [K, N]
    right = np.stack([(p.argmax(1) == y).double().numpy() for p in preds])

    def stat(i: np.ndarray) -> np.ndarray:   # [..., n] images -> the K predictions of each, pooled
        pooled = lambda v: np.moveaxis(v[:, i], 0, -2).reshape(*i.shape[:-1], -1)  # noqa: E731
        return metrics.ece_rows(pooled(conf), pooled(right), n_bins)

    return claims.bootstrap(stat, len(y), n_resamples=claims.PLOT_RESAMPLES)


def _reliability_column(top, bottom, preds: list[torch.Tensor], labels: torch.Tensor, n_bins: int) -> None:
    pooled = torch.cat(preds)                       # individuals: all of their predictions
    y = labels.repeat(len(preds))
    rel = metrics.reliability(pooled, y, n_bins=n_bins)
    width = rel["bin_upper"] - rel["bin_lower"]
    centre = rel["bin_lower"] + width / 2
    top.bar(centre, rel["count"] / rel["count"].sum(), width=width, color="tab:blue", edgecolor="k", lw=0.5)
    conf = pooled.max(1).values.mean().item()
    acc = metrics.accuracy(pooled, y)
    top.axvline(conf, color="k", ls="--", lw=1, label=f"confidence {conf:.2f}")
    top.axvline(acc, color="k", ls="-", lw=1, label=f"accuracy {acc:.2f}")
    top.legend(fontsize=7, loc="upper left")
    filled = rel["count"] > 0
    bottom.bar(centre, rel["accuracy"].where(filled, 0.0), width=width, color="tab:blue", edgecolor="k", lw=0.5,
               label="outputs")
    gap_lo = rel[["accuracy", "confidence"]].min(axis=1).where(filled, 0.0)
    gap = (rel["confidence"] - rel["accuracy"]).abs().where(filled, 0.0)
    bottom.bar(centre, gap, bottom=gap_lo, width=width, color="tab:red", alpha=0.3, edgecolor="tab:red",
               hatch="//", lw=0.5, label="gap")
    bottom.plot([0, 1], [0, 1], "k--", lw=1)
    ece = pooled_ece(preds, labels, n_bins)
    label = (f"ECE {ece.fmt(4)}\nof the {len(preds)} individuals' predictions\npooled "
             f"(table: mean of their ECEs)") if len(preds) > 1 else f"ECE {ece.fmt(4)}"
    bottom.text(0.97, 0.04, label, ha="right", fontsize=8, bbox=dict(facecolor="white", alpha=0.8, lw=0))
    bottom.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence")


def plot_reliability_grid(probs: dict[str, torch.Tensor], labels: torch.Tensor, title: str,
                          n_bins: int = 15) -> plt.Figure:
    """06's reliability diagrams, one column per method (Guo et al. style): top, the share of
    predictions per confidence bin with the mean confidence and the accuracy; bottom, the
    accuracy per bin and the gap to the diagonal. "single" pools its individuals' predictions."""
    import matplotlib.pyplot as plt

    from .claims import PLOT_RESAMPLES

    fig, axes = plt.subplots(2, len(METHODS), figsize=(3.4 * len(METHODS), 6.2), sharex=True,
                             gridspec_kw={"height_ratios": [1, 2]})
    for col, m in enumerate(METHODS):
        _reliability_column(axes[0, col], axes[1, col], predictions(m, probs[m]), labels, n_bins)
        axes[0, col].set_title(LABELS[m], fontsize=10)
    axes[0, 0].set_ylabel("share of predictions")
    axes[1, 0].set_ylabel("accuracy")
    axes[1, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{title}\nECE [95 % bootstrap interval over test images, {PLOT_RESAMPLES} resamples]",
                 fontsize=11)
    fig.tight_layout()
    return fig


def plot_mi_histograms(mi: dict[str, tuple], ood_auc: dict[str, float], in_name: str, ood_name: str) -> plt.Figure:
    """07's mutual information of in-distribution against out-of-distribution test images,
    one panel per method (method -> (MI in, MI out)), log-scaled density."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(mi), figsize=(5.5 * len(mi), 3.6), squeeze=False)
    for ax, (m, (mi_in, mi_out)) in zip(axes[0], mi.items()):
        bins = np.linspace(0, max(np.concatenate([mi_in, mi_out]).max(), 1e-6), 40)
        ax.hist(mi_in, bins=bins, alpha=0.6, density=True, label=f"{in_name} test (in)")
        ax.hist(mi_out, bins=bins, alpha=0.6, density=True, label=f"{ood_name} test (OOD)")
        ax.set(title=f"{LABELS[m]}: OOD AUC {ood_auc[m]:.3f}", xlabel="mutual information (nats)",
               ylabel="density (log scale)", yscale="log")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attack_intervals(outcomes: dict, method: str, attack_names: Iterable[str]) -> dict[str, np.ndarray]:
    """Bootstrap intervals over the attacked images of one method's accuracy (clean, then one
    per attack) and of its clean-vs-attacked AUC per attack, from attack_outcomes' per-image
    records keyed (method, attack): {"acc" | "auc": [2, K] low/high rows}."""
    from . import claims

    names = list(attack_names)
    first = outcomes[method, names[0]]
    hits = [first["correct_clean"]] + [outcomes[method, a]["correct_adv"] for a in names]
    acc = np.stack(claims.mean_bands(np.stack(hits)))

    def auc(a: str) -> claims.Estimate:
        o = outcomes[method, a]
        return claims.auc_estimate(o["mi_clean"], o["mi_adv"], n_resamples=claims.PLOT_RESAMPLES)

    aucs = [auc(a) for a in names]
    return {"acc": acc, "auc": np.array([[e.low for e in aucs], [e.high for e in aucs]])}


def plot_attacks(attack_table: pd.DataFrame, n_images: int, methods: tuple[str, ...] = ("wrn-dropout", "nsa-id"),
                 outcomes: dict | None = None) -> plt.Figure:
    """07's PGD results against the budget, this run (solid) beside the paper (dashed, its
    clean point Table 2's accuracy): the ensemble's accuracy under attack, and the AUC of
    telling attacked from clean images by mutual information. With attack_outcomes' per-image
    `outcomes`, this run's points carry their bootstrap intervals."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from . import attacks, paper
    from .claims import PLOT_RESAMPLES, draw_intervals

    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for k, m in enumerate(methods):
        t = attack_table[attack_table.method == m]
        dodge = 0.06 * (k - (len(methods) - 1) / 2)   # so that the methods' error bars do not overlap
        budget = np.concatenate([[0.0], t.eps.to_numpy() * 255]) + dodge
        accs = np.concatenate([[t.acc_clean.iloc[0]], t.acc_adv])
        axes[0].plot(budget, accs, "o-", color=palette[m], label=f"{LABELS[m]} (this run)")
        axes[1].plot(budget[1:], t.auc, "o-", color=palette[m], label=f"{LABELS[m]} (this run)")
        if outcomes is not None:
            ci = attack_intervals(outcomes, m, t.attack)
            draw_intervals(axes[0], budget, *ci["acc"], ecolor=palette[m], capsize=3)
            draw_intervals(axes[1], budget[1:], *ci["auc"], ecolor=palette[m], capsize=3)
        ppgd = paper.PGD[m]
        shown = [a for a in t.attack if a in ppgd]
        if not shown:
            continue
        eps = [attacks.PGD.from_name(a).eps * 255 for a in shown]
        clean = 1 - paper.TABLE2["cifar10"][m][1] / 100   # the paper's clean accuracy: Table 2's, CIFAR-10
        axes[0].plot([0.0] + eps, [clean] + [ppgd[a][0] for a in shown], "s--", color=palette[m], alpha=0.6,
                     label=f"{LABELS[m]} (paper)")
        if m == methods[-1]:   # one label for both paper points at budget 0
            axes[0].annotate("paper's clean points: Table 2 accuracy", (0.0, clean), textcoords="offset points",
                             xytext=(8, -4), fontsize=7, color="dimgrey")
        axes[1].plot(eps, [ppgd[a][1] for a in shown], "s--", color=palette[m], alpha=0.6, label=f"{LABELS[m]} (paper)")
    if outcomes is not None:
        fig.suptitle(f"error bars: 95 % bootstrap interval over the attacked images ({PLOT_RESAMPLES} resamples)",
                     fontsize=9)
    axes[0].set(xlabel="PGD budget (x/255); 0 = clean", ylabel="accuracy",
                title=f"accuracy under attack ({n_images} images)")
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[1].set(xlabel="PGD budget (x/255)", ylabel="AUC", title="clean vs attacked, by mutual information")
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MultipleLocator(1))
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig
