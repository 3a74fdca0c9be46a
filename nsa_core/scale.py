"""Train every model a plan needs, in parallel: N worker processes on this machine, or one
SLURM job per model, both through submitit.

A worker is a `TrainJob`: it sets its thread count, then asks the model cache for its spec
(`cache.get_or_train`), so the cache's folder lock keeps two workers, notebooks or commands
from training one model at once, and a model that is partly trained resumes from its last
checkpoint. On SLURM a job stopped at its time limit or preempted is requeued by submitit
(`checkpoint` below) and resumes the same way.
"""
from __future__ import annotations

import configparser
import os
import shlex
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import submitit
import torch

from .config import ModelSpec

if TYPE_CHECKING:   # the workers unpickle this module: they need not import the notebooks' helpers
    from .plan import Item

# Threads per worker that pay on a CPU: on the 2-core build machine two one-thread processes
# train about 1.3x as many images per second as one two-thread process (a step's small
# convolutions do not keep two threads busy), so the cores go to workers first.
CPU_THREADS_THAT_PAY = 1
LOCAL_TIMEOUT_MIN = 60 * 24 * 30   # submitit's local default (2 minutes) would kill every training
TAIL_LINES = 12


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def default_jobs(device: str | None = None) -> int:
    """Workers that pay on this machine: one per GPU on CUDA, else the cores divided by the
    threads that pay per worker."""
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return max(1, torch.cuda.device_count())
    return max(1, cores() // CPU_THREADS_THAT_PAY)


def worker_threads(jobs: int) -> int:
    """The cores split between `jobs` workers (at least one thread each)."""
    return max(1, cores() // max(1, jobs))


class TrainJob(submitit.helpers.Checkpointable):
    """One model, trained (or resumed, or found finished) through the model cache. Picklable:
    submitit sends it to the worker; on SLURM its `checkpoint` (inherited) resubmits it as it
    is, and the requeued job resumes from the trainer's last checkpoint."""

    def __init__(self, spec_json: str, models_dir: str, data_dir: str | None, device: str | None,
                 threads: int) -> None:
        self.spec_json, self.models_dir, self.data_dir = spec_json, models_dir, data_dir
        self.device, self.threads = device, threads

    def __call__(self) -> dict[str, Any]:
        from .cache import get_or_train   # the trainer, in the worker only

        os.environ["OMP_NUM_THREADS"] = str(self.threads)   # for anything this worker starts
        torch.set_num_threads(self.threads)
        spec = ModelSpec.from_json(self.spec_json)
        print(f"nsa: training {spec.key} with {self.threads} thread(s) on {self.device or 'the default device'}",
              flush=True)
        t0 = time.time()
        _, hist = get_or_train(spec, self.models_dir, self.data_dir, self.device, progress=False)
        return dict(seconds=time.time() - t0, test_acc=float(hist.test_acc.iloc[-1]), epochs=len(hist))


@dataclass
class Outcome:
    item: Item
    ok: bool
    seconds: float
    log: Path | None = None
    test_acc: float | None = None
    error: str = ""
    tail: tuple[str, ...] = ()
    job_id: str = ""


def log_tail(path: Path | None, n: int = TAIL_LINES) -> tuple[str, ...]:
    if path is None or not path.is_file():
        return ()
    return tuple(path.read_text(errors="replace").splitlines()[-n:])


def _job(item: Item, models_dir: Path, data_dir: Path | None, device: str | None, threads: int) -> TrainJob:
    return TrainJob(item.spec.to_json(), str(models_dir), str(data_dir) if data_dir else None, device, threads)


def _outcome(item: Item, job: submitit.Job, t0: float) -> Outcome:
    seconds = time.time() - t0
    try:
        result = job.result()
    except Exception as e:   # a failed or killed worker: its log says why
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Outcome(item, False, seconds, job.paths.stderr, error=first,
                       tail=log_tail(job.paths.stderr), job_id=str(job.job_id))
    return Outcome(item, True, seconds, job.paths.stderr, test_acc=result["test_acc"], job_id=str(job.job_id))


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Variables that submitit's local controller hands to the worker it starts."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress_line(n: int, total: int, out: Outcome) -> str:
    what = f"{out.item.spec.kind} S={out.item.spec.space} {out.item.key}"
    if out.ok:
        return f"nsa: [{n}/{total}] trained {what} in {out.seconds:.0f} s (test accuracy {out.test_acc:.4f})"
    lines = [f"nsa: [{n}/{total}] FAILED {what} after {out.seconds:.0f} s: {out.error}",
             f"     log {out.log}; its last lines:"]
    return "\n".join(lines + [f"     | {line}" for line in out.tail])


def train_local(items: list[Item], jobs: int, models_dir: Path, data_dir: Path | None = None,
                device: str | None = None, threads: int | None = None, logs: Path | None = None,
                report: Callable[[str], None] = say, poll: float = 0.2) -> list[Outcome]:
    """Train `items` with `jobs` worker processes on this machine (submitit's LocalExecutor),
    each with `threads` torch threads (default: the cores split between the workers). A
    failed model is reported and the others go on."""
    threads = threads or worker_threads(jobs)
    gpus = torch.cuda.device_count() if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else 0
    executor = submitit.LocalExecutor(folder=(logs or models_dir / ".logs") / "%j")
    queue, total = deque(enumerate(items, 1)), len(items)
    running: dict[int, tuple[int, Item, submitit.Job, float]] = {}
    free, outcomes = list(range(jobs)), []
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                n, item = queue.popleft()
                # one GPU per worker, round robin; no GPU at all for CPU workers
                executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=1 if gpus else 0,
                                           visible_gpus=[slot % gpus] if gpus else ())
                with _environment(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)):
                    job = executor.submit(_job(item, models_dir, data_dir, device, threads))
                report(f"nsa: [{n}/{total}] started {item.spec.kind} S={item.spec.space} {item.key} "
                       f"({item.describe()}; worker {slot + 1}/{jobs}, {threads} thread(s); log {job.paths.stderr})")
                running[slot] = (n, item, job, time.time())
            for slot, (n, item, job, t0) in list(running.items()):
                if job.done():
                    outcomes.append(_outcome(item, job, t0))
                    report(progress_line(n, total, outcomes[-1]))
                    del running[slot]
                    free.append(slot)
            time.sleep(poll)
    except KeyboardInterrupt:   # the workers checkpoint on SIGINT; rerunning resumes them
        for _, _, job, _ in running.values():
            job.cancel(check=False)
        raise
    return outcomes


