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


def test_load_path_opens_the_sources_page(page, server):
    page.goto(server + "/load")
    page.wait_for_selector("text=Precompute features")
    assert page.get_by_text("Page not found").count() == 0


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


def _boxes(pg, selector: str) -> list[dict]:
    return pg.evaluate(
        """s => [...document.querySelectorAll(s)].map(e => {
            const b = e.getBoundingClientRect();
            return {left: b.left, right: b.right, top: b.top, bottom: b.bottom,
                    width: b.width, text: e.innerText};
        })""",
        selector,
    )


def _check_nearest_chips(pg, tiny_ws) -> None:
    """All 8 nearest-by-decoder chips are shown whole inside their column."""
    near = tiny_ws.similar(3, k=8)
    group = _boxes(pg, '[data-testid="stButtonGroup"]')[0]
    buttons = [b for b in _boxes(pg, '[data-testid="stButtonGroup"] button') if "·" in b["text"]]
    shown = [b for b in buttons if b["top"] >= group["top"] and b["bottom"] <= group["bottom"]]
    assert len(shown) == len(near) == 8
    for b in shown:  # each chip whole, inside the column
        assert group["left"] - 1 <= b["left"] and b["right"] <= group["right"] + 1, (b, group)
    assert [b["text"].split(" ")[0] for b in shown] == [str(r["feature"]) for r in near]


def test_feature_page_at_800_px_keeps_tables_and_chips_in_their_column(page, server, tiny_ws):
    """Issue 12: at 800 px the summary and logit tables ran into the examples column, and
    the nearest-by-decoder chips were clipped at the column's edge."""
    pg = page.context.browser.new_page(viewport={"width": 800, "height": 1000})
    pg.set_default_timeout(STEP_MS)
    try:
        pg.goto(server + "/feature?feature=3")
        heading(pg, "Feature 3")
        pg.wait_for_selector(".fs-ex .fs-tok")
        chips = pg.locator('[data-testid="stButtonGroup"]').first
        chips.wait_for()
        pg.wait_for_timeout(600)
        pg.screenshot(path=str(ARTIFACTS / "feature-800px.png"), full_page=True)

        examples = _boxes(pg, ".fs-ex")
        tables = _boxes(pg, "table.fs-table")
        assert examples and len(tables) >= 4
        for t in tables:  # no table shares a horizontal band with the examples
            for e in examples:
                overlap_x = min(t["right"], e["right"]) - max(t["left"], e["left"])
                overlap_y = min(t["bottom"], e["bottom"]) - max(t["top"], e["top"])
                assert overlap_x <= 0 or overlap_y <= 0, (t, e)
        main = _boxes(pg, '[data-testid="stMainBlockContainer"]')[0]
        for t in _boxes(pg, ".fs-scroll"):
            assert t["right"] <= main["right"] + 1, t

        _check_nearest_chips(pg, tiny_ws)
    finally:
        pg.close()


def test_nearest_chips_are_all_shown(page, server, tiny_ws):
    """Issue 12: 8 nearest features are computed but about 5 showed, the fifth clipped."""
    page.goto(server + "/feature?feature=3")
    heading(page, "Feature 3")
    page.locator('[data-testid="stButtonGroup"]').first.wait_for()
    page.wait_for_timeout(400)
    _check_nearest_chips(page, tiny_ws)


def test_repeated_prompt_token_and_absolute_share_link(page, server, tiny_ws):
    page.goto(server + "/search?mode=prompt")
    page.locator('[data-testid="stTextArea"] textarea').fill(PROMPT)
    page.get_by_role("button", name="Find features").click()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    toks = tiny_ws.prompt_search(PROMPT, k=10).tokens
    first, second = [p for p, t in enumerate(toks) if t.strip() == "the"][:2]
    # the prompt's tokens (a repeated one carries a zero-width space), not the mode buttons
    # ("In the dataset")
    the = page.locator('[data-testid="stButtonGroup"] button').filter(
        has_text=re.compile(r"^the\u200b*$")
    )
    the.first.wait_for()
    assert the.count() == 2
    the.nth(0).click()
    page.get_by_text(f"Position {first}:").wait_for()
    the.nth(1).click()
    page.get_by_text(f"Position {second}:").wait_for()
    the.nth(1).click()  # a second click on the picked token deselects it
    page.get_by_text("Pick a token above.").wait_for()
    assert "q=the+cat" in page.url or "q=the%20cat" in page.url

    page.reload()  # the query is in the URL: the results come back
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    assert page.locator('[data-testid="stTextArea"] textarea').input_value() == PROMPT

    page.goto(server + "/feature?feature=3")
    heading(page, "Feature 3")
    page.get_by_role("button", name="Share").click()
    code = page.locator('[data-testid="stCode"] code').first
    code.wait_for()
    assert code.inner_text().strip().startswith(server + "/feature?feature=3&ws=")
