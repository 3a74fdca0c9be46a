"""Command line: `python -m nsa_core {train,reproduce,bench,profiles} ...`.

User mistakes (an unknown profile, kind, data set or --set key, missing data) print one line
and exit with code 2; they never show a traceback.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from . import data as D
from .models import KINDS, ModelSpec
from .profiles import PROFILES, coerce, get_profile, parse_sets


def _spec_from_args(args) -> tuple[ModelSpec, object]:
    sets = parse_sets(args.set)
    spec_keys = {f.name for f in fields(ModelSpec)}
    profile_sets = {k: v for k, v in sets.items() if k not in spec_keys or k in
                    {f.name for f in fields(get_profile("paper"))}}
    profile = get_profile(args.profile, profile_sets)
    if args.kind not in KINDS:
        raise KeyError(f"unknown kind {args.kind!r}; choose one of {', '.join(KINDS)}")
    extra = {}
    spec_types = {f.name: str(f.type) for f in fields(ModelSpec)}
    for k, v in sets.items():
        if k in profile_sets:
            continue
        if k == "kind":
            raise KeyError("the kind is set with --kind, not --set kind=...")
        if spec_types[k].startswith("str") and v.lower() not in ("none", "null"):
            extra[k] = v      # e.g. semi=consistency: a bare word, not a Python literal
        else:
            extra[k] = coerce(v, getattr(ModelSpec(kind="nsa"), k), k)
    if args.space is not None:
        extra["space"] = args.space
    elif "space" not in extra and KINDS[args.kind][0] != "fixed":
        extra["space"] = 500
    if args.seed is not None:
        extra["seed"] = args.seed
    spec = ModelSpec.from_profile(profile, args.kind, **extra)
    if spec.dataset not in D.DATASETS:
        raise KeyError(f"unknown data set {spec.dataset!r}; choose one of {', '.join(D.DATASETS)}")
    return spec, profile


def cmd_train(args) -> int:
    from .train import model_dir, get_or_train
    spec, _ = _spec_from_args(args)
    folder = model_dir(spec, args.models_dir)
    model, hist = get_or_train(spec, args.models_dir, args.data_dir, args.device, progress=True)
    last = hist.iloc[-1]
    print(f"test accuracy {last.test_acc:.4f} (BN test mode, {spec.sampling} architectures) "
          f"after {int(last.epoch)} epochs, {hist.seconds.sum():.0f} s of training", file=sys.stderr)
    print(folder)
    return 0


def cmd_profiles(args) -> int:
    if args.name:
        get_profile(args.name)   # an unknown name is a KeyError, not an empty listing
    for name in PROFILES:
        if args.name and name != args.name:
            continue
        print(f"[{name}]")
        for k, v in get_profile(name).as_dict().items():
            if k != "name":
                print(f"  {k} = {v}")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    return reproduce(args.profile, data_dir=args.data_dir, notebooks=args.notebooks,
                     report=not args.no_report, sets=parse_sets(args.set))


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nsa_core",
                                description="Replication suite for 'Understanding and Exploring the "
                                            "Network with Stochastic Architectures' (NeurIPS 2020).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train or resume one model into the cache; prints its folder",
                       description="Train (or resume, or just find) one model of the model cache and print "
                                   "its folder. Values come from the profile; --set overrides any profile "
                                   "or model-spec key.")
    t.add_argument("--kind", required=True, help=f"one of: {', '.join(KINDS)}")
    t.add_argument("--space", type=int, default=None, help="S, the training space size (default 500; fixed nets: 1)")
    t.add_argument("--profile", default=None, help=f"one of: {', '.join(PROFILES)} (default $NSA_PROFILE or tiny)")
    t.add_argument("--data-dir", default=None, help="data folder (default $NSA_DATA_DIR, else ./data)")
    t.add_argument("--models-dir", default=None, help="model cache (default $NSA_MODELS_DIR, else results/models)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one value; repeatable")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reproduce", help="run the notebooks with papermill and write REPORT.md",
                       description="Run notebooks 01-08 headless in a profile; results go to results/<profile>/.")
    r.add_argument("--profile", default="tiny", help=f"one of: {', '.join(PROFILES)} (default tiny)")
    r.add_argument("--data-dir", default=None, help="data folder (default $NSA_DATA_DIR, else ./data)")
    r.add_argument("--notebooks", nargs="*", default=None, help="numbers like 01 03 (default: all)")
    r.add_argument("--no-report", action="store_true", help="skip writing REPORT.md")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile value; repeatable")
    r.set_defaults(func=cmd_reproduce)

    b = sub.add_parser("bench", help="CPU benchmark of the NSA variants (make bench)",
                       description="Training throughput, batched-ensemble time and peak memory, side by side.")
    b.add_argument("--steps", type=int, default=16, help="timed steps per variant (median reported)")
    b.add_argument("--out", default="results/bench/cpu.csv", help="CSV output")
    b.set_defaults(func=cmd_bench)

    pr = sub.add_parser("profiles", help="show the profiles' values")
    pr.add_argument("name", nargs="?", default=None)
    pr.set_defaults(func=cmd_profiles)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, D.DataMissing) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"nsa: error: {msg}", file=sys.stderr)
        return 2
    except (ValueError, FloatingPointError) as e:   # the latter: a diverging run (lr too high)
        print(f"nsa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # SIGINT/SIGTERM: the trainer has written a checkpoint
        print(f"nsa: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
