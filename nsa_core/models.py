"""A model of a spec: the wirings it is built on (`architectures`) and a freshly initialised
network (`build`), with the options its kind (kinds.py) gives it."""
from __future__ import annotations

import numpy as np

from . import space as wspace
from .config import ModelSpec
from .kinds import KINDS
from .network import NetConfig, WiredNet


def architectures(spec: ModelSpec) -> np.ndarray:
    """The wirings the model is built on: [S, 3, N+1, N+1]."""
    nodes = spec.recipe.nodes
    if spec.kind in ("wrn", "wrn-dropout"):
        return wspace.fixed_architecture(wspace.residual_wiring(nodes))[None]
    archs = wspace.training_space(spec.space, nodes, spec.space_seed)
    return archs[spec.arch_index: spec.arch_index + 1] if spec.kind == "single" else archs


def net_config(spec: ModelSpec, classes: int) -> NetConfig:
    kind, r = KINDS[spec.kind], spec.recipe
    aux = r.aux_weight > 0 and spec.semi is None   # the semi-supervised runs have no auxiliary head
    return NetConfig(width=r.width, nodes=r.nodes, classes=classes, cond_agg=kind.cond_agg,
                     cond_bn=kind.cond_bn, dropout=r.dropout if kind.dropout else 0.0, aux=aux)


def build(spec: ModelSpec, classes: int) -> WiredNet:
    """A freshly initialised network for `spec` (seed the RNG first for a reproducible init)."""
    return WiredNet(architectures(spec), net_config(spec, classes))
