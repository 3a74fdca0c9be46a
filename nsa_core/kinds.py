"""The method in one place: the paper's models as a small registry (as in timm), each with
its sampling rule, its wiring and its network options, and what follows from them: which
architecture each example uses (`draw_archs`), the wirings a model is built on
(`architectures`) and a freshly initialised network (`build`).

- NSA:    one architecture of the training space per batch, Eq. (1).
- NSA-i:  one architecture per example, drawn i.i.d., Eq. (3).
- NSA-id: NSA-i plus per-architecture aggregation coefficients and BN affine parameters
          (Sec. 4.1 uses the aggregation part alone: "nsa-id-agg").
- the fixed wirings: WRN-28-10† (the residual wiring), its dropout variant (MC dropout and
  the Pi model), and one architecture of the space trained alone ("single"). The authors
  run every fixed-wiring model with learnable aggregation coefficients (S = 1), and the
  dagger of WRN-28-10† marks exactly that; so do we. "residual" is the same wiring without
  them: an ordinary residual network, the benchmark's yardstick.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import space as wspace
from .network import NetConfig, WiredNet

if TYPE_CHECKING:
    from .config import ModelSpec

# NSA draws one architecture per batch at test time too: the authors' test batch.
TEST_BATCH = 128


@dataclass(frozen=True)
class Kind:
    sampling: str            # "batch" (Eq. 1), "example" (Eq. 3) or "fixed"
    wiring: str = "space"    # "space": S architectures of the training space; "residual"; "one": arch_index alone
    cond_agg: bool = False   # per-architecture aggregation coefficients
    cond_bn: bool = False    # per-architecture BN affine parameters
    dropout: bool = False    # dropout after every node conv
    label: str = ""

    @property
    def fixed(self) -> bool:
        return self.sampling == "fixed"


KINDS: dict[str, Kind] = {
    "nsa":         Kind("batch", label="NSA"),
    "nsa-i":       Kind("example", label="NSA-i"),
    "nsa-id":      Kind("example", cond_agg=True, cond_bn=True, label="NSA-id"),
    "nsa-id-agg":  Kind("example", cond_agg=True, label="NSA-id (aggregation only)"),
    "wrn":         Kind("fixed", "residual", cond_agg=True, label="WRN-28-10†"),
    "wrn-dropout": Kind("fixed", "residual", cond_agg=True, dropout=True, label="WRN-28-10† + dropout"),
    "single":      Kind("fixed", "one", cond_agg=True, label="one architecture alone"),
    "residual":    Kind("fixed", "residual", label="residual net"),
}


def draw_archs(sampling: str, space: int, n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Architecture indices for n examples taken in batches of `batch`: one per batch for
    NSA ('batch'), one per example for NSA-i/-id ('example'), index 0 for a fixed wiring."""
    if sampling == "example":
        return torch.randint(space, (n,), generator=generator)
    if sampling == "batch":
        per_batch = torch.randint(space, (math.ceil(n / batch),), generator=generator)
        return per_batch.repeat_interleave(batch)[:n]
    return torch.zeros(n, dtype=torch.long)


def architectures(spec: ModelSpec) -> np.ndarray:
    """The wirings the model of `spec` is built on: [S, 3, N+1, N+1]."""
    nodes, wiring = spec.recipe.nodes, KINDS[spec.kind].wiring
    if wiring == "residual":
        return wspace.fixed_architecture(wspace.residual_wiring(nodes))[None]
    archs = wspace.training_space(spec.space, nodes, spec.space_seed)
    return archs[spec.arch_index: spec.arch_index + 1] if wiring == "one" else archs


def build(spec: ModelSpec, classes: int, fast: bool = False) -> WiredNet:
    """A freshly initialised network for `spec` (seed the RNG first for a reproducible init);
    `fast`: it runs fast_stage's path (runtime.Settings.fast_stage chooses)."""
    kind, r = KINDS[spec.kind], spec.recipe
    aux = r.aux_weight > 0 and spec.semi is None   # the semi-supervised runs have no auxiliary head
    config = NetConfig(width=r.width, nodes=r.nodes, classes=classes, cond_agg=kind.cond_agg, cond_bn=kind.cond_bn,
                       dropout=r.dropout if kind.dropout else 0.0, aux=aux)
    return WiredNet(architectures(spec), config, fast=fast)
