"""Run configuration: what the engine computes and how.

Fields split in two groups. *Result* fields change what is computed and are part of
the memo key; *execution* fields (batch sizes, device, memory budgets) only change how
fast or in how much memory, and are left out of the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import FeaturescopeError

CorrelationScope = Literal["all", "requested", "none"]
#: a progress callback: ``progress(fraction done in [0, 1], message)``
Progress = Callable[[float, str], None]

#: sequences whose activation norms give the median of ``max_norm_ratio``
NORM_REFERENCE_SEQUENCES = 64

#: execution-only fields: not part of the memo key
EXECUTION_FIELDS = frozenset(
    {
        "features",
        "batch_size",
        "feature_chunk_size",
        "device",
        "activation_cache_bytes",
        "gram_strategy",
        "memory_budget",
    }
)


#: result fields added after memo entries existed: left out of the key while at their default
#: (``None`` or empty), so entries computed before they existed keep their keys
LATER_RESULT_FIELDS = frozenset({"max_norm_ratio", "ignore_positions"})


class ConfigError(FeaturescopeError, ValueError):
    """A run configuration value is invalid (the message names the field and the fix)."""


class FeatureBoundsError(ConfigError):
    """A feature selection that reads well but does not fit the dictionary (or needs its size)."""


@dataclass
class RunConfig:
    """Everything that fixes one sweep.

    Attributes:
        hook: TransformerLens hook whose activations the dictionary encodes; ``None``
            takes the dictionary's own ``hook_in``. A different value must have the
            dictionary's input width.
        features: feature indices to compute; ``None`` means every feature.
        n_sequences: use at most this many token sequences (``None``: all given).
        context_length: truncate sequences to this many tokens (``None``: as given).
        batch_size: sequences per forward pass.
        feature_chunk_size: features encoded and reduced at once (bounds memory only).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: compute dtype of the model and dictionary: float32, bfloat16, float16.
            Statistics are always accumulated in float32.
        seed: seed for interval sampling; results are reproducible from it.
        ignore_bos: positions holding the BOS token are not examples and not counted.
        ignore_padding: positions holding the pad token (when distinct from BOS) likewise.
        ignore_positions: positions (0-based, within each sequence) that are not examples and
            not counted, e.g. ``[0]`` or ``[0, 1, 2]``; positions past the context are
            allowed and ignore nothing.
        max_norm_ratio: ignore tokens whose hook activation L2 norm exceeds this multiple
            of the reference median (attention sinks); ``None`` keeps every token. The
            reference median is the lower median (``torch.median``: the smaller middle value)
            of the L2 norms, in float32 of the activations in the sweep's dtype, over the
            tokens of the first :data:`NORM_REFERENCE_SEQUENCES` sequences that are not
            already ignored (BOS, padding, ``ignore_positions``). It does not depend on
            batching; it costs one extra forward pass over those sequences (none when the
            hook activations are stored).
        n_top_examples: top-activating examples per feature (one per sequence).
        n_intervals: equal-width activation bins between 0 (exclusive) and the max.
        n_interval_examples: sampled examples per interval bin (distinct sequences).
        n_hist_bins: bins of the activation-density histogram.
        n_logit_bins: bins of the logit-effect histogram over the vocabulary.
        n_top_logits: rows of the top/bottom logit tables.
        n_table_rows: rows of the neuron-alignment and correlation tables.
        window_before: context tokens shown before the qualifying token.
        window_after: context tokens shown after it.
        whole_sequence: show the whole sequence instead of a window.
        feature_correlation: ``"all"`` compares each feature with every feature of the
            dictionary, ``"requested"`` only with the features computed together,
            ``"none"`` skips the table.
        activation_cache_bytes: keep the hook activations of the first pass on the device
            up to this many bytes so the second pass needs no forward pass.
        gram_precision: precision of the dense co-activation products: ``"auto"``
            follows ``dtype``; ``"int8"`` is the fastest on CPU. Its Pearson values carry
            the error of rounding each activation to a step of max/127 (bound in
            ``tests/tolerance.py``; measured up to 1.6e-3, median 4.5e-4, against float64).
        gram_strategy: ``"auto"``, ``"dense"`` or ``"sparse"`` accumulation of the
            feature-by-feature co-activation matrix.
        memory_budget: bytes the correlated-features table may take on the device
            (``None``: half of the device's memory). When the dense co-activation sums
            (requested x compared features, float32) would exceed it, the table is computed
            exactly from the sweep's stored sparse activations, block by block; when even
            those do not fit, the sweep stops with an error naming the sizes.
    """

    hook: str | None = None
    features: list[int] | None = None
    n_sequences: int | None = None
    context_length: int | None = None
    batch_size: int = 32
    feature_chunk_size: int = 4096
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    ignore_bos: bool = True
    ignore_padding: bool = True
    ignore_positions: list[int] | None = None
    max_norm_ratio: float | None = None
    n_top_examples: int = 20
    n_intervals: int = 10
    n_interval_examples: int = 5
    n_hist_bins: int = 50
    n_logit_bins: int = 50
    n_top_logits: int = 10
    n_table_rows: int = 3
    window_before: int = 5
    window_after: int = 5
    whole_sequence: bool = False
    feature_correlation: CorrelationScope = "all"
    activation_cache_bytes: int = 2 << 30
    gram_strategy: Literal["auto", "dense", "sparse"] = "auto"
    gram_precision: Literal["auto", "float32", "bfloat16", "int8"] = "auto"
    memory_budget: int | None = 4 << 30

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        positive = [
            "batch_size",
            "feature_chunk_size",
            "n_top_examples",
            "n_intervals",
            "n_hist_bins",
            "n_logit_bins",
            "n_top_logits",
            "n_table_rows",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ["n_interval_examples", "window_before", "window_after"]:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ["n_sequences", "context_length"]:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(
                f"dtype must be one of float32, bfloat16, float16; got {self.dtype!r}"
            )
        if self.feature_correlation not in ("all", "requested", "none"):
            raise ConfigError(
                "feature_correlation must be 'all', 'requested' or 'none', "
                f"got {self.feature_correlation!r}"
            )
        if self.gram_precision not in ("auto", "float32", "bfloat16", "int8"):
            raise ConfigError(
                f"gram_precision must be auto, float32, bfloat16 or int8, got {self.gram_precision!r}"
            )
        if self.gram_strategy not in ("auto", "dense", "sparse"):
            raise ConfigError(
                f"gram_strategy must be auto, dense or sparse, got {self.gram_strategy!r}"
            )
        budget = self.memory_budget
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)):
            raise ConfigError(f"memory_budget must be a number of bytes or None, got {budget!r}")
        if budget is not None and budget < 1:
            raise ConfigError(f"memory_budget must be positive, got {budget!r}")
        ratio = self.max_norm_ratio
        if ratio is not None and (
            isinstance(ratio, bool)
            or not isinstance(ratio, int | float)
            or not math.isfinite(ratio)
            or ratio <= 0
        ):
            raise ConfigError(
                f"max_norm_ratio must be a positive number (e.g. 10: ignore tokens whose "
                f"activation norm is over 10x the median) or None, got {ratio!r}"
            )
        if ratio is not None:
            self.max_norm_ratio = float(ratio)  # 10 and 10.0 give one memo key
        if self.ignore_positions is not None:
            pos = self.ignore_positions
            if isinstance(pos, int) and not isinstance(pos, bool):
                pos = self.ignore_positions = [pos]
            if not isinstance(pos, list | tuple) or any(
                isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pos
            ):
                raise ConfigError(
                    "ignore_positions must be a list of non-negative positions (e.g. [0] or "
                    f"[0, 1]), got {self.ignore_positions!r}"
                )
            self.ignore_positions = sorted(set(pos)) or None
        if self.features is not None:
            bad = [f for f in self.features if not isinstance(f, int) or isinstance(f, bool)]
            if bad:
                raise ConfigError(f"features must be integers, got {bad[:3]!r}")

    # --- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def result_key_dict(self) -> dict[str, Any]:
        """The fields that change results (for the memo key)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in EXECUTION_FIELDS and not (k in LATER_RESULT_FIELDS and v is None)
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def check_feature_index(i: object, n_features: int, error: type[Exception] = ConfigError) -> int:
    """``i`` as a feature index of a dictionary of ``n_features``, or ``error`` (a class of
    ours) saying why not. ``True``, ``3.5`` and ``inf`` are not feature numbers (``int()``
    would make them 1, 3, or raise); text such as ``" 7 "`` (from a URL) is read."""
    if isinstance(i, bool) or (isinstance(i, float) and not i.is_integer()):
        raise error(f"feature index must be a whole number, got {i!r}")
    try:
        index = int(i)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:
        raise error(f"feature index must be a whole number, got {i!r}") from exc
    if not 0 <= index < n_features:
        raise error(
            f"feature {index} does not exist: this dictionary has {n_features} features "
            f"(0-{n_features - 1})"
        )
    return index


#: without the dictionary size, a feature selection may not name more indices than this
#: (the largest dictionaries in use have a few million features)
MAX_FEATURES = 1 << 24


def parse_feature_ranges(
    spec: str | list[int] | range | None, n_features: int | None = None
) -> list[tuple[int, int]] | None:
    """A feature selection as half-open ``(lo, hi)`` runs, checked but never expanded.

    Accepts what :func:`parse_features` accepts. With ``n_features`` every index must lie
    in ``0..n_features-1``; without it, ranges must be closed and name at most
    :data:`MAX_FEATURES` indices in all. Returns ``None`` for all features.

    Raises:
        ConfigError: the text cannot be read, or an index or range lies outside the
            dictionary (the message names the range and the valid indices).
    """
    if spec is None:
        return None
    if isinstance(spec, range):
        if len(spec) == 0:
            return []
        first, last = spec[0], spec[-1]  # constant time (min() would iterate)
        lo, hi = min(first, last), max(first, last) + 1
        _check_runs([(lo, hi)], str(spec), n_features)
        return [(lo, hi)] if spec.step == 1 else [(v, v + 1) for v in spec]
    if isinstance(spec, list):
        return _check_runs([(int(x), int(x) + 1) for x in spec], None, n_features)
    text = str(spec).strip()
    if text in ("", "all", "*"):
        return None
    runs: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part or "-" in part[1:]:
            sep = ":" if ":" in part else "-"
            lo_s, hi_s = part.split(sep, 1)
            try:
                lo = int(lo_s) if lo_s.strip() else 0
                hi = int(hi_s) if hi_s.strip() else None
            except ValueError as exc:
                raise ConfigError(f"cannot read feature range {part!r}: use e.g. 0:64") from exc
            if hi is None:
                if n_features is None:
                    raise FeatureBoundsError(f"open range {part!r} needs the dictionary size")
                hi = n_features
            _check_runs([(lo, hi)], part, n_features)
            if hi > lo:
                runs.append((lo, hi))
        else:
            try:
                value = int(part)
            except ValueError as exc:
                raise ConfigError(
                    f"cannot read feature index {part!r}: use e.g. '0:64' or '1,5,9'"
                ) from exc
            runs.append((value, value + 1))
    return _check_runs(runs, text, n_features)


def _check_runs(
    runs: list[tuple[int, int]], text: str | None, n_features: int | None
) -> list[tuple[int, int]]:
    """``runs`` unchanged once every run lies inside the dictionary (or under the cap)."""
    for lo, hi in runs:
        if hi <= lo:
            continue
        if n_features is not None and (lo < 0 or hi > n_features):
            what = f"feature index {lo}" if hi == lo + 1 else f"feature range {lo}:{hi}"
            if text is not None and hi != lo + 1 and text != f"{lo}:{hi}":
                what += f" (from {text!r})"
            valid = f"valid indices 0-{n_features - 1}" if n_features else "no valid indices"
            raise FeatureBoundsError(
                f"{what} is out of range: the dictionary has {n_features:,} features "
                f"({valid}); use e.g. 0:{min(n_features, 64)}"
            )
        if lo < 0:
            raise FeatureBoundsError(f"feature index {lo} is negative: indices start at 0")
    total = sum(max(0, hi - lo) for lo, hi in runs)
    if n_features is None and total > MAX_FEATURES:
        raise FeatureBoundsError(
            f"the selection {text!r} names {total:,} features, more than any dictionary "
            f"this program reads ({MAX_FEATURES:,}); use a smaller range"
        )
    return runs


def parse_positions(spec: str | int | list[int] | None) -> list[int] | None:
    """Positions to ignore: ``"0"``, ``"0,1,2"``, ``"0:4"`` (half-open), a list, or
    ``None``/``""`` for none (what ``--ignore-positions`` and config files give)."""
    if spec is None or isinstance(spec, list | int):
        return RunConfig(ignore_positions=spec).ignore_positions
    text = str(spec).strip()
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            if ":" in part:
                lo, hi = part.split(":", 1)
                out.extend(range(int(lo or 0), int(hi)))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise ConfigError(
            f"cannot read positions {text!r}: use e.g. '0' or '0,1,2' or '0:4'"
        ) from None
    return RunConfig(ignore_positions=out).ignore_positions


def parse_features(
    spec: str | list[int] | range | None, n_features: int | None = None
) -> list[int] | None:
    """Parse a feature selection: ``"0:64"``, ``"1,5,9"``, ``"0:10,42"``, ``"all"`` or a list.

    Returns ``None`` for all features. Ranges are half-open like Python slices. Bounds
    are checked on the text before any range is expanded (see
    :func:`parse_feature_ranges`), so a huge range fails at once, in constant memory.
    """
    runs = parse_feature_ranges(spec, n_features)
    if runs is None:
        return None
    return [v for lo, hi in runs for v in range(lo, hi)]
