"""One optimisation step, the same for the trainer and the benchmark: the loss of a batch
under the architectures drawn for it, backward, SGD. Plus the optimiser and the schedules.

Supervised (Secs. 3-5.2): cross-entropy of the main head, plus `aux_weight` x that of the
auxiliary head when the network has one.

Semi-supervised (Sec. 5.3), as the authors' script does it: the labelled and the unlabelled
images of a step, each augmented twice independently, go through the network as one batch
per view. View 1 is differentiated; view 2 runs without gradient, under other architectures
(NSA-id) or other dropout masks (the Pi model). Loss = cross-entropy on the labelled outputs
+ weight x consistency, the squared logit differences summed over every image and class and
divided by (classes x images). The labelled-only baseline takes the same steps with weight 0.
"""
from __future__ import annotations

import math
from typing import ContextManager

import torch
import torch.nn.functional as F

from .config import Recipe
from .network import WiredNet


def optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay on every parameter (BN and aggregation
    coefficients included, as the authors do)."""
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                           weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser step `step`, as a fraction of recipe.lr."""
    epoch = step / steps_per_epoch
    warm = recipe.warmup_epochs
    if warm and epoch < warm:
        return (epoch + 1 / steps_per_epoch) / warm
    if recipe.schedule == "linear":
        return max(0.0, 1 - (epoch - warm) / max(recipe.epochs - warm, 1e-9))
    return recipe.gamma ** sum(epoch >= m for m in recipe.milestones)


def rampup(t: float) -> float:
    """The consistency weight's ramp-up (Laine & Aila): exp(-5 (1 - t)^2), t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Sum of squared logit differences over images and classes / (classes x images)."""
    return (logits - other).pow(2).sum() / logits.numel()


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def supervised_step(model: WiredNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    arch: torch.Tensor, aux_weight: float, amp: ContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns the (detached) loss and logits."""
    with amp:
        logits, aux = model(x, arch, with_aux=True)
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        if aux is not None:
            loss = loss + aux_weight * F.cross_entropy(aux.float(), y)
    _update(opt, loss)
    return loss.detach(), logits.detach()


def semi_step(model: WiredNet, opt: torch.optim.Optimizer, view1: torch.Tensor, view2: torch.Tensor,
              y: torch.Tensor, arch1: torch.Tensor, arch2: torch.Tensor, weight: float,
              amp: ContextManager) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step of the consistency method. The first len(y) images of each view are the
    labelled ones. Returns the loss, the labelled logits and the consistency (detached)."""
    with amp:
        logits = model(view1, arch1).float()
        loss = F.cross_entropy(logits[:len(y)], y)
        with torch.no_grad():
            other = model(view2, arch2).float()
        cons = consistency(logits, other)
        loss = loss + weight * cons
    _update(opt, loss)
    return loss.detach(), logits[:len(y)].detach(), cons.detach()
