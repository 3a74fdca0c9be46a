"""Profiles: named sets of plain values that size every experiment of the suite.

- paper: SPEC section 4 exactly (a GPU run of many days in all).
- tiny:  real CIFAR-10 on a 2-core CPU; the whole suite within 90 minutes. The models are
         narrow and shallow and train for 240 steps each, so absolute accuracies are far below
         the paper's (about 25 % instead of 97 %); the notebooks say which claims stay comparable.
- smoke: synthetic data; every model trains in seconds. For tests and a quick look.

Any value can be overridden one by one: `get_profile("tiny", {"epochs": 4})` or
`--set epochs=4` on the command line.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, fields, replace, asdict
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    # data
    dataset: str = "cifar10"
    train_size: int | None = None        # class-balanced training subset; None = all
    test_size: int | None = None         # evaluation subset (fixed shuffled order); None = all
    synthetic_size: int = 2048           # synthetic data set only: training images
    # network
    width: float = 10.0
    nodes: int = 8
    # optimisation (SPEC section 4)
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"               # "step": x gamma at milestones; "linear": warm-up then linear decay to 0
    milestones: tuple[int, ...] = (90, 180, 240)
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    cutout: int = 16
    aux_weight: float = 0.1
    # experiments
    spaces_bn: tuple[int, ...] = (500, 5000, 50000)    # 01, 02
    spaces_unseen: tuple[int, ...] = (5, 50, 500, 5000)  # 04
    space_ensemble: int = 5                             # 05-07: NSA-id's S and T
    n_archs: int = 100                   # architectures evaluated per histogram
    t_max: int = 500                     # 03: ensemble sizes 1..t_max
    mc_samples: int = 100                # MC dropout samples
    dropout: float = 0.2
    attacks: tuple[str, ...] = ("PGD1-2-1", "PGD2-3-1", "PGD3-4-1")
    attack_size: int | None = None       # test images attacked; None = all
    ood_dataset: str = "svhn"
    ensemble_datasets: tuple[str, ...] = ("cifar10", "cifar100")
    # semi-supervised (authors' release)
    labelled: int = 4000
    unlabelled: int | None = None        # None: all the other training images
    semi_epochs: int = 100
    semi_milestones: tuple[int, ...] = (40, 80)
    semi_batch: int = 64                 # labelled and unlabelled each
    consistency: float = 20.0
    eval_batch: int = 500
    log_every: int = 50                  # steps between host syncs for logging

    def with_overrides(self, overrides: dict[str, Any] | None) -> "Profile":
        if not overrides:
            return self
        known = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in overrides.items():
            if key not in known or key == "name":
                raise KeyError(f"unknown profile key {key!r}; known keys: {', '.join(sorted(k for k in known if k != 'name'))}")
            clean[key] = coerce(value, getattr(self, key), key)
        return replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "paper": Profile(name="paper"),
    # tiny: sized for the whole suite (18 models, all notebooks) in well under 90 minutes on a
    # 2-core CPU. Width 1 and 4 nodes per stage (SPEC section 6: the fastest configuration that
    # still learns), 240 steps per model, evaluation on 1,000 shuffled test images. The short
    # run uses a linear warm-up/decay schedule instead of the paper's 300-epoch step schedule.
    "tiny": Profile(
        name="tiny", train_size=7680, test_size=1000, width=1.0, nodes=4,
        epochs=4, batch_size=128, schedule="linear", warmup_epochs=0.5, milestones=(),
        spaces_bn=(500, 5000), spaces_unseen=(5, 50, 500, 5000), space_ensemble=5,
        n_archs=20, t_max=50, mc_samples=10, attack_size=300, ood_dataset="svhn",
        ensemble_datasets=("cifar10", "cifar100"), labelled=4000, unlabelled=6400, semi_epochs=2,
        semi_milestones=(), semi_batch=64, eval_batch=500, log_every=20),
    "smoke": Profile(
        name="smoke", dataset="synthetic", train_size=None, test_size=256, synthetic_size=1024,
        width=0.5, nodes=3, epochs=3, batch_size=64, schedule="linear", warmup_epochs=0.3,
        milestones=(), spaces_bn=(5, 50), spaces_unseen=(5, 50), space_ensemble=3,
        n_archs=6, t_max=8, mc_samples=4, attack_size=64, ood_dataset="synthetic-ood",
        ensemble_datasets=("synthetic",), labelled=200, semi_epochs=2, semi_milestones=(),
        semi_batch=32, eval_batch=256, log_every=4),
}


def get_profile(name: str | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """A profile by name (default: $NSA_PROFILE, else 'tiny'), with overrides applied."""
    name = name or os.environ.get("NSA_PROFILE") or "tiny"
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name].with_overrides(overrides)


def at_paper_scale(profile: Profile) -> bool:
    """Whether `profile` trains and evaluates exactly as the paper does, so that absolute
    numbers (not only orderings) can be compared with the paper's tables."""
    ours, paper = profile.as_dict(), PROFILES["paper"].as_dict()
    return all(ours[k] == paper[k] for k in paper if k not in ("name", "eval_batch", "log_every"))


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """['epochs=4', 'width=0.5'] -> {'epochs': '4', 'width': '0.5'} (typed later by the profile)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KeyError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def coerce(value: Any, current: Any, key: str) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(current, tuple) else value
    if isinstance(current, str):
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        if value.lower() in ("none", "null"):
            return None
        if current and isinstance(current, tuple) and all(isinstance(c, str) for c in current):
            return tuple(v.strip() for v in value.split(",") if v.strip())   # attacks=PGD1-2-1,PGD2-3-1
        raise KeyError(f"--set {key}={value}: not a valid value for {key} (like {current!r})") from None
    if isinstance(current, tuple):
        return tuple(parsed) if isinstance(parsed, (list, tuple)) else (parsed,)
    if isinstance(current, float) and type(parsed) is int:
        return float(parsed)
    # A value of the wrong type (epochs=4.5, lr=[0.1]) would fail deep inside a run instead.
    if current is not None and parsed is not None and type(parsed) is not type(current):
        raise KeyError(f"--set {key}={value}: {key} takes a {type(current).__name__} (like {current!r})")
    return parsed
