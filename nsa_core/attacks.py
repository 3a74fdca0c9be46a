"""White-box L-infinity PGD (Madry et al. 2018) for the adversarial half of paper Table 3.

The attack sees only a function from [0, 1] images to class probabilities. For an ensemble
that function is the average of the members' softmax, so the gradient flows through the
averaged prediction and the whole ensemble is attacked at once (notebook 07).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PGD:
    """An L-infinity PGD adversary; eps and step_size are in [0, 1] pixel units."""
    eps: float
    steps: int
    step_size: float
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.eps < 0 or self.steps < 0 or self.step_size < 0:
            raise ValueError(f"PGD needs eps, steps, step_size >= 0, got {self}")

    @classmethod
    def from_name(cls, name: str) -> PGD:
        """The paper's PGDa-b-c: budget a/255, b steps, step size c/255 ("PGD2-3-1")."""
        m = re.fullmatch(r"PGD(\d+(?:\.\d+)?)-(\d+)-(\d+(?:\.\d+)?)", name.strip())
        if m is None:
            raise ValueError(f"bad attack name {name!r}: expected 'PGDa-b-c' with budget a/255, "
                             f"b steps and step size c/255, e.g. 'PGD2-3-1'")
        a, b, c = m.groups()
        return cls(eps=float(a) / 255, steps=int(b), step_size=float(c) / 255)

    @property
    def name(self) -> str:
        # Round away the float error of x/255*255 so names survive a round trip.
        return f"PGD{round(self.eps * 255, 6):g}-{self.steps}-{round(self.step_size * 255, 6):g}"


PAPER_ATTACKS = ("PGD1-2-1", "PGD2-3-1", "PGD3-4-1")


def pgd_attack(predict_probs: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               y: torch.Tensor, attack: PGD, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial copies of the [0, 1] images `x` [B, 3, H, W] that raise the NLL of the true
    labels `y` under `predict_probs` (images -> probabilities [B, C]).

    Starts uniformly in the eps-ball (drawn from `generator`, which must live on x.device)
    when attack.random_start, not clipped to [0, 1] before the first step, as the authors'
    attack does; then takes `steps` signed-gradient steps, projecting onto the
    eps-ball around x and onto [0, 1] after each. Returns a detached tensor.

    Only the gradient with respect to the input is taken, so parameters' .grad are untouched;
    the models' train/eval state is the caller's and is not changed. predict_probs runs
    `steps` times, so a model with BN in training mode would update its running statistics.
    """
    x, y = x.detach(), y.to(x.device)
    lo, hi = (x - attack.eps).clamp(0, 1), (x + attack.eps).clamp(0, 1)
    x_adv = x.clone()
    if attack.random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + attack.eps * (2 * noise - 1)
    for _ in range(attack.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():  # callers usually evaluate under no_grad
            p_true = predict_probs(x_adv).gather(1, y[:, None])
            # Summed, not averaged: only the gradient's sign is used, and a sum keeps
            # per-example gradients from shrinking with the batch size towards underflow.
            loss = -p_true.clamp_min(1e-12).log().sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + attack.step_size * grad.sign(), lo), hi)
    return x_adv.detach()
