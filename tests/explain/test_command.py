"""``python -m core explain`` on a tiny workspace and a chat-completions server started here:
the dry run prints the plan and sends nothing, a run explains, a rerun resumes."""

from __future__ import annotations

import json

import pytest
import torch

import core.cli as cli
from core.config import RunConfig
from core.explain.command import failures_path
from core.explain.negatives import silent_windows
from core.knowledge import open_store
from tests.explain.fake_openai import FakeOpenAI
from tests.tiny import make_workspace


@pytest.fixture(scope="module")
def tiny_ws():
    return make_workspace(6, RunConfig(), n_seq=16, seq_len=12, density=0.3)


@pytest.fixture
def sources(monkeypatch, tiny_ws):
    ws = tiny_ws
    monkeypatch.setattr(cli, "load_sources", lambda args: (ws.model, ws.dictionary, ws.tokens, {}))
    return ws


def answer(body):
    user = body["messages"][-1]["content"]
    if "Excerpts:\n" not in user:
        return "Fires on some tokens."
    n = int(user.rsplit("JSON list of ", 1)[1].split(" ", 1)[0])
    return json.dumps([1, 0] * (n // 2) + [1] * (n % 2))


def explain(server, out, *extra):
    return cli.main(
        ["explain", "--features", "0:3", "--no-memo", "--no-progress", "--backend", "openai",
         "--base-url", server.base_url, "--llm", "tiny-llm", "--out", str(out), *extra]
    )  # fmt: skip


def test_dry_run_then_run_then_resume(sources, tmp_path, capsys):
    out = tmp_path / "explanations.jsonl"
    with FakeOpenAI(answer) as server:
        assert explain(server, out, "--dry-run") == 0
        text = capsys.readouterr().out
        assert "openai:tiny-llm" in text and "fs-explain-1" in text
        assert "3 features to explain (0 already explained, 0 never active): 9 requests" in text
        assert "prompt tokens" in text
        assert server.requests == [] and not out.exists()

        assert explain(server, out) == 0
        assert len(server.requests) == 9
        assert "3 explained, 0 failed requests" in capsys.readouterr().out
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["feature"] for r in rows] == [0, 1, 2]
        assert {r["dictionary_key"] for r in rows} == {sources.dictionary.fingerprint()}
        assert all(r["text"] == "Fires on some tokens." for r in rows)
        assert all("detection_f1" in r["scores"] for r in rows)

        assert explain(server, out) == 0  # resumes: nothing left, no request
        assert len(server.requests) == 9
        assert "0 features to explain (3 already explained" in capsys.readouterr().out


def test_failed_requests_are_counted_and_set_the_exit_code(sources, tmp_path, capsys):
    out = tmp_path / "explanations.jsonl"
    with FakeOpenAI(answer, fail_when=lambda body: 400) as server:
        assert explain(server, out) == 1
    captured = capsys.readouterr()
    assert "0 explained, 3 failed requests (3 features)" in captured.out
    assert "failed: feature 0 explain" in captured.err
    assert not out.exists()
    log = [json.loads(line) for line in failures_path(out).read_text().splitlines()]
    assert [(r["feature"], r["stage"]) for r in log] == [
        (0, "explain"),
        (1, "explain"),
        (2, "explain"),
    ]
    assert "400" in log[0]["error"]


def test_openai_backend_needs_a_url(sources, tmp_path, capsys):
    code = cli.main(["explain", "--backend", "openai", "--llm", "m", "--out", str(tmp_path / "x")])
    assert code == 2 and "--base-url" in capsys.readouterr().err


def test_silent_windows_are_silent(tiny_ws):
    ws = tiny_ws
    windows = silent_windows(ws, [0, 1], k=3, width=4)
    # reference: every feature's activation at every position of every sequence
    hook = ws.dictionary.hook_in
    with torch.no_grad():
        x = ws.model.run_to_hooks(ws.tokens, [hook])[hook]
        acts = ws.dictionary.encode(x.reshape(-1, x.shape[-1])).reshape(*ws.tokens.shape, -1)
    for f in (0, 1):
        assert 1 <= len(windows[f]) <= 3
        assert bool((acts[..., f] > 0).any())  # the feature is not dead
        for tokens in windows[f]:
            assert len(tokens) == 4
            places = [
                (r, s)
                for r in range(ws.tokens.shape[0])
                for s in range(ws.tokens.shape[1] - 3)
                if ws.model.token_strings(ws.tokens[r, s : s + 4]) == tokens
            ]
            assert places and any(bool((acts[r, s : s + 4, f] <= 0).all()) for r, s in places)


def test_explanations_go_to_the_knowledge_store_by_default(sources, tmp_path, monkeypatch, capsys):
    db = tmp_path / "knowledge.db"
    monkeypatch.setenv("FEATURESCOPE_DB", str(db))
    monkeypatch.setenv("FEATURESCOPE_DATA_DIR", str(tmp_path / "data"))
    args = ["explain", "--features", "0:2", "--no-memo", "--no-progress", "--backend", "openai"]
    with FakeOpenAI(answer) as server:
        run = [*args, "--base-url", server.base_url, "--llm", "tiny-llm", "--author", "bot"]
        assert cli.main(run) == 0
        assert "-> the knowledge store sqlite:///" in capsys.readouterr().out
        store = open_store(f"sqlite:///{db}")
        key = sources.dictionary.fingerprint()
        for f in (0, 1):
            (got,) = store.explanations(key, f)
            assert (got.text, got.explainer, got.created_by) == (
                "Fires on some tokens.",
                "openai:tiny-llm",
                "bot",
            )
            assert "detection_f1" in got.scores
        n = len(server.requests)
        assert cli.main(run) == 0  # resumes from the store: nothing left to ask
        assert len(server.requests) == n
    assert not (tmp_path / "data" / "explanations.jsonl").exists()