def summary(outcomes: list[Outcome], skipped: list[Item] = ()) -> list[str]:
    """The closing table: one row per model, then the totals."""
    rows = [("kind", "S", "key", "result", "seconds", "log")]
    for o in outcomes:
        result = f"trained (acc {o.test_acc:.4f})" if o.ok else "FAILED"
        rows.append((o.item.spec.kind, str(o.item.spec.space), o.item.key, result, f"{o.seconds:.0f}", str(o.log or "")))
    for it in skipped:
        rows.append((it.spec.kind, str(it.spec.space), it.key, it.describe(), "", it.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} trained, {failed} failed, {len(skipped)} left out"
                 + ("; rerun the same command to retry what is missing" if failed else ""))
    return lines


# ------------------------------------------------------------------------------ SLURM

SLURM_KEYS = ("partition", "time", "account", "cpus_per_task", "mem_gb", "gpus_per_node", "max_requeues",
              "signal_delay_s", "sbatch", "setup")
SLURM_DEFAULTS: dict[str, Any] = dict(time="24:00:00", cpus_per_task=8, gpus_per_node=1, max_requeues=10,
                                      signal_delay_s=120)


def minutes(text: str | int) -> int:
    """SLURM's time forms as whole minutes (seconds round up): 'M', 'M:S', 'H:M:S', 'D-H',
    'D-H:M', 'D-H:M:S'."""
    text = str(text).strip()
    days, dash, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        d = int(days) if dash else 0
    except ValueError:
        raise ValueError(f"time takes minutes, H:MM:SS or D-HH:MM:SS, got {text!r}") from None
    if dash:   # after the days, the clock starts with hours
        parts = (parts + [0, 0])[:3]
    else:
        parts = ([0, 0] + parts)[-3:] if len(parts) == 3 else [0] + (parts + [0])[:2]
    if len(parts) != 3 or len(clock.split(":")) > 3:
        raise ValueError(f"time takes minutes, H:MM:SS or D-HH:MM:SS, got {text!r}")
    h, m, s = parts
    return d * 24 * 60 + h * 60 + m + (s > 0)


