"""The app's multi-feature HTML download (Lists, search results) carries the stored map."""

from __future__ import annotations

import json

from core import feature_map as fm
from core.knowledge.access import shared_store
from core.memo import Memo
from pages import _export as export


def test_download_has_the_map_only_once_stored(tiny_ws, tmp_path, monkeypatch):
    # its own knowledge store and memo: nothing shared with the package's other tests
    monkeypatch.setenv("FEATURESCOPE_DB", str(tmp_path / "knowledge.db"))
    ws = type(tiny_ws)(
        tiny_ws.model,
        tiny_ws.dictionary,
        tiny_ws.tokens,
        tiny_ws.dataset,
        Memo(tmp_path / "memo"),
        tiny_ws.config,
    )  # fmt: skip  (its own memo: no map stored by other tests)
    evil = "<img src=x onerror=alert(1)> map label"
    shared_store().annotate(ws.dictionary_key(), 11, label=evil, author="tester")
    page = export.export_many(ws, [11, 12])
    assert 'id="fs-map' not in page  # no map stored: none drawn, none computed
    assert fm.stored_map(ws.dictionary, "pca", ws.memo) is None
    fm.feature_map(ws.dictionary, "pca", ws.memo)  # what the Map page stores
    page = export.export_many(ws, [11, 12])
    assert 'id="fs-map-chart"' in page and evil not in page
    spec = json.loads(page.split('id="fs-map">', 1)[1].split("</script>")[0])
    rows = [r for values in spec["datasets"].values() for r in values]
    assert any(r["feature"] == 11 and r.get("label") == evil for r in rows)
    assert len({r["feature"] for r in rows}) == ws.n_features
