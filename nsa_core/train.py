"""Training: one loop for every model of the suite, checkpoints with exact resume, and the
model cache.

The data set lives on the training device as uint8; each step gathers a batch, augments it
there and normalises it. Every random stream has its own generator (data order, augmentation,
architecture draws, plus torch's global RNG for dropout), and a checkpoint holds all of them,
so a resumed run is the same run: on CPU, bit-identical weights.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm  # text bars: they stream through papermill and render in Jupyter alike

from . import data as D
from .models import ModelSpec, build
from .network import WiredNet

DEFAULT_ROOT = Path("results/models")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compile_nodes(model: WiredNet, device: torch.device) -> WiredNet:
    """torch.compile every operation node (conv, dropout, BN) in place when $NSA_COMPILE is 1
    (default: 1 on CUDA, 0 on CPU, where each model first waits about 25 s for the compiler
    and NSA-id gains about 12 %, a fixed network 2 %; measured at width 1 on 2 cores).
    Only the nodes: which inputs a node aggregates is a host-side choice per batch, a Python
    branch that would recompile a whole-model graph. Shapes start static; a new batch size
    (evaluation) recompiles once with a dynamic batch dimension instead of once per size."""
    flag = os.environ.get("NSA_COMPILE", "1" if torch.device(device).type == "cuda" else "0")
    if flag not in ("0", "1"):
        raise ValueError(f"NSA_COMPILE must be 0 or 1, got {flag!r}")
    if flag == "1":
        # one cache entry per (stage width, train/eval, grad mode, BN mode) the run meets
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for stage in model.stages:
            for node in stage.nodes:
                node.compile()
    return model


def draw_archs(sampling: str, space: int, n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Architecture indices for n examples taken in batches of `batch`: one per batch for
    NSA ('batch'), one per example for NSA-i/-id ('example'), index 0 for a fixed net."""
    if sampling == "example":
        return torch.randint(space, (n,), generator=generator)
    if sampling == "batch":
        per_batch = torch.randint(space, (math.ceil(n / batch),), generator=generator)
        return per_batch.repeat_interleave(batch)[:n]
    return torch.zeros(n, dtype=torch.long)


# ------------------------------------------------------------------------------- data

@dataclass
class TrainData:
    x: torch.Tensor          # uint8 [N, 3, 32, 32] on the device
    y: torch.Tensor
    x_test: torch.Tensor     # evaluation subset, in a fixed shuffled order (mixed-class batches)
    y_test: torch.Tensor
    classes: list[str]
    norm: str                # normalisation statistics to use
    unlabelled: torch.Tensor | None = None   # indices into x (semi-supervised)


def load_data(spec: ModelSpec, data_dir=None, device=None) -> TrainData:
    device = device or default_device()
    train = D.load(spec.dataset, "train", data_dir, synthetic_size=spec.synthetic_size)
    test = D.eval_subset(spec.dataset, data_dir, spec.test_size)
    if spec.train_size and not spec.semi:
        train = train.subset(D.balanced_subset(train.labels, spec.train_size, seed=spec.seed))
    unlabelled = None
    if spec.semi:
        lab, unlab = D.labelled_split(train.labels, spec.labelled, seed=spec.seed)
        if spec.unlabelled is not None:   # small profiles: a seeded part of the unlabelled pool
            pick = torch.randperm(len(unlab), generator=torch.Generator().manual_seed(spec.seed))
            unlab = unlab[pick[: spec.unlabelled]].sort().values
        # One tensor, labelled first: both semi-supervised modes take as many steps per epoch
        # (a pass over the unlabelled part); "labelled-only" just never looks at it.
        train = train.subset(torch.cat([lab, unlab]))
        unlabelled = torch.arange(len(lab), len(train), device=device)
    return TrainData(train.images.to(device), train.labels.to(device), test.images.to(device),
                     test.labels.to(device), train.classes, spec.dataset, unlabelled)


# ------------------------------------------------------------------------ checkpoints

