"""Automatic labels from hand-built feature data."""

from __future__ import annotations

from core.explain.autolabel import auto_label, normalize_token
from tests.explain.data import example, feature, returns_feature


def test_label_of_a_feature_with_context_and_outputs():
    label = auto_label(returns_feature())
    assert label is not None
    assert label.kind == "auto"
    assert label.tokens == ["returns"]  # "," (punctuation only) is left out
    assert label.context == "\n"
    assert label.outputs == ["None", "self"]
    assert label.text == '"returns" (after "\\n") → "None", "self"'


def test_dead_feature_has_no_label():
    assert auto_label(feature(3, [])) is None


def test_space_markers_are_normalised_and_counted_together():
    top = [
        example(["a", "Ġcat"], [0.0, 2.0]),
        example(["b", "▁cat"], [0.0, 1.5]),
        example(["c", " cat"], [0.0, 1.0]),
        example(["d", " dog"], [0.0, 0.9]),
        example(["e", " dog"], [0.0, 0.8]),
        example(["f", " emu"], [0.0, 0.7]),
    ]
    label = auto_label(feature(1, top))
    # cat (3) and dog (2 >= 3/2) qualify, emu (1) does not; no shared preceding token
    assert label.tokens == ["cat", "dog"]
    assert label.context is None
    assert label.outputs == []
    assert label.text == '"cat", "dog"'
    assert normalize_token(" ") == " "
    assert normalize_token("Ġ") == "Ġ"


def test_punctuation_only_feature_keeps_its_punctuation():
    top = [example(["a", "."], [0.0, 1.0]), example(["b", "."], [0.0, 0.5])]
    label = auto_label(feature(2, top, logits=["\n", " The"]))
    assert label.tokens == ["."]
    assert label.outputs == ["\n", "The"]
