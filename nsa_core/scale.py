"""Train every model a plan needs, in parallel: N worker processes on this machine, or one
SLURM job array, both through submitit.

A worker (`TrainJob`) gets its model from the model cache (`cache.obtain`), whose folder lock
keeps two workers, notebooks or commands from training one model at once; a partly trained
model resumes from its last checkpoint.

Stopping. Locally, submitit starts a controller process per job, which starts the worker.
The controllers ignore SIGINT, so a Ctrl-C at the terminal (which reaches the whole
foreground group) does not make them print a traceback and kill their worker before it has
checkpointed; the workers take the SIGINT themselves. `train_local` answers SIGINT and
SIGTERM with SIGTERM to each controller, which forwards it to its worker: the worker
checkpoints at its next step and ends. A worker whose parent dies without a word (SIGKILL)
stops the same way, so no worker outlives the command. On SLURM, SIGTERM and the time-limit
signal (USR2) belong to submitit: at a time limit or on preemption the trainer checkpoints at
its next step and submitit requeues the job (`TrainJob.checkpoint`), which resumes from it.
"""
from __future__ import annotations

import configparser
import os
import select
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator

import submitit
import torch

from . import runtime
from .config import ModelSpec

if TYPE_CHECKING:   # the workers unpickle this module: they need not import the notebooks' helpers
    from .plan import Item
    from .profiles import Resources

# Threads per worker that pay on a CPU: on the 2-core build machine two one-thread processes
# train about 1.3x as many images per second as one two-thread process (a step's small
# convolutions do not keep two threads busy), so the cores go to workers first.
CPU_THREADS_THAT_PAY = 1
LOCAL_TIMEOUT_MIN = 60 * 24 * 30   # submitit's local default (2 minutes) would kill every training
TAIL_LINES = 12
LOCAL_POLL_S, SLURM_POLL_S = 0.2, 60.0   # how often the parent looks at its jobs
STOP_RESEND_S = 5.0     # a worker still starting up may miss a stop: it is sent again this often
ORPHAN_GRACE_S = 60.0   # an orphaned worker that has not stopped after its SIGTERM is killed
LOADED, WAITED, TRAINED, INTERRUPTED, FAILED = "loaded", "waited", "trained", "interrupted", "failed"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def default_jobs(device: str | None = None) -> int:
    """Workers that pay on this machine: one per GPU on CUDA, else the cores divided by the
    threads that pay per worker."""
    if device.startswith("cuda") if device else torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return max(1, cores() // CPU_THREADS_THAT_PAY)


def worker_threads(jobs: int) -> int:
    """The cores split between `jobs` workers, at most $OMP_NUM_THREADS (the user's cap on
    threads per process), at least one."""
    threads = cores() // max(1, jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    return max(1, threads)


def _wait_for_exit(*pids: int) -> None:
    """Return when any of `pids` has exited (or is already gone)."""
    try:
        fds = [os.pidfd_open(pid) for pid in pids]   # Linux: woken by the exit itself, whatever reaps it
    except ProcessLookupError:
        return
    except (AttributeError, OSError):   # no pidfd here: look every second
        def alive(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
            return True
        while all(alive(pid) for pid in pids):
            time.sleep(1.0)
        return
    try:
        select.select(fds, [], [])
    finally:
        for fd in fds:
            os.close(fd)


def _stop_when_orphaned(owner: int) -> None:
    """When `owner` (the train-all process) or the submitit controller between them exits,
    however it died, SIGTERM this worker (the trainer checkpoints at its next step and ends),
    and SIGKILL it if it has not ended ORPHAN_GRACE_S later."""
    controller = os.getppid()

    def watch() -> None:
        _wait_for_exit(owner, controller)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="nsa-orphan-watch", daemon=True).start()


class TrainJob(submitit.helpers.Checkpointable):
    """One model, trained (or resumed, or found finished) through the model cache. Picklable:
    submitit sends it to the worker, and at a time limit or on preemption the inherited
    `checkpoint` resubmits it as it is. `owner`: the local train-all process, whose death stops
    the worker. `preemptible` (SLURM): SIGTERM is submitit's (it precedes a preemption's USR2);
    locally SIGTERM is how the parent stops its workers."""

    def __init__(self, spec_json: str, models_dir: str, data_dir: str | None, device: str | None,
                 threads: int, owner: int | None = None, preemptible: bool = False) -> None:
        self.spec_json, self.models_dir, self.data_dir = spec_json, models_dir, data_dir
        self.device, self.threads, self.owner, self.preemptible = device, threads, owner, preemptible

    def __call__(self) -> dict[str, Any]:
        from .cache import obtain   # the trainer, in the worker only
        from .train import StopSignals

        t0 = time.time()
        requeue = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        # the controller that started this process ignores SIGINT (train_local), and so would
        # this process: a Ctrl-C stops a worker
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not self.preemptible:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)   # before training, nothing to save: just end
        stop = (signal.SIGINT,) if self.preemptible else (signal.SIGINT, signal.SIGTERM)
        if self.owner is not None:
            _stop_when_orphaned(self.owner)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)   # for anything this worker starts
        torch.set_num_threads(self.threads)
        spec = ModelSpec.from_json(self.spec_json)
        print(f"nsa: training {spec.key} with {self.threads} thread(s) on {self.device or 'the default device'}",
              flush=True)
        settings = runtime.Settings.from_env()   # a worker is an entry point: it reads the environment
        runtime.keep_freed_memory(settings)
        try:
            got = obtain(spec, self.models_dir, self.data_dir, self.device, progress=False,
                         signals=StopSignals(stop=stop, hand_over=(requeue,)), settings=settings)
        except KeyboardInterrupt:   # the trainer's Interrupted: its checkpoint is written
            return dict(state=INTERRUPTED, seconds=time.time() - t0)
        return dict(state=got.how, seconds=time.time() - t0, test_acc=float(got.history.test_acc.iloc[-1]),
                    epochs=len(got.history))


