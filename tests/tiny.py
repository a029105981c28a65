"""Tiny models, dictionaries and tokens for the tests and benchmarks, built in one place.

Every builder is deterministic: the seeds, sizes and order of construction fixed here are
what the tests' expected values were computed with, so change none of them.

* :func:`make_model` a random HookedTransformer from a few sizes (or :func:`hooked_transformer`
  from a full config, as the benchmarks do);
* :func:`make_sae` a SAELens SAE of any architecture (standard, jumprelu, topk, gated) whose
  features fire on about a chosen share of given activations;
* :func:`make_directions` given directions (a probe, steering vectors) as a signed dictionary,
  or the safetensors file they are loaded from;
* :func:`random_tokens` random token ids with BOS in column 0;
* :func:`word_tokenizer`, :func:`write_hf_model` a word-level tokenizer and a Hugging Face GPT-2
  directory that uses it (for the loaders of local sources);
* :func:`make_workspace` a :class:`~core.workspace.Workspace` over the tiny model and an SAE;
* :func:`prepare_process` the process settings the suite runs under (offline hub, threads).

TransformerLens, SAELens and Hugging Face are imported inside the builders: ``conftest.py``
imports this module, and tests that need none of them should not pay for importing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

#: the token id of BOS in every tiny model (and of BOS/EOS/UNK in the word tokenizers)
BOS_ID = 0
BOS_TEXT = "<|endoftext|>"
#: the vocabulary size of :func:`make_model` by default
D_VOCAB = 61
#: the hook most tests read (the residual stream into the second block)
HOOK = "blocks.1.hook_resid_pre"


def prepare_process() -> None:
    """Set up this process as the test suite runs: the Hugging Face hub offline, and torch
    on ``$OMP_NUM_THREADS`` threads (else 1 or 2). Thread count changes BLAS blocking and so
    the rounding of every sum: the suite must pass with 1 thread and with 2; tolerances come
    from ``tests/tolerance.py``. ``conftest.py`` calls it; so do scripts that run test cases."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(int(threads))


# ---- models --------------------------------------------------------------------------------------
def hooked_transformer(cfg: dict[str, Any], tokenizer: Any = None) -> Any:
    """A randomly initialised HookedTransformer from ``HookedTransformerConfig`` keyword
    arguments (the initialisation follows ``cfg["seed"]``)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(**cfg)
    if tokenizer is None:
        return HookedTransformer(config)
    return HookedTransformer(config, tokenizer=tokenizer)


def make_model(
    n_layers: int = 2,
    d_model: int = 32,
    d_vocab: int = D_VOCAB,
    n_ctx: int = 32,
    seed: int = 0,
    *,
    model_name: str | None = None,
    tokenizer: Any = None,
) -> Any:
    """A GPT-2 shaped HookedTransformer (4 heads, MLP 4x wide, GELU, LayerNorm), random
    weights from ``seed``; ``model_name`` and ``tokenizer`` are passed on when given."""
    cfg: dict[str, Any] = dict(
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
    if model_name is not None:
        cfg["model_name"] = model_name
    return hooked_transformer(cfg, tokenizer)


def random_tokens(
    n_seq: int,
    seq_len: int,
    *,
    seed: int,
    d_vocab: int = D_VOCAB,
    low: int = 1,
    bos: int | None = BOS_ID,
) -> torch.Tensor:
    """Uniform ids in ``[low, d_vocab)`` from ``torch.Generator().manual_seed(seed)``, shape
    ``[n_seq, seq_len]`` (int64); column 0 set to ``bos`` unless it is None."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(low, d_vocab, (n_seq, seq_len), generator=g)
    if bos is not None:
        tokens[:, 0] = bos
    return tokens


