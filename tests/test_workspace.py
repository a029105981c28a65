"""Workspace: the compute gate (queue + model lock) and out-of-memory retries."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from core.config import RunConfig
from core.gate import WorkspaceError, is_out_of_memory
from core.hosted import AccessError, Limits
from core.queue import COMPUTE_QUEUE, waiting_reporter
from core.workspace import Workspace
from tests.tiny import HOOK, make_workspace
from tests.tolerance import assert_sums_close, encode_tolerance, firing_margin


@pytest.fixture
def ws():
    return make_workspace(48, RunConfig(batch_size=8, feature_chunk_size=1024))


def _oom_above(ws: Workspace, max_batch: int, calls: list[int]):
    """Make the model raise CUDA's out-of-memory error for batches above ``max_batch``."""
    real = ws.model.run_to_hooks

    def run_to_hooks(tokens, hooks, *a, **k):
        calls.append(tokens.shape[0])
        if tokens.shape[0] > max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(tokens, hooks, *a, **k)

    ws.model.run_to_hooks = run_to_hooks


def test_out_of_memory_retries_with_smaller_batches(ws):
    expected = ws.features([1, 5])  # no memo: computed for real
    calls: list[int] = []
    _oom_above(ws, 2, calls)
    got = ws.features([1, 5])
    assert ws.oom_retries == 2 and ws.config.batch_size == 2  # 8 -> 4 -> 2
    assert max(calls) == 8 and calls[-1] <= 2
    # other batch sizes, other GEMM shapes: equal up to the rounding of the encode
    sae = ws.dictionary.sae
    _, cache = ws.model.model.run_with_cache(ws.tokens, names_filter=HOOK)
    tol = encode_tolerance(sae, cache[HOOK])
    unsure = (firing_margin(sae, cache[HOOK]) <= tol).reshape(-1, sae.cfg.d_sae).sum(0)
    for i in (1, 5):
        assert got[i].max_act == pytest.approx(expected[i].max_act, abs=tol[i])
        n_tok = got[i].n_tokens
        assert got[i].density == pytest.approx(expected[i].density, abs=unsure[i] / n_tok)
        assert [e.seq for e in got[i].top_examples] == [e.seq for e in expected[i].top_examples]
    # the smaller batch is kept: no further retries
    ws.features([2])
    assert ws.oom_retries == 2


def test_out_of_memory_at_one_sequence_is_a_clear_error(ws):
    _oom_above(ws, 0, [])
    with pytest.raises(WorkspaceError, match="out of memory .* even one sequence at a time"):
        ws.features([3])
    assert COMPUTE_QUEUE.running == 0  # the slot was given back


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_limits_bound_prompts_jobs_and_generation(ws):
    ws.limits = Limits(max_prompt_chars=50, max_features_per_job=3)
    with pytest.raises(AccessError, match="60 characters"):
        ws.prompt_search("x" * 60)
    # (the token limit needs a tokenizer: tests/app/test_hosted_app.py checks it)
    with pytest.raises(AccessError, match="4 features requested"):
        ws.features([0, 1, 2, 3])
    with pytest.raises(AccessError, match="new tokens"):
        ws.steer(0, "hello", coefficient=1.0, max_new_tokens=65)


def test_computations_wait_in_the_queue_and_report_their_place(ws):
    """A second caller waits for the slot held by the first and sees position 1."""
    held = threading.Event()
    release = threading.Event()

    def hold():
        with COMPUTE_QUEUE.slot():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    seen: list[int] = []
    timer = threading.Timer(0.3, release.set)
    timer.start()
    t0 = time.perf_counter()
    with waiting_reporter(lambda s: seen.append(s.position)):
        ws.features([4])
    assert time.perf_counter() - t0 >= 0.25
    assert seen[0] == 1 and seen[-1] == 0
    t.join(5)


def test_job_limit_counts_only_features_to_compute(ws, tmp_path):
    from core.memo import Memo

    ws.memo = Memo(tmp_path / "memo")
    ws.features([0, 1, 2, 3])
    ws.limits = Limits(max_features_per_job=3)
    forward = ws.model.run_to_hooks
    calls: list[int] = []
    ws.model.run_to_hooks = lambda *a, **k: calls.append(1) or forward(*a, **k)
    got = ws.features([0, 1, 2, 3, 4, 5])  # 4 cached + 2 new: allowed
    assert sorted(got) == [0, 1, 2, 3, 4, 5] and calls
    with pytest.raises(AccessError, match="4 features requested; this server allows 3"):
        ws.features(list(range(6, 10)))


