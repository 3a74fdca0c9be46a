"""Evaluation: per-architecture scores, ensembles, MC dropout, batch-mean statistics, OOD
detection and white-box attacks (paper Secs. 3-5 and App. C).

With BN in test mode an example's output does not depend on its batch, so T architectures on
N images become T x N (member, image) pairs, taken `batch` at a time with one architecture
index per example: forwards mix architectures, and memory stays bounded by `batch` images
whatever T and N are. With BN in training mode the batch *is* part of the computation, and
NSA's training batches hold one architecture, so those forwards hold one architecture each.

Callers pass evaluation images in one fixed shuffled order (`train.load_data`,
`data.eval_order`): local ImageFolder copies are sorted by class, and with BN in training mode
a one-class batch normalises itself away. The model is left bit-identical: `bn_mode` and
`mc_dropout` restore every module's flag and never let BN write its running statistics.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .attacks import PGD, pgd_attack
from .kinds import draw_archs
from .network import WiredNet

OOD_SYNTHETIC = "synthetic-ood"

ArchLike = torch.Tensor | np.ndarray | list[int]


# ---------------------------------------------------------------- evaluation switches

def _training_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    # Every module's own flag: model.train(flag) would overwrite submodules deliberately
    # left in another mode (a frozen BN, or an enclosing bn_mode / mc_dropout).
    return [(m, m.training) for m in model.modules()]


def _restore_training_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    for m, tr in flags:
        m.training = tr


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str):
    """Evaluate with BN in 'test' mode (running statistics) or 'train' mode (each batch's own
    statistics; BN layers stop tracking, so no running statistic or counter is written).
    Dropout follows model.eval() (see `mc_dropout`)."""
    if mode not in ("train", "test"):
        raise ValueError(f"bn mode must be 'train' or 'test', got {mode!r}")
    flags = _training_flags(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
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
        yield model.requires_grad_(False)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------- helpers

def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check(bn: str, batch: int) -> None:
    if bn not in ("train", "test"):
        raise ValueError(f"bn must be 'train' or 'test', got {bn!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")


def _check_dropout(model: nn.Module, samples: int, name: str) -> None:
    if samples < 1:
        raise ValueError(f"{name} must be >= 1, got {samples}")
    if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError("MC dropout needs a model with dropout (kind 'wrn-dropout'); this one has none")


def _members(model: WiredNet, archs: ArchLike | None,
             wirings: torch.Tensor | np.ndarray | None) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(indices [T] or None, wirings [T, 3, N+1, N+1] or None, T); no choice means the
    whole training space."""
    if archs is not None and wirings is not None:
        raise ValueError("pass either archs (indices) or wirings, not both")
    if wirings is not None:
        w = torch.as_tensor(wirings).cpu()
        w = w[None] if w.dim() == 3 else w
        return None, w, len(w)
    idx = torch.arange(model.num_archs) if archs is None else torch.as_tensor(archs, dtype=torch.long).reshape(-1)
    if len(idx) == 0:
        raise ValueError("archs is empty: pass at least one architecture index")
    return idx, None, len(idx)


