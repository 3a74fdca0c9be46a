"""A faster way to compute `network.Stage`: per-example gathers and a hand-written backward.

`network.Stage.forward` defines a stage: node j's input is, per example, the coefficient-
weighted sum of the slots (stage input, earlier node outputs) that example's wiring
connects. Written plainly, a batch that mixes architectures must multiply-add every slot
that *any* example reads: with 128 ER-0.3 wirings that is nearly every earlier slot, although
each example reads about 2.2 per node. This module computes the same outputs and gradients
(tested equal in float64 in tests/test_network.py):

- a stage's slots live in one buffer [N+1, B, H, W, C], seen as [(N+1)·B, D] rows, and
  node j's aggregate is one `F.embedding_bag` call (a fused gather-multiply-add) that reads,
  per example, only the rows its own wiring connects; a slot that only its own lone-input
  node reads is never copied into the buffer (the residual and chain wirings);
- the backward is written by hand (`_FastStage`): autograd would record each read of the
  shared buffer as a slice of it and give every reader a gradient the size of the whole
  buffer. Slot k's gradient gathers the aggregate gradients of its readers (the transposed
  wiring) in the same way;
- learned coefficients (NSA-id) need every slot again for their gradient. Keeping the
  buffer for that doubled a stage's activations; instead each node's output is rebuilt in
  the backward from its BN input (which its BN keeps anyway) and the per-example scale and
  shift its BN applied (`bn_with_affine`): one multiply-add, bit for bit the forward's output
  with per-architecture BN, equal to float rounding with plain BN (native BN in the forward);
- NSA-id's per-architecture BN (`cond_batch_norm`) is one per-example scale-and-shift,
  y = x·scale[b] + shift[b], its factors from the batch statistics (training) or the running
  ones (eval), kept in fp32 under bf16 as native BN keeps them; it saves only its input.

Measured with `make bench` (CPU, 1 thread, AMD EPYC, width 1, 8 nodes, batch 128, S = 500,
a full SGD step; 2026-12-01): with the two paths' steps interleaved in one process, the fast
path is 1.05x (fixed), 1.27x (NSA-i) and 1.37x (NSA-id) as fast as the reference; run alone,
a first step's peak RSS grows by 447, 449 and 679 MiB against the reference's 532, 920 and
1049 MiB. A fixed wiring gains least: each node reads about as many slots either way. Later
measurements: docs/measurements.md.

The price: a hand-written backward that must stay equal to `Stage.forward` (the tests check
every gradient), index lists built on the host for every batch (one host-to-device copy per
stage, pinned on CUDA), no double backward, and a stage that `torch.compile` cannot see into.
A network runs it when built with fast=True; runtime.Settings chooses (NSA_STAGE: 'fast',
'reference', or 'auto': this path on the CPU, where it was measured faster, the reference on
CUDA, where neither has been measured yet: a GPU runs the reference's multiply-adds cheaply).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, pairwise

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class StageWiring:
    """One stage's architecture for each example of a batch: `wiring` [B, N+1, N+1], 0/1 on
    the host (row = consumer, column = producer), `coef` [B, N+1, N+1] the aggregation
    coefficients on the device (zero where the wiring is), `means`: the coefficients are the
    wiring's plain row means (no learned ones), so a lone input has coefficient 1."""
    wiring: np.ndarray
    coef: torch.Tensor
    means: bool

