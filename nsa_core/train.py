"""The trainer: one loop for every model of the suite, with exact resume.

The data set lives on the training device as uint8; each step gathers a batch, augments it
there and normalises it. Every random stream has its own generator (data order,
augmentation, architecture draws, plus torch's global RNG for dropout), and a checkpoint
holds all of them, so a resumed run is the same run: on the CPU, bit-identical weights with
the same thread count.

An epoch is every training image once, the last smaller batch included; a semi-supervised
epoch is one pass over the unlabelled images, with the labelled ones in passes of their own.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm  # text bars: they stream through papermill and render in Jupyter alike

from . import data as D
from . import paths, runtime
from .checkpoint import (CheckpointError, atomic_save, load_checkpoint, remove_stale_temporaries, rng_state,
                         rotate, set_rng_state, write_manifest)
from .config import ModelSpec
from .kinds import TEST_BATCH, build, draw_archs
from .network import WiredNet
from .step import lr_factor, optimizer, rampup, semi_step, supervised_step


FAILED = "failed.txt"   # a failed run's reason, in its folder until the next try
CURVE = "curve.csv"     # every test evaluation of the run: CURVE_COLUMNS, one row per evaluation
CURVE_COLUMNS = ["step", "epoch", "test_loss", "test_acc"]


class Interrupted(KeyboardInterrupt):
    pass


@dataclass(frozen=True)
class StopSignals:
    """How a run answers signals. A signal of `stop` makes it write a checkpoint at the next
    step and raise Interrupted. A signal of `hand_over` makes it write a checkpoint at the next
    step and then call the handler that was installed for that signal before the run began:
    submitit's, which requeues the job at a time limit or on preemption (and exits), so the
    requeued job resumes from that very step. Signals in neither keep their handlers."""
    stop: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    hand_over: tuple[int, ...] = ()


# ------------------------------------------------------------------------------- data

@dataclass
class TrainData:
    x: torch.Tensor          # uint8 [N, 3, 32, 32] on the device
    y: torch.Tensor
    x_test: torch.Tensor     # evaluation subset, in a fixed shuffled order (mixed-class batches)
    y_test: torch.Tensor
    classes: list[str]
    norm: str                # normalisation statistics to use
    labelled: int            # semi-supervised: the first `labelled` images carry labels; else all
    identity: str            # of the whole data set, train and test (data.identity)


def load_data(spec: ModelSpec, data_dir=None, dev: torch.device | None = None) -> TrainData:
    r = spec.recipe
    dev = dev or runtime.device()
    train = D.load(r.dataset, "train", data_dir, synthetic_size=r.synthetic_size)
    test = D.eval_subset(r.dataset, data_dir, r.test_size)
    labelled = len(train)
    if spec.semi:
        lab, unlab = D.labelled_split(train.labels, r.labelled, seed=spec.seed)
        if r.unlabelled is not None:   # small profiles: a seeded part of the unlabelled pool
            pick = torch.randperm(len(unlab), generator=torch.Generator().manual_seed(spec.seed))
            unlab = unlab[pick[: r.unlabelled]].sort().values
        train, labelled = train.subset(torch.cat([lab, unlab])), len(lab)
    elif r.train_size:
        train = train.subset(D.balanced_subset(train.labels, r.train_size, seed=spec.seed))
    return TrainData(train.images.to(dev), train.labels.to(dev), test.images.to(dev),
                     test.labels.to(dev), train.classes, r.dataset, labelled,
                     D.identity(r.dataset, data_dir, r.synthetic_size))


def steps_per_epoch(images: int, batch: int) -> int:
    """Every image once, the last smaller batch kept, except a lone last image: BN cannot
    normalise a batch of one."""
    return images // batch if images % batch == 1 else math.ceil(images / batch)


def cycled(n: int, start: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """Positions start..start+count of an endless sequence of random passes over range(n),
    each pass a permutation seeded by (seed, pass): the labelled images of a semi-supervised
    run, without replacement within a pass, and stateless, so resuming needs no extra state."""
    first = start // n
    passes = [torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + p))
              for p in range(first, (start + count - 1) // n + 1)]
    return torch.cat(passes)[start - first * n:start - first * n + count].to(device)


# ------------------------------------------------------------------------------ a run

@dataclass
class Run:
    """Everything one training run holds; a checkpoint is its serialisable part."""
    spec: ModelSpec
    folder: Path
    data: TrainData
    model: WiredNet
    opt: torch.optim.Optimizer
    gens: dict[str, torch.Generator]
    device: torch.device
    amp: object
    steps: int                         # optimiser steps per epoch
    progress: dict = field(default_factory=lambda: dict(epoch=0, step=0, history=[], curve=[], perm=None, acc=None))

    @property
    def total(self) -> int:
        return self.steps * self.spec.recipe.epochs

    def say(self, msg: str, warn: bool = False) -> None:
        """A line of train.log; `warn`: on stderr too."""
        if warn:
            tqdm.write(msg, file=sys.stderr)
        with open(self.folder / "train.log", "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def save(self, epoch: int, step: int, perm, acc) -> None:
        self.progress = dict(self.progress, epoch=epoch, step=step, perm=perm, acc=acc)
        rotate(self.folder, {"spec": self.spec.to_json(), "model": self.model.state_dict(),
                             "opt": self.opt.state_dict(), "rng": rng_state(self.gens),
                             "threads": torch.get_num_threads(), "progress": self.progress})


def prepare(spec: ModelSpec, folder: Path, data_dir=None, device=None,
            settings: runtime.Settings = runtime.Settings()) -> Run:
    """Data, a fresh model and optimiser, and the random streams of `spec`."""
    dev = runtime.device(device)
    data = load_data(spec, data_dir, dev)   # first: missing data leaves no empty model folder
    paths.writable_folder(folder, "model folder")
    remove_stale_temporaries(folder)        # of writers killed before their rename
    failed = folder / FAILED
    if failed.exists():
        tqdm.write(f"nsa: {folder.name} failed before ({failed.read_text().strip()}); trying again", file=sys.stderr)
        failed.unlink()
    (folder / "spec.json").write_text(spec.to_json())
    torch.manual_seed(spec.seed)  # the initial weights, and dropout's stream
    model = build(spec, len(data.classes), fast=settings.fast_stage(dev)).to(dev)
    # channels_last is the layout cuDNN convolutions want; on the CPU it is neutral at the tiny
    # profile's width 1, 4 nodes, batch 128 (NSA-i 1.03x, NSA-id-agg 0.98x the NCHW step on
    # the AMD EPYC, fp32, one thread). NCHW inputs are fine, the stem's output follows its weights
    model = runtime.compile_nodes(model.to(memory_format=torch.channels_last), dev, settings)
    gens = {"data": torch.Generator().manual_seed(spec.seed + 1),
            "arch": torch.Generator().manual_seed(spec.seed + 2),
            "aug": torch.Generator(device=dev).manual_seed(spec.seed + 3)}
    r = spec.recipe
    images = len(data.y) - data.labelled if spec.semi else len(data.y)
    if images < 2:
        raise ValueError(f"{spec.kind}: {images} training images; at least 2 are needed")
    run = Run(spec, folder, data, model, optimizer(model, r), gens, dev, runtime.autocast(dev, r.precision),
              steps_per_epoch(images, r.batch_size))
    run.say(f"start {spec.key} on {dev}, {runtime.precision(dev, r.precision)}, {len(data.y)} training images, "
            f"{torch.get_num_threads()} threads")
    return run


def resume(run: Run) -> None:
    """Continue from the newest readable checkpoint of the folder, if any."""
    for path in (run.folder / "checkpoint.pt", run.folder / "checkpoint.prev.pt"):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, run.spec)
        except CheckpointError as e:
            run.say(f"nsa: {e}; not using it", warn=True)
            continue
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["opt"])
        set_rng_state(state["rng"], run.gens)
        run.progress = state["progress"]
        threads = state.get("threads")
        if threads is not None and threads != torch.get_num_threads():
            run.say(f"nsa: resuming with {torch.get_num_threads()} threads where the run started with {threads}: "
                    "the weights will match neither uninterrupted run bit for bit", warn=True)
        run.say(f"resumed from {path.name} at epoch {run.progress['epoch']} step {run.progress['step']}")
        return


# ---------------------------------------------------------------------------- the loop

def _step(run: Run, g: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on images `idx` (global step g); returns the loss, the logits and
    labels it was scored on, and the consistency (0 when supervised)."""
    spec, data, r = run.spec, run.data, run.spec.recipe
    view = lambda i: D.training_view(data.x[i], run.gens["aug"], data.norm, r.cutout)  # noqa: E731
    draw = lambda n: draw_archs(spec.sampling, run.model.num_archs, n, n, run.gens["arch"])  # noqa: E731
    if not spec.semi:
        y = data.y[idx]
        loss, logits = supervised_step(run.model, run.opt, view(idx), y, draw(len(idx)), r.aux_weight, run.amp)
        return loss, logits, y, torch.zeros((), device=run.device)
    lab = cycled(data.labelled, g * r.batch_size, r.batch_size, spec.seed, run.device)
    both = torch.cat([lab, idx])
    weight = r.consistency * rampup(g / (0.5 * run.total)) if spec.semi == "consistency" else 0.0
    y = data.y[lab]
    loss, logits, cons = semi_step(run.model, run.opt, view(both), view(both), y, draw(len(both)),
                                   draw(len(both)), weight, run.amp)
    return loss, logits, y, cons


