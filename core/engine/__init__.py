"""The sweep engine: plain per-feature dashboard data from a model, a dictionary and tokens."""

from core.engine.cached import compute_features, token_fingerprint
from core.engine.features import Example, FeatureData, Histogram, IntervalGroup, SweepInfo, Table
from core.engine.sweep import EngineError, SweepResult, run_sweep

__all__ = [
    "EngineError",
    "Example",
    "FeatureData",
    "Histogram",
    "IntervalGroup",
    "SweepInfo",
    "SweepResult",
    "Table",
    "compute_features",
    "run_sweep",
    "token_fingerprint",
]