def slurm_options(config: str | Path | None = None, **given: Any) -> dict[str, Any]:
    """The SLURM options: the defaults, then the [slurm] section of `config` (an INI file:
    `partition = gpu`, `sbatch = --qos=high --constraint=a100`, `setup = module load cuda`,
    lines of setup on their own lines), then the command line's values that are not None."""
    opts = dict(SLURM_DEFAULTS)
    if config is not None:
        parser = configparser.ConfigParser()
        if not parser.read(config):
            raise ValueError(f"slurm config {config} cannot be read")
        if not parser.has_section("slurm"):
            raise ValueError(f"slurm config {config} has no [slurm] section")
        for key, value in parser.items("slurm"):
            if key not in SLURM_KEYS:
                raise ValueError(f"unknown slurm option {key!r} in {config}; known: {', '.join(SLURM_KEYS)}")
            opts[key] = value
    opts.update({k: v for k, v in given.items() if v not in (None, [], "")})
    for key in ("cpus_per_task", "gpus_per_node", "max_requeues", "signal_delay_s"):
        opts[key] = int(opts[key])
    if opts.get("mem_gb") is not None:
        opts["mem_gb"] = float(opts["mem_gb"])
    opts["time"] = minutes(opts["time"])
    return opts


def _extra_sbatch(words: str | list[str] | None) -> dict[str, Any]:
    """'--qos=high --exclusive' -> {'qos': 'high', 'exclusive': True}."""
    items = shlex.split(words) if isinstance(words, str) else [w for part in words or [] for w in shlex.split(part)]
    out: dict[str, Any] = {}
    for word in items:
        key, sep, value = word.lstrip("-").partition("=")
        if not word.startswith("--") or not key:
            raise ValueError(f"extra sbatch options take the form --key=value or --flag, got {word!r}")
        out[key] = value if sep else True
    return out


def slurm_parameters(opts: dict[str, Any], job_name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters (sbatch's names) for one model's job."""
    setup = opts.get("setup") or []
    setup = [line.strip() for line in (setup.splitlines() if isinstance(setup, str) else setup) if line.strip()]
    threads = max(1, opts["cpus_per_task"])
    params: dict[str, Any] = dict(job_name=job_name, time=opts["time"], gpus_per_node=opts["gpus_per_node"],
                                  cpus_per_task=opts["cpus_per_task"], ntasks_per_node=1, nodes=1,
                                  signal_delay_s=opts["signal_delay_s"],
                                  setup=[f"export OMP_NUM_THREADS={threads}", *setup],
                                  additional_parameters=_extra_sbatch(opts.get("sbatch")))
    for key in ("partition", "account"):
        if opts.get(key):
            params[key] = opts[key]
    if opts.get("mem_gb"):
        params["mem"] = f"{opts['mem_gb']:g}GB"
    return params


def sbatch_script(opts: dict[str, Any], logs: Path, job_name: str) -> str:
    """The sbatch script submitit writes for one model's job, made without a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(logs) / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(opts, job_name))


def submit_slurm(items: list[Item], opts: dict[str, Any], models_dir: Path, data_dir: Path | None,
                 logs: Path, report: Callable[[str], None] = say) -> list[tuple[Item, submitit.Job]]:
    """One SLURM job per model, one GPU each. A model whose job from an earlier call is still
    queued or running is not submitted again (logs/jobs.tsv remembers the jobs)."""
    executor = submitit.SlurmExecutor(folder=logs / "%j", max_num_timeout=opts["max_requeues"])
    record = logs / "jobs.tsv"
    known = dict(line.split("\t", 1) for line in record.read_text().splitlines() if "\t" in line) \
        if record.is_file() else {}
    submitted = []
    for item in items:
        if item.key in known:
            state = submitit.SlurmJob(logs / "%j", known[item.key]).state
            if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"):
                report(f"nsa: {item.key} already has job {known[item.key]} ({state}); not submitted again")
                continue
        executor.update_parameters(**slurm_parameters(opts, f"nsa-{item.key}"))
        job = executor.submit(_job(item, models_dir, data_dir, "cuda", max(1, opts["cpus_per_task"])))
        with open(record, "a") as f:
            f.write(f"{item.key}\t{job.job_id}\n")
        report(f"nsa: submitted {item.spec.kind} S={item.spec.space} {item.key} as job {job.job_id} "
               f"(log {job.paths.stderr})")
        submitted.append((item, job))
    return submitted


def wait_for(jobs: list[tuple[Item, submitit.Job]], report: Callable[[str], None] = say,
             poll: float = 60.0) -> list[Outcome]:
    """Wait for submitted jobs, reporting each as it ends."""
    t0, pending, outcomes = time.time(), list(enumerate(jobs, 1)), []
    while pending:
        for entry in list(pending):
            n, (item, job) = entry
            if job.done():
                outcomes.append(_outcome(item, job, t0))
                report(progress_line(n, len(jobs), outcomes[-1]))
                pending.remove(entry)
        if pending:
            time.sleep(poll)
    return outcomes
