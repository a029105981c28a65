"""Memoised feature computation: cached features come back without running the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from core.config import Progress, RunConfig
from core.dictionaries.protocol import Dictionary
from core.engine.activations import ActivationStore
from core.engine.dfa import attach_dfa
from core.engine.features import FeatureData, gc_paused
from core.engine.keys import memo_key, token_fingerprint
from core.engine.result import FeatureChunk
from core.engine.sweep import prepare_tokens, run_sweep, validate_features
from core.memo import Memo, feature_key, feature_prefix
from core.models import ModelAdapter

# Share of the progress bar given to the sweep; the rest is building and saving each
# feature's data, reported feature by feature so the bar never waits at 100%.
SWEEP_SHARE = 0.8


def source_key(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
) -> str:
    """The memo key of (model, dictionary, tokens, result-changing config).

    Every computing path (the app's workspace, the notebook API, the precompute runner)
    stores feature ``f`` under :func:`feature_key` of this, so any of them warms the
    others. ``tokens`` are the prepared tokens (:func:`~core.engine.sweep.prepare_tokens`).
    """
    hook = config.hook or dictionary.hook_in
    cfg = config.result_key_dict()
    cfg["hook"] = hook
    parts: dict[str, Any] = {
        "model": [model.name, model.fingerprint()],
        "dictionary": [
            dictionary.identity().get("architecture", dictionary.family),
            dictionary.fingerprint(),
        ],
        "tokens": token_fingerprint(tokens),
        "config": cfg,
    }
    return memo_key(parts)


def _lookup(key: str, memo: Memo, readers: Sequence[Memo]) -> FeatureData | None:
    for m in (memo, *readers):
        got = m.get_feature(key)
        if got is not None:
            return got
    return None


def missing_features(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    memo: Memo | None,
    readers: Sequence[Memo] = (),
) -> list[int]:
    """The requested features a :func:`compute_features` call would have to compute (a key
    check per feature: nothing is read or decoded)."""
    tokens = prepare_tokens(tokens, config)
    features = validate_features(config.features, dictionary.n_features)
    if memo is None:
        return features
    prefix = feature_prefix(
        source_key(model, dictionary, tokens, config), config.feature_correlation, features
    )
    stores = (memo, *readers)
    missing = [f for f in features if not any(feature_key(prefix, f) in m for m in stores)]
    return features if missing and config.feature_correlation == "requested" else missing


def stream_features(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    memo: Memo | None,
    batch: int,
    dataset: dict[str, Any] | None = None,
    progress: Progress | None = None,
    activation_store: ActivationStore | None = None,
) -> Iterator[tuple[FeatureChunk, list[bytes]]]:
    """Sweep every feature of ``config.features`` (whatever the memo holds) and yield their
    data ``batch`` features at a time, in the requested order, each batch stored in the memo
    (under the shared keys) before it is yielded. Only one batch is built at a time, so a
    whole dictionary never sits in memory as :class:`FeatureData`; a batch
    (:class:`~core.engine.result.FeatureChunk`, a mapping) is built when first read, and
    its summary table comes from the columns. Each batch comes with its features' stored
    bytes (:meth:`~core.engine.result.FeatureSet.row_bytes`, in order; what the memo
    holds). ``tokens`` are prepared.
    """
    features = validate_features(config.features, dictionary.n_features)
    report = progress or (lambda frac, msg: None)
    result = run_sweep(
        model,
        dictionary,
        tokens,
        config,
        dataset=dataset,
        progress=lambda frac, msg: report(frac * SWEEP_SHARE, msg),
        activation_store=activation_store,
    )
    attach_dfa(model, dictionary, tokens, config, result.features)
    prefix = ""
    if memo is not None:
        prefix = feature_prefix(
            source_key(model, dictionary, tokens, config), config.feature_correlation, features
        )
    n, k = len(features), 0
    # built ``batch`` at a time from the columns, stored in one transaction per batch. The
    # cyclic collector stays paused until the last batch is handed over (the caller's use
    # of each batch included): every batch's objects are freed by reference counting, and a
    # collection each time the collector came back would walk a whole live batch
    with gc_paused():
        for part, rows in result.features.stored_batches(batch):
            if memo is not None:
                memo.put_rows(zip((feature_key(prefix, f) for f in part), rows, strict=True))
            k += len(part)
            done = SWEEP_SHARE + (1 - SWEEP_SHARE) * k / n
            report(done, f"building and saving feature data: {k:,}/{n:,}")
            yield part, rows


def compute_features(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    memo: Memo | None = None,
    dataset: dict[str, Any] | None = None,
    progress: Progress | None = None,
    activation_store: ActivationStore | None = None,
    readers: Sequence[Memo] = (),
) -> dict[int, FeatureData]:
    """Feature data for ``config.features``, from the memo (or one of the read-only
    ``readers``: precompute outputs of the same sources) where present.

    Missing features are computed in one sweep (in ``requested`` correlation mode the
    result depends on the whole requested set, so all are recomputed together) and
    stored. Returns a dict keyed by feature index, in ascending order.
    """
    tokens = prepare_tokens(tokens, config)
    features = validate_features(config.features, dictionary.n_features)
    if memo is None:
        result = run_sweep(model, dictionary, tokens, config, dataset=dataset, progress=progress)
        attach_dfa(model, dictionary, tokens, config, result.features)
        return result.features
    prefix = feature_prefix(
        source_key(model, dictionary, tokens, config), config.feature_correlation, features
    )
    found: dict[int, FeatureData] = {}
    for f in features:
        got = _lookup(feature_key(prefix, f), memo, readers)
        if got is not None:
            found[f] = got
    missing = [f for f in features if f not in found]
    if missing and config.feature_correlation == "requested":
        missing = features
    if missing:
        sub = dataclasses.replace(config, features=missing)
        step = max(1, len(missing) // 100)  # about a hundred updates, whatever the count
        for batch, _ in stream_features(
            model, dictionary, tokens, sub, memo, step, dataset, progress, activation_store
        ):
            found.update(batch)
    elif progress is not None:
        progress(1.0, "all features came from the cache")
    return {f: found[f] for f in features}
