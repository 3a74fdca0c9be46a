"""Faults a hostile but fair user meets: every bad input is one line and exit code 2 (1 for a
failure of the machine), a damaged or wrong cached model is never served, changed data are
never served stale, nothing cached is lost, a stopped run leaves clean files and no process
behind, and a requeued job resumes bit for bit."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from nsa_core import cache as C
from nsa_core import checkpoint as CK
from nsa_core import cli
from nsa_core import data as D
from nsa_core import plan
from nsa_core import train as T
from nsa_core.config import override
from nsa_core.profiles import get_profile

SETS = ["epochs=1", "synthetic_size=128", "batch_size=32", "width=0.25", "test_size=64"]
BASE = ["train", "--profile", "smoke", "--kind", "nsa-i", "--space", "5"]


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main(args)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith("nsa-i S=")]


def train_args(models: Path, *extra: str) -> list[str]:
    return [*BASE, *[a for s in SETS for a in ("--set", s)], "--models-dir", str(models), *extra]


@pytest.fixture()
def trained(tmp_path, capsys):
    """A finished smoke model in a fresh cache: (models folder, its folder, the spec)."""
    code, _ = run_cli(train_args(tmp_path), capsys)
    assert code == 0
    spec = get_profile("smoke").spec("nsa-i", space=5, **dict(s.split("=") for s in SETS))
    folder = C.model_dir(spec, tmp_path)
    assert (folder / "manifest.json").is_file()
    return tmp_path, folder, spec


def _served(spec, models) -> torch.nn.Module:
    model, _ = C.get_or_train(spec, models, device="cpu", progress=False)
    return model


@pytest.mark.parametrize("harm", ["nan_weight", "flipped_byte", "foreign_model", "cut_history", "empty_history"])
def test_a_damaged_or_wrong_model_is_named_and_never_served(trained, capsys, harm):
    models, folder, spec = trained
    if harm == "nan_weight":
        state = torch.load(folder / "model.pt", weights_only=False)
        state["model"]["fc.weight"][0, 0] = float("nan")
        torch.save(state, folder / "model.pt")
    elif harm == "flipped_byte":
        blob = bytearray((folder / "model.pt").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (folder / "model.pt").write_bytes(bytes(blob))
    elif harm == "foreign_model":
        other = override(spec, {"seed": 1})
        C.get_or_train(other, models, device="cpu", progress=False)
        (folder / "model.pt").write_bytes((C.model_dir(other, models) / "model.pt").read_bytes())
    elif harm == "cut_history":
        text = (folder / "history.csv").read_text()
        (folder / "history.csv").write_text(text[: len(text) - 7])
    else:
        (folder / "history.csv").write_text("")
    capsys.readouterr()
    model = _served(spec, models)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa:")]
    assert len(err) == 1 and "is damaged" in err[0] and "training it again" in err[0], err
    named = "history.csv" if "history" in harm else "model.pt"
    assert named in err[0]
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    assert CK.damage(folder, spec, D.identity("synthetic", None, 128)) is None   # whole again


def test_a_copied_manifest_of_another_spec_is_caught(trained, capsys):
    models, folder, spec = trained
    other = override(spec, {"seed": 1})
    C.get_or_train(other, models, device="cpu", progress=False)
    for name in ("model.pt", "history.csv", "spec.json", "manifest.json"):
        (folder / name).write_bytes((C.model_dir(other, models) / name).read_bytes())
    capsys.readouterr()
    _served(spec, models)
    assert "names another spec" in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--device", "cuda"], "no CUDA device"),
    (["--device", "gpu"], "unknown device 'gpu'"),
])
def test_a_missing_device_is_the_users_error_and_never_a_retrain(trained, capsys, extra, words):
    models, folder, _ = trained
    if extra[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    code, lines = run_cli(train_args(models, *extra), capsys)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before   # untouched, not retrained


@pytest.mark.parametrize("setting, words", [
    ("epochs=0", "epochs must be positive"), ("epochs=-1", "epochs must be positive"),
    ("width=0", "width must be positive"), ("batch_size=0", "batch_size must be positive"),
])
def test_bad_settings_are_one_line_and_cache_nothing(tmp_path, capsys, setting, words):
    code, lines = run_cli([*BASE, "--set", setting, "--models-dir", str(tmp_path)], capsys)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert not list(tmp_path.glob("nsa-i-*"))


def _image_folder(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in range(10):
            folder = root / "cifar10" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (c * 20, i * 50, 7)).save(folder / f"{i}.jpg")
    return root


@pytest.mark.parametrize("harm, words", [
    ("empty_class", "has no images"), ("corrupt", "cannot be decoded"), ("truncated", "cannot be decoded"),
])
def test_bad_data_is_one_line_naming_the_file(tmp_path, capsys, harm, words):
    root = _image_folder(tmp_path / "data")
    victim = root / "cifar10" / "train" / "class3" / "1.jpg"
    if harm == "empty_class":
        for f in victim.parent.iterdir():
            f.unlink()
    elif harm == "corrupt":
        victim.write_bytes(b"\xff\xd8 this is no jpeg")
    else:
        victim.write_bytes(victim.read_bytes()[:60])
    code, lines = run_cli(["train", "--profile", "tiny", "--kind", "wrn", "--set", "train_size=None",
                           "--set", "test_size=None", "--data-dir", str(root),
                           "--models-dir", str(tmp_path / "m")], capsys)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    named = victim.parent if harm == "empty_class" else victim
    assert str(named) in lines[0]


def test_folders_that_cannot_be_used_are_one_line(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, lines = run_cli(train_args(a_file), capsys)
    assert code == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0], lines
    monkeypatch.setenv("NSA_RESULTS_DIR", str(a_file))
    code, lines = run_cli([*BASE, *[a for s in SETS for a in ("--set", s)]], capsys)
    assert code == 2 and len(lines) == 1 and f"{a_file}/models cannot be created (Not a directory)" in lines[0], lines
    monkeypatch.delenv("NSA_RESULTS_DIR")
    # read-only: root ignores permission bits, so the check itself is made to say no
    monkeypatch.setattr("nsa_core.paths.os.access", lambda path, mode: False)
    code, lines = run_cli(train_args(tmp_path / "ro"), capsys)
    assert code == 2 and len(lines) == 1 and "is not writable" in lines[0], lines


def test_a_full_disk_while_checkpointing_loses_nothing(tmp_path, capsys, monkeypatch):
    spec = get_profile("smoke").spec("nsa-i", space=5, **{**dict(s.split("=") for s in SETS), "epochs": 3})
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:   # the checkpoint after epoch 2
            raise OSError(errno.ENOSPC, "No space left on device", str(getattr(f, "name", f)))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(CK.torch, "save", save)
    code, lines = run_cli(train_args(tmp_path, "--set", "epochs=3"), capsys)
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], lines   # the machine's
    folder = C.model_dir(spec, tmp_path)
    state = CK.load_checkpoint(folder / "checkpoint.prev.pt", spec)     # the epoch-1 checkpoint still stands
    assert state["progress"]["epoch"] == 1
    assert not list(folder.glob(".*.tmp")) and (folder / "failed.txt").is_file()
    monkeypatch.setattr(CK.torch, "save", real_save)
    code, lines = run_cli(train_args(tmp_path, "--set", "epochs=3"), capsys)
    assert code == 0 and any("failed before" in line for line in lines)
    assert "resumed from checkpoint.prev.pt at epoch 1" in (folder / "train.log").read_text()
    assert not (folder / "failed.txt").exists()


def test_a_nan_in_a_checkpoint_discards_it(tmp_path):
    spec = get_profile("smoke").spec("nsa-i", space=5)
    path = tmp_path / "checkpoint.pt"
    CK.atomic_save({"spec": spec.to_json(), "model": {"w": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(CK.CheckpointError, match="non-finite values in w"):
        CK.load_checkpoint(path, spec)


def test_temporaries_of_killed_writers_are_removed(trained, capsys):
    models, folder, spec = trained
    for name in (".checkpoint.pt.123.tmp", ".model.pt.456.tmp"):
        (folder / name).write_bytes(b"half a file")
    (folder / "manifest.json").unlink()            # unfinished: the next call trains here
    T.train(spec, folder, progress=False)
    assert not list(folder.glob(".*.tmp"))
    cache = D.resolve_data_dir(models / "data")
    cache_dir = cache / "fashion-mnist" / ".nsa-cache"
    cache_dir.mkdir(parents=True)
    (cache_dir / ".test.pt.789.tmp").write_bytes(b"x" * 100)
    D._write_cache(cache_dir / "test.pt", D.synthetic("test", 8), D.Source("idx", cache_dir, {}))
    assert [p.name for p in cache_dir.iterdir()] == ["test.pt"]


def test_a_missing_data_dir_is_not_created(tmp_path, capsys, monkeypatch):
    import nsa_core.data as data
    monkeypatch.setattr(data, "_from_torchvision",
                        lambda name, split, root, download: (_ for _ in ()).throw(data.DataMissing("no copy")))
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataMissing):
        data.load("cifar10", "train", missing)
    assert not missing.exists()


def test_the_cache_key_includes_the_data(tmp_path):
    a = _image_folder(tmp_path / "a")
    b = _image_folder(tmp_path / "b")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(b / "cifar10" / "train" / "class0" / "0.jpg")
    spec = get_profile("tiny").spec("wrn", train_size=None, test_size=None)
    assert D.identity("cifar10", a) != D.identity("cifar10", b)
    assert C.model_dir(spec, tmp_path, a) != C.model_dir(spec, tmp_path, b)
    assert D.identity("cifar10", a) == D.identity("cifar10", a)   # the same listing


def test_resuming_with_another_thread_count_says_so(tmp_path, capsys):
    spec = get_profile("smoke").spec("nsa-i", space=5, **{**dict(s.split("=") for s in SETS), "epochs": 2})

    class Stop(Exception):
        pass

    def stop_in_epoch_2(step):
        if step == 6:
            raise Stop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(Stop):
            T.train(spec, tmp_path, progress=False, on_step=stop_in_epoch_2)
        torch.set_num_threads(2)
        capsys.readouterr()
        T.train(spec, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa:")]
    assert [line for line in lines if "threads" in line] == [
        "nsa: resuming with 2 threads where the run started with 1: the weights will match neither "
        "uninterrupted run bit for bit"]


def test_reproduce_usage_errors_and_interrupt(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--notebooks"])
    assert e.value.code == 2
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("NSA_PROFILE", "smoke")
    import papermill

    def interrupted(src, out, **kwargs):
        Path(out).write_text(json.dumps({"partial": True}))
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    capsys.readouterr()
    assert cli.main(["reproduce", "--notebooks", "03"]) == 130
    err = capsys.readouterr().err
    assert "interrupted in notebook 03_mode_collapse" in err and "(smoke)" in err
    assert (tmp_path / "smoke" / "executed" / "03_mode_collapse.ipynb").is_file()


# --------------------------------------------------------------------- Reliability v2
# One test (or one parametrised family) per finding of the hostile-user tries: stale data,
# killed train-all, listings that trust manifests, failures that were not one line, the
# command line's inconsistencies, SLURM's arrays and requeueing.

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "03"   # two models: quick to train, and two workers have one each
SIZES = {"epochs": 3, "synthetic_size": 1024, "test_size": 64}
PLAN_SETS = [a for k, v in SIZES.items() for a in ("--set", f"{k}={v}")]


def _env(results: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSA_MODELS_DIR", "NSA_DATA_DIR", "NSA_PROFILE")}
    return env | {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "NSA_RESULTS_DIR": str(results)} | extra


def _train_all(models: Path, *extra: str, **popen) -> subprocess.Popen:
    """`train-all` of notebook 03's two models at SIZES with two workers, as a user starts it."""
    cmd = [sys.executable, "-m", "nsa_core", "train-all", "--profile", "smoke", "--notebooks", NOTEBOOK,
           *PLAN_SETS, "--jobs", "2", "--device", "cpu", "--models-dir", str(models), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(models.parent / "results"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _items(models: Path):
    return plan.build_plan("smoke", [NOTEBOOK], models, sets=SIZES)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert wa.keys() == wb.keys() and not different, f"{a.name}: {len(different)} tensors differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """Notebook 03's models at SIZES, trained one at a time in this process on one thread, as
    the workers train them: key -> folder."""
    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for it in _items(root):
            C.get_or_train(it.spec, root, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    return {it.key: it.folder for it in _items(root)}


def _processes_naming(text: str) -> list[str]:
    """'pid cmdline' of every live process whose command line names `text` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmd and (proc / "stat").read_text().split(") ")[-1][0] != "Z":
                found.append(f"{proc.name} {cmd}")
        except OSError:
            continue
    return found


def _wait_for_checkpoints(models: Path, run: subprocess.Popen, count: int = 2) -> None:
    """Until `count` models have written their first checkpoint: their workers are training,
    with the trainer's signal handlers in place."""
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        if len(list(models.glob("*/checkpoint.pt"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the workers never reached a checkpoint: {run.communicate()[1][-2000:]}")


def _no_survivors(models: Path, within: float = 30.0) -> list[str]:
    deadline = time.time() + within
    while (alive := _processes_naming(str(models))) and time.time() < deadline:
        time.sleep(0.2)
    return alive


# 1. Stale data: the identity comes from the files themselves and every load checks it.

def test_changed_data_are_never_served_stale(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", per_class=3)
    train, test = data / "cifar10" / "train", data / "cifar10" / "test"
    args = ["train", "--profile", "smoke", "--kind", "wrn", "--set", "dataset=cifar10", "--set", "train_size=None",
            "--set", "test_size=None", "--set", "epochs=1", "--data-dir", str(data),
            "--models-dir", str(tmp_path / "m"), "--device", "cpu"]

    def train_cli():
        code = cli.main(args)
        out, err = capsys.readouterr()
        return code, out.strip(), [line for line in err.splitlines() if line.startswith("nsa")]

    code, first, _ = train_cli()
    assert code == 0
    (train / "class5" / "2.jpg").rename(train / "class6" / "7.jpg")   # an image moved to another class
    code, second, lines = train_cli()
    assert code == 0 and second != first, "the model of the old data was served"
    assert lines == ["nsa: data cache of cifar10/train is stale (1 file added, 1 removed); decoding again"]

    (train / "class9").rename(tmp_path / "class9")   # a class folder removed from train/
    code, _, lines = train_cli()
    assert code == 2 and lines == [f"nsa: error: the class folders of {train} and {test} differ (only in train: "
                                   "none; only in test: class9); both splits need the same class folders"]
    (tmp_path / "class9").rename(train / "class9")   # ...and restored: the model of these data again
    code, third, lines = train_cli()
    assert code == 0 and third == second and lines == []
    assert (Path(third) / "train.log").read_text().count(" start ") == 1   # served, not retrained

    (test / "class2").rename(test / "class2-renamed")   # a renamed test class: labels would shift
    code, _, lines = train_cli()
    assert code == 2 and len(lines) == 1 and "only in train: class2; only in test: class2-renamed" in lines[0]


# 2. Stopping train-all stops its workers: SIGKILL, SIGTERM and Ctrl-C.

@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the workers through /proc")
def test_killing_train_all_leaves_no_worker(tmp_path):
    models = tmp_path / "models"
    run = _train_all(models)
    _wait_for_checkpoints(models, run)
    workers = _processes_naming(str(models))
    assert len(workers) >= 4, workers   # two submitit controllers, two workers
    run.kill()   # SIGKILL: the parent gets no chance to stop anything
    run.communicate(timeout=60)
    alive = _no_survivors(models)
    print("\n".join(["processes naming the models folder before the kill:", *workers,
                     "after:", *(alive or ["(none)"])]))
    assert not alive, alive
    # each worker saw its parent go and stopped at a step boundary, with a checkpoint
    logs = [f.read_text() for f in models.glob("*/train.log")]
    assert len(logs) == 2 and all("stopped by signal 15" in log for log in logs), logs


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the workers through /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_train_all_stops_its_workers_and_a_rerun_resumes(tmp_path, reference, how):
    models = tmp_path / "models"
    run = _train_all(models, start_new_session=True)   # a process group of its own, as a terminal's job
    _wait_for_checkpoints(models, run)
    if how == "ctrl-c":   # the terminal sends SIGINT to every process of the foreground group
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.terminate()
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and not any(line.strip() == "nsa:" for line in err.splitlines())
    stopped = [line for line in err.splitlines() if line.startswith("nsa: interrupted")]
    names = {it.name for it in _items(models)}
    assert len(stopped) == 2 and {line[len("nsa: interrupted "):-len("; rerun to resume")] for line in stopped} == names
    assert out == "" and not _no_survivors(models)
    assert all(it.state == plan.PARTIAL for it in _items(models))

    rerun = _train_all(models)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    for it in _items(models):
        assert "resumed from checkpoint.pt" in (it.folder / "train.log").read_text()
        _assert_same_weights(it.folder, reference[it.key])
    assert not any((models / ".jobs").iterdir()), "the job folders of a successful run are removed"


# 3. `models` reads only, and checks what it lists as loading does; train-all retrains damage.

def test_models_reads_only_and_lists_damage_that_train_all_retrains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path / "results"))
    data = _image_folder(tmp_path / "data", per_class=3)
    sets = ["--set", "dataset=cifar10", "--set", "train_size=None", "--set", "test_size=None", "--set", "epochs=1"]
    where = ["--profile", "smoke", "--notebooks", NOTEBOOK, *sets, "--data-dir", str(data),
             "--models-dir", str(tmp_path / "m")]
    tree = lambda: {p: p.stat().st_mtime_ns for p in data.rglob("*")}  # noqa: E731
    before = tree()
    assert cli.main(["models", *where]) == 0
    assert "2 missing" in capsys.readouterr().err
    assert tree() == before, "models decoded or wrote in the data folder"

    assert cli.main(["train-all", *where, "--jobs", "1", "--device", "cpu"]) == 0
    items = plan.build_plan("smoke", [NOTEBOOK], tmp_path / "m", data,
                            sets={"dataset": "cifar10", "train_size": None, "test_size": None, "epochs": 1})
    victim = items[0].folder / "model.pt"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    capsys.readouterr()
    assert cli.main(["models", *where]) == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if items[0].key in line)
    assert " damaged " in row and "model.pt does not match its checksum" in row
    assert "1 trained, 0 partial, 0 missing, 1 damaged" in err
    assert victim.read_bytes() == bytes(blob), "models changed the damaged model"

    assert cli.main(["train-all", *where, "--jobs", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "1 trained, 1 to train" in err and f"trained {items[0].name}" in err
    assert cli.main(["models", *where]) == 0 and "2 trained" in capsys.readouterr().err


# 4. Every failure is one line: exit 2 for the user's, 1 for the machine's, checked up front.

class _FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes, as the OS reports it."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return len(b)


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    real_open = open

    def open_on_a_full_disk(path, mode="r", *a, **k):
        if str(path).endswith(".tmp") and "b" in mode:   # atomic_save's temporary files
            return io.BufferedWriter(_FullDisk(100_000))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(CK, "open", open_on_a_full_disk, raising=False)
    code, lines = run_cli(train_args(tmp_path), capsys)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("nsa: error: No space left on device: ") and lines[0].endswith(".pt")


def test_a_manifest_of_the_wrong_shape_is_damage(trained, capsys):
    models, folder, spec = trained
    (folder / "manifest.json").write_text(json.dumps({"spec": spec.to_json(), "data": "x", "files": []}))
    capsys.readouterr()
    _served(spec, models)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa:")]
    assert len(err) == 1 and "manifest.json is not a manifest (no table of files); training it again" in err[0]


def test_a_deleted_manifest_says_why_it_retrains(trained, capsys):
    models, folder, spec = trained
    (folder / "manifest.json").unlink()
    assert C.status(folder, spec, D.identity("synthetic", None, 128))[0] == C.DAMAGED
    capsys.readouterr()
    _served(spec, models)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa:")]
    assert err == [f"nsa: cached model {folder.name} is damaged: {folder / 'manifest.json'} is missing; "
                   "training it again"]


@pytest.mark.parametrize("extra, code, words", [
    (["--device", "cuda"], 2, "no CUDA device"),
    (["--threads", "-1"], 2, "--threads must be a positive whole number, got '-1'"),
    (["--jobs", "0"], 2, "--jobs must be a positive whole number or auto, got '0'"),
    (["--data-dir", "no/such/folder"], 2, f"data folder {ROOT / 'no/such/folder'} does not exist"),
    (["--executor", "slurm"], 1, "sbatch and srun not on PATH: --executor slurm runs where SLURM's commands are"),
])
def test_train_all_failures_are_one_line_before_any_worker(tmp_path, capsys, monkeypatch, extra, code, words):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch here
    got = cli.main(["train-all", "--profile", "smoke", "--notebooks", NOTEBOOK, "--models-dir",
                    str(tmp_path / "m"), *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code and len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "m" / ".jobs").exists() and not (tmp_path / "results").exists()


def test_train_all_without_its_data_exits_2_and_records_no_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(D, "_from_torchvision",
                        lambda name, split, root, download: (_ for _ in ()).throw(D.DataMissing(f"no copy of {name}")))
    (tmp_path / "empty").mkdir()
    got = cli.main(["train-all", "--profile", "tiny", "--notebooks", NOTEBOOK, "--data-dir", str(tmp_path / "empty"),
                    "--models-dir", str(tmp_path / "m")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == 2 and lines == ["nsa: error: cannot train 2 model(s) of cifar10: no copy of cifar10"]
    assert not (tmp_path / "results").exists()


# 5. The command line: one rule for relative paths, true help, unique progress lines, threads
# within OMP_NUM_THREADS, a wait that says it was one, job folders removed after success.

def test_help_texts_say_what_the_commands_do(capsys):
    for command in ("train", "reproduce", "models", "train-all"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "semi.KEY" not in out and "01-08" not in out
        assert "--data-dir" not in out or "taken from the repository root" in out
    code, lines = run_cli(train_args(Path("/nonexistent"), "--set", "semi.epochs=1"), capsys)
    assert code == 2 and "unknown setting 'semi.epochs'" in lines[0]


def test_a_relative_data_dir_means_one_folder_in_every_subcommand(tmp_path, capsys, monkeypatch):
    from nsa_core.paths import repo_root

    monkeypatch.chdir(tmp_path)   # not the repository root
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path / "results"))
    expected = repo_root() / "nowhere-relative"
    for args in (["reproduce", "--profile", "smoke", "--notebooks", "03"],
                 ["train-all", "--profile", "smoke", "--notebooks", "03", "--models-dir", str(tmp_path / "m")]):
        assert cli.main([*args, "--data-dir", "nowhere-relative"]) == 2
        assert f"data folder {expected} does not exist" in capsys.readouterr().err


def test_progress_lines_name_each_model_uniquely(tmp_path):
    from nsa_core import scale

    items = [it for stem in ("08_semisupervised", "09_nas_proxy")
             for it in plan.build_plan("smoke", [stem[:2]], tmp_path)]
    assert len({it.name for it in items}) == len(items)
    assert any("(labelled-only)" in it.name for it in items) and any(" #3 " in it.name for it in items)
    out = scale.Outcome(items[0], scale.WAITED, 14.0, test_acc=0.5)
    assert scale.progress_line(1, 2, out) == (f"nsa: [1/2] waited 14 s for another process, found {items[0].name} "
                                              "trained (test accuracy 0.5000)")


@pytest.mark.parametrize("omp, jobs, threads", [(None, 1, 2), ("1", 1, 1), ("8", 1, 2), ("1", 2, 1), (None, 4, 1)])
def test_threads_per_worker_obey_omp_num_threads(monkeypatch, omp, jobs, threads):
    from nsa_core import scale

    monkeypatch.setattr(scale, "cores", lambda: 2)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert scale.worker_threads(jobs) == threads


def test_a_model_another_process_trained_is_reported_as_waited_for(tmp_path, reference):
    models = tmp_path / "models"
    first, second = _items(models)
    models.mkdir()
    with C.model_lock(first.folder):   # this process trains the first model meanwhile
        run = _train_all(models)
        deadline = time.time() + 300
        while not any("waiting for it" in f.read_text() for f in models.glob(".jobs/*/*.err")):
            assert time.time() < deadline and run.poll() is None, run.communicate()[1][-2000:]
            time.sleep(0.1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            T.train(first.spec, first.folder, progress=False)
        finally:
            torch.set_num_threads(threads)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert f"found {first.name} trained (" in err and f"] trained {second.name} in " in err
    assert err.count("] trained ") == 1
    assert not any((models / ".jobs").iterdir())
    for it in (first, second):
        _assert_same_weights(it.folder, reference[it.key])


# 6. SLURM: one job array with the profile's resources; a requeued job resumes bit for bit.

def test_slurm_submits_one_job_array_with_the_profiles_resources(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSA_RESULTS_DIR", str(tmp_path / "results"))
    args = ["train-all", "--profile", "smoke", "--notebooks", NOTEBOOK, "--models-dir", str(tmp_path / "m"),
            "--executor", "slurm"]
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cli.main([*args, "--dry-run"]) == 0   # no SLURM needed to look
    script = capsys.readouterr().out
    for flag in ("--array=0-1%2", "--mem=4GB", "--time=15", "--cpus-per-task=1", "--signal=USR2@120"):
        assert f"#SBATCH {flag}\n" in script, (flag, script)
    assert "--gpus-per-node" not in script and script.count("#!/bin/bash") == 1

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(f"#!/bin/sh\n/bin/cp \"$1\" {tmp_path}/submitted-$$.sh\necho Submitted batch job 4242\n")
    (bin_ / "srun").write_text("#!/bin/sh\n")
    for cmd in ("sbatch", "srun"):
        (bin_ / cmd).chmod(0o755)
    assert cli.main([*args, "--mem-gb", "6"]) == 0
    submitted = list(tmp_path.glob("submitted-*.sh"))
    assert len(submitted) == 1, "one sbatch call: one array"
    text = submitted[0].read_text()
    assert "#SBATCH --array=0-1%2\n" in text and "#SBATCH --mem=6GB\n" in text
    jobs = (tmp_path / "m" / ".jobs" / "jobs.tsv").read_text().split()
    assert jobs[1::2] == ["4242_0", "4242_1"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc")
@pytest.mark.parametrize("event", ["time-limit", "preemption"])
def test_a_requeued_job_resumes_bit_identically(tmp_path, reference, event):
    import submitit

    from nsa_core import scale

    models = tmp_path / "models"
    item = _items(models)[0]
    # submitit's SignalHandler: a job counts as timed out once it ran min(80 %, limit - 10 min)
    # of its limit, at once for a limit of 10 minutes; else as preempted
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs" / "%j", max_num_timeout=2)
    executor.update_parameters(timeout_min=10 if event == "time-limit" else scale.LOCAL_TIMEOUT_MIN)
    with scale._environment(**_env(tmp_path)):
        job = executor.submit(scale._job(item, models, None, "cpu", 1, preemptible=True))
    deadline = time.time() + 300
    while not (item.folder / "checkpoint.pt").exists():
        assert time.time() < deadline and not job.done(), job.stderr()
        time.sleep(0.05)
    worker = _lock_holder(models / ".locks" / f"{item.folder.name}.lock")
    if event == "preemption":   # what `scancel --signal` delivers on preemption: SIGTERM, then USR2
        os.kill(worker, signal.SIGTERM)
    os.kill(worker, getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))
    assert job.result()["state"] == "trained", job.stderr()
    log = job.stdout() + job.stderr()
    assert f"this job is {'timed-out' if event == 'time-limit' else 'preempted'}" in log
    assert "Requeued job" in log
    if event == "preemption":   # SIGTERM stayed submitit's: it logs it and goes on
        assert "Bypassing signal SIGTERM" in log
    train_log = (item.folder / "train.log").read_text()
    assert train_log.count("stopped by signal") == 1 and "resumed from checkpoint.pt" in train_log
    _assert_same_weights(item.folder, reference[item.key])


def _lock_holder(lock: Path) -> int:
    """The process that has `lock` open (the worker training that model), from /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == str(lock) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process holds {lock}")
