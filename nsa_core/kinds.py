"""The method in one place: the paper's models as a small registry (as in timm), each with
its sampling rule and its network options, and the rule itself (`draw_archs`: which
architecture each example uses).

- NSA:    one architecture of the training space per batch, Eq. (1).
- NSA-i:  one architecture per example, drawn i.i.d., Eq. (3).
- NSA-id: NSA-i plus per-architecture aggregation coefficients and BN affine parameters
          (Sec. 4.1 uses the aggregation part alone: "nsa-id-agg").
- the fixed wirings: WRN-28-10† (the residual wiring), its dropout variant (MC dropout and
  the Pi model), and one architecture of the space trained alone ("single"). The authors
  run every fixed-wiring model with learnable aggregation coefficients (S = 1), and the
  dagger of WRN-28-10† marks exactly that; so do we.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Kind:
    sampling: str            # "batch" (Eq. 1), "example" (Eq. 3) or "fixed"
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
    "wrn":         Kind("fixed", cond_agg=True, label="WRN-28-10†"),
    "wrn-dropout": Kind("fixed", cond_agg=True, dropout=True, label="WRN-28-10† + dropout"),
    "single":      Kind("fixed", cond_agg=True, label="one architecture alone"),
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
