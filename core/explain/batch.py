"""Explain and score many features: planned (requests, tokens) before it starts, resumable,
and going on past failed requests.

Per feature: one explainer request (:func:`~core.explain.prompts.explainer_messages`), then
one detection and one fuzzing request (:mod:`core.explain.scoring`). The explanation is
stored through an :class:`~core.explain.sink.ExplanationSink` with its scores; a feature that
already has an explanation by the same explainer under the same prompt version is skipped,
and dead features (never active) are not sent. A failed request is recorded in the result
(:class:`Failure`) and the batch goes on; a scorer's failure leaves that method's scores out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from core.engine.features import FeatureData
from core.errors import FeaturescopeError
from core.explain.backends import Backend
from core.explain.prompts import (
    PROMPT_VERSION,
    Messages,
    clean_sentence,
    explainer_messages,
    scorer_messages,
    split_examples,
)
from core.explain.scoring import detection_samples, fuzzing_samples, score
from core.explain.sink import ExplanationSink
from core.feature_source import FeatureSource

#: ``features -> {feature: token windows where it is 0}`` (see :mod:`core.explain.negatives`)
NegativesFn = Callable[[list[int]], dict[int, list[list[str]]]]
METHOD = "llm explainer; scored by detection and fuzzing"
#: a placeholder explanation's length in tokens, for the estimate of scorer prompts
EXPLANATION_TOKENS = 30


@dataclass(frozen=True)
class Settings:
    n_top: int = 10
    per_interval: int = 2
    explain_tokens: int = 80
    score_tokens: int = 200
    n_negatives: int = 10
    seed: int = 0


@dataclass
class Failure:
    feature: int
    stage: str  # "explain", "detection" or "fuzzing"
    error: str


@dataclass
class Plan:
    """What a batch will do: ``todo`` features, ``done`` (already explained) and ``dead``
    ones skipped, ``requests`` to send and an estimate of their prompt tokens."""

    todo: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    requests: int = 0
    prompt_tokens: int = 0

    def text(self) -> str:
        return (
            f"{len(self.todo)} features to explain ({len(self.done)} already explained, "
            f"{len(self.dead)} never active): {self.requests} requests, about "
            f"{self.prompt_tokens:,} prompt tokens"
        )


@dataclass
class BatchResult:
    explained: list[int] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed_features(self) -> list[int]:
        return sorted({f.feature for f in self.failures})


def estimate_tokens(messages: Messages) -> int:
    """About 4 characters per token, plus a few per message."""
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)


def chunks(features: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(features), size):
        yield features[i : i + size]


def plan_batch(
    source: FeatureSource,
    features: list[int],
    sink: ExplanationSink,
    dictionary_key: str,
    explainer: str,
    *,
    settings: Settings = Settings(),
    chunk: int = 64,
) -> Plan:
    """Count what :func:`run_batch` will send (reads every feature's data once)."""
    plan = Plan()
    for part in chunks(features, chunk):
        todo = []
        for f in part:
            if sink.has_explanation(dictionary_key, f, explainer, PROMPT_VERSION):
                plan.done.append(f)
            else:
                todo.append(f)
        for f, data in source.features(todo).items() if todo else ():
            if data.n_active <= 0 or not data.top_examples:
                plan.dead.append(f)
                continue
            plan.todo.append(f)
            top, interval, held_out = split_examples(
                data, n_top=settings.n_top, per_interval=settings.per_interval
            )
            plan.prompt_tokens += estimate_tokens(explainer_messages(data, top, interval))
            placeholder = "x " * (4 * EXPLANATION_TOKENS)
            width = len(held_out[0].tokens) if held_out else 16
            det = [" ".join(e.tokens) for e in held_out]
            det += ["x " * width] * settings.n_negatives
            fuzz = [" ".join(e.tokens) for e in top + interval]
            for method, excerpts in (("detection", det), ("fuzzing", fuzz)):
                plan.prompt_tokens += estimate_tokens(
                    scorer_messages(method, placeholder, excerpts)
                )
            plan.requests += 3
    plan.todo.sort()
    return plan


def explain_feature(
    backend: Backend,
    data: FeatureData,
    negatives: list[list[str]],
    settings: Settings = Settings(),
) -> tuple[str | None, dict[str, float], list[Failure]]:
    """``(explanation, scores, failures)`` for one feature (``None``: the explainer failed)."""
    top, interval, held_out = split_examples(
        data, n_top=settings.n_top, per_interval=settings.per_interval
    )
    try:
        answer = backend.complete(
            explainer_messages(data, top, interval), max_tokens=settings.explain_tokens
        )
        explanation = clean_sentence(answer.text)
    except FeaturescopeError as exc:
        return None, {}, [Failure(data.index, "explain", str(exc))]
    rng = random.Random(f"{settings.seed}:{data.index}")
    samples = {
        "detection": detection_samples(held_out, negatives, rng),
        "fuzzing": fuzzing_samples(top + interval, rng),
    }
    scores: dict[str, float] = {}
    failures: list[Failure] = []
    for method, items in samples.items():
        try:
            scores.update(score(backend, method, explanation, items, settings.score_tokens))
        except FeaturescopeError as exc:
            failures.append(Failure(data.index, method, str(exc)))
    return explanation, scores, failures


def run_batch(
    source: FeatureSource,
    plan: Plan,
    backend: Backend,
    sink: ExplanationSink,
    dictionary_key: str,
    *,
    author: str,
    negatives: NegativesFn | None = None,
    settings: Settings = Settings(),
    chunk: int = 64,
    progress: Callable[[int, int, Failure | None], None] | None = None,
) -> BatchResult:
    """Explain and score ``plan.todo``, storing each explanation as it comes.

    ``negatives``: windows where each feature is 0, for detection (without them detection
    sees activating excerpts only and its precision is meaningless).
    ``progress(done, total, failure)`` is called after each feature."""
    result = BatchResult()
    n = 0
    for part in chunks(plan.todo, chunk):
        silent = negatives(part) if negatives is not None else {}
        for f, data in source.features(part).items():
            explanation, scores, failures = explain_feature(
                backend, data, silent.get(f, [])[: settings.n_negatives], settings
            )
            result.failures.extend(failures)
            if explanation is not None:
                sink.add_explanation(
                    dictionary_key,
                    f,
                    explanation,
                    explainer=backend.label,
                    prompt_version=PROMPT_VERSION,
                    scores=scores,
                    method=METHOD,
                    author=author,
                )
                result.explained.append(f)
            n += 1
            if progress is not None:
                progress(n, len(plan.todo), failures[0] if failures else None)
    return result
