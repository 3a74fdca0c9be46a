"""The command line, run as users run it: `python -m nsa_core ...` in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsa_core import cli
from nsa_core.profiles import get_profile
from nsa_core.cache import model_dir

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "reproduce", "bench", "profiles")


def nsa(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nsa_core", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m nsa_core " + command)


def test_train_help_documents_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--kind", "--space", "--recipe", "--profile", "--data-dir", "--models-dir", "--device", "--seed",
                   "--set"):
        assert option in out
    assert "nsa-id" in out and "smoke" in out


MISTAKES = [
    (["--profile", "huge", "--kind", "nsa-i"], "unknown profile 'huge'"),
    (["--profile", "smoke", "--kind", "nsa-x"], "unknown kind 'nsa-x'"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "dataset=foo"], "unknown data set 'foo'"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "epoch=4"], "unknown setting 'epoch'"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "epochs=four"], "epochs"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "epochs=4.5"], "epochs takes a whole number"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "epochs=0"], "epochs must be positive"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "width=0"], "width must be positive"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "batch_size=0"], "batch_size must be positive"),
    (["--profile", "smoke", "--kind", "nsa-i", "--device", "gpu"], "unknown device 'gpu'"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "epochs"], "key=value"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "kind=wrn"], "--kind"),
    (["--profile", "smoke", "--kind", "nsa-i", "--set", "semi=pseudo"], "semi-supervised mode 'pseudo'"),
    (["--profile", "smoke", "--kind", "wrn", "--space", "5"], "space must be 1"),
]


@pytest.mark.parametrize("args, words", MISTAKES)
def test_user_mistakes_are_one_line_and_exit_2(args, words, tmp_path, capsys):
    assert cli.main(["train", *args, "--models-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsa: error:") and words in lines[0], err
    assert out == ""
    assert not any(tmp_path.iterdir()), "nothing may be trained or written"


def test_user_mistake_from_the_shell_has_no_traceback(tmp_path):
    r = nsa("train", "--profile", "smoke", "--kind", "nsa-x", "--models-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["nsa: error: unknown kind 'nsa-x'; choose one of nsa, nsa-i, nsa-id, "
                                     "nsa-id-agg, wrn, wrn-dropout, single, residual"]
    assert r.stdout == "" and not any(tmp_path.iterdir())


def test_unknown_profile_name_for_profiles_command(capsys):
    assert cli.main(["profiles", "huge"]) == 2
    assert capsys.readouterr().err.startswith("nsa: error: unknown profile 'huge'")
    assert cli.main(["profiles", "smoke"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[smoke]") and "dataset = synthetic" in out and "[tiny]" not in out


def test_missing_data_offline_is_one_line_and_exit_2(tmp_path):
    # Downloads go through a proxy that refuses every connection, so this holds with or
    # without internet access.
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": "", "NO_PROXY": ""}
    empty = tmp_path / "data"
    empty.mkdir()
    r = nsa("train", "--kind", "nsa-i", "--profile", "tiny", "--data-dir", str(empty),
            "--models-dir", str(tmp_path / "models"), env=offline)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsa: error: data set 'cifar10'"), r.stderr
    assert str(empty) in lines[0] and "ImageFolder" in lines[0]


def test_set_reaches_the_spec():
    args = cli.build_parser().parse_args(
        ["train", "--kind", "nsa-id", "--profile", "smoke", "--set", "epochs=1", "--set", "space=7",
         "--set", "aux_weight=0.3", "--set", "seed=3", "--set", "milestones=(1,)"])
    spec = cli._spec_from_args(args)
    r = spec.recipe
    assert (r.epochs, spec.space, r.aux_weight, spec.seed, r.milestones) == (1, 7, 0.3, 3, (1,))
    args = cli.build_parser().parse_args(
        ["train", "--kind", "nsa-id", "--profile", "smoke", "--space", "3", "--set", "semi=consistency",
         "--set", "epochs=5", "--set", "batch_size=8"])
    spec = cli._spec_from_args(args)
    assert spec.semi == "consistency" and spec.space == 3
    assert (spec.recipe.epochs, spec.recipe.batch_size) == (5, 8)   # bare keys reach the semi recipe
    args = cli.build_parser().parse_args(["train", "--kind", "wrn", "--profile", "smoke"])
    assert cli._spec_from_args(args).space == 1


def test_recipe_picks_the_profiles_recipe(monkeypatch):
    # the profiles' understand and explore recipes coincide: tell them apart for the test
    monkeypatch.setattr(cli, "get_profile", lambda name: get_profile(name, {"explore.epochs": 9}))
    for recipe, epochs in (("understand", get_profile("smoke").understand.epochs), ("explore", 9)):
        args = cli.build_parser().parse_args(["train", "--kind", "nsa", "--profile", "smoke", "--recipe", recipe])
        assert cli._spec_from_args(args).recipe.epochs == epochs
    args = cli.build_parser().parse_args(["train", "--kind", "nsa", "--profile", "smoke"])
    assert cli._spec_from_args(args).recipe.epochs == get_profile("smoke").understand.epochs != 9


def test_the_environment_is_read_once_at_the_entry_point(monkeypatch, capsys):
    """NSA_PROFILE and runtime.Settings (NSA_STAGE, NSA_COMPILE, NSA_MALLOC) are read by
    cli.main and handed to the command; a bad value is one line and exit 2."""
    seen = []
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.append(args) or 0)
    monkeypatch.setenv("NSA_PROFILE", "smoke")
    monkeypatch.setenv("NSA_STAGE", "reference")
    monkeypatch.setenv("NSA_MALLOC", "0")
    assert cli.main(["train", "--kind", "nsa-i"]) == 0
    from nsa_core.runtime import Settings
    assert seen[-1].profile == "smoke" and seen[-1].settings == Settings(stage="reference", keep_freed=False)
    assert cli.main(["train", "--kind", "nsa-i", "--profile", "paper"]) == 0 and seen[-1].profile == "paper"
    monkeypatch.delenv("NSA_PROFILE")
    assert cli.main(["train", "--kind", "nsa-i"]) == 0 and seen[-1].profile == "tiny"
    monkeypatch.setenv("NSA_STAGE", "slow")
    capsys.readouterr()
    assert cli.main(["train", "--kind", "nsa-i"]) == 2 and len(seen) == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        "nsa: error: NSA_STAGE must be one of auto, fast, reference, got 'slow'"]


def test_train_smoke_prints_the_model_folder(tmp_path):
    r = nsa("train", "--profile", "smoke", "--kind", "nsa-i", "--space", "5", "--set", "epochs=1",
            "--set", "synthetic_size=256", "--models-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    spec = get_profile("smoke", {"epochs": 1, "synthetic_size": 256}).spec("nsa-i", space=5)
    folder = model_dir(spec, tmp_path)
    assert r.stdout.splitlines() == [str(folder)]
    assert (folder / "model.pt").exists() and (folder / "history.csv").exists()
    assert "test accuracy" in r.stderr


def test_diverging_run_is_one_error_line(tmp_path, capsys):
    args = ["train", "--profile", "smoke", "--kind", "nsa-i", "--space", "5", "--set", "lr=1e30",
            "--set", "epochs=1", "--set", "synthetic_size=256", "--models-dir", str(tmp_path)]
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]   # after the progress bar
    assert last.startswith("nsa: error: nsa-i: non-finite training loss at epoch 1, step")
    assert "--set lr=" in last and "Traceback" not in err and out == ""


def test_notebooks_get_folders_under_the_checkout_as_relative_paths(tmp_path):
    from nsa_core import paths
    from nsa_core.reproduce import for_notebooks

    root = paths.repo_root()
    assert for_notebooks(root / "results") == "results"
    assert for_notebooks(root / "results" / "tiny") == "results/tiny"
    assert paths.resolve(for_notebooks(root / "data")) == root / "data"
    assert for_notebooks(tmp_path) == str(tmp_path)   # outside the checkout: absolute
