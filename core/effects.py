"""Exact per-token effects of a feature on the model's predictions, and steering.

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

Steering
--------
:func:`steer` generates a continuation with the feature's decoder direction added at its
output hook (``coefficient``, negative allowed) or the feature clamped to a value,
side by side with the unsteered continuation from the same seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.dictionaries.protocol import Dictionary
from core.engine.cached import token_fingerprint
from core.engine.features import Example, FeatureData
from core.engine.keys import memo_key
from core.errors import FeaturescopeError
from core.memo import Memo
from core.models import ModelAdapter, ModelError

Progress = Callable[[float, str], None]

#: bump when the stored effects change meaning or layout (part of every memo key)
EFFECTS_VERSION = 1
#: the longest continuation :func:`steer` produces
MAX_NEW_TOKENS = 256
#: rows of [positions, vocab] float32 processed at once (bounds memory for big vocabularies)
_LOGIT_ELEMENTS = 1 << 25

LEGEND = (
    "loss effect = next-token loss without the feature minus with it (positive: the "
    "feature helped predict the next token); ↑/↓ = log-probabilities the feature raises / "
    "lowers (clean minus ablated)"
)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class EffectsError(FeaturescopeError, ValueError):
    """Effects or steering cannot be computed as asked (message says why and what to do)."""


# --- where to ablate ----------------------------------------------------------------------
@dataclass(frozen=True)
class AblationSite:
    """Where a feature is read and removed, and how the rest of the model is run.

    Attributes:
        read_hook: hook whose clean activations give the feature's activation.
        write_hook: hook the feature's contribution is removed from.
        start_layer: block the ablated run restarts at from a cached clean residual
            (``n_layers`` means only the final norm and unembedding remain); ``None``
            runs the whole model with a forward hook.
        edit_resid: the write hook *is* the residual stream entering ``start_layer``, so
            the cached residual is edited directly and no hook is registered.
    """

    read_hook: str
    write_hook: str
    start_layer: int | None
    edit_resid: bool

    def to_dict(self) -> dict[str, Any]:
        return {"read_hook": self.read_hook, "write_hook": self.write_hook}


def ablation_site(
    model: ModelAdapter, dictionary: Dictionary, hook: str | None = None
) -> AblationSite:
    """Resolve the read and write hooks and the cheapest exact way to rerun the model.

    Args:
        hook: the sweep's hook override (``RunConfig.hook``); the dictionary's
            ``hook_in`` when ``None``. An SAE writes back where it reads; a transcoder
            always writes to its ``hook_out``.
    """
    read = hook or dictionary.hook_in
    write = dictionary.hook_out if dictionary.hook_out != dictionary.hook_in else read
    try:
        model.check_hook(read)
        model.check_hook(write)
    except ModelError as exc:
        raise EffectsError(str(exc)) from exc
    n_layers = model.n_layers
    m = _BLOCK_RE.match(write)
    if m is None:
        return AblationSite(read, write, None, False)
    layer, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_pre":
        return AblationSite(read, write, layer, True)
    if rest == "hook_resid_post":
        # blocks.L.hook_resid_post is, value for value, what block L+1 receives
        return AblationSite(read, write, min(layer + 1, n_layers), True)
    return AblationSite(read, write, layer, False)


# --- model plumbing (HookedTransformer specifics live here) -----------------------------
@dataclass
class _Embedded:
    """What the blocks need besides the residual: attention mask and shortformer positions."""

    mask: Tensor | None  # [b, s]
    spe: Tensor | None  # [b, s, d_model]


def _run_blocks(
    m, resid: Float[Tensor, "b s d"], start: int, stop: int, emb: _Embedded
) -> Float[Tensor, "b s d"]:
    """Blocks ``start`` (inclusive) to ``stop`` (exclusive) on ``resid``."""
    if start >= stop:
        return resid
    return m(
        resid,
        start_at_layer=start,
        stop_at_layer=stop,
        attention_mask=emb.mask,
        shortformer_pos_embed=emb.spe,
    )


def _final_logprobs(m, resid: Float[Tensor, "n d"]) -> Float[Tensor, "n vocab"]:
    """Final norm, unembedding and soft-cap on selected positions, as float32 log-probs.

    Every one of these acts position by position, so running them on a selection gives
    the same numbers as the full forward pass.
    """
    x = resid[None]
    if m.cfg.normalization_type is not None:
        x = m.ln_final(x)
    logits = m.unembed(x)[0].float()
    cap = getattr(m.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return torch.log_softmax(logits, dim=-1)


def _special_mask(
    tokens: Int[Tensor, "b s"], model: ModelAdapter, ignore_bos: bool, ignore_padding: bool
) -> Tensor:
    """True where a position keeps its activation (the sweep's ``valid`` positions)."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    bos, pad = model.bos_token_id, model.pad_token_id
    if ignore_bos and bos is not None:
        keep &= tokens != bos
    if ignore_padding and pad is not None and pad != bos:
        keep &= tokens != pad
    return keep


def _dictionary_dtype(dictionary: Dictionary) -> torch.dtype:
    return dictionary.decoder_directions(torch.tensor([0])).dtype


def _encode(
    dictionary: Dictionary, x: Tensor, feats: list[int], keep: Tensor
) -> Float[Tensor, "b s f"]:
    """Activations of ``feats`` at every position of ``x`` ``[b, s, ...]`` (0 where not kept)."""
    b, s = x.shape[:2]
    ref = dictionary.decoder_directions(torch.tensor(feats[:1]))
    flat = x.reshape(b * s, -1).to(device=ref.device, dtype=ref.dtype)
    idx = torch.tensor(feats, device=ref.device, dtype=torch.long)
    a = dictionary.encode(flat, idx).float().reshape(b, s, len(feats))
    return a * keep.to(a.device)[..., None]


def _pad_rows(rows: list[Tensor], length: int) -> Tensor:
    """Stack tensors whose first dim is at most ``length``, zero-padding at the end."""
    out = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:length]
    return out