# ---- dictionaries --------------------------------------------------------------------------------
def make_sae(
    kind: str,
    d_in: int,
    d_sae: int,
    hook: str,
    sample: torch.Tensor | None = None,
    seed: int = 0,
    density: float = 0.2,
) -> Any:
    """SAELens SAE of the given architecture with random weights (``torch.manual_seed(seed)``).

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


def make_directions(d_in: int, n: int, hook: str, seed: int = 0, path: Path | None = None) -> Any:
    """``n`` random directions ``[n, d_in]`` at ``hook`` (``torch.Generator`` from ``seed``,
    scaled to unit norm) as a :class:`~core.dictionaries.directions.DirectionsDictionary`;
    with ``path``, also written there as a directions file (tensor ``directions``, metadata
    ``hook_name``)."""
    from safetensors.torch import save_file

    from core.dictionaries.directions import DirectionsDictionary

    g = torch.Generator().manual_seed(seed)
    vecs = torch.randn(n, d_in, generator=g)
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    if path is not None:
        save_file({"directions": vecs}, str(path), metadata={"hook_name": hook})
    return DirectionsDictionary(vecs, hook)


def sae_at(model: Any, tokens: torch.Tensor, hook: str, d_sae: int = 16) -> Any:
    """A standard SAE reading ``hook`` of ``model``, calibrated on ``tokens`` to fire on
    about 30% of positions."""
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    d = model.cfg.d_model
    return make_sae("standard", d, d_sae, hook, sample=cache[hook].reshape(-1, d), density=0.3)


def z_sae_at(
    model: Any, tokens: torch.Tensor, layer: int = 1, d_sae: int = 16, kind: str = "standard"
) -> Any:
    """A SAELens SAE on ``blocks.{layer}.attn.hook_z`` of ``model`` (flat ``heads * d_head``
    inputs, ``reshape_activations="hook_z"`` as SAELens's attention SAEs are configured),
    calibrated on ``tokens`` to fire on about 30% of positions (seed 0)."""
    hook = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    z = cache[hook].flatten(2).reshape(-1, model.cfg.n_heads * model.cfg.d_head)
    sae = make_sae(kind, z.shape[1], d_sae, hook, sample=z, density=0.3)
    sae.cfg.reshape_activations = "hook_z"
    sae.turn_on_forward_pass_hook_z_reshaping()
    return sae


def transcoder_at(
    model: Any, tokens: torch.Tensor, hook_in: str, hook_out: str, d_sae: int = 16
) -> Any:
    """A SAELens transcoder from ``hook_in`` to ``hook_out`` of ``model``, calibrated on
    ``tokens`` to fire on about 30% of positions (seed 0)."""
    import sae_lens as sl

    d = model.cfg.d_model
    torch.manual_seed(0)
    tc = sl.Transcoder(
        sl.TranscoderConfig(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False)
    )
    tc.cfg.metadata.hook_name = hook_in
    tc.cfg.metadata.hook_name_out = hook_out
    _, cache = model.run_with_cache(tokens, names_filter=hook_in)
    x = cache[hook_in].reshape(-1, d)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn_like(tc.W_enc))
        tc.W_dec.copy_(torch.randn_like(tc.W_dec) * 0.5)
        tc.b_dec.zero_()
        tc.b_enc.copy_(-torch.quantile(x @ tc.W_enc, 0.7, dim=0))
    return tc


# ---- Hugging Face tokenizers and model directories -----------------------------------------------
def word_tokenizer(
    words: list[str],
    *,
    split_punctuation: bool = True,
    transformer_lens_name: str | None = None,
) -> Any:
    """A word-level fast tokenizer over ``words`` (id 0 is BOS/EOS/UNK, the others in order).

    ``split_punctuation=False`` splits on whitespace only, so tokens such as ``<script>``
    stay whole. ``transformer_lens_name``: a tokenizer handed to a HookedTransformer directly
    (it gets a pad token, that name, and says it adds BOS, so TransformerLens neither reloads
    it by name nor adds BOS twice).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS_TEXT: BOS_ID}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token=BOS_TEXT))
    tk.pre_tokenizer = (
        pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    )
    special = dict(bos_token=BOS_TEXT, eos_token=BOS_TEXT, unk_token=BOS_TEXT)
    if transformer_lens_name is not None:
        special["pad_token"] = BOS_TEXT
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **special)
    if transformer_lens_name is not None:
        tok.init_kwargs["name_or_path"] = transformer_lens_name
        tok.init_kwargs["add_bos_token"] = True
    return tok


def save_hf_model(
    path: Path | str, tokenizer: Any, *, special_ids: bool = True, n_positions: int = 64
) -> Any:
    """Save a tiny random GPT-2 (2 layers, width 32, 4 heads, context ``n_positions``,
    ``torch.manual_seed(0)``) with ``tokenizer`` as a Hugging Face directory; returns the model.
    ``special_ids``: the config names id 0 as BOS and EOS (otherwise GPT-2's defaults stay)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ids = dict(bos_token_id=BOS_ID, eos_token_id=BOS_ID) if special_ids else {}
    cfg = GPT2Config(
        vocab_size=len(tokenizer.get_vocab()),
        n_positions=n_positions,
        n_ctx=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=4,
        **ids,
    )
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return hf


def write_hf_model(
    path: Path | str, words: list[str], split_punctuation: bool = True
) -> tuple[Any, Any]:
    """:func:`save_hf_model` with a :func:`word_tokenizer` over ``words`` (BOS/EOS id 0).
    Returns ``(hf_model, tokenizer)``."""
    tok = word_tokenizer(words, split_punctuation=split_punctuation)
    return save_hf_model(path, tok), tok


# ---- workspaces ----------------------------------------------------------------------------------
def make_workspace(
    n_features: int,
    config: Any,
    *,
    n_seq: int = 24,
    seq_len: int = 12,
    token_seed: int = 0,
    density: float = 0.2,
) -> Any:
    """A Workspace over :func:`make_model` (2 layers), :func:`random_tokens` and a standard
    SAE at :data:`HOOK` with ``n_features`` uncalibrated features; no memo. ``config``: the
    workspace's :class:`~core.config.RunConfig`."""
    from core.dictionaries.saelens import SAELensDictionary
    from core.models import ModelAdapter
    from core.workspace import Workspace

    model = make_model(n_layers=2)
    tokens = random_tokens(n_seq, seq_len, seed=token_seed)
    sae = make_sae("standard", 32, n_features, HOOK, density=density)
    return Workspace(
        ModelAdapter(model, bos_token_id=BOS_ID), SAELensDictionary(sae), tokens, config=config
    )