# `_FastStage.apply(x, coef, wiring, nodes, arch, record, *params)`: the nodes' parameters
# start at this argument index, in `needs_input_grad` and in the gradients backward returns.
_FIRST_PARAM = 6


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] (any layout) as a [B, H, W, C] view or copy target."""
    return t.permute(0, 2, 3, 1)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """A [B, H, W, C] buffer slot seen as a channels_last [B, C, H, W] tensor (no copy)."""
    return t.permute(0, 3, 1, 2)


@dataclass
class Gather:
    """Which buffer rows each example's aggregates read, in `F.embedding_bag`'s form.

    A buffer of R slots of B examples is flattened to [R·B, D] rows; row k·B + b is slot
    k of example b. Aggregate j's entries are `index[starts[j]:starts[j + 1]]` with weights
    `values[...]` (the same range), `offsets[j]` [B] where each example's entries begin;
    `entries` are the (example, aggregate, slot) triples behind them, in the same order.
    unit[j]: every example's aggregate j is slot j alone with weight 1, so the slot can be
    read as it is. direct[k] (forward gathers only): slot k is read by unit aggregate k
    alone, so it need not be copied into the buffer at all."""
    index: torch.Tensor
    offsets: torch.Tensor
    values: torch.Tensor
    entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    starts: np.ndarray
    unit: np.ndarray
    direct: np.ndarray | None = None

    def aggregate(self, buf: torch.Tensor, j: int) -> torch.Tensor:
        """Aggregate j of buffer `buf` [R, B, H, W, C]: each example's weighted sum of the rows
        it reads, in one fused gather-multiply-add; [B, C, H, W], channels_last."""
        rows = buf.flatten(0, 1).flatten(1)    # [R·B, D], a view
        s = slice(self.starts[j], self.starts[j + 1])
        a = F.embedding_bag(self.index[s], rows, self.offsets[j], mode="sum",
                            per_sample_weights=self.values[s].to(buf.dtype))
        return _nchw(a.view(buf.shape[1:]))


def _gather(wiring: np.ndarray, coef: torch.Tensor, means: bool, backward: bool = False) -> Gather:
    """The forward's gather: aggregate j reads slot i of example b with weight coef[b, j, i]
    where wiring[b, j, i] (wiring [B, N+1, N+1] 0/1, row = consumer; coef on the device).
    `backward`: its transpose, in which the gradient of slot k gathers the aggregate gradients
    of the rows j that read it, with the same weights coef[b, j, k]."""
    # reads[j, b, k]: example b's aggregate j reads slot k (backward: slot j's gradient, row k's)
    reads = wiring.transpose(2, 0, 1) if backward else wiring.transpose(1, 0, 2)
    R, B, _ = reads.shape
    agg, b, slot = np.nonzero(reads)
    counts = reads.sum(-1)                                                  # [R, B]
    # The diagonal is always on, so a lone input is slot j itself; plain means give it 1.
    unit = means & (counts == 1).all(1)
    if backward:    # slot k's lone reader is row k, whose weight is 1 if row k has one input too
        unit &= (wiring.sum(-1) == 1).all(0)
    offsets = np.concatenate([np.zeros((R, 1), np.int64), np.cumsum(counts, 1)[:, :-1]], 1)
    # one host-to-device copy for all the index lists (pinned on CUDA: no stream sync)
    packed = torch.from_numpy(np.concatenate([slot * B + b, offsets.ravel(), b, agg, slot]))
    if coef.device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(coef.device, non_blocking=True)
    nnz = len(b)
    index, flat_offsets, bt, at, st = packed.split([nnz, offsets.size, nnz, nnz, nnz])
    return Gather(index=index, offsets=flat_offsets.view(offsets.shape),
                  values=coef[(bt, st, at) if backward else (bt, at, st)], entries=(bt, at, st),
                  starts=np.concatenate([[0], np.cumsum(counts.sum(1))]), unit=unit,
                  direct=None if backward else unit & (wiring.sum(1) == 1).all(0))


def _store(buf: torch.Tensor, fwd: Gather, k: int, y: torch.Tensor) -> torch.Tensor:
    """Put slot k's tensor in the buffer unless only its own unit row reads it; returns it."""
    if not fwd.direct[k]:
        buf[k].copy_(_nhwc(y))
    return y


def stage_forward(nodes: nn.ModuleList, x: torch.Tensor, wiring: StageWiring,
                  arch: torch.Tensor | None) -> torch.Tensor:
    """`network.Stage.forward` computed the fast way: the stage output [B, C, H, W] of the
    nodes `nodes` for input x, per-example wirings and coefficients `wiring`, and per-
    example indices `arch` for conditional BN."""
    params = [p for node in nodes for p in node.parameters()]
    # Node graphs cost memory and time; record them only when a backward can follow.
    record = torch.is_grad_enabled() and any(t.requires_grad for t in (x, wiring.coef, *params))
    return _FastStage.apply(x, wiring.coef, wiring, nodes, arch, record, *params)


