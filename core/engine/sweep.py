"""The batch loop: every requested feature's dashboard data in (at most) two passes.

Pass 1 runs the model once per token batch, stopping right after the hook, encodes the
requested features chunk by chunk and updates the moment, neuron-correlation,
feature-correlation and top-example accumulators. The hook activations are kept on
the device (up to ``activation_cache_bytes``) so that pass 2, which needs each
feature's maximum to place its histogram and interval bins, runs without the model.
Decoder-side statistics (logit effects, neuron alignment) need no tokens at all.

The result is plain data: one :class:`~core.engine.features.FeatureData` per feature.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from core.config import ConfigError, RunConfig
from core.dictionaries.protocol import Dictionary, DictionaryError
from core.engine.features import (
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    SweepInfo,
    Table,
)
from core.engine.stats import (
    BinCounts,
    GramStats,
    IntervalSampler,
    MomentStats,
    TopExamples,
    bin_index,
    window_offsets,
)
from core.models import ModelAdapter, ModelError

Progress = Callable[[float, str], None]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EngineError(ValueError):
    """Bad input to the engine; the message names the problem and the fix."""


@dataclass
class SweepResult:
    features: dict[int, FeatureData]
    info: SweepInfo


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available: use 'cpu'")
    return dev


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


@torch.no_grad()
def run_sweep(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    dataset: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Compute :class:`FeatureData` for ``config.features`` of ``dictionary``.

    Args:
        model: the language model.
        dictionary: the sparse dictionary (SAE, transcoder, CLT layer).
        tokens: ``[sequences, positions]`` token ids (BOS included when used).
        config: what to compute; see :class:`~core.config.RunConfig`.
        dataset: JSON-able identity of the token source, stored in the result.
        progress: called with (fraction done, message).
    """
    t_start = time.perf_counter()
    report = progress or (lambda frac, msg: None)
    device = resolve_device(config.device)
    dtype = _DTYPES[config.dtype]
    tokens = prepare_tokens(tokens, config)
    n_seq, length = tokens.shape
    feats_list = validate_features(config.features, dictionary.n_features)
    hook = config.hook or dictionary.hook_in

    model.to(device, dtype)
    dictionary.to(device, dtype)
    check_fit(model, dictionary, hook, tokens, device)

    feats = torch.tensor(feats_list, device=device, dtype=torch.long)
    n_req = feats.numel()
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

    offsets, _ = window_offsets(
        config.window_before, config.window_after, length if config.whole_sequence else None, device
    )
    whole = config.whole_sequence
    d_in = dictionary.d_in
    moments = MomentStats(n_req, d_in, device)
    top = TopExamples(n_req, config.n_top_examples, offsets, whole, device)
    gram: GramStats | None = None
    if corr != "none":
        n_cols = dictionary.n_features if corr == "all" else n_req
        gram = GramStats(
            n_req,
            n_cols,
            device,
            symmetric=not need_all_cols,
            strategy=config.gram_strategy,
            dtype=dtype if dtype != torch.float16 else torch.float32,
        )
    encoder = _Encoder(dictionary, dtype)
    chunks = _chunks(n_req, config.feature_chunk_size)
    all_feats = torch.arange(dictionary.n_features, device=device)
    all_chunks = _chunks(dictionary.n_features, config.feature_chunk_size)
    batches = _chunks(n_seq, config.batch_size)

    cache: list[Tensor] = []
    bytes_per_batch = config.batch_size * length * d_in * torch.finfo(dtype).bits // 8
    keep_cache = bytes_per_batch * len(batches) <= config.activation_cache_bytes
    forward_passes = 0
    nan_flag = torch.zeros((), device=device, dtype=torch.bool)

    def hook_acts(bsl: slice) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal forward_passes
        tok = tokens[bsl].to(device)
        x = model.run_to_hooks(tok, [hook])[hook]
        forward_passes += 1
        x = x.reshape(x.shape[0] * x.shape[1], -1).to(dtype)
        m = valid[bsl].to(device).reshape(-1)
        x = x * m[:, None].to(dtype)
        return x, m, tok

    n_units = len(batches) * 2
    # ---- pass 1 -------------------------------------------------------------------
    for bi, bsl in enumerate(batches):
        x, m, _ = hook_acts(bsl)
        if bi == 0 and bool(torch.isnan(x).any()):
            raise EngineError(
                f"the model produced NaN activations at {hook!r}: check the weights; in float16 "
                "try bfloat16 or float32"
            )
        nan_flag |= torch.isnan(x).any()
        if keep_cache:
            cache.append(x)
        b = bsl.stop - bsl.start
        seq_ids = torch.arange(bsl.start, bsl.stop, device=device)
        mf = m.to(torch.float32)
        x32 = x.float()
        n_valid = m.sum()
        moments.update_tokens(x32, n_valid)
        encoder.reset()
        req_blocks: list[Tensor] = []
        for sl in chunks:
            a = encoder(x, feats[sl]) * mf[:, None]
            moments.update(a, x32, sl)
            top.update(a.view(b, length, -1).permute(0, 2, 1), seq_ids, sl)
            if gram is not None:
                req_blocks.append(a)
        if gram is not None:
            rows = torch.cat(req_blocks, 1) if len(req_blocks) > 1 else req_blocks[0]
            if need_all_cols:
                cols = torch.cat([encoder(x, all_feats[s]) * mf[:, None] for s in all_chunks], 1)
            else:
                cols = rows
            gram.update(rows, cols, n_valid)
            del rows, cols, req_blocks
        report((bi + 1) / n_units, f"pass 1: batch {bi + 1}/{len(batches)}")
    if bool(nan_flag):
        raise EngineError(
            f"the model produced NaN activations at {hook!r}: check the weights; in float16 "
            "try bfloat16 or float32"
        )

    # ---- pass 2: histograms and interval samples -------------------------------------
    max_act = moments.max
    hist = BinCounts(n_req, config.n_hist_bins, device)
    icounts = BinCounts(n_req, config.n_intervals, device)
    sampler = IntervalSampler(
        feats, config.n_intervals, config.n_interval_examples, offsets, whole, config.seed, device
    )
    for bi, bsl in enumerate(batches):
        if keep_cache:
            x = cache[bi]
            m = valid[bsl].to(device).reshape(-1)
        else:
            x, m, _ = hook_acts(bsl)
        b = bsl.stop - bsl.start
        seq_ids = torch.arange(bsl.start, bsl.stop, device=device)
        mf = m.to(torch.float32)
        encoder.reset()
        for sl in chunks:
            a = encoder(x, feats[sl]) * mf[:, None]
            hist.update(bin_index(a, max_act[sl], config.n_hist_bins), sl)
            ibins = bin_index(a, max_act[sl], config.n_intervals)
            icounts.update(ibins, sl)
            a_bfl = a.view(b, length, -1).permute(0, 2, 1)
            i_bfl = ibins.view(b, length, -1).permute(0, 2, 1).contiguous()
            sampler.update(a_bfl, i_bfl, seq_ids, sl)
        report((len(batches) + bi + 1) / n_units, f"pass 2: batch {bi + 1}/{len(batches)}")
    cache.clear()

    report(1.0, "assembling feature data")
    features = assemble(
        model, dictionary, feats, tokens, config, moments, top, gram, hist, icounts, sampler
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


# ---- assembly: tensors -> plain data -------------------------------------------------------
def decoder_tables(
    model: ModelAdapter, dictionary: Dictionary, feats: Tensor, config: RunConfig
) -> dict[str, Tensor]:
    """Logit effects and neuron alignment from the decoder, chunked over features."""
    out: dict[str, list[Tensor]] = {
        k: []
        for k in [
            "pos_v",
            "pos_i",
            "neg_v",
            "neg_i",
            "lh_counts",
            "lh_lo",
            "lh_hi",
            "al_i",
            "al_v",
            "al_s",
            "norm",
        ]
    }
    d_model = model.model.cfg.d_model
    has_logits = dictionary.d_out == d_model
    nb = config.n_logit_bins
    chunk = max(1, min(config.feature_chunk_size, (1 << 28) // max(model.d_vocab, 1)))
    for sl in _chunks(feats.numel(), chunk):
        w = dictionary.decoder_directions(feats[sl]).float()
        out["norm"].append(w.norm(dim=-1))
        k_al = min(config.n_table_rows, w.shape[1])
        v, i = w.abs().topk(k_al, dim=1)
        l1 = w.abs().sum(1, keepdim=True).clamp_min(1e-12)
        out["al_i"].append(i)
        out["al_v"].append(w.gather(1, i))
        out["al_s"].append(v / l1)
        if has_logits:
            logits = model.logit_directions(w).float()
            k = min(config.n_top_logits, logits.shape[1])
            pv, pi = logits.topk(k, dim=1)
            nv, ni = (-logits).topk(k, dim=1)
            lo, hi = logits.amin(1), logits.amax(1)
            scale = torch.where(hi > lo, nb / (hi - lo), torch.zeros_like(hi))
            bins = ((logits - lo[:, None]) * scale[:, None]).floor().long().clamp_(0, nb - 1)
            counts = torch.zeros(w.shape[0], nb, dtype=torch.int64, device=w.device)
            counts.scatter_add_(1, bins, torch.ones_like(bins))
            for key, val in zip(
                ["pos_v", "pos_i", "neg_v", "neg_i", "lh_counts", "lh_lo", "lh_hi"],
                [pv, pi, -nv, ni, counts, lo, hi],
                strict=True,
            ):
                out[key].append(val)
    return {k: torch.cat(v).cpu() for k, v in out.items() if v}


def _top_table(
    values: Tensor, k: int, exclude: Tensor | None = None, extra: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Top-k columns per row by ``values`` (NaN/excluded never chosen)."""
    v = torch.nan_to_num(values, nan=float("-inf"))
    if exclude is not None:
        v = v.clone()
        rows = torch.arange(v.shape[0], device=v.device)
        ok = exclude >= 0
        v[rows[ok], exclude[ok]] = float("-inf")
    k = min(k, v.shape[1])
    tv, ti = v.topk(k, dim=1)
    te = extra.gather(1, ti) if extra is not None else None
    return tv, ti, te


def assemble(
    model: ModelAdapter,
    dictionary: Dictionary,
    feats: Tensor,
    tokens: Tensor,
    config: RunConfig,
    moments: MomentStats,
    top: TopExamples,
    gram: GramStats | None,
    hist: BinCounts,
    icounts: BinCounts,
    sampler: IntervalSampler,
) -> dict[int, FeatureData]:
    n_req = feats.numel()
    rows = config.n_table_rows
    n_tok = float(moments.n_tokens)
    count = moments.count.cpu()
    max_act = moments.max.cpu()
    sums = moments.sum.cpu()
    neuron_p, neuron_c = moments.neuron_correlations()
    np_v, np_i, np_c = _top_table(neuron_p, rows, extra=neuron_c)
    if gram is not None:
        pear, cos = gram.correlations(moments.sum, moments.sumsq)
        col_ids = torch.arange(pear.shape[1], device=pear.device)
        if config.feature_correlation == "all":
            self_col = feats
        else:
            self_col = torch.arange(n_req, device=pear.device)
        cf_v, cf_i, cf_c = _top_table(pear, rows, exclude=self_col, extra=cos)
        if config.feature_correlation == "requested":
            cf_i = feats[cf_i]
        del col_ids
        cf = (cf_v.cpu(), cf_i.cpu(), cf_c.cpu())
    else:
        cf = None
    dec = decoder_tables(model, dictionary, feats, config)
    extras = dictionary.feature_extras(feats)

    length = tokens.shape[1]
    vocab = model.vocab_strings()
    offsets = top.offsets.cpu()
    whole = top.whole

    def window(seq: int, pos: int, acts: list[float]) -> Example:
        if whole:
            start, end = 0, length
            a = acts[:length]
        else:
            start = max(0, pos - config.window_before)
            end = min(length, pos + config.window_after + 1)
            lo = start - (pos - config.window_before)
            a = acts[lo : lo + (end - start)]
        ids = tokens[seq, start:end].tolist()
        return Example(
            seq=seq,
            pos=pos,
            value=a[pos - start],
            start=start,
            token_ids=ids,
            tokens=[vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in ids],
            acts=a,
        )

    del offsets
    top_vals = top.values.cpu().tolist()
    top_seq = top.seq.cpu().tolist()
    top_pos = top.pos.cpu().tolist()
    top_win = top.windows.cpu().tolist()
    s_seq = sampler.seq.cpu().tolist()
    s_pos = sampler.pos.cpu().tolist()
    s_valid = sampler.valid.cpu().tolist()
    s_win = sampler.windows.cpu().tolist()
    h_counts = hist.result.cpu().tolist()
    i_counts = icounts.result.cpu().tolist()
    np_lists = (np_v.cpu().tolist(), np_i.cpu().tolist(), np_c.cpu().tolist())
    cf_lists = tuple(t.tolist() for t in cf) if cf is not None else None
    dec_l = {k: v.tolist() for k, v in dec.items()}
    feats_l = feats.cpu().tolist()

    out: dict[int, FeatureData] = {}
    for r, fi in enumerate(feats_l):
        mx = float(max_act[r])
        n_active = int(count[r])
        examples = [
            window(top_seq[r][j], top_pos[r][j], top_win[r][j])
            for j in range(len(top_vals[r]))
            if top_vals[r][j] > float("-inf") and top_seq[r][j] >= 0
        ]
        groups = []
        nbi = config.n_intervals
        for bidx in range(nbi):
            lo, hi = mx * bidx / nbi, mx * (bidx + 1) / nbi
            exs = [
                window(s_seq[r][bidx][j], s_pos[r][bidx][j], s_win[r][bidx][j])
                for j in range(config.n_interval_examples)
                if s_valid[r][bidx][j]
            ]
            c = i_counts[r][bidx]
            groups.append(
                IntervalGroup(
                    lo=lo, hi=hi, n_active=c, share=c / n_active if n_active else 0.0, examples=exs
                )
            )
        nb = config.n_hist_bins
        act_hist = Histogram(edges=[mx * i / nb for i in range(nb + 1)], counts=h_counts[r])
        if "pos_v" in dec_l:
            lo, hi = dec_l["lh_lo"][r], dec_l["lh_hi"][r]
            nlb = config.n_logit_bins
            logit_hist = Histogram(
                edges=[lo + (hi - lo) * i / nlb for i in range(nlb + 1)],
                counts=dec_l["lh_counts"][r],
            )
            top_l = LogitTable(
                token_ids=dec_l["pos_i"][r],
                tokens=[vocab[i] for i in dec_l["pos_i"][r]],
                values=dec_l["pos_v"][r],
            )
            bot_l = LogitTable(
                token_ids=dec_l["neg_i"][r],
                tokens=[vocab[i] for i in dec_l["neg_i"][r]],
                values=dec_l["neg_v"][r],
            )
        else:
            logit_hist = Histogram(edges=[], counts=[])
            top_l = bot_l = LogitTable(token_ids=[], tokens=[], values=[])
        if cf_lists is not None and n_active > 0:
            keep = [j for j, v in enumerate(cf_lists[0][r]) if v > float("-inf")]
            corr_f = Table(
                indices=[cf_lists[1][r][j] for j in keep],
                columns={
                    "pearson": [cf_lists[0][r][j] for j in keep],
                    "cosine": [cf_lists[2][r][j] for j in keep],
                },
            )
        else:
            corr_f = Table(indices=[], columns={"pearson": [], "cosine": []})
        if n_active > 0:
            corr_n = Table(
                indices=np_lists[1][r],
                columns={"pearson": np_lists[0][r], "cosine": np_lists[2][r]},
            )
        else:
            corr_n = Table(indices=[], columns={"pearson": [], "cosine": []})
        out[fi] = FeatureData(
            index=fi,
            n_tokens=int(n_tok),
            n_active=n_active,
            density=n_active / n_tok if n_tok else 0.0,
            max_act=mx,
            mean_act=float(sums[r]) / n_active if n_active else 0.0,
            act_hist=act_hist,
            logit_hist=logit_hist,
            top_logits=top_l,
            bottom_logits=bot_l,
            neuron_alignment=Table(
                indices=dec_l["al_i"][r],
                columns={"value": dec_l["al_v"][r], "l1_share": dec_l["al_s"][r]},
            ),
            correlated_neurons=corr_n,
            correlated_features=corr_f,
            top_examples=examples,
            intervals=groups,
            decoder_norm=dec_l["norm"][r],
            extras={k: v[r] for k, v in extras.items()},
        )
    return out
