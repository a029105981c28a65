"""Counter-examples for the detection scorer: token windows where a feature is 0.

One forward pass over a few sequences of the workspace's token set serves every feature of
a batch: the dictionary encodes them, and for each feature the windows where its activation
is 0 at every position are kept (as token strings, BOS left out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.engine.sweep import prepare_tokens

if TYPE_CHECKING:
    from core.workspace import Workspace


@torch.no_grad()
def silent_windows(
    ws: Workspace,
    features: list[int],
    *,
    k: int = 10,
    width: int = 16,
    n_sequences: int = 32,
    seed: int = 0,
) -> dict[int, list[list[str]]]:
    """Up to ``k`` windows of ``width`` tokens per feature where the feature is 0 throughout,
    from ``n_sequences`` sequences drawn (seeded) from the workspace's tokens; one window per
    sequence first, then more from the same sequences."""
    if not features:
        return {}
    tokens = prepare_tokens(ws.tokens, ws.config)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(tokens.shape[0], generator=gen)[:n_sequences]
    batch = tokens[rows]
    hook = ws.config.hook or ws.dictionary.hook_in
    sel = torch.tensor(features)
    with ws.gate():
        x = ws.model.run_to_hooks(batch.to(ws.model.device), [hook])[hook]
        b, s = batch.shape
        x = x.reshape(b * s, -1).to(ws.dictionary_dtype)
        acts = ws.dictionary.encode(x, sel.to(x.device)).float().reshape(b, s, -1).cpu()
    bos = ws.model.bos_token_id
    first = 1 if bos is not None and bool((batch[:, 0] == bos).all()) else 0
    width = max(1, min(width, s - first))
    starts = list(range(first, s - width + 1, width))
    out: dict[int, list[list[str]]] = {}
    for j, f in enumerate(features):
        silent = (acts[:, :, j] <= 0).cpu()
        picked: list[tuple[int, int]] = []
        for start in starts:  # round robin over sequences: the first window of each first
            for r in range(b):
                if len(picked) < k and bool(silent[r, start : start + width].all()):
                    picked.append((r, start))
        out[f] = [ws.model.token_strings(batch[r, st : st + width]) for r, st in picked]
    return out