def _pairs(members: int, n: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(member, image) index pairs, member-major, `batch` at a time: each chunk is one forward
    of `batch` images, mixing the members that fall into it."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for start in range(0, members * n, batch):
        p = torch.arange(start, min(start + batch, members * n))
        yield p // n, p % n


def _pair_probs(model: WiredNet, images: torch.Tensor, norm: str, members: int, batch: int,
                logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Softmax probabilities [members, N, C] (CPU), logits(x, member, image) of every pair."""
    dev = _device(model)
    out = torch.empty(members, len(images), model.cfg.classes)
    for t, i in _pairs(members, len(images), batch):
        out[t, i] = logits(D.normalize(images[i.to(images.device)].to(dev), norm), t, i).softmax(1).cpu()
    return out


def _forward(model: WiredNet, x: torch.Tensor, idx: torch.Tensor | None, wirings: torch.Tensor | None,
             member: torch.Tensor | int) -> torch.Tensor:
    """Logits of images x under member(s) `member` (positions into idx or wirings; an int
    for one member for the whole batch, a tensor for one per example)."""
    if wirings is not None:
        return model(x, wirings=wirings[member]).float()
    arch = int(idx[member]) if isinstance(member, int) else idx[member].to(x.device)
    return model(x, arch).float()


@contextlib.contextmanager
def _seeded(seed: int):
    """Torch's global RNG (dropout's) seeded for the block and restored afterwards, so MC
    dropout is reproducible and the caller's random stream is untouched."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------- prediction

def predict(model: WiredNet, images: torch.Tensor, norm: str, arch: ArchLike | int | None = None,
            wirings: torch.Tensor | np.ndarray | None = None, bn: str = "test", batch: int = 500,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of images (uint8 [N, 3, 32, 32] or [0, 1] floats)
    normalised with the statistics of `norm` (the *training* set's name). arch: None (index
    0), one int, or one index per image [N]; wirings: one shared [3, N+1, N+1] architecture or
    one per image. bn='train' normalises each batch of `batch` by its own statistics, so pass
    images in a fixed shuffled order (data.eval_order) that mixes classes in every batch."""
    _check(bn, batch)
    dev = torch.device(device) if device is not None else _device(model)
    n = len(images)
    if arch is not None and not isinstance(arch, (int, np.integer)):
        arch = torch.as_tensor(arch, dtype=torch.long)
        if arch.shape != (n,):
            raise ValueError(f"arch: expected an int or one index per image ({n},), got {tuple(arch.shape)}")
    if wirings is not None:
        wirings = torch.as_tensor(wirings).cpu()
        if wirings.dim() == 4 and len(wirings) != n:
            raise ValueError(f"wirings: expected one shared architecture or {n}, got {len(wirings)}")
    out = []
    with bn_mode(model, bn), torch.no_grad():
        for s in range(0, n, batch):
            x = D.normalize(images[s:s + batch].to(dev), norm)
            a = arch[s:s + batch].to(dev) if isinstance(arch, torch.Tensor) else arch
            w = wirings[s:s + batch] if wirings is not None and wirings.dim() == 4 else wirings
            out.append(model(x, a, wirings=w).float().cpu())
    return torch.cat(out)


def arch_scores(model: WiredNet, images: torch.Tensor, labels: torch.Tensor, norm: str,
                archs: ArchLike | None = None, wirings: torch.Tensor | np.ndarray | None = None,
                bn: str = "test", batch: int = 500, mixed: bool = False) -> pd.DataFrame:
    """Accuracy and mean cross-entropy of each architecture (paper Figs. 2-3 and 5): one row
    per architecture, columns arch (its index, or its position in `wirings`), acc, loss;
    archs and wirings None: every architecture of the training space.

    bn='test': forwards of `batch` (architecture, image) pairs that mix architectures.
    bn='train' (images in a fixed shuffled order, data.eval_order, so batches mix classes): a
    forward of `batch` images holds one architecture with mixed=False, as NSA trains, or one
    per example with mixed=True, as NSA-i trains (pass p gives image i architecture
    (o_i + p) mod T, o_i a seeded random offset, so every architecture meets every image once)."""
    _check(bn, batch)
    idx, w, T = _members(model, archs, wirings)
    dev = _device(model)
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    loss, correct = torch.zeros(2, T, dtype=torch.float64, device=dev)
    if bn == "test":
        chunks = _pairs(T, n, batch)
    else:
        offset = torch.randint(T, (n,), generator=torch.Generator().manual_seed(0)) if mixed else None
        chunks = (((offset[s:s + batch] + p) % T if mixed else p, torch.arange(s, min(s + batch, n)))
                  for p in range(T) for s in range(0, n, batch))
    with bn_mode(model, bn), torch.no_grad():
        for t, i in chunks:
            x = D.normalize(images[i.to(images.device)].to(dev), norm)
            y = labels[i.to(labels.device)].to(dev)
            logits = _forward(model, x, idx, w, t)
            member = torch.full((len(i),), t, device=dev) if isinstance(t, int) else t.to(dev)
            loss.index_add_(0, member, F.cross_entropy(logits, y, reduction="none").double())
            correct.index_add_(0, member, (logits.argmax(1) == y).double())
    return pd.DataFrame({"arch": idx.numpy() if idx is not None else np.arange(T),
                         "acc": (correct / n).cpu().numpy(), "loss": (loss / n).cpu().numpy()})


def member_probs(model: WiredNet, images: torch.Tensor, norm: str, archs: ArchLike | None = None,
                 wirings: torch.Tensor | np.ndarray | None = None, batch: int = 500, fresh: bool = False,
                 seed: int = 0) -> torch.Tensor:
    """Softmax probabilities [T, N, C] (CPU) of T ensemble members, BN in test mode: member t
    is architecture archs[t] (None: the whole training space) or wirings[t]; fresh=True draws
    it at random from them for each image on its own (with replacement, seeded by `seed`),
    the ensemble the authors' attack.py evaluates."""
    idx, w, T = _members(model, archs, wirings)
    pick = torch.randint(T, (T, len(images)), generator=torch.Generator().manual_seed(seed)) if fresh else None
    with bn_mode(model, "test"), torch.no_grad():
        return _pair_probs(model, images, norm, T, batch,
                           lambda x, t, i: _forward(model, x, idx, w, t if pick is None else pick[t, i]))


def ensemble_curve(member_probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Accuracy of the ensemble of the first t members, t = 1..T (paper Fig. 4), in one sweep:
    a running sum over members (argmax ignores the 1/t), in float64 so that it picks the same
    class as averaging the t members separately."""
    p = torch.as_tensor(member_probs).double()
    y = torch.as_tensor(labels).long().to(p.device)
    if p.dim() != 3 or p.shape[1] != len(y):
        raise ValueError(f"member_probs must be [T, N, C] with N = {len(y)} labels, got {tuple(p.shape)}")
    return (p.cumsum(0).argmax(2) == y).double().mean(1).cpu().numpy()


def mc_dropout_probs(model: WiredNet, images: torch.Tensor, norm: str, samples: int, batch: int = 500,
                     seed: int = 0) -> torch.Tensor:
    """Softmax probabilities [K, N, C] (CPU) of `samples` MC-dropout passes (dropout on, BN in
    test mode, architecture index 0), each example with its own dropout mask. Torch's global
    RNG is seeded with `seed` for the call and then restored, so the samples are reproducible
    (for the same `batch`) and the caller's random stream is untouched."""
    _check_dropout(model, samples, "samples")
    with _seeded(seed), mc_dropout(model), torch.no_grad():
        return _pair_probs(model, images, norm, samples, batch, lambda x, t, i: model(x).float())


# ----------------------------------------------------------------- BN batch statistics

def batch_mean_variance(model: WiredNet, images: torch.Tensor, norm: str, sampling: str,
                        batches: int = 50, batch_size: int = 128, seed: int = 0) -> pd.DataFrame:
    """Variance across batches of each BN layer's batch mean (paper Sec. 3 and App. C): one
    row per BN layer the forward runs, layer (module name) and var_mean, the unbiased variance
    over `batches` batches of the BN input's per-channel mean (over N, H, W), averaged over
    channels. As NSA trains: BN in training mode (running statistics untouched), architectures
    drawn by kinds.draw_archs per batch ('batch', NSA) or per example ('example', NSA-i).
    Images and architectures have separate generators seeded by `seed`, so both samplings see
    the same image batches."""
    if sampling not in ("batch", "example"):
        raise ValueError(f"sampling must be 'batch' (NSA) or 'example' (NSA-i), got {sampling!r}")
    n = len(images)
    if n < batch_size:
        raise ValueError(f"{n} images are fewer than one batch of {batch_size}")
    if batches < 2:
        raise ValueError(f"a variance across batches needs batches >= 2, got {batches}")
    dev = _device(model)
    layers = {m: name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    means: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

    def capture(module: nn.Module, args: tuple) -> None:
        means[module].append(args[0].detach().float().mean((0, 2, 3)))

    g_img = torch.Generator().manual_seed(seed)
    g_arch = torch.Generator().manual_seed(seed + 1)
    handles = [m.register_forward_pre_hook(capture) for m in layers]
    try:
        with bn_mode(model, "train"), torch.no_grad():
            for _ in range(batches):
                i = torch.randperm(n, generator=g_img)[:batch_size]
                arch = draw_archs(sampling, model.num_archs, batch_size, batch_size, g_arch)
                model(D.normalize(images[i.to(images.device)].to(dev), norm), arch.to(dev))
    finally:
        for h in handles:
            h.remove()
    # Layers outside the forward (the auxiliary head) captured nothing and get no row.
    rows = [(name, torch.stack(means[m]).var(0).mean().item()) for m, name in layers.items() if means[m]]
    return pd.DataFrame(rows, columns=["layer", "var_mean"])


# ----------------------------------------------------------------- uncertainty, attacks

def load_ood(name: str, data_dir: str | Path | None = None, n: int | None = None, seed: int = 0) -> D.Split:
    """The OOD test set `name` ('svhn', 'fashion-mnist', 'cifar100', ...), its first n images in
    the fixed shuffled order data.eval_order(seed); raises data.DataMissing when unavailable.
    'synthetic-ood' (smoke profile): synthetic data of other class patterns than 'synthetic'.
    Normalise it with the *training* set's statistics, never its own."""
    if name == OOD_SYNTHETIC:
        split = D.synthetic("test", size=n or D.SYNTHETIC_SIZE["test"], seed=seed + 1000)
        return replace(split, name=OOD_SYNTHETIC)
    if name == "synthetic":
        raise ValueError(f"'synthetic' shares the training set's class patterns; use {OOD_SYNTHETIC!r} for OOD")
    test = D.load(name, "test", data_dir)
    order = D.eval_order(len(test), seed)
    return test.subset(order[:n] if n else order)


def ensemble_members(model: WiredNet, norm: str, archs: ArchLike | None = None, mc_samples: int | None = None,
                     seed: int = 0, fresh: bool = True) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(x in [0, 1] [B, 3, 32, 32] -> members' probabilities [T, B, C], T), differentiable:
    what PGD attacks, each image replicated T times in one forward. fresh=True (the authors'
    attack): every call draws new members, for each image T architectures drawn from `archs`
    (default: the training space) or T new dropout masks (torch's global RNG moves on: seed it
    around the whole attack). fresh=False: the same members in every call (`archs` itself, or
    the same `mc_samples` masks, re-seeded by `seed`), a deterministic target, the stronger attack."""
    dev = _device(model)
    if mc_samples is not None:
        if archs is not None:
            raise ValueError("pass archs (NSA ensembles) or mc_samples (MC dropout), not both")
        _check_dropout(model, mc_samples, "mc_samples")
        T = mc_samples
    else:
        idx, _, T = _members(model, archs, None)
        gen = torch.Generator().manual_seed(seed)

    def members(x: torch.Tensor) -> torch.Tensor:
        xn = D.normalize(x.to(dev), norm).repeat(T, 1, 1, 1)
        if mc_samples is not None:
            with contextlib.nullcontext() if fresh else _seeded(seed), mc_dropout(model):
                return model(xn).float().softmax(1).view(T, len(x), -1)
        drawn = idx[torch.randint(T, (T * len(x),), generator=gen)] if fresh else idx.repeat_interleave(len(x))
        with bn_mode(model, "test"):
            return model(xn, drawn.to(dev)).float().softmax(1).view(T, len(x), -1)
    return members, T


def attacked_members(model: WiredNet, images: torch.Tensor, labels: torch.Tensor, norm: str, attack: PGD,
                     archs: ArchLike | None = None, mc_samples: int | None = None, batch: int = 250,
                     seed: int = 0, fresh: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """White-box PGD against the whole ensemble (`ensemble_members`): the members'
    probabilities [T, N, C] on the clean and on the attacked images, and the labels [N].
    fresh=True (the authors'): every forward, PGD steps and final evaluation alike, draws new
    members; fresh=False attacks and scores one fixed set. `batch` bounds the images per
    forward, replicas included (max(1, batch // T) attacked); the random start is seeded by `seed`."""
    members, T = ensemble_members(model, norm, archs, mc_samples, seed, fresh)
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dev = _device(model)
    gen = torch.Generator(device=dev).manual_seed(seed)
    chunk = max(1, batch // T)
    clean, adv = [], []
    with _seeded(seed):   # fresh dropout masks come from torch's global RNG: reproducible, restored after
        for s in range(0, n, chunk):
            x = D.to_unit(images[s:s + chunk].to(dev))
            y = labels[s:s + chunk].to(dev)
            with frozen(model):
                x_adv = pgd_attack(lambda z: members(z).mean(0), x, y, attack, gen)
            with torch.no_grad():
                clean.append(members(x).cpu())
                adv.append(members(x_adv).cpu())
    return torch.cat(clean, 1), torch.cat(adv, 1), labels.cpu().clone()


__all__ = ["arch_scores", "attacked_members", "batch_mean_variance", "bn_mode", "ensemble_curve", "ensemble_members",
           "frozen", "load_ood", "mc_dropout", "mc_dropout_probs", "member_probs", "predict"]
