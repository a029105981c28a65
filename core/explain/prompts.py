"""Prompts for the explainer and the scorers, and the reading of the model's answers.

The explainer sees a feature's top examples and interval samples with the activating tokens
marked ``<<like this>>``, and its top output tokens, and writes one sentence. The scorers
(after delphi) check the sentence on examples the explainer did not see:

* detection: held-out activating windows mixed with windows where the feature is 0; the model
  answers, for each, whether the explanation fits (a JSON list of 0/1);
* fuzzing: windows with some tokens highlighted, either the activating ones or the same
  number at random other positions; the model answers whether the highlighting fits.

Change :data:`PROMPT_VERSION` whenever a prompt changes: explanations are stored (and a
batch resumes) per prompt version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from core.engine.features import Example, FeatureData
from core.errors import FeaturescopeError

PROMPT_VERSION = "fs-explain-1"
OPEN, CLOSE = "<<", ">>"

Messages = list[dict[str, str]]

EXPLAINER_SYSTEM = (
    "You are studying one feature of a neural network's sparse dictionary. You are shown text "
    "excerpts where the feature is active; the tokens it is active on are marked "
    f"{OPEN}like this{CLOSE}. You are also shown the tokens the feature most promotes as the "
    "next token. Write ONE short sentence saying what the feature detects (and, if clear, "
    "what it predicts). Answer with the sentence only."
)

DETECTION_SYSTEM = (
    "You check an explanation of a neural network feature. You get the explanation and a "
    "numbered list of text excerpts. For each excerpt answer 1 if the feature described by the "
    "explanation would be active somewhere in it, else 0. Answer ONLY with a JSON list of 0/1, "
    "one per excerpt, in order, e.g. [1, 0, 0, 1]."
)

FUZZING_SYSTEM = (
    "You check an explanation of a neural network feature. You get the explanation and a "
    f"numbered list of text excerpts with some tokens marked {OPEN}like this{CLOSE}. For each "
    "excerpt answer 1 if the marked tokens are exactly what the explanation describes, else 0. "
    "Answer ONLY with a JSON list of 0/1, one per excerpt, in order, e.g. [1, 0, 0, 1]."
)


class AnswerParseError(FeaturescopeError, ValueError):
    """A model's answer that could not be read as the requested list."""


def mark_tokens(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The tokens joined, each marked one wrapped in ``<<...>>`` (runs merged)."""
    out: list[str] = []
    inside = False
    for tok, m in zip(tokens, marked, strict=True):
        if m and not inside:
            out.append(OPEN)
        elif not m and inside:
            out.append(CLOSE)
        inside = bool(m)
        out.append(tok)
    if inside:
        out.append(CLOSE)
    return "".join(out).replace("\n", "\\n")


def mark_example(example: Example) -> str:
    """An example's window with its activating tokens (activation > 0) marked."""
    return mark_tokens(example.tokens, [a > 0 for a in example.acts])


def split_examples(
    data: FeatureData, *, n_top: int = 10, per_interval: int = 2
) -> tuple[list[Example], list[Example], list[Example]]:
    """``(top, interval, held_out)``: the explainer's top examples and interval samples, and
    the interval samples kept back for the scorers (every other one of each interval group;
    the first ``per_interval`` of the alternate ones go to the explainer)."""
    top = list(data.top_examples[:n_top])
    interval: list[Example] = []
    held_out: list[Example] = []
    for group in data.intervals:
        shown = group.examples[0::2]
        interval.extend(shown[:per_interval])
        held_out.extend(group.examples[1::2])
    return top, interval, held_out


def explainer_messages(
    data: FeatureData, top: Sequence[Example], interval: Sequence[Example], n_logits: int = 10
) -> Messages:
    """The explainer's chat messages for one feature."""
    lines = ["Top activating excerpts:"]
    lines += [f"{n}. {mark_example(e)}" for n, e in enumerate(top, 1)]
    if interval:
        lines.append("")
        lines.append("Excerpts with weaker activations:")
        lines += [f"{n}. {mark_example(e)}" for n, e in enumerate(interval, 1)]
    tokens = [t for t in data.top_logits.tokens[:n_logits] if t.strip()]
    if tokens:
        lines.append("")
        lines.append("Tokens it promotes next: " + ", ".join(json.dumps(t) for t in tokens))
    lines.append("")
    lines.append("One sentence: what does this feature detect?")
    return [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def scorer_messages(method: str, explanation: str, excerpts: Sequence[str]) -> Messages:
    """Chat messages for the ``"detection"`` or ``"fuzzing"`` scorer."""
    systems = {"detection": DETECTION_SYSTEM, "fuzzing": FUZZING_SYSTEM}
    if method not in systems:
        raise ValueError(f"unknown scoring method {method!r}: use one of {sorted(systems)}")
    lines = [f"Explanation: {explanation}", "", "Excerpts:"]
    lines += [f"{n}. {text}" for n, text in enumerate(excerpts, 1)]
    lines.append("")
    lines.append(f"Answer with a JSON list of {len(excerpts)} values, each 0 or 1.")
    return [
        {"role": "system", "content": systems[method]},
        {"role": "user", "content": "\n".join(lines)},
    ]


def clean_sentence(text: str) -> str:
    """The explainer's answer as one line: the first non-empty line, quotes and a leading
    ``Explanation:`` removed."""
    for line in text.strip().splitlines():
        line = re.sub(r"^(explanation|answer)\s*:\s*", "", line.strip(), flags=re.I)
        line = line.strip().strip('"').strip()
        if line:
            return line[:500]
    raise AnswerParseError("the explainer answered nothing: try another model or more tokens")


_LIST = re.compile(r"\[[^\[\]]*\]")
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n"}


def parse_binary_list(text: str, n: int) -> list[int]:
    """The last bracketed list of ``n`` values 0/1 (or true/false, yes/no) in ``text``.

    Code fences and prose around the list are ignored. Raises :class:`AnswerParseError`
    (with the start of the answer) when no such list is there."""
    for match in reversed(_LIST.findall(text)):
        items = [s.strip().strip("'\"").lower() for s in match[1:-1].split(",")]
        if items == [""]:
            items = []
        if len(items) != n or not all(s in _TRUE | _FALSE for s in items):
            continue
        return [1 if s in _TRUE else 0 for s in items]
    snippet = text.strip().replace("\n", " ")[:120]
    raise AnswerParseError(f"expected a JSON list of {n} values 0/1, got: {snippet!r}")
