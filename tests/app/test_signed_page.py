"""A signed dictionary (given directions) on the Feature page and in the HTML export: the most
positive and the most negative examples, negative values shaded in their own colour; a
non-negative SAE's page has neither heading."""

from __future__ import annotations

import html

import pytest

from core import charts
from core.export.html import render_features_html
from tests.app.conftest import run_app
from tests.app.test_apptest import html_text

FACTORY = "tests.app.fixtures:make_directions_workspace"
NEG = "rgba({},{},{}".format(*charts.NEG_RGB)


@pytest.fixture(scope="module")
def dir_ws(app_env):
    from tests.app.fixtures import make_directions_workspace

    return make_directions_workspace()


def test_feature_page_shows_both_ends(dir_ws, monkeypatch):
    monkeypatch.setenv("FEATURESCOPE_TEST_WORKSPACE", FACTORY)
    fd = dir_ws.feature(1)
    assert fd.signed and fd.top_examples and fd.bottom_examples
    at = run_app("pages/feature.py", feature="1")
    assert not at.exception
    page = html_text(at)
    assert "Most positive" in page and "Most negative" in page
    assert page.index("Most positive") < page.index("Most negative")
    worst = fd.bottom_examples[0]
    assert f'data-act="{worst.value:.4f}"' in page and NEG in page
    assert "bottom_examples" not in page  # not dumped as extras text
    assert "|activation| in (" in page  # intervals are over the magnitude

    out = render_features_html([fd], {"title": "directions"})
    assert "Most negative" in out and html.escape(f"{worst.value:.4f}") in out
    assert "bottom_examples" not in out


def test_non_negative_page_has_neither_heading(tiny_ws):
    at = run_app("pages/feature.py", feature="3")
    page = html_text(at)
    assert "Most positive" not in page and "Most negative" not in page and NEG not in page
    out = render_features_html([tiny_ws.feature(3)], {"title": "r"})
    assert "Most negative" not in out


def test_sources_page_offers_a_directions_file(tiny_ws):
    at = run_app()  # the Sources page
    at.radio(key="fs_d_kind").set_value("directions").run()
    assert not at.exception
    field = at.text_input(key="fs_d_path")
    assert field.label == "Directions file" and "hook_name" in field.placeholder
