"""A scripted language model for the fake server: reads the prompts as a model would and
answers "returns"-feature questions correctly."""

from __future__ import annotations

import json
import re
from typing import Any

EXPLANATION = 'The word "returns" at the start of a line.'


def excerpts(body: dict[str, Any]) -> list[str]:
    user = body["messages"][-1]["content"]
    part = user.split("Excerpts:\n", 1)[1]
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*)$", part, flags=re.M)]


def kind(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    if "Excerpts:\n" not in body["messages"][-1]["content"]:
        return "explain"
    return "fuzzing" if "marked tokens are exactly" in system else "detection"


def answer(body: dict[str, Any]) -> str:
    k = kind(body)
    if k == "explain":
        return EXPLANATION
    texts = excerpts(body)
    if k == "detection":
        return json.dumps([int("returns" in t) for t in texts])
    return json.dumps([int("<< returns>>" in t or "<<,>>" in t) for t in texts])
