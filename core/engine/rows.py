"""A feature's stored form: its row of the sweep's columns, as safetensors bytes.

The memo keeps each feature as the slice at its row of every column of the sweep
(:class:`~core.engine.result.FeatureSet`), values as they are (one array per dtype), with
the ids of the tokens its examples show (``top_ids``, ``int_ids``, ``bot_ids``:
:func:`~core.engine.result.window_ids`). The columns' layout, the strings of those tokens
and of its logit tokens, and its extras go in the JSON metadata. Packing rows is one slice
of every column per batch and one safetensors write per feature, no Python lists
(:func:`pack_rows`); a row read back (:func:`feature_from_row`) builds its
:class:`~core.engine.features.FeatureData` with :func:`build_feature`, the code the sweep's
set builds it with, so the two are equal. Reading needs no torch (numpy and safetensors).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from core.engine.features import (
    SCHEMA_VERSION,
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    Table,
)

#: example kind -> its columns: sequences, positions, activation windows; its token ids
#: are the column ``{kind}_ids``
EXAMPLES: dict[str, tuple[str, str, str]] = {
    "top": ("top_seq", "top_pos", "top_windows"),
    "int": ("int_seq", "int_pos", "int_windows"),
    "bot": ("bot_seq", "bot_pos", "bot_windows"),
}
_META = "feature"
#: the schema of feature data stored before rows (still read: precompute outputs)
LEGACY_SCHEMA = 3


@dataclass(frozen=True)
class RowContext:
    """What every row of a set shares: token count, sequence length, example window
    (``(before, after)``, ``None`` for whole sequences) and the strings of token ids."""

    n_tokens: int
    length: int
    window: tuple[int, int] | None
    strings: Callable[[list[int]], list[str]]


def _example(
    ctx: RowContext, seq: int, pos: int, acts: list[float], ids: list[int], strs: list[str]
) -> Example:
    length = ctx.length
    if ctx.window is None:
        start, a, t, w = 0, acts[:length], ids[:length], strs[:length]
    else:
        before, after = ctx.window
        start = max(0, pos - before)
        end = min(length, pos + after + 1)
        lo = start - (pos - before)
        hi = lo + (end - start)
        a, t, w = acts[lo:hi], ids[lo:hi], strs[lo:hi]
    return Example(
        seq=seq, pos=pos, value=a[pos - start], start=start, token_ids=t, tokens=w, acts=a
    )


def _examples(
    ctx: RowContext,
    seq: list[int],
    pos: list[int],
    win: list[list[float]],
    ids: list[list[int]],
    strs: list[list[str]],
) -> list[Example]:
    """The examples of one list of slots (``seq < 0``: an empty slot)."""
    return [
        _example(ctx, seq[i], pos[i], win[i], ids[i], strs[i])
        for i in range(len(seq))
        if seq[i] >= 0
    ]


def _slots(c: dict[str, list], j: int, kind: str) -> tuple[list, list, list, list, list]:
    """Row ``j``'s sequences, positions, windows, window token ids and their strings of
    ``kind``."""
    s_seq, s_pos, s_win = (c[name][j] for name in EXAMPLES[kind])
    return s_seq, s_pos, s_win, c[f"{kind}_ids"][j], c[f"{kind}_strs"][j]


def window_strings(ids: np.ndarray, table: np.ndarray, at: np.ndarray) -> list:
    """The strings of the example windows' token ids ``ids`` (any shape) as nested lists,
    for all of a batch's rows at once (one lookup per example was a third of building a
    feature): ``table[at]``, ``table`` an object array of strings ending with ``""`` (the
    string of positions with no token, ``ids < 0``: outside the sequence, never shown),
    ``at`` each id's place in it."""
    return table[np.where(ids < 0, len(table) - 1, at)].tolist()


