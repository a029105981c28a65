"""Language-model backends for the explainer and the scorers.

* :class:`OpenAICompatible`: any chat-completions endpoint (vLLM, llama.cpp's server, a hosted
  provider) through the ``openai`` package, with bounded retries and exponential backoff on
  429, 5xx, timeouts and dropped connections.
* :class:`LocalHF`: a Hugging Face causal LM run with ``transformers`` (greedy decoding, the
  tokenizer's chat template); ``LocalHF("demo")`` is the offline demo's SmolLM2-135M-Instruct.

Both return a :class:`Completion` (text, and per-token log-probabilities when asked for).
The API key is an argument (the app passes Streamlit secrets) or comes from the environment.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import openai

from core.errors import FeaturescopeError

Messages = list[dict[str, str]]
KEY_VARIABLES = ("FEATURESCOPE_EXPLAIN_API_KEY", "OPENAI_API_KEY")
#: models with fewer parameters than this are labelled "(very small model)"
VERY_SMALL = 1_000_000_000
TOP_LOGPROBS = 5


class BackendError(FeaturescopeError, RuntimeError):
    """A request that failed for good (after retries, or at once for a client error)."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: list[TokenLogprob] | None = None


class Backend(Protocol):
    """What the explainer and the scorers call."""

    @property
    def label(self) -> str:
        """The explainer name stored with an explanation (model and where it ran)."""
        ...

    def complete(
        self, messages: Messages, *, max_tokens: int, logprobs: bool = False
    ) -> Completion: ...


def resolve_api_key(api_key: str | None, base_url: str) -> str:
    """``api_key``, else the first of :data:`KEY_VARIABLES` set; a server on this machine
    (localhost) needs none."""
    if api_key:
        return api_key
    for name in KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    if urlparse(base_url).hostname in ("localhost", "127.0.0.1", "::1"):
        return "not-needed"
    raise BackendError(
        f"no API key for {base_url}: set {KEY_VARIABLES[0]} (or {KEY_VARIABLES[1]}) in the "
        "environment, or [explain] api_key in .streamlit/secrets.toml"
    )


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class OpenAICompatible:
    """A chat-completions endpoint.

    Args:
        base_url: e.g. ``http://localhost:8000/v1`` or ``https://api.openai.com/v1``.
        model: the model name the server knows.
        api_key: see :func:`resolve_api_key`.
        max_attempts: tries per request (first + retries) on 429/5xx/timeouts.
        backoff: seconds before the first retry, doubled each time (capped at 60 s).
        timeout: seconds per request.
        sleep: the wait function (tests replace it).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise BackendError("no model name: pass the model the server serves (--llm NAME)")
        if max_attempts < 1:
            raise BackendError(f"max_attempts must be at least 1, got {max_attempts}")
        self.base_url = base_url
        self.model = model
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep
        self.retries = 0  # retries made so far (all requests)
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=resolve_api_key(api_key, base_url),
            max_retries=0,  # ours, so that they are bounded, counted and testable
            timeout=timeout,
        )

    @property
    def label(self) -> str:
        return f"openai:{self.model}"

    def complete(
        self, messages: Messages, *, max_tokens: int, logprobs: bool = False
    ) -> Completion:
        kwargs: dict[str, Any] = dict(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=0.0
        )
        if logprobs:
            kwargs.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        for attempt in range(self.max_attempts):
            try:
                resp = self.client.chat.completions.create(**kwargs)
                break
            except openai.OpenAIError as exc:
                last = attempt + 1 == self.max_attempts
                if not _retryable(exc) or last:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise BackendError(f"{self.base_url} {self.model}{tries}: {exc}") from exc
                self.retries += 1
                self.sleep(min(60.0, self.backoff * 2**attempt))
        if not resp.choices:
            raise BackendError(f"{self.base_url} {self.model}: the answer has no choices")
        choice = resp.choices[0]
        tokens = None
        if logprobs and choice.logprobs is not None and choice.logprobs.content:
            tokens = [
                TokenLogprob(t.token, t.logprob, {a.token: a.logprob for a in t.top_logprobs or []})
                for t in choice.logprobs.content
            ]
        return Completion(choice.message.content or "", tokens)


class LocalHF:
    """A local Hugging Face causal LM (``transformers``), greedy, offline.

    Args:
        model_name_or_path: a local model directory or a cached hub name; ``"demo"`` is the
            demo's SmolLM2-135M-Instruct read from its GGUF file (about 20 s to load).
        gguf_file: a GGUF file name inside ``model_name_or_path``.
        device: where to run it.
    """

    def __init__(
        self, model_name_or_path: str | Path, *, gguf_file: str | None = None, device: str = "cpu"
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        if str(model_name_or_path) == "demo":
            from core.gguf_llama import find_demo_gguf

            path = find_demo_gguf()
            model_name_or_path, gguf_file = path.parent, path.name
            name = "SmolLM2-135M-Instruct"
        else:
            name = Path(str(model_name_or_path)).name or str(model_name_or_path)
        kw: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kw["gguf_file"] = gguf_file
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, **kw).to(device)
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"cannot load a local causal LM from {model_name_or_path}: {exc}. Pass a local "
                "Hugging Face model directory (or 'demo')"
            ) from exc
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(
                f"{model_name_or_path} has no chat template: use an instruction-tuned model"
            )
        self.model.eval()
        self.device = device
        n_params = sum(p.numel() for p in self.model.parameters())
        small = " (very small model)" if n_params < VERY_SMALL else ""
        self._label = f"local:{name}{small}"

    @property
    def label(self) -> str:
        return self._label

    def complete(
        self, messages: Messages, *, max_tokens: int, logprobs: bool = False
    ) -> Completion:
        torch = self.torch
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):  # a BatchEncoding in some versions
            ids = ids["input_ids"]
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and ids.shape[1] + max_tokens > context:
            raise BackendError(
                f"the prompt has {ids.shape[1]:,} tokens and {max_tokens} more are asked for, past "
                f"the model's context of {context:,}: use a model with a longer context"
            )
        ids = ids.to(self.device)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                min_new_tokens=1,  # an answer, not an end-of-text at once
                do_sample=False,
                pad_token_id=pad,
                output_scores=logprobs,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, ids.shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        tokens = None
        if logprobs:
            tokens = []
            for tok_id, scores in zip(new.tolist(), out.scores, strict=False):
                lp = torch.log_softmax(scores[0].float(), dim=-1)
                top = torch.topk(lp, min(TOP_LOGPROBS, lp.shape[-1]))
                alts = {
                    self.tokenizer.decode([int(i)]): float(v)
                    for v, i in zip(top.values, top.indices, strict=True)
                    if math.isfinite(float(v))
                }
                tokens.append(
                    TokenLogprob(self.tokenizer.decode([tok_id]), float(lp[tok_id]), alts)
                )
        return Completion(text, tokens)
