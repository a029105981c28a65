"""A 2-D map of every feature of a dictionary, from its decoder directions (cosine).

* **PCA** (:func:`pca_coordinates`): the rows are scaled to unit length and centred; the two
  leading principal axes come from the exact ``d x d`` covariance (accumulated in float64,
  block by block), so 131,072 features x 768 dimensions need the unit rows (0.4 GB) and a
  768 x 768 matrix, never a features x features one. Each axis's sign is fixed (its
  largest loading is positive) so the map does not flip between runs.
* **UMAP** (:func:`umap_coordinates`, ``umap-learn``): ``metric="cosine"`` on the same unit
  rows, a fixed ``random_state`` (deterministic, single-threaded) and ``low_memory``
  nearest-neighbour descent (no dense distance matrix).

Every feature is placed (the computation is never subsampled; the page draws a subsample,
:func:`draw_indices`). :func:`feature_map` memoises a map once per dictionary in the app's
memo under :func:`map_key` (the dictionary's fingerprint, the method and its parameters),
as safetensors bytes (float32 ``x`` and ``y`` plus JSON metadata), never pickle.

No co-activation map: the whole-dictionary co-activation table keeps only each feature's
top-k partners (see :mod:`core.engine.gram`), which is not a metric over all pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from core.errors import FeaturescopeError
from core.export.map_html import MAX_POINTS as EXPORT_POINTS
from core.export.map_html import MapExport

if TYPE_CHECKING:
    from core.dictionaries.protocol import Dictionary
    from core.memo import Memo

MAP_VERSION = 1
METHODS = ("pca", "umap")
#: rows of decoder directions read (and projected) at a time
BLOCK = 16_384
#: UMAP defaults (a first view: n_neighbors ~15, fixed seed)
UMAP_DEFAULTS: dict[str, Any] = {"n_neighbors": 15, "min_dist": 0.1, "seed": 0}


class FeatureMapError(FeaturescopeError, ValueError):
    """A feature map cannot be made as asked (the message says why and how to fix it)."""


@dataclass(frozen=True)
class FeatureMap:
    """Coordinates of every feature: ``x[i], y[i]`` place feature ``i``."""

    x: np.ndarray
    y: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x.shape[0])

    def to_bytes(self) -> bytes:
        meta = {"method": self.method, "params": json.dumps(self.params, sort_keys=True)}
        arrays = {"x": np.ascontiguousarray(self.x, np.float32)}
        arrays["y"] = np.ascontiguousarray(self.y, np.float32)
        return st_save(arrays, metadata=meta)

    @classmethod
    def from_bytes(cls, payload: bytes) -> FeatureMap:
        (n,) = struct.unpack("<Q", payload[:8])
        meta = json.loads(payload[8 : 8 + n]).get("__metadata__") or {}
        arrays = st_load(payload)
        return cls(arrays["x"], arrays["y"], meta["method"], json.loads(meta["params"]))


def _check_method(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "pca":
        if params:
            raise FeatureMapError(f"the PCA map takes no parameters, got {sorted(params)}")
        return {}
    if method == "umap":
        unknown = sorted(set(params) - set(UMAP_DEFAULTS))
        if unknown:
            raise FeatureMapError(
                f"unknown UMAP parameter(s) {unknown}; use {sorted(UMAP_DEFAULTS)}"
            )
        out = {**UMAP_DEFAULTS, **params}
        if int(out["n_neighbors"]) < 2:
            raise FeatureMapError(f"n_neighbors must be at least 2, got {out['n_neighbors']}")
        return {
            "n_neighbors": int(out["n_neighbors"]),
            "min_dist": float(out["min_dist"]),
            "seed": int(out["seed"]),
        }
    raise FeatureMapError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")


def map_key(fingerprint: str, method: str, params: dict[str, Any]) -> str:
    """The memo key of a dictionary's map (``fingerprint``: ``Dictionary.fingerprint()``)."""
    text = json.dumps(
        {"v": MAP_VERSION, "dictionary": fingerprint, "method": method, "params": params},
        sort_keys=True,
    )
    return "featuremap:" + hashlib.sha256(text.encode()).hexdigest()


@torch.no_grad()
def unit_directions(dictionary: Dictionary) -> np.ndarray:
    """Every decoder direction scaled to unit length (float32, ``n_features x d``), read
    ``BLOCK`` rows at a time; a zero row stays zero."""
    n = int(dictionary.n_features)
    out: np.ndarray | None = None
    for s in range(0, n, BLOCK):
        rows = torch.arange(s, min(n, s + BLOCK))
        w = dictionary.decoder_directions(rows).detach().float().cpu()
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if out is None:
            out = np.empty((n, w.shape[1]), np.float32)
        out[s : s + len(rows)] = w.numpy()
    if out is None:
        raise FeatureMapError("the dictionary has no features to map")
    return out


