"""The benchmark code paths, at sizes that take seconds (the numbers themselves are not
tested: speed is measured by `make bench`, never asserted)."""
import pandas as pd

from nsa_core import bench


def test_gpu_bench_logic_runs_tiny_with_bf16_autocast_on_cpu(tmp_path, monkeypatch):
    """bench/gpu_check.sh's throughput code on any device: bf16 autocast through the stage
    function, on-device augmentation, finite losses, a CSV with both models."""
    monkeypatch.setenv("NSA_BENCH_TINY", "1")
    monkeypatch.setenv("NSA_COMPILE", "0")
    out = tmp_path / "gpu.csv"
    assert bench.gpu_main(out) == 0
    df = pd.read_csv(out)
    assert set(df.variant) == {"wrn-28-10-fixed", "nsa-id-S5"}
    assert (df[df.metric == "train_img_per_s"].value > 0).all()


def test_ensemble_times_agree(tmp_path):
    """The batched and separate ensemble evaluations give the same probabilities."""
    model, _ = bench.trainer("nsa-i", 20, bench.torch.device("cpu"), width=0.25, nodes=3)
    times, diff = bench.ensemble_times(model.eval(), reps=1, batch=8)
    assert diff < 1e-5 and set(times) == {"batched", "separate", "one_arch"}