def build_feature(
    c: dict[str, list], j: int, index: int, ctx: RowContext, extras: dict[str, Any]
) -> FeatureData:
    """Feature ``index``, entry ``j`` of column slices ``c`` (``column -> list``, see
    :class:`~core.engine.result.FeatureSet` and :func:`~core.engine.result.window_ids`;
    with each ``{kind}_ids`` its strings ``{kind}_strs``, :func:`window_strings`),
    with ``extras``."""
    n_active = int(c["count"][j])
    mx = float(c["max"][j])
    examples = _examples(ctx, *_slots(c, j, "top"))
    s_seq, s_pos, s_win, s_ids, s_strs = _slots(c, j, "int")
    i_counts = c["int_counts"][j]
    n_int = len(i_counts)
    signed = "min" in c  # a signed dictionary (core.engine.sweep.finalize_columns)
    mn = float(c["min"][j]) if signed else 0.0
    span = max(mx, -mn)  # intervals: |value| in (0, max |value|] when signed
    groups = []
    for b in range(n_int):
        exs = _examples(ctx, s_seq[b], s_pos[b], s_win[b], s_ids[b], s_strs[b])
        groups.append(
            IntervalGroup(
                lo=span * b / n_int,
                hi=span * (b + 1) / n_int,
                n_active=i_counts[b],
                share=i_counts[b] / n_active if n_active else 0.0,
                examples=exs,
            )
        )
    h_counts = c["hist_counts"][j]
    nb = len(h_counts)
    if signed:  # bins over [min, max]
        edges = [mn + (mx - mn) * i / nb for i in range(nb + 1)]
    else:
        edges = [mx * i / nb for i in range(nb + 1)]
    act_hist = Histogram(edges=edges, counts=h_counts)
    if "pos_i" in c:
        lo, hi = float(c["logit_lo"][j]), float(c["logit_hi"][j])
        lcounts = c["logit_counts"][j]
        nlb = len(lcounts)
        logit_hist = Histogram(
            edges=[lo + (hi - lo) * i / nlb for i in range(nlb + 1)], counts=lcounts
        )
        pi, ni = c["pos_i"][j], c["neg_i"][j]
        top_l = LogitTable(pi, ctx.strings(pi), c["pos_v"][j])
        bot_l = LogitTable(ni, ctx.strings(ni), c["neg_v"][j])
    else:
        logit_hist = Histogram(edges=[], counts=[])
        top_l = LogitTable([], [], [])
        bot_l = LogitTable([], [], [])
    empty = Table(indices=[], columns={"pearson": [], "cosine": []})
    if n_active > 0:
        corr_n = Table(
            indices=c["cn_i"][j],
            columns={"pearson": c["cn_p"][j], "cosine": c["cn_c"][j]},
        )
    else:
        corr_n = empty
    if "cf_i" in c and n_active > 0:
        pv = c["cf_p"][j]
        keep = [i for i, v in enumerate(pv) if v > float("-inf")]
        ci, cc = c["cf_i"][j], c["cf_c"][j]
        corr_f = Table(
            indices=[ci[i] for i in keep],
            columns={"pearson": [pv[i] for i in keep], "cosine": [cc[i] for i in keep]},
        )
    else:
        corr_f = Table(indices=[], columns={"pearson": [], "cosine": []})
    if signed:  # kept in extras, so the data of other features is unchanged
        bottom = [asdict(e) for e in _examples(ctx, *_slots(c, j, "bot"))]
        extras = extras | {"min_act": mn, "bottom_examples": bottom}
    return FeatureData(
        index=index,
        n_tokens=ctx.n_tokens,
        n_active=n_active,
        density=float(c["density"][j]),
        max_act=mx,
        mean_act=float(c["mean"][j]),
        act_hist=act_hist,
        logit_hist=logit_hist,
        top_logits=top_l,
        bottom_logits=bot_l,
        neuron_alignment=Table(
            indices=c["al_i"][j],
            columns={"value": c["al_v"][j], "l1_share": c["al_s"][j]},
        ),
        correlated_neurons=corr_n,
        correlated_features=corr_f,
        top_examples=examples,
        intervals=groups,
        decoder_norm=float(c["dec_norm"][j]),
        extras=extras,
    )


# --- bytes -----------------------------------------------------------------------------------
def _token_ids(cols: dict[str, np.ndarray]) -> list[str]:
    """The columns holding token ids (example windows, logit tokens)."""
    names = [f"{kind}_ids" for kind in EXAMPLES] + ["pos_i", "neg_i"]
    return [n for n in names if n in cols]


