"""Exports: standalone HTML dashboards and Neuronpedia batch files.

* :mod:`core.export.html` renders one self-contained, offline HTML page for one or
  many features (the same components the app shows).
* :mod:`core.export.neuronpedia` writes ``batch-N.json`` files in the layout
  Neuronpedia imports from SAEDashboard's runner, validated by a JSON Schema.

Both write through :func:`core.storage.atomic_write`, so a reader (or a resumed run) never sees a
half-written file.
"""

from __future__ import annotations

from core.errors import FeaturescopeError


class ExportError(FeaturescopeError, ValueError):
    """An export cannot be produced (message names the problem and the fix)."""


__all__ = ["ExportError"]
