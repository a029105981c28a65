"""A background job in a real browser: the sidebar's bar follows the job, not the page run."""

from __future__ import annotations

import re
import time

from tests.app.browser import streamlit_server
from tests.app.conftest import ARTIFACTS
from tests.conftest import CHROMIUM_ARGS

SLOW = {"FEATURESCOPE_TEST_WORKSPACE": "tests.app.fixtures:make_slow_workspace"}


def test_sidebar_progress_advances_with_the_job(chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit-server-jobs.log"
    with streamlit_server(tmp_path / "memo", log, env=SLOW) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1050})
        pg.set_default_timeout(60_000)
        pg.goto(base + "/")
        pg.wait_for_selector("text=Precompute features", timeout=240_000)
        per_pass = pg.locator('input[aria-label="Features per pass"]')
        per_pass.fill("4")
        per_pass.press("Enter")
        pg.wait_for_timeout(500)
        pg.get_by_role("button", name="Compute").click()
        side = pg.locator('[data-testid="stSidebar"] [data-testid="stProgress"]')
        seen: set[int] = set()
        deadline = time.time() + 90
        while time.time() < deadline and len(seen) < 3:
            if side.count():
                m = re.search(r"(\d+)%", side.first.inner_text())
                if m:
                    seen.add(int(m.group(1)))
            pg.wait_for_timeout(300)
        browser.close()
    assert len(seen) >= 3, f"the sidebar bar showed only {sorted(seen)}"