class CheckpointError(RuntimeError):
    pass


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:   # a failed save (disk full, unpicklable, a signal) leaves no temp file
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, spec: ModelSpec) -> dict:
    """A checkpoint's state, or CheckpointError naming the file and what is wrong with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or corrupt files fail in many ways inside torch.load
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or "spec" not in state:
        raise CheckpointError(f"checkpoint {path} is not an nsa_core checkpoint")
    if state["spec"] != spec.to_json():
        raise CheckpointError(f"checkpoint {path} was written for another spec")
    return state


def _rng_state(gens: dict[str, torch.Generator]) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{k: g.get_state() for k, g in gens.items()}}


def _set_rng_state(state: dict, gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in gens.items():
        g.set_state(state[k])


@contextmanager
def _stop_signals():
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and stops."""
    flag = {"sig": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: flag.__setitem__("sig", signum))
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Interrupted(KeyboardInterrupt):
    pass


# --------------------------------------------------------------------------- schedule

def lr_factor(spec: ModelSpec, step: int, steps_per_epoch: int) -> float:
    epoch = step / steps_per_epoch
    warm = spec.warmup_epochs
    if warm and epoch < warm:
        return (epoch + 1 / steps_per_epoch) / warm
    if spec.schedule == "linear":
        return max(0.0, 1 - (epoch - warm) / max(spec.epochs - warm, 1e-9))
    return spec.gamma ** sum(epoch >= m for m in spec.milestones)


