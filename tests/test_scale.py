"""train-all: two local workers give the weights of one-at-a-time training bit for bit; a
worker killed mid-way and the command run again finish the plan with the same weights; two
trainings of one spec give one training and one wait; the sbatch script names the resources
(one job array for several models).
Smoke profile made smaller still, two models (notebook 03's): seconds of training per model;
most of each test is the start of its processes."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from nsa_core import cache, plan, scale

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "03"
SIZES = {"epochs": 2, "synthetic_size": 512, "test_size": 64}
SETS = [a for k, v in SIZES.items() for a in ("--set", f"{k}={v}")]


# train-all records its wall time under the results folder: a scratch one, not the repository's
RESULTS = Path(tempfile.mkdtemp(prefix="nsa-scale-results-"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSA_MODELS_DIR", "NSA_DATA_DIR", "NSA_PROFILE")}
    return env | {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "NSA_RESULTS_DIR": str(RESULTS)} | extra


def _nsa(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "nsa_core", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _items(models: Path) -> list[plan.Item]:
    return plan.build_plan("smoke", [NOTEBOOK], models, sets=SIZES)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a.name}: {len(different)} tensors differ, first {different[0]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """The plan trained one model at a time in this process, with one thread: key -> folder."""
    root = tmp_path_factory.mktemp("one_at_a_time")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for it in _items(root):
            cache.get_or_train(it.spec, root, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    items = _items(root)
    assert len(items) == 2 and all(it.state == plan.TRAINED for it in items)
    return {it.key: it.folder for it in items}


def test_two_local_workers_match_one_at_a_time_training(tmp_path, reference):
    run = _nsa("train-all", "--profile", "smoke", "--notebooks", NOTEBOOK, *SETS, "--jobs", "2",
               "--models-dir", str(tmp_path), "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("thread(s)") == 2 and "worker 2/2, 1 thread(s)" in run.stderr
    assert run.stderr.count("] trained ") == 2
    assert "2 trained, 0 failed, 0 left out" in run.stdout
    assert not any((tmp_path / ".jobs").iterdir()), "job folders are removed after a successful run"
    assert json.loads((RESULTS / "smoke" / "timings.json").read_text())["train-all"] > 0   # for REPORT.md
    for it in _items(tmp_path):
        assert it.state == plan.TRAINED
        _assert_same_weights(it.folder, reference[it.key])


def _lock_holder(lock: Path) -> int | None:
    """The process that has `lock` open (the worker training that model), from /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == str(lock) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def _kill_a_worker_after_its_first_epoch(models: Path, run: subprocess.Popen) -> str:
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        for ckpt in models.glob("*/checkpoint.pt"):
            pid = _lock_holder(models / ".locks" / f"{ckpt.parent.name}.lock")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return ckpt.parent.name
        time.sleep(0.05)
    raise AssertionError("no worker reached its first checkpoint")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc")
def test_a_killed_worker_and_a_rerun_finish_the_plan_with_identical_weights(tmp_path, reference):
    args = ["train-all", "--profile", "smoke", "--notebooks", NOTEBOOK, *SETS, "--jobs", "2",
            "--models-dir", str(tmp_path), "--device", "cpu"]
    run = _nsa(*args, wait=False)
    killed = _kill_a_worker_after_its_first_epoch(tmp_path, run)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 1, err[-3000:]
    assert "FAILED" in err and "its last lines:" in err and "1 trained, 1 failed" in out
    states = {it.folder.name: it for it in _items(tmp_path)}
    assert states[killed].state == plan.PARTIAL and states[killed].epoch >= 1

    rerun = _nsa(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 to train" in rerun.stderr and "waiting for it" not in rerun.stderr   # the lock died with the worker
    assert "resumed from checkpoint" in (tmp_path / killed / "train.log").read_text()
    for it in _items(tmp_path):
        assert it.state == plan.TRAINED
        _assert_same_weights(it.folder, reference[it.key])


def test_two_trainings_of_one_spec_give_one_training_and_one_wait(tmp_path):
    # started together; the smoke profile's own sizes make the training (tens of seconds)
    # outlast the difference in the two processes' start-up
    args = ["train", "--kind", "nsa-i", "--space", "5", "--profile", "smoke", "--models-dir", str(tmp_path),
            "--device", "cpu"]
    runs = [_nsa(*args, wait=False) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in runs]
    assert [rc for _, _, rc in results] == [0, 0], results[1][1][-2000:]
    assert results[0][0] == results[1][0]                       # the same folder
    waited = ["waiting for it" in err for _, err, _ in results]
    assert sorted(waited) == [False, True], [err[-1500:] for _, err, _ in results]
    log = next(tmp_path.glob("*/train.log")).read_text()
    assert log.count(" start ") == 1 and log.count("finished") == 1


def test_sbatch_script_names_the_resources_and_the_command(tmp_path):
    config = tmp_path / "slurm.ini"
    config.write_text("[slurm]\npartition = gpu\naccount = lab\ntime = 1-00:00:00\nsetup = module load cuda\n")
    opts = scale.slurm_options(config, time="12:00:00", cpus_per_task=6, sbatch=["--qos=high --exclusive"])
    key = _items(tmp_path)[0].key
    text = scale.sbatch_script(opts, tmp_path / "jobs", f"nsa-{key}")
    lines = set(text.splitlines())
    for flag in ("--partition=gpu", "--account=lab", "--time=720", "--gpus-per-node=1", "--cpus-per-task=6",
                 "--ntasks-per-node=1", "--nodes=1", "--qos=high", "--exclusive", f"--job-name=nsa-{key}",
                 "--signal=USR2@120", "--mem=32GB"):   # memory: the default profile resources'
        assert f"#SBATCH {flag}" in lines, (flag, text)
    assert not any(line.startswith("#SBATCH --array") for line in lines)   # one model: one job
    array = scale.sbatch_script(opts, tmp_path / "jobs", "nsa-smoke", 7).splitlines()
    assert "#SBATCH --array=0-6%7" in array and f"#SBATCH --output={tmp_path}/jobs/%A_%a/%A_%a_0_log.out" in array
    assert "export OMP_NUM_THREADS=6" in lines and "module load cuda" in lines
    command = [line for line in text.splitlines() if "submitit.core._submit" in line]
    assert len(command) == 1 and command[0].startswith("srun ") and sys.executable in command[0]
    assert str(tmp_path / "jobs" / "%j") in command[0]
    with pytest.raises(ValueError, match="unknown slurm option"):
        (tmp_path / "bad.ini").write_text("[slurm]\ngpu = 2\n")
        scale.slurm_options(tmp_path / "bad.ini")
