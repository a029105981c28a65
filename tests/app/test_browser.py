"""End-to-end tests in a real browser: ``streamlit run app.py`` driven by Playwright.

The server runs the app on the injected tiny workspace with a temporary memo
directory. The browser is Debian's chromium (``apt-get install -y chromium``); without
it these tests are skipped with a message saying so. Screenshots of every page go to
``tests/artifacts/``.
"""

from __future__ import annotations

import re

import pytest

from tests.app.browser import streamlit_server
from tests.app.conftest import ARTIFACTS
from tests.app.fixtures import PROMPT
from tests.conftest import CHROMIUM_ARGS

FIRST_LOAD_MS = 240_000  # a cold server imports torch and builds the workspace
STEP_MS = 60_000


@pytest.fixture(scope="module")
def server(chromium_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp / "memo", ARTIFACTS / "streamlit-server.log") as base:
        yield base


@pytest.fixture(scope="module")
def page(server, chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1050})
        pg.set_default_timeout(STEP_MS)
        pg.goto(server + "/")  # warm up: the first session builds the shared workspace
        pg.wait_for_selector("text=Precompute features", timeout=FIRST_LOAD_MS)
        yield pg
        browser.close()


def shot(pg, name: str) -> None:
    pg.wait_for_timeout(400)  # let charts finish drawing
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def heading(pg, text: str) -> None:
    pg.get_by_role("heading", name=text, exact=True).wait_for()


def test_load_page(page, server):
    page.goto(server + "/")
    page.wait_for_selector("text=Precompute features")
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    for word in ("tiny-test", "64 features", "random words", "cpu"):
        assert word in side
    shot(page, "load")


def test_feature_deep_link_charts_examples_and_hover(page, server):
    page.goto(server + "/feature?feature=3")
    heading(page, "Feature 3")
    page.wait_for_selector(".fs-ex .fs-tok")
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    charts.nth(1).locator("svg .mark-rect path").first.wait_for(state="attached")
    assert charts.count() == 2
    fd_bins = charts.first.locator("svg .mark-rect path").count()
    assert fd_bins > 5
    assert charts.first.locator("svg").first.bounding_box()["height"] > 100
    tokens = page.locator(".fs-ex .fs-tok")
    assert tokens.count() > 20
    assert page.locator(".fs-tok.fs-q").count() >= 1

    tok = page.locator(".fs-ex .fs-tok.fs-q").first
    tip = tok.locator(".fs-tip")
    assert not tip.is_visible()
    tok.hover()
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert re.search(r"token '.*'", text)
    assert f"activation {tok.get_attribute('data-act')}" in text
    assert f"position {tok.get_attribute('data-pos')}" in text
    shot(page, "feature-hover")
    page.mouse.move(5, 5)
    shot(page, "feature")


def test_related_feature_link_and_bad_index(page, server):
    page.goto(server + "/feature?feature=3")
    heading(page, "Feature 3")
    link = page.locator(".fs-table a").first
    target = link.inner_text().strip()
    link.click()
    heading(page, f"Feature {target}")
    page.wait_for_selector(".fs-ex .fs-tok")
    assert f"feature={target}" in page.url

    page.goto(server + "/feature?feature=99999")
    page.get_by_text("Feature 99999 does not exist").wait_for()
    assert "(0-63)" in page.locator('[data-testid="stAlert"]').first.inner_text()
    shot(page, "feature-bad-index")
    box = page.get_by_placeholder("0–63")
    box.fill("2")
    box.press("Enter")
    heading(page, "Feature 2")
    page.wait_for_selector(".fs-ex .fs-tok")
    assert "feature=2" in page.url


def test_search_by_prompt(page, server, tiny_ws):
    page.goto(server + "/search")
    area = page.locator('[data-testid="stTextArea"] textarea')
    area.fill(PROMPT)
    page.get_by_role("button", name="Find features").click()
    grid = page.locator('[data-testid="stDataFrame"]')
    grid.first.wait_for()
    pills = page.locator('[data-testid="stButtonGroup"] button')
    pills.filter(has_text=re.compile(r"^ran$")).first.click()
    page.get_by_text("Position 10").wait_for()
    grid.nth(1).wait_for()  # the token's own table
    assert grid.count() == 2
    shot(page, "search")

    # clicking a result row opens that feature in this session
    expected = tiny_ws.prompt_search(PROMPT, k=10).top_overall[0]["feature"]
    box = grid.first.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # first row's selection cell
    heading(page, f"Feature {expected}")
    page.wait_for_selector(".fs-ex .fs-tok")
    assert f"feature={expected}" in page.url
