"""What the ablated passes yield per token, and how it becomes a page's stored JSON effects.

:class:`PosResult` is one position's result; :func:`effects_payload` turns a page's results
into the JSON that is memoised (layout and signs in :mod:`core.effects.ablation`) and
:func:`apply_payload` puts it on a copy of the page.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from core.dictionaries.protocol import Dictionary
from core.effects.common import AblationSite
from core.engine.features import Example, FeatureData

#: bump when the stored effects change meaning or layout (part of every memo key)
EFFECTS_VERSION = 1

LEGEND = (
    "loss effect = next-token loss without the feature minus with it (positive: the "
    "feature helped predict the next token); ↑/↓ = log-probabilities the feature raises / "
    "lowers (clean minus ablated)"
)


@dataclass
class PosResult:
    """One shown position: loss effect, next token and the top-k raised / lowered tokens."""

    loss: float | None
    next_id: int | None
    up_ids: list[int]
    up_vals: list[float]
    down_ids: list[int]
    down_vals: list[float]


def shown_examples(fd: FeatureData) -> list[Example]:
    """Every example shown on a page: the top examples, then each interval group's."""
    return [*fd.top_examples, *(e for g in fd.intervals for e in g.examples)]


def examples_digest(fd: FeatureData) -> str:
    """Hash of the shown spans: stored effects are used only for the same examples."""
    spans = [[e.seq, e.pos, e.start, len(e.token_ids)] for e in shown_examples(fd)]
    return hashlib.sha256(json.dumps(spans).encode()).hexdigest()


def _fmt_tokens(ids: list[int], vals: list[float], vocab: list[str]) -> str:
    return "  ".join(f"{vocab[i]!r} {v:+.3f}" for i, v in zip(ids, vals, strict=True))


def per_token_text(res: PosResult, vocab: list[str]) -> str:
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
    e: Example, f: int, results: dict[tuple[int, int], dict[int, PosResult]], vocab: list[str]
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


def effects_payload(
    fd: FeatureData,
    f: int,
    results: dict[tuple[int, int], dict[int, PosResult]],
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
    if dictionary.role == "clt":
        summary["scope"] = (
            "only the same-layer decoder of this cross-layer transcoder feature is removed; "
            "its writes to later layers are kept"
        )
    return {"digest": examples_digest(fd), "top": top, "intervals": groups, "summary": summary}


def apply_payload(fd: FeatureData, payload: dict[str, Any]) -> FeatureData:
    """A copy of ``fd`` with the stored effects put on its examples."""
    out = FeatureData.from_dict(fd.to_dict())
    for e, eff in zip(out.top_examples, payload["top"], strict=True):
        e.effects = {**e.effects, **eff}
    for g, effs in zip(out.intervals, payload["intervals"], strict=True):
        for e, eff in zip(g.examples, effs, strict=True):
            e.effects = {**e.effects, **eff}
    out.extras = {**out.extras, "effects": payload["summary"]}
    return out
