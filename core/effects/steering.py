"""Steering: continue a prompt with a feature pushed or clamped, beside the plain continuation.

:func:`steer` generates a continuation with the feature's decoder direction added at its
output hook (``coefficient``, negative allowed) or the feature clamped to a value,
side by side with the unsteered continuation from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from core.dictionaries.protocol import Dictionary
from core.effects.common import EffectsError, ablation_site, encode_features
from core.models import ModelAdapter

#: the longest continuation :func:`steer` produces
MAX_NEW_TOKENS = 256


@torch.no_grad()
def steer(
    model: ModelAdapter,
    dictionary: Dictionary,
    feature: int,
    prompt: str,
    coefficient: float | None = None,
    clamp: float | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    temperature: float = 0.0,
    *,
    hook: str | None = None,
    include_bos: bool = False,
) -> dict[str, Any]:
    """Continue ``prompt`` with and without the feature steered, side by side.

    Exactly one of:

    * ``coefficient``: add ``coefficient * d_f`` at the dictionary's output hook at every
      position (prompt and generated tokens); negative values push away from the feature.
    * ``clamp``: set the feature to ``clamp`` everywhere, i.e. add ``(clamp - a_f) * d_f``
      where ``a_f`` is its current activation (read at the input hook in the same pass);
      ``clamp=0`` ablates it.

    BOS positions are left alone unless ``include_bos`` (their activations are often
    huge attention-sink outliers). Both continuations run in one batch from the same
    seed: greedy when ``temperature == 0`` (the default), else sampled from
    ``softmax(logits / temperature)`` with one ``torch.Generator`` seeded ``seed`` per
    row, so they draw the same random numbers. Generation stops at ``max_new_tokens``
    (at most :data:`MAX_NEW_TOKENS`) or the end-of-text token. Uses a key-value cache.

    Returns:
        ``{"prompt", "feature", "mode", "value", "hook", "steered", "unsteered",
        "steered_tokens", "unsteered_tokens", "diverges_at", "max_new_tokens", "seed",
        "temperature"}``; ``diverges_at`` is the first generated index where the two
        continuations differ (``None`` when they agree).
    """
    if (coefficient is None) == (clamp is None):
        raise EffectsError("give exactly one of coefficient (add the direction) or clamp (set it)")
    value = float(coefficient if coefficient is not None else clamp)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise EffectsError(f"the steering value must be finite, got {value!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise EffectsError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise EffectsError(
            f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}"
        )
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise EffectsError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(feature, int) or not 0 <= feature < dictionary.n_features:
        raise EffectsError(
            f"feature {feature!r} does not exist: the dictionary has {dictionary.n_features}"
        )
    tok = model.tokenizer
    if tok is None:
        raise EffectsError(
            f"model {model.name!r} has no tokenizer, so it cannot turn a prompt into tokens or "
            "generated tokens into text: load the model with its tokenizer to steer"
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise EffectsError("the prompt is empty: type some text to continue")
    m = model.model
    device = model.device
    ids = model.to_tokens(prompt).to(device)
    n_ctx = int(m.cfg.n_ctx)
    if ids.shape[1] + max_new_tokens > n_ctx:
        raise EffectsError(
            f"the prompt has {ids.shape[1]} tokens; with {max_new_tokens} new tokens that "
            f"exceeds the model's context of {n_ctx}: shorten the prompt or ask for fewer tokens"
        )
    site = ablation_site(model, dictionary, hook)
    feat = torch.tensor([feature])
    d = dictionary.decoder_directions(feat)[0].to(device=device, dtype=model.dtype)
    bos = model.bos_token_id
    state: dict[str, Tensor | None] = {"tokens": None, "read": None}

    def read_fn(act: Tensor, hook) -> Tensor:
        state["read"] = act
        return act

    def write_fn(act: Tensor, hook) -> Tensor:
        cur = state["tokens"]
        assert cur is not None
        keep = torch.ones(act.shape[1], device=act.device, dtype=torch.bool)
        if not include_bos and bos is not None:
            keep &= cur[0] != bos
        if coefficient is not None:
            amount = keep.float() * value
        else:
            src = act if site.read_hook == site.write_hook else state["read"]
            if src is None:
                raise EffectsError(
                    f"cannot clamp: the input hook {site.read_hook!r} runs after the output "
                    f"hook {site.write_hook!r} in the forward pass"
                )
            a = encode_features(dictionary, src[:1], [feature], keep[None])[0, :, 0]
            amount = (value - a) * keep.float()
        out = act.clone()
        shape = (act.shape[1], *([1] * (act.ndim - 2)))
        out[0] = out[0] + amount.to(act.dtype).view(shape) * d.view(1, *act.shape[2:])
        return out

    hooks: list[tuple[str, Callable]] = [(site.write_hook, write_fn)]
    if clamp is not None and site.read_hook != site.write_hook:
        hooks.insert(0, (site.read_hook, read_fn))
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(m.cfg, m.cfg.device, 2)
    gens = [torch.Generator(device=device).manual_seed(int(seed)) for _ in range(2)]
    eos = tok.eos_token_id
    generated: list[list[int]] = [[], []]
    done = [False, False]
    cur = ids.repeat(2, 1)
    with m.hooks(fwd_hooks=hooks):
        for _ in range(max_new_tokens):
            state["tokens"], state["read"] = cur, None
            # an explicit all-ones mask: a generated token that happens to be the pad
            # token must stay visible, as in a plain forward pass over the whole text
            mask = torch.ones_like(cur)
            logits = m(cur, past_kv_cache=cache, attention_mask=mask)[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.cat(
                    [torch.multinomial(probs[r], 1, generator=gens[r]) for r in range(2)]
                )
            for r in range(2):
                t = int(nxt[r])
                if done[r]:
                    continue
                if eos is not None and t == eos:
                    done[r] = True
                else:
                    generated[r].append(t)
            if all(done):
                break
            cur = nxt[:, None]
    diverges = next(
        (i for i, (x, y) in enumerate(zip(*generated, strict=False)) if x != y),
        None if len(generated[0]) == len(generated[1]) else min(map(len, generated)),
    )
    return {
        "prompt": prompt,
        "feature": feature,
        "mode": "coefficient" if coefficient is not None else "clamp",
        "value": value,
        "hook": site.write_hook,
        "steered": tok.decode(generated[0]),
        "unsteered": tok.decode(generated[1]),
        "steered_tokens": model.token_strings(generated[0]),
        "unsteered_tokens": model.token_strings(generated[1]),
        "diverges_at": diverges,
        "max_new_tokens": max_new_tokens,
        "seed": int(seed),
        "temperature": temperature,
    }
