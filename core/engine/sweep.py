"""The batch loop: every requested feature's dashboard data in (at most) two passes.

Pass 1 runs the model once per token batch, stopping right after the hook, encodes the
requested features chunk by chunk and updates the moment, neuron-correlation and
top-example accumulators (and the feature-correlation sums when they span the whole
dictionary). The hook activations are kept on the device (up to
``activation_cache_bytes``) so that pass 2, which needs each feature's maximum to place
its histogram and interval bins (and to fix int8 scales for the feature-correlation
sums among the requested features), runs without the model.
Decoder-side statistics (logit effects, neuron alignment) need no tokens at all.

The result is plain data: one :class:`~core.engine.features.FeatureData` per feature.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from core.config import NORM_REFERENCE_SEQUENCES, ConfigError, Progress, RunConfig
from core.dictionaries.protocol import Dictionary, DictionaryError
from core.engine.activations import ActivationStore
from core.engine.distributed import current as current_shard
from core.engine.features import SweepInfo
from core.engine.gram import GramStats, gram_dtype, requested_gram
from core.engine.gram_budget import SparseStoreGram, dense_gram_bytes, resolve_budget
from core.engine.keys import token_fingerprint
from core.engine.result import FeatureSet
from core.engine.stats import (
    BinCounts,
    IntervalSampler,
    KeptActs,
    MomentStats,
    SparseActs,
    TopExamples,
    signed_bins,
    sparse_bins,
    window_offsets,
)
from core.errors import FeaturescopeError
from core.models import ModelAdapter, ModelError
from core.settings import DeviceError, resolve_device, torch_dtype


class EngineError(FeaturescopeError, ValueError):
    """Bad input to the engine; the message names the problem and the fix."""


@dataclass
class SweepResult:
    """``features`` maps each index to its data (built lazily from columns)."""

    features: FeatureSet
    info: SweepInfo


def prepare_tokens(tokens: Tensor, config: RunConfig) -> Int[Tensor, "n l"]:
    if not isinstance(tokens, Tensor):
        raise EngineError(f"tokens must be a torch tensor of ids, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise EngineError(
            f"tokens must be 2-D [sequences, positions], got shape {tuple(tokens.shape)}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise EngineError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if config.n_sequences is not None:
        tokens = tokens[: config.n_sequences]
    if config.context_length is not None:
        tokens = tokens[:, : config.context_length]
    if tokens.numel() == 0:
        raise EngineError(
            "no tokens to sweep: the dataset is empty or n_sequences/context_length is 0"
        )
    if tokens.shape[1] > (1 << 20):
        raise EngineError("sequences longer than 1,048,576 tokens are not supported")
    return tokens.long().cpu()


def validate_features(features: list[int] | None, n_features: int) -> list[int]:
    if features is None:
        return list(range(n_features))
    if len(features) == 0:
        raise EngineError("no features requested: give a list, a range like 0:64, or 'all'")
    bad = [f for f in features if f < 0 or f >= n_features]
    if bad:
        raise EngineError(
            f"feature index {bad[0]} is out of range: the dictionary has {n_features} features "
            f"(valid indices 0-{n_features - 1})"
        )
    return sorted(set(int(f) for f in features))


def check_fit(
    model: ModelAdapter, dictionary: Dictionary, hook: str, tokens: Tensor, device
) -> None:
    """Fail before any heavy compute when the dictionary cannot read the hook."""
    try:
        model.check_hook(hook)
        if dictionary.hook_out != hook:
            model.check_hook(dictionary.hook_out)
    except ModelError as exc:
        raise EngineError(str(exc)) from exc
    probe = tokens[:1, : min(tokens.shape[1], 4)].to(device)
    act = model.run_to_hooks(probe, [hook])[hook]
    width = act.shape[2:].numel()
    if width != dictionary.d_in:
        raise DictionaryError(
            f"the dictionary reads {dictionary.d_in}-wide inputs but hook {hook!r} of model "
            f"{model.name!r} is {width} wide: pick the hook (or model) the dictionary was trained on"
        )


def activation_key(
    store: ActivationStore,
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
) -> str:
    """The key under which a sweep of ``tokens`` with ``config`` keeps its hook activations."""
    hook = config.hook or dictionary.hook_in
    toks = prepare_tokens(tokens, config)
    return store.key(model.fingerprint(), hook, token_fingerprint(toks), torch_dtype(config.dtype))


def _feature_list(ids: Tensor, limit: int = 8) -> str:
    """``"3, 5 and 7"`` (at most ``limit`` indices, then how many more)."""
    values = [int(v) for v in ids[: limit + 1].tolist()]
    shown = ", ".join(str(v) for v in values[:limit])
    more = int(ids.numel()) - limit
    return f"{shown} and {more:,} more" if more > 0 else shown


def check_decoder(dictionary: Dictionary, feats: Tensor, chunk: int) -> None:
    """Fail before the sweep when decoder directions of ``feats`` hold NaN or infinity."""
    bad: list[Tensor] = []
    for sl in _chunks(feats.numel(), chunk):
        w = dictionary.decoder_directions(feats[sl])
        bad.append(feats[sl][~torch.isfinite(w).all(dim=1)])
    found = torch.cat(bad) if bad else feats[:0]
    if found.numel():
        raise EngineError(
            f"the decoder of feature(s) {_feature_list(found)} holds NaN or infinite values: "
            "the dictionary's weights are damaged (or training diverged); load or export them "
            "again"
        )


def _non_finite_error(what: str, feats: Tensor, hook: str) -> EngineError:
    return EngineError(
        f"{what} of feature(s) {_feature_list(feats)} at hook {hook!r} are NaN or infinite: "
        "the dictionary's encoder weights are damaged (or the model overflows in float16: try "
        "bfloat16 or float32); load or export the dictionary again"
    )


def reference_norm(hook_acts, n_seq: int, batch_size: int) -> Tensor:
    """The lower median of the activation L2 norms over the tokens of the first
    :data:`~core.config.NORM_REFERENCE_SEQUENCES` sequences that are not ignored (the
    reference of ``max_norm_ratio``; independent of ``batch_size``)."""
    norms = []
    for sl in _chunks(min(n_seq, NORM_REFERENCE_SEQUENCES), batch_size):
        x, m = hook_acts(sl)
        norms.append(x.float().norm(dim=1)[m])
    found = torch.cat(norms)
    if found.numel() == 0:
        raise EngineError(
            "max_norm_ratio needs tokens to take the median norm from, but every token of the "
            f"first {NORM_REFERENCE_SEQUENCES} sequences is ignored: ignore fewer positions"
        )
    return found.median()


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Encoder:
    """Encodes features of one batch, computing non-separable dictionaries once."""

    def __init__(self, dictionary: Dictionary, dtype: torch.dtype):
        self.d = dictionary
        self.dtype = dtype
        self._full: Tensor | None = None

    def reset(self) -> None:
        self._full = None

    def __call__(self, x: Tensor, feats: Tensor) -> Tensor:
        if self.d.encode_is_separable:
            return self.d.encode(x, feats).float()
        if self._full is None:
            self._full = self.d.encode(x, None).float()
        return self._full[:, feats]

    def masked(self, x: Tensor, feats: Tensor, drop: Tensor) -> Tensor:
        """The activations of ``feats`` with the token rows ``drop`` multiplied by 0 (the
        same floats as multiplying by the 0/1 mask, at the cost of those rows only)."""
        a = self(x, feats)
        if drop.numel():
            if a._is_view() or a.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                a = a.clone()  # never write into the dictionary's or the model's tensors
            a[drop] = a[drop] * 0.0
        return a


@torch.no_grad()
def run_sweep(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    dataset: dict[str, Any] | None = None,
    progress: Progress | None = None,
    activation_store: ActivationStore | None = None,
) -> SweepResult:
    """Compute :class:`FeatureData` for ``config.features`` of ``dictionary``.

    Args:
        model: the language model.
        dictionary: the sparse dictionary (SAE, transcoder, CLT layer).
        tokens: ``[sequences, positions]`` token ids (BOS included when used).
        config: what to compute; see :class:`~core.config.RunConfig`.
        dataset: JSON-able identity of the token source, stored in the result.
        progress: called with (fraction done, message).
        activation_store: where hook activations are kept between runs; when it holds
            this (model, hook, tokens, dtype), no forward pass runs at all.
    """
    t_start = time.perf_counter()
    report = progress or (lambda frac, msg: None)
    try:  # checked against this machine; a refusal names the devices it has
        device = torch.device(resolve_device(config.device))
    except DeviceError as exc:
        raise ConfigError(str(exc)) from exc
    dtype = torch_dtype(config.dtype)
    tokens = prepare_tokens(tokens, config)
    n_seq, length = tokens.shape
    shard = current_shard()  # under torchrun: this rank's sequences, merged accumulators
    if shard.active:
        activation_store = None  # a rank sees only its share of the activations
    feats_list = validate_features(config.features, dictionary.n_features)
    hook = config.hook or dictionary.hook_in

    model.to(device, dtype)
    dictionary.to(device, dtype)
    check_fit(model, dictionary, hook, tokens, device)

    feats = torch.tensor(feats_list, device=device, dtype=torch.long)
    n_req = feats.numel()
    check_decoder(dictionary, feats, config.feature_chunk_size)
    all_requested = n_req == dictionary.n_features
    corr = config.feature_correlation
    need_all_cols = corr == "all" and not all_requested

    # valid positions
    valid = torch.ones_like(tokens, dtype=torch.bool)
    bos, pad = model.bos_token_id, model.pad_token_id
    if config.ignore_bos and bos is not None:
        valid &= tokens != bos
    if config.ignore_padding and pad is not None and pad != bos:
        valid &= tokens != pad
    if config.ignore_positions:
        valid[:, [p for p in config.ignore_positions if p < length]] = False

    offsets, _ = window_offsets(
        config.window_before, config.window_after, length if config.whole_sequence else None, device
    )
    whole = config.whole_sequence
    d_in = dictionary.d_in
    # signed activations (projections on given directions): non-zeros count as active, the
    # most negative examples are kept too (the top of -acts), correlations never in int8
    signed = dictionary.signed
    moments = MomentStats(n_req, d_in, device, signed=signed)
    top = TopExamples(n_req, config.n_top_examples, offsets, whole, device)
    bottom = TopExamples(n_req, config.n_top_examples, offsets, whole, device) if signed else None
    gram_config = dataclasses.replace(config, gram_precision="float32") if signed else config
    # Feature-by-feature sums: in pass 1 when the columns span the whole dictionary
    # (unrequested features' maxima are never known), else in pass 2 (requested_gram).
    # Over the memory budget, pass 1 keeps the sparse activations instead (gram_budget).
    gram: GramStats | SparseStoreGram | None = None
    sparse: SparseStoreGram | None = None
    n_cols = dictionary.n_features if need_all_cols else n_req
    budget = resolve_budget(config.memory_budget, device)
    if corr != "none" and dense_gram_bytes(n_req, n_cols) > budget:
        if shard.active:
            raise EngineError(
                "feature correlations over the memory budget (stored sparse activations) are "
                "not split across ranks yet: raise --memory-budget, use --correlation requested "
                "or none, or run on one process"
            )
        row_cols = feats if need_all_cols else None
        # columns = the requested features: their sums are the moments' (staged alike)
        sums = None if need_all_cols else (moments.sum, moments.sumsq)
        gram = sparse = SparseStoreGram(
            n_req, n_cols, device, budget, row_cols, valid.numel(), col_sums=sums
        )
    elif need_all_cols:
        gram = GramStats(
            n_req,
            dictionary.n_features,
            device,
            symmetric=False,
            strategy=config.gram_strategy,
            dtype=gram_dtype(gram_config, dtype),
        )
    encoder = _Encoder(dictionary, dtype)
    chunks = _chunks(n_req, config.feature_chunk_size)
    all_feats = torch.arange(dictionary.n_features, device=device)
    all_chunks = _chunks(dictionary.n_features, config.feature_chunk_size)
    batches = shard.batches(n_seq, config.batch_size)

    cache: list[Tensor] = []
    bytes_per_batch = config.batch_size * length * d_in * torch.finfo(dtype).bits // 8
    keep_cache = bytes_per_batch * len(batches) <= config.activation_cache_bytes
    forward_passes = 0
    nan_flag = torch.zeros((), device=device, dtype=torch.bool)
    stored: Tensor | None = None
    store_key = ""
    if activation_store is not None:
        store_key = activation_key(activation_store, model, dictionary, tokens, config)
        stored = activation_store.load(store_key, (n_seq, length))
        keep_cache = keep_cache or stored is not None

    def hook_acts(bsl: slice) -> tuple[Tensor, Tensor]:
        """Raw hook activations [tokens, width] and the validity mask of a batch."""
        nonlocal forward_passes
        if stored is not None:
            x = stored[bsl].to(device)
        else:
            x = model.run_to_hooks(tokens[bsl].to(device), [hook])[hook]
            forward_passes += 1
        x = x.reshape(x.shape[0] * x.shape[1], -1).to(dtype)
        return x, valid[bsl].to(device).reshape(-1)

    norm_limit = None
    if config.max_norm_ratio is not None:
        norm_limit = config.max_norm_ratio * reference_norm(hook_acts, n_seq, config.batch_size)

    n_units = len(batches) * 2
    # pass 1's non-zeros, so pass 2 reads them instead of encoding again (a quarter of the
    # memory budget; past it pass 2 encodes, with the same result)
    kept = KeptActs(budget // 4)
    # ---- pass 1 -------------------------------------------------------------------
    raw: list[Tensor] = []
    for bi, bsl in enumerate(batches):
        x, m = hook_acts(bsl)
        if activation_store is not None and stored is None and keep_cache:
            raw.append(x.view(bsl.stop - bsl.start, length, -1))
        if norm_limit is not None:  # pass 2 reads the narrowed mask from ``valid``
            m = m & (x.float().norm(dim=1) <= norm_limit)
            valid[bsl] = m.view(bsl.stop - bsl.start, length).cpu()
        x = x * m[:, None].to(dtype)
        if bi == 0 and not bool(torch.isfinite(x).all()):
            raise EngineError(
                f"the model produced NaN or infinite activations at {hook!r}: check the "
                "weights; in float16 try bfloat16 or float32"
            )
        nan_flag |= ~torch.isfinite(x).all()
        if keep_cache:
            cache.append(x)
        b = bsl.stop - bsl.start
        seq_ids = torch.arange(bsl.start, bsl.stop, device=device)
        x32 = x.float()
        n_valid = m.sum()
        drop = (~m).nonzero().squeeze(1)  # ignored positions: their activations are 0
        moments.update_tokens(x32, n_valid)
        encoder.reset()
        req_blocks: list[Tensor] = []
        for ci, sl in enumerate(chunks):
            a = encoder.masked(x, feats[sl], drop)
            sp = SparseActs(a)
            kept.add(bi, ci, sp)
            moments.update(a, x32, sl, sp)
            top.update(a.view(b, length, -1), seq_ids, sl, sp)
            if bottom is not None:
                bottom.update(-a.view(b, length, -1), seq_ids, sl)
            if sparse is not None and not need_all_cols:
                sparse.stage(a, sl, sp)
            elif gram is not None:
                req_blocks.append(a)
        if sparse is not None:
            for s in all_chunks if need_all_cols else []:
                sparse.stage(encoder.masked(x, all_feats[s], drop), s)
            sparse.commit(x.shape[0], n_valid)
        elif gram is not None:
            rows = torch.cat(req_blocks, 1) if len(req_blocks) > 1 else req_blocks[0]
            cols = torch.cat([encoder.masked(x, all_feats[s], drop) for s in all_chunks], 1)
            gram.update(rows, cols, n_valid)
            del rows, cols, req_blocks
        report((bi + 1) / n_units, f"pass 1: batch {bi + 1}/{len(batches)}")
    moments.close()
    if shard.active:  # the global maxima before pass 2 (core.engine.distributed)
        nan_flag = shard.any(nan_flag)
        moments, top = shard.merge(moments), shard.merge(top)
        bottom = shard.merge(bottom) if bottom is not None else None
        gram = shard.merge(gram) if gram is not None else None
    if bool(nan_flag):
        raise EngineError(
            f"the model produced NaN or infinite activations at {hook!r}: check the weights; "
            "in float16 try bfloat16 or float32"
        )
    # a NaN or infinite activation makes its feature's sum non-finite: one check, no extra pass
    bad = ~(torch.isfinite(moments.sum) & torch.isfinite(moments.max))
    if bool(bad.any()):
        raise _non_finite_error("the activations", feats[bad], hook)

    if raw and activation_store is not None:
        activation_store.save(store_key, torch.cat(raw))
        raw.clear()

    # ---- pass 2: histograms and interval samples -------------------------------------
    max_act = moments.max
    max_abs = torch.maximum(max_act, -moments.min) if signed else max_act
    hist = BinCounts(n_req, config.n_hist_bins, device)
    icounts = BinCounts(n_req, config.n_intervals, device)
    sampler = IntervalSampler(
        feats, config.n_intervals, config.n_interval_examples, offsets, whole, config.seed, device
    )
    staged: GramStats | None = None  # correlations among the requested features
    if corr != "none" and not need_all_cols and sparse is None:
        batch_tokens = config.batch_size * length
        gram = staged = requested_gram(gram_config, moments, dtype, device, batch_tokens)
    if kept.ok:
        cache.clear()
    for bi, bsl in enumerate(batches):
        b = bsl.stop - bsl.start
        n_tok = b * length
        if kept.ok:
            m = valid[bsl].to(device).reshape(-1)
        elif keep_cache:
            x = cache[bi]
            m = valid[bsl].to(device).reshape(-1)
        else:
            x, m = hook_acts(bsl)
            x = x * m[:, None].to(dtype)
        seq_ids = torch.arange(bsl.start, bsl.stop, device=device)
        drop = (~m).nonzero().squeeze(1)
        encoder.reset()
        if staged is not None:
            staged.reserve(n_tok)
        for ci, sl in enumerate(chunks):
            if kept.ok:
                a, sp = kept.take(bi, ci, n_tok, sl.stop - sl.start)
            else:
                a = encoder.masked(x, feats[sl], drop)
                sp = SparseActs(a)
            if signed:  # histogram over [min, max]; intervals over |value| in (0, max |value|]
                hbins = signed_bins(sp, moments.min[sl], max_act[sl], config.n_hist_bins)
                hist.update(sp, hbins, sl)
                sp_abs = SparseActs.of(sp.token, sp.feature, sp.value.abs(), sp.n_features)
                ibins = sparse_bins(sp_abs, max_abs[sl], config.n_intervals)
            else:
                hist.update(sp, sparse_bins(sp, max_act[sl], config.n_hist_bins), sl)
                ibins = sparse_bins(sp, max_act[sl], config.n_intervals)
            icounts.update(sp, ibins, sl)
            sampler.update(a.view(b, length, -1), sp, ibins, seq_ids, sl)
            if staged is not None:
                staged.stage(a, sl, sp)
        if staged is not None:
            staged.commit(n_tok, m.sum())
        report((len(batches) + bi + 1) / n_units, f"pass 2: batch {bi + 1}/{len(batches)}")
    cache.clear()
    if shard.active:
        hist, icounts, sampler = shard.merge(hist), shard.merge(icounts), shard.merge(sampler)
        gram = staged = shard.merge(staged) if staged is not None else gram
        forward_passes = shard.total(forward_passes, device)

    report(1.0, "collecting the statistics")
    cols = finalize_columns(
        model, dictionary, feats, config, moments, top, gram, hist, icounts, sampler, bottom
    )
    window = None if whole else (config.window_before, config.window_after)
    features = FeatureSet(
        feats.tolist(),
        cols,
        tokens,
        model.vocab_strings(),
        window,
        extras=dictionary.feature_extras(feats),
    )
    info = SweepInfo(
        model=model.identity(),
        dictionary=dictionary.identity(),
        dataset=dict(dataset or {}),
        config=config.to_dict(),
        n_sequences=n_seq,
        context_length=length,
        n_tokens=int(moments.n_tokens),
        forward_passes=forward_passes,
        seconds=time.perf_counter() - t_start,
    )
    return SweepResult(features=features, info=info)


# ---- finalisation: accumulators -> columns --------------------------------------------------
#: rows of logits (each a vocabulary long) handled at a time on the CPU: a few MB, in cache
_LOGIT_ROWS = 16


def decoder_tables(
    model: ModelAdapter, dictionary: Dictionary, feats: Tensor, config: RunConfig
) -> dict[str, Tensor]:
    """Logit effects and neuron alignment from the decoder, chunked over features."""
    keys = ["pos_v", "pos_i", "neg_v", "neg_i", "logit_counts", "logit_lo", "logit_hi"]
    out: dict[str, list[Tensor]] = {k: [] for k in [*keys, "al_i", "al_v", "al_s", "dec_norm"]}
    width = torch.empty(0, dictionary.d_out)
    has_logits = model.residual_directions(dictionary.hook_out, width) is not None
    nb = config.n_logit_bins
    chunk = max(1, min(config.feature_chunk_size, (1 << 26) // max(model.d_vocab, 1)))
    buf: Tensor | None = None  # the logits of a chunk, written over by the next one
    for sl in _chunks(feats.numel(), chunk):
        w = dictionary.decoder_directions(feats[sl]).float()
        out["dec_norm"].append(w.norm(dim=-1))
        k_al = min(config.n_table_rows, w.shape[1])
        v, i = w.abs().topk(k_al, dim=1)
        l1 = w.abs().sum(1, keepdim=True).clamp_min(1e-12)
        out["al_i"].append(i)
        out["al_v"].append(w.gather(1, i))
        out["al_s"].append(v / l1)
        if has_logits:
            resid = model.residual_directions(dictionary.hook_out, w)
            raw = model.logit_directions(resid, out=None if buf is None else buf[: len(resid)])
            buf = raw if buf is None else buf  # the first chunk is the largest
            logits = raw.float()
            k = min(config.n_top_logits, logits.shape[1])
            # row by row, the same operations on a few rows at a time on the CPU (they stay
            # in cache through the top-k and the histogram instead of going to memory and
            # back for each): the same values
            n_rows = logits.shape[0] if logits.is_cuda else _LOGIT_ROWS
            for r in range(0, logits.shape[0], n_rows):
                block = logits[r : r + n_rows]
                pv, pi = block.topk(k, dim=1)
                nv, ni = block.topk(k, dim=1, largest=False)
                # each row's extremes are its first top-k values (k >= 1; NaN sorts first
                # among the largest, so a NaN or infinite row shows in them): no extra pass
                lo, hi = nv[:, 0], pv[:, 0]
                finite = torch.isfinite(lo) & torch.isfinite(hi)
                if not bool(finite.all()):  # finite decoders (checked first): W_U or overflow
                    bad = ~torch.isfinite(logits).all(1)
                    raise EngineError(
                        f"the logit effects of feature(s) {_feature_list(feats[sl][bad])} are "
                        "NaN or infinite: check the model's unembedding (W_U) and final norm "
                        "weights"
                    )
                # bins [lo, lo + step), ..., the last one closed: floor((v - lo) * nb / (hi - lo))
                scale = torch.where(hi > lo, nb / (hi - lo), torch.zeros_like(hi))
                rows = torch.arange(block.shape[0], device=block.device, dtype=torch.int32)
                idx = block.sub_(lo[:, None]).mul_(scale[:, None])
                idx = idx.to(torch.int32).clamp_(max=nb - 1).add_(rows[:, None] * nb)
                counts = torch.bincount(idx.view(-1), minlength=idx.shape[0] * nb).view(-1, nb)
                for key, val in zip(keys, [pv, pi, nv, ni, counts, lo, hi], strict=True):
                    out[key].append(val)
    return {k: torch.cat(v).cpu() for k, v in out.items() if v}


def finalize_columns(
    model: ModelAdapter,
    dictionary: Dictionary,
    feats: Tensor,
    config: RunConfig,
    moments: MomentStats,
    top: TopExamples,
    gram: GramStats | SparseStoreGram | None,
    hist: BinCounts,
    icounts: BinCounts,
    sampler: IntervalSampler,
    bottom: TopExamples | None = None,
) -> dict[str, Tensor]:
    """All per-feature results as CPU tensors with one row per requested feature.

    ``bottom``: for a signed dictionary, the top examples of the negated activations; it
    adds ``min`` and the most negative examples (``bot_*``, values and windows as they are).
    """
    rows = config.n_table_rows
    n_tok = moments.n_tokens.clamp_min(1)
    cols: dict[str, Tensor] = {
        "n_tokens": moments.n_tokens,
        "count": moments.count,
        "density": (moments.count.double() / n_tok),
        "max": moments.max,
        "mean": moments.sum.double() / moments.count.clamp_min(1),
        "top_values": top.values,
        "top_seq": top.seq,
        "top_pos": top.pos,
        "top_windows": top.windows,
        "int_seq": sampler.seq,
        "int_pos": sampler.pos,
        "int_windows": sampler.ordered_windows(),
        "int_counts": icounts.result,
        "hist_counts": hist.result,
    }
    if bottom is not None:
        cols["min"] = moments.min
        cols["bot_values"] = -bottom.values
        cols["bot_seq"] = bottom.seq
        cols["bot_pos"] = bottom.pos
        cols["bot_windows"] = 0.0 - bottom.windows  # (0.0 - 0.0 is +0.0; -0.0 would show)
    pearson, cosine = moments.neuron_correlations()
    k = min(rows, pearson.shape[1])
    cols["cn_p"], cols["cn_i"] = pearson.topk(k, dim=1)
    cols["cn_c"] = cosine.gather(1, cols["cn_i"])
    if gram is not None:
        if config.feature_correlation == "all":
            self_col = feats
        else:
            self_col = torch.arange(feats.numel(), device=feats.device)
        p, i, c = gram.top_correlated(moments.sum, moments.sumsq, rows, self_col)
        cols["cf_p"], cols["cf_c"] = p, c
        cols["cf_i"] = feats[i] if config.feature_correlation == "requested" else i
    cols = {k: v.cpu() for k, v in cols.items()}
    cols.update(decoder_tables(model, dictionary, feats, config))
    return cols
