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
    """The paper's operation node, ReLU -> 3x3 conv -> (dropout) -> BN. The ReLU is applied
    by the stage, in place on the fresh aggregate, so that a node's autograd graph starts at
    the ReLU's output, which the convolution saves anyway (no extra activation kept)."""

    def __init__(self, channels: int, archs: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn = CondBN(channels, archs)

    def forward(self, relu_x: torch.Tensor, arch: torch.Tensor | None) -> torch.Tensor:
        return self.bn(self.drop(self.conv(relu_x)), arch)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] (any layout) as a [B, H, W, C] view or copy target."""
    return t.permute(0, 2, 3, 1)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """A [B, H, W, C] buffer slot seen as a channels_last [B, C, H, W] tensor (no copy)."""
    return t.permute(0, 3, 1, 2)


class _Gather:
    """Which buffer rows each example's aggregate reads, as `F.embedding_bag` takes them.

    A stage keeps its outputs in a buffer of N+1 slots of B examples, flattened to
    [(N+1)·B, D] rows; row k·B + b is slot k of example b. Built on the host from the 0/1
    wirings [B, N+1, N+1] (row = consumer): for consumer j, `index(j)` lists, example by
    example, the rows i·B + b of the inputs example b's own wiring reads, `offsets(j)`
    where each example's list starts, and `values(j)` the coefficients coef[b, j, i].
    `transposed()` is the same for the backward: slot k's gradient gathers the aggregate
    gradients of the rows that read it."""

    def __init__(self, wiring: np.ndarray, coef: torch.Tensor, means: bool, transpose: bool = False):
        B = len(wiring)
        w = wiring.transpose(2, 0, 1) if transpose else wiring.transpose(1, 0, 2)  # [out, b, in]
        out, b, inp = np.nonzero(w)
        counts = w.sum(-1)                                                     # [out, B]
        # unit[j]: every example's aggregate j is its slot j alone with coefficient 1 (plain
        # means, a lone input), so the slot can be read as it is, without a gather pass.
        # Transposed, slot k's lone reader is row k, whose coefficient is 1 if k is unit too.
        rows = wiring.sum(-1).T if transpose else counts
        self.unit = means & (counts == 1).all(1) & (rows == 1).all(1)
        # direct[k]: slot k is read by unit row k alone, so it need not be copied into the
        # buffer at all (the residual wiring's odd slots): row k takes the tensor as it is.
        self.direct = self.unit & (wiring.sum(1) == 1).all(0) if not transpose else None
        offsets = np.concatenate([np.zeros((len(w), 1), np.int64), np.cumsum(counts, 1)[:, :-1]], 1)
        self.starts = np.concatenate([[0], np.cumsum(counts.sum(1))])
        # one host-to-device copy for all five index lists (pinned on CUDA: no stream sync)
        packed = torch.from_numpy(np.concatenate([inp * B + b, offsets.ravel(), b, out, inp]))
        if coef.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(coef.device, non_blocking=True)
        nnz = len(b)
        self._index, self._offsets, bt, ot, it = packed.split([nnz, offsets.size, nnz, nnz, nnz])
        self._offsets = self._offsets.view(offsets.shape)
        self.values_all = coef[bt, it, ot] if transpose else coef[bt, ot, it]
        self._bag = bt
        self.wiring, self.coef, self.means = wiring, coef, means

    def index(self, j: int) -> torch.Tensor:
        return self._index[self.starts[j]:self.starts[j + 1]]

    def offsets(self, j: int) -> torch.Tensor:
        return self._offsets[j]

    def values(self, j: int) -> torch.Tensor:
        return self.values_all[self.starts[j]:self.starts[j + 1]]

    def bag(self, j: int) -> torch.Tensor:
        return self._bag[self.starts[j]:self.starts[j + 1]]

    def transposed(self) -> "_Gather":
        return _Gather(self.wiring, self.coef, self.means, transpose=True)


def _relu_input(buf: torch.Tensor, gather: _Gather, j: int, held: torch.Tensor | None) -> torch.Tensor:
    """ReLU of node j's aggregate, a fresh tensor: the buffer slots stay as they are. `held`
    is slot j's tensor when it was not copied into the buffer (gather.direct[j])."""
    if gather.direct[j]:
        return F.relu(held)
    if gather.unit[j]:
        return F.relu(_nchw(buf[j]))
    return F.relu_(_aggregate(buf, gather, j))


