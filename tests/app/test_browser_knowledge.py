"""The knowledge store in a real browser: a label saved in one browser session shows in
another session's search by words."""

from __future__ import annotations

from tests.app.browser import streamlit_server
from tests.app.conftest import ARTIFACTS
from tests.conftest import CHROMIUM_ARGS

LABEL = "browserlabel fires on docstrings"


def test_label_in_one_session_found_by_words_in_another(chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit-server-knowledge.log"
    env = {"FEATURESCOPE_DB": str(tmp_path / "knowledge.db"), "FEATURESCOPE_AUTHOR": "ada"}
    with streamlit_server(tmp_path / "memo", log, env=env) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        one = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        one.set_default_timeout(120_000)
        one.goto(base + "/feature?feature=4")
        label = one.locator('input[aria-label="Label"]')
        label.wait_for()
        label.fill(LABEL)
        one.get_by_role("button", name="Save").click()
        one.get_by_text(f"Feature 4 · {LABEL}").wait_for()

        two = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        two.set_default_timeout(120_000)
        two.goto(base + "/search?mode=words&words=browserlabel")
        # the grid is drawn on a canvas; its cells are also in an (invisible) a11y table
        cells = two.locator('[data-testid="stDataFrame"] td[role="gridcell"]')
        cells.filter(has_text=LABEL).first.wait_for(state="attached")
        assert cells.first.inner_text() == "4"  # the one hit: feature 4
        two.screenshot(path=str(ARTIFACTS / "knowledge-search-by-words.png"))
        browser.close()
