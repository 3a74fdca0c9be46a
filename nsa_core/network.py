"""The wired network (paper Sec. 2 "Network details").

One class covers every model of the paper:
- NSA / NSA-i: a training space of S wirings per stage, shared weights;
- NSA-id: the same plus per-architecture aggregation coefficients and/or BN affine parameters;
- WRN-28-10† (and its MC-dropout variant): a space of one architecture, the residual wiring.

The forward takes one architecture index per example, so NSA (the whole batch shares one
index) and NSA-i (i.i.d. indices) are the same code. A batch that mixes architectures runs
in one pass: every node aggregates its inputs with per-example coefficients, so there is no
loop over examples or architectures, only over the nodes of the DAG. `Stage.forward` is the
definition; `fast_stage` computes the same faster (tested equal). Which one a network runs is
fixed when it is built (`WiredNet(..., fast=...)`; runtime.Settings.fast_stage chooses).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fast_stage
from . import space as wspace
from .fast_stage import StageWiring


class CondBN(nn.BatchNorm2d):
    """BatchNorm with running statistics shared by all architectures. With `archs` > 0 the
    affine weight and bias are per architecture and picked per example (like class-
    conditional BN); otherwise it is a plain affine BatchNorm2d. Below, the definition: BN,
    then each example's affine; `fast_stage.cond_batch_norm` computes the same keeping one
    activation instead of two, in a network built with fast=True."""

    def __init__(self, channels: int, archs: int = 0, fast: bool = False):
        super().__init__(channels, affine=archs == 0)
        self.archs, self.fast = archs, fast
        if archs:
            self.cond_weight = nn.Parameter(torch.ones(archs, channels))
            self.cond_bias = nn.Parameter(torch.zeros(archs, channels))

    def forward(self, x: torch.Tensor, arch: torch.Tensor | None = None) -> torch.Tensor:
        if not self.archs:
            return super().forward(x)
        weight, bias = self.example_affine(arch, len(x))
        if self.fast:
            return fast_stage.cond_batch_norm(self, x, weight, bias)
        return torch.addcmul(bias[:, :, None, None], super().forward(x), weight[:, :, None, None])

    def example_affine(self, arch: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's affine weight and bias [batch, C]: its architecture's, or the shared ones."""
        if self.archs:
            return self.cond_weight[arch], self.cond_bias[arch]
        return self.weight.expand(batch, -1), self.bias.expand(batch, -1)


