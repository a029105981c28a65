"""Exact per-token effects of a feature on the model's predictions (feature ablation).

Effects (what each token's hover on a feature page shows)
---------------------------------------------------------
For every example shown on a feature page (top examples and interval groups) the
feature is *ablated*: its contribution ``a_f(t) * d_f`` is subtracted at the hook the
dictionary writes to, at every position ``t`` of the sequence, and the rest of the model
runs from there. ``a_f`` is the feature's activation computed from the *clean*
activations at the hook the dictionary reads (the same hook for an SAE; ``hook_in``
for a transcoder, whose contribution is removed at ``hook_out``); ``d_f`` is its decoder
row. Positions the sweep ignores (BOS, and padding when distinct from BOS) are left
alone, exactly as they carry no activation on the page. Nothing is approximated: the
ablated network is run through every later layer, the final normalisation and the
unembedding (contrast with the direct-path estimate, which sends ``d_f`` straight
through ``W_U``).

Sign conventions: everything is the feature's *contribution*, clean minus ablated.

* ``contribution[v] = log p_clean(v) - log p_ablated(v)`` at a position.
* ``loss`` at position ``t`` is ``loss_ablated - loss_clean`` of predicting token
  ``t + 1``, which equals ``contribution[token t+1]``: **positive means the feature
  helped predict the next token** (removing it raises the loss). ``None`` at the last
  position of a sequence (there is no next token).
* ``top_up``: the ``k`` tokens whose log-probability the feature raises most (they fall
  most when it is ablated), values > 0. ``top_down``: the ``k`` it lowers most (they rise
  most when it is ablated), values < 0.
* By causality a position before the feature's first activation is unaffected: its loss
  is exactly 0 and its token lists are empty.

Per example, :attr:`Example.effects` gets plain JSON data, one entry per shown token::

    {"loss": [float | None, ...],
     "top_up": [[[token_str, value], ...], ...], "top_up_ids": [[id, ...], ...],
     "top_down": ..., "top_down_ids": ...,
     "per_token": ["loss effect +0.123 (next ' the')\\n↑ ' the' +0.40 ...\\n↓ ...", ...],
     "loss_qualifying": float | None,   # loss at the qualifying token (sort key)
     "loss_sum": float}                 # sum over the shown tokens

and :attr:`FeatureData.extras` gets ``"effects"`` (method, hooks, ``k``, a legend and
``mean_loss_qualifying``). Results are memoised per (feature, base key): a second
request for the same page runs no forward pass.

Cost: one clean pass per distinct sequence (shared by all features), one ablated pass
per distinct (sequence, feature) pair, both batched and truncated after the last shown
position (later positions cannot change earlier predictions). When the write hook is a
residual-stream hook the clean residual is cached there and ablated runs start at that
layer (``start_at_layer``); other hooks inside a block start at that block with a
forward hook; hooks outside the blocks run the whole model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from core.config import Progress
from core.dictionaries.protocol import Dictionary
from core.effects.common import AblationSite, EffectsError, ablation_site
from core.effects.passes import run_passes
from core.effects.payload import EFFECTS_VERSION, apply_payload, effects_payload, examples_digest
from core.engine.cached import token_fingerprint
from core.engine.features import FeatureData
from core.engine.keys import memo_key
from core.memo import Memo
from core.models import ModelAdapter


def _dictionary_dtype(dictionary: Dictionary) -> torch.dtype:
    return dictionary.decoder_directions(torch.tensor([0])).dtype


def effects_key(
    prefix: str, feature: int, fd: FeatureData, k: int, site: AblationSite, extra: dict
) -> str:
    """Memo key of one feature's effects: base key, feature, ``k``, hooks, shown spans."""
    return memo_key(
        {
            "effects": EFFECTS_VERSION,
            "prefix": prefix,
            "feature": int(feature),
            "k": int(k),
            "site": site.to_dict(),
            "examples": examples_digest(fd),
            **extra,
        }
    )


def default_prefix(model: ModelAdapter, dictionary: Dictionary, tokens: Tensor) -> str:
    """Key prefix from the model, dictionary and token fingerprints (when no base key is given)."""
    return memo_key(
        {
            "model": [model.name, model.fingerprint()],
            "dictionary": dictionary.fingerprint(),
            "tokens": token_fingerprint(tokens),
        }
    )


