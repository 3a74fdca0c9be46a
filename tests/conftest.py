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
