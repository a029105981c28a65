"""The feature page's Explain button against a chat-completions server started here: the
explanation is stored with its explainer and scores and shown on the page; the explainer
configuration is read from secrets or the environment."""

from __future__ import annotations

import json
import time

import pytest

from core.explain.single import explain_and_store, explainer_choice
from core.knowledge import KnowledgeError
from core.knowledge.access import Editor, ReadOnlyError, shared_store
from pages import _explain as explain
from tests.app.conftest import run_app, texts
from tests.explain.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("app_env")

SENTENCE = "Fires on animal words after articles."


def answer(body):
    user = body["messages"][-1]["content"]
    if "Excerpts:\n" not in user:
        return SENTENCE
    n = int(user.rsplit("JSON list of ", 1)[1].split(" ", 1)[0])
    return json.dumps([1, 0] * (n // 2) + [1] * (n % 2))


def test_explain_button_stores_and_shows_an_explanation(tiny_ws, monkeypatch):
    key = tiny_ws.dictionary_key()
    with FakeOpenAI(answer) as server:
        monkeypatch.setenv("FEATURESCOPE_EXPLAIN_BASE_URL", server.base_url)
        monkeypatch.setenv("FEATURESCOPE_EXPLAIN_MODEL", "tiny-llm")
        at = run_app("pages/feature.py", feature="11")
        at.button(key="fs_explain").click().run()
        assert not at.error, texts(at.error)
        deadline = time.time() + 60
        while time.time() < deadline:
            job = next(iter(j for j in explain._JOBS.values() if j.feature == 11), None)
            if job is not None and not job.running:
                break
            time.sleep(0.2)
        assert job is not None and not job.running and job.error is None, job
        assert server.requests, "the endpoint was asked"
    (stored,) = shared_store().explanations(key, 11)
    assert (stored.text, stored.explainer, stored.created_by) == (
        SENTENCE,
        "openai:tiny-llm",
        "tester",
    )
    assert "detection_f1" in stored.scores
    at = run_app("pages/feature.py", feature="11")
    assert SENTENCE in texts(at.markdown)
    assert "openai:tiny-llm" in texts(at.caption) and "detection_f1" in texts(at.caption)


def test_explainer_choice_from_secrets_then_environment(monkeypatch):
    monkeypatch.delenv("FEATURESCOPE_EXPLAIN_BASE_URL", raising=False)
    monkeypatch.delenv("FEATURESCOPE_EXPLAIN_MODEL", raising=False)
    assert not explainer_choice({}).remote and explainer_choice({}).model == "demo"
    got = explainer_choice({"base_url": "http://x/v1", "model": "m", "api_key": "k"})
    assert (got.base_url, got.model, got.api_key) == ("http://x/v1", "m", "k")
    monkeypatch.setenv("FEATURESCOPE_EXPLAIN_BASE_URL", "http://env/v1")
    with pytest.raises(KnowledgeError, match="FEATURESCOPE_EXPLAIN_MODEL"):
        explainer_choice({})
    monkeypatch.setenv("FEATURESCOPE_EXPLAIN_MODEL", "env-model")
    assert explainer_choice({}).base_url == "http://env/v1"
    assert explainer_choice({"model": "secret-model"}).model == "secret-model"


def test_a_read_only_account_is_refused_before_anything_is_sent(tiny_ws):
    class NeverCalled:
        label = "never"

        def complete(self, *a, **kw):
            raise AssertionError("a read-only account must not reach the explainer")

    reader = Editor(shared_store(), "bob@team.example", "not in [knowledge] writers")
    with pytest.raises(ReadOnlyError, match="writers"):
        explain_and_store(tiny_ws, 11, NeverCalled(), reader, tiny_ws.dictionary_key())
