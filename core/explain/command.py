"""``python -m core explain``: explain and score a range of features with a language model.

The options are defined in :mod:`core.cli` (with the same source options as
``precompute``); this module runs the command on an opened feature source.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from pathlib import Path

from core.config import parse_features
from core.explain.backends import Backend, BackendError, LocalHF, OpenAICompatible
from core.explain.batch import Failure, Settings, plan_batch, run_batch
from core.explain.negatives import silent_windows
from core.explain.prompts import PROMPT_VERSION
from core.explain.sink import ExplanationSink, JsonlSink
from core.knowledge import open_store
from core.settings import data_dir, knowledge_author


def default_out() -> Path:
    return data_dir() / "explanations.jsonl"


def failures_path(out: Path) -> Path:
    """Where failed requests are recorded: ``<out>.failures.jsonl`` next to ``out``."""
    return out.with_name(out.stem + ".failures.jsonl")


def open_sink(out: str | Path | None) -> tuple[ExplanationSink, str, Path]:
    """Where explanations go: the knowledge store (``FEATURESCOPE_DB``, the default, where
    the app shows them), or the JSON-lines file ``out``; with what to call it, and the
    file failed requests are recorded in."""
    if out:
        sink = JsonlSink(out)
        return sink, str(sink.path), failures_path(sink.path)
    store = open_store()
    where = "the knowledge store " + store.engine.url.render_as_string(hide_password=True)
    return store, where, failures_path(default_out())


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "openai":
        if not args.base_url or not args.llm:
            raise ValueError(
                "--backend openai needs --base-url (e.g. http://localhost:8000/v1) and --llm NAME"
            )
        # a dry run sends nothing: no key needed
        key = "dry-run" if args.dry_run else None
        return OpenAICompatible(args.base_url, args.llm, key)
    return LocalHF(args.llm or "demo", device=args.llm_device)


def run_explain(args: argparse.Namespace, ws) -> int:
    """Plan, print the plan, and (unless ``--dry-run``) run; 1 when a request failed."""
    features = parse_features(args.features, ws.n_features)
    features = list(range(ws.n_features)) if features is None else features
    sink, where, fail_log = open_sink(args.out)
    key = ws.dictionary.fingerprint()
    try:
        backend = make_backend(args)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(n_negatives=args.n_negatives)
    plan = plan_batch(ws, features, sink, key, backend.label, settings=settings)
    print(f"{backend.label} · prompt version {PROMPT_VERSION}: {plan.text()}")
    if args.dry_run or not plan.todo:
        return 0

    def progress(done: int, total: int, failure: Failure | None) -> None:
        if failure is not None:
            print(
                f"\nfeature {failure.feature} {failure.stage} failed: {failure.error}",
                file=sys.stderr,
            )
        print(f"\r{done}/{total} features", end="", file=sys.stderr, flush=True)

    result = run_batch(
        ws,
        plan,
        backend,
        sink,
        key,
        author=args.author or knowledge_author() or getpass.getuser(),
        negatives=lambda fs: silent_windows(ws, fs, k=args.n_negatives),
        settings=settings,
        progress=None if args.no_progress else progress,
    )
    print(file=sys.stderr)
    failed = result.failed_features
    print(
        f"{len(result.explained)} explained, {len(result.failures)} failed requests "
        f"({len(failed)} features) -> {where}"
    )
    if result.failures:
        log = fail_log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            for f in result.failures:
                fh.write(json.dumps(dataclasses.asdict(f), ensure_ascii=False) + "\n")
        for f in result.failures:
            print(f"failed: feature {f.feature} {f.stage}: {f.error}", file=sys.stderr)
        print(f"failures recorded in {log}; run the same command again to retry", file=sys.stderr)
    return 1 if result.failures else 0
