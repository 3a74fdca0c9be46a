"""Benchmarks, not tests: the numbers depend on the machine and on whatever else it runs.

`python -m nsa_core bench` (`make bench`), on the CPU, side by side at width 1, 8 nodes,
batch 128, 10 classes, no auxiliary head:
- training throughput of one full SGD step (`step.supervised_step`, as the trainer runs it) of
  the plain residual net without learnable aggregation ('fixed'), NSA (one architecture per
  batch, S = 500), NSA-i (one per example) and NSA-id (per-architecture aggregation and BN,
  per example), on a pre-made normalised random batch: no data pipeline cost enters. Steps
  run round-robin (A B C D A B C D ...) after a warm-up, so load from other processes hits
  every variant alike; each variant reports its median;
- a T = 5 ensemble evaluated in one batched pass (`evaluate.member_probs`) against T
  single-architecture passes, and one architecture at the batched pass's batch size (how much
  of the difference is the larger batch alone);
- the peak memory of one training step: each variant in a fresh process, the growth of its
  peak RSS (Linux VmHWM) over its first step: activations, gradients, optimiser state and
  allocator slack. Torch's CPU allocator keeps no statistics and tracemalloc does not see its
  allocations, so RSS is the honest measure here. Like the trainer, the benchmark keeps freed
  memory (`runtime.keep_freed_memory`); the page faults of a settled NSA-i step with and
  without that setting are reported too;
- torch.compile: NSA-i with its nodes compiled ('nsa-i-compiled', and the seconds of its first
  step, mostly the compiler's) against the same model uncompiled, both on the reference stage
  ('nsa-i-reference'): the fast stage, the CPU's default, does not call the node modules;
- where the CPU has native bf16, the four variants in bf16 autocast too ('NAME-bf16');
- torch.profiler's table of one NSA-i step: what limits it.
Results go to results/bench/cpu.csv (variant, metric, value, ratio, target, met).

`gpu_main()` (bench/gpu_check.sh) times WRN-28-10-sized NSA-id and the fixed WRN-28-10† on
CUDA with the training loop's settings; NSA_BENCH_TINY=1 shrinks it to seconds on any device,
to check its logic where there is no GPU.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import data as D
from . import runtime
from .config import ModelSpec, Recipe
from .kinds import KINDS, build, draw_archs
from .paper import AUTHORS_CPU_IMG_S as REFERENCE
from .step import optimizer, supervised_step

WIDTH, NODES, BATCH, CLASSES, SPACE, T = 1.0, 8, 128, 10, 500, 5
# "fixed" is the registry's plain residual network (no learnable aggregation): the speed of
# an ordinary network, which the stochastic ones are measured against.
VARIANTS = {"fixed": ("residual", 1), "nsa": ("nsa", SPACE), "nsa-i": ("nsa-i", SPACE), "nsa-id": ("nsa-id", SPACE)}
# throughput and peak step memory of each variant against the fixed net's
TARGET_VS_FIXED = {"nsa-i": 0.97, "nsa-id": 0.9}
TARGET_MEMORY = {"nsa-i": 1.1, "nsa-id": 1.2}
TARGET_VS_REFERENCE, TARGET_ENSEMBLE = 1.5, 1.1
WARMUP = 2

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def trainer(kind: str, space: int, device: torch.device, width: float = WIDTH, nodes: int = NODES,
            aux: bool = False, bf16: bool | None = None, seed: int = 0,
            settings: runtime.Settings = runtime.Settings()) -> tuple[torch.nn.Module, Step]:
    """A model prepared as the trainer prepares it (stage path, channels_last, compile: the
    settings) and the trainer's own step (`step.supervised_step`): architectures drawn as
    the kind samples them, bf16 autocast (default: on CUDA, as in training)."""
    torch.manual_seed(seed)
    spec = ModelSpec(kind=kind, recipe=Recipe(width=width, nodes=nodes, aux_weight=0.1 if aux else 0.0), space=space)
    model = build(spec, CLASSES, fast=settings.fast_stage(device)).to(device).to(memory_format=torch.channels_last)
    model = runtime.compile_nodes(model, device, settings).train()
    opt = optimizer(model, Recipe())
    gen = torch.Generator().manual_seed(seed)
    amp = runtime.autocast(device, "bf16" if (device.type == "cuda" if bf16 is None else bf16) else "fp32")

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        arch = draw_archs(KINDS[kind].sampling, model.num_archs, len(x), len(x), gen)
        return supervised_step(model, opt, x, y, arch, 0.1, amp)[0]

    return model, step


def random_batch(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g).to(device), torch.randint(CLASSES, (n,), generator=g).to(device)


# ----------------------------------------------------------------------------- CPU

def round_robin(steps: dict[str, Step], x: torch.Tensor, y: torch.Tensor,
                rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds of `rounds` steps per variant after WARMUP, interleaved A B C A B C."""
    for _ in range(WARMUP):
        for step in steps.values():
            step(x, y)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step(x, y)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def ensemble_times(model: torch.nn.Module, reps: int, batch: int = BATCH) -> tuple[dict[str, float], float]:
    """Median seconds, interleaved, of T members on `batch` images (`evaluate.member_probs`):
    'batched', one forward of T x batch with per-example architecture indices; 'separate', T
    single-architecture forwards of batch; 'one_arch', one forward of T x batch images of one
    architecture, which tells the cost of the larger batch from that of mixing architectures.
    Also the largest difference between batched and separate probabilities (BN in test mode:
    they must agree)."""
    from .evaluate import member_probs  # evaluation pulls in metrics and attacks; only needed here
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    archs = torch.randperm(model.num_archs, generator=torch.Generator().manual_seed(2))[:T]
    runs = {"batched": (images, archs, T * batch), "separate": (images, archs, batch),
            "one_arch": (images.repeat(T, 1, 1, 1), archs[:1], T * batch)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    probs = {}
    for r in range(reps + 1):  # the first round warms up
        for k, (imgs, members, batch) in runs.items():
            t0 = time.perf_counter()
            probs[k] = member_probs(model, imgs, "cifar10", archs=members, batch=batch)
            if r:
                times[k].append(time.perf_counter() - t0)
    diff = (probs["batched"] - probs["separate"]).abs().max().item()
    return {k: statistics.median(v) for k, v in times.items()}, diff


def _peak_rss_kib() -> int:
    # VmHWM, this process's own peak: ru_maxrss is carried across exec from the parent's
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: the memory benchmark needs Linux")


def memory_child(variant: str, steps: int = 6) -> None:
    """Run in a fresh process (with the trainer's memory setting unless NSA_MALLOC=0): print
    the peak-RSS growth (MiB) over its first training step and the page faults of its last
    step, once the heap has settled."""
    import resource
    settings = runtime.Settings.from_env()   # a process of its own: an entry point
    runtime.keep_freed_memory(settings)
    _, step = trainer(*VARIANTS[variant], torch.device("cpu"), settings=settings)
    x, y = random_batch(BATCH, torch.device("cpu"))
    before = _peak_rss_kib()
    step(x, y)
    mib = (_peak_rss_kib() - before) / 1024
    for _ in range(steps):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x, y)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"mib": mib, "faults": faults}))


