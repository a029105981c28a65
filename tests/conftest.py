"""Shared fixtures: small real models and dictionaries built in the test."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Thread count changes BLAS blocking and so the rounding of every sum: the suite must pass
# with 1 thread (OMP_NUM_THREADS=1) and with 2; tolerances come from tests/tolerance.py.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


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


#: Debian's Chromium, driven by Playwright in the browser tests (its own download cannot work here)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def write_tiny_hf_model(path, words: list[str], split_punctuation: bool = True):
    """Save a tiny random GPT-2 with a word-level tokenizer (BOS/EOS id 0) as a HF directory.

    ``split_punctuation=False`` splits on whitespace only, so tokens such as ``<script>``
    stay whole. Returns ``(hf_model, tokenizer)``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = (
        pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_ctx=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return hf, tok
