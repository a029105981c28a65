"""Exact per-token effects against plain TransformerLens references.

The references run the *full* model twice per example (with and without the feature's
contribution, removed by a plain hook written here) on a 4-layer model with the
dictionary in layer 1, so three blocks, the final norm and the unembedding follow.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.effects import EffectsError, compute_effects
from core.engine.sweep import run_sweep
from core.memo import Memo
from core.models import ModelAdapter
from core.workspace import Workspace
from tests.tiny import sae_at, transcoder_at
from tests.tolerance import gamma

D = 32  # the width of the model the fixtures build

FEATS = [0, 3, 7]
CFG = dict(
    n_top_examples=4,
    n_intervals=3,
    n_interval_examples=2,
    window_before=3,
    window_after=3,
    feature_correlation="none",
)
# Effects are differences of float32 log-probabilities (of order log(61) = 4.1) after forward
# passes through 4 layers whose matmuls each sum at most 4 * D terms: about 3 rounded matmuls
# per layer on the residual path, each within gamma(4 D) relatively, for each of the 2 runs
# (clean, ablated) compared, on both sides (ours and the reference).
TOL = 2 * 2 * 3 * 4 * gamma(4 * D) * math.log(61)


def _pages(adapter, dictionary, tokens):
    res = run_sweep(adapter, dictionary, tokens, RunConfig(features=FEATS, **CFG))
    return dict(res.features)


def _examples(fd):
    return [*fd.top_examples, *(e for g in fd.intervals for e in g.examples)]


@torch.no_grad()
def _reference(model, sae, read_hook, write_hook, items, tokens):
    """Full clean and ablated runs, batched over (sequence, feature) items.

    Returns ``{(seq, f): (contribution [s, vocab], activation [s])}`` with
    contribution = log p_clean - log p_ablated, the feature removed by a plain hook.
    """
    seqs = sorted({s for s, _ in items})
    toks = tokens[seqs]
    _, cache = model.run_with_cache(toks, names_filter=read_hook)
    x = cache[read_hook]
    n, s = toks.shape
    acts = sae.encode(x.reshape(n * s, -1)).reshape(n, s, -1) * (toks != 0)[..., None]
    rows = [seqs.index(q) for q, _ in items]
    a = torch.stack([acts[r, :, f] for r, (_, f) in zip(rows, items, strict=True)])
    d = sae.W_dec[[f for _, f in items]]

    def remove(act, hook):
        shape = (*a.shape, *([1] * (act.ndim - 2)))
        return act - a.view(shape) * d.view(d.shape[0], 1, *act.shape[2:])

    clean = torch.log_softmax(model(toks), -1)[rows]
    ablated = torch.log_softmax(
        model.run_with_hooks(toks[rows], fwd_hooks=[(write_hook, remove)]), -1
    )
    return {it: (clean[i] - ablated[i], a[i]) for i, it in enumerate(items)}


def _check_against_reference(model, sae, read_hook, write_hook, pages, tokens):
    items = sorted({(e.seq, f) for f, fd in pages.items() for e in _examples(fd)})
    ref = _reference(model, sae, read_hook, write_hook, items, tokens)
    n_checked = 0
    for f, fd in pages.items():
        assert fd.extras["effects"]["write_hook"] == write_hook
        for e in _examples(fd):
            contrib, a = ref[(e.seq, f)]
            eff = e.effects
            assert len(eff["loss"]) == len(eff["per_token"]) == len(e.tokens)
            for j in range(len(e.tokens)):
                p = e.start + j
                if p + 1 < tokens.shape[1]:
                    want = float(contrib[p, tokens[e.seq, p + 1]])
                    assert eff["loss"][j] == pytest.approx(want, abs=TOL, rel=1e-3)
                else:
                    assert eff["loss"][j] is None
                if not bool((a[: p + 1] != 0).any()):
                    assert eff["loss"][j] in (0.0, None) and eff["top_up"][j] == []
                    continue
                ref_up = contrib[p].topk(5)
                ref_dn = contrib[p].topk(5, largest=False)
                got_up = [v for _, v in eff["top_up"][j]]
                got_dn = [v for _, v in eff["top_down"][j]]
                torch.testing.assert_close(torch.tensor(got_up), ref_up.values, atol=TOL, rtol=1e-3)
                torch.testing.assert_close(torch.tensor(got_dn), ref_dn.values, atol=TOL, rtol=1e-3)
                # the named tokens carry those values in the reference too
                for tid, (_, v) in zip(eff["top_up_ids"][j], eff["top_up"][j], strict=True):
                    assert float(contrib[p, tid]) == pytest.approx(v, abs=TOL, rel=1e-3)
                assert eff["per_token"][j].startswith("loss effect")
                n_checked += 1
    assert n_checked > 20


@pytest.mark.parametrize(
    "hook",
    [
        "blocks.1.hook_resid_pre",  # cached residual edited, restart at layer 1
        "blocks.1.hook_resid_post",  # same, restart at layer 2
        "blocks.1.hook_mlp_out",  # restart at layer 1 with a forward hook
        "blocks.1.attn.hook_z",  # per-head activations [b, s, heads, d_head]
        "hook_embed",  # outside the blocks: whole-model runs
    ],
)
def test_sae_effects_match_full_model_reference(model4, tokens, hook):
    sae = sae_at(model4, tokens, hook)
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(sae)
    pages = _pages(adapter, d, tokens)
    stats: dict = {}
    out = compute_effects(adapter, d, tokens, pages, stats=stats)
    assert list(out) == FEATS
    # one clean pass per batch of distinct sequences, ablated passes batched over pairs
    assert stats["pairs"] > stats["sequences"] > 0
    if hook != "hook_embed":
        assert stats["forward_passes"] == -(-stats["sequences"] // 16) + -(-stats["pairs"] // 16)
    _check_against_reference(model4, sae, hook, hook, out, tokens)
    # the inputs are untouched
    assert all(e.effects == {} for fd in pages.values() for e in _examples(fd))


def test_exact_differs_from_direct_path(model4, tokens):
    """The direct path (d_f through ln_final's scale and W_U only) is measurably different."""
    hook = "blocks.1.hook_resid_pre"
    sae = sae_at(model4, tokens, hook)
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(sae)
    out = compute_effects(adapter, d, tokens, _pages(adapter, d, tokens))
    items = sorted({(e.seq, f) for f, fd in out.items() for e in _examples(fd)})
    seqs = sorted({s for s, _ in items})
    with torch.no_grad():
        logits, cache = model4.run_with_cache(
            tokens[seqs], names_filter=[hook, "ln_final.hook_scale"]
        )
    n, s = len(seqs), tokens.shape[1]
    acts = sae.encode(cache[hook].reshape(n * s, -1)).reshape(n, s, -1).detach()
    acts = acts * (tokens[seqs] != 0)[..., None]
    scale = cache["ln_final.hook_scale"][..., 0]  # [n, s]
    exact, direct = [], []
    for f, fd in out.items():
        dirs = adapter.logit_directions(sae.W_dec[f : f + 1].detach())[0]  # [vocab]
        for e in _examples(fd):
            r = seqs.index(e.seq)
            a = acts[r, :, f]
            change = a[:, None] * dirs[None] / scale[r][:, None]  # direct logit change
            contrib = torch.log_softmax(logits[r], -1) - torch.log_softmax(logits[r] - change, -1)
            for j, v in enumerate(e.effects["loss"]):
                p = e.start + j
                if v is not None and bool((a[: p + 1] != 0).any()):
                    exact.append(v)
                    direct.append(float(contrib[p, tokens[e.seq, p + 1]]))
    exact_t, direct_t = torch.tensor(exact), torch.tensor(direct)
    rel = float((exact_t - direct_t).norm() / exact_t.norm())
    assert len(exact) > 30
    assert rel > 0.3, f"direct path too close to exact ({rel:.3f}); the test model is too shallow"


def test_transcoder_effects_match_reference(model4, tokens):
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    tc = transcoder_at(model4, tokens, hook_in, hook_out)
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(tc)
    assert (d.hook_in, d.hook_out) == (hook_in, hook_out)
    out = compute_effects(adapter, d, tokens, list(_pages(adapter, d, tokens).values()), k=5)
    _check_against_reference(model4, tc, hook_in, hook_out, out, tokens)


def test_memo_second_call_runs_no_forward_pass(model4, tokens, tmp_path, monkeypatch):
    hook = "blocks.1.hook_resid_pre"
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(sae_at(model4, tokens, hook))
    pages = _pages(adapter, d, tokens)
    memo = Memo(tmp_path / "memo")
    calls = {"n": 0}
    forward = model4.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model4, "forward", counting)
    first = compute_effects(adapter, d, tokens, pages, memo=memo)
    assert calls["n"] > 0
    calls["n"] = 0
    stats: dict = {}
    second = compute_effects(adapter, d, tokens, pages, memo=memo, stats=stats)
    assert calls["n"] == 0 and stats["forward_passes"] == 0 and stats["from_memo"] == len(FEATS)
    assert {f: fd.to_dict() for f, fd in first.items()} == {
        f: fd.to_dict() for f, fd in second.items()
    }
    # a different k is a different entry; one feature alone reuses the others' entries
    compute_effects(adapter, d, tokens, pages, k=3, memo=memo)
    assert calls["n"] > 0
    calls["n"] = 0
    compute_effects(adapter, d, tokens, {FEATS[1]: pages[FEATS[1]]}, memo=memo)
    assert calls["n"] == 0


