"""The CUDA path: skipped without a GPU; `bash bench/gpu_check.sh` runs them.
Mixed-architecture batches on CUDA, a bf16 smoke training run, on-device augmentation."""
from __future__ import annotations

import math

import pytest
import torch

from nsa_core import data as D
from nsa_core import runtime
from nsa_core import space as sp
from nsa_core import train as T
from nsa_core.network import NetConfig, WiredNet
from nsa_core.profiles import get_profile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_tf32():
    """Float32 convolutions and matmuls in full precision: TF32 (cuDNN's default for convs)
    rounds to 10 mantissa bits, and its algorithms differ between batch sizes."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("cfg", [dict(), dict(cond_agg=True, cond_bn=True, aux=True)], ids=["nsa-i", "nsa-id"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_cuda_mixed_arch_batch_equals_per_example(cfg, channels_last, fast, no_tf32):
    """Both stage paths (NSA_STAGE=auto runs the reference on CUDA; NSA_STAGE=fast fast_stage's)."""
    torch.manual_seed(0)
    model = WiredNet(sp.training_space(6, nodes=4, seed=0), NetConfig(width=0.5, nodes=4, **cfg), fast=fast).cuda()
    with torch.no_grad():   # BN statistics and NSA-id weights away from their initial values
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
        for name, p in model.named_parameters():
            if name.endswith(("cond_weight", "cond_bias")) or name == "agg":
                p.normal_(1.0 if name.endswith("cond_weight") else 0.0, 0.5)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    x = torch.randn(9, 3, 32, 32, device="cuda")
    arch = torch.tensor([0, 3, 1, 5, 2, 3, 0, 4, 5], device="cuda")
    with torch.no_grad():
        out, aux = model(x, arch, with_aux=True)
        for b in range(len(x)):
            ob, ab = model(x[b:b + 1], arch[b:b + 1], with_aux=True)
            torch.testing.assert_close(out[b:b + 1], ob, rtol=1e-4, atol=1e-4)
            if cfg.get("aux"):
                torch.testing.assert_close(aux[b:b + 1], ab, rtol=1e-4, atol=1e-4)
        assert (out - model(x, 0)).abs().amax() > 1e-3   # the architectures matter


def test_cuda_smoke_training_with_bf16_autocast(tmp_path):
    """The smoke profile's NSA-id trains on CUDA (bf16 autocast, channels_last; eager here,
    gpu_check.sh trains it compiled) and learns the synthetic data."""
    spec = get_profile("smoke").spec("nsa-id", space=3)
    model, hist = T.train(spec, tmp_path / "run", device="cuda", progress=False,
                          settings=runtime.Settings(compile="0"))
    assert next(model.parameters()).device.type == "cuda"
    assert "bf16" in (tmp_path / "run" / "train.log").read_text()
    assert hist.epoch.tolist() == list(range(1, spec.recipe.epochs + 1))
    assert all(math.isfinite(v) for v in hist.train_loss.tolist() + hist.test_loss.tolist())
    assert hist.train_loss.iloc[-1] < hist.train_loss.iloc[0]
    assert hist.test_acc.iloc[-1] > 0.3, hist.to_string()
    assert (tmp_path / "run" / "model.pt").exists()


def test_cuda_augment_is_deterministic_by_generator():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).cuda()

    def run(seed: int) -> torch.Tensor:
        return D.augment(x, torch.Generator(device="cuda").manual_seed(seed), cutout=16)

    a, b, c = run(5), run(5), run(6)
    assert a.device.type == "cuda" and a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
