"""The machine a run uses: devices checked in one line, the precision that follows the
hardware (bf16 only where it is native), overridable, and the Settings that the entry points
read from the environment once and hand down."""
from __future__ import annotations

import pytest
import torch

from nsa_core import runtime
from nsa_core.config import Recipe
from nsa_core.profiles import get_profile

CPU = torch.device("cpu")


def test_precision_follows_the_hardware_and_the_recipe(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert runtime.precision(CPU) == "fp32"
    assert runtime.precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert runtime.precision(CPU) == "bf16"
    assert runtime.precision(CPU, "fp32") == "fp32"
    assert isinstance(runtime.autocast(CPU, "bf16"), torch.autocast)
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        Recipe(precision="fp16")
    p = get_profile("smoke", {"precision": "fp32"})
    assert p.understand.precision == p.explore.precision == p.semi.precision == "fp32"


def test_bf16_training_on_the_cpu_runs(tmp_path):
    from nsa_core import train as T
    spec = get_profile("smoke").spec("nsa-id", space=3, precision="bf16", epochs=1, synthetic_size=128,
                                     batch_size=32, width=0.25, test_size=64)
    model, hist = T.train(spec, tmp_path, progress=False)
    assert torch.isfinite(torch.tensor(hist.train_loss.tolist())).all()
    assert "bf16" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("name, words", [("gpu", "unknown device"), ("meta", "unsupported device")])
def test_devices_are_checked(name, words):
    with pytest.raises(ValueError, match=words):
        runtime.device(name)


def test_settings_are_read_from_the_environment_once_and_handed_to_children(monkeypatch):
    """NSA_STAGE, NSA_COMPILE and NSA_MALLOC are read by Settings.from_env at the entry points
    (the library reads no environment variable); a child process gets them back by as_env."""
    assert runtime.Settings.from_env({}) == runtime.Settings() == runtime.Settings("auto", "auto", True)
    s = runtime.Settings.from_env({"NSA_STAGE": "reference", "NSA_COMPILE": "1", "NSA_MALLOC": "0"})
    assert (s.stage, s.compile, s.keep_freed) == ("reference", "1", False)
    assert runtime.Settings.from_env(s.as_env()) == s
    env = runtime.child_environment(s)
    assert (env["NSA_STAGE"], env["NSA_COMPILE"], env["NSA_MALLOC"]) == ("reference", "1", "0")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert runtime.child_environment(runtime.Settings())["GLIBC_TUNABLES"] == runtime.GLIBC_TUNABLES
    assert "GLIBC_TUNABLES" not in runtime.child_environment(s)
    assert not runtime.keep_freed_memory(s)   # NSA_MALLOC=0 opts out
    # auto: the fast stage on the CPU, the reference on CUDA; compile on CUDA only
    auto = runtime.Settings()
    assert auto.fast_stage(CPU) and not auto.fast_stage(torch.device("cuda"))
    assert not auto.compiles(CPU) and auto.compiles(torch.device("cuda"))
    assert runtime.Settings(stage="fast").fast_stage(torch.device("cuda"))
    assert not runtime.Settings(stage="reference").fast_stage(CPU)
    assert runtime.Settings(compile="1").compiles(CPU) and not runtime.Settings(compile="0").compiles(torch.device("cuda"))
    with pytest.raises(ValueError, match="NSA_COMPILE must be 0, 1 or auto"):
        runtime.Settings.from_env({"NSA_COMPILE": "yes"})


def test_the_trainer_and_the_cache_run_the_stage_path_the_settings_choose(tmp_path):
    from nsa_core import cache as C
    from nsa_core.network import Stage

    spec = get_profile("smoke").spec("nsa-i", space=3, epochs=1, synthetic_size=128, batch_size=32, width=0.25,
                                     test_size=64)
    fast = lambda m: {s.fast for s in m.modules() if isinstance(s, Stage)}  # noqa: E731
    model, _ = C.get_or_train(spec, tmp_path, device="cpu", progress=False,
                              settings=runtime.Settings(stage="reference"))
    assert fast(model) == {False}
    again, _ = C.get_or_train(spec, tmp_path, device="cpu", progress=False, settings=runtime.Settings())
    assert fast(again) == {True}   # 'auto' on the CPU: loaded, then switched to the fast path
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