def pca_coordinates(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two leading principal components of ``units`` (rows), exact: the centred
    covariance is summed in float64 in blocks, its top eigenvectors project each block."""
    n, d = units.shape
    mean = np.zeros(d, np.float64)
    for s in range(0, n, BLOCK):
        mean += units[s : s + BLOCK].sum(0, dtype=np.float64)
    mean /= max(n, 1)
    cov = np.zeros((d, d), np.float64)
    for s in range(0, n, BLOCK):
        block = units[s : s + BLOCK].astype(np.float64) - mean
        cov += block.T @ block
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs[:, ::-1][:, :2].copy()
    if axes.shape[1] < 2:  # d == 1: the second axis is flat
        axes = np.concatenate([axes, np.zeros((d, 1))], axis=1)
    for j in range(axes.shape[1]):  # sign: the largest loading positive
        if axes[np.argmax(np.abs(axes[:, j])), j] < 0:
            axes[:, j] = -axes[:, j]
    xy = np.empty((n, 2), np.float32)
    for s in range(0, n, BLOCK):
        xy[s : s + BLOCK] = (units[s : s + BLOCK].astype(np.float64) - mean) @ axes
    return xy[:, 0].copy(), xy[:, 1].copy()


def umap_coordinates(
    units: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """UMAP of ``units`` with the cosine metric, a fixed seed and low-memory neighbours."""
    import umap  # heavy optional dependency (numba): imported when a UMAP map is asked for

    n = units.shape[0]
    if n < 4:
        raise FeatureMapError(f"a UMAP map needs at least 4 features, the dictionary has {n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state"
        reducer = umap.UMAP(
            n_neighbors=min(n_neighbors, n - 1),
            min_dist=min_dist,
            metric="cosine",
            random_state=seed,
            low_memory=True,
            n_jobs=1,
        )
        xy = np.asarray(reducer.fit_transform(units), np.float32)
    return xy[:, 0].copy(), xy[:, 1].copy()


def compute_map(dictionary: Dictionary, method: str = "pca", **params: Any) -> FeatureMap:
    """The map of every feature of ``dictionary`` (not memoised: see :func:`feature_map`)."""
    params = _check_method(method, params)
    units = unit_directions(dictionary)
    if method == "pca":
        x, y = pca_coordinates(units)
    else:
        x, y = umap_coordinates(units, **params)
    return FeatureMap(x, y, method, params)


def stored_map(
    dictionary: Dictionary, method: str, memo: Memo | None, **params: Any
) -> FeatureMap | None:
    """The map :func:`feature_map` would return if it is in ``memo`` already, else ``None``
    (nothing is computed: a page can tell "shown now" from "compute on demand")."""
    params = _check_method(method, params)
    if memo is None:
        return None
    payload = memo.get_bytes(map_key(dictionary.fingerprint(), method, params))
    if payload is None:
        return None
    try:
        got = FeatureMap.from_bytes(payload)
    except (ValueError, KeyError, struct.error):
        return None
    return got if got.n_features == dictionary.n_features else None


def feature_map(
    dictionary: Dictionary, method: str = "pca", memo: Memo | None = None, **params: Any
) -> FeatureMap:
    """:func:`compute_map`, stored once per dictionary, method and parameters in ``memo``."""
    params = _check_method(method, params)
    key = map_key(dictionary.fingerprint(), method, params)
    got = stored_map(dictionary, method, memo, **params)
    if got is not None:
        return got
    if memo is not None:
        memo.delete(key)  # absent, or undecodable: computed again
    fmap = compute_map(dictionary, method, **params)
    if memo is not None:
        memo.put_bytes(key, fmap.to_bytes())
    return fmap


# ---- what the page draws -------------------------------------------------------------------
def draw_indices(n: int, limit: int = 20_000, keep: list[int] | tuple[int, ...] = ()) -> list[int]:
    """At most ``limit`` feature indices to draw (an even stride: deterministic, covers the
    whole index range), plus every index of ``keep`` (the selected or searched features)."""
    step = max(1, math.ceil(n / max(1, limit)))
    chosen = set(range(0, n, step))
    chosen.update(int(k) for k in keep if 0 <= int(k) < n)
    return sorted(chosen)


def map_table(
    fmap: FeatureMap,
    indices: list[int],
    summary: dict[str, list] | None = None,
    labels: dict[int, str] | None = None,
) -> dict[str, list]:
    """Columns for drawing ``indices``: ``feature``, ``x``, ``y``, and, when given, the
    summary's ``density``, ``max_act``, ``top_tokens`` (promoted) and ``fires_on`` (joined
    by feature index, lists as comma-separated text) and a
    ``label`` per feature (empty where there is none)."""
    out: dict[str, list] = {
        "feature": list(indices),
        "x": [float(fmap.x[i]) for i in indices],
        "y": [float(fmap.y[i]) for i in indices],
    }
    if summary is not None and summary.get("feature"):
        row = {int(f): r for r, f in enumerate(summary["feature"])}
        for col in ("density", "max_act", "top_tokens", "fires_on"):
            if col not in summary:
                continue
            values = summary[col]
            got = [values[row[i]] if i in row else None for i in indices]
            if col in ("top_tokens", "fires_on"):
                got = [", ".join(map(str, v)) if v else "" for v in got]
            out[col] = got
    if labels:
        out["label"] = [str(labels.get(i, "")) for i in indices]
    return out


def export_map(
    dictionary: Dictionary,
    memo: Memo | None,
    keep: list[int] | tuple[int, ...] = (),
    labels: Callable[[list[int]], dict[int, str]] | None = None,
    summary: dict[str, list] | None = None,
) -> MapExport | None:
    """The map stored for ``dictionary`` in ``memo`` (UMAP when there is one, else PCA),
    ready for an HTML export (:mod:`core.export.map_html`): at most its
    :data:`~core.export.map_html.MAX_POINTS` features plus ``keep``, with their ``labels``
    (a batched lookup) and ``summary`` columns. ``None`` when no map is stored: an export
    never computes one."""
    for method in ("umap", "pca"):
        fmap = stored_map(dictionary, method, memo)
        if fmap is not None:
            break
    else:
        return None
    n = fmap.n_features
    keep = [int(k) for k in keep if 0 <= int(k) < n][: EXPORT_POINTS // 2]
    shown = draw_indices(n, EXPORT_POINTS - len(keep), keep)
    names = labels(shown) if labels is not None else None
    return MapExport(map_table(fmap, shown, summary, names), fmap.method, n)