def pack_rows(
    cols: dict[str, np.ndarray],
    indices: Sequence[int],
    ctx: RowContext,
    extras: Sequence[dict[str, Any]],
) -> list[bytes]:
    """The stored bytes of the features ``indices``, entry ``j`` of every column of ``cols``
    (``column -> [rows, ...]`` arrays: the set's columns and
    :func:`~core.engine.result.window_ids`) and
    ``extras[j]``: a safetensors file holding the row's values of each dtype as one array
    (named by the dtype, the columns one after another by name), and as metadata the
    columns' names, dtypes and shapes, the feature's index, the context and the strings of every
    token id the row holds."""
    n = len(indices)
    layout = [[name, str(cols[name].dtype), list(cols[name].shape[1:])] for name in sorted(cols)]
    by_dtype: dict[str, list[np.ndarray]] = {}
    for name, dtype, _ in layout:
        by_dtype.setdefault(dtype, []).append(cols[name].reshape(n, -1))
    flat = {dtype: np.concatenate(parts, axis=1) for dtype, parts in by_dtype.items()}
    names = _token_ids(cols)
    ids = np.concatenate([cols[name].reshape(n, -1).astype(np.int64) for name in names], axis=1)
    shared = {"n_tokens": ctx.n_tokens, "length": ctx.length, "window": ctx.window}
    out = []
    for j, index in enumerate(indices):
        used = np.unique(ids[j])
        used = used[np.searchsorted(used, 0) :].tolist()  # -1: outside a window
        meta = {
            "schema": SCHEMA_VERSION,
            "index": int(index),
            **shared,
            "columns": layout,
            "ids": used,
            "strings": ctx.strings(used),
            "extras": extras[j],
        }
        row = {dtype: arr[j] for dtype, arr in flat.items()}
        out.append(st_save(row, metadata={_META: json.dumps(meta, ensure_ascii=False)}))
    return out


def _metadata(data: bytes) -> dict[str, Any]:
    """The JSON metadata of a row's safetensors bytes."""
    if len(data) < 8:
        raise ValueError("safetensors payload too short")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("safetensors header length out of range")
    return json.loads(json.loads(data[8 : 8 + n])["__metadata__"][_META])


def _restore_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A schema-3 skeleton with its ``{"__array__": name}`` references replaced."""
    if isinstance(obj, dict):
        if "__array__" in obj:
            arr = arrays[obj["__array__"]]
            return arr.astype(np.float64 if obj.get("float") else np.int64).tolist()
        return {k: _restore_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_arrays(v, arrays) for v in obj]
    return obj


def feature_from_row(data: bytes) -> FeatureData:
    """The :class:`FeatureData` of a row's bytes (:func:`pack_rows`); raises ``ValueError``
    for bytes of another schema. Feature data stored before rows (schema 3: the dataclass
    as JSON, its numeric lists as arrays ``a0, a1, ...``; precompute outputs of format
    versions 1 and 2) is read too."""
    meta = _metadata(data)
    if meta.get("__schema__") == LEGACY_SCHEMA:
        meta.pop("__schema__")
        return FeatureData.from_dict(_restore_arrays(meta, st_load(data)))
    schema = meta.get("schema", meta.get("__schema__"))
    if schema != SCHEMA_VERSION:
        raise ValueError(f"feature row schema {schema!r} != {SCHEMA_VERSION}")
    strings = dict(zip(meta["ids"], meta["strings"], strict=True))
    window = meta["window"]
    ctx = RowContext(
        n_tokens=int(meta["n_tokens"]),
        length=int(meta["length"]),
        window=None if window is None else (int(window[0]), int(window[1])),
        strings=lambda ids: list(map(strings.__getitem__, ids)),
    )
    arrays = st_load(data)
    at = dict.fromkeys(arrays, 0)
    cols: dict[str, list] = {}
    used = np.asarray(meta["ids"], dtype=np.int32)  # ascending (pack_rows); as window_ids
    table = np.array([*meta["strings"], ""], dtype=object)
    for name, dtype, shape in meta["columns"]:
        size = math.prod(shape)
        part = arrays[dtype][at[dtype] : at[dtype] + size].reshape(shape)
        cols[name] = [part.tolist()]
        if name.endswith("_ids") and name.removesuffix("_ids") in EXAMPLES:
            cols[f"{name.removesuffix('_ids')}_strs"] = [
                window_strings(part, table, np.searchsorted(used, part))
            ]
        at[dtype] += size
    if any(at[dtype] != arr.size for dtype, arr in arrays.items()):
        raise ValueError("a feature row's arrays do not match its columns")
    return build_feature(cols, 0, int(meta["index"]), ctx, meta["extras"])


__all__ = [
    "EXAMPLES",
    "RowContext",
    "build_feature",
    "feature_from_row",
    "pack_rows",
    "window_strings",
]
