"""One loaded (model, dictionary, token set) and every question the UI asks of it.

The app pages and the exports talk to a :class:`Workspace` only; it returns plain
Python data (dicts, lists, :class:`~core.engine.features.FeatureData`), so the pages
never import torch. Every computation waits its turn in the process's compute queue
(:mod:`core.queue`, first come first served, with a position callers can show) and
then holds its model's lock; every hook is registered for one call only, so sessions
sharing the workspace never see each other's state. A computation that runs out of
accelerator memory is retried with half the batch (down to one sequence) instead of
failing (:mod:`core.gate`). ``limits`` (hosted mode, :class:`core.hosted.Limits`) bound
what one request may ask for. The search methods live in :mod:`core.search`, the
search of the token set and whole rows in :mod:`core.corpus_search`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from core.config import Progress, RunConfig, check_feature_index
from core.corpus_search import CorpusMixin
from core.dictionaries.directions import directions_file_for
from core.dictionaries.protocol import Dictionary
from core.effects import compute_effects, steer
from core.engine.activations import activation_store_for
from core.engine.cached import (
    compute_features,
    missing_features,
    source_key,
    stream_features,
    token_fingerprint,
)
from core.engine.features import FeatureData
from core.engine.gram_budget import ASSUMED_L0, correlation_bytes, resolve_budget
from core.engine.sweep import prepare_tokens
from core.gate import WorkspaceError, free_accelerator_memory, is_out_of_memory, model_lock
from core.hosted import Limits
from core.memo import Memo, feature_key, feature_prefix
from core.models import ModelAdapter
from core.precompute.index import run_memos
from core.previews import SUMMARY_VERSION, feature_preview, summary_table
from core.queue import COMPUTE_QUEUE
from core.search import SearchMixin
from core.sources import load_sources
from core.specs import (
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    parse_dataset,
    parse_dictionary,
    parse_model,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


class Workspace(SearchMixin, CorpusMixin):
    """A model, a dictionary and a token set, with the memo layer in front: the live
    :class:`~core.feature_source.FeatureSource`.

    Features come from the memo, or from a precompute output of the same sources
    (registered by the runner: :mod:`core.precompute.index`), and are computed otherwise.

    Args:
        model, dictionary, tokens: the live objects (see :mod:`core.sources`).
        dataset: identity of the token set.
        memo: the memo layer (``None`` computes every time).
        config: defaults for feature computation (features are set per call).
        specs: the specs that built this workspace (for labels and deep links).
        limits: per-request limits (hosted mode); ``None`` for a single researcher.
    """

    def __init__(
        self,
        model: ModelAdapter,
        dictionary: Dictionary,
        tokens: torch.Tensor,
        dataset: dict[str, Any] | None = None,
        memo: Memo | None = None,
        config: RunConfig | None = None,
        specs: dict[str, Any] | None = None,
        limits: Limits | None = None,
    ):
        self.model = model
        self.dictionary = dictionary
        self.tokens = tokens
        self.dataset = dict(dataset or {})
        self.memo = memo
        self.config = config or RunConfig()
        self.specs = dict(specs or {})
        self.lock = model_lock(model)
        self.limits = limits
        self.oom_retries = 0
        # hook activations kept on disk next to the memo: after the first sweep over this
        # token set, computing other features needs no forward pass
        self.activation_store = activation_store_for(memo.directory) if memo is not None else None
        self._runs: dict[str, list[Memo]] = {}  # precompute outputs by source key
        self._keys: dict[str, str] = {}  # source keys by result config
        self._unit_dirs: torch.Tensor | None = None
        self._vocab_index: dict[str, list[int]] | None = None
        self._fits: set[str] = set()  # hooks the dictionary was checked to fit
        self._previews: dict[int, dict[str, list[str]]] = {}  # computed features only

    @classmethod
    def from_specs(
        cls,
        model_spec: ModelSpec,
        dictionary_spec: DictionarySpec,
        dataset_spec: DatasetSpec,
        memo: Memo | None = None,
        config: RunConfig | None = None,
    ) -> Workspace:
        model, dictionary, tokens, identity = load_sources(
            model_spec, dictionary_spec, dataset_spec
        )
        specs = {
            "model": model_spec.to_dict(),
            "dictionary": dictionary_spec.to_dict(),
            "dataset": dataset_spec.to_dict(),
        }
        return cls(model, dictionary, tokens, identity, memo, config, specs)

    live = True

    # --- description -----------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.dictionary.n_features

    def describe(self) -> dict[str, Any]:
        """What is loaded, for the sidebar."""
        return {
            "model": self.model.name,
            "dictionary": self.dictionary.identity(),
            "dataset": self.dataset,
            "n_features": self.n_features,
            "n_sequences": int(self.tokens.shape[0]),
            "context_length": int(self.tokens.shape[1]),
            "n_tokens": int(self.tokens.numel()),
            "device": str(self.model.device),
            "hook": self.config.hook or self.dictionary.hook_in,
        }

    def identity_key(self) -> str:
        """Short stable id of (model, dictionary, tokens): goes into deep links."""
        return self._source_key(self.config)[:12]

    def dictionary_key(self) -> str:
        """The dictionary's fingerprint: what the knowledge store keys labels by."""
        return self.dictionary.fingerprint()

    def _prepared(self, config: RunConfig) -> torch.Tensor:
        return prepare_tokens(self.tokens, config)

    def _source_key(self, config: RunConfig) -> str:
        """The memo key of these sources under ``config`` (shared with the runner); the
        token hash behind it is computed once per result config."""
        which = json.dumps(config.result_key_dict(), sort_keys=True, default=str)
        if which not in self._keys:
            self._keys[which] = source_key(
                self.model, self.dictionary, self._prepared(config), config
            )
        return self._keys[which]

    def _readers(self, config: RunConfig) -> list[Memo]:
        """Memos of the precompute outputs registered for these sources (opened once)."""
        if self.memo is None:
            return []
        key = self._source_key(config)
        if key not in self._runs:
            self._runs[key] = run_memos(self.memo, key)
        return self._runs[key]

    def memory_estimate(self, n_features: int) -> dict[str, float]:
        """Rough peak memory (MB) of computing ``n_features`` features, for the load page.

        Correlations follow the sweep's plan: the dense co-activation sums when they fit
        ``memory_budget``, else the sparse activations kept for them (assuming
        :data:`ASSUMED_L0` active features per token) and the blocks computed from them.
        """
        cfg = self.config
        n_tok = self.tokens.numel()
        chunk = min(n_features, cfg.feature_chunk_size)
        batch_tok = cfg.batch_size * self.tokens.shape[1]
        acts = batch_tok * chunk * 4 * 3
        hook_cache = n_tok * self.dictionary.d_in * 4
        n_cols = self.n_features if cfg.feature_correlation == "all" else n_features
        store = gram = 0
        if cfg.feature_correlation != "none":
            l0 = min(ASSUMED_L0, self.n_features) * n_cols / self.n_features
            budget = resolve_budget(cfg.memory_budget, torch.device(self.model.device))
            store, gram = correlation_bytes(n_features, n_cols, n_tok, l0, budget)
        per_feature = n_features * (self.dictionary.d_in * 4 + 4096)
        return {
            "activations_mb": acts / 2**20,
            "hook_cache_mb": hook_cache / 2**20,
            "correlations_mb": (store + gram) / 2**20,
            "sparse_store_mb": store / 2**20,
            "per_feature_mb": per_feature / 2**20,
            "total_mb": (acts + hook_cache + store + gram + per_feature) / 2**20,
        }

    # --- compute gate ---------------------------------------------------------------------
    @contextlib.contextmanager
    def gate(self) -> Iterator[None]:
        """Wait for a compute slot (in arrival order), then hold the model's lock."""
        with COMPUTE_QUEUE.slot(), self.lock:
            yield

    def _retrying(self, run: Callable[[RunConfig], T], what: str) -> T:
        """``run(config)`` in the gate; on out-of-memory, free memory and retry with half the
        batch and feature chunk until one sequence fails too. The smaller sizes are kept
        for later calls (they do not change results: execution fields are not in keys)."""
        while True:
            cfg = self.config
            try:
                with self.gate():
                    return run(cfg)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                free_accelerator_memory()
                if cfg.batch_size <= 1 and cfg.feature_chunk_size <= 256:
                    raise WorkspaceError(
                        f"out of memory while computing {what}, even one sequence at a time: "
                        "ask for fewer features, or try again when the server is less busy"
                    ) from exc
                self.config = dataclasses.replace(
                    cfg,
                    batch_size=max(1, cfg.batch_size // 2),
                    feature_chunk_size=max(256, cfg.feature_chunk_size // 2),
                )
                self.oom_retries += 1
                log.warning(
                    "out of memory computing %s; retrying with batch %d, feature chunk %d",
                    what,
                    self.config.batch_size,
                    self.config.feature_chunk_size,
                )

    # --- features ------------------------------------------------------------------------
    def check_index(self, i: object) -> int:
        """``i`` as a feature index, or :class:`WorkspaceError` saying why not."""
        return check_feature_index(i, self.n_features, WorkspaceError)

    def features(
        self,
        indices: list[int],
        progress: Progress | None = None,
        correlation: str | None = None,
    ) -> dict[int, FeatureData]:
        """Feature data (from the memo when present); one sweep computes all missing.
        ``correlation`` overrides the config's ``feature_correlation``; ``"requested"`` also
        makes the tables long enough to hold every pair of ``indices``."""
        idx = [self.check_index(i) for i in indices]
        self._check_job_limit(idx)
        scope: dict[str, Any] = {}
        if correlation is not None:
            scope["feature_correlation"] = correlation
        if correlation == "requested":
            scope["n_table_rows"] = max(self.config.n_table_rows, len(set(idx)) - 1)

        def run(config: RunConfig) -> dict[int, FeatureData]:
            return compute_features(
                self.model,
                self.dictionary,
                self.tokens,
                dataclasses.replace(config, features=idx, **scope),
                self.memo,
                dataset=self.dataset,
                progress=progress,
                activation_store=self.activation_store,
                readers=self._readers(config),
            )

        return self._retrying(run, f"{len(idx):,} features")

    def job_passes(self, indices: list[int], per_pass: int) -> list[list[int]]:
        """The passes of a background job computing ``indices``, ``per_pass`` features each.
        Hosted: refused (:class:`~core.hosted.AccessError`) when the features still to compute
        exceed the job limit (cached ones are free), and passes are no larger than it."""
        per_pass = max(1, int(per_pass))
        self._check_job_limit(indices)
        if self.limits is not None:
            per_pass = min(per_pass, self.limits.max_features_per_job)
        return [indices[s : s + per_pass] for s in range(0, len(indices), per_pass)]

    def _check_job_limit(self, indices: list[int], missing: list[int] | None = None) -> None:
        """Hosted: :class:`~core.hosted.AccessError` when more of ``indices`` are still to
        compute than the job limit allows (stored features are free). ``missing``: those
        features, when the caller has them already."""
        if self.limits is None:
            return
        todo = self.missing(indices) if missing is None else missing
        self.limits.check_count(len(todo), "features", self.limits.max_features_per_job)

    def features_for_export(self, indices: list[int]) -> dict[int, FeatureData]:
        """:meth:`features` for an export; hosted: at most ``max_features_per_export``."""
        if self.limits is not None:
            n = len(indices)
            self.limits.check_count(n, "features", self.limits.max_features_per_export)
        return self.features(list(indices))

    def missing(self, indices: list[int]) -> list[int]:
        """Which of ``indices`` are not in the memo yet (what :meth:`features` would compute)."""
        idx = [self.check_index(i) for i in indices]
        cfg = dataclasses.replace(self.config, features=idx)
        readers = self._readers(cfg)
        return missing_features(self.model, self.dictionary, self.tokens, cfg, self.memo, readers)

    def feature(self, i: int, progress: Progress | None = None) -> FeatureData:
        i = self.check_index(i)
        return self.features([i], progress)[i]

    def has(self, i: int) -> bool:
        """True for every valid index: a live workspace computes what it lacks."""
        try:
            self.check_index(i)
        except WorkspaceError:
            return False
        return True

    def cached(self, i: int) -> FeatureData | None:
        """The feature's data if it is stored (memo or precompute output), without computing."""
        if self.memo is None:
            return None
        i = self.check_index(i)
        cfg = dataclasses.replace(self.config, features=[i])
        prefix = feature_prefix(self._source_key(cfg), cfg.feature_correlation, [i])
        return self._stored(prefix, i, cfg)

    def _stored(self, prefix: str, i: int, config: RunConfig) -> FeatureData | None:
        """Feature ``i`` under key ``prefix`` in the memo or a registered output."""
        if self.memo is None:
            return None
        for memo in (self.memo, *self._readers(config)):
            got = memo.get_feature(feature_key(prefix, i))
            if got is not None:
                return got
        return None

    def previews(self, indices: list[int]) -> dict[int, dict[str, list[str]]]:
        """:func:`~core.previews.feature_preview` of each of ``indices`` that is already
        computed (read from the memo, never computed here; the others are left out)."""
        out: dict[int, dict[str, list[str]]] = {}
        for i in indices:
            i = self.check_index(i)
            if i not in self._previews:
                fd = self.cached(i)
                if fd is None:
                    continue
                self._previews[i] = feature_preview(fd)
            out[i] = self._previews[i]
        return out

    def summary(self, progress: Progress | None = None) -> dict[str, list]:
        """Whole-dictionary table (index, density, max, mean, active tokens, top promoted
        tokens, the tokens each feature fires on most), computed once."""
        key = (
            f"{self.identity_key()}:summary{SUMMARY_VERSION}:{token_fingerprint(self.tokens)[:12]}"
        )
        if self.memo is not None:
            got = self.memo.get_json(key)
            if got is not None:
                return got
        out = self._summary_of(list(range(self.n_features)), progress)
        if self.memo is not None:
            self.memo.put_json(key, out)
        return out

    def _summary_of(self, indices: list[int], progress: Progress | None) -> dict[str, list]:
        """:func:`~core.previews.summary_table` of ``indices`` (ascending) without holding
        their feature data: stored features are read one at a time, missing ones swept
        together, stored, and their rows taken from the sweep's columns batch by batch
        (none is built as FeatureData)."""
        missing = self.missing(indices)
        self._check_job_limit(indices, missing)
        rows: dict[int, dict[str, list]] = {}

        def run(config: RunConfig) -> None:
            todo = indices if config.feature_correlation == "requested" else missing
            sub = dataclasses.replace(config, features=todo)
            step = max(1, len(todo) // 100)  # about a hundred progress updates
            for part, _ in stream_features(
                self.model,
                self.dictionary,
                self._prepared(sub),
                sub,
                self.memo,
                step,
                dataset=self.dataset,
                progress=progress,
                activation_store=self.activation_store,
            ):
                table = part.summary()  # from the columns: no feature is built
                for j, f in enumerate(part):
                    rows[f] = {column: [values[j]] for column, values in table.items()}

        if missing:
            self._retrying(run, f"the summary of {len(missing):,} features")
        elif progress is not None:
            progress(1.0, "all features came from the cache")
        cfg = dataclasses.replace(self.config, features=indices)
        prefix = feature_prefix(self._source_key(cfg), cfg.feature_correlation, indices)
        out: dict[str, list] = {}
        for i in indices:
            row = rows.pop(i, None)
            if row is None:
                fd = self._stored(prefix, i, cfg)
                if fd is None:  # evicted from a full memo meanwhile: computed again
                    fd = self.features(indices)[i]
                row = summary_table([fd])
            for column, values in row.items():
                out.setdefault(column, []).extend(values)
        return out

    # --- effects and steering -------------------------------------------------------------
    def effects(self, i: int, progress: Progress | None = None) -> FeatureData:
        """Feature ``i``'s page data with exact per-token effects on every shown example.

        Each example's ``effects`` gets ``loss`` (next-token loss without the feature minus
        with it: positive = the feature helped), ``top_up`` / ``top_down`` (log-prob
        changes the feature causes, clean minus ablated), ``per_token`` hover strings and
        ``loss_qualifying`` / ``loss_sum`` sort keys; see :mod:`core.effects`. Memoised per
        (feature, base key); statistics of the last call are in ``last_effects_stats``.
        """
        i = self.check_index(i)
        fd = self.feature(i, progress)
        cfg = dataclasses.replace(self.config, features=[i])
        tokens = self._prepared(cfg)
        stats: dict[str, Any] = {}

        def run(config: RunConfig) -> dict[int, FeatureData]:
            return compute_effects(
                self.model,
                self.dictionary,
                tokens,
                {i: fd},
                batch_size=max(1, min(16, config.batch_size)),
                hook=cfg.hook,
                ignore_bos=cfg.ignore_bos,
                ignore_padding=cfg.ignore_padding,
                memo=self.memo,
                key_prefix=feature_prefix(self._source_key(cfg), cfg.feature_correlation, [i]),
                progress=progress,
                stats=stats,
            )

        out = self._retrying(run, f"feature {i}'s effects")
        self.last_effects_stats = stats
        return out[i]

    def steer(
        self,
        i: int,
        prompt: str,
        coefficient: float | None = None,
        clamp: float | None = None,
        max_new_tokens: int = 32,
        seed: int = 0,
        temperature: float = 0.0,
    ) -> dict[str, Any]:
        """Continue ``prompt`` with feature ``i`` steered and unsteered, side by side.

        Give ``coefficient`` (add that multiple of the decoder direction at every
        position; negative pushes away) or ``clamp`` (hold the feature at that value).
        Greedy by default; ``temperature > 0`` samples both from the same seed. Raises
        :class:`WorkspaceError` for an empty or invalid prompt, and
        :class:`core.effects.EffectsError` for a model without tokenizer or
        ``max_new_tokens`` above 256. See :func:`core.effects.steer`.
        """
        i = self.check_index(i)
        self._check_prompt(prompt)
        if self.limits is not None:
            self.limits.check_count(max_new_tokens, "new tokens", self.limits.max_new_tokens)
        with self.gate():
            self._check_fit(self.config.hook or self.dictionary.hook_in)
            return steer(
                self.model,
                self.dictionary,
                i,
                prompt,
                coefficient=coefficient,
                clamp=clamp,
                max_new_tokens=max_new_tokens,
                seed=seed,
                temperature=temperature,
                hook=self.config.hook,
            )


def open_workspace(
    model: str = "demo",
    dictionary: str = "demo",
    dataset: str = "demo",
    *,
    n_tokens: int = 65_536,
    context_length: int = 128,
    clt_layer: int | None = None,
    dtype: str = "float32",
    device: str = "auto",
    memo: Memo | None = None,
    config: RunConfig | None = None,
    prefix: str = "",
    suffix: str = "",
    directions: torch.Tensor | None = None,
    hook: str | None = None,
) -> Workspace:
    """A workspace from source strings, read as the command line and the app's links read
    them (:mod:`core.specs`), for notebooks::

        ws = open_workspace("gpt2-small", "gpt2-small-res-jb/blocks.8.hook_resid_pre",
                            "NeelNanda/pile-10k", n_tokens=262_144)
        ws.feature(123).top_examples

    ``memo`` defaults to the app's memo, so features the app or a precompute of the same
    sources already has come back without computing. ``prefix``/``suffix``: text put
    around every document (a chat template); ``config=RunConfig(ignore_positions=[0],
    max_norm_ratio=10)`` ignores tokens (see :class:`~core.config.RunConfig`).
    ``directions=vecs, hook="blocks.6.hook_resid_pre"``: the vectors ``[n, d]`` as the
    dictionary (activation = projection; written once to a file named by their content
    next to the memo, which becomes the dictionary's spec ``directions:FILE``)."""
    memo = memo if memo is not None else Memo()
    if directions is not None:
        if dictionary != "demo":
            raise WorkspaceError(
                f"give either a dictionary ({dictionary!r}) or directions, not both"
            )
        if not hook:
            raise WorkspaceError(
                "directions need the hook they are read at: hook='blocks.6.hook_resid_pre'"
            )
        folder = Path(memo.directory).parent / "directions"
        dictionary = f"directions:{directions_file_for(directions, hook, folder)}"
    return Workspace.from_specs(
        parse_model(model, dtype=dtype, device=device),
        parse_dictionary(dictionary, clt_layer=clt_layer),
        parse_dataset(dataset, n_tokens, context_length, prefix=prefix, suffix=suffix),
        memo=memo,
        config=config,
    )
