"""One configuration: how a model is trained (`Recipe`), which model it is (`ModelSpec`),
and the one typed path by which a value from the command line or a notebook overrides either.

Every hyper-parameter is written once, in `Recipe`, with the paper's value as its default.
A profile (profiles.py) holds a Recipe, a `ModelSpec` holds the Recipe it was trained with,
and the spec's hash names its folder in the model cache.
"""
from __future__ import annotations

import ast
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from .kinds import KINDS

# A field whose metadata says key=False changes how a run is carried out, not its result:
# it stays out of the cache key and out of the comparison with the paper's settings.
NOT_IN_KEY = {"key": False}
SEMI_MODES = ("consistency", "labelled-only")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. Defaults: the paper's (WRN-28-10's optimisation, 300 epochs)."""
    # data
    dataset: str = "cifar10"
    train_size: int | None = None        # class-balanced training subset; None = all images
    test_size: int | None = None         # evaluation subset (fixed shuffled order); None = all
    synthetic_size: int = 2048           # the synthetic data set only: training images
    # network
    width: float = 10.0                  # widening factor: stage widths 16w, 32w, 64w
    nodes: int = 8                       # operation nodes per stage
    dropout: float = 0.2                 # after each node conv, in the kinds that have dropout
    aux_weight: float = 0.1              # auxiliary head's loss weight; 0 = no auxiliary head
    # optimisation
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"               # "step": x gamma at milestones; "linear": warm-up, then linear to 0
    milestones: tuple[int, ...] = (90, 180, 240)
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    cutout: int = 16                     # side of the Cutout hole; 0 = none
    # semi-supervised runs only (ignored, and kept out of the key, otherwise)
    labelled: int = 4000
    unlabelled: int | None = None        # unlabelled images used; None = every other image
    consistency: float = 20.0            # weight of the consistency loss
    # numerics: "auto" = bf16 autocast on CUDA and on CPUs with native bf16 (AMX or
    # AVX512-BF16), fp32 elsewhere (where bf16 would be emulated, slower); or "fp32", "bf16"
    precision: str = "auto"
    # how the run is carried out
    eval_batch: int = field(default=500, metadata=NOT_IN_KEY)   # images per evaluation forward
    log_every: int = field(default=20, metadata=NOT_IN_KEY)     # steps between host syncs
    # Optimiser steps between extra test evaluations inside an epoch (the dense test curve,
    # curve.csv); None: only the evaluation at each epoch's end. Out of the key: evaluation
    # runs in test mode on its own generator, so the weights are the same either way.
    eval_every: int | None = field(default=None, metadata=NOT_IN_KEY)

    def __post_init__(self) -> None:
        for name in ("synthetic_size", "width", "nodes", "epochs", "batch_size", "lr", "labelled",
                     "eval_batch", "log_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("train_size", "test_size", "unlabelled", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)!r}")
        for name in ("momentum", "weight_decay", "warmup_epochs", "cutout", "aux_weight", "consistency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.schedule not in ("step", "linear"):
            raise ValueError(f"schedule must be 'step' or 'linear', got {self.schedule!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines one trained model: its kind, its training space, its seeds,
    whether it is semi-supervised, and its Recipe."""
    kind: str
    recipe: Recipe = Recipe()
    space: int = 1                 # S, the size of the training space (1 for a fixed wiring)
    arch_index: int = 0            # kind "single": which architecture of the space
    space_seed: int = 0
    seed: int = 0
    semi: str | None = None        # "consistency" or "labelled-only" (Sec. 5.3); None: supervised

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.semi is not None and self.semi not in SEMI_MODES:
            raise ValueError(f"unknown semi-supervised mode {self.semi!r}; choose one of {', '.join(SEMI_MODES)}")
        if self.space < 1:
            raise ValueError(f"space must be positive, got {self.space}")
        if KINDS[self.kind].wiring == "residual" and self.space != 1:
            raise ValueError(f"kind {self.kind!r} has a fixed wiring: space must be 1, got {self.space}")
        if KINDS[self.kind].wiring == "one" and not 0 <= self.arch_index < self.space:
            raise ValueError(f"arch_index {self.arch_index} is outside the space of {self.space}")

    @property
    def sampling(self) -> str:
        return KINDS[self.kind].sampling

    def identity(self) -> dict[str, Any]:
        """What names the model: every field that changes its weights."""
        d = asdict(self)
        semi_only = ("labelled", "unlabelled", "consistency")
        d["recipe"] = {f.name: d["recipe"][f.name] for f in fields(Recipe)
                       if f.metadata.get("key", True) and (self.semi or f.name not in semi_only)}
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return f"{self.kind}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        d["recipe"] = override(Recipe(), d.get("recipe", {}))
        return override(cls(kind=d.pop("kind"), recipe=d.pop("recipe")), d)


# ------------------------------------------------------------------ typed overrides

def parse_sets(items: list[str] | None) -> dict[str, str]:
    """['epochs=4', 'semi.epochs=2'] -> {'epochs': '4', 'semi.epochs': '2'} (typed by `override`)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def override(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """A copy of the dataclass `obj` with `values` applied, each converted to its field's
    declared type (strings as they come from `--set` or papermill). A dotted key
    'part.name' reaches into a nested dataclass field. Unknown keys and values of the wrong
    type raise ValueError naming the key as given (`prefix`: the dotted path to `obj`)."""
    if not values:
        return obj
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj) if f.init}
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if head not in known:
            raise ValueError(f"unknown setting {prefix + key!r}; known: {', '.join(sorted(known))}")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = convert(value, hints[head], prefix + key)
    for head, sub in nested.items():
        changes[head] = override(changes.get(head, getattr(obj, head)), sub, f"{prefix}{head}.")
    return replace(obj, **changes)


def convert(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint` (int, float, str, bool, tuple[X, ...], X | None, a dataclass)."""
    if type(None) in typing.get_args(hint):    # X | None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return convert(value, next(a for a in typing.get_args(hint) if a is not type(None)), key)
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return override(hint(), value) if hint is Recipe else hint(**value)
        raise ValueError(f"{key} takes a {hint.__name__}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            text = value.strip()
            try:
                value = ast.literal_eval(text) if text else ()
            except (ValueError, SyntaxError):
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = (value,)
        return tuple(convert(v, typing.get_args(hint)[0], key) for v in value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} takes a word, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} takes true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise ValueError(f"{key} takes a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} takes a number, got {value!r}")
        if hint is int:
            if float(value) != int(value):
                raise ValueError(f"{key} takes a whole number, got {value!r}")
            return int(value)
        return float(value)
    return value
