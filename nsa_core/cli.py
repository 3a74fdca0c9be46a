"""Command line: `python -m nsa_core {train,reproduce,bench,profiles,models,train-all} ...`.

User mistakes (an unknown profile, kind, data set or --set key, missing or unusable data, a
device that does not exist) print one line and exit with code 2; failures of the machine (a
full disk, no SLURM) one line and code 1; an interrupted command exits with 130. None shows
a traceback. Relative folders are taken from the repository root in a checkout (else from
the working directory), in every subcommand: nsa_core/paths.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from . import data as D
from . import runtime
from .config import ModelSpec, convert, parse_sets
from .kinds import KINDS
from .profiles import PROFILES, get_profile


def _spec_from_args(args) -> ModelSpec:
    """The spec that `train`'s arguments name: the profile's recipe (the semi-supervised one
    with --set semi=...), then every --set value, typed by the field it sets."""
    sets = parse_sets(args.set)
    if "kind" in sets:
        raise ValueError("the kind is set with --kind, not --set kind=...")
    if args.kind not in KINDS:
        raise ValueError(f"unknown kind {args.kind!r}; choose one of {', '.join(KINDS)}")
    semi = convert(sets.pop("semi", None), str | None, "semi")
    if args.space is not None:
        sets["space"] = args.space
    elif "space" not in sets and not KINDS[args.kind].fixed:
        sets["space"] = 500
    if args.seed is not None:
        sets["seed"] = args.seed
    spec = get_profile(args.profile).spec(args.kind, args.recipe, semi=semi, **sets)
    if spec.recipe.dataset not in D.DATASETS:
        raise ValueError(f"unknown data set {spec.recipe.dataset!r}; choose one of {', '.join(D.DATASETS)}")
    return spec


def cmd_train(args) -> int:
    from .cache import get_or_train, model_dir
    spec = _spec_from_args(args)
    folder = model_dir(spec, args.models_dir, args.data_dir)
    _, hist = get_or_train(spec, args.models_dir, args.data_dir, args.device, progress=True, settings=args.settings)
    last = hist.iloc[-1]
    print(f"test accuracy {last.test_acc:.4f} (BN test mode, {spec.sampling} architectures) "
          f"after {int(last.epoch)} epochs, {hist.seconds.sum():.0f} s of training", file=sys.stderr)
    print(folder)
    return 0


def cmd_profiles(args) -> int:
    from dataclasses import asdict

    for name in [args.name] if args.name else PROFILES:
        profile = get_profile(name)   # an unknown name is an error, not an empty listing
        print(f"[{name}]")
        sections = {"understand": "the recipe of Secs. 3-4: the tour and notebooks 01-04",
                    "explore": "the recipe of Sec. 5's supervised models: notebooks 05-07, 09",
                    "semi": "the semi-supervised recipe: notebook 08",
                    "slurm": "one model's SLURM job: train-all --executor slurm"}
        for k, v in [*profile.as_dict().items(), ("slurm", asdict(profile.slurm))]:
            if isinstance(v, dict):
                print(f"  [{k}]  ({sections[k]})")
                for kk, vv in v.items():
                    print(f"    {kk} = {vv}")
            elif k != "name":
                print(f"  {k} = {v}")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    return reproduce(args.profile, data_dir=args.data_dir, notebooks=args.notebooks,
                     report=not args.no_report, sets=parse_sets(args.set), settings=args.settings)


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    return bench_main(args)


def cmd_models(args) -> int:
    from .plan import DAMAGED, MISSING, NO_DATA, PARTIAL, TRAINED, build_plan, table
    # reads only: decodes, downloads and writes nothing
    items = build_plan(args.profile, args.notebooks, args.models_dir, args.data_dir, seed=args.seed,
                       sets=parse_sets(args.set))
    for line in table(items):
        print(line)
    n = Counter(it.state for it in items)
    print(f"{len(items)} models: {n[TRAINED]} trained, {n[PARTIAL]} partial, {n[MISSING]} missing, "
          f"{n[DAMAGED]} damaged, {n[NO_DATA]} without data", file=sys.stderr)
    return 0


def _positive(value: str, what: str, auto: bool = False) -> int | None:
    """`value` as a positive whole number (None for 'auto' where allowed), else ValueError."""
    if auto and value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{what} must be a positive whole number{' or auto' if auto else ''}, got {value!r}")
    return n


def cmd_train_all(args) -> int:
    from . import paths, scale
    from .plan import TRAINED
    sets = parse_sets(args.set)
    profile = get_profile(args.profile, sets)
    local = args.executor == "local"
    # what can be checked here is checked before any worker starts
    if local:
        runtime.device(args.device)
        requested = _positive(args.jobs, "--jobs", auto=True) or scale.default_jobs(args.device)
        # threads from the jobs asked for, not the models left: a rerun resumes a model with
        # the thread count it started with, so its weights stay those of an uninterrupted run
        threads = (_positive(str(args.threads), "--threads") if args.threads is not None
                   else scale.worker_threads(requested))
    else:
        opts = scale.slurm_options(args.slurm_config, profile.slurm, partition=args.partition, time=args.time,
                                   account=args.account, cpus_per_task=args.cpus_per_task,
                                   mem_gb=args.mem_gb, sbatch=args.sbatch)
        if not args.dry_run:
            scale.require_slurm()
    data = paths.data_dir(args.data_dir)
    if (args.data_dir is not None or os.environ.get("NSA_DATA_DIR")) and not data.is_dir():
        raise ValueError(f"data folder {data} does not exist; pass an existing --data-dir")
    items, todo, absent = _train_all_plan(args, sets, data)
    # Nothing of the plan can be had for want of data: no summary, no timings. A plan missing
    # only some data sets goes on (the notebooks say what they could not reproduce).
    if absent and len(absent) == len(items):
        return 2
    print(f"nsa: {len(items)} models in the plan: {sum(it.state == TRAINED for it in items)} trained, "
          f"{len(todo)} to train, {len(absent)} without data", file=sys.stderr)
    models = paths.models_dir(args.models_dir)
    logs = paths.resolve(args.logs) if args.logs else models / ".jobs"
    if not local:
        if args.dry_run:
            if todo:
                print(scale.sbatch_script(opts, logs, f"nsa-{profile.name}", len(todo)))
            return 0
        jobs = scale.submit_slurm(todo, opts, models, data, logs, f"nsa-{profile.name}")
        if not args.wait:
            print(f"nsa: {len(jobs)} jobs submitted; `python -m nsa_core models` shows their progress",
                  file=sys.stderr)
            return 0
        try:
            outcomes = scale.wait_for(jobs)
        except KeyboardInterrupt:
            print(f"nsa: stopped waiting; the {len(jobs)} jobs go on (scancel stops them)", file=sys.stderr)
            return 130
    else:
        outcomes = _train_locally(args, todo, requested, threads, models, data, logs,
                                  paths.results_dir() / profile.name)
        if outcomes is None:   # interrupted: one line each said so already
            return 130
    for line in scale.summary(outcomes, absent):
        print(line)
    return 0 if all(o.ok for o in outcomes) else 1


def _train_all_plan(args, sets, data) -> tuple[list, list, list]:
    """train-all's plan and its state: each data set it needs downloaded and decoded once, here,
    not in every worker (not for a dry run), and one line for each that cannot be had.
    Returns the plan's items, those to train and those without data."""
    from .plan import NO_DATA, build_plan, specs
    missing: dict[str, str] = {}
    if not args.dry_run:
        for dataset in sorted({s.recipe.dataset for s, _ in specs(args.profile, args.notebooks, args.seed, sets,
                                                                    data).values()} - {"synthetic"}):
            try:
                D.prepare(dataset, data)
            except D.DataMissing as e:
                missing[dataset] = str(e)
    items = build_plan(args.profile, args.notebooks, args.models_dir, data, seed=args.seed, sets=sets)
    todo = sorted((it for it in items if it.needs_training), key=lambda it: -it.work)   # longest first
    absent = [it for it in items if it.state == NO_DATA]
    for dataset in sorted({it.spec.recipe.dataset for it in absent}):   # one line per data set
        left = [it for it in absent if it.spec.recipe.dataset == dataset]
        print(f"nsa: {'error: cannot train' if len(absent) == len(items) else 'left out'} {len(left)} model(s) of "
              f"{dataset}: {missing.get(dataset, left[0].note)}", file=sys.stderr)
    return items, todo, absent


