"""Faults a hostile but fair user meets: every bad input is one line and exit code 2, a
damaged or wrong cached model is never served, nothing cached is lost, and a stopped run
leaves clean files."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from nsa_core import cache as C
from nsa_core import checkpoint as CK
from nsa_core import cli
from nsa_core import data as D
from nsa_core import train as T
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
        other = spec.with_(seed=1)
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
    other = spec.with_(seed=1)
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
    ("empty_class", "is empty"), ("corrupt", "cannot be decoded"), ("truncated", "cannot be decoded"),
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
    spec = get_profile("smoke").spec("nsa-i", space=5, **dict(s.split("=") for s in SETS)).with_(epochs=3)
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:   # the checkpoint after epoch 2
            raise OSError(errno.ENOSPC, "No space left on device", str(getattr(f, "name", f)))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(CK.torch, "save", save)
    code, lines = run_cli(train_args(tmp_path, "--set", "epochs=3"), capsys)
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], lines
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
    D._write_cache(cache_dir / "test.pt", D.synthetic("test", 8))
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
    assert D.identity("cifar10", a) == D.identity("cifar10", a)   # from the fingerprint kept beside the cache


def test_resuming_with_another_thread_count_says_so(tmp_path, capsys):
    spec = get_profile("smoke").spec("nsa-i", space=5, **dict(s.split("=") for s in SETS)).with_(epochs=2)

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
