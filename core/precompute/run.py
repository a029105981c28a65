"""The run: :class:`PrecomputeRunner` sweeps one chunk of features at a time and writes it.

See :mod:`core.precompute` for the output layout. Each chunk's results (memo entries, an
HTML page, a Neuronpedia batch) are written before the manifest records the chunk as
done, so a killed run restarted with the same command resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core import sources as loaders
from core.charts import esc
from core.config import ConfigError, parse_features
from core.engine.activations import activation_store_for
from core.engine.cached import source_key, stream_features, token_fingerprint
from core.engine.distributed import current as current_shard
from core.engine.result import FeatureChunk
from core.engine.sweep import EngineError, prepare_tokens, validate_features
from core.export.html import save_html
from core.export.map_html import map_png_html
from core.export.neuronpedia import (
    NeuronpediaMeta,
    explanation_records,
    head_distribution,
    skipped_indexes,
)
from core.feature_map import export_map
from core.knowledge.describe import stored_descriptions
from core.memo import Memo, feature_key, feature_prefix
from core.models import hook_layer
from core.precompute.background import BatchWriter, worker_count
from core.precompute.config import PrecomputeConfig, check_role
from core.precompute.index import register_run
from core.precompute.manifest import (
    FORMAT,
    FORMAT_VERSION,
    NO_EVICTION,
    RunDirectory,
    RunnerError,
    chunk_name,
    digest,
    json_text,
    ranges,
)
from core.precompute.progress import Progress
from core.settings import memo_dir
from core.storage import atomic_write

if TYPE_CHECKING:
    from torch import Tensor

    from core.dictionaries.protocol import Dictionary
    from core.engine.features import FeatureData
    from core.models import ModelAdapter


def is_skipped(fd: FeatureData, min_density: float) -> bool:
    """A feature that never fires or fires more rarely than ``min_density`` is not rendered."""
    return skipped_by(fd.n_active, fd.density, min_density)


def skipped_by(n_active: int, density: float, min_density: float) -> bool:
    """:func:`is_skipped` of a feature with these values (a summary table's row)."""
    return n_active == 0 or density < min_density


@dataclass
class Sources:
    """Live objects for a run (built from the config's specs when not given)."""

    model: ModelAdapter
    dictionary: Dictionary
    tokens: Tensor
    dataset: dict[str, Any]


def load_run_sources(cfg: PrecomputeConfig) -> Sources:
    """Load the model, dictionary and tokens named by ``cfg``'s specs."""
    dictionary = loaders.load_dictionary(cfg.dictionary, device=cfg.model.device)
    model = loaders.load_model(cfg.model, dictionary_kwargs=loaders.model_kwargs_for(dictionary))
    tokens, identity = loaders.load_tokens(cfg.dataset, model)
    return Sources(model, dictionary, tokens, identity)


class PrecomputeRunner:
    """Runs (or resumes) one precompute; see the module docstring for the output layout.

    Args:
        cfg: the run's configuration.
        sources: live model/dictionary/tokens; loaded from ``cfg``'s specs when ``None``.
    """

    def __init__(
        self, cfg: PrecomputeConfig, sources: Sources | None = None, app_memo: Memo | None = None
    ):
        cfg.validate()
        self.cfg = cfg
        self._app_memo = app_memo
        self.out = Path(cfg.output_dir).expanduser()
        self.dir = RunDirectory(self.out, cfg.overwrite)
        self._sources = sources

    # --- setup ----------------------------------------------------------------------------
    def _plan(self, src: Sources) -> None:
        cfg = self.cfg
        check_role(src.dictionary, cfg.expect_role)
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
        self.source_key = source_key(src.model, src.dictionary, self.tokens, self.rc)
        self.np_meta = self._neuronpedia_meta(src) if "neuronpedia" in cfg.outputs else None
        self.identity = {
            "source_key": self.source_key,
            "model_fingerprint": src.model.fingerprint(),
            "dictionary_fingerprint": src.dictionary.fingerprint(),
            "tokens": token_fingerprint(self.tokens),
            "result_config": self.rc.result_key_dict(),
            "features": digest(self.features),
            "features_per_chunk": size,
            "min_density": cfg.min_density,
            "outputs": sorted(cfg.outputs),
            "layout": cfg.layout,
            "neuronpedia": self.np_meta.to_dict() if self.np_meta else None,
            "format_version": FORMAT_VERSION,
        }
        self.run_id = digest(self.identity)
        self.source_info = {
            "model": src.model.identity(),
            "dictionary": src.dictionary.identity(),
            "dataset": src.dataset,
            "n_features": n,
            "n_sequences": int(self.tokens.shape[0]),
            "context_length": int(self.tokens.shape[1]),
            "n_tokens": int(self.tokens.numel()),
            "hook": self.hook,
            "dictionary_role": src.dictionary.role,
        }

    def _neuronpedia_meta(self, src: Sources) -> NeuronpediaMeta:
        opts = self.cfg.neuronpedia
        ident = src.dictionary.identity()
        model_id = opts.model_id or ident.get("model_name") or src.model.name
        layer = opts.layer
        if layer is None:
            layer = ident.get("layer") if src.dictionary.role == "clt" else hook_layer(self.hook)
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
        for private in ("output_dir", "progress", "overwrite", "free_unused_layers", "writers"):
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
                "requested": ranges(self.features),
                "n_requested": len(self.features),
                "done": ranges(sorted(done)),
                "n_done": len(done),
                "skipped": sorted(skipped),
                "n_skipped": len(skipped),
            },
        }

    def _write_manifest(
        self, completed: set[int], done: set[int], skipped: set[int], finished: bool = False
    ) -> None:
        """Write the manifest atomically; ``finished`` once every output file is in place."""
        self.dir.write_manifest(
            self._manifest(sorted(completed), sorted(done), sorted(skipped), finished)
        )

    # --- per chunk ------------------------------------------------------------------------
    def _stored(self, chunk: list[int]) -> list[str]:
        """The memo keys of a chunk's features (the app's and the API's keys too)."""
        prefix = feature_prefix(self.source_key, self.rc.feature_correlation, chunk)
        return [feature_key(prefix, f) for f in chunk]

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

    def _groups(self) -> list[list[int]]:
        """Chunks swept together. With whole-dictionary correlations every chunk's sweep
        would encode the whole dictionary again for its correlation columns, so all chunks
        are swept at once (memory is bounded by ``run.memory_budget``); otherwise each
        chunk alone. Fixed by the plan, so a resumed run sweeps exactly what an
        uninterrupted one would and writes identical files."""
        if self.rc.feature_correlation == "all":
            return [list(range(len(self.chunks)))]
        return [[k] for k in range(len(self.chunks))]

    def _sweep_group(
        self, src: Sources, memo: Memo, group: list[int], progress: Progress
    ) -> Iterator[tuple[int, FeatureChunk, list[bytes]]]:
        """Sweep the features of ``group``'s chunks together (through the app's path, so
        features are stored under the shared keys; hook activations are stored after the
        first sweep, so later ones and resumed runs skip the model) and yield each chunk's
        features in order, ``(chunk index, features, their stored bytes)``; the features
        are built only where they are read (HTML pages, batches written here)."""
        feats = [f for k in group for f in self.chunks[k]]
        sub = dataclasses.replace(self.rc, features=feats)
        keep = "memo" in self.cfg.outputs
        parts = stream_features(
            src.model,
            src.dictionary,
            self.tokens,
            sub,
            memo if keep else None,
            self.cfg.features_per_chunk,  # chunks are contiguous runs of this many features
            dataset=src.dataset,
            progress=progress.within(len(feats)),
            activation_store=activation_store_for(self._app_memo_dir()),
        )
        for k, (part, rows) in zip(group, parts, strict=True):
            if list(part) != self.chunks[k]:
                raise RunnerError(f"chunk {k}: the sweep returned other features than planned")
            yield k, part, rows

    def _write_chunk(
        self,
        src: Sources,
        memo: Memo,
        k: int,
        part: FeatureChunk,
        rows: list[bytes],
        writer: BatchWriter,
    ) -> tuple[list[int], list[int]]:
        """Write chunk ``k`` (its features ``part``, stored as ``rows``): its summary (from
        the columns) and HTML page here, its Neuronpedia batch through ``writer`` (the
        chunk is done once that is written)."""
        cfg = self.cfg
        chunk = self.chunks[k]
        if "memo" in cfg.outputs and not all(key in memo for key in self._stored(chunk)):
            raise RunnerError(f"could not write to {memo.directory}: is the disk full?")
        summary = part.summary()  # summary_table's, without building the features
        shown = [
            not skipped_by(n, d, cfg.min_density)
            for n, d in zip(summary["n_active"], summary["density"], strict=True)
        ]
        idx = [f for f, show in zip(chunk, shown, strict=True) if show]
        skipped = [f for f, show in zip(chunk, shown, strict=True) if not show]
        summary["skipped"] = [not show for show in shown]
        if not memo.put_json(f"chunk:{k}:summary", summary):
            raise RunnerError(f"could not write to {memo.directory}: is the disk full?")

        def rendered() -> list[FeatureData]:  # built here only when read
            return [part[f] for f in idx]

        if "html" in cfg.outputs and idx:
            save_html(
                self.out / "html" / chunk_name(k), rendered(), self._page_meta(k, chunk), cfg.layout
            )
        if "neuronpedia" in cfg.outputs:
            vectors: dict[int, np.ndarray] = {}
            dists: dict[int, list[float]] = {}
            if idx:
                with torch.no_grad():
                    w = src.dictionary.decoder_directions(
                        torch.tensor(idx, device=src.model.device)
                    )
                directions = w.float().cpu().numpy()  # rounded as arrays, not lists of floats
                vectors = dict(zip(idx, directions, strict=True))
                n_heads = src.model.n_heads
                if (
                    src.dictionary.hook_out.endswith("hook_z")
                    and directions.shape[1] % n_heads == 0
                ):
                    dists = {f: head_distribution(r.tolist(), n_heads) for f, r in vectors.items()}
            assert self.np_meta is not None
            path = self.out / "neuronpedia" / f"batch-{k}.json"
            stored = [row for row, show in zip(rows, shown, strict=True) if show]
            writer.submit(k, path, rendered, stored, self.np_meta, vectors, dists)
        else:
            writer.submit_nothing(k)
        return idx, skipped

    def _finish(self, src: Sources, done: set[int], skipped: set[int]) -> None:
        if "html" in self.cfg.outputs:
            page = self._index_html(done, self._map_html(src))
            atomic_write(self.out / "html" / "index.html", page)
        if "neuronpedia" in self.cfg.outputs:
            assert self.np_meta is not None
            atomic_write(
                self.out / "neuronpedia" / "skipped_indexes.json",
                json_text(skipped_indexes(self.np_meta, sorted(skipped))),
            )
            # each feature's best explanation (else its label) from the knowledge store
            key = self.identity["dictionary_fingerprint"]
            described = stored_descriptions(key, sorted(done))
            if described:
                atomic_write(
                    self.out / "neuronpedia" / "explanations.json",
                    json_text(explanation_records(self.np_meta, described)),
                )

    def _map_html(self, src: Sources) -> str:
        """The dictionary's map as an image when the app's memo holds one (never computed
        here), labelled from the knowledge store; else ``""``."""
        app = self._app_memo if self._app_memo is not None else Memo()
        key = self.identity["dictionary_fingerprint"]
        try:
            fmap = export_map(
                src.dictionary,
                app,
                labels=lambda shown: {
                    i: d.text for i, d in stored_descriptions(key, shown).items()
                },
            )
        finally:
            if self._app_memo is None:
                app.close()
        return "" if fmap is None else map_png_html(fmap, f"Map of {self.cfg.dictionary.label()}")

    def _index_html(self, done: set[int], map_html: str = "") -> str:
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
            + f"</table>{map_html}</body></html>\n"
        )

    def _app_memo_dir(self) -> Path:
        return self._app_memo.directory if self._app_memo is not None else memo_dir()

    def _register(self) -> None:
        """Tell the app's memo (or ``app_memo``) that this output holds these sources'
        features, so a workspace on the same sources reads them instead of computing."""
        app = self._app_memo if self._app_memo is not None else Memo()  # (an empty Memo is falsy)
        try:
            register_run(app, self.source_key, self.out)
        finally:
            if self._app_memo is None:
                app.close()

    # --- run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the pending chunks; returns counts and timing of this invocation."""
        cfg = self.cfg
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            src = self._sources or load_run_sources(cfg)
            if cfg.free_unused_layers:  # a sweep stops at the hook; logit effects keep W_U
                hooks = [cfg.run.hook or src.dictionary.hook_in, src.dictionary.hook_out]
                src.model.free_unused_layers(hooks)
            self._plan(src)
            with self.dir.writing():
                completed, done, skipped = self.dir.prepare(
                    self.run_id, self.identity, self.n_features
                )
                self.dir.check_writable(completed, len(self.chunks))
                self._write_manifest(completed, done, skipped)  # first: marks the directory ours
            memo = Memo(self.out / "memo", size_limit=NO_EVICTION)
            if "memo" in cfg.outputs:
                self._register()
            try:
                self.dir.verify(
                    memo, self.chunks, cfg.outputs, completed, done, skipped, self._stored
                )
                self._write_manifest(completed, done, skipped)
                pending = [k for k in range(len(self.chunks)) if k not in completed]
                pending = current_shard().share_pending(pending, len(self.chunks))  # torchrun
                initial = sum(len(self.chunks[k]) for k in completed)
                log_cfg = {"run_id": self.run_id, **self._manifest([], [], [])["config"]}
                log_cfg["source"] = self.source_info
                progress = Progress(cfg, len(self.features), initial, log_cfg)
                t0 = time.perf_counter()
                ok = False
                written: dict[int, tuple[list[int], list[int]]] = {}

                def record(k: int) -> None:  # chunk k is written whole: into the manifest
                    new_done, new_skipped = written.pop(k)
                    done.update(new_done)
                    skipped.update(new_skipped)
                    completed.add(k)
                    self._write_manifest(completed, done, skipped)
                    progress.chunk_done(k, len(self.chunks[k]), len(done), len(skipped))

                workers = 0 if "neuronpedia" not in cfg.outputs else cfg.writers
                if workers is None:
                    workers = worker_count(sum(len(self.chunks[k]) for k in pending))
                try:
                    with self.dir.writing(), BatchWriter(workers) as writer:
                        for group in self._groups():
                            if not any(k in pending for k in group):
                                continue
                            for k, fds, rows in self._sweep_group(src, memo, group, progress):
                                if k not in pending:  # done before a restart: same data
                                    continue
                                written[k] = self._write_chunk(src, memo, k, fds, rows, writer)
                                for kk in writer.finished():
                                    record(kk)
                        for kk in writer.finished(wait=True):
                            record(kk)
                        self._finish(src, done, skipped)
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


def run_precompute(
    cfg: PrecomputeConfig, sources: Sources | None = None, app_memo: Memo | None = None
) -> dict[str, Any]:
    """Run or resume a precompute (see :class:`PrecomputeRunner`); returns counts and timing.
    ``app_memo``: the memo whose workspaces should find this run (default: the app's)."""
    return PrecomputeRunner(cfg, sources, app_memo).run()


__all__ = ["PrecomputeRunner", "Sources", "load_run_sources", "run_precompute"]