@dataclass
class Outcome:
    item: Item
    state: str              # LOADED, WAITED, TRAINED, INTERRUPTED or FAILED
    seconds: float
    log: Path | None = None
    test_acc: float | None = None
    error: str = ""
    tail: tuple[str, ...] = ()
    job_id: str = ""

    @property
    def ok(self) -> bool:
        return self.state in (LOADED, WAITED, TRAINED)


def _job(item: Item, models_dir: Path, data_dir: Path | None, device: str | None, threads: int,
         owner: int | None = None, preemptible: bool = False) -> TrainJob:
    return TrainJob(item.spec.to_json(), str(models_dir), str(data_dir) if data_dir else None, device, threads,
                    owner, preemptible)


def _outcome(item: Item, job: submitit.Job, t0: float, stopping: bool = False) -> Outcome:
    seconds, log, job_id = time.time() - t0, job.paths.stderr, str(job.job_id)
    try:
        result = job.result()
    except Exception as e:   # a failed or killed worker: its log says why
        if stopping:          # killed by the stop before it had anything to save
            return Outcome(item, INTERRUPTED, seconds, log, job_id=job_id)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        tail = tuple(log.read_text(errors="replace").splitlines()[-TAIL_LINES:]) if log.is_file() else ()
        return Outcome(item, FAILED, seconds, log, error=first, tail=tail, job_id=job_id)
    return Outcome(item, result["state"], seconds, log, test_acc=result.get("test_acc"), job_id=job_id)


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


