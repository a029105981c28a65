"""Old import path of the precompute runner, kept while callers move to :mod:`core.precompute`.

The runner now lives in the package :mod:`core.precompute` (config, args, run, progress,
manifest, reader). Import from there, or the reader from :mod:`core.precomputed`.
"""

from core.precompute.config import NeuronpediaOptions, PrecomputeConfig
from core.precompute.manifest import PrecomputedError, RunnerError
from core.precompute.reader import PrecomputedStore, open_precomputed
from core.precompute.run import PrecomputeRunner, Sources, load_run_sources, run_precompute

__all__ = [
    "NeuronpediaOptions",
    "PrecomputeConfig",
    "PrecomputeRunner",
    "PrecomputedError",
    "PrecomputedStore",
    "RunnerError",
    "Sources",
    "load_run_sources",
    "open_precomputed",
    "run_precompute",
]
