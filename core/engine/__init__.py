"""The sweep engine: plain per-feature dashboard data from a model, a dictionary and tokens.

Import from the modules: :mod:`core.engine.sweep` (``run_sweep``, the loop),
:mod:`core.engine.cached` (``compute_features``: the memo in front, ``source_key``),
:mod:`core.engine.stats` (mergeable accumulators), :mod:`core.engine.features` (the plain
data), :mod:`core.engine.keys`, :mod:`core.engine.activations`. The package imports
nothing itself, so light modules (the memo) can use :mod:`core.engine.features` without
loading torch.
"""