@contextmanager
def _handled(handler: Any, *signums: int) -> Iterator[None]:
    """`handler` for `signums` meanwhile; nothing changes off the main thread, which cannot set one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress_line(n: int, total: int, out: Outcome) -> str:
    what = out.item.name
    acc = f"test accuracy {out.test_acc:.4f}" if out.test_acc is not None else ""
    if out.state == TRAINED:
        return f"nsa: [{n}/{total}] trained {what} in {out.seconds:.0f} s ({acc})"
    if out.state == WAITED:
        return f"nsa: [{n}/{total}] waited {out.seconds:.0f} s for another process, found {what} trained ({acc})"
    if out.state == LOADED:
        return f"nsa: [{n}/{total}] found {what} trained already ({acc})"
    if out.state == INTERRUPTED:
        return f"nsa: interrupted {what}; rerun to resume"
    lines = [f"nsa: [{n}/{total}] FAILED {what} after {out.seconds:.0f} s: {out.error}",
             f"     log {out.log}; its last lines:"]
    return "\n".join(lines + [f"     | {line}" for line in out.tail])


def train_local(items: list[Item], jobs: int, models_dir: Path, data_dir: Path | None, device: str | None,
                threads: int, logs: Path) -> list[Outcome]:
    """Train `items` with `jobs` worker processes on this machine (submitit's LocalExecutor),
    `threads` torch threads each, their job folders in `logs` (kept only for the logs of failed
    models). A failed model is reported and the others go on; SIGINT or SIGTERM stops the
    workers at their next step (INTERRUPTED outcomes; nothing more is started)."""
    gpus = torch.cuda.device_count() if (device.startswith("cuda") if device else torch.cuda.is_available()) else 0
    executor = submitit.LocalExecutor(folder=logs / "%j")
    queue, total = deque(enumerate(items, 1)), len(items)
    running: dict[int, tuple[int, Item, submitit.Job, float]] = {}
    free, outcomes, ended = list(range(jobs)), [], []
    # the parent's SIGINT or SIGTERM is noted rather than raised: the loop stops the workers and waits for them
    stop = SimpleNamespace(sig=None, sent=0.0)
    with _handled(lambda signum, frame: setattr(stop, "sig", signum), signal.SIGINT, signal.SIGTERM):
        while (queue and not stop.sig) or running:
            if stop.sig and time.time() - stop.sent > STOP_RESEND_S:
                for _, _, job, _ in running.values():   # the controller forwards SIGTERM to its worker
                    with suppress(ProcessLookupError):
                        os.kill(int(job.job_id), signal.SIGTERM)
                stop.sent = time.time()
            while queue and free and not stop.sig:
                slot = free.pop(0)
                n, item = queue.popleft()
                # one GPU per worker, round robin; no GPU at all for CPU workers
                executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=1 if gpus else 0,
                                           visible_gpus=[slot % gpus] if gpus else ())
                # the controller inherits SIGINT ignored (an ignored signal stays ignored across exec)
                with _environment(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)), \
                        _handled(signal.SIG_IGN, signal.SIGINT):
                    job = executor.submit(_job(item, models_dir, data_dir, device, threads, owner=os.getpid()))
                say(f"nsa: [{n}/{total}] started {item.name} ({item.describe()}; worker {slot + 1}/{jobs}, "
                    f"{threads} thread(s); log {job.paths.stderr})")
                running[slot] = (n, item, job, time.time())
            for slot, (n, item, job, t0) in list(running.items()):
                if job.done():
                    outcomes.append(_outcome(item, job, t0, stopping=stop.sig is not None))
                    ended.append(job)
                    say(progress_line(n, total, outcomes[-1]))
                    if outcomes[-1].state == INTERRUPTED and stop.sig is None:   # a Ctrl-C the parent missed
                        stop.sig = signal.SIGINT
                    del running[slot]
                    free.append(slot)
            time.sleep(LOCAL_POLL_S)
        if stop.sig and queue:
            say(f"nsa: {len(queue)} model(s) not started; rerun to train them")
            outcomes += [Outcome(item, INTERRUPTED, 0.0) for _, item in queue]
    for job, out in zip(ended, outcomes):
        folder = Path(job.paths.folder)
        if out.state != FAILED and folder.parent == logs and folder.is_dir():   # only this run's job folders
            shutil.rmtree(folder, ignore_errors=True)
    with suppress(OSError):   # submitit's controller makes the folder pattern itself, empty
        (logs / "%j").rmdir()
    if any(o.state == FAILED for o in outcomes):
        say(f"nsa: the job folders of the failed models, with their logs, are kept in {logs}")
    return outcomes


def summary(outcomes: list[Outcome], skipped: list[Item] = ()) -> list[str]:
    """The closing table: one row per model, then the totals."""
    rows = [("kind", "S", "key", "result", "seconds", "log")]
    said = {TRAINED: "trained", WAITED: "trained by another process", LOADED: "trained before"}
    for o in outcomes:
        result = f"{said[o.state]} (acc {o.test_acc:.4f})" if o.ok else o.state.upper()
        rows.append((o.item.label, str(o.item.spec.space), o.item.key, result, f"{o.seconds:.0f}",
                     str(o.log or "") if not o.ok else ""))
    rows += [(it.label, str(it.spec.space), it.key, it.describe(), "", it.note) for it in skipped]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} trained, {failed} failed, {len(skipped)} left out"
                 + ("; rerun the same command to retry what is missing" if failed else ""))
    return lines


# ------------------------------------------------------------------------------ SLURM

SLURM_KEYS = ("partition", "time", "account", "cpus_per_task", "mem_gb", "gpus_per_node", "max_requeues",
              "signal_delay_s", "sbatch", "setup")
SLURM_DEFAULTS: dict[str, Any] = dict(max_requeues=10, signal_delay_s=120)


def minutes(text: str | int) -> int:
    """SLURM's time forms as whole minutes (seconds round up): 'M', 'M:S', 'H:M:S', 'D-H',
    'D-H:M', 'D-H:M:S'."""
    text = str(text).strip()
    days, dash, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        d = int(days) if dash else 0
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"time takes minutes, H:MM:SS or D-HH:MM:SS, got {text!r}")
    # after the days the clock starts with hours, else with minutes unless it has all three
    h, m, s = (parts + [0, 0])[:3] if dash or len(parts) == 3 else [0, *parts, 0][:3]
    return d * 24 * 60 + h * 60 + m + (s > 0)


def slurm_options(config: str | Path | None = None, resources: Resources | None = None, **given: Any) -> dict[str, Any]:
    """The SLURM options: the profile's `resources` (time, memory, GPUs and CPUs per job; the
    Resources defaults without one), then the [slurm] section of `config` (an INI file:
    `partition = gpu`, `sbatch = --qos=high --constraint=a100`, `setup = module load cuda`,
    lines of setup on their own lines), then the command line's values that are not None."""
    from .profiles import Resources

    res = resources or Resources()
    opts = dict(SLURM_DEFAULTS, time=res.time, mem_gb=res.mem_gb, gpus_per_node=res.gpus, cpus_per_task=res.cpus)
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
    try:
        for key in ("cpus_per_task", "gpus_per_node", "max_requeues", "signal_delay_s"):
            opts[key] = int(opts[key])
        opts["mem_gb"] = float(opts["mem_gb"]) if opts.get("mem_gb") is not None else None
    except ValueError as e:
        raise ValueError(f"slurm option: {e}") from None
    if opts["cpus_per_task"] < 1 or opts["gpus_per_node"] < 0 or (opts["mem_gb"] is not None and opts["mem_gb"] <= 0):
        raise ValueError("slurm: cpus_per_task must be positive, gpus_per_node not negative, mem_gb positive")
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
    """submitit's SlurmExecutor parameters (sbatch's names) for the jobs of one submission."""
    setup = opts.get("setup") or []
    setup = [line.strip() for line in (setup.splitlines() if isinstance(setup, str) else setup) if line.strip()]
    params: dict[str, Any] = dict(job_name=job_name, time=opts["time"],
                                  cpus_per_task=opts["cpus_per_task"], ntasks_per_node=1, nodes=1,
                                  signal_delay_s=opts["signal_delay_s"],
                                  setup=[f"export OMP_NUM_THREADS={opts['cpus_per_task']}", *setup],
                                  additional_parameters=_extra_sbatch(opts.get("sbatch")))
    # no GPU line at all for a CPU profile
    params |= {key: opts[key] for key in ("partition", "account", "gpus_per_node") if opts.get(key)}
    if opts.get("mem_gb"):
        params["mem"] = f"{opts['mem_gb']:g}GB"
    return params


