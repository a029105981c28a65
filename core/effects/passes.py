"""The clean and ablated forward passes behind :func:`core.effects.compute_effects`.

:func:`run_passes` runs one clean pass per distinct sequence and one ablated pass per
(sequence, feature) pair, batched and truncated after the last shown position, and
reduces each shown position to a :class:`~core.effects.payload.PosResult`. The
HookedTransformer specifics (running a range of blocks, the final norm and unembedding)
live here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.config import Progress
from core.dictionaries.protocol import Dictionary
from core.effects.common import AblationSite, EffectsError, encode_features
from core.effects.payload import PosResult, shown_examples
from core.engine.features import FeatureData
from core.models import ModelAdapter

#: rows of [positions, vocab] float32 processed at once (bounds memory for big vocabularies)
_LOGIT_ELEMENTS = 1 << 25


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


def _pad_rows(rows: list[Tensor], length: int) -> Tensor:
    """Stack tensors whose first dim is at most ``length``, zero-padding at the end."""
    out = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:length]
    return out


# --- the passes ---------------------------------------------------------------------------
@dataclass
class _SeqState:
    """Clean-run results of one sequence, kept while its pairs are processed."""

    acts: dict[int, Tensor]  # feature -> [need] activations (float32)
    resid: Tensor | None  # [need, d_model] residual entering start_layer
    final_pos: dict[int, int]  # position -> row of `final`
    final: Tensor | None  # [n_pos, d_model] clean final residual at shown positions
    mask: Tensor | None
    spe: Tensor | None


def run_passes(
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
) -> dict[tuple[int, int], dict[int, PosResult]]:
    """Run the clean and ablated passes; results per (sequence, feature) and position."""
    m = model.model
    device = model.device
    n_seq, seq_len = tokens.shape
    # (seq, feature) -> positions shown on the page
    pairs: dict[tuple[int, int], set[int]] = {}
    for f, fd in fds.items():
        for e in shown_examples(fd):
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
    results: dict[tuple[int, int], dict[int, PosResult]] = {p: {} for p in pairs}
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
            acts = encode_features(dictionary, store["read"], union, keep_all[seqs, :length])
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
    results: dict[tuple[int, int], dict[int, PosResult]],
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
                res = PosResult(0.0 if nid is not None else None, nid, [], [], [], [])
            else:
                res = PosResult(
                    loss_l[j] if nid is not None else None,
                    nid, up_i[j], up_v[j], dn_i[j], dn_v[j],
                )  # fmt: skip
            results[(s, f)][c] = res
