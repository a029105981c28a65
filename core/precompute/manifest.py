"""The output directory's format: manifest, feature ranges, errors, resume checks.

Light on purpose (no torch, no model code): the reader (:mod:`core.precompute.reader`)
and ``python -m core inspect`` import it. :class:`RunDirectory` is the runner's side:
it creates or checks an output directory, decides what a restarted run can keep, and
writes the manifest atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.errors import FeaturescopeError
from core.memo import Memo
from core.storage import atomic_write, remove_stale_temp_files

MANIFEST = "manifest.json"
FORMAT = "featurescope-precompute"
#: 3: each feature stored as its row of the sweep's columns (:mod:`core.engine.rows`);
#: 2: features stored under the sources' memo keys (:func:`core.memo.feature_key`, shared
#: with the app and the API), all of them (skipped ones too), chunk summaries with fires_on,
#: as packed FeatureData (schema 3); 1: features under ``feature:{i}``. All are read; runs
#: are written as the newest.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: memo size limit for an output directory: effectively unlimited (nothing is evicted)
NO_EVICTION = 1 << 50
#: the result folders a run writes next to its manifest
RESULT_DIRS = ("memo", "html", "neuronpedia")


class RunnerError(FeaturescopeError, ValueError):
    """A precompute run cannot start or continue (message says why and what to do)."""


class PrecomputedError(FeaturescopeError, KeyError):
    """A feature cannot be read from a precomputed directory (message says why).

    A ``KeyError`` too: the CLI and callers that look features up catch it as one.
    """

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


# ==== ranges and JSON ==========================================================================
def ranges(values: list[int]) -> list[list[int]]:
    """Sorted ints as half-open ``[lo, hi)`` runs (compact in JSON)."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v:
            out[-1][1] = v + 1
        else:
            out.append([v, v + 1])
    return out


def expand_ranges(runs: Any, n_features: int, what: str) -> list[int]:
    """``[lo, hi)`` runs from a manifest as a list, each checked to lie in ``0..n_features-1``
    before it is expanded (a damaged manifest cannot make a huge list)."""
    out: list[int] = []
    ok = isinstance(runs, list)
    for run in runs if ok else []:
        ok = (
            isinstance(run, list)
            and len(run) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in run)
            and 0 <= run[0] <= run[1] <= n_features
        )
        if not ok:
            break
        out.extend(range(run[0], run[1]))
    if not ok:
        raise RunnerError(
            f"the manifest's {what} list is damaged (a run outside the dictionary's "
            f"{n_features:,} features, or not a pair of indices); run the same precompute "
            "command again with --overwrite to rebuild the directory"
        )
    return out


def chunk_name(k: int) -> str:
    """File name of chunk ``k``'s HTML page."""
    return f"chunk-{k:05d}.html"


def json_text(obj: Any) -> str:
    """Stable, readable JSON for the files of an output directory."""
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def digest(obj: Any) -> str:
    """sha256 of ``obj``'s canonical JSON (run ids, feature lists)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ==== the output directory, seen by a run ======================================================
class RunDirectory:
    """An output directory being written by one run.

    Args:
        path: the directory (created when missing).
        overwrite: replace a different run's results instead of refusing.
    """

    def __init__(self, path: Path, overwrite: bool):
        self.path = path
        self.overwrite = overwrite

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn a failed write into the output directory into a clear :class:`RunnerError`."""
        try:
            yield
        except OSError as exc:
            where = exc.filename or self.path
            raise RunnerError(
                f"cannot write to the output directory {self.path} ({exc.strerror or exc} at "
                f"{where}): free space there or pick a writable --output-dir; chunks finished "
                "before are kept, and the same command resumes from them"
            ) from exc

    def write_manifest(self, body: dict[str, Any]) -> None:
        """Write the manifest atomically."""
        atomic_write(self.path / MANIFEST, json_text(body))

    def prepare(
        self, run_id: str, identity: dict[str, Any], n_features: int
    ) -> tuple[set[int], set[int], set[int]]:
        """Create or check the directory; returns completed chunks, done, skipped."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunnerError(f"output directory {out} exists and is a file")
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("", "html", "neuronpedia"):
            remove_stale_temp_files(out / sub)
        path = out / MANIFEST
        if not path.exists():
            # the manifest is written before anything else, so these are not ours
            foreign = [n for n in RESULT_DIRS if (out / n).exists()]
            if foreign and not self.overwrite:
                raise RunnerError(
                    f"{out} has {', '.join(foreign)} but no {MANIFEST}: it does not hold a "
                    "precompute run; use another output directory, or --overwrite to replace them"
                )
            if foreign:
                self.remove_results()
            return set(), set(), set()
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RunnerError(
                f"{path} is not valid JSON ({exc}); delete the directory or pass --overwrite"
            ) from exc
        if old.get("format") != FORMAT:
            raise RunnerError(f"{out} does not hold a precompute run (no {FORMAT} manifest)")
        if old.get("run_id") != run_id:
            if self.overwrite:
                self.remove_results()
                return set(), set(), set()
            was = old.get("identity", {})
            diff = sorted(k for k in set(was) | set(identity) if was.get(k) != identity.get(k))
            raise RunnerError(
                f"{out} holds a different precompute run (differs in: {', '.join(diff)}); use "
                "another output directory, or pass --overwrite to replace it"
            )
        completed = set(old["chunks"]["completed"])
        done = set(expand_ranges(old["features"]["done"], n_features, "done features"))
        skipped = set(old["features"]["skipped"])
        return completed, done, skipped

    def check_writable(self, completed: set[int], n_chunks: int) -> None:
        """Refuse a read-only output directory before writing, saying what it holds."""
        out = self.path
        manifest = out / MANIFEST
        if os.access(out, os.W_OK) and (not manifest.exists() or os.access(manifest, os.W_OK)):
            return
        if len(completed) == n_chunks and completed:
            held = (
                f"it holds this run, complete ({len(completed)} chunks): read it with "
                f"`python -m core inspect {out}` or open it in the app"
            )
        elif completed:
            held = (
                f"it holds this run, {len(completed)}/{n_chunks} chunks done: copy it "
                "to a writable place and run the same command there to finish it"
            )
        else:
            held = "nothing of this run is there yet"
        raise RunnerError(
            f"the output directory {out} is read-only: {held}; pick a writable --output-dir "
            "to compute"
        )

    def remove_results(self) -> None:
        """Delete a run's results and its manifest."""
        for name in RESULT_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        (self.path / MANIFEST).unlink(missing_ok=True)

    def verify(
        self,
        memo: Memo,
        chunks: Sequence[list[int]],
        outputs: Sequence[str],
        completed: set[int],
        done: set[int],
        skipped: set[int],
        stored: Callable[[list[int]], list[str]],
    ) -> None:
        """Drop completed chunks whose files or memo entries went missing (recomputed).
        ``stored(chunk)``: the memo keys of a chunk's features."""
        for k in sorted(completed):
            chunk = chunks[k]
            ok = f"chunk:{k}:summary" in memo
            rendered = [f for f in chunk if f in done]
            if ok and "memo" in outputs:
                ok = all(key in memo for key in stored(chunk))
            if ok and "html" in outputs and rendered:
                ok = (self.path / "html" / chunk_name(k)).is_file()
            if ok and "neuronpedia" in outputs:
                ok = (self.path / "neuronpedia" / f"batch-{k}.json").is_file()
            if not ok:
                completed.discard(k)
                done.difference_update(chunk)
                skipped.difference_update(chunk)
