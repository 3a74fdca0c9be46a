"""Training: exact resume after SIGKILL and SIGTERM, damaged or foreign
checkpoints, non-finite losses, atomic saves, the model cache, the history, the learning-rate
schedule and the smoke data's learnability.

The resume tests run every training in its own process (forked from one subprocess that uses
one thread), so the interrupted, the resumed and the uninterrupted runs all use the same
kernels: on CPU their weights must be bit-identical."""
from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from nsa_core import cache as C
from nsa_core import checkpoint as CK
from nsa_core import kinds as K
from nsa_core import step as ST
from nsa_core import train as T
from nsa_core.config import ModelSpec, override
from nsa_core.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_profile("smoke")
# The smoke profile's kind of network, narrower and on less data (8 steps of 16 images per
# epoch, 3 epochs), so that each of the many runs below takes a few seconds.
SMALL = dict(width=0.25, synthetic_size=128, batch_size=16, test_size=64, epochs=3, eval_every=3)
STEPS = 128 // 16
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]

# Runs a list of jobs: "train" forks a child that trains (and may send itself a signal after
# global optimiser step `signal_at`), "truncate" cuts a file to half its bytes. After each
# job it records the child's exit code, its stderr, the folder's files and the progress stored
# in checkpoint.pt. Forking from one interpreter that has set one thread saves starting
# Python and torch for every run; every run, interrupted or not, is such a child.
RUNNER = r"""
import json, os, signal, sys, traceback
from pathlib import Path
import torch
import torch._dynamo  # the first optimiser imports it (seconds): once here, not in every child
torch.set_num_threads(1)
from nsa_core.config import ModelSpec
from nsa_core.train import train

def train_child(job, err):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code = 1
    try:
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        def on_step(step):
            if step == job.get("signal_at"):
                os.kill(os.getpid(), getattr(signal, job["signal"]))
        train(ModelSpec.from_json(job["spec"]), job["folder"], progress=False, on_step=on_step)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)

results = {}
for name, jobs in json.load(open(sys.argv[1])).items():
    for i, job in enumerate(jobs):
        folder = Path(job["folder"])
        err = folder.parent / f"{folder.name}.{i}.stderr"
        rc = None
        if job["do"] == "train":
            rc = train_child(job, err)
        else:
            blob = (folder / job["file"]).read_bytes()
            (folder / job["file"]).write_bytes(blob[: len(blob) // 2])
        try:
            p = torch.load(folder / "checkpoint.pt", weights_only=False)["progress"]
            progress = [p["epoch"], p["step"]]
        except Exception:
            progress = None
        results.setdefault(name, []).append(dict(
            rc=rc, stderr=err.read_text() if err.exists() else "", progress=progress,
            files=sorted(f.name for f in folder.iterdir()) if folder.exists() else []))
json.dump(results, open(sys.argv[2], "w"))
"""


def nsa_i() -> ModelSpec:
    return SMOKE.spec("nsa-i", space=5, **SMALL)


def wrn_dropout() -> ModelSpec:
    return SMOKE.spec("wrn-dropout", **SMALL)


def semi() -> ModelSpec:
    # 40 labelled images; the unlabelled rest, 88 images, sets 6 steps an epoch (the last of 8).
    return SMOKE.spec("nsa-id", space=3, semi="consistency", labelled=40, unlabelled=None,
                      **{**SMALL, "batch_size": 16})


SPECS = {"nsa-i": nsa_i, "wrn-dropout": wrn_dropout, "semi": semi}
# Test evaluations after these global steps: every 3 steps inside an epoch, and each epoch's end.
CURVE_STEPS = [3, 6, 8, 9, 12, 15, 16, 18, 21, 24]


def steps_per_epoch(spec: ModelSpec) -> int:
    r = spec.recipe
    return T.steps_per_epoch(r.synthetic_size - r.labelled if spec.semi else r.synthetic_size, r.batch_size)


def kill_points(seed: int, steps: int) -> tuple[int, int, int]:
    """Random steps inside epochs 1, 2 and 3, after at least one step of the epoch: work since
    the last checkpoint (none in epoch 1) is lost."""
    rng = random.Random(seed)
    return tuple(rng.randint(e * steps + 1, (e + 1) * steps - 1) for e in range(3))