def peak_memory(variant: str, keep_freed: bool = True) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), NSA_MALLOC="1" if keep_freed else "0")
    out = subprocess.run([sys.executable, "-c", f"from nsa_core.bench import memory_child; memory_child({variant!r})"],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _row(variant, metric, value, ratio=None, target="", met=None) -> dict:
    return dict(variant=variant, metric=metric, value=round(value, 4),
                ratio=None if ratio is None else round(ratio, 3), target=target, met=met)


def main(args) -> int:
    if args.steps < 3:
        raise ValueError(f"--steps must be at least 3 for a median with a spread, got {args.steps}")
    t_start = time.time()
    device = torch.device("cpu")
    runtime.keep_freed_memory(args.settings)   # as the trainer's entry points do
    print(f"nsa bench: CPU, {torch.get_num_threads()} threads, width {WIDTH:g}, {NODES} nodes, batch {BATCH}, "
          f"S = {SPACE}; {WARMUP} warm-up + {args.steps} timed steps per variant, round-robin, medians; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    models, steps, first_compiled = _cpu_trainers(device, args.settings)
    x, y = random_batch(BATCH, device)
    wall, cpu = round_robin(steps, x, y, args.steps)
    from torch.profiler import ProfilerActivity, profile
    # Kineto probes for a GPU even for a CPU-only trace and logs "ERROR ... gpuGetDeviceCount
    # failed" where there is none, which reads as a failed benchmark; level 6 silences its
    # log lines (5 leaves its start/stop lines).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps["nsa-i"](x, y)

    ips = {k: BATCH / statistics.median(v) for k, v in wall.items()}
    rows = _throughput_rows(ips, wall, cpu)
    ens, diff = ensemble_times(models["nsa-i"].eval(), reps=max(3, args.steps // 2))
    rows += _ensemble_rows(ens) + _memory_rows()
    if first_compiled is not None:
        rows.append(_row("nsa-i-compiled", "first_step_s_incl_compile", first_compiled))

    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)

    print("\nmedian img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()))
    print(f"ensemble T={T}: batched and separate probabilities agree to {diff:.1e}")
    print("ratio: vs fixed (throughput, CPU time = fixed / variant, memory), vs separate passes "
          "(ensemble; one_arch_same_batch: a single architecture in the batched pass's batch "
          "size), vs the reference implementation; memory = peak RSS growth over a fresh "
          "process's first step")
    print(df.fillna("").to_string(index=False))
    print("\ntorch.profiler, one NSA-i training step (self CPU time):\n"
          + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"wrote {out} in {time.time() - t_start:.0f} s (load average now {os.getloadavg()[0]:.1f})")
    return 0


def _cpu_trainers(device: torch.device, settings: runtime.Settings) -> tuple[dict, dict[str, Step], float | None]:
    """Every variant's model and training step, NSA-i's on the reference stage with and without
    compiled nodes, and the seconds of the compiled one's first step; where the CPU has native
    bf16, each variant's bf16 step too ("NAME-bf16")."""
    models, steps = {}, {}
    for name, (kind, space) in VARIANTS.items():
        models[name], steps[name] = trainer(kind, space, device, settings=settings)
    # torch.compile on the CPU: the fast stage does not call the node modules, so the compiled
    # nodes are timed on the reference stage, against the reference stage uncompiled
    for name, compiled in (("nsa-i-reference", "0"), ("nsa-i-compiled", "1")):
        steps[name] = trainer("nsa-i", SPACE, device, settings=replace(settings, stage="reference", compile=compiled))[1]
    t0 = time.perf_counter()
    try:   # inductor needs a C++ compiler on the CPU
        steps["nsa-i-compiled"](*random_batch(BATCH, device))
        first_compiled = time.perf_counter() - t0   # the compiler's wait, mostly
    except Exception as e:   # noqa: BLE001 - any compiler failure: the row is left out, said once
        print(f"torch.compile: not measured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        del steps["nsa-i-compiled"]
        first_compiled = None
    bf16 = runtime.native_bf16()   # emulated bf16 is slower than fp32: measured only where native
    print(f"bf16 autocast: {'measured too (native bf16 on this CPU)' if bf16 else 'not measured (no native bf16 on this CPU)'}")
    if bf16:
        for name, (kind, space) in VARIANTS.items():
            steps[f"{name}-bf16"] = trainer(kind, space, device, bf16=True, settings=settings)[1]
    return models, steps, first_compiled


def _throughput_rows(ips: dict[str, float], wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> list[dict]:
    """Images/s against the fixed net and the reference numbers, the steps' spread, CPU time."""
    rows = []
    for k in ips:
        target = TARGET_VS_FIXED.get(k.removesuffix("-bf16"))
        ratio = ips[k] / ips["fixed-bf16" if k.endswith("-bf16") else "fixed"]
        rows.append(_row(k, "train_img_per_s", ips[k], ratio, f">= {target} x fixed" if target else "",
                         ratio >= target if target else None))
    for k in ips:
        q1, q3 = np.percentile(wall[k], [25, 75])
        rows.append(_row(k, "train_step_iqr_pct", 100 * (q3 - q1) / statistics.median(wall[k])))
    for k in VARIANTS:   # process CPU time: less sensitive than wall time to waiting for a core
        c = statistics.median(cpu[k])
        rows.append(_row(k, "train_step_cpu_s", c, statistics.median(cpu["fixed"]) / c))
    for k, ref in REFERENCE.items():
        ratio = ips[k] / ref
        rows.append(_row(k, "train_img_per_s_vs_reference", ips[k], ratio,
                         f">= {TARGET_VS_REFERENCE} x {ref:g} img/s", ratio >= TARGET_VS_REFERENCE))
    return rows


def _ensemble_rows(ens: dict[str, float]) -> list[dict]:
    ratio = ens["batched"] / ens["separate"]
    return [_row(f"nsa-i T={T}", "ensemble_eval_s_batched", ens["batched"], ratio,
                 f"<= {TARGET_ENSEMBLE} x separate", ratio <= TARGET_ENSEMBLE),
            _row(f"nsa-i T={T}", "ensemble_eval_s_separate", ens["separate"], 1.0),
            _row(f"nsa-i T={T}", "ensemble_eval_s_one_arch_same_batch", ens["one_arch"],
                 ens["one_arch"] / ens["separate"])]


def _memory_rows() -> list[dict]:
    """Each variant's peak memory over a fresh process's first step, and what keeping freed
    memory buys (runtime.keep_freed_memory): the page faults of a settled step."""
    rows = []
    mem = {k: peak_memory(k) for k in VARIANTS}
    for k in VARIANTS:
        ratio, target = mem[k]["mib"] / mem["fixed"]["mib"], TARGET_MEMORY.get(k)
        rows.append(_row(k, "peak_step_rss_mib", mem[k]["mib"], ratio, f"<= {target} x fixed" if target else "",
                         ratio <= target if target else None))
    plain = peak_memory("nsa-i", keep_freed=False)["faults"]
    rows.append(_row("nsa-i", "page_faults_per_step_keep_freed", mem["nsa-i"]["faults"],
                     mem["nsa-i"]["faults"] / max(plain, 1)))
    rows.append(_row("nsa-i", "page_faults_per_step_NSA_MALLOC=0", plain, 1.0))
    return rows


# ----------------------------------------------------------------------------- CUDA

def gpu_main(out: str | Path = "results/bench/gpu.csv") -> int:
    """Training throughput of WRN-28-10-sized NSA-id (S = 5) and the fixed WRN-28-10† (width
    10, 8 nodes, batch 128, auxiliary head) as `train.train` runs them on CUDA: bf16 autocast,
    channels_last, nodes compiled per $NSA_COMPILE, data on the device with the on-device
    augmentation. Times 100 steps after warm-up with CUDA events (one synchronisation at each
    end) and prints images/s, the projected seconds per CIFAR-10 epoch and per 300-epoch run,
    and peak GPU memory. NSA_BENCH_TINY=1: tiny sizes, a few steps, any device."""
    tiny = os.environ.get("NSA_BENCH_TINY") == "1"
    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        print("nsa gpu bench: no CUDA device (NSA_BENCH_TINY=1 runs a tiny CPU check)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    width, batch, warmup, steps = (0.25, 8, 2, 3) if tiny else (10.0, 128, 15, 100)
    pool = torch.randint(0, 256, (20 * batch, 3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.randint(CLASSES, (len(pool),), generator=torch.Generator().manual_seed(1)).to(device)
    settings = runtime.Settings.from_env()   # gpu_check.sh's entry point
    compiled = int(settings.compiles(device))
    print(f"nsa gpu bench: {torch.cuda.get_device_name() if cuda else 'CPU (tiny check)'}, width {width:g}, "
          f"{NODES} nodes, batch {batch}, aux head, bf16 autocast, channels_last, NSA_STAGE={settings.stage}, compiled {bool(compiled)}", flush=True)
    rows = []
    for name, kind, space in (("wrn-28-10-fixed", "wrn", 1), ("nsa-id-S5", "nsa-id", 5)):
        rows += _time_on_device(name, kind, space, pool, labels, (width, batch, warmup, steps), settings)
    df = pd.DataFrame(rows)
    fixed, nsa = df[df.metric == "train_img_per_s"].value.tolist()
    print(f"NSA-id / fixed throughput: {nsa / fixed:.3f}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.assign(compile=compiled).to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


def _time_on_device(name: str, kind: str, space: int, pool: torch.Tensor, labels: torch.Tensor,
                    sizes: tuple[float, int, int, int], settings: runtime.Settings) -> list[dict]:
    """gpu_main's measurement of one model on the device of `pool`: `sizes` = (width, batch,
    warm-up steps, timed steps); prints a line and returns its rows."""
    width, batch, warmup, steps = sizes
    device = pool.device
    cuda = device.type == "cuda"
    epoch, epochs = 50_000, 300
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # the tiny check runs bf16 autocast on the CPU too, for the same dtype paths
    _, step = trainer(kind, space, device, width=width, aux=True, bf16=True, settings=settings)
    aug = torch.Generator(device=device).manual_seed(3)
    order = torch.Generator(device=device).manual_seed(4)

    def batch_and_step() -> torch.Tensor:
        idx = torch.randint(len(pool), (batch,), generator=order, device=device)
        x = D.training_view(pool[idx], aug, "cifar10", 16).contiguous(memory_format=torch.channels_last)
        return step(x, labels[idx])

    t0 = time.perf_counter()
    for _ in range(warmup):   # compiles here when NSA_COMPILE=1
        batch_and_step()
    if cuda:
        torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    losses = [batch_and_step() for _ in range(steps)]
    if cuda:
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - t0
    loss = torch.stack(losses).float()
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"{name}: non-finite loss during the timed steps")
    ips = steps * batch / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"{name:16s} {ips:9.1f} img/s  {epoch / ips:7.1f} s/epoch  {epochs * epoch / ips / 3600:6.2f} h "
          f"per {epochs} epochs  peak {peak:6.2f} GiB  (warm-up incl. compile {t_warm:.0f} s, "
          f"final loss {loss[-1].item():.3f})", flush=True)
    return [_row(name, "train_img_per_s", ips), _row(name, "s_per_epoch", epoch / ips),
            _row(name, f"h_per_{epochs}_epochs", epochs * epoch / ips / 3600),
            _row(name, "peak_gpu_gib", peak), _row(name, "warmup_s", t_warm)]
