"""Where things live: one rule for every folder of the suite.

A folder comes from the caller's argument, else from its environment variable
(NSA_DATA_DIR, NSA_RESULTS_DIR, NSA_MODELS_DIR), else from its default. A relative path
resolves against the repository root when the package runs from a checkout, so a notebook in
notebooks/ and a shell in the root mean the same folder; an installed package resolves it
against the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder holding pyproject.toml above this file; the working directory when the
    package is installed without its repository."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file() and (folder / "nsa_core").is_dir():
            return folder
    return Path.cwd()


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def _chosen(given: str | Path | None, variable: str, default: str | Path) -> Path:
    return resolve(given if given is not None else os.environ.get(variable) or default)


def data_dir(given: str | Path | None = None) -> Path:
    """The data folder: `given`, else $NSA_DATA_DIR, else <repo>/data."""
    return _chosen(given, "NSA_DATA_DIR", "data")


def results_dir(given: str | Path | None = None) -> Path:
    """The results folder: `given`, else $NSA_RESULTS_DIR, else <repo>/results."""
    return _chosen(given, "NSA_RESULTS_DIR", "results")


def models_dir(given: str | Path | None = None, results: Path | None = None) -> Path:
    """The model cache: `given`, else $NSA_MODELS_DIR, else <results>/models (`results`: the
    results folder, by default results_dir())."""
    return _chosen(given, "NSA_MODELS_DIR", (results or results_dir()) / "models")


def writable_folder(path: Path, what: str) -> Path:
    """`path` created if missing; ValueError in one line when it cannot be (a file in the
    way, no permission)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be created ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable")
    return path


def pick_numbered(numbers: list[str], stems: list[str]) -> list[str]:
    """The notebook stems ('01_bn_disparity', ...) that `numbers` name ('01', '1' or a full
    stem), sorted, each once; KeyError naming the choices for one that matches none."""
    by_number = {stem[:2]: stem for stem in stems}
    picked = set()
    for item in numbers:
        key = item.split("_", 1)[0]
        key = f"{int(key):02d}" if key.isdigit() else key
        if key not in by_number:
            raise KeyError(f"no notebook numbered {item!r}; choose from {', '.join(sorted(by_number))}")
        picked.add(by_number[key])
    return sorted(picked)
