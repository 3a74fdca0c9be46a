"""Command line: `python -m nsa_core {train,reproduce,bench,profiles} ...`.

User mistakes (an unknown profile, kind, data set or --set key, missing data) print one line
and exit with code 2; they never show a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import data as D
from . import runtime
from .config import ModelSpec, convert, parse_sets
from .models import KINDS
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
    spec = get_profile(args.profile).spec(args.kind, semi=semi, **sets)
    if spec.recipe.dataset not in D.DATASETS:
        raise ValueError(f"unknown data set {spec.recipe.dataset!r}; choose one of {', '.join(D.DATASETS)}")
    return spec


def cmd_train(args) -> int:
    from .cache import get_or_train, model_dir
    spec = _spec_from_args(args)
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
            if isinstance(v, dict):
                print(f"  [{k}]" + ("  (the supervised recipe)" if k == "train" else "  (the semi-supervised recipe)"))
                for kk, vv in v.items():
                    print(f"    {kk} = {vv}")
            elif k != "name":
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
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one recipe or spec value (semi.KEY: the semi-supervised recipe); repeatable")
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
    runtime.keep_freed_memory()
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
