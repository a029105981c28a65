"""One feature explained on request (the app's "Explain" button), stored in the knowledge
store through an :class:`core.knowledge.access.Editor` (so read-only accounts are refused
before anything is sent).

Which explainer: an OpenAI-compatible endpoint when a base URL and a model are configured
(``[explain]`` in ``.streamlit/secrets.toml``: ``base_url``, ``model``, ``api_key``; or
``$FEATURESCOPE_EXPLAIN_BASE_URL`` / ``$FEATURESCOPE_EXPLAIN_MODEL`` and the key variables of
:mod:`core.explain.backends`), else the local demo model (SmolLM2-135M-Instruct, offline).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core import settings
from core.explain.backends import Backend, LocalHF, OpenAICompatible
from core.explain.batch import METHOD, Failure, Settings, explain_feature
from core.explain.negatives import silent_windows
from core.explain.prompts import PROMPT_VERSION
from core.knowledge.access import Editor
from core.knowledge.errors import KnowledgeError


@dataclass(frozen=True)
class ExplainerChoice:
    """``base_url`` and ``model`` set: that endpoint; else the local model ``model``."""

    base_url: str | None
    model: str
    api_key: str | None = None

    @property
    def remote(self) -> bool:
        return self.base_url is not None

    def describe(self) -> str:
        if self.remote:
            return f"{self.model} at {self.base_url}"
        return f"the local model {self.model!r} (very small: expect rough explanations)"


def explainer_choice(secrets: Mapping[str, Any] | None = None) -> ExplainerChoice:
    """The configured explainer: ``secrets`` (the ``[explain]`` section) first, then the
    environment; without both a base URL and a model, the local demo model."""
    conf = dict(secrets or {})
    env_url, env_model = settings.explain_endpoint()
    url = str(conf.get("base_url") or env_url or "").strip() or None
    model = str(conf.get("model") or env_model or "").strip() or None
    key = str(conf.get("api_key") or "").strip() or None
    if url and model:
        return ExplainerChoice(url, model, key)
    if url and not model:
        raise KnowledgeError(
            f"an explainer endpoint is set ({url}) without a model: set [explain] model in "
            "secrets.toml or FEATURESCOPE_EXPLAIN_MODEL"
        )
    return ExplainerChoice(None, str(conf.get("local_model") or "demo"))


def make_backend(choice: ExplainerChoice) -> Backend:
    """The backend of ``choice``; a local model is loaded once per process."""
    if choice.base_url is not None:
        return OpenAICompatible(choice.base_url, choice.model, choice.api_key)
    return _local(choice.model)


@functools.lru_cache(maxsize=2)
def _local(model: str) -> LocalHF:
    return LocalHF(model)


def explain_and_store(
    ws: Any,
    feature: int,
    backend: Backend,
    editor: Editor,
    dictionary_key: str,
    options: Settings | None = None,
) -> tuple[int | None, list[Failure]]:
    """Explain and score ``feature`` of ``ws`` with ``backend`` and store the result;
    returns the explanation's id (``None`` when the explainer failed) and the failures."""
    editor.check()
    options = options or Settings()
    data = ws.feature(feature)
    if data.n_active <= 0 or not data.top_examples:
        raise KnowledgeError(f"feature {feature} never fires on this token set: nothing to explain")
    silent: list[list[str]] = []
    if getattr(ws, "live", False):
        silent = silent_windows(ws, [feature], k=options.n_negatives).get(feature, [])
    text, scores, failures = explain_feature(backend, data, silent, options)
    if text is None:
        return None, failures
    got = editor.add_explanation(
        dictionary_key,
        feature,
        text,
        explainer=backend.label,
        prompt_version=PROMPT_VERSION,
        scores=scores,
        method=METHOD,
    )
    return got, failures
