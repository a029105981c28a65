"""The light import path of the precompute reader, for the pages and the CLI.

Opening a precompute output needs no model code: this re-exports the reader of
:mod:`core.precompute.reader` (and the errors it raises) without importing torch.
"""

from core.precompute.manifest import PrecomputedError, RunnerError
from core.precompute.reader import PrecomputedStore, open_precomputed

__all__ = ["PrecomputedError", "PrecomputedStore", "RunnerError", "open_precomputed"]