# --- effects --------------------------------------------------------------------------------
@dataclass
class _SeqState:
    """Clean-run results of one sequence, kept while its pairs are processed."""

    acts: dict[int, Tensor]  # feature -> [need] activations (float32)
    resid: Tensor | None  # [need, d_model] residual entering start_layer
    final_pos: dict[int, int]  # position -> row of `final`
    final: Tensor | None  # [n_pos, d_model] clean final residual at shown positions
    mask: Tensor | None
    spe: Tensor | None


@dataclass
class _PosResult:
    loss: float | None
    next_id: int | None
    up_ids: list[int]
    up_vals: list[float]
    down_ids: list[int]
    down_vals: list[float]


def _examples(fd: FeatureData) -> list[Example]:
    return [*fd.top_examples, *(e for g in fd.intervals for e in g.examples)]


def _examples_digest(fd: FeatureData) -> str:
    spans = [[e.seq, e.pos, e.start, len(e.token_ids)] for e in _examples(fd)]
    return hashlib.sha256(json.dumps(spans).encode()).hexdigest()


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
            "examples": _examples_digest(fd),
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
            if isinstance(got, dict) and got.get("digest") == _examples_digest(fd):
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
        results = _compute(
            model, dictionary, tokens, missing, k, batch_size, site,
            ignore_bos, ignore_padding, report, counters,
        )  # fmt: skip
        vocab = model.vocab_strings()
        for f, fd in missing.items():
            payloads[f] = _payload(fd, f, results, tokens, vocab, k, site, dictionary)
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
    return {f: _apply(fd, payloads[f]) for f, fd in fds.items()}