def test_the_workspace_enforces_job_and_export_limits(ws, tmp_path):
    """Hosted limits are enforced by the workspace (the pages only call it): a job is split
    into passes no larger than the job limit, cached features are free, exports are capped."""
    from core.memo import Memo

    ws.memo = Memo(tmp_path / "memo")
    ws.features([0, 1])
    assert ws.job_passes(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]  # no limits
    ws.limits = Limits(max_features_per_job=2, max_features_per_export=2)
    assert ws.job_passes([0, 1, 2, 3], 8) == [[0, 1], [2, 3]]  # 2 to compute: allowed
    with pytest.raises(AccessError, match="3 features requested; this server allows 2"):
        ws.job_passes([0, 1, 2, 3, 4], 8)
    assert sorted(ws.features_for_export([0, 1])) == [0, 1]
    with pytest.raises(AccessError, match="3 features requested; this server allows 2"):
        ws.features_for_export([0, 1, 2])


def test_token_search_matches_the_full_logit_table(ws):
    """Promoting/suppressing features for one token: the column of the full table."""
    w = ws.dictionary.decoder_directions(None).float()
    full = ws.model.logit_directions(w)[:, 7]
    # a column subset and the whole product sum the same d_model terms in other orders
    tl = ws.model.model
    ln_w = getattr(tl.ln_final, "w", torch.ones(w.shape[1])).detach().abs()
    # centring, the normalisation's scale, then W_U
    abs_sum = ((w.abs() + w.abs().mean(1, keepdim=True)) * ln_w) @ tl.W_U[:, 7].detach().abs()
    assert_sums_close(ws.model.logit_directions(w, [7, 3])[:, 0], full, abs_sum, 2 * w.shape[1] + 2)
    got = ws.token_search("7", k=5)
    assert [r["feature"] for r in got["promote"]] == full.topk(5).indices.tolist()
    assert [r["feature"] for r in got["suppress"]] == (-full).topk(5).indices.tolist()
    best = int(full.argmax())
    assert_sums_close(got["promote"][0]["effect"], full[best], abs_sum[best], 2 * w.shape[1] + 2)


def test_summary_lists_the_tokens_each_feature_fires_on(ws, tmp_path):
    from core.memo import Memo

    ws.memo = Memo(tmp_path / "memo")
    table = ws.summary()
    assert table["feature"] == list(range(48))
    for f, fires, top in zip(table["feature"], table["fires_on"], table["top_tokens"], strict=True):
        fd = ws.cached(f)
        maxes = [e.tokens[e.qualifying_index] for e in fd.top_examples]
        assert fires == list(dict.fromkeys(maxes))[:3]  # distinct, strongest first
        assert top == fd.top_logits.tokens[:3]
    alive = [f for f in table["feature"] if table["n_active"][f] > 0]
    assert alive and all(table["fires_on"][f] for f in alive)


@pytest.mark.parametrize("correlation", ["all", "requested"])
def test_summary_streams_and_equals_the_table_of_all_features(ws, tmp_path, correlation):
    """The whole-dictionary summary is built batch by batch (stored features read one at a
    time, missing ones swept together), never through one dict of every feature's data;
    it equals the table of all features, cold, partly stored and from a second workspace."""
    import core.workspace as workspace_mod
    from core.memo import Memo
    from core.previews import summary_table

    ws.config = dataclasses.replace(ws.config, feature_correlation=correlation)
    ws.memo = Memo(tmp_path / "memo")
    if correlation == "all":
        ws.features([3, 10, 11])  # partly stored: only the others are swept
    real = workspace_mod.compute_features

    def no_dict_of_everything(model, dictionary, tokens, config, *args, **kwargs):
        assert len(config.features) < ws.n_features, "the summary built every feature at once"
        return real(model, dictionary, tokens, config, *args, **kwargs)

    workspace_mod.compute_features = no_dict_of_everything
    try:
        table = ws.summary()
    finally:
        workspace_mod.compute_features = real
    reference = summary_table(ws.features(list(range(ws.n_features))).values())
    assert table == reference
    other = Workspace(ws.model, ws.dictionary, ws.tokens, ws.dataset, ws.memo, ws.config)
    assert other._summary_of(list(range(ws.n_features)), None) == reference  # all stored


def test_previews_read_computed_features_only(ws, tmp_path):
    from core.memo import Memo

    ws.memo = Memo(tmp_path / "memo")
    assert ws.previews([3, 5]) == {}
    ws.features([5])
    got = ws.previews([3, 5])
    assert list(got) == [5]
    fd = ws.cached(5)
    assert got[5]["promotes"] == fd.top_logits.tokens[:3]
    assert got[5]["fires_on"][0] == fd.top_examples[0].tokens[fd.top_examples[0].qualifying_index]
    assert ws.missing([3, 5]) == [3]  # listing previews computed nothing