def train_epoch(run: Run, epoch: int, bar: tqdm, stop: _Stop, on_step: Callable[[int], None] | None) -> dict:
    """One epoch (or its rest, after a resume); returns its row of the history."""
    r = run.spec.recipe
    run.model.train()
    p = run.progress
    if p["perm"] is not None and epoch == p["epoch"]:   # the checkpoint stopped inside this epoch
        perm, acc, first = p["perm"], p["acc"], p["step"]
    else:   # a fresh order of the (unlabelled, if semi-supervised) images
        base = torch.arange(run.data.labelled if run.spec.semi else 0, len(run.data.y))
        perm, acc, first = base[torch.randperm(len(base), generator=run.gens["data"])], None, 0
    perm_dev = perm.to(run.device)
    sums = [torch.tensor(v, device=run.device) for v in acc or [0.0] * 4]   # loss, correct, seen, consistency
    recent: list[torch.Tensor] = []
    t0 = time.time()
    for step in range(first, run.steps):
        g = epoch * run.steps + step
        for group in run.opt.param_groups:
            group["lr"] = r.lr * lr_factor(r, g, run.steps)
        loss, logits, y, cons = _step(run, g, perm_dev[step * r.batch_size:(step + 1) * r.batch_size])
        for i, v in enumerate((loss * len(y), (logits.argmax(1) == y).sum(), len(y), cons)):
            sums[i] += v
        recent.append(loss)
        bar.update(1)
        if len(recent) == r.log_every or step == run.steps - 1 or stop.sig:
            bad = (~torch.isfinite(torch.stack(recent).cpu())).nonzero()
            if len(bad):   # the first non-finite loss since the last check
                raise FloatingPointError(f"{run.spec.kind}: non-finite training loss at epoch {epoch + 1}, step "
                                         f"{step - len(recent) + 2 + int(bad[0])} of {run.steps}; "
                                         "try a lower learning rate (--set lr=...)")
            recent.clear()
            bar.set_postfix(epoch=f"{epoch + 1}/{r.epochs}", loss=f"{(sums[0] / sums[2]).item():.3f}",
                            acc=f"{(sums[1] / sums[2]).item():.3f}", refresh=False)
        if r.eval_every and (g + 1) % r.eval_every == 0 and step < run.steps - 1:
            curve_point(run, g + 1, *test_pass(run, torch.Generator().manual_seed(20_000 + g)))
            run.model.train()
        if on_step is not None:
            on_step(g + 1)
        if stop.sig:
            run.save(epoch, step + 1, perm, [t.item() for t in sums])
            run.say(f"stopped by signal {stop.sig} at epoch {epoch} step {step + 1}; checkpoint written")
            stop.act(run.folder)
    test_loss, test_acc = test_pass(run, torch.Generator().manual_seed(10_000 + epoch))
    curve_point(run, (epoch + 1) * run.steps, test_loss, test_acc)
    row = dict(epoch=epoch + 1, train_loss=(sums[0] / sums[2]).item(), train_acc=(sums[1] / sums[2]).item(),
               test_loss=test_loss, test_acc=test_acc, lr=run.opt.param_groups[0]["lr"], seconds=time.time() - t0)
    if run.spec.semi == "consistency":
        row["consistency"] = (sums[3] / (run.steps - first)).item()
    return row


