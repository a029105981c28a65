"""Shared fixtures: small real models and tokens, built by :mod:`tests.tiny`."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny import make_model, make_sae, random_tokens, write_hf_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Thread count changes BLAS blocking and so the rounding of every sum: the suite must pass
# with 1 thread (OMP_NUM_THREADS=1) and with 2; tolerances come from tests/tolerance.py.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

# The builders under the names some test modules still import from here (use tests.tiny).
write_tiny_hf_model = write_hf_model
__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "make_model", "make_sae", "write_tiny_hf_model"]


@pytest.fixture(scope="session")
def tiny_tokens():
    """24 sequences of 16 random tokens (seed 1) for :func:`tests.tiny.make_model`."""
    return random_tokens(24, 16, seed=1)


#: Debian's Chromium, driven by Playwright in the browser tests (its own download cannot work here)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