def sbatch_script(opts: dict[str, Any], logs: Path, job_name: str, count: int = 1) -> str:
    """The sbatch script submitit writes for a submission of `count` models (one job array
    when there are several, as `submit_slurm` submits them), made without a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(logs) / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=count if count > 1 else None,
                               **slurm_parameters(opts, job_name))


def require_slurm() -> None:
    """OSError (an environment failure) when this machine cannot submit to SLURM."""
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]   # submitit needs both
    if missing:
        raise FileNotFoundError(2, f"{' and '.join(missing)} not on PATH: --executor slurm runs where SLURM's "
                                   "commands are (--dry-run prints the job script anywhere)")


def submit_slurm(items: list[Item], opts: dict[str, Any], models_dir: Path, data_dir: Path | None,
                 logs: Path, job_name: str = "nsa") -> list[tuple[Item, submitit.Job]]:
    """The models as one SLURM job array, each task one model with the options' resources. A
    model whose job from an earlier call is still queued or running is not submitted again
    (logs/jobs.tsv remembers the jobs)."""
    record = logs / "jobs.tsv"
    known = dict(line.split("\t", 1) for line in record.read_text().splitlines() if "\t" in line) \
        if record.is_file() else {}
    todo = []
    for item in items:
        if item.key in known:
            state = submitit.SlurmJob(logs / "%j", known[item.key]).state
            if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"):
                say(f"nsa: {item.name} already has job {known[item.key]} ({state}); not submitted again")
                continue
        todo.append(item)
    if not todo:
        return []
    executor = submitit.SlurmExecutor(folder=logs / "%j", max_num_timeout=opts["max_requeues"])
    executor.update_parameters(**slurm_parameters(opts, job_name))
    device = "cuda" if opts["gpus_per_node"] else "cpu"
    jobs = executor.submit_array([_job(it, models_dir, data_dir, device, opts["cpus_per_task"], preemptible=True)
                                  for it in todo])
    with open(record, "a") as f:
        f.writelines(f"{it.key}\t{job.job_id}\n" for it, job in zip(todo, jobs))
    for it, job in zip(todo, jobs):
        say(f"nsa: submitted {it.name} as job {job.job_id} (log {job.paths.stderr})")
    return list(zip(todo, jobs))


def wait_for(jobs: list[tuple[Item, submitit.Job]]) -> list[Outcome]:
    """Wait for submitted jobs, reporting each as it ends."""
    t0, pending, outcomes = time.time(), dict(enumerate(jobs, 1)), []
    while pending:
        for n, (item, job) in list(pending.items()):
            if job.done():
                outcomes.append(_outcome(item, job, t0))
                say(progress_line(n, len(jobs), outcomes[-1]))
                del pending[n]
        if pending:
            time.sleep(SLURM_POLL_S)
    return outcomes