def curve_point(run: Run, g: int, test_loss: float, test_acc: float) -> None:
    """A point of the test curve after global step g. It lives in the checkpointed progress,
    so a resumed run writes the curve an uninterrupted one does."""
    run.progress.setdefault("curve", []).append(dict(step=g, epoch=g / run.steps, test_loss=test_loss,
                                                     test_acc=test_acc))


@torch.no_grad()
def test_pass(run: Run, generator: torch.Generator) -> tuple[float, float]:
    """Test loss and accuracy with BN in test mode and architectures drawn the way the model
    was trained (Figs. 2 and 3 plot exactly this): one per example for NSA-i, and for NSA one
    per kinds.TEST_BATCH test images, the authors' test batch (so a point of the curve averages
    n / 128 architectures, not the one or two of a forward's batch)."""
    model, data, batch = run.model, run.data, run.spec.recipe.eval_batch
    model.eval()
    n = len(data.y_test)
    archs = draw_archs(run.spec.sampling, model.num_archs, n, TEST_BATCH, generator)
    loss = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device)
    for s in range(0, n, batch):
        with run.amp:
            logits = model(D.normalize(data.x_test[s:s + batch], data.norm), archs[s:s + batch]).float()
        y = data.y_test[s:s + batch]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss.item() / n, correct.item() / n


