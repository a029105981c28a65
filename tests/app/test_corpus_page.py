"""Search page, mode "In the dataset" (pages/_corpus.py), through AppTest."""

from __future__ import annotations

from tests.app.conftest import run_app, texts


def _find(at, query: str, regex: bool = False):
    at.text_input(key="fs_corpus_q").input(query)
    at.checkbox(key="fs_corpus_re").set_value(regex)
    next(b for b in at.button if b.label == "Find").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_corpus_mode_lists_pages_and_opens_features(tiny_ws):
    at = _find(run_app("pages/search.py", mode="corpus"), "a")
    want = tiny_ws.corpus_search("a")
    assert f"**{want.total:,}** occurrences" in texts(at.caption)
    table = at.dataframe[0].value
    assert list(table["#"]) == list(range(1, 21))
    assert list(zip(table["row"], table["position"], strict=True)) == [
        (o.seq, o.pos) for o in want.occurrences[:20]
    ]
    at.number_input(key="fs_corpus_page").set_value(2).run()
    table = at.dataframe[0].value
    assert list(table["#"]) == list(range(21, 41))
    assert list(table["row"]) == [o.seq for o in want.occurrences[20:40]]

    occ = want.occurrences[20]
    at.session_state["fs_corpus_table_2"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    assert not at.exception
    feats = at.dataframe[1].value
    expected = tiny_ws.features_at(occ.seq, occ.pos, k=20)
    assert list(feats["feature"]) == [r["feature"] for r in expected]
    assert f"row {occ.seq}, position {occ.pos}" in texts(at.markdown)


def test_corpus_mode_bad_regex_is_explained(tiny_ws):
    at = _find(run_app("pages/search.py", mode="corpus"), "(cat", regex=True)
    assert "nvalid regular expression '(cat'" in texts(at.error)