def _aggregate(buf: torch.Tensor, gather: _Gather, j: int) -> torch.Tensor:
    """Row j's aggregate of buffer `buf` [N+1, B, H, W, C]: each example's coefficient-weighted
    sum of the rows its own wiring reads, in one fused gather-multiply-add; [B, C, H, W],
    channels_last."""
    rows = buf.flatten(0, 1).flatten(1)    # [(N+1)·B, D], a view
    a = F.embedding_bag(gather.index(j), rows, gather.offsets(j), mode="sum",
                        per_sample_weights=gather.values(j).to(buf.dtype))
    return _nchw(a.view(buf.shape[1:]))


class Stage(nn.Module):
    """N nodes wired by a DAG whose wiring and coefficients may differ per example.

    The stage's outputs live in one buffer of N+1 slots [N+1, B, H, W, C] (slot 0 the
    stage input, slot k node k-1's output). Node j's aggregate reads, for each example, only
    the slots that example's own wiring connects, through `F.embedding_bag` (one fused
    gather-multiply-add over the rows): a batch of 128 different architectures costs what a
    batch of one costs, about 2.2 inputs per node for ER-0.3 wirings, where a dense
    per-input multiply-add would read every input some example in the batch uses, i.e. all
    of them (that made NSA-i 14 % slower than a fixed network). The backward gathers the
    other way round; see `_WiredStage`."""

    def __init__(self, channels: int, nodes: int, archs: int, dropout: float):
        super().__init__()
        self.nodes = nn.ModuleList(Node(channels, archs, dropout) for _ in range(nodes))

    def forward(self, x: torch.Tensor, gather: _Gather, arch: torch.Tensor | None) -> torch.Tensor:
        """x: [B, C, H, W]; gather: the stage's per-example wirings and coefficients (row =
        consumer, the last row the stage output); arch: per-example indices for conditional BN."""
        params = [p for node in self.nodes for p in node.parameters()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, gather.values_all, *params)):
            return _WiredStage.apply(x, gather.values_all, gather, self, arch, *params)
        buf = _buffer(x, gather)
        held = x
        for j, node in enumerate(self.nodes):
            held = _store(buf, gather, j + 1, node(_relu_input(buf, gather, j, held), arch))
        return _output(buf, gather, held)


def _buffer(x: torch.Tensor, gather: _Gather) -> torch.Tensor:
    B, C, H, W = x.shape
    buf = x.new_empty(len(gather.unit), B, H, W, C)
    _store(buf, gather, 0, x)
    return buf


def _store(buf: torch.Tensor, gather: _Gather, k: int, y: torch.Tensor) -> torch.Tensor:
    """Put slot k's tensor in the buffer unless only its own unit row reads it; returns it."""
    if not gather.direct[k]:
        buf[k].copy_(_nhwc(y))
    return y


def _output(buf: torch.Tensor, gather: _Gather, held: torch.Tensor) -> torch.Tensor:
    n = len(buf) - 1
    if gather.direct[n]:     # the last node's output alone, e.g. the plain chain
        return held
    return _aggregate(buf, gather, n)


