"""People's Markdown notes as HTML for the standalone export, safely: markdown-it-py with
raw HTML off (a ``<script>`` in a note stays text) and its link check (no ``javascript:``
or ``data:`` links); links open in a new tab without access to the page."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from markdown_it import MarkdownIt

from core.export import ExportError


@functools.lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def note_html(text: str) -> str:
    """One note (Markdown) as HTML; raw HTML in it is escaped, never passed through."""
    return _renderer().render(text)


def notes_html(raw: Any) -> dict[str, str]:
    """``{feature index: Markdown}`` (the export's ``meta['notes']``) as ``{"index": html}``,
    empty notes left out."""
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        raise ExportError("meta['notes'] must map feature indices to Markdown strings")
    return {str(int(k)): note_html(str(v)) for k, v in raw.items() if str(v).strip()}
