"""Labels that need no language model, from a feature's dashboard data.

The most frequent qualifying tokens of the top examples (the tokens the feature fires on),
the token most often just before the top one, and the top output tokens::

    "returns" (after "\\n") → "None", "self"

Always ``kind="auto"``: shown as automatic, never taken for a person's label.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from core.engine.features import FeatureData

#: leading markers tokenizers put for a preceding space (GPT-2 byte level, SentencePiece)
_SPACE_MARKERS = ("Ġ", "▁")


@dataclass(frozen=True)
class AutoLabel:
    """An automatic label and its parts.

    Attributes:
        text: the label as shown.
        tokens: the most frequent activating tokens, most frequent first (normalised).
        context: the token most often right before the first of them, or ``None``.
        outputs: the top output tokens (from ``top_logits``).
        kind: always ``"auto"``.
    """

    text: str
    tokens: list[str] = field(default_factory=list)
    context: str | None = None
    outputs: list[str] = field(default_factory=list)
    kind: str = "auto"


def normalize_token(token: str) -> str:
    """A token's text without its leading space marker (``" returns"``, ``"Ġreturns"`` and
    ``"▁returns"`` all give ``"returns"``); a token that is only whitespace stays as it is."""
    t = token
    while t.startswith(_SPACE_MARKERS):
        t = t[1:]
    stripped = t.lstrip(" ")
    return stripped if stripped else (t or token)


def is_plain(token: str) -> bool:
    """True when ``token`` has a letter, digit or symbol (not only whitespace/punctuation)."""
    return any(not (c.isspace() or unicodedata.category(c).startswith("P")) for c in token)


def show(token: str) -> str:
    """A token quoted for a label, with whitespace escaped (``"\\n"``)."""
    return json.dumps(token, ensure_ascii=False)


def auto_label(data: FeatureData, *, max_tokens: int = 3, max_outputs: int = 2) -> AutoLabel | None:
    """The automatic label of a feature; ``None`` for a dead feature (never active).

    Tokens: the normalised qualifying tokens of the top examples, counted; whitespace- or
    punctuation-only tokens are left out unless nothing else is there. The first is the most
    frequent (ties: the one of the higher-activating example); others follow while they occur
    at least half as often. Context: the most common token before the first one, when it
    comes before at least half of its occurrences.
    """
    examples = [e for e in data.top_examples if 0 <= e.qualifying_index < len(e.tokens)]
    if data.n_active <= 0 or not examples:
        return None
    examples.sort(key=lambda e: -e.value)
    quals = [normalize_token(e.tokens[e.qualifying_index]) for e in examples]
    counts = Counter(quals)
    candidates = [t for t in counts if is_plain(t)] or list(counts)
    candidates.sort(key=lambda t: (-counts[t], quals.index(t)))  # stable by first occurrence
    top = candidates[0]
    tokens = [t for t in candidates[:max_tokens] if 2 * counts[t] >= counts[top]]

    before = Counter(
        normalize_token(e.tokens[e.qualifying_index - 1])
        for e, q in zip(examples, quals, strict=True)
        if q == top and e.qualifying_index > 0
    )
    context = None
    if before:
        prev, n = before.most_common(1)[0]
        if 2 * n >= counts[top] and (counts[top] > 1 or len(examples) == 1):
            context = prev

    outputs = [normalize_token(t) for t in data.top_logits.tokens]
    outputs = [t for t in outputs if t][:max_outputs]

    text = ", ".join(show(t) for t in tokens)
    if context is not None:
        text += f" (after {show(context)})"
    if outputs:
        text += " → " + ", ".join(show(t) for t in outputs)
    return AutoLabel(text=text, tokens=tokens, context=context, outputs=outputs)
