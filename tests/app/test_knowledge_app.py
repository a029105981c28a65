"""AppTest of the knowledge store in the app: label a feature on its page, see the label in
the header, the statistics table, search results and the search by words; history,
delete and undo; the automatic label shown apart from the label."""

from __future__ import annotations

import json

import pytest

from core import feature_map as fm
from core.knowledge.access import shared_store
from pages import _knowledge as knowledge
from pages._annotate import auto_text
from tests.app.conftest import run_app, texts
from tests.app.hosted_site import AUTH, write_site

pytestmark = pytest.mark.usefixtures("app_env")


def _save(at, label: str, notes: str = "", tags: str = ""):
    form = next(k for k in (t.key for t in at.text_input) if k and k.endswith("_label"))
    widget = form.removesuffix("_label")
    at.text_input(key=f"{widget}_label").input(label)
    at.text_area(key=f"{widget}_notes").input(notes)
    at.text_input(key=f"{widget}_tags").input(tags)
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_label_a_feature_and_see_it_everywhere(tiny_ws):
    key = tiny_ws.dictionary_key()
    at = run_app("pages/feature.py", feature="5")
    auto = auto_text(tiny_ws.feature(5))
    if auto:  # shown as "auto", never put in the label field
        assert "auto: " in texts(at.caption)
    assert all(t.value == "" for t in at.text_input if t.key and t.key.endswith("_label"))

    label = "docstring returns <script>x</script>"
    notes = "Fires on **returns** in docstrings.\n\n<img src=x onerror=alert(1)>"
    at = _save(at, label, notes, "code, docs")
    store = shared_store()
    ann = store.annotation(key, 5)
    assert (ann.label, ann.tags, ann.updated_by) == (label, ("code", "docs"), "tester")
    # the header shows the label, markdown-escaped
    heads = texts(at.markdown)
    assert "Feature 5 · docstring returns \\<script\\>x\\</script\\>" in heads
    assert "Fires on **returns** in docstrings." in heads  # notes rendered as Markdown
    assert not any(getattr(m, "allow_html", False) for m in at.markdown)
    assert "tags: `code`, `docs`" in texts(at.caption)
    assert any("History (1 edits)" in e.label for e in at.expander)

    # search results and the statistics table list it next to the number
    j = next(
        r["feature"]
        for r in tiny_ws.similar(5, k=15)
        if 5 in [q["feature"] for q in tiny_ws.similar(r["feature"], k=15)]
    )
    at = run_app("pages/search.py", mode="similar", of=str(j))
    table = at.dataframe[0].value
    assert "label" in table.columns
    assert dict(zip(table["feature"], table["label"], strict=True)).get(5, "") == label
    tiny_ws.summary()
    at = run_app("pages/search.py", mode="stats")
    table = at.dataframe[0].value
    assert table.loc[table["feature"] == 5, "label"].item() == label
    assert set(table.loc[table["feature"] != 5, "label"]) <= {""}

    # search by words: label and notes, ranked, label shown
    at = run_app("pages/search.py", mode="words", words="docstrings")
    table = at.dataframe[0].value
    assert list(table["feature"]) == [5] and list(table["label"]) == [label]
    at = run_app("pages/search.py", mode="words", words="nothing-like-this")
    assert "no features" in texts(at.caption)


def test_history_delete_and_undo(tiny_ws):
    key = tiny_ws.dictionary_key()
    at = run_app("pages/feature.py", feature="6")
    at = _save(at, "first")
    at = _save(at, "second")
    store = shared_store()
    assert [h.author for h in store.history(key, 6)] == ["tester", "tester"]
    history = next(e for e in at.expander if e.label.startswith("History"))
    assert history.label == "History (2 edits)"
    assert "label: 'first' → 'second'" in texts(history.caption)

    next(b for b in at.button if b.label == "Delete notes").click().run()
    assert "notes were deleted" in texts(at.info)
    assert store.labels(key, [6]) == {}
    assert texts(at.markdown).count("second") == 0
    next(b for b in at.button if b.label == "Undo delete").click().run()
    assert store.labels(key, [6]) == {6: "second"}
    assert "Feature 6 · second" in texts(at.markdown)
    assert [h.action for h in store.history(key, 6)][-2:] == ["delete", "undo_delete"]


def test_hosted_writer_labels_and_a_reader_only_reads(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "hosted-site"
    conf = write_site(root, auth_required=True)
    text = conf.read_text()
    if "[knowledge]" not in text:
        conf.write_text(text + '\n[knowledge]\nwriters = ["alice@lab.example"]\n')
    monkeypatch.setenv("FEATURESCOPE_HOSTED", str(conf))
    monkeypatch.delenv("FEATURESCOPE_TEST_WORKSPACE", raising=False)
    alice = {"is_logged_in": True, "email": "alice@lab.example", "email_verified": True}
    bob = {"is_logged_in": True, "email": "bob@team.example", "email_verified": True}

    at = run_app("pages/feature.py", user=alice, secrets={"auth": AUTH}, feature="7")
    at = _save(at, "hosted label")
    history = next(e for e in at.expander if e.label.startswith("History"))
    assert "alice@lab.example" in texts(history.caption)

    at = run_app("pages/feature.py", user=bob, secrets={"auth": AUTH}, feature="7")
    assert "Feature 7 · hosted label" in texts(at.markdown)
    assert "Read only" in texts(at.caption)
    assert not [b for b in at.button if b.label in ("Save", "Delete notes", "Explain")]


def test_exported_html_shows_labels_as_text(tiny_ws):
    from pages import _export as export

    key = tiny_ws.dictionary_key()
    evil = "<script>alert('pwned')</script> & co"
    note = "**bold** <script>alert(2)</script> [x](javascript:alert(3)) [ok](https://example.org)"
    shared_store().annotate(key, 9, label=evil, notes=note, author="tester")
    page = export.export_many(tiny_ws, [9, 10])
    assert "<script>alert('pwned')" not in page  # only as escaped JSON text
    data = json.loads(page.split('id="fs-data">', 1)[1].split("</script>")[0])
    assert data["labels"] == {"9": evil}
    rendered = data["notes"]["9"]  # Markdown rendered with raw HTML off
    assert "<strong>bold</strong>" in rendered and "&lt;script&gt;alert(2)" in rendered
    assert "<script>" not in rendered and 'href="javascript' not in rendered
    assert (
        '<a href="https://example.org" target="_blank" rel="noopener noreferrer">ok</a>' in rendered
    )
    assert set(data["notes"]) == {"9"}
    one = export.export_page(tiny_ws, tiny_ws.feature(9), ["summary"], {"feature": "9"})
    assert "<script>alert('pwned')" not in one and "\\u003cscript" in one


def test_compare_and_map_pages_show_labels(tiny_ws):
    key = tiny_ws.dictionary_key()
    shared_store().annotate(key, 20, label="compare me", author="tester")
    at = run_app("pages/compare.py", features="20,21")
    assert "compare me" in texts(at.caption)
    co = at.dataframe[0].value
    assert list(co.index) == ["#20 · compare me", "#21"]
    fmap = fm.feature_map(tiny_ws.dictionary, "pca", tiny_ws.memo)
    table = fm.map_table(fmap, [19, 20], None, knowledge.labels(tiny_ws, [19, 20]))
    assert table["label"] == ["", "compare me"]
    at = run_app("pages/map.py", colour="label")
    assert not at.exception
