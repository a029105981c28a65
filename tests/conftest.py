"""Shared fixtures: small real models and dictionaries built in the test."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_model(
    n_layers: int = 2, d_model: int = 32, d_vocab: int = 61, n_ctx: int = 32, seed: int = 0
):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=4,
        d_head=d_model // 4,
        d_mlp=4 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    return HookedTransformer(cfg)


def make_sae(
    kind: str,
    d_in: int,
    d_sae: int,
    hook: str,
    sample: torch.Tensor | None = None,
    seed: int = 0,
    density: float = 0.2,
):
    """SAELens SAE of the given architecture with random weights.

    When ``sample`` activations [n, d_in] are given, the encoder biases are set so each
    feature fires on about ``density`` of them (per-feature quantile of its pre-activation).
    """
    import sae_lens as sl

    torch.manual_seed(seed)
    common = dict(d_in=d_in, d_sae=d_sae)
    if kind == "standard":
        sae = sl.StandardSAE(sl.StandardSAEConfig(**common))
    elif kind == "jumprelu":
        sae = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**common))
    elif kind == "topk":
        sae = sl.TopKSAE(sl.TopKSAEConfig(k=max(1, int(d_sae * density)), **common))
    elif kind == "gated":
        sae = sl.GatedSAE(sl.GatedSAEConfig(**common))
    else:
        raise ValueError(kind)
    sae.cfg.metadata.hook_name = hook
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) / d_in**0.5)
        sae.W_enc.copy_(torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(torch.randn_like(sae.b_dec) * 0.01)
        if sample is not None:
            pre = (sample - sae.b_dec) @ sae.W_enc
            q = torch.quantile(pre, 1 - density, dim=0)
            if getattr(sae, "b_enc", None) is not None:
                sae.b_enc.copy_(-q)
            if hasattr(sae, "b_gate"):
                sae.b_gate.copy_(-q)
                sae.b_mag.copy_(-q + 0.5)
                sae.r_mag.fill_(0.0)
            if hasattr(sae, "threshold"):
                # JumpReLU: fire only above a threshold inside the positive part
                sae.b_enc.copy_(-q + 0.3)
                sae.threshold.fill_(0.3)
    return sae


@pytest.fixture(scope="session")
def tiny_model():
    return make_model()


@pytest.fixture(scope="session")
def tiny_tokens():
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(1, 61, (24, 16), generator=g)
    toks[:, 0] = 0  # BOS
    return toks
