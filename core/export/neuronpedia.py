"""Neuronpedia batch files (``batch-N.json``) in the layout of SAEDashboard's runner.

Neuronpedia's import scripts read, per batch file, the top-level keys ``model_id``,
``layer``, ``sae_set``, ``sae_id_suffix`` and ``features``; per feature the
dashboard tables, histograms and an ``activations`` list of highlighted prompts.
:func:`batch_to_neuronpedia` builds that object from our
:class:`~core.engine.features.FeatureData`; :func:`write_batch` validates it against
``neuronpedia_schema.json`` (next to this module) and writes it atomically.

Field mapping (checked against SAEDashboard 0.8.0's converter):

* ``neuron_alignment_{indices,values,l1}``: the decoder's largest-magnitude neurons,
  their weights and their share of the decoder row's L1 norm (our ``value`` and
  ``l1_share`` columns).
* ``correlated_{neurons,features}_l1``: despite the name, the reference writes the
  *cosine similarity* of the activation vectors there; so do we (our ``cosine``
  column). ``..._pearson`` is the Pearson correlation.
* ``neg_str/neg_values``, ``pos_str/pos_values``: bottom and top logit effects.
* ``frac_nonzero``: activation density (fraction of swept tokens where it fires).
* ``freq_hist_data_bar_values`` / ``..._heights``: activation histogram bin centres and
  counts; ``logits_hist_data_bar_values`` / ``..._heights`` likewise for the logit
  effects over the vocabulary.
* ``activations``: first the top examples (``bin_min = -1``, ``bin_max`` = the
  maximum activation, ``bin_contains = -1``), then one block per activation interval
  from the highest down (``bin_min``/``bin_max`` = the interval, ``bin_contains`` =
  its share of the feature's activations). ``qualifying_token_index`` follows the
  reference convention: one less than the qualifying token's index in ``tokens``
  (:data:`QUALIFYING_INDEX_OFFSET`).
* ``decoder_weights_dist``: for attention-output dictionaries (``hook_z``) the share
  of the decoder row's norm per head, as the reference computes it; otherwise ``[]``.
* ``vector``: the feature's decoder direction (taken from the dictionary by the
  caller: :class:`FeatureData` does not hold it), or ``[]``.

Every float is rounded to 5 decimals; non-finite values are refused.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.engine.features import Example, FeatureData, Histogram
from core.export import ExportError
from core.storage import atomic_write

SCHEMA_PATH = Path(__file__).with_name("neuronpedia_schema.json")
#: added to the qualifying token's index in ``tokens`` (SAEDashboard's converter writes
#: the sequence position minus one); kept so files read the same as the reference's
QUALIFYING_INDEX_OFFSET = -1
DECIMALS = 5


@dataclass
class NeuronpediaMeta:
    """What a batch file says about the dictionary and the prompts.

    Attributes:
        model_id: Neuronpedia model id (e.g. ``gpt2-small``).
        layer: the layer number the source sits at.
        sae_set: the source set name (the reference's ``np_set_name`` or ``sae_set``).
        sae_id_suffix: optional suffix after the set (``__suffix``), else ``None``.
        dataset: the dataset the prompts came from (path or Hugging Face id).
        n_prompts_total: number of prompts (token rows) swept.
        n_tokens_in_prompt: tokens per prompt.
        log_sparsity: the density threshold as log10 (written to ``skipped_indexes.json``).
    """

    model_id: str
    layer: int
    sae_set: str
    sae_id_suffix: str | None = None
    dataset: str = ""
    n_prompts_total: int = 0
    n_tokens_in_prompt: int = 0
    log_sparsity: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "layer": self.layer,
            "sae_set": self.sae_set,
            "sae_id_suffix": self.sae_id_suffix,
            "dataset": self.dataset,
            "n_prompts_total": self.n_prompts_total,
            "n_tokens_in_prompt": self.n_tokens_in_prompt,
            "log_sparsity": self.log_sparsity,
            "extra": dict(self.extra),
        }


#: non-zero rounded values below this magnitude: Python writes them with an exponent
_EXPONENT_BELOW = 1e-4


class _Exponent(float):
    """A rounded value that Python's ``repr`` writes with an exponent (``1e-05``, as
    ``json.dumps`` writes it) where orjson writes ``0.00001``; :func:`dumps` writes these
    as ``repr`` does, so the files are byte for byte what ``json.dumps`` writes. Every
    other float reads the same in both (shortest round-trip digits)."""

    __slots__ = ()


def _marked(values: list[float], arr: np.ndarray) -> list[float]:
    """``values`` (the floats of ``arr``) with the exponent-written ones marked."""
    for i in np.flatnonzero((np.abs(arr) < _EXPONENT_BELOW) & (arr != 0)).tolist():
        values[i] = _Exponent(values[i])
    return values


_SCALE = 10.0**DECIMALS


def round_values(arr: np.ndarray) -> np.ndarray:
    """``round(v, DECIMALS) + 0.0`` of every finite float64 ``v``, vectorised, bit for bit.

    Python's ``round`` rounds the exact binary value half-to-even at the 5th decimal,
    giving the double nearest ``k / 10**5``. Here ``k = rint(v * 10**5)``: the product
    carries one rounding (relative error at most 2**-53), so ``k`` is exact unless the
    product's fraction lies within a few ulps of one half (or the product is too large for
    its fraction to show); those few values go through ``round`` itself. ``k / 10**5``
    with both exact is the correctly rounded quotient: the same double.
    """
    t = arr * _SCALE
    k = np.rint(t)
    out = k / _SCALE + 0.0
    frac = np.abs(t - np.trunc(t))
    risky = (np.abs(frac - 0.5) <= np.abs(t) * 2.0**-50) | ~(np.abs(t) < 2.0**52)
    if risky.any():
        for i in np.flatnonzero(risky).tolist():
            out[i] = round(float(arr[i]), DECIMALS) + 0.0
    return out


def _round_parts(parts: list[Sequence[float] | np.ndarray]) -> list[list[float]]:
    """``round(v, DECIMALS) + 0.0`` (no ``-0.0``) of every value of every part, in one
    vectorised call (one finiteness check for all of them, non-finite values refused); the
    same floats as rounding each value by itself."""
    # fromiter walks Python floats much faster than an array's numpy scalars
    parts = [p.tolist() if isinstance(p, np.ndarray) else p for p in parts]
    lens = [len(p) for p in parts]
    flat = np.fromiter(chain.from_iterable(parts), dtype=np.float64, count=sum(lens))
    if not bool(np.isfinite(flat).all()):
        bad = float(flat[~np.isfinite(flat)][0])
        raise ExportError(f"non-finite value {bad!r} cannot go into a Neuronpedia file")
    rounded = round_values(flat)
    values = _marked(rounded.tolist(), rounded)
    out, at = [], 0
    for n in lens:
        out.append(values[at : at + n])
        at += n
    return out


def _rl(values: Sequence[float] | np.ndarray) -> list[float]:
    """:func:`_round_parts` of one list of values."""
    return _round_parts([values])[0]


def _centres(h: Histogram) -> tuple[list[float], list[int]]:
    """Bin centres (not rounded) and counts of a histogram."""
    if not h.counts or len(h.edges) != len(h.counts) + 1:
        return [], []
    centres = [(a + b) / 2 for a, b in zip(h.edges[:-1], h.edges[1:], strict=True)]
    return centres, [int(c) for c in h.counts]


def head_distribution(direction: Sequence[float], n_heads: int) -> list[float]:
    """Share of a ``hook_z`` decoder row's norm per attention head (sums to 1).

    ``direction`` is the flattened ``[n_heads * d_head]`` decoder row.
    """
    d = list(direction)
    if n_heads < 1 or len(d) % n_heads:
        raise ExportError(f"a decoder row of width {len(d)} does not split into {n_heads} heads")
    d_head = len(d) // n_heads
    norms = [
        math.sqrt(sum(x * x for x in d[h * d_head : (h + 1) * d_head])) for h in range(n_heads)
    ]
    total = sum(norms)
    return _rl([n / total for n in norms]) if total > 0 else [0.0] * len(norms)


def feature_to_neuronpedia(
    fd: FeatureData,
    meta: NeuronpediaMeta,
    vector: Sequence[float] | np.ndarray | None = None,
    decoder_weights_dist: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One feature in the Neuronpedia batch layout (see the module docstring).

    Every float of the feature is rounded in one call (:func:`_round_parts`)."""
    shown: list[tuple[Example, float, float, float]] = [
        (ex, -1, fd.max_act, -1) for ex in fd.top_examples
    ]
    shown += [(ex, g.lo, g.hi, g.share) for g in reversed(fd.intervals) for ex in g.examples]
    fv, fh = _centres(fd.act_hist)
    lv, lh = _centres(fd.logit_hist)
    na, cn, cf = fd.neuron_alignment, fd.correlated_neurons, fd.correlated_features
    parts: list[Sequence[float] | np.ndarray] = [
        na.columns.get("value", []),
        na.columns.get("l1_share", []),
        cn.columns.get("cosine", []),
        cn.columns.get("pearson", []),
        cf.columns.get("cosine", []),
        cf.columns.get("pearson", []),
        fd.bottom_logits.values,
        fd.top_logits.values,
        [fd.density],
        fv,
        lv,
        decoder_weights_dist if decoder_weights_dist is not None else [],
        vector if vector is not None else [],
    ]
    head = len(parts)  # then, per shown example: its (bin_min, bin_max, bin_contains), its values
    for ex, lo, hi, share in shown:
        parts += [(lo, hi, share), ex.acts]
    r = _round_parts(parts)
    acts = []
    for i, (ex, *_) in enumerate(shown):
        (bin_min, bin_max, bin_contains), values = r[head + 2 * i], r[head + 2 * i + 1]
        acts.append(
            {
                "bin_min": bin_min,
                "bin_max": bin_max,
                "bin_contains": bin_contains,
                "tokens": list(ex.tokens),
                "values": values,
                "qualifying_token_index": ex.qualifying_index + QUALIFYING_INDEX_OFFSET,
            }
        )
    return {
        "feature_index": int(fd.index),
        "neuron_alignment_indices": [int(i) for i in na.indices],
        "neuron_alignment_values": r[0],
        "neuron_alignment_l1": r[1],
        "correlated_neurons_indices": [int(i) for i in cn.indices],
        "correlated_neurons_l1": r[2],
        "correlated_neurons_pearson": r[3],
        "correlated_features_indices": [int(i) for i in cf.indices],
        "correlated_features_l1": r[4],
        "correlated_features_pearson": r[5],
        "neg_str": list(fd.bottom_logits.tokens),
        "neg_values": r[6],
        "pos_str": list(fd.top_logits.tokens),
        "pos_values": r[7],
        "frac_nonzero": r[8][0],
        "freq_hist_data_bar_values": r[9],
        "freq_hist_data_bar_heights": fh,
        "logits_hist_data_bar_heights": lh,
        "logits_hist_data_bar_values": r[10],
        "n_prompts_total": int(meta.n_prompts_total),
        "n_tokens_in_prompt": int(meta.n_tokens_in_prompt),
        "dataset": str(meta.dataset),
        "decoder_weights_dist": r[11],
        "activations": acts,
        "vector": r[12],
    }