class _FastStage(torch.autograd.Function):
    """The stage with the aggregation done by gathers, forward and backward.

    With `record`, each node runs in its own small autograd graph rooted at a leaf holding
    its ReLU input; forward keeps the leaf and the graph's output edge per node on ctx (graph
    objects, not tensors to version-check, so not through save_for_backward; the output's
    values live in the buffer). Backward walks the nodes in reverse, differentiates each node
    graph once and drops it, which frees that node's saved activations as it goes. So a
    second backward through the same forward (retain_graph=True) is not possible and says so.

    The parameters are inputs of this function, so autograd treats them as usual:
    loss.backward() accumulates their .grad, torch.autograd.grad(loss, x) leaves them alone,
    and a parameter that does not require grad is not differentiated at all."""

    @staticmethod
    def forward(ctx, x, coef, wiring, nodes, arch, record, *params):
        fwd = _gather(wiring.wiring, coef.to(x.dtype), wiring.means)
        # the coefficients' gradient (learned coefficients: NSA-id) reads every slot again: the
        # backward rebuilds the slots from the nodes' BN inputs rather than keep the whole buffer
        want_coef = record and ctx.needs_input_grad[1]
        B, C, H, W = x.shape
        buf = x.new_empty(len(fwd.unit), B, H, W, C)
        held = _store(buf, fwd, 0, x)    # slot j's tensor, not in the buffer when fwd.direct[j]
        graphs, rebuild = [], []
        for j, node in enumerate(nodes):
            # ReLU of aggregate j as a fresh tensor: the buffer slots stay as they are
            if fwd.direct[j]:
                r = F.relu(held)
            elif fwd.unit[j]:
                r = F.relu(_nchw(buf[j]))
            else:
                r = F.relu_(fwd.aggregate(buf, j))    # in place: the aggregate is fresh
            if record:
                r.requires_grad_()
                with torch.enable_grad():
                    c = node.bn_input(r)
                    if want_coef:   # keep the affine BN applied: the backward rebuilds y from c
                        y, scale, shift = bn_with_affine(node.bn, c, arch)
                        # detached: c's graph would keep the node's ReLU output (a leaf) alive
                        rebuild.append((c.detach(), scale, shift))
                    else:
                        y = node.bn(c, arch)
                graphs.append((r, torch.autograd.graph.get_gradient_edge(y)))
                y = y.detach()
            else:
                y = node(r, arch)
            held = _store(buf, fwd, j + 1, y)
        n = len(nodes)
        out = held if fwd.direct[n] else fwd.aggregate(buf, n)   # direct: the plain chain
        if record:
            # node j's parameters' positions in `params`
            starts = list(accumulate((sum(1 for _ in node.parameters()) for node in nodes), initial=0))
            ctx.graphs, ctx.params = graphs, params
            ctx.owned = [range(a, b) for a, b in pairwise(starts)]
            ctx.fwd, ctx.host_wiring, ctx.means = fwd, wiring.wiring, wiring.means
            ctx.shape = buf.shape
            ctx.rebuild = rebuild
            ctx.save_for_backward(coef, x if want_coef else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if getattr(ctx, "graphs", None) is None:
            raise RuntimeError("a fast stage's node graphs are freed by its first backward; "
                               "build the network with fast=False (NSA_STAGE=reference) to backward through it twice")
        coef, x = ctx.saved_tensors
        bwd = _gather(ctx.host_wiring, coef.to(grad_out.dtype), ctx.means, backward=True)
        g = grad_out.new_empty(ctx.shape)          # g[j]: gradient of aggregate j
        n = len(ctx.graphs)
        g[n].copy_(_nhwc(grad_out))
        gparams: list[torch.Tensor | None] = [None] * len(ctx.params)
        for k in range(n, 0, -1):                  # slot k: node k-1's output
            gk = _nchw(g[k]) if bwd.unit[k] else bwd.aggregate(g, k)
            r, edge = ctx.graphs[k - 1]
            wanted = [i for i in ctx.owned[k - 1] if ctx.needs_input_grad[_FIRST_PARAM + i]]
            grads = torch.autograd.grad(edge, [r] + [ctx.params[i] for i in wanted], gk,
                                        allow_unused=True)
            for i, gp in zip(wanted, grads[1:]):
                gparams[i] = gp
            # ReLU's backward: r >= 0, so its sign is the 0/1 mask; sign-then-multiply in place
            # is the fastest public formulation measured (where() or a bool mask are 3-5x
            # slower on the CPU). Masked entries may be -0.0, which sums ignore.
            torch.sign(r, out=_nchw(g[k - 1])).mul_(grads[0])
            ctx.graphs[k - 1] = None               # frees the node's graph and activations
        ctx.graphs = None
        # a fresh tensor, not a view of g, which would keep the whole buffer alive
        gx = bwd.aggregate(g, 0) if ctx.needs_input_grad[0] else None
        gcoef = None
        if ctx.needs_input_grad[1]:
            # The slots again, rebuilt now that the node graphs (their activations) are freed,
            # so that they take the place of memory already given back; example-major
            # [B, R, H, W, C], which the product below reads as it is (bf16 matmul copies any
            # operand that is not, 2x its time)
            R, B = ctx.shape[:2]
            slots = g.new_empty(B, R, *ctx.shape[2:])
            slots[:, 0].copy_(_nhwc(x))
            for k, (c, scale, shift) in enumerate(ctx.rebuild, start=1):
                slots[:, k].copy_(_nhwc(_affine(c, scale, shift)))   # the forward's y
            ctx.rebuild = None
            # d loss / d coef[b, j, i] = <g[j, b], slot i of example b> where example b's aggregate
            # j reads slot i, 0 elsewhere: one batched product [B, R, D] x [B, D, R]
            dots = torch.bmm(g.flatten(2).transpose(0, 1), slots.flatten(2).transpose(1, 2))
            gcoef = torch.zeros_like(coef).index_put_(ctx.fwd.entries, dots[ctx.fwd.entries].to(coef.dtype))
        return (gx, gcoef, None, None, None, None, *gparams)


def _channel_rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] as [B, H·W, C]: a view for channels_last tensors (the trainer's), so that
    the backward's sums over the pixels run along contiguous rows."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def _fold(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """BN with statistics `mean`, `invstd` [C] and affine `weight`, `bias` as one affine:
    y = x·scale + shift, scale = weight·invstd, shift = bias - mean·scale, in weight's dtype."""
    scale = weight * invstd.to(weight.dtype)
    return scale, bias - mean.to(weight.dtype) * scale


def _affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x·scale[b, c] + shift[b, c] (scale, shift [B, C]), computed in scale's precision and
    returned in x's: with bf16 activations the per-channel factors stay fp32, as in native BN."""
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]).to(x.dtype)


