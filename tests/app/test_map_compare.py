"""AppTest of the Map and Compare pages (through app.py, on the tiny test workspace)."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest

from core import compare as cmp
from core import feature_map as fm
from core import map_chart
from tests.app.conftest import run_app, texts
from tests.app.fixtures import make_workspace
from tests.tiny import HOOK, make_sae

pytestmark = pytest.mark.usefixtures("app_env")


def test_map_page_pca_find_and_umap_on_demand(tiny_ws, monkeypatch):
    at = run_app("pages/map.py")
    assert "PCA (fast) of 64 features" in texts(at.caption)
    assert len(at.get("vega_lite_chart")) == 1
    want = fm.feature_map(tiny_ws.dictionary, "pca", tiny_ws.memo)  # the memo's entry
    assert fm.stored_map(tiny_ws.dictionary, "pca", tiny_ws.memo) is not None
    assert want.n_features == 64

    at = run_app("pages/map.py", find="5", method="bogus")
    assert "Unknown map method 'bogus'" in texts(at.warning)
    assert at.number_input(key="fs_map_find").value == 5
    at.number_input(key="fs_map_find").set_value(7).run()
    assert at.query_params["find"] == "7"

    # the real UMAP is tested in tests/test_feature_map.py; here a stand-in keeps the
    # page's on-demand flow fast (no numba compilation)
    monkeypatch.setattr(fm, "umap_coordinates", lambda u, **kw: (u[:, 0].copy(), u[:, 1].copy()))
    at = run_app("pages/map.py", method="umap")
    assert "computed once for this dictionary" in texts(at.info)
    next(b for b in at.button if b.label == "Compute UMAP").click().run()
    assert not at.exception
    assert "UMAP (cosine) of 64 features" in texts(at.caption)
    assert fm.stored_map(tiny_ws.dictionary, "umap", tiny_ws.memo) is not None

    def boom(*args, **kwargs):
        raise AssertionError("UMAP computed twice")

    monkeypatch.setattr(fm, "umap_coordinates", boom)
    at = run_app("pages/map.py", method="umap")  # served from the memo at once
    assert "UMAP (cosine) of 64 features" in texts(at.caption)


def test_map_click_opens_the_feature(tiny_ws):
    at = run_app("pages/map.py")
    at.session_state["fs_map_chart"] = {"selection": {map_chart.SELECTION: [{"feature": 11}]}}
    at.run()
    assert "## Feature 11" in texts(at.markdown)


def test_map_chart_columns_and_pick():
    m = fm.FeatureMap(np.arange(3, dtype=np.float32), np.zeros(3, np.float32), "pca", {})
    table = fm.map_table(
        m,
        [0, 1, 2],
        {
            "feature": [0, 1, 2],
            "density": [0.0, 0.1, 0.2],
            "max_act": [0.0, 1.0, 2.0],
            "top_tokens": [[], ["a"], []],
        },
        labels={1: "<b>x</b>"},
    )
    assert map_chart.colour_options(table) == ["none", "density", "max_act", "label"]
    spec = map_chart.map_chart(table, "density", highlight=[2]).to_dict()
    text = json.dumps(spec)
    assert '"type": "log"' in text and map_chart.SELECTION in text
    assert map_chart.picked_feature({"selection": {map_chart.SELECTION: [{"feature": 2}]}}) == 2
    assert map_chart.picked_feature({"selection": {}}) is None
    with pytest.raises(ValueError, match="unknown colouring"):
        map_chart.map_chart(table, "rainbow")


def test_compare_page_and_link_round_trip(tiny_ws):
    at = run_app("pages/compare.py", features="1,2,3")
    heads = texts(at.markdown)
    for i in (1, 2, 3):
        assert f"[Feature {i}](feature?feature={i}&ws={tiny_ws.identity_key()}" in heads
    assert len(at.dataframe) == 2  # co-activation and decoder cosine
    want = cmp.compare(tiny_ws, [1, 2, 3])
    co = at.dataframe[0].value
    assert co.shape == (3, 3)
    np.testing.assert_allclose(
        np.asarray(co, float), np.asarray(want.coactivation, float), rtol=0, atol=0
    )

    at.text_input(key="fs_compare_list").input("4, 9").run()
    assert at.query_params["features"] == "4, 9"
    assert "[Feature 9]" in texts(at.markdown)

    for bad, needle in (("1,abc", "not a feature number"), ("1", "2 to 4"), ("1,99", "range")):
        at = run_app("pages/compare.py", features=bad)
        assert needle in texts(at.warning)

    # the feature page links here with its correlated features
    at = run_app("pages/feature.py", feature="3")
    fd = tiny_ws.feature(3)
    partners = [j for j in fd.correlated_features.indices if j != 3][:3]
    link = next(m for m in texts(at.markdown).splitlines() if "Compare side by side" in m)
    query = urllib.parse.parse_qs(link.split("compare?", 1)[1].rstrip(")"))
    assert query["features"] == [",".join(map(str, [3, *partners]))]
    at = run_app("pages/compare.py", **{k: v[0] for k, v in query.items()})
    assert f"[Feature {partners[0]}]" in texts(at.markdown)


def test_compare_nearest_in_another_loaded_dictionary(tiny_ws):
    from pages import _workspaces as workspaces

    other = make_workspace()  # the same model, another dictionary (40 features)
    sae = make_sae("standard", other.dictionary.d_in, 40, HOOK, seed=7)
    other.dictionary = type(other.dictionary)(sae, source={"kind": "test", "name": "wider"})
    workspaces.WORKSPACES.get("test-other-dictionary", lambda: other)
    try:
        at = run_app("pages/compare.py", features="2,6")
        at.selectbox(key="fs_compare_of").set_value(6).run()
    finally:
        workspaces.WORKSPACES.pop("test-other-dictionary")
    near = cmp.nearest_across(tiny_ws.dictionary, 6, other.dictionary, k=10)
    page = "\n".join(str(h.value) for h in at.get("html"))
    assert f"{near[0]['cosine']:.3f}" in page or f"{near[0]['cosine']:.2f}" in page
    assert f">{near[0]['feature']}<" in page


def test_search_results_link_to_compare(tiny_ws):
    at = run_app("pages/search.py", mode="similar", of="12")
    near = [r["feature"] for r in tiny_ws.similar(12, k=10)][:4]
    links = [m for m in texts(at.markdown).splitlines() if "side by side" in m]
    assert links, texts(at.markdown)
    query = urllib.parse.parse_qs(links[0].split("compare?", 1)[1].rstrip(")"))
    assert query["features"] == [",".join(map(str, near))]
