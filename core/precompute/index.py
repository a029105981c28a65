"""Which precompute outputs hold features of which sources (light: no model code).

A run registers its output directory in the app's memo under its source key
(:func:`core.engine.cached.source_key`: model, dictionary, tokens and result config).
A workspace opened on the same sources reads the features it lacks from those
directories before computing anything: precomputing on the command line warms the app,
the notebook API and the hosted server. The index is a hint: a directory that was moved
or deleted is skipped, and a lost index only means features are computed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from core.memo import Memo, MemoError
from core.precompute.manifest import FORMAT, MANIFEST, NO_EVICTION

log = logging.getLogger(__name__)


def _index_key(source: str) -> str:
    return f"{source}:runs"


def register_run(memo: Memo, source: str, directory: Path) -> None:
    """Record that ``directory`` (a precompute output) stores features under ``source``.
    Never fails the run: a memo that cannot be written is logged and skipped."""
    entry = str(Path(directory).expanduser().resolve())
    try:
        runs = [r for r in (memo.get_json(_index_key(source)) or []) if isinstance(r, str)]
        if entry not in runs:
            memo.put_json(_index_key(source), [*runs, entry])
    except (MemoError, OSError) as exc:
        log.warning(
            "could not record the run in %s (the app will not find it): %s", memo.directory, exc
        )


def _is_output(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def run_memos(memo: Memo, source: str) -> list[Memo]:
    """The memos of the precompute outputs registered for ``source`` that still exist,
    newest registration first (opened for reading; the caller closes them)."""
    try:
        runs = memo.get_json(_index_key(source)) or []
    except (MemoError, OSError):
        return []
    out: list[Memo] = []
    for entry in reversed([r for r in runs if isinstance(r, str)]):
        directory = Path(entry)
        if not (directory / "memo").is_dir() or not _is_output(directory):
            continue
        with contextlib.suppress(MemoError, OSError):
            out.append(Memo(directory / "memo", size_limit=NO_EVICTION))
    return out
