"""Generic fixtures shared by the unit tests."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # no display on the build machines

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory):
    """The smoke profile's NSA-i model (S = 5), trained once per test session through the
    model cache: (spec, models folder, model, history). Tests must not change it."""
    from nsa_core import cache
    from nsa_core.profiles import get_profile

    spec = get_profile("smoke").spec("nsa-i", space=5)
    root = tmp_path_factory.mktemp("models")
    model, hist = cache.get_or_train(spec, root, device="cpu", progress=False)
    return spec, root, model, hist


def pytest_collection_modifyitems(items):
    """The smoke run of the whole suite (tests/test_notebooks.py) takes longest: it goes first,
    so that under `make test` (xdist, whole files per worker, in this order) one worker runs it
    while the other takes the unit tests."""
    items.sort(key=lambda item: item.path.name != "test_notebooks.py")
