"""The dictionary's map in the standalone HTML: only when one is stored, labels escaped."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from core import feature_map as fm
from core.dictionaries.saelens import SAELensDictionary
from core.export import ExportError
from core.export.html import render_features_html
from core.export.map_html import MAX_POINTS, MapExport, map_png_html, map_spec
from core.memo import Memo
from tests.export.test_html import _open, browser  # noqa: F401 (the offline browser fixture)
from tests.export.tiny_setup import tiny_features
from tests.tiny import HOOK, make_sae

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def dictionary() -> SAELensDictionary:
    return SAELensDictionary(make_sae("standard", 32, 64, HOOK, seed=3))


def _table(n: int, labels: dict[int, str] | None = None) -> dict[str, list]:
    fmap = fm.FeatureMap(np.arange(n, dtype=np.float32), np.ones(n, np.float32), "pca", {})
    return fm.map_table(fmap, list(range(n)), labels=labels)


@pytest.fixture(scope="module")
def feats():
    fds, _ = tiny_features()
    return fds[:2]


def _script(page: str, ident: str) -> dict:
    got = re.search(f'<script type="application/json" id="{ident}">(.*?)</script>', page, re.S)
    assert got is not None
    return json.loads(got.group(1))


def test_export_with_a_stored_map_draws_it_and_escapes_labels(feats):
    a, b = (fd.index for fd in feats)
    fmap = MapExport(_table(64, {a: HOSTILE, b: "plain"}), "pca", 64)
    page = render_features_html(feats, {"title": "t"}, feature_map=fmap)
    assert 'id="fs-map-chart"' in page and "64 features drawn" in page
    assert HOSTILE not in page and "<img" not in page  # the label travels as escaped JSON
    spec = _script(page, "fs-map")
    data = [row for values in spec["datasets"].values() for row in values]
    assert any(r["feature"] == a and r.get("label") == HOSTILE for r in data)
    rings = [layer for layer in spec["layer"] if layer["mark"].get("filled") is False]
    assert len(rings) == 1  # the exported features, ringed
    ringed = spec["datasets"][rings[0]["data"]["name"]]
    assert sorted(r["feature"] for r in ringed) == sorted([a, b])


def test_export_without_a_map_has_none(feats):
    page = render_features_html(feats, {"title": "t"})
    assert 'id="fs-map' not in page and "Map of the dictionary" not in page


def test_offline_browser_draws_the_map_and_a_click_opens_a_feature(browser, feats, tmp_path):  # noqa: F811
    a, b = (fd.index for fd in feats)
    table = _table(64, {a: HOSTILE})
    # the two exported features mid-chart (clear of its edges and the sticky header)
    table["x"] = [float(i + 8) for i in range(64)]
    table["y"] = [2.0 if i in (a, b) else float(i % 5) for i in range(64)]
    fmap = MapExport(table, "pca", 64)
    path = tmp_path / "map.html"
    path.write_text(render_features_html(feats, {"title": "t"}, feature_map=fmap))
    ctx, page, requests, errors = _open(browser, path)
    try:
        points = page.locator("#fs-map-chart g.mark-symbol").first.locator("path")
        points.nth(63).wait_for(state="attached", timeout=30_000)
        assert points.count() == 64  # one per drawn feature, in table order
        points.nth(a).hover(force=True)  # the label shows as text in the tooltip, never as markup
        tip = page.locator("#vg-tooltip-element")
        tip.wait_for(state="visible")
        assert HOSTILE in tip.inner_text() and tip.locator("img").count() == 0
        assert page.get_attribute("html", "data-feature") == str(a)
        points.nth(b).click(force=True)  # a click on a feature of the file opens it
        page.wait_for_selector(f"html[data-feature='{b}']")
        assert page.evaluate("window.__pwned") is None and not errors
        assert all(u.startswith("file:") for u in requests)
    finally:
        ctx.close()


def test_map_table_is_checked():
    with pytest.raises(ExportError, match="no y column"):
        MapExport({"feature": [0], "x": [0.0]}, "pca", 1)
    with pytest.raises(ExportError, match="draw_indices"):
        MapExport(_table(MAX_POINTS + 1), "pca", MAX_POINTS + 1)
    with pytest.raises(ExportError, match="differ in length"):
        MapExport({"feature": [0, 1], "x": [0.0], "y": [0.0, 1.0]}, "pca", 2)


def test_export_map_reads_a_stored_map_only(dictionary, tmp_path, monkeypatch):
    memo = Memo(tmp_path / "memo")
    assert fm.export_map(dictionary, memo) is None  # nothing stored: nothing computed
    assert fm.export_map(dictionary, None) is None
    calls: list[list[int]] = []
    monkeypatch.setattr(fm, "EXPORT_POINTS", 10)  # a stride of the 64 features, plus keep
    stored = fm.feature_map(dictionary, "pca", memo)
    got = fm.export_map(
        dictionary, memo, keep=[5, 63], labels=lambda shown: calls.append(shown) or {5: "five"}
    )
    assert got is not None and got.method == "pca" and got.n_features == 64
    shown = got.table["feature"]
    assert len(shown) <= 10 and {5, 63} <= set(shown) and calls == [shown]
    k = shown.index(63)
    assert got.table["x"][k] == pytest.approx(float(stored.x[63]))
    assert got.table["label"][shown.index(5)] == "five"
    spec = map_spec(got, [5, 6])
    (ring,) = [layer for layer in spec["layer"] if layer["mark"].get("filled") is False]
    assert [r["feature"] for r in spec["datasets"][ring["data"]["name"]]] == [5]  # 6 not drawn


def test_png_figure_is_an_image_with_escaped_text():
    fmap = MapExport(_table(16, {2: HOSTILE}), "umap", 16)
    fig = map_png_html(fmap, title='map of "<b>x</b>"')
    assert "<b>" not in fig and "&lt;b&gt;" in fig
    data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fig)
    assert data is not None
    assert base64.b64decode(data.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UMAP (cosine) of the decoder directions; 16 features drawn" in fig
