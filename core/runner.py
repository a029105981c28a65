"""Batch precompute: dashboards for a whole dictionary (or a feature range), resumable.

``python -m core precompute ...`` (see :mod:`core.cli`) and :func:`run_precompute`
load a model, a dictionary and a token set through :mod:`core.sources`, split the
requested features into chunks ("features at a time") and sweep one chunk at a time
with the engine. After each chunk its results are written, and only then the chunk is
recorded as done in the manifest. Every file is written atomically (temporary file +
:func:`os.replace`), so a run killed at any moment leaves complete files only, and the
same command started again skips the chunks the manifest lists and finishes with the
same output as an uninterrupted run.

Output directory::

    manifest.json        specs, configuration, identity, chunk plan, features done/skipped
    memo/                a Memo directory (bytes-only diskcache): per feature its
                         FeatureData bytes under ``feature:{i}``, per chunk a summary
                         table under ``chunk:{k}:summary``
    html/chunk-KKKKK.html  one self-contained page per chunk (feature picker)
    html/index.html      links to the chunk pages
    neuronpedia/batch-K.json       Neuronpedia batch files (one per chunk)
    neuronpedia/skipped_indexes.json  features listed as dead / below the density threshold

Features whose density is below ``min_density`` (and features that never fire) are
listed as skipped rather than rendered. :func:`open_precomputed` reads such a
directory back (:class:`PrecomputedStore`) so the app can browse it without a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.config import (
    ConfigError,
    FeatureBoundsError,
    RunConfig,
    parse_feature_ranges,
    parse_features,
)
from core.precomputed import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NO_EVICTION,
    PrecomputedError,
    PrecomputedStore,
    RunnerError,
    chunk_name,
    expand_ranges,
    open_precomputed,
)
from core.sources import DatasetSpec, DictionarySpec, ModelSpec

if TYPE_CHECKING:
    from torch import Tensor

    from core.dictionaries.protocol import Dictionary
    from core.engine.features import FeatureData
    from core.memo import Memo
    from core.models import ModelAdapter

OUTPUTS = ("memo", "html", "neuronpedia")
DictionaryKind = Literal["sae", "transcoder", "skip_transcoder", "clt"]


# ==== configuration ============================================================================
@dataclass
class NeuronpediaOptions:
    """Labels of the Neuronpedia batch files (``None``: derived from the sources).

    Attributes:
        model_id: Neuronpedia model id (default: the dictionary's ``model_name``, else
            the model's name).
        layer: layer number (default: the CLT layer, else the ``blocks.N.`` of the hook).
        set_name: source set name (default: the SAELens release, else the dictionary
            directory's name).
        sae_id_suffix: optional ``__suffix`` after the set.
        dataset: dataset label written per feature (default: the dataset path).
    """

    model_id: str | None = None
    layer: int | None = None
    set_name: str | None = None
    sae_id_suffix: str | None = None
    dataset: str | None = None


@dataclass
class PrecomputeConfig:
    """Everything one precompute run needs.

    Attributes:
        output_dir: where results go (created; resumed when it holds the same run).
        model, dictionary, dataset: the sources (see :mod:`core.sources`).
        run: engine settings (hook, batch size, device, dtype, windows, table sizes...);
            its ``features`` field is ignored in favour of :attr:`features`.
        features: ``None``/``"all"``, a range such as ``"0:4096"``, or a list.
        features_per_chunk: features swept together ("features at a time"); each chunk
            is one sweep over the tokens and one HTML page / Neuronpedia batch.
        min_density: features firing on a smaller fraction of tokens (and features that
            never fire) are listed as skipped, not rendered.
        outputs: any of ``memo``, ``html``, ``neuronpedia``.
        layout: HTML components in order (names from :data:`core.charts.COMPONENTS`).
        expect_kind: ``"transcoder"``, ``"skip_transcoder"``, ``"clt"`` or ``"sae"``:
            fail early when the loaded dictionary is of another kind.
        neuronpedia: labels of the Neuronpedia files.
        wandb: log the configuration and progress to Weights & Biases (respects
            ``WANDB_MODE``, e.g. ``offline``).
        wandb_project: the W&B project name.
        threads: torch CPU threads (``None``: torch's default).
        progress: show a progress bar on stderr.
        overwrite: delete a different run's results in ``output_dir`` instead of failing.
    """

    output_dir: str
    model: ModelSpec = field(default_factory=ModelSpec)
    dictionary: DictionarySpec = field(default_factory=DictionarySpec)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    run: RunConfig = field(default_factory=RunConfig)
    features: str | list[int] | None = None
    features_per_chunk: int = 512
    min_density: float = 0.0
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    layout: list[str] | None = None
    expect_kind: DictionaryKind | None = None
    neuronpedia: NeuronpediaOptions = field(default_factory=NeuronpediaOptions)
    wandb: bool = False
    wandb_project: str = "featurescope-precompute"
    threads: int | None = None
    progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        """Raise :class:`RunnerError` for settings that cannot work (before loading anything)."""
        if not self.output_dir:
            raise RunnerError("an output directory is needed (--output-dir)")
        if not isinstance(self.features_per_chunk, int) or self.features_per_chunk < 1:
            raise RunnerError(
                f"features at a time must be a positive integer, got {self.features_per_chunk!r}"
            )
        if not isinstance(self.min_density, int | float) or not 0 <= self.min_density <= 1:
            raise RunnerError(
                f"the density threshold must be between 0 and 1, got {self.min_density!r}"
            )
        bad = [o for o in self.outputs if o not in OUTPUTS]
        if bad or not self.outputs:
            raise RunnerError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {bad}")
        if self.expect_kind not in (None, "sae", "transcoder", "skip_transcoder", "clt"):
            raise RunnerError(f"unknown dictionary kind {self.expect_kind!r}")
        if self.expect_kind is not None and (self.expect_kind == "clt") != (
            self.dictionary.kind == "clt"
        ):
            raise RunnerError(
                "a cross-layer transcoder is given with --clt PATH --clt-layer N; the other "
                "dictionary kinds with --dictionary (or --sae-set/--sae-path)"
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise RunnerError(f"threads must be a positive integer, got {self.threads!r}")
        if self.layout is not None:
            from core.export.html import check_layout

            try:
                check_layout(self.layout)
            except ValueError as exc:
                raise RunnerError(str(exc)) from exc
        try:  # the text is read, never expanded; bounds are checked once the size is known
            if not isinstance(self.features, list):
                parse_feature_ranges(self.features)
        except FeatureBoundsError:
            pass
        except ConfigError as exc:
            raise RunnerError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run"] = self.run.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecomputeConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RunnerError(f"unknown precompute setting(s) {unknown}; known: {sorted(known)}")
        for name, spec in (("model", ModelSpec), ("dictionary", DictionarySpec)):
            if isinstance(d.get(name), dict):
                d[name] = spec.from_dict(d[name])
        if isinstance(d.get("dataset"), dict):
            d["dataset"] = DatasetSpec.from_dict(d["dataset"])
        if isinstance(d.get("run"), dict):
            d["run"] = RunConfig.from_dict(d["run"])
        if isinstance(d.get("neuronpedia"), dict):
            d["neuronpedia"] = NeuronpediaOptions(**d["neuronpedia"])
        return cls(**d)


# ==== helpers ==================================================================================
def _ranges(values: list[int]) -> list[list[int]]:
    """Sorted ints as half-open ``[lo, hi)`` runs (compact in JSON)."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v:
            out[-1][1] = v + 1
        else:
            out.append([v, v + 1])
    return out


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _is_skipped(fd: FeatureData, min_density: float) -> bool:
    return fd.n_active == 0 or fd.density < min_density


def dictionary_kind(dictionary: Dictionary) -> DictionaryKind:
    """``clt``, ``skip_transcoder``, ``transcoder`` or ``sae`` for a loaded dictionary."""
    if dictionary.kind == "clt":
        return "clt"
    arch = str(dictionary.identity().get("architecture", ""))
    if "skip_transcoder" in arch:
        return "skip_transcoder"
    if "transcoder" in arch or getattr(dictionary, "is_transcoder", False):
        return "transcoder"
    return "sae"


def check_kind(dictionary: Dictionary, expected: DictionaryKind | None) -> None:
    """Fail when a ``--transcoder``/``--skip-transcoder``/``--clt`` flag does not match."""
    if expected is None:
        return
    got = dictionary_kind(dictionary)
    if got != expected:
        arch = dictionary.identity().get("architecture", dictionary.kind)
        raise RunnerError(
            f"the run asks for a {expected.replace('_', ' ')} but the dictionary is a "
            f"{got.replace('_', ' ')} (architecture {arch!r}): drop the flag or load the right "
            "dictionary"
        )


# ==== the run ==================================================================================
@dataclass
class Sources:
    """Live objects for a run (built from the config's specs when not given)."""

    model: ModelAdapter
    dictionary: Dictionary
    tokens: Tensor
    dataset: dict[str, Any]


def load_run_sources(cfg: PrecomputeConfig) -> Sources:
    """Load the model, dictionary and tokens named by ``cfg``'s specs."""
    from core.sources import load_dictionary, load_model, load_tokens, model_kwargs_for

    dictionary = load_dictionary(cfg.dictionary, device=cfg.model.device)
    model = load_model(cfg.model, dictionary_kwargs=model_kwargs_for(dictionary))
    tokens, identity = load_tokens(cfg.dataset, model)
    return Sources(model, dictionary, tokens, identity)


class _Progress:
    """tqdm bar counting features (fractional inside a chunk), plus optional W&B logging."""

    def __init__(self, cfg: PrecomputeConfig, total: int, initial: int, config_log: dict):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="feat",
            desc="precompute",
            disable=not cfg.progress,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            bar_format="{l_bar}{bar}| {n:.0f}/{total} features [{elapsed}<{remaining}, {rate_fmt}]",
        )
        self.start = time.perf_counter()
        self.initial = initial
        self.total = total
        self.base = float(initial)
        self.run = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError as exc:  # pragma: no cover - installed with sae-lens
                raise RunnerError("--wandb needs the wandb package (pip install wandb)") from exc
            self.run = wandb.init(
                project=cfg.wandb_project,
                config=config_log,
                name=f"precompute-{config_log.get('run_id', '')[:8]}",
                reinit="finish_previous",
            )

    def within(self, chunk_size: int) -> Callable[[float, str], None]:
        """Engine progress callback for a chunk of ``chunk_size`` features."""

        def report(frac: float, msg: str) -> None:
            target = self.base + frac * chunk_size * 0.98
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
            self.bar.set_postfix_str(msg, refresh=False)

        return report

    def chunk_done(self, k: int, n_chunk: int, done: int, skipped: int) -> None:
        self.base += n_chunk
        self.bar.update(self.base - self.bar.n)
        if self.run is not None:
            elapsed = time.perf_counter() - self.start
            new = self.base - self.initial
            rate = new / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.base) / rate if rate > 0 else None
            self.run.log(
                {
                    "chunk": k,
                    "features_done": done,
                    "features_skipped": skipped,
                    "features_processed": self.base,
                    "features_total": self.total,
                    "features_per_second": rate,
                    "seconds_left": left,
                }
            )

    def close(self, ok: bool) -> None:
        self.bar.close()
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


class PrecomputeRunner:
    """Runs (or resumes) one precompute; see the module docstring for the output layout.

    Args:
        cfg: the run's configuration.
        sources: live model/dictionary/tokens; loaded from ``cfg``'s specs when ``None``.
    """

    def __init__(self, cfg: PrecomputeConfig, sources: Sources | None = None):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.output_dir).expanduser()
        self._sources = sources

    # --- setup ----------------------------------------------------------------------------
    def _plan(self, src: Sources) -> None:
        from core.engine.cached import base_key, token_fingerprint
        from core.engine.sweep import EngineError, prepare_tokens, validate_features

        cfg = self.cfg
        check_kind(src.dictionary, cfg.expect_kind)
        n = self.n_features = src.dictionary.n_features
        try:
            requested = parse_features(cfg.features, n)
            self.features = validate_features(requested, n)
        except (ConfigError, EngineError) as exc:
            raise RunnerError(str(exc)) from exc
        size = cfg.features_per_chunk
        self.chunks = [self.features[i : i + size] for i in range(0, len(self.features), size)]
        self.rc = dataclasses.replace(cfg.run, features=None)
        self.tokens = prepare_tokens(src.tokens, self.rc)
        self.hook = self.rc.hook or src.dictionary.hook_in
        key = base_key(src.model, src.dictionary, self.tokens, self.rc, [])
        self.np_meta = self._neuronpedia_meta(src) if "neuronpedia" in cfg.outputs else None
        self.identity = {
            "key": key,
            "model_fingerprint": src.model.fingerprint(),
            "dictionary_fingerprint": src.dictionary.fingerprint(),
            "tokens": token_fingerprint(self.tokens),
            "result_config": self.rc.result_key_dict(),
            "features": _digest(self.features),
            "features_per_chunk": size,
            "min_density": cfg.min_density,
            "outputs": sorted(cfg.outputs),
            "layout": cfg.layout,
            "neuronpedia": self.np_meta.to_dict() if self.np_meta else None,
            "format_version": FORMAT_VERSION,
        }
        self.run_id = _digest(self.identity)
        self.source_info = {
            "model": src.model.identity(),
            "dictionary": src.dictionary.identity(),
            "dataset": src.dataset,
            "n_features": n,
            "n_sequences": int(self.tokens.shape[0]),
            "context_length": int(self.tokens.shape[1]),
            "n_tokens": int(self.tokens.numel()),
            "hook": self.hook,
            "dictionary_kind": dictionary_kind(src.dictionary),
        }

    def _neuronpedia_meta(self, src: Sources):
        from core.export.neuronpedia import NeuronpediaMeta
        from core.models import hook_layer

        opts = self.cfg.neuronpedia
        ident = src.dictionary.identity()
        model_id = opts.model_id or ident.get("model_name") or src.model.name
        layer = opts.layer
        if layer is None:
            layer = ident.get("layer") if src.dictionary.kind == "clt" else hook_layer(self.hook)
        if layer is None:
            raise RunnerError(
                f"cannot tell the layer of hook {self.hook!r} for the Neuronpedia files: pass "
                "--layer N (or leave 'neuronpedia' out of --outputs)"
            )
        spec = self.cfg.dictionary
        set_name = opts.set_name or spec.release or Path(str(spec.path or "demo")).name
        dspec = self.cfg.dataset
        dataset = opts.dataset or (dspec.path if dspec.kind != "demo" else dspec.label())
        log_sparsity = math.log10(self.cfg.min_density) if self.cfg.min_density > 0 else None
        return NeuronpediaMeta(
            model_id=str(model_id),
            layer=int(layer),
            sae_set=str(set_name),
            sae_id_suffix=opts.sae_id_suffix,
            dataset=str(dataset or ""),
            n_prompts_total=int(self.tokens.shape[0]),
            n_tokens_in_prompt=int(self.tokens.shape[1]),
            log_sparsity=log_sparsity,
        )

    def _manifest(
        self, completed: list[int], done: list[int], skipped: list[int], finished: bool = False
    ) -> dict:
        cfg = self.cfg
        config = cfg.to_dict()
        for private in ("output_dir", "progress", "overwrite"):
            config.pop(private, None)
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "status": "complete" if finished else "running",
            "run_id": self.run_id,
            "identity": self.identity,
            "specs": {
                "model": cfg.model.to_dict(),
                "dictionary": cfg.dictionary.to_dict(),
                "dataset": cfg.dataset.to_dict(),
            },
            "config": config,
            "run_config": self.rc.to_dict(),
            "source": self.source_info,
            "outputs": list(cfg.outputs),
            "layout": cfg.layout,
            "neuronpedia": self.np_meta.to_dict() if self.np_meta else None,
            "chunks": {
                "size": cfg.features_per_chunk,
                "count": len(self.chunks),
                "completed": sorted(completed),
            },
            "features": {
                "requested": _ranges(self.features),
                "n_requested": len(self.features),
                "done": _ranges(sorted(done)),
                "n_done": len(done),
                "skipped": sorted(skipped),
                "n_skipped": len(skipped),
            },
        }

    def _write_manifest(
        self, completed: set[int], done: set[int], skipped: set[int], finished: bool = False
    ) -> None:
        """Write the manifest atomically; ``finished`` once every output file is in place."""
        from core.export import atomic_write

        body = self._manifest(sorted(completed), sorted(done), sorted(skipped), finished)
        atomic_write(self.out / MANIFEST, _json_text(body))

    def _prepare_directory(self) -> tuple[set[int], set[int], set[int]]:
        """Create or check the output directory; returns completed chunks, done, skipped."""
        from core.export import remove_stale_temp_files

        out = self.out
        if out.exists() and not out.is_dir():
            raise RunnerError(f"output directory {out} exists and is a file")
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("", "html", "neuronpedia"):
            remove_stale_temp_files(out / sub)
        path = out / MANIFEST
        if not path.exists():
            # the manifest is written before anything else, so these are not ours
            foreign = [n for n in ("memo", "html", "neuronpedia") if (out / n).exists()]
            if foreign and not self.cfg.overwrite:
                raise RunnerError(
                    f"{out} has {', '.join(foreign)} but no {MANIFEST}: it does not hold a "
                    "precompute run; use another output directory, or --overwrite to replace them"
                )
            if foreign:
                self._remove_results()
            return set(), set(), set()
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RunnerError(
                f"{path} is not valid JSON ({exc}); delete the directory or pass --overwrite"
            ) from exc
        if old.get("format") != FORMAT:
            raise RunnerError(f"{out} does not hold a precompute run (no {FORMAT} manifest)")
        if old.get("run_id") != self.run_id:
            if self.cfg.overwrite:
                self._remove_results()
                return set(), set(), set()
            was = old.get("identity", {})
            diff = sorted(
                k for k in set(was) | set(self.identity) if was.get(k) != self.identity.get(k)
            )
            raise RunnerError(
                f"{out} holds a different precompute run (differs in: {', '.join(diff)}); use "
                "another output directory, or pass --overwrite to replace it"
            )
        completed = set(old["chunks"]["completed"])
        done = set(expand_ranges(old["features"]["done"], self.n_features, "done features"))
        skipped = set(old["features"]["skipped"])
        return completed, done, skipped

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write into the output directory into a clear :class:`RunnerError`."""
        try:
            yield
        except OSError as exc:
            where = exc.filename or self.out
            raise RunnerError(
                f"cannot write to the output directory {self.out} ({exc.strerror or exc} at "
                f"{where}): free space there or pick a writable --output-dir; chunks finished "
                "before are kept, and the same command resumes from them"
            ) from exc

    def _check_writable(self, completed: set[int]) -> None:
        """Refuse a read-only output directory before writing, saying what it holds."""
        out = self.out
        manifest = out / MANIFEST
        if os.access(out, os.W_OK) and (not manifest.exists() or os.access(manifest, os.W_OK)):
            return
        if len(completed) == len(self.chunks) and completed:
            held = (
                f"it holds this run, complete ({len(completed)} chunks): read it with "
                f"`python -m core inspect {out}` or open it in the app"
            )
        elif completed:
            held = (
                f"it holds this run, {len(completed)}/{len(self.chunks)} chunks done: copy it "
                "to a writable place and run the same command there to finish it"
            )
        else:
            held = "nothing of this run is there yet"
        raise RunnerError(
            f"the output directory {out} is read-only: {held}; pick a writable --output-dir "
            "to compute"
        )

    def _remove_results(self) -> None:
        for name in ("memo", "html", "neuronpedia"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        (self.out / MANIFEST).unlink(missing_ok=True)

    def _verify(self, memo: Memo, completed: set[int], done: set[int], skipped: set[int]) -> None:
        """Drop completed chunks whose files or memo entries went missing (recomputed)."""
        for k in sorted(completed):
            chunk = self.chunks[k]
            ok = f"chunk:{k}:summary" in memo
            rendered = [f for f in chunk if f in done]
            if ok and "memo" in self.cfg.outputs:
                ok = all(f"feature:{f}" in memo for f in rendered)
            if ok and "html" in self.cfg.outputs and rendered:
                ok = (self.out / "html" / chunk_name(k)).is_file()
            if ok and "neuronpedia" in self.cfg.outputs:
                ok = (self.out / "neuronpedia" / f"batch-{k}.json").is_file()
            if not ok:
                completed.discard(k)
                done.difference_update(chunk)
                skipped.difference_update(chunk)

    # --- per chunk ------------------------------------------------------------------------
    def _page_meta(self, k: int, chunk: list[int]) -> dict[str, Any]:
        cfg, info = self.cfg, self.source_info
        rc = self.rc
        window = (
            "whole sequences"
            if rc.whole_sequence
            else f"{rc.window_before} before, {rc.window_after} after"
        )
        return {
            "title": f"{cfg.dictionary.label()} · features {chunk[0]}–{chunk[-1]}",
            "model": info["model"].get("name"),
            "dictionary": cfg.dictionary.label(),
            "hook": self.hook,
            "dataset": cfg.dataset.label(),
            "tokens": f"{info['n_sequences']:,} sequences × {info['context_length']} tokens",
            "context window": window,
            "chunk": f"{k + 1} of {len(self.chunks)}",
            "run id": self.run_id[:12],
        }

    def _write_chunk(
        self, src: Sources, memo: Memo, k: int, chunk: list[int], progress: _Progress
    ) -> tuple[list[int], list[int]]:
        import torch

        from core.engine.sweep import run_sweep

        cfg = self.cfg
        sub = dataclasses.replace(self.rc, features=chunk)
        from core.engine.activations import ActivationStore
        from core.sources import CACHE_ROOT

        # hook activations are stored after the first chunk: later chunks (and resumed
        # runs) skip the model entirely
        result = run_sweep(
            src.model,
            src.dictionary,
            self.tokens,
            sub,
            dataset=src.dataset,
            progress=progress.within(len(chunk)),
            activation_store=ActivationStore(CACHE_ROOT / "activations"),
        )
        fds = [result.features[f] for f in chunk]
        rendered = [fd for fd in fds if not _is_skipped(fd, cfg.min_density)]
        skipped = [fd.index for fd in fds if _is_skipped(fd, cfg.min_density)]
        summary = {
            "feature": [fd.index for fd in fds],
            "density": [fd.density for fd in fds],
            "max_act": [fd.max_act for fd in fds],
            "mean_act": [fd.mean_act for fd in fds],
            "n_active": [fd.n_active for fd in fds],
            "top_tokens": [fd.top_logits.tokens[:3] for fd in fds],
            "skipped": [fd.index in skipped for fd in fds],
        }
        if "memo" in cfg.outputs:
            for fd in rendered:
                if not memo.put_feature(f"feature:{fd.index}", fd):
                    raise RunnerError(f"could not write to {memo.directory}: is the disk full?")
        if not memo.put_json(f"chunk:{k}:summary", summary):
            raise RunnerError(f"could not write to {memo.directory}: is the disk full?")
        if "html" in cfg.outputs and rendered:
            from core.export.html import save_html

            save_html(
                self.out / "html" / chunk_name(k), rendered, self._page_meta(k, chunk), cfg.layout
            )
        if "neuronpedia" in cfg.outputs:
            from core.export.neuronpedia import batch_to_neuronpedia, head_distribution, write_batch

            idx = [fd.index for fd in rendered]
            vectors: dict[int, list[float]] = {}
            dists: dict[int, list[float]] = {}
            if idx:
                with torch.no_grad():
                    w = src.dictionary.decoder_directions(
                        torch.tensor(idx, device=src.model.device)
                    )
                rows = w.float().cpu().tolist()
                vectors = dict(zip(idx, rows, strict=True))
                n_heads = int(src.model.model.cfg.n_heads)
                if src.dictionary.hook_out.endswith("hook_z") and len(rows[0]) % n_heads == 0:
                    dists = {f: head_distribution(r, n_heads) for f, r in vectors.items()}
            assert self.np_meta is not None
            batch = batch_to_neuronpedia(rendered, self.np_meta, vectors, dists)
            write_batch(self.out / "neuronpedia" / f"batch-{k}.json", batch, validate=2)
        return [fd.index for fd in rendered], skipped

    def _finish(self, done: set[int], skipped: set[int]) -> None:
        from core.export import atomic_write

        if "html" in self.cfg.outputs:
            atomic_write(self.out / "html" / "index.html", self._index_html(done))
        if "neuronpedia" in self.cfg.outputs:
            from core.export.neuronpedia import skipped_indexes

            assert self.np_meta is not None
            atomic_write(
                self.out / "neuronpedia" / "skipped_indexes.json",
                _json_text(skipped_indexes(self.np_meta, sorted(skipped))),
            )

    def _index_html(self, done: set[int]) -> str:
        from core.charts import esc

        rows = []
        for k, chunk in enumerate(self.chunks):
            shown = [f for f in chunk if f in done]
            if shown:
                link = f'<a href="{esc(chunk_name(k))}">features {chunk[0]}–{chunk[-1]}</a>'
            else:
                link = f"features {chunk[0]}–{chunk[-1]}"
            rows.append(
                f"<tr><td>{link}</td><td>{len(shown)}</td><td>{len(chunk) - len(shown)}</td></tr>"
            )
        title = f"{self.cfg.dictionary.label()} on {self.source_info['model'].get('name')}"
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>body{{font-family:system-ui,sans-serif;"
            "margin:16px}td,th{padding:2px 10px;text-align:left}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>{esc(self.cfg.dataset.label())} · hook "
            f"{esc(self.hook)} · run {esc(self.run_id[:12])}</p>"
            "<table><tr><th>page</th><th>shown</th><th>skipped</th></tr>"
            + "".join(rows)
            + "</table></body></html>\n"
        )

    # --- run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the pending chunks; returns counts and timing of this invocation."""
        import torch

        from core.memo import Memo

        cfg = self.cfg
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            src = self._sources or load_run_sources(cfg)
            self._plan(src)
            with self._writing():
                completed, done, skipped = self._prepare_directory()
                self._check_writable(completed)
                self._write_manifest(completed, done, skipped)  # first: marks the directory ours
            memo = Memo(self.out / "memo", size_limit=NO_EVICTION)
            try:
                self._verify(memo, completed, done, skipped)
                self._write_manifest(completed, done, skipped)
                pending = [k for k in range(len(self.chunks)) if k not in completed]
                initial = sum(len(self.chunks[k]) for k in completed)
                log_cfg = {"run_id": self.run_id, **self._manifest([], [], [])["config"]}
                log_cfg["source"] = self.source_info
                progress = _Progress(cfg, len(self.features), initial, log_cfg)
                t0 = time.perf_counter()
                ok = False
                try:
                    with self._writing():
                        for k in pending:
                            new_done, new_skipped = self._write_chunk(
                                src, memo, k, self.chunks[k], progress
                            )
                            done.update(new_done)
                            skipped.update(new_skipped)
                            completed.add(k)
                            self._write_manifest(completed, done, skipped)
                            progress.chunk_done(k, len(self.chunks[k]), len(done), len(skipped))
                        self._finish(done, skipped)
                        self._write_manifest(completed, done, skipped, finished=True)
                    ok = True
                finally:
                    progress.close(ok)
                seconds = time.perf_counter() - t0
            finally:
                memo.close()
        finally:
            if cfg.threads:
                torch.set_num_threads(old_threads)
        n_new = sum(len(self.chunks[k]) for k in pending)
        return {
            "output_dir": str(self.out),
            "run_id": self.run_id,
            "chunks_total": len(self.chunks),
            "chunks_run": len(pending),
            "features_requested": len(self.features),
            "features_done": len(done),
            "features_skipped": len(skipped),
            "features_computed_now": n_new,
            "seconds": seconds,
            "features_per_second": n_new / seconds if seconds > 0 else float("nan"),
        }