class _Stop:
    """The signal that came in (None: none yet), and what to do once the checkpoint is written."""

    def __init__(self, policy: StopSignals, previous: dict) -> None:
        self.sig: int | None = None
        self.policy, self.previous = policy, previous

    def act(self, folder: Path) -> None:
        sig, self.sig = self.sig, None
        handler = self.previous.get(sig)
        if sig in self.policy.hand_over and callable(handler):
            handler(sig, None)   # submitit: checkpoints the job and requeues it (exits); a return goes on
            return
        raise Interrupted(f"training stopped by signal; resume with the same command ({folder})")


@contextmanager
def stop_signals(policy: StopSignals | None = None) -> Iterator[_Stop]:
    """The signals of `policy` (default: SIGINT and SIGTERM stop) set a flag; the loop
    checkpoints at the next step, then stops or hands over (StopSignals)."""
    policy = policy or StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield _Stop(policy, {})
        return
    old = {s: signal.getsignal(s) for s in (*policy.stop, *policy.hand_over)}
    stop = _Stop(policy, old)
    for s in old:
        signal.signal(s, lambda signum, frame: setattr(stop, "sig", signum))
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def finish(run: Run) -> pd.DataFrame:
    """history.csv, curve.csv and model.pt, then the manifest, last: its presence means the folder is
    complete. The checkpoints go only after it."""
    hist = pd.DataFrame(run.progress["history"])
    hist.to_csv(run.folder / "history.csv", index=False)
    pd.DataFrame(run.progress.get("curve", []), columns=CURVE_COLUMNS).to_csv(run.folder / CURVE, index=False)
    atomic_save({"spec": run.spec.to_json(), "model": run.model.state_dict(), "classes": run.data.classes},
                run.folder / "model.pt")
    write_manifest(run.folder, run.spec, run.data.identity)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run.folder / name).unlink(missing_ok=True)
    run.say("finished")
    return hist


def train(spec: ModelSpec, folder: Path, data_dir=None, device=None, progress: bool = True,
          on_step: Callable[[int], None] | None = None, signals: StopSignals | None = None,
          settings: runtime.Settings = runtime.Settings()) -> tuple[WiredNet, pd.DataFrame]:
    """Train (or resume) the model of `spec` in `folder`; returns the model and its history.
    `on_step(step)` is called after every optimiser step (tests use it to kill the run);
    `signals`: how the run answers signals (StopSignals; default SIGINT and SIGTERM stop it);
    `settings`: how this machine runs it (runtime.Settings, read by the entry points)."""
    run = prepare(spec, Path(folder), data_dir, device, settings)
    try:
        resume(run)
        p = run.progress
        bar = tqdm(total=run.total, initial=p["epoch"] * run.steps + p["step"], unit="step", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr,
                   desc=f"{spec.kind} S={spec.space} {runtime.precision(run.device, spec.recipe.precision)}")
        try:
            with stop_signals(signals) as stop:
                for epoch in range(p["epoch"], spec.recipe.epochs):
                    row = train_epoch(run, epoch, bar, stop, on_step)
                    run.progress["history"].append(row)
                    run.say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                    run.save(epoch + 1, 0, None, None)
        finally:
            bar.close()   # before any error message, or the bar is redrawn after it
        return run.model.eval(), finish(run)
    except Exception as e:   # a failed run's folder says why; an interrupted one just resumes
        with suppress(OSError):   # a full disk may be why it failed
            (run.folder / FAILED).write_text(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
        raise
