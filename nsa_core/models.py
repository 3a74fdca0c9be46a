"""Named models (a small registry, as in timm) and the spec that names a trained model.

A `ModelSpec` is everything that determines a training run. Its hash names the model's
folder in the cache, so two notebooks that ask for the same spec share one trained model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, asdict, fields, replace

import numpy as np

from . import space as wspace
from .network import NetConfig, WiredNet
from .profiles import Profile

# kind -> (how architectures are drawn in training, network options)
KINDS: dict[str, tuple[str, dict]] = {
    "nsa":         ("batch",   {}),                                  # Eq. (1): one architecture per batch
    "nsa-i":       ("example", {}),                                  # Eq. (3): one per example
    "nsa-id":      ("example", {"cond_agg": True, "cond_bn": True}),  # Sec. 5
    "nsa-id-agg":  ("example", {"cond_agg": True}),                  # Sec. 4.1: aggregation only
    "wrn":         ("fixed",   {}),                                  # WRN-28-10†: the residual wiring
    "wrn-dropout": ("fixed",   {"dropout": True}),                   # + dropout (MC dropout, Pi model)
    "single":      ("fixed",   {}),                                  # one architecture of the space, alone
}
SEMI = (None, "consistency", "labelled-only")


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    dataset: str = "cifar10"
    space: int = 1                 # S, the size of the training space (1 for fixed networks)
    arch_index: int = 0            # kind "single": which architecture of the space
    space_seed: int = 0
    width: float = 10.0
    nodes: int = 8
    aux: bool = False
    dropout: float = 0.0
    train_size: int | None = None
    test_size: int | None = None
    synthetic_size: int = 2048
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] = (90, 180, 240)
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    cutout: int = 16
    aux_weight: float = 0.1
    semi: str | None = None        # "consistency" (two views per unlabelled image) or "labelled-only"
    labelled: int = 0
    unlabelled: int | None = None  # unlabelled images used (None: every non-labelled image)
    consistency: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise KeyError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.semi not in SEMI:
            raise KeyError(f"unknown semi-supervised mode {self.semi!r}; choose one of {SEMI}")
        if self.sampling == "fixed" and self.kind != "single" and self.space != 1:
            raise ValueError(f"kind {self.kind!r} has a fixed wiring: space must be 1, got {self.space}")
        if self.kind == "single" and not 0 <= self.arch_index < self.space:
            raise ValueError(f"arch_index {self.arch_index} is outside the space of {self.space}")

    @property
    def sampling(self) -> str:
        return KINDS[self.kind][0]

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return f"{self.kind}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        for f in fields(cls):
            if isinstance(f.default, tuple) and f.name in d:
                d[f.name] = tuple(d[f.name])
        return cls(**d)

    @classmethod
    def from_profile(cls, profile: Profile, kind: str, **overrides) -> "ModelSpec":
        """The spec of a model of `kind` trained as `profile` says; overrides win."""
        p = profile
        values = dict(
            kind=kind, dataset=p.dataset, width=p.width, nodes=p.nodes, train_size=p.train_size,
            test_size=p.test_size, synthetic_size=p.synthetic_size, epochs=p.epochs,
            batch_size=p.batch_size, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
            schedule=p.schedule, milestones=p.milestones, gamma=p.gamma,
            warmup_epochs=p.warmup_epochs, cutout=p.cutout, aux_weight=p.aux_weight,
            dropout=p.dropout if KINDS[kind][1].get("dropout") else 0.0)
        if KINDS[kind][0] == "fixed" and kind != "single":
            values["space"] = 1
        values.update(overrides)
        if values.get("semi"):
            values.update(labelled=p.labelled, unlabelled=p.unlabelled, epochs=p.semi_epochs, milestones=p.semi_milestones,
                          batch_size=p.semi_batch,
                          consistency=p.consistency if values["semi"] == "consistency" else 0.0)
            values.update({k: v for k, v in overrides.items() if k in ("epochs", "milestones", "batch_size")})
        return cls(**values)

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)


def architectures(spec: ModelSpec) -> np.ndarray:
    """The wirings the model is built on: [S, 3, N+1, N+1]."""
    if spec.kind in ("wrn", "wrn-dropout"):
        return wspace.fixed_architecture(wspace.residual_wiring(spec.nodes))[None]
    archs = wspace.training_space(spec.space, spec.nodes, spec.space_seed)
    return archs[spec.arch_index: spec.arch_index + 1] if spec.kind == "single" else archs


def build(spec: ModelSpec, classes: int) -> WiredNet:
    """A freshly initialised network for `spec` (seed the RNG first for a reproducible init)."""
    opts = KINDS[spec.kind][1]
    cfg = NetConfig(width=spec.width, nodes=spec.nodes, classes=classes,
                    cond_agg=opts.get("cond_agg", False), cond_bn=opts.get("cond_bn", False),
                    dropout=spec.dropout, aux=spec.aux)
    return WiredNet(architectures(spec), cfg)