def train_job(spec: ModelSpec, folder: Path, at: int | None = None, sig: str = "SIGKILL") -> dict:
    return dict(do="train", spec=spec.to_json(), folder=str(folder), signal_at=at, signal=sig)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """Every scenario, run once in one subprocess: name -> (folder, one record per job)."""
    tmp = tmp_path_factory.mktemp("runs")
    spec, k = nsa_i(), kill_points(1, STEPS)
    scenarios = {f"ref-{n}": [train_job(make(), tmp / f"ref-{n}")] for n, make in SPECS.items()}
    scenarios["epoch-ends-only"] = [train_job(override(spec, {"recipe.eval_every": None}), tmp / "epoch-ends-only")]
    scenarios["sigkill"] = [train_job(spec, tmp / "sigkill", k[0]), train_job(spec, tmp / "sigkill", k[1]),
                            train_job(spec, tmp / "sigkill")]
    for n in ("wrn-dropout", "semi"):
        s = SPECS[n]()
        at = kill_points(2, steps_per_epoch(s))[1]
        scenarios[f"sigkill-{n}"] = [train_job(s, tmp / f"sigkill-{n}", at), train_job(s, tmp / f"sigkill-{n}")]
    scenarios["sigterm"] = [train_job(spec, tmp / "sigterm", k[1], "SIGTERM"), train_job(spec, tmp / "sigterm")]
    scenarios["truncated"] = [train_job(spec, tmp / "truncated", k[2]),
                              dict(do="truncate", folder=str(tmp / "truncated"), file="checkpoint.pt"),
                              train_job(spec, tmp / "truncated")]
    jobs, out = tmp / "jobs.json", tmp / "results.json"
    jobs.write_text(json.dumps(scenarios))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", RUNNER, str(jobs), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return {n: (tmp / n, recs) for n, recs in json.loads(out.read_text()).items()}


def assert_same_run(folder: Path, ref: Path) -> None:
    a = torch.load(folder / "model.pt", weights_only=False)["model"]
    b = torch.load(ref / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ[:5]}"
    ha = pd.read_csv(folder / "history.csv").drop(columns="seconds")
    hb = pd.read_csv(ref / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(folder / T.CURVE), pd.read_csv(ref / T.CURVE), check_exact=True)


FINISHED = ["curve.csv", "history.csv", "manifest.json", "model.pt", "spec.json", "train.log"]


def test_reference_runs_finish(runs):
    for name in SPECS:
        folder, (rec,) = runs[f"ref-{name}"]
        assert rec["rc"] == 0, rec["stderr"]
        assert rec["files"] == FINISHED   # checkpoints are removed once model.pt is written