def _compute(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Int[Tensor, "n s"],
    fds: dict[int, FeatureData],
    k: int,
    batch_size: int,
    site: AblationSite,
    ignore_bos: bool,
    ignore_padding: bool,
    report: Progress,
    counters: dict[str, int],
) -> dict[tuple[int, int], dict[int, _PosResult]]:
    """Run the clean and ablated passes; results per (sequence, feature) and position."""
    m = model.model
    device = model.device
    n_seq, seq_len = tokens.shape
    # (seq, feature) -> positions shown on the page
    pairs: dict[tuple[int, int], set[int]] = {}
    for f, fd in fds.items():
        for e in _examples(fd):
            if not 0 <= e.seq < n_seq or e.start < 0 or e.start + len(e.token_ids) > seq_len:
                raise EffectsError(
                    f"feature {f}: example (seq {e.seq}, positions {e.start}-"
                    f"{e.start + len(e.token_ids) - 1}) lies outside the tokens "
                    f"{tuple(tokens.shape)}: pass the token set the sweep ran on"
                )
            if e.token_ids:
                pairs.setdefault((e.seq, f), set()).update(
                    range(e.start, e.start + len(e.token_ids))
                )
    results: dict[tuple[int, int], dict[int, _PosResult]] = {p: {} for p in pairs}
    if not pairs:
        return results
    need_pair = {p: max(ps) + 1 for p, ps in pairs.items()}
    seq_need: dict[int, int] = {}
    seq_feats: dict[int, list[int]] = {}
    for (s, f), n in need_pair.items():
        seq_need[s] = max(seq_need.get(s, 0), n)
        seq_feats.setdefault(s, []).append(f)
    order = sorted(seq_need, key=lambda s: (-seq_need[s], s))
    counters["pairs"], counters["sequences"] = len(pairs), len(order)

    feats_all = sorted(fds)
    dirs = dictionary.decoder_directions(torch.tensor(feats_all))
    dirs = dirs.to(device=device, dtype=model.dtype)
    dir_row = {f: i for i, f in enumerate(feats_all)}
    keep_all = _special_mask(tokens, model, ignore_bos, ignore_padding)
    n_layers = model.n_layers
    seq_chunk = 4 * batch_size
    n_units = -(-len(order) // batch_size) + -(-len(pairs) // batch_size)
    done_units = 0

    def tick(msg: str) -> None:
        nonlocal done_units
        done_units += 1
        report(min(1.0, done_units / max(n_units, 1)), msg)

    for c0 in range(0, len(order), seq_chunk):
        chunk = order[c0 : c0 + seq_chunk]
        states: dict[int, _SeqState] = {}
        # ---- clean runs: activations, cached residual, clean final residual ----
        for b0 in range(0, len(chunk), batch_size):
            seqs = chunk[b0 : b0 + batch_size]
            length = max(seq_need[s] for s in seqs)
            tok = tokens[seqs, :length].to(device)
            store: dict[str, Tensor] = {}

            def capture(act: Tensor, hook, store=store) -> Tensor:
                store["read"] = act
                return act

            with m.hooks(fwd_hooks=[(site.read_hook, capture)]):
                if site.start_layer is None:
                    m(tok, return_type=None)
                    resid = final = None
                    emb = _Embedded(None, None)
                else:
                    x0, _, spe, mask = m.input_to_embed(tok)
                    emb = _Embedded(mask, spe)
                    resid = _run_blocks(m, x0, 0, site.start_layer, emb)
                    final = _run_blocks(m, resid, site.start_layer, n_layers, emb)
            counters["clean_passes"] += 1
            counters["token_layers"] += tok.numel() * n_layers
            if "read" not in store:
                raise EffectsError(f"hook {site.read_hook!r} was never reached")
            union = sorted({f for s in seqs for f in seq_feats[s]})
            acts = _encode(dictionary, store["read"], union, keep_all[seqs, :length])
            for i, s in enumerate(seqs):
                n = seq_need[s]
                positions = sorted(set().union(*(pairs[(s, f)] for f in seq_feats[s])))
                states[s] = _SeqState(
                    acts={f: acts[i, :n, union.index(f)] for f in seq_feats[s]},
                    resid=None if resid is None else resid[i, :n],
                    final_pos={p: r for r, p in enumerate(positions)},
                    final=None if final is None else final[i, positions],
                    mask=None if emb.mask is None else emb.mask[i, :n],
                    spe=None if emb.spe is None else emb.spe[i, :n],
                )
            tick(f"effects: clean pass {counters['clean_passes']}")
        # ---- ablated runs over (sequence, feature) pairs ----
        chunk_pairs = [(s, f) for s in chunk for f in sorted(seq_feats[s])]
        for p0 in range(0, len(chunk_pairs), batch_size):
            batch = chunk_pairs[p0 : p0 + batch_size]
            length = max(need_pair[p] for p in batch)
            a = _pad_rows([states[s].acts[f] for s, f in batch], length)  # [b, L]
            d = dirs[[dir_row[f] for _, f in batch]]  # [b, d_out]

            def ablate(act: Tensor, hook, a=a, d=d) -> Tensor:
                shape = (act.shape[0], act.shape[1], *([1] * (act.ndim - 2)))
                delta = a.to(act.dtype).view(shape) * d.view(d.shape[0], 1, *act.shape[2:])
                return act - delta

            if site.start_layer is not None:
                st = [states[s] for s, _ in batch]
                x = _pad_rows([t.resid for t in st], length)
                emb = _Embedded(
                    None if st[0].mask is None else _pad_rows([t.mask for t in st], length),
                    None if st[0].spe is None else _pad_rows([t.spe for t in st], length),
                )
                if emb.mask is not None:
                    # padded positions are after every shown one; unmask them harmlessly
                    for i, t in enumerate(st):
                        emb.mask[i, t.mask.shape[0] :] = 1
                if site.edit_resid:
                    fin = _run_blocks(m, ablate(x, None), site.start_layer, n_layers, emb)
                else:
                    with m.hooks(fwd_hooks=[(site.write_hook, ablate)]):
                        fin = _run_blocks(m, x, site.start_layer, n_layers, emb)
                counters["ablated_passes"] += 1
                counters["token_layers"] += x.shape[0] * length * (n_layers - site.start_layer)
                rows, cols = _positions(batch, pairs)
                counters["unembedded_positions"] += 2 * len(rows)
                abl_src = fin[rows, cols]
                clean_src = torch.stack(
                    [states[batch[r][0]].final[states[batch[r][0]].final_pos[c]] for r, c in
                     zip(rows, cols, strict=True)]
                )  # fmt: skip
                _record(m, batch, rows, cols, clean_src, abl_src, True, tokens, states, results, k)
            else:
                tok = tokens[[s for s, _ in batch], :length].to(device)
                with m.hooks(fwd_hooks=[(site.write_hook, ablate)]):
                    abl_logits = m(tok)
                counters["ablated_passes"] += 1
                # the full-run path keeps no clean state: rerun the batch's distinct sequences
                uniq = sorted({s for s, _ in batch})
                clean_logits = m(tokens[uniq, :length].to(device))
                counters["clean_passes"] += 1
                counters["token_layers"] += (len(batch) + len(uniq)) * length * n_layers
                rows, cols = _positions(batch, pairs)
                counters["unembedded_positions"] += (len(batch) + len(uniq)) * length
                urows = [uniq.index(batch[r][0]) for r in rows]
                _record(
                    m, batch, rows, cols, clean_logits[urows, cols], abl_logits[rows, cols],
                    False, tokens, states, results, k,
                )  # fmt: skip
            tick(f"effects: ablated pass {counters['ablated_passes']}")
        states.clear()
    return results


def _positions(
    batch: list[tuple[int, int]], pairs: dict[tuple[int, int], set[int]]
) -> tuple[list[int], list[int]]:
    rows: list[int] = []
    cols: list[int] = []
    for r, p in enumerate(batch):
        for c in sorted(pairs[p]):
            rows.append(r)
            cols.append(c)
    return rows, cols


def _record(
    m,
    batch: list[tuple[int, int]],
    rows: list[int],
    cols: list[int],
    clean_src: Tensor,
    abl_src: Tensor,
    from_resid: bool,
    tokens: Tensor,
    states: dict[int, _SeqState],
    results: dict[tuple[int, int], dict[int, _PosResult]],
    k: int,
) -> None:
    """Contributions at the selected (row, position) pairs, reduced to loss and top-k."""
    seq_len = tokens.shape[1]
    vocab = m.cfg.d_vocab_out if getattr(m.cfg, "d_vocab_out", -1) > 0 else m.cfg.d_vocab
    step = max(1, _LOGIT_ELEMENTS // max(vocab, 1))
    for i0 in range(0, len(rows), step):
        sl = slice(i0, i0 + step)
        if from_resid:
            clean_lp = _final_logprobs(m, clean_src[sl])
            abl_lp = _final_logprobs(m, abl_src[sl])
        else:
            clean_lp = torch.log_softmax(clean_src[sl].float(), dim=-1)
            abl_lp = torch.log_softmax(abl_src[sl].float(), dim=-1)
        contrib = clean_lp - abl_lp  # [n, vocab]
        kk = min(k, contrib.shape[1])
        up_v, up_i = contrib.topk(kk, dim=1)
        dn_v, dn_i = contrib.topk(kk, dim=1, largest=False)
        rr, cc = rows[sl], cols[sl]
        nxt = [
            int(tokens[batch[r][0], c + 1]) if c + 1 < seq_len else -1
            for r, c in zip(rr, cc, strict=True)
        ]
        nxt_t = torch.tensor([max(v, 0) for v in nxt], device=contrib.device)
        loss = contrib.gather(1, nxt_t[:, None])[:, 0]
        loss_l, up_v, up_i = loss.tolist(), up_v.tolist(), up_i.tolist()
        dn_v, dn_i = dn_v.tolist(), dn_i.tolist()
        for j, (r, c) in enumerate(zip(rr, cc, strict=True)):
            s, f = batch[r]
            active = bool((states[s].acts[f][: c + 1] != 0).any())
            nid = nxt[j] if nxt[j] >= 0 else None
            if not active:  # causality: nothing upstream changed, the effect is exactly 0
                res = _PosResult(0.0 if nid is not None else None, nid, [], [], [], [])
            else:
                res = _PosResult(
                    loss_l[j] if nid is not None else None,
                    nid, up_i[j], up_v[j], dn_i[j], dn_v[j],
                )  # fmt: skip
            results[(s, f)][c] = res


def _fmt_tokens(ids: list[int], vals: list[float], vocab: list[str]) -> str:
    return "  ".join(f"{vocab[i]!r} {v:+.3f}" for i, v in zip(ids, vals, strict=True))


def per_token_text(res: _PosResult, vocab: list[str]) -> str:
    """The short hover text for one token (see :data:`LEGEND` for the signs)."""
    if not res.up_ids:
        if res.loss is None:
            return "loss effect n/a (end of sequence; feature not active yet)"
        return "loss effect 0 (feature not active up to here)"
    head = (
        "loss effect n/a (end of sequence)"
        if res.loss is None
        else f"loss effect {res.loss:+.4f} (next {vocab[res.next_id]!r})"
    )
    return (
        f"{head}\n↑ {_fmt_tokens(res.up_ids, res.up_vals, vocab)}"
        f"\n↓ {_fmt_tokens(res.down_ids, res.down_vals, vocab)}"
    )


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def _example_effects(
    e: Example, f: int, results: dict[tuple[int, int], dict[int, _PosResult]], vocab: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "loss": [], "top_up": [], "top_up_ids": [], "top_down": [], "top_down_ids": [],
        "per_token": [],
    }  # fmt: skip
    per_pos = results.get((e.seq, f), {})
    for p in range(e.start, e.start + len(e.token_ids)):
        res = per_pos[p]
        out["loss"].append(None if res.loss is None else _r(res.loss))
        out["top_up"].append(
            [[vocab[i], _r(v)] for i, v in zip(res.up_ids, res.up_vals, strict=True)]
        )
        out["top_up_ids"].append(list(res.up_ids))
        out["top_down"].append(
            [[vocab[i], _r(v)] for i, v in zip(res.down_ids, res.down_vals, strict=True)]
        )
        out["top_down_ids"].append(list(res.down_ids))
        out["per_token"].append(per_token_text(res, vocab))
    q = e.qualifying_index
    out["loss_qualifying"] = out["loss"][q] if 0 <= q < len(out["loss"]) else None
    out["loss_sum"] = _r(sum(v for v in out["loss"] if v is not None))
    return out


def _payload(
    fd: FeatureData,
    f: int,
    results: dict[tuple[int, int], dict[int, _PosResult]],
    tokens: Tensor,
    vocab: list[str],
    k: int,
    site: AblationSite,
    dictionary: Dictionary,
) -> dict[str, Any]:
    """The stored (JSON) effects of one feature page."""
    top = [_example_effects(e, f, results, vocab) for e in fd.top_examples]
    groups = [[_example_effects(e, f, results, vocab) for e in g.examples] for g in fd.intervals]
    quals = [x["loss_qualifying"] for x in [*top, *(y for g in groups for y in g)]]
    quals = [v for v in quals if v is not None]
    summary: dict[str, Any] = {
        "method": "exact ablation",
        "read_hook": site.read_hook,
        "write_hook": site.write_hook,
        "k": k,
        "legend": LEGEND,
        "mean_loss_qualifying": _r(sum(quals) / len(quals)) if quals else None,
        "version": EFFECTS_VERSION,
    }
    if dictionary.kind == "clt":
        summary["scope"] = (
            "only the same-layer decoder of this cross-layer transcoder feature is removed; "
            "its writes to later layers are kept"
        )
    return {"digest": _examples_digest(fd), "top": top, "intervals": groups, "summary": summary}


def _apply(fd: FeatureData, payload: dict[str, Any]) -> FeatureData:
    """A copy of ``fd`` with the stored effects put on its examples."""
    out = FeatureData.from_dict(fd.to_dict())
    for e, eff in zip(out.top_examples, payload["top"], strict=True):
        e.effects = {**e.effects, **eff}
    for g, effs in zip(out.intervals, payload["intervals"], strict=True):
        for e, eff in zip(g.examples, effs, strict=True):
            e.effects = {**e.effects, **eff}
    out.extras = {**out.extras, "effects": payload["summary"]}
    return out


# --- steering -------------------------------------------------------------------------------
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
            a = _encode(dictionary, src[:1], [feature], keep[None])[0, :, 0]
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