def _train_locally(args, todo, requested: int, threads: int, models, data, logs, results) -> list | None:
    """train-all's local workers: their outcomes, None when a signal stopped them."""
    from . import scale
    t0 = time.time()
    outcomes = scale.train_local(todo, min(requested, len(todo)), models, data, args.device, threads,
                                 logs) if todo else []
    if any(o.state == scale.INTERRUPTED for o in outcomes):
        return None
    if outcomes and all(o.ok for o in outcomes):
        # REPORT.md adds the plan's last training to every notebook's latest wall time: a call
        # that trained nothing (all cached) keeps the last one, a failed one writes none
        from .experiment import save_timings
        from .reproduce import TRAIN_ALL
        save_timings(results, {TRAIN_ALL: time.time() - t0})
    return outcomes


RELATIVE = "a relative path is taken from the repository root in a checkout, else from the working directory"
DATA_DIR_HELP = f"data folder (default $NSA_DATA_DIR, else data/; {RELATIVE})"
MODELS_DIR_HELP = f"model cache (default $NSA_MODELS_DIR, else results/models; {RELATIVE})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nsa_core",
                                description="Replication suite for 'Understanding and Exploring the "
                                            "Network with Stochastic Architectures' (NeurIPS 2020).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_commands(sub)
    _plan_commands(sub)
    return p


