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
    """Point the app at the test workspace, a temporary memo directory and knowledge store
    (for the tests of this package only: the variables are restored afterwards)."""
    cache = tmp_path_factory.mktemp("featurescope-cache")
    env = {
        "FEATURESCOPE_TEST_WORKSPACE": FACTORY,
        "FEATURESCOPE_CACHE_DIR": str(cache / "memo"),
        "FEATURESCOPE_DB": str(cache / "knowledge.db"),  # never the project's cache/
        "FEATURESCOPE_AUTHOR": "tester",
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


# ---- helpers shared by the app test modules ------------------------------------------------------
def run_app(
    page: str | None = None,
    *,
    user: dict | None = None,
    secrets: dict | None = None,
    check: bool = True,
    **params: str,
):
    """``AppTest`` of ``app.py`` after one run: optionally on ``page``, as ``user`` (AppTest's
    ``st.user`` dict), with ``secrets`` and query ``params``; ``check`` asserts no exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (secrets or {}).items():
        at.secrets[k] = v
    if user is not None:
        at.user.clear()
        at.user.update(user)
    for k, v in params.items():
        at.query_params[k] = v
    if page:
        at.switch_page(page)
    at.run()
    if check:
        assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    """The values of AppTest elements, one per line."""
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture(scope="module")
def chromium_path():
    """Debian's chromium (Playwright's own download cannot work offline), or a skip."""
    from tests.app.browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip(
            "browser tests need Debian's chromium at /usr/bin/chromium: "
            "run `apt-get install -y chromium` (make test does it when missing)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need the playwright python package (requirements-dev.txt)")
    return path
