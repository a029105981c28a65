"""Print the top-activating contexts of demo-SAE features on the held-out corpus rows.

Reproduces the evidence for the interpretable features quoted in the demo's documentation::

    .venv/bin/python scripts/inspect_demo_sae.py --features 123 456
    .venv/bin/python scripts/inspect_demo_sae.py --random 12 --seed 0 --top 8

The held-out rows are rebuilt exactly as ``scripts/train_demo_sae.py`` built them (context,
hold-out fraction and split seed are read from the SAE's ``metrics.json``), run through the demo
model up to the SAE's hook, and encoded with the SAE as loaded by ``SAE.load_from_disk``. For each
feature the script prints its firing density, the tokens it fires on most often among its top
activations, the tokens its decoder direction promotes most through the unembedding (direct logit
effect ``W_dec[f] @ W_U``; the demo model's ``W_U`` already contains the folded final-norm gain),
and the top contexts as ``left context [[token]] right context  (activation)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_demo_sae import prepare_rows  # noqa: E402

from core.gguf_llama import load_demo_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", type=Path, default=REPO_ROOT / "assets" / "demo_sae")
    ap.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "cache")
    ap.add_argument("--features", type=int, nargs="*", default=[], help="feature indices")
    ap.add_argument("--random", type=int, default=0, help="also inspect N random alive features")
    ap.add_argument("--seed", type=int, default=0, help="seed for --random")
    ap.add_argument("--top", type=int, default=10, help="contexts per feature")
    ap.add_argument("--left", type=int, default=14, help="tokens of context before")
    ap.add_argument("--right", type=int, default=4, help="tokens of context after")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout")
    ap.add_argument("--max-rows", type=int, default=None, help="cap on rows (train split)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


@torch.inference_mode()
def encode_rows(model: Any, sae: Any, rows: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """SAE top-k codes for every non-BOS position of ``rows``.

    Returns:
        ``(values, indices)``, each ``[n_rows, context - 1, k]``: the ReLU'd top-k activations
        and their feature ids (a TopK SAE has at most ``k`` non-zero features per token).
    """
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    k = sae.cfg.k
    values, indices = [], []
    for start in range(0, rows.shape[0], batch):
        resid = model(rows[start : start + batch], stop_at_layer=layer + 1)[:, 1:].float()
        acts = sae.encode(resid)
        v, i = acts.topk(k, dim=-1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def _show(model: Any, ids: list[int]) -> str:
    """Tokens as text with newlines and tabs made visible."""
    text = "".join(model.to_string(torch.tensor([t])) for t in ids)
    return text.replace("\n", "⏎").replace("\t", "⇥")


def describe_feature(
    model: Any,
    sae: Any,
    rows: Tensor,
    values: Tensor,
    indices: Tensor,
    feature: int,
    args: argparse.Namespace,
) -> str:
    """A printable report of one feature (see the module docstring)."""
    hit = (indices == feature) & (values > 0)
    row_idx, pos_idx, slot = hit.nonzero(as_tuple=True)
    acts = values[row_idx, pos_idx, slot]
    n_tokens = values.shape[0] * values.shape[1]
    lines = [
        f"feature {feature}: fires on {len(acts)}/{n_tokens} tokens "
        f"({len(acts) / n_tokens:.3%}), max act {acts.max().item() if len(acts) else 0:.1f}"
    ]
    if len(acts) == 0:
        return lines[0] + " (dead on this split)"
    order = acts.argsort(descending=True)
    top = order[: args.top]
    # token positions in ``rows`` are one to the right of positions in ``values`` (BOS dropped)
    frequent = Counter(
        _show(model, [rows[row_idx[i], pos_idx[i] + 1].item()]) for i in order[:50].tolist()
    )
    lines.append(
        "  most frequent tokens in top 50: "
        + ", ".join(f"{tok!r}x{n}" for tok, n in frequent.most_common(8))
    )
    with torch.inference_mode():
        logit_effect = sae.W_dec[feature].float() @ model.W_U.float()
        promoted = logit_effect.topk(8).indices.tolist()
    lines.append("  promotes: " + ", ".join(repr(_show(model, [t])) for t in promoted))
    for i in top.tolist():
        r, p = row_idx[i].item(), pos_idx[i].item() + 1
        left = rows[r, max(1, p - args.left) : p].tolist()
        right = rows[r, p + 1 : p + 1 + args.right].tolist()
        token = rows[r, p].item()
        lines.append(
            f"  {acts[i].item():7.2f}  {_show(model, left)}[[{_show(model, [token])}]]"
            f"{_show(model, right)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Load SAE, model and held-out rows; print the requested features."""
    from sae_lens import SAE

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics_path = args.sae / "metrics.json"
    config = json.loads(metrics_path.read_text())["config"] if metrics_path.is_file() else {}
    sae = SAE.load_from_disk(args.sae, dtype="float32")
    model = load_demo_model(args.cache_dir, dtype=getattr(torch, args.dtype))
    rows, train_idx, heldout_idx, info = prepare_rows(
        args.cache_dir,
        model,
        config.get("context", sae.cfg.metadata.context_size),
        config.get("holdout_frac", 0.05),
        config.get("split_seed", 0),
    )
    if metrics_path.is_file():
        expected = json.loads(metrics_path.read_text())["corpus"]["text_sha256"]
        if expected != info.get("text_sha256"):
            print("warning: the corpus differs from the one the SAE was trained on", flush=True)
    chosen = heldout_idx if args.split == "heldout" else train_idx
    if args.max_rows:
        chosen = chosen[: args.max_rows]
    rows = rows[chosen]
    values, indices = encode_rows(model, sae, rows, args.batch)

    features = list(args.features)
    if args.random:
        alive = torch.unique(indices[values > 0])
        generator = torch.Generator().manual_seed(args.seed)
        pick = alive[torch.randperm(len(alive), generator=generator)[: args.random]]
        features += sorted(pick.tolist())
    print(f"{len(rows)} {args.split} rows, {values.shape[0] * values.shape[1]} tokens\n")
    for feature in features:
        print(describe_feature(model, sae, rows, values, indices, feature, args), "\n")


if __name__ == "__main__":
    main()
