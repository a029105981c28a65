"""Features side by side, and nearest features across dictionaries.

* :func:`compare` gathers what the Compare page shows for 2-4 features of one workspace:
  their :class:`~core.engine.features.FeatureData`, the decoder cosine of every pair
  (:func:`decoder_cosines`) and their pairwise co-activation (Pearson over tokens). The
  co-activation comes from each feature's correlated-features table where the pair is
  listed; when a pair is missing there (the table keeps only each feature's top partners)
  the features are computed together with ``feature_correlation="requested"``, whose
  tables hold every pair of the set.
* :func:`nearest_across` lists, for a feature of one dictionary, the features of another
  dictionary (another width of the same hook: feature splitting; an adjacent layer) with
  the most similar decoder direction, block by block (no features x features matrix).
  :func:`nearest_in_workspace` checks first that both workspaces run the same model and
  write to spaces of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.errors import FeaturescopeError

if TYPE_CHECKING:
    from core.dictionaries.protocol import Dictionary
    from core.engine.features import FeatureData

MIN_COMPARE = 2
MAX_COMPARE = 4
BLOCK = 16_384


class CompareError(FeaturescopeError, ValueError):
    """Features or dictionaries that cannot be compared (the message says why and the fix)."""


@dataclass
class Comparison:
    """Plain data for the Compare page; matrices are indexed like ``indices``."""

    indices: list[int]
    features: dict[int, FeatureData]
    decoder_cosine: list[list[float]]
    coactivation: list[list[float | None]]
    coactivation_source: str = "tables"
    extras: dict[str, Any] = field(default_factory=dict)


def check_indices(indices: list[int], n_features: int) -> list[int]:
    """2-4 distinct valid indices, in the given order, or a :class:`CompareError`."""
    out: list[int] = []
    for i in indices:
        i = int(i)
        if not 0 <= i < n_features:
            raise CompareError(
                f"feature {i} is out of range: this dictionary has features 0..{n_features - 1}"
            )
        if i not in out:
            out.append(i)
    if not MIN_COMPARE <= len(out) <= MAX_COMPARE:
        raise CompareError(
            f"compare {MIN_COMPARE} to {MAX_COMPARE} distinct features, got {len(out)} "
            f"({out}); name them like ?features=1,2,3"
        )
    return out


def _unit(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def decoder_cosines(dictionary: Dictionary, indices: list[int]) -> list[list[float]]:
    """Cosine similarity of the decoder directions of every pair of ``indices``."""
    u = _unit(dictionary.decoder_directions(torch.tensor(indices, dtype=torch.long)))
    return (u @ u.T).tolist()


def table_coactivation(features: dict[int, FeatureData], indices: list[int]):
    """Pearson co-activation of every pair read from the correlated-features tables
    (either feature's table; ``None`` where neither lists the other; 1 on the diagonal)."""
    out: list[list[float | None]] = []
    for a in indices:
        row: list[float | None] = []
        for b in indices:
            row.append(1.0 if a == b else _pair(features, a, b))
        out.append(row)
    return out


def _pair(features: dict[int, FeatureData], a: int, b: int) -> float | None:
    for x, y in ((a, b), (b, a)):
        table = features[x].correlated_features
        pearson = table.columns.get("pearson")
        if pearson and y in table.indices:
            return float(pearson[table.indices.index(y)])
    return None


def compare(ws: Any, indices: list[int]) -> Comparison:
    """The data of the Compare page for ``indices`` of workspace ``ws`` (computed through
    ``ws.features``: the memo first)."""
    idx = check_indices(indices, int(ws.n_features))
    fds = ws.features(idx)
    features = {i: fds[i] for i in idx}
    co = table_coactivation(features, idx)
    source = "tables"
    if any(v is None for row in co for v in row) and getattr(ws, "live", False):
        together = ws.features(idx, correlation="requested")
        filled = table_coactivation(together, idx)
        co = [
            [v if v is not None else w for v, w in zip(r, f, strict=True)]
            for r, f in zip(co, filled, strict=True)
        ]
        source = "tables and computed together"
    cos = decoder_cosines(ws.dictionary, idx) if hasattr(ws, "dictionary") else []
    return Comparison(idx, features, cos, co, source)


@torch.no_grad()
def nearest_across(
    source: Dictionary, i: int, other: Dictionary, k: int = 10
) -> list[dict[str, Any]]:
    """The ``k`` features of ``other`` whose decoder direction is most similar (cosine) to
    feature ``i`` of ``source``, best first; ``other`` is read ``BLOCK`` rows at a time."""
    if int(source.d_out) != int(other.d_out):
        raise CompareError(
            f"the dictionaries write to spaces of different sizes ({source.d_out} vs "
            f"{other.d_out}): load a dictionary of the same model and d_model"
        )
    n_src = int(source.n_features)
    if not 0 <= int(i) < n_src:
        raise CompareError(f"feature {i} is out of range: the dictionary has 0..{n_src - 1}")
    q = _unit(source.decoder_directions(torch.tensor([int(i)])))[0]
    n = int(other.n_features)
    k = max(0, min(int(k), n))
    best_v = torch.empty(0)
    best_i = torch.empty(0, dtype=torch.long)
    for s in range(0, n, BLOCK):
        rows = torch.arange(s, min(n, s + BLOCK))
        cos = _unit(other.decoder_directions(rows)) @ q
        best_v = torch.cat([best_v, cos])
        best_i = torch.cat([best_i, rows])
        if best_v.numel() > k:
            best_v, top = best_v.topk(k)
            best_i = best_i[top]
    order = best_v.argsort(descending=True, stable=True)
    return [{"feature": int(best_i[j]), "cosine": float(best_v[j])} for j in order.tolist()]


def nearest_in_workspace(ws: Any, i: int, other: Any, k: int = 10) -> list[dict[str, Any]]:
    """:func:`nearest_across` between two live workspaces, which must run the same model."""
    for name, w in (("this workspace", ws), ("the other workspace", other)):
        if not hasattr(w, "dictionary"):
            raise CompareError(f"{name} has no dictionary loaded (a precomputed output)")
    if ws.model.fingerprint() != other.model.fingerprint():
        raise CompareError(
            f"the workspaces run different models ({ws.model.name} vs {other.model.name}): "
            "decoder directions live in different spaces; load both dictionaries on one model"
        )
    return nearest_across(ws.dictionary, i, other.dictionary, k)