@torch.no_grad()
def compute_effects(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    feature_data: Mapping[int, FeatureData] | list[FeatureData],
    k: int = 5,
    batch_size: int = 16,
    *,
    hook: str | None = None,
    ignore_bos: bool = True,
    ignore_padding: bool = True,
    memo: Memo | None = None,
    key_prefix: str | None = None,
    progress: Progress | None = None,
    stats: dict[str, Any] | None = None,
) -> dict[int, FeatureData]:
    """Exact loss and logit effects of each feature on every token shown on its page.

    Args:
        model: the language model the pages were computed on.
        dictionary: the dictionary the features belong to.
        tokens: ``[sequences, positions]`` token ids the sweep ran on (``Example.seq``
            indexes its rows).
        feature_data: the pages, as ``{feature: FeatureData}`` or a list (keyed by
            ``FeatureData.index``).
        k: tokens kept in each of ``top_up`` / ``top_down``.
        batch_size: sequences (clean runs) or (sequence, feature) pairs (ablated runs)
            per forward pass.
        hook: the sweep's hook override (``RunConfig.hook``), ``None`` for the dictionary's.
        ignore_bos, ignore_padding: as in the sweep; those positions are not ablated.
        memo: memo layer; each feature's effects are stored under its own key.
        key_prefix: the sweep's base key (``core.engine.cached.base_key``); derived from
            model, dictionary and token fingerprints when ``None``.
        progress: called with (fraction done, message).
        stats: when given, filled with ``forward_passes``, ``clean_passes``,
            ``ablated_passes``, ``pairs``, ``sequences``, ``from_memo``, ``seconds``, and the
            work done: ``token_layers`` (token positions times blocks run) and
            ``unembedded_positions``.

    Returns:
        ``{feature: FeatureData}`` in the input order: copies of the inputs with every
        shown example's :attr:`Example.effects` and ``extras["effects"]`` filled (see the
        module docstring for the layout and signs). The inputs are not modified.
    """
    t0 = time.perf_counter()
    report = progress or (lambda frac, msg: None)
    if not isinstance(k, int) or k < 1:
        raise EffectsError(f"k must be a positive integer, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EffectsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise EffectsError("tokens must be a 2-D integer tensor [sequences, positions]")
    fds: dict[int, FeatureData] = (
        {int(fd.index): fd for fd in feature_data}
        if isinstance(feature_data, list)
        else {int(f): fd for f, fd in feature_data.items()}
    )
    for f in fds:
        if not 0 <= f < dictionary.n_features:
            raise EffectsError(
                f"feature {f} does not exist: the dictionary has {dictionary.n_features}"
            )
    site = ablation_site(model, dictionary, hook)
    if dictionary.d_out != model.d_model and site.edit_resid:
        raise EffectsError(
            f"the dictionary writes {dictionary.d_out}-wide vectors but {site.write_hook!r} "
            f"is {model.d_model} wide"
        )
    tokens = tokens.long().cpu()
    k = min(k, model.d_vocab)
    extra_key = {
        "ignore_bos": ignore_bos,
        "ignore_padding": ignore_padding,
        "dtype": [str(model.dtype), str(_dictionary_dtype(dictionary))],
    }

    payloads: dict[int, dict[str, Any]] = {}
    keys: dict[int, str] = {}
    if memo is not None:
        prefix = key_prefix or default_prefix(model, dictionary, tokens)
        for f, fd in fds.items():
            keys[f] = effects_key(prefix, f, fd, k, site, extra_key)
            got = memo.get_json(keys[f])
            if isinstance(got, dict) and got.get("digest") == examples_digest(fd):
                payloads[f] = got
    missing = {f: fd for f, fd in fds.items() if f not in payloads}
    counters = {
        "clean_passes": 0,
        "ablated_passes": 0,
        "pairs": 0,
        "sequences": 0,
        "token_layers": 0,
        "unembedded_positions": 0,
    }
    if missing:
        results = run_passes(
            model, dictionary, tokens, missing, k, batch_size, site,
            ignore_bos, ignore_padding, report, counters,
        )  # fmt: skip
        vocab = model.vocab_strings()
        for f, fd in missing.items():
            payloads[f] = effects_payload(fd, f, results, tokens, vocab, k, site, dictionary)
            if memo is not None:
                memo.put_json(keys[f], payloads[f])
    else:
        report(1.0, "all effects came from the cache")
    if stats is not None:
        stats.update(counters)
        stats["forward_passes"] = counters["clean_passes"] + counters["ablated_passes"]
        stats["from_memo"] = len(fds) - len(missing)
        stats["features"] = len(fds)
        stats["seconds"] = time.perf_counter() - t0
    return {f: apply_payload(fd, payloads[f]) for f, fd in fds.items()}
