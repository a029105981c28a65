"""Scorer maths against hand computations; prompts and the reading of answers."""

from __future__ import annotations

import math
import random

import pytest

from core.explain.backends import Completion, TokenLogprob
from core.explain.prompts import (
    AnswerParseError,
    clean_sentence,
    explainer_messages,
    mark_tokens,
    parse_binary_list,
    split_examples,
)
from core.explain.scoring import (
    answer_probabilities,
    auc,
    binary_scores,
    detection_samples,
    fuzzing_samples,
)
from tests.explain.data import returns_feature


def test_binary_scores_by_hand():
    truth = [1, 1, 1, 0, 0, 0, 0, 1]
    pred = [1, 0, 1, 1, 0, 0, 0, 1]
    # tp = 3 (0, 2, 7), fp = 1 (3), fn = 1 (1), tn = 3 (4, 5, 6)
    s = binary_scores(truth, pred)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    none = binary_scores([1, 0], [0, 0])
    assert none == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="as many answers"):
        binary_scores([1, 0], [1])


def test_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.4: pairs 1 + 1 + 0 + 0.5 = 2.5 of 4
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(2.5 / 4)
    assert auc([1, 1], [0.3, 0.2]) is None


@pytest.mark.parametrize(
    "text, want",
    [
        ("[1, 0, 1]", [1, 0, 1]),
        ("```json\n[1,0,1]\n```", [1, 0, 1]),
        ("Sure! Excerpts 1 and 3 fit: [true, false, true]", [1, 0, 1]),
        ('["1", "0", "0"]', [1, 0, 0]),
        ("first [1, 1] then the answer [0, 0, 1]", [0, 0, 1]),
    ],
)
def test_parse_binary_list(text, want):
    assert parse_binary_list(text, 3) == want


@pytest.mark.parametrize(
    "text", ["", "I think they all fit.", "[1, 0]", "[1, 2, 0]", "[[1], 0, 1]"]
)
def test_unparsable_answers_raise_a_clear_error(text):
    with pytest.raises(AnswerParseError, match="expected a JSON list of 3 values 0/1"):
        parse_binary_list(text, 3)


def test_clean_sentence():
    assert clean_sentence('\n  Explanation: "The word returns in docstrings."\nmore') == (
        "The word returns in docstrings."
    )
    with pytest.raises(AnswerParseError, match="answered nothing"):
        clean_sentence("  \n ")


def test_answer_probabilities_from_logprobs():
    def tok(t, p1):
        return TokenLogprob(
            t,
            math.log(p1 if t.strip() == "1" else 1 - p1),
            {" 1": math.log(p1), " 0": math.log(1 - p1)},
        )

    c = Completion(
        "[1, 0]",
        [TokenLogprob("[", 0.0, {}), tok("1", 0.8), TokenLogprob(",", 0.0, {}), tok(" 0", 0.3)],
    )
    assert answer_probabilities(c, 2) == pytest.approx([0.8, 0.3])
    assert answer_probabilities(c, 3) is None
    assert answer_probabilities(Completion("[1, 0]"), 2) is None


def test_prompts_mark_activating_tokens_and_keep_held_out_examples_apart():
    data = returns_feature()
    top, interval, held_out = split_examples(data, n_top=10, per_interval=2)
    assert len(top) == 5 and len(interval) == 2 and len(held_out) == 2
    assert not {id(e) for e in interval} & {id(e) for e in held_out}
    user = explainer_messages(data, top, interval)[1]["content"]
    assert "\\n<< returns>> the value" in user
    assert '" None", " self"' in user
    assert mark_tokens(["a", "b", "c", "d"], [True, True, False, True]) == "<<ab>>c<<d>>"


def test_samples_have_the_right_truths():
    data = returns_feature()
    top, interval, held_out = split_examples(data)
    rng = random.Random(0)
    det = detection_samples(held_out, [["x", "y"], ["z"]], rng)
    assert sorted(s.truth for s in det) == [0, 0, 1, 1]
    assert all("<<" not in s.text for s in det)
    fuzz = fuzzing_samples(top + interval, rng)
    assert sorted(s.truth for s in fuzz) == [0, 0, 0, 1, 1, 1, 1]
    for s in fuzz:
        if s.truth:
            assert "<< returns>>" in s.text or "<<,>>" in s.text
        else:  # one wrong token marked, never the activating one
            assert (
                s.text.count("<<") == 1 and "<< returns>>" not in s.text and "<<,>>" not in s.text
            )
