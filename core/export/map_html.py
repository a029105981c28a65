"""The dictionary's feature map in the standalone HTML exports.

An export shows the map only when one is already stored for its dictionary
(:func:`core.feature_map.stored_map`): exporting never computes a map. The caller passes
the columns of :func:`core.feature_map.map_table` for at most :data:`MAX_POINTS` features
(:func:`core.feature_map.draw_indices`, an even stride plus the exported features) as a
:class:`MapExport`; this module needs neither torch nor the dictionary.

Two forms:

* :func:`map_spec`: the app's Altair scatter (:func:`core.map_chart.map_chart`) as a
  Vega-Lite specification with its data inline, drawn in the browser by the page's script
  (the Vega library is already in the file); hover shows index, label and top tokens, a
  click on a feature of the file opens it (``#feature=N``);
* :func:`map_png_html`: the same chart as a static PNG (``vl_convert``) in an ``<img>``,
  for pages without the chart library (the precompute runner's ``index.html``).

Labels and tokens travel as data (JSON escaped by :func:`core.export.html.script_json`,
shown by Vega's tooltip handler, which escapes them) or as pixels; the text around the
chart is escaped here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core import map_chart
from core.charts import esc
from core.export import ExportError

#: features drawn at most in an exported map (the page's map draws up to 20,000)
MAX_POINTS = 5_000
#: the exported chart's height in pixels
HEIGHT = 420
METHOD_NAMES = {"pca": "PCA", "umap": "UMAP (cosine)"}


@dataclass(frozen=True)
class MapExport:
    """A stored map, ready to draw: ``table`` holds :func:`core.feature_map.map_table`'s
    columns (``feature``, ``x``, ``y``, optional ``label``, ``density``, ``max_act``,
    ``top_tokens``, ``fires_on``) for the drawn features; ``n_features`` is the
    dictionary's size and ``method`` the map's (``pca`` or ``umap``)."""

    table: Mapping[str, Sequence[Any]]
    method: str
    n_features: int

    def __post_init__(self) -> None:
        missing = [c for c in ("feature", "x", "y") if c not in self.table]
        if missing:
            raise ExportError(
                f"the map table has no {', '.join(missing)} column: build it with "
                "core.feature_map.map_table"
            )
        n = len(self.table["feature"])
        if any(len(v) != n for v in self.table.values()):
            raise ExportError("the map table's columns differ in length")
        if n > MAX_POINTS:
            raise ExportError(
                f"the map table has {n:,} rows; an export draws at most {MAX_POINTS:,} "
                "(choose them with core.feature_map.draw_indices(n, MAX_POINTS, keep))"
            )

    @property
    def caption(self) -> str:
        """A line under the chart (plain text, escape it before use)."""
        shown = len(self.table["feature"])
        method = METHOD_NAMES.get(self.method, self.method)
        drawn = f"{shown:,} of {self.n_features:,}" if shown < self.n_features else f"{shown:,}"
        return f"{method} of the decoder directions; {drawn} features drawn"


def _colour(table: Mapping[str, Sequence[Any]]) -> str:
    options = map_chart.colour_options({k: list(v) for k, v in table.items()})
    for choice in ("label", "density", "max_act"):
        if choice in options:
            return choice
    return "none"


def map_spec(fmap: MapExport, highlight: Sequence[int] = ()) -> dict[str, Any]:
    """The map as a Vega-Lite specification with its data inline; ``highlight`` (the
    exported features) is drawn as rings."""
    table = {k: list(v) for k, v in fmap.table.items()}
    shown = set(table["feature"])
    ring = [int(i) for i in highlight if int(i) in shown]
    chart = map_chart.map_chart(table, _colour(table), ring)
    return chart.properties(width="container", height=HEIGHT).to_dict()


def map_png(fmap: MapExport, highlight: Sequence[int] = (), width: int = 720) -> bytes:
    """The map as a PNG image (``vl_convert``, no browser)."""
    try:
        import vl_convert
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ExportError("the map image needs vl-convert-python") from exc
    spec = map_spec(fmap, highlight)
    spec["width"] = width
    return bytes(vl_convert.vegalite_to_png(spec, scale=1))


def map_png_html(fmap: MapExport, title: str = "Feature map") -> str:
    """An HTML figure holding the map as an inline PNG (``data:`` URI) and its caption."""
    data = base64.b64encode(map_png(fmap)).decode("ascii")
    return (
        f'<figure class="fs-map"><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(fmap.caption)}</figcaption></figure>"
    )


__all__ = ["MAX_POINTS", "MapExport", "map_png", "map_png_html", "map_spec"]