def rampup(t: float) -> float:
    """The consistency weight's ramp-up (Laine & Aila): exp(-5 (1 - t)^2), t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


# ----------------------------------------------------------------------------- trainer

@torch.no_grad()
def test_pass(model: WiredNet, data: TrainData, sampling: str, batch: int, generator: torch.Generator,
              autocast) -> tuple[float, float]:
    """Test loss and accuracy with BN in test mode and architectures drawn the way the model
    was trained (Figs. 2 and 3 plot exactly this)."""
    model.eval()
    n = len(data.y_test)
    archs = draw_archs(sampling, model.num_archs, n, batch, generator)
    loss = torch.zeros((), device=data.x_test.device)
    correct = torch.zeros((), device=data.x_test.device)
    for s in range(0, n, batch):
        x = D.normalize(data.x_test[s:s + batch], data.norm)
        with autocast:
            logits = model(x, archs[s:s + batch]).float()
        y = data.y_test[s:s + batch]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss.item() / n, correct.item() / n


def train(spec: ModelSpec, folder: Path, data_dir=None, device=None, progress: bool = True,
          on_step=None, log_every: int = 20) -> tuple[WiredNet, pd.DataFrame]:
    """Train (or resume) the model of `spec` in `folder`; returns the model and its history.
    `on_step(step)` is called after every optimiser step (tests use it to kill the run)."""
    folder = Path(folder)
    device = torch.device(device) if device else default_device()
    cuda = device.type == "cuda"
    data = load_data(spec, data_dir, device)   # first: missing data leaves no empty model folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.to_json())

    def say(msg: str) -> None:
        with open(folder / "train.log", "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    say(f"start {spec.key} on {device}, {len(data.y)} training images")
    torch.manual_seed(spec.seed)  # the initial weights, and dropout's stream
    model = build(spec, len(data.classes)).to(device)
    # channels_last is the layout cuDNN and oneDNN convolutions want (on CPU too: ~1.2x faster
    # steps, `make bench`); NCHW inputs are fine, the stem's output follows its weights
    model = compile_nodes(model.to(memory_format=torch.channels_last), device)
    decay = [p for p in model.parameters()]
    opt = torch.optim.SGD(decay, lr=spec.lr, momentum=spec.momentum, nesterov=True,
                          weight_decay=spec.weight_decay)
    gens = {"data": torch.Generator().manual_seed(spec.seed + 1),
            "arch": torch.Generator().manual_seed(spec.seed + 2),
            "aug": torch.Generator(device=device).manual_seed(spec.seed + 3)}
    semi = spec.semi is not None
    two_views = spec.semi == "consistency"
    n_lab = len(data.y) - (len(data.unlabelled) if semi else 0)
    n_epoch = len(data.unlabelled) if semi else n_lab      # an epoch is a pass over the larger set
    batch = spec.batch_size
    steps_per_epoch = n_epoch // batch
    if steps_per_epoch < 1:
        raise ValueError(f"{spec.kind}: {n_epoch} training images is fewer than one batch of {batch}")
    total = steps_per_epoch * spec.epochs
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    # ---- resume
    start = dict(epoch=0, step=0, history=[], perm=None, acc=None)
    for path in (folder / "checkpoint.pt", folder / "checkpoint.prev.pt"):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, spec)
        except CheckpointError as e:
            msg = f"nsa: {e}; not using it"
            tqdm.write(msg, file=sys.stderr)
            say(msg)
            continue
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        _set_rng_state(state["rng"], gens)
        start = state["progress"]
        say(f"resumed from {path.name} at epoch {start['epoch']} step {start['step']}")
        break
    history: list[dict] = start["history"]

    def checkpoint(epoch: int, step: int, perm, acc) -> None:
        state = {"spec": spec.to_json(), "model": model.state_dict(), "opt": opt.state_dict(),
                 "rng": _rng_state(gens),
                 "progress": dict(epoch=epoch, step=step, history=history, perm=perm, acc=acc)}
        cur = folder / "checkpoint.pt"
        if cur.exists():
            os.replace(cur, folder / "checkpoint.prev.pt")
        atomic_save(state, cur)

    bar = tqdm(total=total * batch, initial=(start["epoch"] * steps_per_epoch + start["step"]) * batch,
               unit="img", unit_scale=True, disable=not progress, dynamic_ncols=True,
               desc=f"{spec.kind} S={spec.space}", file=sys.stderr)
    zero = lambda: torch.zeros((), device=device)  # noqa: E731
    with _stop_signals() as stop:
        for epoch in range(start["epoch"], spec.epochs):
            model.train()
            if start["perm"] is not None and epoch == start["epoch"]:
                perm, acc, first = start["perm"], start["acc"], start["step"]
            else:
                base = data.unlabelled.cpu() if semi else torch.arange(n_lab)
                perm = base[torch.randperm(len(base), generator=gens["data"])]
                acc, first = None, 0
            perm_dev = perm.to(device)
            loss_sum, correct, seen, cons_sum = (zero(), zero(), zero(), zero()) if acc is None else \
                tuple(torch.as_tensor(v, device=device) for v in acc)
            recent: list[torch.Tensor] = []
            t0 = time.time()
            for step in range(first, steps_per_epoch):
                g = epoch * steps_per_epoch + step
                for group in opt.param_groups:
                    group["lr"] = spec.lr * lr_factor(spec, g, steps_per_epoch)
                idx = perm_dev[step * batch:(step + 1) * batch]
                if semi:   # labelled batch drawn with replacement from the labelled part
                    lab = torch.randint(n_lab, (batch,), generator=gens["data"]).to(device)
                    idx = torch.cat([lab, idx]) if two_views else lab
                x = D.normalize(D.augment(data.x[idx], gens["aug"], cutout=spec.cutout), data.norm)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = data.y[idx]
                arch = draw_archs(spec.sampling, model.num_archs, len(idx), len(idx), gens["arch"])
                with autocast:
                    logits, aux = model(x, arch, with_aux=True)
                    logits = logits.float()
                    lab_logits, lab_y = (logits[:batch], y[:batch]) if two_views else (logits, y)
                    loss = F.cross_entropy(lab_logits, lab_y)
                    if aux is not None:
                        loss = loss + spec.aux_weight * F.cross_entropy(aux.float()[:len(lab_y)], lab_y)
                    if two_views:
                        with torch.no_grad():   # the second view: other architectures / dropout masks
                            arch2 = draw_archs(spec.sampling, model.num_archs, batch, batch, gens["arch"])
                            other = model(x[batch:], arch2).float()
                        cons = (logits[batch:] - other).pow(2).sum() / (logits.shape[1] * len(idx))
                        w = spec.consistency * rampup(g / (0.5 * total))
                        loss = loss + w * cons
                        cons_sum += cons.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(lab_y)
                correct += (lab_logits.argmax(1) == lab_y).sum()
                seen += len(lab_y)
                recent.append(loss.detach())
                bar.update(batch)
                if len(recent) == log_every or step == steps_per_epoch - 1 or stop["sig"]:
                    losses = torch.stack(recent).cpu()
                    bad = (~torch.isfinite(losses)).nonzero()
                    if len(bad):
                        bar.close()   # now, or the bar is redrawn after the error message
                        s_bad = step - len(recent) + 1 + int(bad[0])
                        raise FloatingPointError(
                            f"{spec.kind}: non-finite training loss at epoch {epoch + 1}, step {s_bad + 1} "
                            f"of {steps_per_epoch}; try a lower learning rate (--set lr=...)")
                    recent.clear()
                    bar.set_postfix(epoch=f"{epoch + 1}/{spec.epochs}", loss=f"{(loss_sum / seen).item():.3f}",
                                    acc=f"{(correct / seen).item():.3f}", refresh=False)
                if on_step is not None:
                    on_step(g + 1)
                if stop["sig"]:
                    checkpoint(epoch, step + 1, perm, [t.item() for t in (loss_sum, correct, seen, cons_sum)])
                    say(f"stopped by signal {stop['sig']} at epoch {epoch} step {step + 1}; checkpoint written")
                    bar.close()
                    raise Interrupted(f"training stopped by signal; resume with the same command ({folder})")
            test_loss, test_acc = test_pass(model, data, spec.sampling, 500,
                                            torch.Generator().manual_seed(10_000 + epoch), autocast)
            row = dict(epoch=epoch + 1, train_loss=(loss_sum / seen).item(), train_acc=(correct / seen).item(),
                       test_loss=test_loss, test_acc=test_acc, lr=opt.param_groups[0]["lr"],
                       seconds=time.time() - t0)
            if two_views:
                row["consistency"] = (cons_sum / steps_per_epoch).item()
            history.append(row)
            say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            checkpoint(epoch + 1, 0, None, None)
    bar.close()
    hist = pd.DataFrame(history)
    # model.pt last: get_or_train takes its presence to mean the folder is complete
    hist.to_csv(folder / "history.csv", index=False)
    atomic_save({"spec": spec.to_json(), "model": model.state_dict(), "classes": data.classes},
                folder / "model.pt")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (folder / name).unlink(missing_ok=True)
    say("finished")
    return model.eval(), hist


# ------------------------------------------------------------------------------ cache

def model_dir(spec: ModelSpec, root: Path | str | None = None) -> Path:
    return Path(root or os.environ.get("NSA_MODELS_DIR") or DEFAULT_ROOT) / spec.key


def load_trained(folder: Path, device=None) -> tuple[WiredNet, pd.DataFrame, ModelSpec]:
    folder = Path(folder)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    spec = ModelSpec.from_json(state["spec"])
    model = build(spec, len(state["classes"]))
    model.load_state_dict(state["model"])
    model = model.to(device or default_device()).eval()
    return model, pd.read_csv(folder / "history.csv"), spec


def get_or_train(spec: ModelSpec, root: Path | str | None = None, data_dir=None, device=None,
                 progress: bool = True) -> tuple[WiredNet, pd.DataFrame]:
    """Load a finished model, resume an unfinished one, or train a missing one."""
    folder = model_dir(spec, root)
    if (folder / "model.pt").exists():
        try:
            model, hist, _ = load_trained(folder, device)
            return model, hist
        except Exception as e:  # a damaged final file: say so and train again
            tqdm.write(f"nsa: could not load {folder / 'model.pt'} ({type(e).__name__}); training again",
                       file=sys.stderr)
    return train(spec, folder, data_dir, device, progress)
