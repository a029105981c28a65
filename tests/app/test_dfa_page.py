"""Direct feature attribution on the Feature page and in the HTML export: shown for a
dictionary on an attention output (hook_z), absent for a residual-stream SAE."""

from __future__ import annotations

import html

import pytest

from core import charts, charts_dfa
from core.engine.features import Example
from core.export.html import render_features_html
from tests.app.conftest import run_app, texts
from tests.app.test_apptest import html_text

Z_FACTORY = "tests.app.fixtures:make_z_workspace"
TITLE = "Direct feature attribution"


@pytest.fixture(scope="module")
def z_ws(app_env):
    from tests.app.fixtures import make_z_workspace

    return make_z_workspace()


def test_dfa_section_for_a_hook_z_dictionary(z_ws, monkeypatch):
    monkeypatch.setenv("FEATURESCOPE_TEST_WORKSPACE", Z_FACTORY)
    fd = z_ws.feature(2)
    pairs = charts_dfa.dfa_pairs(fd)
    assert len(pairs) == len(fd.top_examples) > 1
    at = run_app("pages/feature.py", feature="2")
    assert TITLE in texts(at.subheader)
    assert len(at.get("vega_lite_chart")) == 3  # two histograms and the attribution bars
    page = html_text(at)
    ex, dfa = pairs[0]
    assert html.escape(f"pre-activation {dfa['pre']:+.4f}") in page
    assert "fs-dfa-dest" in page and "fs-dfa-src" in page
    # another destination token: its own sum is shown
    at.selectbox(key="fs_dfa_pick").set_value(1).run()
    assert not at.exception
    assert html.escape(f"pre-activation {pairs[1][1]['pre']:+.4f}") in html_text(at)

    out = render_features_html([fd], {"title": "z"})
    assert TITLE in out and "fs-dfa-src" in out


def test_no_dfa_section_for_a_residual_sae(tiny_ws):
    at = run_app("pages/feature.py", feature="3")
    assert TITLE not in texts(at.subheader)
    assert "fs-dfa" not in html_text(at)
    assert TITLE not in render_features_html([tiny_ws.feature(3)], {"title": "r"})


def test_dfa_html_escapes_tokens():
    ex = Example(
        seq=0,
        pos=2,
        value=1.0,
        start=0,
        token_ids=[1, 2, 3],
        tokens=["<b>", "a&b", '"x"'],
        acts=[0.0, 0.0, 1.0],
    )
    dfa = {
        "pos": 2,
        "start": 0,
        "pre": 1.5,
        "const": 0.5,
        "outside": 0.0,
        "sources": [0.7, -0.2, 0.5],
        "heads": [[0], [1], [0]],
        "head_values": [[0.7], [-0.2], [0.5]],
    }
    out = charts_dfa.dfa_example_html(ex, dfa)
    assert "<b>" not in out and html.escape("<b>") in out
    assert html.escape(charts.visible_token("a&b")) in out
    assert "rgba(43,108,176" in out and "rgba(197,48,48" in out  # adds and takes away
    assert list(charts_dfa.dfa_frame(ex, dfa)["contribution"]) == [0.7, -0.2, 0.5]