class Node(nn.Module):
    """The paper's operation node, ReLU -> 3x3 conv -> (dropout) -> BN. The stage applies the
    ReLU, so that the fast stage can root a node's autograd graph at the ReLU's output, which
    the convolution saves anyway (no extra activation kept)."""

    def __init__(self, channels: int, archs: int, dropout: float, fast: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn = CondBN(channels, archs, fast)

    def forward(self, relu_x: torch.Tensor, arch: torch.Tensor | None) -> torch.Tensor:
        return self.bn(self.bn_input(relu_x), arch)

    def bn_input(self, relu_x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(relu_x))


class Stage(nn.Module):
    """N nodes wired by a DAG whose wiring and coefficients may differ per example."""

    def __init__(self, channels: int, nodes: int, archs: int, dropout: float, fast: bool):
        super().__init__()
        self.fast = fast
        self.nodes = nn.ModuleList(Node(channels, archs, dropout, fast) for _ in range(nodes))

    def forward(self, x: torch.Tensor, gather: StageWiring, arch: torch.Tensor | None) -> torch.Tensor:
        """x: [B, C, H, W]; gather: the stage's per-example wirings and coefficients (row =
        consumer, the last row the stage output); arch: per-example indices for conditional BN.

        Slot 0 holds the stage input, slot k node k-1's output. Node j's input is, for each
        example, the sum over slots i of coef[b, j, i] x slot i; a slot no example of the
        batch reads (it would only add zeros) is skipped. The stage output is the last row's sum."""
        if self.fast:
            return fast_stage.stage_forward(self.nodes, x, gather, arch)
        coef = gather.coef.to(x.dtype)
        read = gather.wiring.any(0)    # read[j, i]: some example's row j reads slot i
        slots = [x]
        for j in range(len(self.nodes) + 1):
            terms = [coef[:, j, i, None, None, None] * slots[i] for i in np.flatnonzero(read[j])]
            a = sum(terms[1:], start=terms[0])
            if j == len(self.nodes):
                return a               # no ReLU: the transition and the head apply their own
            slots.append(self.nodes[j](F.relu(a), arch))


class Transition(nn.Module):
    """ReLU -> 1x1 conv (width doubles) -> 2x2 average pool -> BN, between stages."""

    def __init__(self, cin: int, cout: int, archs: int, fast: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = CondBN(cout, archs, fast)

    def forward(self, x: torch.Tensor, arch: torch.Tensor | None) -> torch.Tensor:
        return self.bn(F.avg_pool2d(self.conv(F.relu(x)), 2), arch)


class AuxHead(nn.Module):
    """DARTS-style auxiliary classifier on 8x8 maps (training only, weight 0.1 in the loss)."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, stride=3),
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.fc = nn.Linear(768, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@dataclass(frozen=True)
class NetConfig:
    width: float = 10.0           # widening factor w: stage widths 16w, 32w, 64w
    nodes: int = 8                # operation nodes per stage
    classes: int = 10
    cond_agg: bool = False        # NSA-id: per-architecture aggregation coefficients
    cond_bn: bool = False         # NSA-id: per-architecture BN affine parameters
    dropout: float = 0.0          # after every node conv (MC dropout baseline: 0.2)
    aux: bool = False             # auxiliary head (Sec. 5 models and baselines)


class WiredNet(nn.Module):
    """A network whose 3 stages are wired by an architecture from `space`
    ([S, 3, N+1, N+1] 0/1 wirings) or by explicit wirings passed to forward. `fast`: its
    stages and per-architecture BN run fast_stage's path (the same numbers)."""

    def __init__(self, space: np.ndarray, cfg: NetConfig = NetConfig(), fast: bool = False):
        super().__init__()
        space = wspace.validate_architecture(space, cfg.nodes)
        space = space.reshape(-1, *space.shape[-3:])    # [S, 3, N+1, N+1]
        self.cfg = cfg
        S = len(space)
        archs = S if cfg.cond_bn else 0
        c = [round(16 * cfg.width), round(32 * cfg.width), round(64 * cfg.width)]
        self.register_buffer("space", torch.from_numpy(space.astype(np.float32)))
        self._space_np = space.astype(bool)   # host copy: the gathers are built without a device sync
        self.register_buffer("norm_space", torch.from_numpy(wspace.normalise(space)), persistent=False)
        self.agg = nn.Parameter(torch.ones(S, 3, cfg.nodes + 1, cfg.nodes + 1)) if cfg.cond_agg else None
        self.stem = nn.Conv2d(3, c[0], 3, padding=1, bias=False)
        self.stem_bn = CondBN(c[0], archs, fast)
        self.stages = nn.ModuleList(Stage(ci, cfg.nodes, archs, cfg.dropout, fast) for ci in c)
        self.transitions = nn.ModuleList(Transition(c[k], c[k + 1], archs, fast) for k in range(2))
        self.fc = nn.Linear(c[2], cfg.classes)
        self.aux = AuxHead(c[2], cfg.classes) if cfg.aux else None
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def use_fast(self, fast: bool) -> "WiredNet":
        """Run fast_stage's path (True) or the readable definition (False) from now on, in place;
        the weights and results are the same (tests compare the two this way)."""
        for m in self.modules():
            if isinstance(m, (Stage, CondBN)):
                m.fast = fast
        return self

    @property
    def num_archs(self) -> int:
        return self.space.shape[0]

    @property
    def conditional(self) -> bool:
        return self.cfg.cond_agg or self.cfg.cond_bn

    def forward(self, x: torch.Tensor, arch: torch.Tensor | int | None = None,
                wirings: torch.Tensor | np.ndarray | None = None,
                with_aux: bool = False):
        """Logits for images x [B, 3, H, W].

        arch: architecture indices into the training space, shape [B] (or an int for the
        whole batch); None means index 0 (the only one of a fixed network).
        wirings: explicit 0/1 wirings [B, 3, N+1, N+1] or [3, N+1, N+1], for architectures
        outside the training space. Not allowed with per-architecture weights (NSA-id),
        which exist only for seen architectures (paper footnote 4).
        with_aux: also return the auxiliary head's logits (None without a head)."""
        B = x.shape[0]
        if wirings is not None:
            if arch is not None:
                raise ValueError("pass either arch indices or explicit wirings, not both")
            if self.conditional:
                raise ValueError("explicit wirings need an unconditional model: NSA-id's "
                                 "per-architecture weights exist only for the S seen architectures")
            w = wspace.validate_architecture(np.asarray(torch.as_tensor(wirings).cpu()), self.cfg.nodes)
            if w.ndim == 4 and len(w) != B:
                raise ValueError(f"wirings: got {len(w)} architectures for a batch of {B}")
            wiring = np.broadcast_to(w.astype(bool), (B, *w.shape[-3:]))
            coef = torch.from_numpy(wspace.normalise(w)).to(x.device, x.dtype).expand(B, *w.shape[-3:])
            arch_t = None
        else:
            arch_t, host = self._resolve_arch(arch, B, x.device)
            wiring = self._space_np[host]
            coef = self.norm_space[arch_t]
            if self.agg is not None:
                coef = coef * torch.sigmoid(self.agg[arch_t])
            coef = coef.to(x.dtype)
        bn_arch = arch_t if self.cfg.cond_bn else None
        h = self.stem_bn(self.stem(x), bn_arch)
        aux = None
        for s, stage in enumerate(self.stages):
            h = stage(h, StageWiring(wiring[:, s], coef[:, s], means=self.agg is None), bn_arch)
            if s < 2:
                h = self.transitions[s](h, bn_arch)
            if s == 1 and with_aux and self.aux is not None:
                aux = self.aux(h)
        logits = self.fc(F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1))
        return (logits, aux) if with_aux else logits

    def _resolve_arch(self, arch, B: int, device):
        if arch is None or isinstance(arch, (int, np.integer)):
            arch = torch.full((B,), int(arch or 0), dtype=torch.long)    # None: index 0
        arch = torch.as_tensor(arch)
        if arch.shape != (B,):
            raise ValueError(f"arch: expected one index per example, shape ({B},), got {tuple(arch.shape)}")
        host = arch.cpu().numpy()  # indices come from the host sampler; on CUDA this copy is tiny
        if host.min() < 0 or host.max() >= self.num_archs:
            raise ValueError(f"arch: indices must lie in [0, {self.num_archs}), got {host.min()}..{host.max()}")
        return arch.to(device, non_blocking=True), host


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