def test_workspace_effects_memoised(model4, tokens, tmp_path):
    hook = "blocks.1.hook_resid_pre"
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(sae_at(model4, tokens, hook))
    ws = Workspace(adapter, d, tokens, memo=Memo(tmp_path / "m"), config=RunConfig(**CFG))
    fd = ws.effects(3)
    assert ws.last_effects_stats["forward_passes"] > 0
    assert all(len(e.effects["per_token"]) == len(e.tokens) for e in _examples(fd))
    assert fd.extras["effects"]["method"] == "exact ablation"
    again = ws.effects(3)
    assert ws.last_effects_stats["forward_passes"] == 0
    assert again.to_dict() == fd.to_dict()
    with pytest.raises(EffectsError, match="tokenizer"):
        ws.steer(3, "w1 w2", coefficient=1.0)


def test_bad_effects_input(model4, tokens):
    adapter = ModelAdapter(model4, bos_token_id=0)
    d = SAELensDictionary(sae_at(model4, tokens, "blocks.1.hook_resid_pre"))
    pages = _pages(adapter, d, tokens)
    with pytest.raises(EffectsError, match="k must be"):
        compute_effects(adapter, d, tokens, pages, k=0)
    with pytest.raises(EffectsError, match="outside the tokens"):
        compute_effects(adapter, d, tokens[:2, :4], pages)
