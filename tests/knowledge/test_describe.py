"""Each feature's text for exports: the best-scored explanation, else the label; written in
Neuronpedia's explanation form by the precompute runner."""

from __future__ import annotations

import json

from core.export.neuronpedia import NeuronpediaMeta, explanation_records
from core.knowledge import open_store
from core.knowledge.describe import descriptions, stored_descriptions

KEY = "e" * 64


def _explain(store, feature, text, scores, explainer="m"):
    store.add_explanation(
        KEY, feature, text, explainer=explainer, prompt_version="1", scores=scores,
        method="test", author="t",
    )  # fmt: skip


def test_best_explanation_else_label(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    _explain(store, 1, "worse", {"detection_f1": 0.9, "fuzzing_f1": 0.1})  # mean 0.5
    _explain(store, 1, "better", {"detection_f1": 0.7, "fuzzing_f1": 0.6}, "big")  # mean 0.65
    _explain(store, 1, "unscored", {})
    _explain(store, 2, "only one", {})
    store.annotate(KEY, 2, label="label of 2", author="t")  # an explanation wins
    store.annotate(KEY, 3, label="label of 3", author="t")
    store.annotate(KEY, 4, label="gone", author="t")
    store.delete(KEY, 4, author="t")
    got = descriptions(store, KEY, range(0, 1200))  # more than one batch
    assert {f: (d.text, d.kind, d.by) for f, d in got.items()} == {
        1: ("better", "explanation", "big"),
        2: ("only one", "explanation", "m"),
        3: ("label of 3", "label", ""),
    }
    meta = NeuronpediaMeta(model_id="gpt2-small", layer=6, sae_set="res-jb")
    records = explanation_records(meta, got)
    assert records[0] == {
        "modelId": "gpt2-small",
        "layer": "6-res-jb",
        "index": "1",
        "description": "better",
        "explanationModelName": "big",
        "typeName": "featurescope-explanation",
    }
    assert [r["index"] for r in records] == ["1", "2", "3"]
    assert records[2]["typeName"] == "featurescope-label"
    # the same form Neuronpedia's explanation import reads back
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    assert other.import_neuronpedia(json.loads(json.dumps(records)), KEY) == 3
    assert [e.text for e in other.explanations(KEY, 1)] == ["better"]


def test_stored_descriptions_create_no_database(tmp_path, monkeypatch):
    db = tmp_path / "none.db"
    monkeypatch.setenv("FEATURESCOPE_DB", str(db))
    assert stored_descriptions(KEY, [1, 2]) == {} and not db.exists()
    store = open_store(f"sqlite:///{db}")
    store.annotate(KEY, 2, label="x", author="t")
    assert stored_descriptions(KEY, [1, 2])[2].text == "x"
