"""Neuronpedia batch files built and written by worker processes while the run goes on.

Building a batch (reading the features back, rounding every float, one dict per feature)
and encoding it as JSON is plain Python, about 1 ms a feature, on one core. Once the
sweep is done the runner's own loop (the memo's rows, the summaries) keeps one core busy;
the batches go to spawned worker processes on the others (one per other core), at most
:data:`QUEUED` chunks per worker (one in hand, the next waiting, so a worker never waits
for the runner) so memory stays bounded: while every worker has that many, the runner
builds the next chunk's features and writes its batch itself rather than queue it and
wait. A worker is sent the features' stored bytes (their memo rows), which it reads back,
not the objects. A chunk counts as done (and goes into the manifest) only once its batch
file is written, so a killed run resumes exactly as before. Small runs write in process:
a worker costs a second or two to start.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.features import gc_paused
from core.engine.rows import feature_from_row
from core.export.neuronpedia import NeuronpediaMeta, batch_to_neuronpedia, write_batch
from core.precompute.manifest import RunnerError

if TYPE_CHECKING:
    from core.engine.features import FeatureData

#: features below which a run writes its batches in process
MIN_FEATURES = 4096
#: worker processes at most
MAX_WORKERS = 4
#: chunks handed to each worker at most (one in hand, one waiting: with one, a worker sat
#: idle while the runner wrote every other batch itself, 30 of 48 at 24,576 features)
QUEUED = 2

_BROKEN = (
    "a process writing the Neuronpedia batches stopped (killed, or out of memory): the chunks "
    "already recorded are kept. Run the same command again to resume; --writers 0 writes the "
    "batches in the run's own process"
)


def write_neuronpedia(
    path: Path,
    features: Sequence[FeatureData],
    meta: NeuronpediaMeta,
    vectors: Mapping[int, Any],
    dists: Mapping[int, Sequence[float]],
) -> Path:
    """Build one chunk's batch and write it (atomically); what a worker runs."""
    return write_batch(path, batch_to_neuronpedia(features, meta, vectors, dists), validate=2)


def write_neuronpedia_rows(
    path: Path,
    rows: Sequence[bytes],
    meta: NeuronpediaMeta,
    vectors: Mapping[int, Any],
    dists: Mapping[int, Sequence[float]],
) -> Path:
    """:func:`write_neuronpedia` of features given as their stored bytes (what a worker is
    sent: bytes cross to another process much faster than objects). The cyclic collector
    stays paused throughout, the batch's building included (as in the runner's own loop):
    with the chunk's features alive each of its passes walks them all, which doubled a
    worker's time per chunk."""
    with gc_paused():
        features = [feature_from_row(row) for row in rows]
        return write_neuronpedia(path, features, meta, vectors, dists)


def worker_count(n_features: int) -> int:
    """Workers for a run of ``n_features``: none for a small run or a single core."""
    cores = os.cpu_count() or 1
    if n_features < MIN_FEATURES or cores < 2:
        return 0
    return min(MAX_WORKERS, cores - 1)  # the run's own process keeps one core busy


class BatchWriter:
    """Writes Neuronpedia batches in ``workers`` processes (``0``: in the caller).

    ``submit(k, ...)`` hands chunk ``k``'s batch over (written at once, in the caller,
    while every worker has :data:`QUEUED` in hand); :meth:`finished` yields the chunks whose
    files are written, in the order they were submitted. A worker's error is raised by
    :meth:`finished`; a worker that died (killed, out of memory) is a :class:`RunnerError`
    saying how to resume. Use as a context manager: leaving it stops the workers (pending
    batches are dropped on an error).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None  # started with the first batch
        self._pending: deque[tuple[int, Future[Path] | None]] = deque()
        #: batches handed to the workers (the others were written in the caller)
        self.sent = 0

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def submit(
        self,
        k: int,
        path: Path,
        features: Callable[[], Sequence[FeatureData]],
        rows: Sequence[bytes],
        meta: NeuronpediaMeta,
        vectors: Mapping[int, Any],
        dists: Mapping[int, Sequence[float]],
    ) -> None:
        """Write chunk ``k``'s batch of the features ``features()`` gives (called only when
        the batch is written here; ``rows``: their stored bytes, what a worker is sent) to
        ``path``."""
        if not self.workers or self._busy():  # written here rather than waited for
            write_neuronpedia(path, features(), meta, vectors, dists)
            self.submit_nothing(k)
            return
        if self._pool is None:  # not before: no idle workers through the sweep
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        try:
            fut = self._pool.submit(write_neuronpedia_rows, path, list(rows), meta, vectors, dists)
        except BrokenProcessPool as exc:
            raise RunnerError(_BROKEN) from exc
        self._pending.append((k, fut))
        self.sent += 1

    def _busy(self) -> bool:
        """Whether every worker has :data:`QUEUED` batches: the caller writes the next one
        itself instead of queueing it and waiting later."""
        running = sum(1 for _, fut in self._pending if fut is not None and not fut.done())
        return self._pool is not None and running >= QUEUED * self.workers

    def submit_nothing(self, k: int) -> None:
        """Chunk ``k`` has no batch (the run writes none): done in its turn."""
        self._pending.append((k, None))

    def finished(self, wait: bool = False) -> Iterator[int]:
        """Chunks whose batch is written, oldest first, up to the first still being
        written; ``wait``: all of them, waiting for the workers."""
        while self._pending:
            k, fut = self._pending[0]
            if fut is not None and not fut.done() and not wait:
                return
            if fut is not None:
                try:
                    fut.result()
                except BrokenProcessPool as exc:
                    raise RunnerError(_BROKEN) from exc
            self._pending.popleft()
            yield k


__all__ = [
    "MAX_WORKERS",
    "MIN_FEATURES",
    "QUEUED",
    "BatchWriter",
    "worker_count",
    "write_neuronpedia",
    "write_neuronpedia_rows",
]
