"""The wired network (paper Sec. 2 "Network details", SPEC sections 2-3).

One class covers every model of the paper:
- NSA / NSA-i: a training space of S wirings per stage, shared weights;
- NSA-id: the same plus per-architecture aggregation coefficients and/or BN affine parameters;
- WRN-28-10† (and its MC-dropout variant): a space of one architecture, the residual wiring.

The forward takes one architecture index per example, so NSA (the whole batch shares one
index) and NSA-i (i.i.d. indices) are the same code. A batch that mixes architectures runs
in one pass: every node aggregates its inputs with per-example coefficients, so there is no
loop over examples or architectures, only over the nodes of the DAG.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import space as wspace


class CondBN(nn.BatchNorm2d):
    """BatchNorm with running statistics shared by all architectures. With `archs` > 0 the
    affine weight and bias are per architecture and picked per example (like class-
    conditional BN); otherwise it is a plain affine BatchNorm2d."""

    def __init__(self, channels: int, archs: int = 0):
        super().__init__(channels, affine=archs == 0)
        self.archs = archs
        if archs:
            self.cond_weight = nn.Parameter(torch.ones(archs, channels))
            self.cond_bias = nn.Parameter(torch.zeros(archs, channels))

    def forward(self, x: torch.Tensor, arch: torch.Tensor | None = None) -> torch.Tensor:
        x = super().forward(x)
        if not self.archs:
            return x
        return torch.addcmul(self.cond_bias[arch][:, :, None, None], x,
                             self.cond_weight[arch][:, :, None, None])


class Node(nn.Module):
    """ReLU -> 3x3 conv -> (dropout) -> BN, the paper's operation node."""

    def __init__(self, channels: int, archs: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn = CondBN(channels, archs)

    def forward(self, x: torch.Tensor, arch: torch.Tensor | None) -> torch.Tensor:
        return self.bn(self.drop(self.conv(F.relu(x))), arch)


class Stage(nn.Module):
    def __init__(self, channels: int, nodes: int, archs: int, dropout: float):
        super().__init__()
        self.nodes = nn.ModuleList(Node(channels, archs, dropout) for _ in range(nodes))

    def forward(self, x: torch.Tensor, coef: torch.Tensor, active: np.ndarray,
                arch: torch.Tensor | None, unit: bool = False) -> torch.Tensor:
        """coef: aggregation coefficients, [N+1, N+1] when the batch shares one architecture
        or [B, N+1, N+1] per example; active: which (row, column) entries are non-zero for
        some example, so inputs nobody reads cost nothing; unit: a row with a single active
        entry has coefficient exactly 1 (plain mean aggregation), so it needs no multiply.

        At small widths the aggregation is memory-bound, so it costs the passes over
        [B, C, H, W] tensors it makes: each row is one multiply, then in-place addcmul_
        into that fresh tensor (an out-of-place chain allocates and writes a new tensor per
        term, and measured 1.4x slower forward and backward)."""
        if coef.dim() == 3:  # [N+1, N+1, B, 1, 1, 1]: c[i, j] broadcasts over an example's maps
            coef = coef.permute(1, 2, 0)[..., None, None, None]
        outs = [x]
        for i in range(len(self.nodes) + 1):
            cols = np.flatnonzero(active[i, : i + 1])
            if unit and len(cols) == 1:
                acc = outs[cols[0]]
            else:
                acc = outs[cols[0]] * coef[i, cols[0]]
                for j in cols[1:]:
                    acc.addcmul_(outs[j], coef[i, j])
            if i == len(self.nodes):
                return acc
            outs.append(self.nodes[i](acc, arch))


class Transition(nn.Module):
    """ReLU -> 1x1 conv (width doubles) -> 2x2 average pool -> BN, between stages."""

    def __init__(self, cin: int, cout: int, archs: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = CondBN(cout, archs)

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
    ([S, 3, N+1, N+1] 0/1 wirings) or by explicit wirings passed to forward."""

    def __init__(self, space: np.ndarray, cfg: NetConfig = NetConfig()):
        super().__init__()
        space = wspace.validate_architecture(space, cfg.nodes)
        if space.ndim == 3:
            space = space[None]
        self.cfg = cfg
        S = len(space)
        archs = S if cfg.cond_bn else 0
        c = [round(16 * cfg.width), round(32 * cfg.width), round(64 * cfg.width)]
        self.register_buffer("space", torch.from_numpy(space.astype(np.float32)), persistent=True)
        self._space_np = space.astype(bool)   # host copy: which inputs are read, without a device sync
        self.register_buffer("norm_space", torch.from_numpy(wspace.normalise(space)), persistent=False)
        self.agg = nn.Parameter(torch.ones(S, 3, cfg.nodes + 1, cfg.nodes + 1)) if cfg.cond_agg else None
        self.stem = nn.Conv2d(3, c[0], 3, padding=1, bias=False)
        self.stem_bn = CondBN(c[0], archs)
        self.stages = nn.ModuleList(Stage(ci, cfg.nodes, archs, cfg.dropout) for ci in c)
        self.transitions = nn.ModuleList(Transition(c[k], c[k + 1], archs) for k in range(2))
        self.fc = nn.Linear(c[2], cfg.classes)
        self.aux = AuxHead(c[2], cfg.classes) if cfg.aux else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

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
            shared = w.ndim == 3
            if not shared and len(w) != B:
                raise ValueError(f"wirings: got {len(w)} architectures for a batch of {B}")
            active = w.astype(bool) if shared else w.astype(bool).any(0)
            coef = torch.from_numpy(wspace.normalise(w)).to(x.device, x.dtype)
            arch_t = None
        else:
            arch_t, shared, active = self._resolve_arch(arch, B, x.device)
            coef = self.norm_space[arch_t[0]] if shared else self.norm_space[arch_t]
            if self.agg is not None:
                coef = coef * torch.sigmoid(self.agg[arch_t[0]] if shared else self.agg[arch_t])
            coef = coef.to(x.dtype)
        unit = self.agg is None  # plain means: a lone input's coefficient is exactly 1
        bn_arch = arch_t if self.cfg.cond_bn else None
        h = self.stem_bn(self.stem(x), bn_arch)
        aux = None
        for s, stage in enumerate(self.stages):
            h = stage(h, coef[..., s, :, :], active[s], bn_arch, unit)
            if s < 2:
                h = self.transitions[s](h, bn_arch)
            if s == 1 and with_aux and self.aux is not None:
                aux = self.aux(h)
        logits = self.fc(F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1))
        return (logits, aux) if with_aux else logits

    def _resolve_arch(self, arch, B: int, device):
        if arch is None:
            arch = 0
        if isinstance(arch, (int, np.integer)):
            arch = torch.full((B,), int(arch), dtype=torch.long)
        arch = torch.as_tensor(arch)
        if arch.shape != (B,):
            raise ValueError(f"arch: expected one index per example, shape ({B},), got {tuple(arch.shape)}")
        host = arch.cpu().numpy()  # indices come from the host sampler; on CUDA this copy is tiny
        if host.min() < 0 or host.max() >= self.num_archs:
            raise ValueError(f"arch: indices must lie in [0, {self.num_archs}), got {host.min()}..{host.max()}")
        shared = bool((host == host[0]).all())
        active = self._space_np[host[0]] if shared else self._space_np[np.unique(host)].any(0)
        return arch.to(device, non_blocking=True), shared, active


# ---------------------------------------------------------------- evaluation switches

_BN_TYPES = (nn.BatchNorm2d,)


def _training_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    # Every module's own flag: model.train(flag) would overwrite submodules deliberately
    # left in another mode (a frozen BN, or an enclosing bn_mode / mc_dropout).
    return [(m, m.training) for m in model.modules()]


def _restore_training_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    for m, tr in flags:
        m.training = tr


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str):
    """Evaluate with BN in 'test' mode (running statistics) or 'train' mode (each batch's
    own statistics). Either way no running statistic, counter or parameter changes: in
    'train' mode BN layers stop tracking, so PyTorch normalises by the batch and writes
    nothing. Dropout follows model.eval() (see `mc_dropout`)."""
    if mode not in ("train", "test"):
        raise ValueError(f"bn mode must be 'train' or 'test', got {mode!r}")
    flags = _training_flags(model)
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    saved = [m.track_running_stats for m in bns]
    model.eval()
    try:
        if mode == "train":
            for m in bns:
                m.train()
                m.track_running_stats = False
        yield model
    finally:
        for m, track in zip(bns, saved):
            m.track_running_stats = track
        _restore_training_flags(flags)


@contextlib.contextmanager
def mc_dropout(model: nn.Module):
    """Dropout on, everything else (BN included) in test mode: MC dropout's sampling."""
    flags = _training_flags(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    try:
        yield model
    finally:
        _restore_training_flags(flags)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["NetConfig", "WiredNet", "CondBN", "bn_mode", "mc_dropout", "count_params", "asdict"]
