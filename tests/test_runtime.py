"""The machine a run uses: devices checked in one line, and the precision that follows the
hardware (bf16 only where it is native), overridable."""
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
    assert get_profile("smoke", {"precision": "fp32"}).train.precision == "fp32"


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
