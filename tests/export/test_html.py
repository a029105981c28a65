"""Standalone HTML export: structure, escaping, size, and a real offline browser render."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.charts import COMPONENTS
from core.export import ExportError
from core.export.html import render_features_html, save_html, script_json
from tests.conftest import CHROMIUM as CHROMIUM_PATH
from tests.conftest import CHROMIUM_ARGS
from tests.export.tiny_setup import HOSTILE, PWNED, tiny_features

CHROMIUM = Path(CHROMIUM_PATH)


@pytest.fixture(scope="module")
def feats():
    fds, _ = tiny_features()
    return fds


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="fs-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


def test_script_json_cannot_break_out():
    text = script_json({"a": "</script><!-- <script>x</script> & \u2028", "b": ["<", ">"]})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["a"] == "</script><!-- <script>x</script> & \u2028"


def test_page_is_escaped_and_self_contained(feats, tmp_path):
    meta = {
        "title": PWNED,
        "labels": {feats[0].index: f"label {PWNED}"},
        "dataset": "<img src=x onerror=alert(1)>",
        "config": {"hook": "</script>"},
    }
    page = render_features_html(feats[:3], meta)
    # hostile strings appear only escaped (HTML entities) or inside escaped JSON
    outside = page.split('<script type="application/json" id="fs-data">')[0]
    assert PWNED not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in outside
    assert page.count("<script") == 4  # data, specs, packed library, page script
    assert page.lower().count("</script>") == 4
    assert "http://" not in outside and "https://" not in outside.replace(
        "https://vega.github.io/schema", ""
    )
    data = _data(page)
    # the hostile dataset tokens are in the token table, shown as text by the page script
    shown = {t[0] for t in data["tokens"]}
    assert PWNED in shown
    assert {h for h in HOSTILE if h in shown} >= {PWNED}
    assert [f["i"] for f in data["features"]] == [fd.index for fd in feats[:3]]
    assert data["labels"] == {str(feats[0].index): f"label {PWNED}"}
    # server-rendered fragments (tables) hold escaped text only
    for f in data["features"]:
        for frag in f["html"].values():
            assert "<script" not in frag.lower()
    # a picker with one option per feature
    assert page.count("<option ") == 3


def test_layout_selects_and_orders_components(feats):
    page = render_features_html(feats[:2], {}, ["top_examples", "summary", "top_examples"])
    data = _data(page)
    assert data["layout"] == ["top_examples", "summary"]
    rec = data["features"][0]
    assert set(rec["html"]) == {"summary"}
    assert "ah" not in rec and "iv" not in rec and "top" in rec
    with pytest.raises(ExportError, match="unknown dashboard component 'nope'"):
        render_features_html(feats[:1], {}, ["summary", "nope"])
    with pytest.raises(ExportError, match="no features"):
        render_features_html([], {})
    with pytest.raises(ExportError, match="given twice"):
        render_features_html([feats[0], feats[0]], {})
    single = render_features_html(feats[:1], {})
    assert 'id="fs-pick"' not in single


def test_page_does_not_depend_on_earlier_pages(feats):
    import core.export.html as html

    html._TEMPLATES.clear()
    alone = render_features_html(feats[2:4], {"title": "x"})
    html._TEMPLATES.clear()
    render_features_html(feats[:2], {"title": "x"})
    after = render_features_html(feats[2:4], {"title": "x"})
    assert after == alone


def test_size_per_feature(feats, tmp_path):
    one = save_html(tmp_path / "one.html", feats[:1], {"title": "one"})
    many = [feats[k % len(feats)] for k in range(50)]
    for k, fd in enumerate(many):  # 50 distinct indices, tiny-model data
        many[k] = type(fd).from_dict({**fd.to_dict(), "index": k})
    fifty = save_html(tmp_path / "fifty.html", many, {"title": "fifty"})
    per_one = one.stat().st_size
    per_fifty = fifty.stat().st_size / 50
    print(f"HTML bytes per feature: 1 feature {per_one:,}, 50 features {per_fifty:,.0f}")
    assert per_one < 500_000  # the shared chart library dominates a single-feature file
    assert per_fifty < 40_000
    assert not list(tmp_path.glob(".*.tmp-*"))  # atomic write left no temporary file


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium): browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path: Path):
    ctx = browser.new_context(offline=True)
    requests: list[str] = []

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    return ctx, page, requests, errors


MARKS = "section[data-component={}] svg .mark-rect path"


@pytest.mark.parametrize("js", ["gzip", "plain"])
def test_offline_browser_renders_charts_and_never_runs_tokens(browser, feats, tmp_path, js):
    with_pwned = [fd for fd in feats if any(PWNED in e.tokens for e in fd.top_examples)]
    assert with_pwned, "the tiny dataset should put the hostile token in some top examples"
    chosen = [with_pwned[0], *[fd for fd in feats if fd is not with_pwned[0]][:4]]
    note = f'**bold note** {PWNED} <img src=x onerror="window.__pwned=2">'
    meta = {"title": PWNED, "notes": {chosen[0].index: note}}
    path = save_html(tmp_path / f"page-{js}.html", chosen, meta, js=js)
    ctx, page, requests, errors = _open(browser, path)
    try:
        page.wait_for_selector(MARKS.format("act_hist"), timeout=30_000, state="attached")
        page.wait_for_selector(MARKS.format("logit_hist"), timeout=30_000, state="attached")
        n_act = page.locator(MARKS.format("act_hist")).count()
        n_logit = page.locator(MARKS.format("logit_hist")).count()
        assert n_act == len(chosen[0].act_hist.counts)
        assert n_logit == len(chosen[0].logit_hist.counts)
        # the hostile token is on the page as text and did not run
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert PWNED in page.inner_text("#fs-page")
        # a person's Markdown note: rendered, its raw HTML shown as text (never run)
        assert page.locator("#fs-page .fs-notes strong").inner_text() == "bold note"
        assert "onerror" in page.inner_text("#fs-page .fs-notes")
        assert page.locator("#fs-page .fs-notes img").count() == 0
        assert page.title() == PWNED
        # every component of the default layout, in order
        comps = page.eval_on_selector_all(
            "#fs-page section", "els => els.map(e => e.dataset.component)"
        )
        assert comps == COMPONENTS
        n_examples = len(chosen[0].top_examples)
        assert page.locator("section[data-component=top_examples] .fs-ex").count() == n_examples
        # hover details through the CSS tooltip
        q = page.locator("section[data-component=top_examples] .fs-tok.fs-q").first
        tip = q.locator(".fs-tip")
        assert not tip.is_visible()
        q.hover()
        tip.wait_for(state="visible", timeout=5_000)
        assert "activation" in tip.inner_text()
        # the picker switches features and the charts are rebuilt from that feature's data
        page.select_option("#fs-pick", "2")
        page.wait_for_function(
            f"document.documentElement.dataset.feature === '{chosen[2].index}'", timeout=10_000
        )
        page.wait_for_selector(MARKS.format("act_hist"), timeout=30_000, state="attached")
        assert page.evaluate("location.hash") == f"#feature={chosen[2].index}"
        heading = page.inner_text("#fs-page h2")
        assert heading == f"Feature {chosen[2].index}"
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert not errors, errors
        assert all(u.startswith("file:") for u in requests), requests
    finally:
        ctx.close()


def test_page_script_and_style_come_from_the_package_files(feats):
    """The page's JS and CSS are real files (core/export/static), inlined verbatim."""
    import importlib.resources

    static = importlib.resources.files("core.export") / "static"
    js = (static / "page.js").read_text(encoding="utf-8")
    css = (static / "page.css").read_text(encoding="utf-8")
    assert "render(" in js and "fs-picker" in css  # the real files, not empty stand-ins
    page = render_features_html(feats[:1], {})
    assert f"<script>{js}</script>" in page
    assert f"<style>{css}" in page
