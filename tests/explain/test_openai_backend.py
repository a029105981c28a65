"""OpenAICompatible and the batch against an OpenAI-compatible server started here."""

from __future__ import annotations

import pytest

from core.explain.backends import BackendError, OpenAICompatible, resolve_api_key
from core.explain.batch import Settings, plan_batch, run_batch
from core.explain.prompts import PROMPT_VERSION
from core.explain.sink import MemorySink
from tests.explain.data import example, feature, returns_feature
from tests.explain.fake_openai import CONFIDENCE, FakeOpenAI
from tests.explain.scripted import EXPLANATION, answer, kind


class ListSource:
    """A FeatureSource-like dict of hand-built features."""

    def __init__(self, *features):
        self.data = {f.index: f for f in features}
        self.calls = 0

    def features(self, indices):
        self.calls += 1
        return {i: self.data[i] for i in sorted(indices)}


def zebra_feature(index: int = 1):
    top = [example(["a", " zebra"], [0.0, 1.0], seq=k) for k in range(3)]
    return feature(index, top, [[example(["b", " zebra"], [0.0, 0.5])] * 2])


NEGATIVES = {0: [["the", " cat", " sat"], ["a", " dog"]], 1: [["x"]]}


def backend(server, sleeps, **kw):
    return OpenAICompatible(server.base_url, "test-model", "k", sleep=sleeps.append, **kw)


def test_retries_with_backoff_then_succeeds():
    sleeps: list[float] = []
    with FakeOpenAI(answer, fail_first=[429, 500, 503]) as server:
        b = backend(server, sleeps, backoff=0.5)
        c = b.complete([{"role": "user", "content": "hi"}], max_tokens=5)
    assert c.text == EXPLANATION
    assert server.statuses == [429, 500, 503, 200]
    assert sleeps == [0.5, 1.0, 2.0]
    assert b.retries == 3


def test_permanent_failure_is_a_typed_error_after_bounded_retries():
    sleeps: list[float] = []
    with FakeOpenAI(answer, fail_first=[500] * 10) as server:
        b = backend(server, sleeps, max_attempts=3)
        with pytest.raises(BackendError, match="after 3 attempts"):
            b.complete([{"role": "user", "content": "hi"}], max_tokens=5)
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]


def test_client_error_is_not_retried():
    sleeps: list[float] = []
    with FakeOpenAI(answer, fail_first=[400]) as server, pytest.raises(BackendError, match="400"):
        backend(server, sleeps).complete([{"role": "user", "content": "x"}], max_tokens=5)
    assert len(server.requests) == 1 and sleeps == []


def test_key_from_argument_environment_or_local(monkeypatch):
    for name in ("FEATURESCOPE_EXPLAIN_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_api_key("given", "https://api.example.com/v1") == "given"
    assert resolve_api_key(None, "http://127.0.0.1:8000/v1") == "not-needed"
    with pytest.raises(BackendError, match="FEATURESCOPE_EXPLAIN_API_KEY"):
        resolve_api_key(None, "https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert resolve_api_key(None, "https://api.example.com/v1") == "from-openai"
    monkeypatch.setenv("FEATURESCOPE_EXPLAIN_API_KEY", "ours")
    assert resolve_api_key(None, "https://api.example.com/v1") == "ours"


def test_batch_explains_scores_and_goes_on_past_failures():
    def fail_when(body):  # every request about the zebra feature fails for good
        return 500 if "zebra" in body["messages"][-1]["content"] else None

    sleeps: list[float] = []
    source = ListSource(returns_feature(0), zebra_feature(1), feature(2, []))
    sink = MemorySink()
    with FakeOpenAI(answer, fail_when=fail_when) as server:
        b = backend(server, sleeps, max_attempts=2)
        plan = plan_batch(source, [0, 1, 2], sink, "dict-key", b.label)
        assert (plan.todo, plan.dead, plan.requests) == ([0, 1], [2], 6)
        assert plan.prompt_tokens > 0
        result = run_batch(
            source, plan, b, sink, "dict-key", author="tester", negatives=lambda fs: NEGATIVES
        )
        requests = list(server.requests)

    assert result.explained == [0]
    assert [(f.feature, f.stage) for f in result.failures] == [(1, "explain")]
    assert "after 2 attempts" in result.failures[0].error
    [rec] = sink.records
    assert rec["text"] == EXPLANATION and rec["feature"] == 0
    assert rec["explainer"] == "openai:test-model" and rec["prompt_version"] == PROMPT_VERSION
    assert rec["author"] == "tester" and rec["dictionary_key"] == "dict-key"
    # the scripted model is always right: every score is perfect; auc from the logprobs
    for method in ("detection", "fuzzing"):
        for name in ("accuracy", "precision", "recall", "f1", "auc"):
            assert rec["scores"][f"{method}_{name}"] == pytest.approx(1.0), (method, name)

    # what was sent: 3 requests for feature 0, then 2 tries of the explainer for feature 1
    assert [kind(r) for r in requests] == ["explain", "detection", "fuzzing", "explain", "explain"]
    assert all(r["model"] == "test-model" and r["temperature"] == 0 for r in requests)
    explain, detect, fuzz = requests[:3]
    assert "\\n<< returns>> the value" in explain["messages"][1]["content"]
    assert "logprobs" not in explain
    assert detect["logprobs"] is True and detect["top_logprobs"] == 5
    assert "the cat sat" in detect["messages"][1]["content"]  # a non-activating excerpt
    assert EXPLANATION in fuzz["messages"][1]["content"]
    assert fuzz["logprobs"] is True

    # resumable: a second plan skips the explained feature, not the failed one
    plan2 = plan_batch(source, [0, 1, 2], sink, "dict-key", "openai:test-model")
    assert (plan2.todo, plan2.done) == ([1], [0])


def test_unparsable_scorer_answer_is_recorded_and_other_scores_kept():
    def garbled(body):
        return "Looks right to me!" if kind(body) == "fuzzing" else answer(body)

    sink = MemorySink()
    source = ListSource(returns_feature(0))
    with FakeOpenAI(garbled) as server:
        b = backend(server, [])
        plan = plan_batch(source, [0], sink, "k", b.label)
        result = run_batch(
            source,
            plan,
            b,
            sink,
            "k",
            author="t",
            negatives=lambda fs: NEGATIVES,
            settings=Settings(),
        )
    assert [(f.feature, f.stage) for f in result.failures] == [(0, "fuzzing")]
    assert "expected a JSON list" in result.failures[0].error
    scores = sink.records[0]["scores"]
    assert scores["detection_f1"] == 1.0 and not any(k.startswith("fuzzing") for k in scores)
    assert 0.5 < CONFIDENCE < 1