class _CondBatchNorm(torch.autograd.Function):
    """`network.CondBN` with batch statistics, keeping one activation instead of two.

    The definition normalises, then applies each example's affine through autograd, which
    saves BN's input and x_hat (a second activation per BN). Here the forward folds both into
    one per-example affine, y = x·scale[b] + shift[b] with scale = w[b]·invstd and shift =
    b[b] - mean·scale, keeps only x, and returns scale and shift too (not differentiable: the
    fast stage rebuilds y from x with them). The backward is BN's, written once for the
    per-example weights [B, C] (the statistics folded into per-channel factors):
        gx = gy·(w·invstd) - x·invstd²·m2 + invstd·(mean·invstd·m2 - m1),
    where m1 = mean over (b, h, w) of w·gy and m2 = mean of w·gy·x_hat, per channel."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, running_mean, running_var, momentum):
        # native BN without affine gives the statistics fastest (a reduction of our own over the
        # pixels measured 1.5-5x slower), also in bf16 (fp32 statistics), and, given the running
        # statistics, updates them as nn.BatchNorm2d does; its x_hat is not used
        # (without running statistics native BN keeps bf16 statistics of a bf16 input: cast first)
        xs = x if running_mean is not None or x.dtype in (torch.float32, torch.float64) else x.float()
        _, mean, invstd = torch.native_batch_norm(xs, None, None, running_mean, running_var, True, momentum, eps)
        scale, shift = _fold(weight, bias, mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(scale, shift)
        return _affine(x, scale, shift), scale, shift

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _scale, _shift):
        x, weight, mean, invstd = ctx.saved_tensors
        n = x.shape[0] * x.shape[2] * x.shape[3]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        # in fp32 (copies only under bf16: fp32 sums and factors, as native BN's; a sum with
        # dtype=fp32 of bf16 measured 3x slower than the copy and a plain sum); [B, H·W, C] rows
        gy_rows, x_rows = _channel_rows(gy).to(acc), _channel_rows(x).to(acc)
        gbias = gy_rows.sum(1)                                         # [B, C]
        s2 = (gy_rows * x_rows).sum(1)
        gweight = invstd * (s2 - mean * gbias)                         # sum of gy·x_hat
        m1 = (weight * gbias).sum(0) / n
        m2 = (weight * gweight).sum(0) / n
        gx = None
        if ctx.needs_input_grad[0]:
            q, r = -invstd * invstd * m2, invstd * (mean * invstd * m2 - m1)
            gx = torch.addcmul(r, x_rows, q).addcmul_(gy_rows, (weight * invstd)[:, None, :])
            gx = gx.view(_nhwc(x).shape).permute(0, 3, 1, 2).to(x.dtype)
        return gx, gweight.to(weight.dtype), gbias.to(weight.dtype), None, None, None, None


def cond_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    affine: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`bn`'s normalisation followed by the per-example affine `weight`, `bias` [B, C] (which
    replaces bn's own affine, if any: `CondBN.example_affine`), computed as one per-example
    affine y = x·scale + shift; with `affine`, also returns scale and shift [B, C] (detached).
    With batch statistics: `_CondBatchNorm`, updating `bn`'s running statistics as
    nn.BatchNorm2d does when it tracks them; with running statistics: plain autograd. Equal to
    `network.CondBN`'s definition (tests/test_network.py)."""
    if not bn.training and bn.track_running_stats:
        scale, shift = _fold(weight, bias, bn.running_mean, torch.rsqrt(bn.running_var + bn.eps))
        y = _affine(x, scale, shift)
        return (y, scale.detach(), shift.detach()) if affine else y
    track = bn.training and bn.track_running_stats
    y, scale, shift = _CondBatchNorm.apply(x, weight, bias, bn.eps, bn.running_mean if track else None,
                                           bn.running_var if track else None, _momentum(bn) if track else 0.0)
    return (y, scale, shift) if affine else y


