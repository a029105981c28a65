"""Scoring an explanation the way delphi does: detection and fuzzing.

Each method builds a shuffled list of excerpts with a known truth (1: the explanation should
fit, 0: it should not), asks the model for a 0/1 per excerpt, and compares. Scores per method:
``accuracy``, ``precision``, ``recall``, ``f1`` and, when the backend returned log-probabilities
for the answer digits, ``auc`` (ranking by the probability of "1").
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from core.engine.features import Example
from core.explain.backends import Backend, Completion
from core.explain.prompts import mark_example, mark_tokens, parse_binary_list, scorer_messages

METHODS = ("detection", "fuzzing")


@dataclass(frozen=True)
class Sample:
    """One excerpt shown to a scorer and whether the explanation should fit it."""

    text: str
    truth: int


def binary_scores(truth: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of ``pred`` against ``truth`` (1 = positive).

    Precision (recall) is 0 when nothing was predicted (present) positive; F1 is 0 when
    precision + recall is 0."""
    if len(truth) != len(pred) or not truth:
        raise ValueError(f"need as many answers as samples (got {len(pred)} for {len(truth)})")
    tp = sum(1 for t, p in zip(truth, pred, strict=True) if t and p)
    fp = sum(1 for t, p in zip(truth, pred, strict=True) if not t and p)
    fn = sum(1 for t, p in zip(truth, pred, strict=True) if t and not p)
    correct = sum(1 for t, p in zip(truth, pred, strict=True) if bool(t) == bool(p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / len(truth),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def auc(truth: Sequence[int], prob: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` without both classes."""
    pos = [p for t, p in zip(truth, prob, strict=True) if t]
    neg = [p for t, p in zip(truth, prob, strict=True) if not t]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def answer_probabilities(completion: Completion, n: int) -> list[float] | None:
    """P("1") for each answer digit, from the completion's top log-probabilities; ``None``
    when there are none or the digits cannot be lined up with the ``n`` answers."""
    if completion.tokens is None:
        return None
    probs: list[float] = []
    for tok in completion.tokens:
        if tok.token.strip() not in ("0", "1"):
            continue
        mass = {"0": 0.0, "1": 0.0}
        for alt, lp in {**tok.top, tok.token: tok.logprob}.items():
            key = alt.strip()
            if key in mass:
                mass[key] = max(mass[key], math.exp(lp))
        total = mass["0"] + mass["1"]
        probs.append(mass["1"] / total if total > 0 else 0.5)
    return probs if len(probs) == n else None


def detection_samples(
    held_out: Sequence[Example], negatives: Sequence[Sequence[str]], rng: random.Random
) -> list[Sample]:
    """Held-out activating windows (truth 1) and non-activating ones (truth 0), shuffled;
    nothing is marked."""
    samples = [Sample(mark_tokens(e.tokens, [False] * len(e.tokens)), 1) for e in held_out]
    samples += [Sample(mark_tokens(list(t), [False] * len(t)), 0) for t in negatives]
    rng.shuffle(samples)
    return samples


def fuzzing_samples(examples: Sequence[Example], rng: random.Random) -> list[Sample]:
    """For each example, either its activating tokens marked (truth 1) or as many tokens
    marked at random positions where the feature is 0 (truth 0): alternately, then
    shuffled. Examples with no activating or no silent position are left out."""
    samples: list[Sample] = []
    for n, e in enumerate(examples):
        on = [i for i, a in enumerate(e.acts) if a > 0]
        off = [i for i, a in enumerate(e.acts) if a <= 0]
        if not on or not off:
            continue
        if n % 2 == 0:
            samples.append(Sample(mark_example(e), 1))
        else:
            wrong = set(rng.sample(off, min(len(on), len(off))))
            samples.append(
                Sample(mark_tokens(e.tokens, [i in wrong for i in range(len(e.tokens))]), 0)
            )
    rng.shuffle(samples)
    return samples


def score(
    backend: Backend,
    method: str,
    explanation: str,
    samples: Sequence[Sample],
    max_tokens: int = 200,
) -> dict[str, float]:
    """Ask ``backend`` and return ``{f"{method}_{name}": value}`` (accuracy, precision,
    recall, f1 and, with log-probabilities, auc). Raises
    :class:`~core.explain.prompts.AnswerParseError` or a backend error on failure."""
    if not samples:
        return {}
    excerpts = [s.text for s in samples]
    completion = backend.complete(
        scorer_messages(method, explanation, excerpts), max_tokens=max_tokens, logprobs=True
    )
    truth = [s.truth for s in samples]
    pred = parse_binary_list(completion.text, len(samples))
    out = {f"{method}_{k}": v for k, v in binary_scores(truth, pred).items()}
    probs = answer_probabilities(completion, len(samples))
    area = auc(truth, probs) if probs is not None else None
    if area is not None:
        out[f"{method}_auc"] = area
    return out
