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

import contextlib
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


# ---- forged logins (issue 11) --------------------------------------------------------------------
def forged_login(base: str, secret: str, claims: dict) -> dict:
    """The login cookie Streamlit would set after an OIDC sign-in with these identity-token
    ``claims``, signed offline with ``secret`` (Streamlit's own signer), as a Playwright
    cookie for ``base``."""
    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

    payload = json.dumps({**claims, "origin": base, "is_logged_in": True})
    value = create_signed_value(secret, "_streamlit_user", payload).decode()
    return {"name": "_streamlit_user", "value": value, "url": base}


def visit_as(browser, base: str, secret: str, claims: dict, path: str = "/"):
    ctx = browser.new_context(viewport={"width": 1300, "height": 900})
    ctx.add_cookies([forged_login(base, secret, claims)])
    pg = ctx.new_page()
    pg.set_default_timeout(STEP_MS)
    pg.goto(base + path)
    return pg


def test_forged_identities_the_provider_would_not_vouch_for_are_refused(site, browser):
    secret = AUTH["cookie_secret"]
    with hosted_server(site, "forged", AUTH) as base:
        # the forging works: a verified allowed identity gets the app
        pg = visit_as(browser, base, secret, {"email": "bob@team.example", "email_verified": True})
        settle(pg, pg.get_by_text("is not allowed on this server"))
        assert "Signed in as bob@team.example" in pg.locator("body").inner_text()
        pg.context.close()
        for claims, why in [
            ({"email": "evil@evil.org\n@team.example", "email_verified": True}, "not valid"),
            ({"email": "@team.example", "email_verified": True}, "empty local part"),
            ({"email": "bob@team.example", "email_verified": False}, "not verified"),
        ]:
            pg = visit_as(browser, base, secret, claims, "/feature?feature=3")
            refusal = pg.get_by_text("is not allowed on this server")
            settle(pg, refusal)
            assert refusal.count() == 1, claims
            assert why in pg.locator("body").inner_text(), claims
            assert pg.get_by_role("button", name="Sign out").count() == 1
            assert_nothing_but_the_gate(pg, str(claims))
            pg.context.close()


def test_the_shipped_example_secret_cannot_sign_anyone_in(site, browser):
    import tomllib

    from tests.app.conftest import ROOT

    example = tomllib.loads((ROOT / ".streamlit" / "secrets.example.toml").read_text())["auth"]
    with hosted_server(site, "example-secret", example) as base:
        claims = {"email": "alice@lab.example", "email_verified": True}
        for path in ("/", "/feature?feature=3"):
            pg = visit_as(browser, base, example["cookie_secret"], claims, path)
            refusal = pg.get_by_text("cannot offer a safe login")
            settle(pg, refusal)
            assert refusal.count() == 1, path
            assert "published value" in pg.locator("body").inner_text()
            assert_nothing_but_the_gate(pg, path)
            pg.context.close()


# ---- what a session may send (issue 11) ----------------------------------------------------------
def test_a_clear_cache_message_does_not_rebuild_the_shared_workspace(browser, tmp_path):
    """Any websocket client (here one that never signed in or ran a page) can send
    Streamlit's ``clear_cache``; the workspace other sessions use is not rebuilt."""
    import urllib.request

    from streamlit.proto.BackMsg_pb2 import BackMsg
    from websockets.sync.client import connect

    from tests.app.hosted_site import BUILDS_ENV

    builds = tmp_path / "builds.txt"
    builds.touch()
    env = {
        "FEATURESCOPE_TEST_WORKSPACE": "tests.app.hosted_site:counted_workspace",
        BUILDS_ENV: str(builds),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp_path / "memo", ARTIFACTS / "streamlit-clear-cache.log", env) as base:
        pg = visit(browser, base + "/feature?feature=3")
        settle(pg)
        pg.context.close()
        assert builds.read_text().count("built") == 1

        msg = BackMsg()
        msg.clear_cache = True
        ws_url = base.replace("http://", "ws://") + "/_stcore/stream"
        with connect(ws_url, subprotocols=["streamlit"], origin=base) as ws:
            ws.send(msg.SerializeToString())
            with contextlib.suppress(TimeoutError):
                while True:  # let the server handle it
                    ws.recv(timeout=2)

        pg = visit(browser, base + "/feature?feature=3")
        settle(pg)
        assert pg.get_by_role("heading", name="Feature 3").count() == 1
        pg.context.close()
        assert builds.read_text().count("built") == 1

        # the upload endpoint: no file is accepted, no foreign origin is allowed
        req = urllib.request.Request(
            base + "/_stcore/upload_file/s/f",
            method="OPTIONS",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            allowed = r.headers.get("Access-Control-Allow-Origin")
        assert allowed not in ("*", "https://evil.example")