def _momentum(bn: nn.BatchNorm2d) -> float:
    """nn.BatchNorm2d's running-statistics factor for a training batch, counting the batch."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def bn_with_affine(bn: nn.BatchNorm2d, x: torch.Tensor, arch: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`bn(x, arch)` (a `network.CondBN`) and the per-example scale and shift [B, C] it applied,
    y = x·scale + shift, detached: what the fast stage needs to rebuild y from x. Per-architecture
    BN gives them as `cond_batch_norm` computes y, so the rebuild is bit for bit; plain BN runs
    native BN, as nn.BatchNorm2d does (2x faster than `_CondBatchNorm` in bf16), whose output
    the rebuild equals to float rounding."""
    if bn.archs:
        return cond_batch_norm(bn, x, *bn.example_affine(arch, len(x)), affine=True)
    if not bn.training and bn.track_running_stats:
        invstd = torch.rsqrt(bn.running_var + bn.eps)
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        mean = bn.running_mean
    else:
        track = bn.training and bn.track_running_stats
        y, mean, invstd = torch.native_batch_norm(x, bn.weight, bn.bias, bn.running_mean if track else None,
                                                  bn.running_var if track else None, True,
                                                  _momentum(bn) if track else 0.0, bn.eps)
    scale, shift = _fold(bn.weight, bn.bias, mean, invstd)
    return y, scale.detach().expand(len(x), -1), shift.detach().expand(len(x), -1)