def run_precompute(cfg: PrecomputeConfig, sources: Sources | None = None) -> dict[str, Any]:
    """Run or resume a precompute (see :class:`PrecomputeRunner`); returns counts and timing."""
    return PrecomputeRunner(cfg, sources).run()


# ==== command line ============================================================================
def _load_config_file(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise RunnerError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise RunnerError(f"cannot read config file {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise RunnerError(f"config file {p} must hold a table/object of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


#: nested keys a config file may hold besides the command-line options
FILE_ONLY_KEYS = ("model_spec", "dictionary_spec", "dataset_spec", "run_config")


def apply_config_file(parser, subparser, argv: list[str] | None) -> Any:
    """Parse ``argv`` again with the values of ``--config FILE`` as defaults.

    The command line wins over the file. Keys are the long option names
    (``output_dir`` or ``output-dir``); besides them a file may hold full specs
    ``model_spec``/``dictionary_spec``/``dataset_spec`` and ``run_config`` (any
    :class:`~core.config.RunConfig` field).

    Args:
        parser: the top-level parser (``python -m core``).
        subparser: the ``precompute`` parser, whose defaults are replaced.
        argv: the command line (``None``: ``sys.argv[1:]``).
    """
    first = parser.parse_args(argv)
    if not getattr(first, "config", None):
        return first
    data = _load_config_file(first.config)
    extra = {k: data.pop(k) for k in FILE_ONLY_KEYS if k in data}
    known = {a.dest for a in subparser._actions} - {"help", "config", "func"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunnerError(
            f"unknown setting(s) {unknown} in {first.config}; use the long option names "
            f"(e.g. output_dir, features, n_prompts) or {list(FILE_ONLY_KEYS)}"
        )
    subparser.set_defaults(**data)
    args = parser.parse_args(argv)
    args.file_extra = extra
    return args


def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (0 and "" count as given)."""
    return next((v for v in values if v is not None), None)


def config_from_args(args: Any) -> PrecomputeConfig:
    """Build a :class:`PrecomputeConfig` from ``python -m core precompute`` arguments.

    Accepts both our option names and the reference runner's (``--sae-set``,
    ``--sae-path``, ``--from-local-sae``, ``--dataset-path``, ``--n-prompts``,
    ``--n-features-at-a-time``, ``--use-transcoder``, ``--use-skip-transcoder``,
    ``--use-clt``, ``--clt-layer-idx``, ``--clt-weights-filename``, ...).
    """
    extra = dict(getattr(args, "file_extra", {}) or {})
    kinds = [
        name
        for name, on in (
            ("--transcoder", args.transcoder),
            ("--skip-transcoder", args.skip_transcoder),
            ("--clt", bool(args.clt) or args.use_clt),
        )
        if on
    ]
    if len(kinds) > 1:
        raise RunnerError(
            f"{' and '.join(kinds)} were both given: a dictionary is an SAE, a transcoder, a "
            "skip transcoder or a cross-layer transcoder; pick one"
        )
    expect: DictionaryKind | None = None
    if args.transcoder:
        expect = "transcoder"
    elif args.skip_transcoder:
        expect = "skip_transcoder"

    # --- dictionary -------------------------------------------------------------------------
    layer = args.clt_layer if args.clt_layer is not None else args.clt_layer_idx
    weights = args.clt_weights or args.clt_weights_filename
    if "dictionary_spec" in extra:
        dspec = DictionarySpec.from_dict(extra["dictionary_spec"])
        if dspec.kind == "clt":
            expect = "clt"
    elif args.clt or args.use_clt:
        path = args.clt or args.sae_path
        if args.clt and args.sae_path:
            raise RunnerError("--clt names the cross-layer transcoder; drop --sae-path")
        if args.dictionary:
            raise RunnerError("--clt names the dictionary; drop --dictionary")
        if not path:
            raise RunnerError("--use-clt needs the CLT directory: --clt PATH (or --sae-path PATH)")
        if layer is None:
            raise RunnerError("a cross-layer transcoder needs --clt-layer N (the layer to show)")
        dspec = DictionarySpec(kind="clt", path=path, layer=layer, weights_file=weights or None)
        expect = "clt"
    else:
        if layer is not None or weights:
            raise RunnerError("--clt-layer/--clt-weights only apply with --clt PATH")
        if args.dictionary and args.sae_path:
            raise RunnerError("give the dictionary once: --dictionary or --sae-set/--sae-path")
        name = args.dictionary
        if name is None and args.sae_path:
            local = args.from_local_sae or Path(args.sae_path).expanduser().exists()
            if local:
                name = args.sae_path
            elif args.sae_set:
                name = f"{args.sae_set}/{args.sae_path}"
            else:
                raise RunnerError(
                    f"--sae-path {args.sae_path!r} is not a directory: give --sae-set RELEASE "
                    "too, or --from-local-sae with a directory"
                )
        name = name or "demo"
        if name == "demo":
            dspec = DictionarySpec(kind="demo")
        elif Path(name).expanduser().exists():
            dspec = DictionarySpec(kind="saelens_local", path=name)
        elif "/" in name:
            release, sae_id = name.split("/", 1)
            dspec = DictionarySpec(kind="saelens", release=release, sae_id=sae_id)
        else:
            raise RunnerError(
                f"dictionary {name!r}: use demo, RELEASE/ID or a local SAELens directory"
            )

    # --- model ---------------------------------------------------------------------------------
    dtype = args.dtype or args.model_dtype or args.sae_dtype or "float32"
    device = args.device or "auto"
    if "model_spec" in extra:
        mspec = ModelSpec.from_dict(extra["model_spec"])
    else:
        model = args.hf_model_path or args.model or "demo"
        if args.hf_model_path and args.model:
            raise RunnerError("give the model once: --model or --hf-model-path")
        if model == "demo":
            mspec = ModelSpec(kind="demo", dtype=dtype, device=device)
        elif Path(model).expanduser().exists():
            mspec = ModelSpec(kind="local", path=model, dtype=dtype, device=device)
        else:
            mspec = ModelSpec(kind="hub", name=model, dtype=dtype, device=device)

    # --- dataset --------------------------------------------------------------------------------
    ctx = _first(args.context_length, args.n_tokens_in_prompt, 128)
    if args.n_prompts is not None and args.n_tokens is not None:
        raise RunnerError("give the amount of data once: --n-prompts or --n-tokens")
    if args.n_prompts is not None:
        if args.n_prompts < 1:
            raise RunnerError(f"--n-prompts must be positive, got {args.n_prompts}")
        n_tokens = args.n_prompts * ctx
    else:
        n_tokens = _first(args.n_tokens, 65_536)
    if args.dataset and args.dataset_path:
        raise RunnerError("give the dataset once: --dataset or --dataset-path")
    data = args.dataset or args.dataset_path or "demo"
    if "dataset_spec" in extra:
        dsspec = DatasetSpec.from_dict(extra["dataset_spec"])
    elif data == "demo":
        dsspec = DatasetSpec(kind="demo", n_tokens=n_tokens, context_length=ctx)
    elif data.startswith("hub:") or not Path(data).expanduser().exists():
        path = data[4:] if data.startswith("hub:") else data
        dsspec = DatasetSpec(kind="hub", path=path, n_tokens=n_tokens, context_length=ctx)
    else:
        dsspec = DatasetSpec(kind="local", path=data, n_tokens=n_tokens, context_length=ctx)

    # --- engine settings --------------------------------------------------------------------------
    run_fields: dict[str, Any] = {"dtype": dtype, "device": device}
    for dest, name in (
        ("hook", "hook"),
        ("batch_size", "batch_size"),
        ("feature_chunk_size", "feature_chunk_size"),
        ("n_top_examples", "n_top_examples"),
        ("n_intervals", "n_intervals"),
        ("n_interval_examples", "n_interval_examples"),
        ("window_before", "window_before"),
        ("window_after", "window_after"),
        ("seed", "seed"),
        ("correlation", "feature_correlation"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            run_fields[name] = value
    if args.whole_sequence:
        run_fields["whole_sequence"] = True
    run_fields.update(extra.get("run_config", {}))
    try:
        run = RunConfig.from_dict(run_fields)
    except (ConfigError, TypeError) as exc:
        raise RunnerError(str(exc)) from exc

    if args.min_density is not None and args.sparsity_threshold is not None:
        raise RunnerError("give the threshold once: --min-density or --sparsity-threshold")
    min_density = _first(args.min_density, 0.0)
    if args.sparsity_threshold is not None:
        min_density = 10.0 ** float(args.sparsity_threshold)
    outputs = args.outputs
    if isinstance(outputs, str):
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
    layout = args.layout
    if isinstance(layout, str):
        layout = [c.strip() for c in layout.split(",") if c.strip()]
    output_dir = args.output_dir
    if not output_dir:
        raise RunnerError("an output directory is needed: --output-dir DIR")
    cfg = PrecomputeConfig(
        output_dir=output_dir,
        model=mspec,
        dictionary=dspec,
        dataset=dsspec,
        run=run,
        features=args.features,
        features_per_chunk=_first(args.features_at_a_time, 512),
        min_density=min_density,
        outputs=list(outputs or OUTPUTS),
        layout=layout,
        expect_kind=expect,
        neuronpedia=NeuronpediaOptions(
            model_id=args.model_id,
            layer=args.layer,
            set_name=args.np_set_name or args.sae_set,
            sae_id_suffix=args.np_sae_id_suffix,
            dataset=args.np_dataset,
        ),
        wandb=bool(args.wandb),
        wandb_project=args.wandb_project or "featurescope-precompute",
        threads=args.threads,
        progress=not args.no_progress,
        overwrite=bool(args.overwrite),
    )
    cfg.validate()
    return cfg


__all__ = [
    "PrecomputeConfig",
    "PrecomputeRunner",
    "PrecomputedError",
    "PrecomputedStore",
    "RunnerError",
    "open_precomputed",
    "run_precompute",
]
