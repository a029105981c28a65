"""Tiny dictionaries for the effects and steering tests: an SAE or a transcoder at given hooks."""

from __future__ import annotations

import sae_lens as sl
import torch

from tests.conftest import make_sae

D = 32


def sae_at(model, tokens, hook: str) -> sl.SAE:
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    return make_sae("standard", D, 16, hook, sample=cache[hook].reshape(-1, D), density=0.3)


def transcoder_at(model, tokens, hook_in: str, hook_out: str) -> sl.SAE:
    torch.manual_seed(0)
    tc = sl.Transcoder(sl.TranscoderConfig(d_in=D, d_sae=16, d_out=D, apply_b_dec_to_input=False))
    tc.cfg.metadata.hook_name = hook_in
    tc.cfg.metadata.hook_name_out = hook_out
    _, cache = model.run_with_cache(tokens, names_filter=hook_in)
    x = cache[hook_in].reshape(-1, D)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn_like(tc.W_enc))
        tc.W_dec.copy_(torch.randn_like(tc.W_dec) * 0.5)
        tc.b_dec.zero_()
        tc.b_enc.copy_(-torch.quantile(x @ tc.W_enc, 0.7, dim=0))
    return tc
