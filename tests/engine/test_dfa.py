"""Attention-output (hook_z) dictionaries end to end, and direct feature attribution against
a direct computation on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.cached import compute_features
from core.models import ModelAdapter
from tests.tiny import BOS_ID, HOOK, make_model, random_tokens, sae_at, z_sae_at
from tests.tolerance import encode_tolerance, sum_tolerance

LAYER = 1
ZHOOK = f"blocks.{LAYER}.attn.hook_z"
FEATURES = list(range(8))


@pytest.fixture(scope="module")
def setup():
    model = make_model(n_layers=2)
    tokens = random_tokens(12, 10, seed=3)
    sae = z_sae_at(model, tokens, layer=LAYER)
    dictionary = SAELensDictionary(sae)
    config = RunConfig(  # batch_size 4: the examples' 12 sequences run in three chunks
        features=FEATURES, n_top_examples=4, window_before=3, window_after=2, batch_size=4
    )
    data = compute_features(ModelAdapter(model, bos_token_id=BOS_ID), dictionary, tokens, config)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.1.attn"))
    return model, tokens, sae, data, cache


def test_hook_z_features_equal_the_dense_encode(setup):
    _, tokens, sae, data, cache = setup
    z = cache[ZHOOK]  # [seq, pos, heads, d_head]
    flat = z.reshape(-1, z.shape[2] * z.shape[3])
    with torch.no_grad():  # the reference: SAELens's formula on the flattened z
        acts = torch.relu((flat - sae.b_dec) @ sae.W_enc + sae.b_enc)
    acts = acts.reshape(tokens.shape[0], tokens.shape[1], -1).double().numpy()
    acts = acts * (tokens != BOS_ID).numpy()[..., None]
    tol = encode_tolerance(sae, flat)
    for f in FEATURES:
        fd = data[f]
        assert abs(fd.max_act - acts[..., f].max()) <= tol[f]
        for ex in fd.top_examples:
            assert abs(ex.value - acts[ex.seq, ex.pos, f]) <= tol[f]
    assert any(data[f].top_examples for f in FEATURES)


def test_hook_z_logit_effects_go_through_w_o(setup):
    model, _, sae, data, _ = setup
    f = FEATURES[0]
    w_o = model.blocks[LAYER].attn.W_O.detach()  # [heads, d_head, d_model]
    d = sae.W_dec[f].detach().reshape(w_o.shape[0], w_o.shape[1])
    resid = torch.einsum("hd,hdm->m", d, w_o)
    resid = resid - resid.mean()
    logits = ((resid * model.ln_final.w.detach()) @ model.W_U.detach()).numpy()
    top = data[f].top_logits.token_ids[0]
    assert top == int(np.argmax(logits))


@torch.no_grad()
def test_dfa_sums_to_the_pre_activation(setup):
    _, tokens, sae, data, cache = setup
    z = cache[ZHOOK]
    pattern = cache[f"blocks.{LAYER}.attn.hook_pattern"]  # [seq, heads, dest, src]
    v = cache[f"blocks.{LAYER}.attn.hook_v"]  # [seq, src, heads, d_head]
    n_heads, d_head = z.shape[2], z.shape[3]
    checked = 0
    for f in FEATURES:
        fd = data[f]
        dfa = fd.extras["dfa"]
        assert len(dfa) == len(fd.top_examples)
        w = sae.W_enc[:, f].detach().double().reshape(n_heads, d_head)
        for ex, got in zip(fd.top_examples, dfa, strict=True):
            s, d = ex.seq, ex.pos
            assert (got["pos"], got["start"]) == (d, ex.start)
            zf = z[s, d].double().reshape(-1)
            pre = float((zf - sae.b_dec.double()) @ sae.W_enc[:, f].double() + sae.b_enc[f])
            # per source, per head, by loops over the cached pattern and values
            ref = np.zeros((d + 1, n_heads))
            for src in range(d + 1):
                for h in range(n_heads):
                    a = float(pattern[s, h, d, src])
                    ref[src, h] = a * float(v[s, src, h].double() @ w[h])
            total = got["const"] + got["outside"] + sum(got["sources"])
            scale = np.abs(ref).sum() + abs(got["const"]) + float(zf.abs() @ w.abs().reshape(-1))
            tol = sum_tolerance(scale, (d + 2) * n_heads * d_head + 2, computations=3)
            assert abs(total - pre) <= tol
            assert abs(got["pre"] - pre) <= tol
            np.testing.assert_allclose(got["sources"], ref[ex.start :].sum(1), rtol=0, atol=tol)
            assert abs(got["outside"] - ref[: ex.start].sum()) <= tol
            for src, (heads, vals) in enumerate(zip(got["heads"], got["head_values"], strict=True)):
                row = ref[ex.start + src]
                assert heads[0] == int(np.argmax(np.abs(row))) or (
                    abs(abs(row[heads[0]]) - np.abs(row).max()) <= tol
                )
                np.testing.assert_allclose(vals, row[heads], rtol=0, atol=tol)
            checked += 1
    assert checked >= 4


def test_no_dfa_for_residual_dictionaries():
    model = make_model(n_layers=2)
    tokens = random_tokens(6, 8, seed=4)
    sae = sae_at(model, tokens, HOOK, d_sae=8)
    data = compute_features(
        ModelAdapter(model, bos_token_id=BOS_ID),
        SAELensDictionary(sae),
        tokens,
        RunConfig(features=[0, 1], n_top_examples=2),
    )
    assert all("dfa" not in fd.extras for fd in data.values())