def _run_commands(sub) -> None:
    """train, reproduce, bench, profiles."""
    t = sub.add_parser("train", help="train or resume one model into the cache; prints its folder",
                       description="Train (or resume, or just find) one model of the model cache and print "
                                   "its folder. Values come from the profile; --set overrides any recipe "
                                   "or model-spec key.")
    t.add_argument("--kind", required=True, help=f"one of: {', '.join(KINDS)}")
    t.add_argument("--space", type=int, help="S, the training space size (default 500; fixed nets: 1)")
    t.add_argument("--recipe", choices=("understand", "explore"), default="understand",
                   help="the profile's recipe: understand (Secs. 3-4, default) or explore (Sec. 5); "
                        "--set semi=... takes the semi-supervised one")
    t.add_argument("--profile", help=f"one of: {', '.join(PROFILES)} (default $NSA_PROFILE or tiny)")
    t.add_argument("--data-dir", help=DATA_DIR_HELP)
    t.add_argument("--models-dir", help=MODELS_DIR_HELP)
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--seed", type=int, help="training seed (default 0)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one recipe or spec value, e.g. epochs=2 or seed=1; semi=consistency or "
                        "semi=labelled-only trains with the profile's semi-supervised recipe; repeatable")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reproduce", help="run the notebooks with papermill and write REPORT.md",
                       description="Run the notebooks (notebooks/NN_*.ipynb, all or --notebooks) headless in a "
                                   "profile; results go to results/<profile>/.")
    r.add_argument("--profile", help=f"one of: {', '.join(PROFILES)} (default $NSA_PROFILE or tiny)")
    r.add_argument("--data-dir", help=DATA_DIR_HELP)
    r.add_argument("--notebooks", nargs="+", help="numbers like 01 03 (default: all)")
    r.add_argument("--no-report", action="store_true", help="skip writing REPORT.md")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile value; repeatable")
    r.set_defaults(func=cmd_reproduce)

    b = sub.add_parser("bench", help="CPU benchmark of the NSA variants (make bench)",
                       description="Training throughput, batched-ensemble time and peak memory, side by side.")
    b.add_argument("--steps", type=int, default=16, help="timed steps per variant (median reported)")
    b.add_argument("--out", default="results/bench/cpu.csv", help="CSV output")
    b.set_defaults(func=cmd_bench)

    pr = sub.add_parser("profiles", help="show the profiles' values")
    pr.add_argument("name", nargs="?")
    pr.set_defaults(func=cmd_profiles)


