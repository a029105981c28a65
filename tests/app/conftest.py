"""App test set-up: the tiny workspace is injected through the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FACTORY = "tests.app.fixtures:make_workspace"
ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="package")
def app_env(tmp_path_factory):
    """Point the app at the test workspace and a temporary memo directory (for the tests
    of this package only: the variables are restored afterwards)."""
    cache = tmp_path_factory.mktemp("featurescope-cache")
    env = {
        "FEATURESCOPE_TEST_WORKSPACE": FACTORY,
        "FEATURESCOPE_CACHE_DIR": str(cache / "memo"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="package")
def tiny_ws(app_env):
    """The same workspace the app builds (same seeds, same memo directory)."""
    from tests.app.fixtures import make_workspace

    return make_workspace()
