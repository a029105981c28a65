"""Feature page: top examples paged 20 at a time from a pool of 50, and an example expanded
to its whole row (pages/_sequence.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pages._sequence import page_bounds
from tests.app.conftest import run_app, texts
from tests.app.test_apptest import html_text

POOL_FACTORY = "tests.app.test_sequence_page:make_pool_workspace"


def make_pool_workspace():
    """The app tests' model and dictionary over 64 rows, keeping 50 top examples."""
    from core.workspace import Workspace
    from tests.app.fixtures import make_workspace
    from tests.tiny import random_tokens

    ws = make_workspace()
    tokens = random_tokens(64, 24, seed=7, d_vocab=ws.model.d_vocab)
    config = dataclasses.replace(ws.config, n_top_examples=50)
    return Workspace(ws.model, ws.dictionary, tokens, ws.dataset, ws.memo, config)


@pytest.fixture(scope="module")
def pool_ws(app_env):
    return make_pool_workspace()


def _seqs(page: str) -> list[int]:
    """The ``seq`` labels of the examples in the page's HTML, in order."""
    return [int(s) for s in re.findall(r'class="fs-meta">seq (\d+)<', page)]


def test_page_bounds():
    assert page_bounds(50, 1) == (0, 20)
    assert page_bounds(50, 2) == (20, 40)
    assert page_bounds(50, 3) == (40, 50)
    assert page_bounds(50, 9) == (40, 50)
    assert page_bounds(5, 1) == (0, 5)


def test_pool_of_50_pages_by_20(pool_ws, monkeypatch):
    monkeypatch.setenv("FEATURESCOPE_TEST_WORKSPACE", POOL_FACTORY)
    i = next(f for f in range(8) if len(pool_ws.feature(f).top_examples) == 50)
    top = [e.seq for e in pool_ws.feature(i).top_examples]
    at = run_app("pages/feature.py", feature=str(i), layout="top_examples")
    assert _seqs(html_text(at))[:20] == top[:20]
    assert "examples 1–20 of 50" in texts(at.caption)
    next(b for b in at.button if b.label == "Next 20").click().run()
    assert not at.exception
    assert _seqs(html_text(at))[:20] == top[20:40]
    assert "examples 21–40 of 50" in texts(at.caption)
    at.number_input(key=f"fs_top_page_{i}").set_value(3).run()
    assert _seqs(html_text(at))[:10] == top[40:50]


def test_whole_sequence_of_an_example(tiny_ws):
    fd = tiny_ws.feature(5)
    at = run_app("pages/feature.py", feature="5")
    ex = fd.top_examples[1]
    at.selectbox(key="fs_seq_pick_5").set_value(1).run()
    assert not at.exception
    assert f"All {tiny_ws.tokens.shape[1]} tokens of row {ex.seq}" in texts(at.caption)
    got = tiny_ws.sequence_activations(5, ex.seq)
    page = html_text(at)
    for p, act in enumerate(got["acts"]):
        assert f'data-act="{act:.4f}" data-pos="{p}"' in page


def test_html_download_holds_whole_rows_of_the_top_3(tiny_ws):
    from core.charts import COMPONENTS
    from core.export.html import _Tokens, feature_record
    from pages import _export as export

    fd = tiny_ws.feature(5)
    rows = export.whole_rows(tiny_ws, fd)
    assert [r.seq for r in rows] == [e.seq for e in fd.top_examples[:3]]
    frag = feature_record(fd, _Tokens(), list(COMPONENTS), rows)["html"]["whole"]
    for r in rows:
        assert f"Whole sequence of row {r.seq}" in frag
        assert all(f'data-pos="{p}"' in frag for p in range(len(r.tokens)))
        assert r.acts == tiny_ws.sequence_activations(5, r.seq)["acts"]
    page = export.export_page(tiny_ws, fd, list(COMPONENTS), {"feature": "5"})
    assert f"Whole sequence of row {rows[2].seq} (top 3)" in page