class _WiredStage(torch.autograd.Function):
    """A stage's forward and backward with the aggregation done by hand.

    Autograd would record every read of the shared buffer as a slice of it and give each
    reader a gradient the size of the whole buffer. Instead the forward runs each node in
    its own small graph, rooted at a leaf that holds the ReLU of its aggregate, and keeps
    only the graph's output edge (the output's values live in the buffer). Backward walks
    the nodes in reverse: slot k's gradient gathers the gradients of the aggregates that
    read it (the transposed wiring) and goes through node k-1's graph, which gives the
    gradient of that node's aggregate and of its parameters. The parameters are inputs of
    this function, so autograd treats them as usual: loss.backward() accumulates their
    .grad, torch.autograd.grad(loss, x) leaves them alone, and a parameter that does not
    require grad is not differentiated at all."""

    @staticmethod
    def forward(ctx, x, values, gather, stage, arch, *params):
        buf = _buffer(x, gather)
        held = x
        leaves, edges = [], []
        for j, node in enumerate(stage.nodes):
            r = _relu_input(buf, gather, j, held).requires_grad_()
            with torch.enable_grad():
                y = node(r, arch)
            held = _store(buf, gather, j + 1, y.detach())
            leaves.append(r)
            edges.append(torch.autograd.graph.get_gradient_edge(y))
        out = _output(buf, gather, held)
        ctx.leaves, ctx.edges, ctx.gather, ctx.shape, ctx.params = leaves, edges, gather, buf.shape, params
        ends = np.cumsum([len(list(node.parameters())) for node in stage.nodes])
        ctx.owned = [range(end - n, end) for end, n in zip(ends, np.diff(ends, prepend=0))]  # node j's params
        # the coefficients' gradient reads the outputs again (NSA-id)
        ctx.save_for_backward(buf if ctx.needs_input_grad[1] else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (buf,) = ctx.saved_tensors
        fwd, n1 = ctx.gather, len(ctx.leaves) + 1
        bwd = fwd.transposed()
        g = grad_out.new_empty(ctx.shape)          # g[j]: gradient of row j's aggregate
        g[n1 - 1].copy_(_nhwc(grad_out))
        gvals = [] if buf is not None else None
        gparams: list[torch.Tensor | None] = [None] * len(ctx.params)
        for k in range(n1 - 1, -1, -1):
            if gvals is not None:   # d loss / d coef[b, k, i] = <grad a[k, b], buf[i, b]>, per gathered row
                gvals.append(torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    g[k].flatten(1), buf.flatten(0, 1).flatten(1), fwd.index(k), fwd.offsets(k), fwd.bag(k), 0))
            if k == 0:   # the stage input's gradient
                gk = _aggregate(g, bwd, k)
                break
            gk = _nchw(g[k]) if bwd.unit[k] else _aggregate(g, bwd, k)
            r = ctx.leaves[k - 1]
            owned = ctx.owned[k - 1]
            wanted = [i for i in owned if ctx.needs_input_grad[5 + i]]
            grads = torch.autograd.grad(ctx.edges[k - 1], [r] + [ctx.params[i] for i in wanted], gk,
                                        allow_unused=True)
            for i, gp in zip(wanted, grads[1:]):
                gparams[i] = gp
            torch.ops.aten.threshold_backward.grad_input(grads[0], r, 0, grad_input=_nchw(g[k - 1]))
            ctx.leaves[k - 1] = ctx.edges[k - 1] = None   # free the node's graph and activations
        gvalues = None if gvals is None else torch.cat(gvals[::-1]).to(fwd.values_all.dtype)
        return (gk, gvalues, None, None, None, *gparams)


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
        self._space_np = space.astype(bool)   # host copy: the gathers are built without a device sync
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
            h = stage(h, _Gather(wiring[:, s], coef[:, s], means=self.agg is None), bn_arch)
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
        return arch.to(device, non_blocking=True), host


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


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Parameters stop requiring grad (restored afterwards), so that a gradient with respect
    to the input alone, e.g. an attack's, does not also compute every weight's gradient."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["NetConfig", "WiredNet", "CondBN", "bn_mode", "mc_dropout", "frozen", "count_params", "asdict"]