def batch_to_neuronpedia(
    features: Sequence[FeatureData],
    meta: NeuronpediaMeta,
    vectors: Mapping[int, Sequence[float]] | None = None,
    decoder_weights_dists: Mapping[int, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """A whole batch file: top-level keys plus one entry per feature, in the given order.

    Args:
        features: the features of this batch.
        meta: model id, layer, set name, suffix, dataset and prompt counts.
        vectors: feature index -> decoder direction (``vector``); missing -> ``[]``.
        decoder_weights_dists: feature index -> per-head norm shares; missing -> ``[]``.
    """
    vectors = vectors or {}
    dists = decoder_weights_dists or {}
    return {
        "model_id": str(meta.model_id),
        "layer": int(meta.layer),
        "sae_set": str(meta.sae_set),
        "sae_id_suffix": meta.sae_id_suffix,
        "features": [
            feature_to_neuronpedia(fd, meta, vectors.get(fd.index), dists.get(fd.index))
            for fd in features
        ],
    }


def sae_id(meta: NeuronpediaMeta) -> str:
    """Neuronpedia's source id: ``<layer>-<set>`` (plus ``__<suffix>``)."""
    suffix = f"__{meta.sae_id_suffix}" if meta.sae_id_suffix else ""
    return f"{meta.layer}-{meta.sae_set}{suffix}"


def explanation_records(meta: NeuronpediaMeta, descriptions: Mapping[int, Any]) -> list[dict]:
    """Neuronpedia's explanation export (the form its explanation downloads use): one
    record per feature with its description, the best explanation or else the label
    (``descriptions``: feature -> an object with ``text``, ``kind`` and ``by``, see
    :mod:`core.knowledge.describe`)."""
    return [
        {
            "modelId": str(meta.model_id),
            "layer": sae_id(meta),
            "index": str(int(f)),
            "description": d.text,
            "explanationModelName": d.by,
            "typeName": f"featurescope-{d.kind}",
        }
        for f, d in sorted(descriptions.items())
    ]


def skipped_indexes(meta: NeuronpediaMeta, skipped: Sequence[int]) -> dict[str, Any]:
    """The reference runner's ``skipped_indexes.json``: features listed as dead/too sparse."""
    return {
        "model_id": str(meta.model_id),
        "layer": str(meta.layer),
        "sae_set": str(meta.sae_set),
        "log_sparsity": meta.log_sparsity,
        "skipped_indexes": sorted(int(i) for i in skipped),
    }


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of a batch file."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local ``{"$ref": "#/$defs/name"}`` by the definition (validation is ~10x faster)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_schema()
    return jsonschema.Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))


