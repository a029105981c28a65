"""Fixtures shared by the effects and steering tests: a 4-layer model and a token set."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_model, random_tokens


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waiting on shared cores (~20x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model4():
    return make_model(n_layers=4)


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(24, 16, seed=1)
