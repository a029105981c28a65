"""Full-text search ranking, the JSON export/import round trip and Neuronpedia's explanation
format, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from core.knowledge import KnowledgeError, open_store

DK = "d" * 64
OTHER = "e" * 64


def test_search_ranks_the_better_match_first(store):
    store.annotate(DK, 1, label="docstring", notes="python code", author="a")
    store.annotate(DK, 2, label="return in docstrings", notes="returns of functions", author="a")
    store.annotate(DK, 3, label="colours", notes="red green blue", author="a")
    store.add_explanation(OTHER, 8, "closing brackets in code", explainer="m", prompt_version="v",
                          scores={}, method="m", author="a")  # fmt: skip
    hits = store.search("returns docstring")
    assert [(h.feature, h.label) for h in hits] == [(2, "return in docstrings"), (1, "docstring")]
    assert hits[0].score > hits[1].score and hits[0].matched == "annotation"
    found = store.search("bracket")  # stemmed: "brackets" matches
    assert [(h.dictionary_key, h.feature, h.matched) for h in found] == [(OTHER, 8, "explanation")]
    assert store.search("docstring", dictionary_key=OTHER) == []
    assert store.search("  ; ' \" OR NEAR(") == []  # no words: nothing, never a syntax error
    assert [h.feature for h in store.search('red OR "blue')] == [3]


def test_search_label_outweighs_notes(store):
    store.annotate(DK, 1, label="tabs", notes="whitespace", author="a")
    store.annotate(DK, 2, label="whitespace", notes="tabs", author="a")
    assert [h.feature for h in store.search("whitespace")] == [2, 1]


def _fill(store):
    store.describe_dictionary(DK, "demo SAE", "demo:layer10")
    store.annotate(DK, 1, label="returns", notes="**bold** <b>raw</b>", tags=["py"], author="ann")
    store.set_label(DK, 1, "return keyword", author="bob")
    store.annotate(DK, 2, label="gone", author="ann")
    store.delete(DK, 2, author="ann")
    store.annotate(OTHER, 3, notes="ünïcode ✓", author="cy")
    store.create_list("Best", description="d", author="ann")
    store.add_to_list("best", DK, 1, note="n")
    store.add_to_list("best", OTHER, 3)
    store.add_explanation(DK, 1, "return", explainer="m", prompt_version="v1",
                          scores={"f1": 0.25}, method="delphi", author="ann")  # fmt: skip


def test_json_round_trip_is_exact(store, tmp_path):
    _fill(store)
    exported = store.export_json()
    text = json.dumps(exported)  # plain JSON
    copy = open_store(f"sqlite:///{tmp_path / 'copy.db'}")
    copy.import_json(json.loads(text))
    assert copy.export_json() == exported
    assert copy.history(DK, 1) == store.history(DK, 1)
    assert copy.annotation(DK, 2, include_deleted=True).deleted
    assert copy.search("keyword")[0].feature == 1
    with pytest.raises(KnowledgeError, match="exists already"):
        copy.import_json(exported)
    with pytest.raises(KnowledgeError, match="not a featurescope knowledge export"):
        copy.import_json({"annotations": []})
    with pytest.raises(KnowledgeError, match="malformed"):
        copy.import_json({"format": "featurescope-knowledge", "version": 1, "annotations": [{}]})


def test_json_import_into_this_backend(store, tmp_path):
    source = open_store(f"sqlite:///{tmp_path / 'source.db'}")
    _fill(source)
    store.import_json(source.export_json())
    assert store.export_json() == source.export_json()


NEURONPEDIA = [
    {"modelId": "gpt2-small", "layer": "6-res-jb", "index": "12",
     "description": " references to the return statement", "explanationModelName": "gpt-4o-mini",
     "typeName": "oai_token-act-pair", "authorId": "np-bot"},
    {"modelId": "gpt2-small", "layer": "6-res-jb", "index": "3",
     "description": "closing parentheses", "explanationModelName": "claude-3-5-haiku",
     "typeName": "np_max-act-logits"},
]  # fmt: skip


def test_neuronpedia_round_trip(store):
    assert store.import_neuronpedia(NEURONPEDIA, DK) == 2
    assert store.import_neuronpedia(NEURONPEDIA, DK) == 0  # already there
    got = store.explanations(DK, 12)[0]
    assert (got.text, got.explainer, got.method, got.source, got.created_by) == (
        "references to the return statement", "gpt-4o-mini", "oai_token-act-pair",
        "neuronpedia", "np-bot",
    )  # fmt: skip
    exported = store.export_neuronpedia(DK)
    expected = sorted(NEURONPEDIA, key=lambda r: int(r["index"]))
    expected = [{**r, "description": r["description"].strip()} for r in expected]
    assert exported == expected
    assert {r["layer"] for r in store.export_neuronpedia(DK, sae_id="7-res-jb")} == {"7-res-jb"}
    # our own explanations export in the same form
    store.add_explanation(OTHER, 5, "tabs", explainer="m", prompt_version="v", scores={},
                          method="delphi", author="a")  # fmt: skip
    assert store.export_neuronpedia(OTHER, model_id="gpt2-small", sae_id="6-res-jb") == [
        {"modelId": "gpt2-small", "layer": "6-res-jb", "index": "5", "description": "tabs",
         "explanationModelName": "m", "typeName": "delphi"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ({"index": "1"}, "JSON list"),
        ([{"index": "1"}], "lacks"),
        ([{"index": "x", "description": "d"}], "not a feature index"),
    ],
)
def test_neuronpedia_bad_input(store, records, match):
    with pytest.raises(KnowledgeError, match=match):
        store.import_neuronpedia(records, DK)
