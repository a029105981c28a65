"""Shared fixtures: small real models and tokens, built by :mod:`tests.tiny`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from tests.tiny import prepare_process, random_tokens

prepare_process()  # offline hub; 1 or 2 torch threads (the tolerances hold for both)

# The app's memo (where precompute runs register and activations are kept) is the suite's
# own, never the project's cache/: tests must not see each other's runs across sessions.
_APP_HOME = tempfile.mkdtemp(prefix="fs-test-app-")
atexit.register(shutil.rmtree, _APP_HOME, True)
os.environ["FEATURESCOPE_CACHE_DIR"] = os.path.join(_APP_HOME, "memo")


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