def _plan_commands(sub) -> None:
    """models and train-all: the plan of the notebooks' models."""
    def plan_arguments(q: argparse.ArgumentParser) -> None:
        q.add_argument("--profile", help=f"one of: {', '.join(PROFILES)} (default $NSA_PROFILE or tiny)")
        q.add_argument("--notebooks", nargs="+", help="numbers like 01 03 (default: all)")
        q.add_argument("--data-dir", help=DATA_DIR_HELP)
        q.add_argument("--models-dir", help=MODELS_DIR_HELP)
        q.add_argument("--seed", type=int, default=0, help="the notebooks' SEED (default 0)")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile value, as for reproduce; repeatable")

    m = sub.add_parser("models", help="list the models the notebooks of a profile need, and their state",
                       description="Every model the chosen notebooks need: kind, S, spec key, state in the "
                                   "cache (trained, partial with the epochs reached, missing, damaged, no data) "
                                   "and folder. Reads only: decodes, downloads and writes nothing; a trained "
                                   "model gets the check every load makes.")
    plan_arguments(m)
    m.set_defaults(func=cmd_models)

    a = sub.add_parser("train-all", help="train every missing model of a profile, in parallel (submitit)",
                       description="Train what the plan of `models` lacks (missing, partial or damaged): N "
                                   "local worker processes, or one SLURM job array. A failed model does not stop "
                                   "the others; rerunning retries only what is missing. Ctrl-C or SIGTERM stops "
                                   "the workers at their next step (rerun to resume).")
    plan_arguments(a)
    a.add_argument("--executor", choices=("local", "slurm"), default="local")
    a.add_argument("--jobs", default="auto", help="local workers (default auto: one per GPU, else one per core)")
    a.add_argument("--threads", type=int, help="torch threads per local worker (default: the cores split between "
                                               "the workers, at most $OMP_NUM_THREADS)")
    a.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    a.add_argument("--logs", help="submitit's job folders (default <models-dir>/.jobs; removed after a model's "
                                  "success, kept for a failed one)")
    a.add_argument("--slurm-config", help="INI file with a [slurm] section (partition, time, account, ...)")
    a.add_argument("--partition", help="slurm partition")
    a.add_argument("--time", help="slurm time limit per job (minutes or D-HH:MM:SS; default: the profile's, "
                                  "`profiles NAME` shows it)")
    a.add_argument("--account", help="slurm account")
    a.add_argument("--cpus-per-task", type=int, help="slurm CPUs per job (default: the profile's)")
    a.add_argument("--mem-gb", type=float, help="slurm memory per job (default: the profile's)")
    a.add_argument("--sbatch", action="append", metavar="OPTION", help="extra sbatch option, e.g. --sbatch=--qos=high; repeatable")
    a.add_argument("--dry-run", action="store_true", help="slurm: print the job array's sbatch script, submit nothing")
    a.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print the summary")
    a.set_defaults(func=cmd_train_all)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the environment is read here, once: the library below takes what it needs as arguments
    if getattr(args, "profile", "") is None:
        args.profile = os.environ.get("NSA_PROFILE") or "tiny"
    try:
        args.settings = runtime.Settings.from_env()
        runtime.keep_freed_memory(args.settings)
        return args.func(args)
    except (KeyError, D.DataMissing, ValueError, FloatingPointError) as e:   # the last: a diverging run (lr too high)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nsa: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:   # the machine's failure (a full disk, no SLURM): what and where, in one line
        where = f": {e.filename}" if e.filename else ""
        print(f"nsa: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:   # SIGINT/SIGTERM: the trainer has written a checkpoint
        print(f"nsa: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