def validate_batch(batch: dict[str, Any], max_features: int | None = None) -> None:
    """Raise :class:`~core.export.ExportError` when ``batch`` does not match the schema.

    Args:
        batch: the batch object.
        max_features: check only the top level and this many features (validation
            costs about 10 ms per feature); ``None`` checks everything.
    """
    if max_features is not None and isinstance(batch.get("features"), list):
        batch = {**batch, "features": batch["features"][:max_features]}
    for feat in batch.get("features", []) if isinstance(batch.get("features"), list) else []:
        for act in feat.get("activations", []) if isinstance(feat, dict) else []:
            if isinstance(act, dict) and len(act.get("tokens", [])) != len(act.get("values", [])):
                raise ExportError(
                    f"feature {feat.get('feature_index')}: an activation has "
                    f"{len(act.get('tokens', []))} tokens but {len(act.get('values', []))} values"
                )
    errors = sorted(_validator().iter_errors(batch), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ExportError(
            f"Neuronpedia batch does not match the schema at {where}: {first.message} "
            f"({len(errors)} problem(s) in all)"
        )


def _exponent_form(obj: Any) -> orjson.Fragment:
    if isinstance(obj, _Exponent):
        return orjson.Fragment(float.__repr__(obj).encode())
    raise TypeError(f"{type(obj).__name__} cannot go into a Neuronpedia file")


def dumps(batch: dict[str, Any]) -> bytes:
    """Compact, reproducible JSON of a batch as UTF-8 bytes: the bytes of
    ``json.dumps(batch, ensure_ascii=False, separators=(",", ":"))`` for the batches
    built here (their floats come from :func:`_round_parts`, which refuses non-finite
    values), written by orjson, about eight times faster."""
    return orjson.dumps(batch, default=_exponent_form)


def write_batch(path: str | Path, batch: dict[str, Any], validate: bool | int = True) -> Path:
    """Validate and write a batch file atomically; returns the path.

    ``validate``: ``True`` checks every feature against the schema, an integer ``n``
    the top level and the first ``n`` features (fast for big batches), ``False`` nothing.
    """
    if validate is not False:
        validate_batch(batch, None if validate is True else int(validate))
    return atomic_write(path, dumps(batch))


__all__ = [
    "DECIMALS",
    "QUALIFYING_INDEX_OFFSET",
    "SCHEMA_PATH",
    "NeuronpediaMeta",
    "batch_to_neuronpedia",
    "dumps",
    "feature_to_neuronpedia",
    "head_distribution",
    "load_schema",
    "skipped_indexes",
    "validate_batch",
    "write_batch",
]
