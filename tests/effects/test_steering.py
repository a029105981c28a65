"""Steering against plain TransformerLens references (no key-value cache, full recompute).

The references generate greedily with a plain hook that adds the feature's direction (or
clamps the feature) at every non-BOS position, recomputing the whole sequence each step.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from core.dictionaries.saelens import SAELensDictionary
from core.effects import EffectsError, steer
from core.models import ModelAdapter
from tests.tiny import make_model, random_tokens, sae_at, transcoder_at


def _with_tokenizer(seed: int = 0):
    vocab = {f"w{i}": i for i in range(61)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="w0", eos_token="w2", pad_token="w0", unk_token="w1"
    )
    m = make_model(n_layers=4, seed=seed)
    m.tokenizer = tok
    m.cfg.tokenizer_prepends_bos = False
    return m


@torch.no_grad()
def _reference_generate(m, ids, write_hook, edit, n):
    """No cache, full recompute per step, plain hook editing every non-BOS position."""
    out: list[int] = []
    seq = ids
    for _ in range(n):
        logits = m.run_with_hooks(seq, fwd_hooks=[(write_hook, edit)])
        t = int(logits[0, -1].argmax())
        if t == 2:  # eos
            break
        out.append(t)
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    return out


def test_steer_matches_plain_hook_reference():
    m = _with_tokenizer()
    hook = "blocks.1.hook_resid_pre"
    prompt = "w5 w9 w13 w7 w22"
    ids = m.to_tokens(prompt)
    sae = sae_at(m, random_tokens(8, 16, seed=3, bos=None), hook)
    adapter, d = ModelAdapter(m), SAELensDictionary(sae)
    f = 5
    dvec = sae.W_dec[f].detach()

    res0 = steer(adapter, d, f, prompt, coefficient=0.0, max_new_tokens=8)
    assert res0["steered"] == res0["unsteered"] and res0["diverges_at"] is None
    plain = _reference_generate(m, ids, hook, lambda act, hook: act, 8)
    assert res0["unsteered"] == m.tokenizer.decode(plain)

    coef = 8.0

    def add(act, hook):
        keep = torch.ones(act.shape[1])
        keep[0] = 0.0  # BOS untouched
        return act + coef * keep[None, :, None] * dvec

    res = steer(adapter, d, f, prompt, coefficient=coef, max_new_tokens=8)
    assert res["steered"] == m.tokenizer.decode(_reference_generate(m, ids, hook, add, 8))
    assert res["diverges_at"] is not None and res["mode"] == "coefficient"

    def clamp_fn(act, hook):
        a = sae.encode(act[0])[:, f]
        amount = 6.0 - a
        amount[0] = 0.0
        return act + amount[None, :, None] * dvec

    res = steer(adapter, d, f, prompt, clamp=6.0, max_new_tokens=8)
    assert res["steered"] == m.tokenizer.decode(_reference_generate(m, ids, hook, clamp_fn, 8))
    assert res["mode"] == "clamp" and res["unsteered"] == res0["unsteered"]

    # sampling: same seed for both rows, reproducible
    s1 = steer(adapter, d, f, prompt, coefficient=0.0, temperature=1.0, seed=7, max_new_tokens=10)
    s2 = steer(adapter, d, f, prompt, coefficient=0.0, temperature=1.0, seed=7, max_new_tokens=10)
    assert s1["steered"] == s1["unsteered"] == s2["steered"]


def test_steer_transcoder_clamp_and_errors(model4, tokens):
    m = _with_tokenizer()
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    tc = transcoder_at(m, tokens, hook_in, hook_out)
    adapter, d = ModelAdapter(m), SAELensDictionary(tc)
    prompt = "w5 w9 w13"
    store = {}

    def read(act, hook):
        store["x"] = act
        return act

    def write(act, hook):
        a = tc.encode(store["x"][0])[:, 2]
        amount = -a  # clamp to 0 = ablate
        amount[0] = 0.0
        return act + amount[None, :, None] * tc.W_dec[2]

    ids = m.to_tokens(prompt)
    ref: list[int] = []
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            logits = m.run_with_hooks(seq, fwd_hooks=[(hook_in, read), (hook_out, write)])
            t = int(logits[0, -1].argmax())
            if t == 2:
                break
            ref.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    res = steer(adapter, d, 2, prompt, clamp=0.0, max_new_tokens=8)
    assert res["steered"] == m.tokenizer.decode(ref) and res["hook"] == hook_out

    with pytest.raises(EffectsError, match="256"):
        steer(adapter, d, 2, prompt, coefficient=1.0, max_new_tokens=257)
    with pytest.raises(EffectsError, match="exactly one"):
        steer(adapter, d, 2, prompt)
    with pytest.raises(EffectsError, match="exactly one"):
        steer(adapter, d, 2, prompt, coefficient=1.0, clamp=1.0)
    with pytest.raises(EffectsError, match="empty"):
        steer(adapter, d, 2, "  ", coefficient=1.0)
    with pytest.raises(EffectsError, match="context"):
        steer(adapter, d, 2, " ".join(["w3"] * 30), coefficient=1.0, max_new_tokens=10)
    with pytest.raises(EffectsError, match="tokenizer"):
        steer(ModelAdapter(model4), d, 2, prompt, coefficient=1.0)
