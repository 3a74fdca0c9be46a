"""The machine a run uses: the device, the numeric precision, and `Settings` (the stage path,
torch.compile of the nodes, the process-wide memory setting). Nothing here runs at import.
The entry points (the CLI, a notebook's setup, `reproduce`, the benchmark, a train-all
worker) read the environment once into a Settings that they hand down; the library below
them reads no environment variable.
"""
from __future__ import annotations

import ctypes
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Mapping

import torch

from .network import WiredNet

STAGE_PATHS = ("auto", "fast", "reference")


@dataclass(frozen=True)
class Settings:
    """How this machine runs the suite (NSA_STAGE, NSA_COMPILE, NSA_MALLOC; the defaults when unset).

    stage: 'fast' (fast_stage's gathers), 'reference' (network.Stage's readable loop) or
      'auto': fast on the CPU, where `make bench` measured it 1.05x (a fixed wiring) to 1.37x
      (NSA-id) the reference; the reference on CUDA, where the two have not been compared
      (bench/gpu_check.sh times both).
    compile: '1' torch.compile every node, '0' not, 'auto' on CUDA only. The CPU's fast stage
      never calls the node modules; with the reference stage, compiled nodes cost about 20 s of
      compiling per model and were no faster (NSA-i S = 500, width 1, 4 nodes, batch 128, one
      thread, AMD EPYC, fp32: fast stage 324 img/s, reference 295, compiled nodes 286).
    keep_freed: the entry points let the process keep the memory it frees (keep_freed_memory)."""
    stage: str = "auto"
    compile: str = "auto"
    keep_freed: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGE_PATHS:
            raise ValueError(f"NSA_STAGE must be one of {', '.join(STAGE_PATHS)}, got {self.stage!r}")
        if self.compile not in ("auto", "0", "1"):
            raise ValueError(f"NSA_COMPILE must be 0, 1 or auto, got {self.compile!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(stage=env.get("NSA_STAGE", "auto"), compile=env.get("NSA_COMPILE", "auto"),
                   keep_freed=env.get("NSA_MALLOC", "1") != "0")

    def fast_stage(self, dev: torch.device) -> bool:
        return self.stage == "fast" or (self.stage == "auto" and dev.type == "cpu")

    def compiles(self, dev: torch.device) -> bool:
        return self.compile == "1" or (self.compile == "auto" and dev.type == "cuda")

    def as_env(self) -> dict[str, str]:
        """These settings as the variables a child process (a notebook kernel, a worker) reads."""
        return {"NSA_STAGE": self.stage, "NSA_COMPILE": self.compile, "NSA_MALLOC": "1" if self.keep_freed else "0"}

# glibc's own switches for the same setting, for processes this package does not start
# (papermill's kernels inherit the environment): no mmap for large blocks, no trimming.
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def device(name: str | torch.device | None = None) -> torch.device:
    """`name` checked ('cpu', 'cuda', 'cuda:1'), or CUDA when available, else the CPU.
    A device that does not exist here is the user's error: ValueError in one line."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {str(name)!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(name)!r}; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(name)!r}: only {torch.cuda.device_count()} CUDA devices here")
    return dev


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16). Elsewhere oneDNN
    emulates it, and bf16 autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def precision(dev: torch.device, asked: str = "auto") -> str:
    """'bf16' or 'fp32' for a run on `dev`: `asked`, or for 'auto' bf16 autocast on CUDA and
    on CPUs with native bf16 (the trainer's deliberate difference from the authors' fp32, for
    speed: about 2x on an AMX Xeon), fp32 elsewhere."""
    if asked != "auto":
        return asked
    return "bf16" if dev.type == "cuda" or native_bf16() else "fp32"


def autocast(dev: torch.device, asked: str = "auto") -> ContextManager:
    """The autocast context of `precision(dev, asked)`."""
    return torch.autocast(dev.type, dtype=torch.bfloat16) if precision(dev, asked) == "bf16" else nullcontext()


def compile_nodes(model: WiredNet, dev: torch.device, settings: Settings = Settings()) -> WiredNet:
    """torch.compile every operation node (conv, dropout, BN) in place when the settings say
    so. Only the nodes: which inputs a node aggregates is a host-side choice per batch, a
    Python branch that would recompile a whole-model graph."""
    if settings.compiles(dev):
        # one cache entry per (stage width, train/eval, grad mode, BN mode) the run meets
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for stage in model.stages:
            for node in stage.nodes:
                node.compile()
    return model


def keep_freed_memory(settings: Settings = Settings()) -> bool:
    """Let this process keep the memory it frees (glibc only; NSA_MALLOC=0 opts out); returns
    whether the setting was applied.

    glibc hands every freed block above 32 MiB (PyTorch's CPU tensors come straight from malloc)
    back to the OS, so the next one page-faults its way in again, 4 KiB at a time: at batch 128
    a training step took 12,000-24,000 page faults, and a 640-image forward cost 1.7x per image
    what a 128-image forward did (`make bench` shows the faults per step with and without). The
    process keeps its peak memory until it exits: only the entry points call this, never an import."""
    if sys.platform != "linux" or not settings.keep_freed:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    return True


def child_environment(settings: Settings = Settings()) -> dict[str, str]:
    """The environment for processes the suite starts (notebook kernels, workers): these
    settings, and the memory setting through glibc's tunables unless it is off."""
    env = {**os.environ, **settings.as_env()}
    if settings.keep_freed and "GLIBC_TUNABLES" not in env:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    return env
