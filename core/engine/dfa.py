"""Direct feature attribution (DFA) for dictionaries that read an attention output.

A dictionary on ``blocks.L.attn.hook_z`` reads, at a destination position ``d``, the flat
vector ``z[d] = concat_h sum_s A[h, d, s] v[s, h]`` (``A`` the attention pattern, ``v`` the
value vectors). When feature ``f``'s pre-activation is affine in it,
``pre_f = (z[d] - shift) . W[:, f] + b[f]``, it splits exactly into one term per source
position and head, ``A[h, d, s] * (v[s, h] . W_h[:, f])``, plus the constant
``b[f] - shift . W[:, f]``.

:func:`attach_dfa` computes this for the top examples of every feature of a sweep's
:class:`~core.engine.result.FeatureSet` (one forward pass per batch of their sequences,
stopped at the layer's pattern and values; the products on the device, one copy to the host
per chunk of examples) and stores plain data in ``extras["dfa"]``: one entry per top
example, in the order of ``top_examples``:

* ``pos``, ``start``: the destination position and the first shown position;
* ``pre``: the pre-activation the contributions add up to; ``const``: the bias term;
* ``outside``: the summed contributions of sources before ``start`` (outside the window);
* ``sources``: the contribution of each source ``start..pos`` (summed over heads);
* ``heads``, ``head_values``: per source, the heads with the largest ``|contribution|``.

``const + outside + sum(sources) == pre``, up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from core.config import RunConfig
from core.dictionaries.protocol import Dictionary
from core.engine.result import FeatureSet
from core.models import ModelAdapter, attention_z_layer

#: heads listed per source position
TOP_HEADS = 3
#: elements of the largest gathered value tensor (examples x positions x width) in one chunk
_CHUNK_ELEMENTS = 1 << 24


def attach_dfa(
    model: ModelAdapter,
    dictionary: Dictionary,
    tokens: Tensor,
    config: RunConfig,
    features: FeatureSet,
) -> bool:
    """Add ``extras["dfa"]`` to ``features`` when the sweep's hook is an attention output
    (``blocks.L.attn.hook_z``) and the dictionary's pre-activations are affine; returns
    whether it did. ``tokens`` are the sweep's (prepared) tokens; sequences are run
    ``config.batch_size`` at a time."""
    hook = config.hook or dictionary.hook_in
    batch_size = config.batch_size
    layer = attention_z_layer(hook)
    if layer is None or not features.order:
        return False
    device = model.device
    feats = torch.tensor(features.order, device=dictionary.device)
    affine = dictionary.encoder_affine(feats)
    if affine is None:
        return False
    w, b, shift = (t.detach().to(device=device, dtype=torch.float32) for t in affine)
    const = b - shift @ w  # [F]
    seq, pos = features.cols["top_seq"], features.cols["top_pos"]
    rows, slots = torch.nonzero(seq >= 0, as_tuple=True)
    out: list[list[dict[str, Any] | None]] = [
        [None] * int((seq[r] >= 0).sum()) for r in range(seq.shape[0])
    ]
    # the k-th valid example of a row is entry k of its top_examples
    slot_of = (seq >= 0).long().cumsum(1) - 1
    pair_seq = seq[rows, slots].long()
    pair_pos = pos[rows, slots].long()
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"]
    uniq = torch.unique(pair_seq)
    local = torch.full((int(uniq.max()) + 1 if uniq.numel() else 0,), -1, dtype=torch.long)
    for c0 in range(0, uniq.numel(), max(1, batch_size)):
        chunk = uniq[c0 : c0 + max(1, batch_size)]
        acts = model.run_to_hooks(tokens[chunk].to(device), names)
        pattern = acts[names[0]].float()  # [B, H, dest, src]
        v = acts[names[1]].float()  # [B, src, H or KV heads, d_head]
        n_heads = pattern.shape[1]
        if v.shape[2] != n_heads:  # grouped-query attention: each KV head serves a group
            v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
        w_heads = w.T.reshape(w.shape[1], n_heads, v.shape[3])  # [F, H, d_head]
        local.fill_(-1)
        local[chunk] = torch.arange(chunk.numel())
        sel = torch.nonzero(local[pair_seq] >= 0).flatten()
        step = max(1, _CHUNK_ELEMENTS // max(1, v[0].numel()))
        for p0 in range(0, sel.numel(), step):
            idx = sel[p0 : p0 + step]
            _fill(
                out,
                rows[idx],
                slot_of[rows[idx], slots[idx]],
                pair_pos[idx],
                local[pair_seq[idx]],
                pattern,
                v,
                w_heads,
                const,
                features.window,
            )
    features.extras["dfa"] = out
    return True


def _fill(
    out: list[list[dict[str, Any] | None]],
    rows: Tensor,
    slots: Tensor,
    dest: Tensor,
    batch_idx: Tensor,
    pattern: Tensor,
    v: Tensor,
    w_heads: Tensor,
    const: Tensor,
    window: tuple[int, int] | None,
) -> None:
    """Contributions of one chunk of examples, computed on the device, then one copy."""
    device = pattern.device
    bi, d, r = batch_idx.to(device), dest.to(device), rows.to(device)
    pat = pattern[bi, :, d, :]  # [P, H, src]
    vw = torch.einsum("pshd,phd->psh", v[bi], w_heads[r])  # [P, src, H]
    contrib = pat.transpose(1, 2) * vw  # [P, src, H]
    totals = contrib.sum(-1)  # [P, src]
    k = min(TOP_HEADS, contrib.shape[2])
    _, top_h = contrib.abs().topk(k, dim=-1)
    top_v = contrib.gather(-1, top_h)
    n_src = totals.shape[1]
    start = torch.zeros_like(d) if window is None else (d - window[0]).clamp_min(0)
    before = torch.arange(n_src, device=device)[None, :] < start[:, None]
    outside = (totals * before).sum(-1)
    pre = totals.sum(-1) + const[r]
    host = [t.cpu().tolist() for t in (totals, top_h, top_v, outside, pre, const[r], start, d)]
    totals_l, top_h_l, top_v_l, outside_l, pre_l, const_l, start_l, d_l = host
    for j, (row, slot) in enumerate(zip(rows.tolist(), slots.tolist(), strict=True)):
        s0, s1 = start_l[j], d_l[j] + 1
        out[row][slot] = {
            "pos": s1 - 1,
            "start": s0,
            "pre": pre_l[j],
            "const": const_l[j],
            "outside": outside_l[j],
            "sources": totals_l[j][s0:s1],
            "heads": top_h_l[j][s0:s1],
            "head_values": top_v_l[j][s0:s1],
        }