def test_test_curve_is_dense_and_changes_no_weight(runs):
    ref = runs["ref-nsa-i"][0]
    curve, hist = pd.read_csv(ref / T.CURVE), pd.read_csv(ref / "history.csv")
    assert list(curve.columns) == T.CURVE_COLUMNS and curve.step.tolist() == CURVE_STEPS
    ends = curve[curve.step % STEPS == 0]
    assert ends.test_acc.tolist() == hist.test_acc.tolist()   # the epoch-end points are the history's
    # Evaluations run in test mode on their own generator: without them the weights are the same.
    sparse = runs["epoch-ends-only"][0]
    a = torch.load(sparse / "model.pt", weights_only=False)["model"]
    b = torch.load(ref / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(sparse / T.CURVE).step.tolist() == [8, 16, 24]


def test_sigkill_in_epochs_1_and_2_then_resume_is_bit_identical(runs):
    folder, (kill1, kill2, resume) = runs["sigkill"]
    assert kill1["rc"] == -9 and kill1["files"] == ["spec.json", "train.log"], "no checkpoint before epoch 1 ends"
    assert kill2["rc"] == -9 and kill2["files"] == ["checkpoint.pt", "spec.json", "train.log"]
    assert kill2["progress"] == [1, 0]
    assert resume["rc"] == 0, resume["stderr"]
    assert resume["files"] == FINISHED
    assert "resumed from checkpoint.pt at epoch 1 step 0" in (folder / "train.log").read_text()
    assert_same_run(folder, runs["ref-nsa-i"][0])


@pytest.mark.parametrize("name", ["wrn-dropout", "semi"])
def test_sigkill_mid_epoch_2_then_resume_is_bit_identical(runs, name):
    # Dropout draws from torch's global RNG; the semi-supervised run also draws labelled
    # batches and second-view architectures: every stream must come back from the checkpoint.
    folder, (kill, resume) = runs[f"sigkill-{name}"]
    assert kill["rc"] == -9 and kill["progress"] == [1, 0]
    assert resume["rc"] == 0, resume["stderr"]
    assert_same_run(folder, runs[f"ref-{name}"][0])


def test_sigterm_mid_epoch_checkpoints_stops_and_resumes_bit_identical(runs):
    folder, (term, resume) = runs["sigterm"]
    k = kill_points(1, STEPS)[1]
    assert term["rc"] != 0 and "Interrupted" in term["stderr"]
    assert "model.pt" not in term["files"]
    # the checkpoint is of the step the signal came in at, not of the last epoch's end
    assert term["progress"] == [1, k - STEPS]
    log = (folder / "train.log").read_text()
    assert "stopped by signal" in log
    assert resume["rc"] == 0, resume["stderr"]
    assert f"resumed from checkpoint.pt at epoch 1 step {k - STEPS}" in log
    assert_same_run(folder, runs["ref-nsa-i"][0])


def test_truncated_checkpoint_is_named_and_never_used(runs):
    folder, (kill, _, resume) = runs["truncated"]
    assert kill["rc"] == -9 and kill["progress"] == [2, 0]
    assert "checkpoint.prev.pt" in kill["files"]
    ckpt = folder / "checkpoint.pt"
    assert resume["rc"] == 0, resume["stderr"]
    assert str(ckpt) in resume["stderr"]
    log = (folder / "train.log").read_text()
    assert f"checkpoint {ckpt} could not be read" in log
    assert "resumed from checkpoint.prev.pt at epoch 1 step 0" in log
    assert "resumed from checkpoint.pt" not in log
    assert_same_run(folder, runs["ref-nsa-i"][0])


def test_semi_history_has_a_consistency_column(runs):
    hist = pd.read_csv(runs["ref-semi"][0] / "history.csv")
    assert list(hist.columns) == HISTORY_COLUMNS + ["consistency"]
    assert hist.epoch.tolist() == [1, 2, 3]
    assert (hist.consistency > 0).all()


class _Stop(Exception):
    pass


class _Unpicklable:
    def __reduce__(self):
        raise _Stop


def test_checkpoint_of_another_spec_is_reported_and_not_used(tmp_path, capsys):
    other, spec = override(nsa_i(), {"recipe.epochs": 2, "seed": 1}), override(nsa_i(), {"recipe.epochs": 2})

    def stop_after_epoch_1(step):
        if step == STEPS + 1:
            raise _Stop

    with pytest.raises(_Stop):
        T.train(other, tmp_path / "other", progress=False, on_step=stop_after_epoch_1)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes((tmp_path / "other" / "checkpoint.pt").read_bytes())
    first = []

    def record(step):
        first.append(step)
        raise _Stop

    capsys.readouterr()
    with pytest.raises(_Stop):
        T.train(spec, folder, progress=False, on_step=record)
    assert first == [1], "the run must start from scratch, not from the foreign checkpoint"
    err = capsys.readouterr().err
    assert str(folder / "checkpoint.pt") in err and "another spec" in err
    assert "another spec" in (folder / "train.log").read_text()


def test_load_checkpoint_errors_name_the_file(tmp_path):
    spec = nsa_i()
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CK.CheckpointError, match=re.escape(str(bad))):
        CK.load_checkpoint(bad, spec)
    CK.atomic_save({"model": {}}, bad)
    with pytest.raises(CK.CheckpointError, match="not an nsa_core checkpoint"):
        CK.load_checkpoint(bad, spec)
    CK.atomic_save({"spec": override(spec, {"recipe.lr": 0.5}).to_json()}, bad)
    with pytest.raises(CK.CheckpointError, match="another spec"):
        CK.load_checkpoint(bad, spec)


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    spec = override(nsa_i(), {"recipe.lr": 1e30, "recipe.epochs": 1})
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+ of 8"):
        T.train(spec, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_atomic_save_leaves_only_the_file(tmp_path):
    path = tmp_path / "state.pt"
    CK.atomic_save({"x": torch.arange(3)}, path)
    CK.atomic_save({"x": torch.arange(4)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert torch.equal(torch.load(path)["x"], torch.arange(4))
    # a save that fails half-way keeps the old file and leaves no temporary behind
    with pytest.raises(_Stop):
        CK.atomic_save({"x": torch.arange(5), "bad": _Unpicklable()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert torch.equal(torch.load(path)["x"], torch.arange(4))


# ---------------------------------------------------------------------- model cache

@pytest.fixture(scope="module")
def smoke(smoke_model):
    """The session's NSA-i model of the smoke profile, trained through the model cache."""
    return smoke_model


def test_smoke_model_learns_the_synthetic_data(smoke):
    """A few dozen steps must clearly beat chance (10 classes)."""
    hist = smoke[3]
    assert hist.test_acc.iloc[-1] > 0.3, hist.to_string()


def test_history_has_one_row_per_epoch(smoke):
    spec, _, _, hist = smoke
    assert list(hist.columns) == HISTORY_COLUMNS
    r = spec.recipe
    assert hist.epoch.tolist() == list(range(1, r.epochs + 1))
    assert (hist.seconds > 0).all()
    spe = T.steps_per_epoch(r.train_size or r.synthetic_size, r.batch_size)
    last_lr = [r.lr * ST.lr_factor(r, e * spe - 1, spe) for e in hist.epoch]   # the epoch's last step
    assert hist.lr.tolist() == pytest.approx(last_lr)


def test_get_or_train_loads_a_finished_model_without_training(smoke, monkeypatch):
    spec, root, model, hist = smoke
    folder = C.model_dir(spec, root)
    assert folder.parent == root and folder.name.startswith(spec.key + "-")
    assert sorted(p.name for p in folder.iterdir()) == FINISHED
    assert ModelSpec.from_json((folder / "spec.json").read_text()) == spec
    assert not model.training

    def no_training(*args, **kwargs):
        raise AssertionError("a finished model must be loaded, not trained again")

    monkeypatch.setattr(C, "train", no_training)
    t0 = time.perf_counter()
    again, hist2 = C.get_or_train(spec, root, device="cpu", progress=False)
    assert time.perf_counter() - t0 < 5
    assert not again.training
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(hist, hist2, check_exact=True)


def test_model_cache_is_ignored_by_git():
    lines = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert lines & {"results/models", "results"}, "results/models must be in .gitignore"


# ---------------------------------------------------------------------- data, schedule

def test_step_schedule_multiplies_by_gamma_at_the_milestones():
    r = get_profile("paper").understand
    spe = T.steps_per_epoch(50000, 128)
    assert spe == 391   # the last, smaller batch is kept
    lr = lambda epoch, step=0: r.lr * ST.lr_factor(r, epoch * spe + step, spe)  # noqa: E731
    assert lr(0) == lr(89, spe - 1) == pytest.approx(0.1)
    assert lr(90) == lr(179, spe - 1) == pytest.approx(0.02)
    assert lr(180) == lr(239, spe - 1) == pytest.approx(0.004)
    assert lr(240) == lr(299, spe - 1) == pytest.approx(0.0008)


def test_linear_schedule_warms_up_then_decays_to_zero():
    spec = get_profile("tiny").spec("nsa-i", space=5, schedule="linear", warmup_epochs=0.5, epochs=6)
    spe = 40
    f = [ST.lr_factor(spec.recipe, s, spe) for s in range(6 * spe)]
    peak = int(0.5 * spe)
    assert all(0 < a < b for a, b in zip(f[:peak - 1], f[1:peak]))      # rises to 1
    assert f[peak - 1] == pytest.approx(1.0) and f[peak] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(f[peak:], f[peak + 1:]))            # then falls
    assert 0 < f[-1] < 0.01
    assert ST.lr_factor(spec.recipe, 6 * spe, spe) == 0.0


def test_rampup():
    assert ST.rampup(0.0) == pytest.approx(math.exp(-5))
    assert ST.rampup(1.0) == 1.0 and ST.rampup(2.0) == 1.0 and ST.rampup(-1.0) == ST.rampup(0.0)


def test_draw_archs():
    g = torch.Generator().manual_seed(0)
    per_batch = K.draw_archs("batch", 50, 10, 4, g)
    assert per_batch.shape == (10,)
    for s in (0, 4, 8):
        assert (per_batch[s:s + 4] == per_batch[s]).all()
    per_example = K.draw_archs("example", 50, 1000, 4, g)
    assert 0 <= per_example.min() and per_example.max() < 50 and len(per_example.unique()) > 40
    assert (K.draw_archs("fixed", 1, 7, 4, g) == 0).all()
