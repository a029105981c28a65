"""KnowledgeStore on SQLite and PostgreSQL: annotations and history, undoable delete, batched
labels, lists, explanations, and clear errors for bad input."""

from __future__ import annotations

import pytest

from core.explain.sink import ExplanationSink
from core.knowledge import KnowledgeError, UnknownListError

DK = "d" * 64
OTHER = "e" * 64


def test_annotate_and_read_back(store):
    assert store.annotation(DK, 7) is None
    view = store.annotate(
        DK,
        7,
        label=" returns ",
        notes="*fires* on `return`",
        tags=["py", "py", " doc "],
        author="ann",
    )
    assert (view.label, view.notes, view.tags) == ("returns", "*fires* on `return`", ("py", "doc"))
    assert (view.version, view.updated_by, view.deleted) == (1, "ann", False)
    assert view.updated_at.tzinfo is not None
    store.set_label(DK, 7, "return keyword", author="bob")
    store.set_tags(DK, 7, ["python"], author="bob")
    got = store.annotation(DK, 7)
    assert (got.label, got.notes, got.tags, got.version) == (
        "return keyword",
        "*fires* on `return`",
        ("python",),
        3,
    )
    # keyed by dictionary and feature: another dictionary's feature 7 is a different one
    assert store.annotation(OTHER, 7) is None


def test_history_records_every_edit(store):
    store.set_label(DK, 1, "a", author="ann")
    store.set_notes(DK, 1, "n", author="bob")
    store.set_label(DK, 1, "a", author="bob")  # no change: no edit
    store.set_label(DK, 1, "b", author="cy")
    history = store.history(DK, 1)
    assert [(h.version, h.action, h.author) for h in history] == [
        (1, "create", "ann"),
        (2, "edit", "bob"),
        (3, "edit", "cy"),
    ]
    assert history[0].before == {"label": ""} and history[0].after == {"label": "a"}
    assert history[2].before == {"label": "a"} and history[2].after == {"label": "b"}
    assert history[0].at <= history[1].at <= history[2].at
    assert store.history(DK, 99) == []


def test_delete_is_undoable(store):
    store.annotate(DK, 2, label="keep me", notes="notes", author="ann")
    store.delete(DK, 2, author="bob")
    assert store.annotation(DK, 2) is None
    assert store.annotation(DK, 2, include_deleted=True).deleted
    assert store.labels(DK, [2]) == {}
    assert store.search("keep") == []
    with pytest.raises(KnowledgeError, match="no annotation to delete"):
        store.delete(DK, 2, author="bob")
    back = store.undo_delete(DK, 2, author="ann")
    assert (back.label, back.notes, back.deleted) == ("keep me", "notes", False)
    assert [h.action for h in store.history(DK, 2)] == ["create", "delete", "undo_delete"]
    with pytest.raises(KnowledgeError, match="no deleted annotation"):
        store.undo_delete(DK, 2, author="ann")


def test_labels_are_batched_over_thousands(store):
    for f in (0, 5, 1999, 2500):
        store.set_label(DK, f, f"label {f}", author="ann")
    store.annotate(DK, 6, notes="notes only", author="ann")  # no label: left out
    store.set_label(OTHER, 5, "other dictionary", author="ann")
    assert store.labels(DK, range(3000)) == {f: f"label {f}" for f in (0, 5, 1999, 2500)}
    assert store.labels(DK, []) == {}


def test_lists(store):
    first = store.create_list("Return features", description="all of them", author="ann")
    assert first.slug == "return-features" and first.entries == ()
    assert store.create_list("Return features!", author="bob").slug == "return-features-2"
    store.add_to_list("return-features", DK, 3, note="the best")
    store.add_to_list("return-features", OTHER, 9)
    store.add_to_list("return-features", DK, 4)
    view = store.add_to_list("return-features", DK, 3, note="still the best")
    assert [(e.dictionary_key, e.feature, e.note, e.position) for e in view.entries] == [
        (DK, 3, "still the best", 0),
        (OTHER, 9, "", 1),
        (DK, 4, "", 2),
    ]
    view = store.remove_from_list("return-features", OTHER, 9)
    assert [e.feature for e in view.entries] == [3, 4]
    assert store.list_by_slug("return-features") == view
    assert [li.slug for li in store.lists()] == ["return-features", "return-features-2"]
    store.delete_list("return-features-2")
    assert [li.slug for li in store.lists()] == ["return-features"]


def test_list_errors_name_the_problem(store):
    with pytest.raises(UnknownListError, match="no list 'nope': there are no lists yet"):
        store.add_to_list("nope", DK, 1)
    store.create_list("Mine", author="ann")
    with pytest.raises(UnknownListError, match=r"no list 'nope': the lists are \['mine'\]"):
        store.list_by_slug("nope")
    with pytest.raises(KnowledgeError, match="slug 'mine' exists"):
        store.create_list("Another", slug="mine", author="ann")
    with pytest.raises(KnowledgeError, match="not in list 'mine'"):
        store.remove_from_list("mine", DK, 1)
    with pytest.raises(KnowledgeError, match="needs a name"):
        store.create_list("  ", author="ann")


def test_explanations(store):
    first = store.add_explanation(DK, 4, "the word 'return'", explainer="gpt-x", prompt_version="v1",
                                  scores={"detection_f1": 0.8, "fuzz_accuracy": 1}, method="delphi",
                                  author="ann")  # fmt: skip
    second = store.add_explanation(DK, 4, "return statements", explainer="small", prompt_version="v2",
                                   scores={}, method="delphi", author="bob", source="import")  # fmt: skip
    assert isinstance(first, int) and second != first
    got = store.explanations(DK, 4)
    assert [e.id for e in got] == [second, first]  # newest first
    assert got[1].scores == {"detection_f1": 0.8, "fuzz_accuracy": 1.0}
    assert (got[1].explainer, got[1].prompt_version, got[1].method, got[1].source) == (
        "gpt-x", "v1", "delphi", "featurescope",
    )  # fmt: skip
    assert store.explanations(DK, 5) == []


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.set_label(DK, -1, "x", author="a"), "feature -1"),
        (lambda s: s.set_label(DK, True, "x", author="a"), "feature True"),
        (lambda s: s.set_label("", 1, "x", author="a"), "fingerprint"),
        (lambda s: s.set_label(DK, 1, "x", author=" "), "pass who makes the edit"),
        (lambda s: s.set_label(DK, 1, 5, author="a"), "label must be text"),
        (lambda s: s.set_tags(DK, 1, "one,two", author="a"), "tags must be a list"),
        (
            lambda s: s.add_explanation(
                DK,
                1,
                "t",
                explainer="m",
                prompt_version="v",
                scores={"f1": float("nan")},
                method="m",
                author="a",
            ),
            "must be finite",
        ),  # fmt: skip
        (lambda s: s.search("x", limit=0), "limit 0"),
    ],
)
def test_bad_input_is_a_clear_error(store, call, match):
    with pytest.raises(KnowledgeError, match=match):
        call(store)


def test_store_is_an_explanation_sink(store):
    assert isinstance(store, ExplanationSink)  # what core.explain's batch writes to
    assert not store.has_explanation(DK, 4, "gpt-x", "v1")
    store.add_explanation(DK, 4, "returns", explainer="gpt-x", prompt_version="v1", scores={},
                          method="delphi", author="ann")  # fmt: skip
    assert store.has_explanation(DK, 4, "gpt-x", "v1")
    assert not store.has_explanation(DK, 4, "gpt-x", "v2")
    assert not store.has_explanation(DK, 5, "gpt-x", "v1")
