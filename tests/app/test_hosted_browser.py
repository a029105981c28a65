"""Hosted mode with login required, in a real browser: a visitor who is not signed in
sees the sign-in and nothing else, whatever address they open.

The server runs on the hosted site of ``tests/app/hosted_site.py`` with
``auth.required = true``; its ``[auth]`` secrets come from a temporary file given with
``--secrets.files`` (the repository's ``.streamlit/`` is never touched). A real OIDC
login cannot complete offline: the signed-in and refused-account cases are covered by
``tests/app/test_hosted_app.py``.

The first address a fresh server is asked for matters: Streamlit runs a page of the
``pages/`` folder by itself (without ``app.py``, so without the login gate) until some
run of ``app.py`` calls ``st.navigation``. The first visit below is therefore a deep
link, on a server nobody has opened yet.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.app.browser import streamlit_server
from tests.app.conftest import ARTIFACTS
from tests.app.hosted_site import AUTH, write_site
from tests.conftest import CHROMIUM_ARGS

STEP_MS = 60_000
# a deep link first (a fresh server), then every page, then again after the root has run
PATHS = ["/feature?feature=3", "/search", "/load", "/", "/search", "/feature?feature=3"]


@pytest.fixture(scope="module")
def site(chromium_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("hosted-browser")
    return root, write_site(root / "site", auth_required=True)


def secrets_file(path, auth: dict | None):
    """A secrets file with the ``[auth]`` section ``auth`` (none when ``None``)."""
    lines = ["[app]", 'name = "featurescope-test"', ""]
    if auth:
        lines += ["[auth]", *(f"{k} = {json.dumps(v)}" for k, v in auth.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def hosted_server(site, name: str, auth: dict | None):
    root, conf = site
    secrets = secrets_file(root / f"{name}-secrets.toml", auth)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return streamlit_server(
        root / f"{name}-memo",
        ARTIFACTS / f"streamlit-hosted-{name}.log",
        env={"FEATURESCOPE_HOSTED": str(conf), "FEATURESCOPE_TEST_WORKSPACE": ""},
        args=["--secrets.files", str(secrets)],
    )


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def visit(browser, url: str):
    """A fresh visitor (no cookies) opening ``url``; returns the page."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(STEP_MS)
    pg.goto(url)
    return pg


def settle(pg, *shown) -> None:
    """Wait until one of the locators ``shown`` (or the app's content, when the gate
    failed) is drawn and the script run is over."""
    content = pg.get_by_role("heading", name=re.compile(r"^(Feature \d+|Search|Sources)$"))
    either = content
    for loc in shown:
        either = either.or_(loc)
    either.first.wait_for()
    pg.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    pg.wait_for_timeout(800)


def assert_nothing_but_the_gate(pg, path: str) -> None:
    assert pg.get_by_role("button", name="Find features").count() == 0, path
    assert pg.get_by_role("heading", name="Feature 3").count() == 0, path
    assert pg.get_by_role("heading", name="Search").count() == 0, path
    assert pg.locator('[data-testid="stSidebarNavLink"]').count() == 0, path
    assert pg.locator('[data-testid="stSidebar"]').count() == 0, path
    assert pg.locator(".fs-ex").count() == 0, path  # no feature examples
    body = pg.locator("body").inner_text()
    for text in ("Tiny GPT-2", "Tiny SAE", "Precompute", "Sources"):
        assert text not in body, (path, text)


def test_signed_out_visitor_sees_only_the_sign_in(site, browser):
    with hosted_server(site, "auth", AUTH) as base:
        for n, path in enumerate(PATHS):
            pg = visit(browser, base + path)
            sign_in = pg.get_by_role("button", name="Sign in")
            settle(pg, sign_in)
            assert_nothing_but_the_gate(pg, path)
            assert sign_in.count() == 1, path
            assert "Sign in to use this server" in pg.locator("body").inner_text()
            if n == 0:
                pg.screenshot(path=str(ARTIFACTS / "hosted-sign-in.png"))
            pg.context.close()


def test_without_auth_secrets_the_operator_error_shows(site, browser):
    with hosted_server(site, "noauth", None) as base:
        for path in ("/search", "/", "/feature?feature=3"):
            pg = visit(browser, base + path)
            refusal = pg.get_by_text("no login provider is configured")
            settle(pg, refusal)
            assert refusal.count() == 1, path
            assert pg.get_by_role("button", name="Sign in").count() == 0, path
            assert_nothing_but_the_gate(pg, path)
            pg.context.close()
