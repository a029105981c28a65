"""Searching a live workspace: features active on a text, features that promote a token,
features with similar decoder directions.

:class:`SearchMixin` holds the methods; :class:`~core.workspace.Workspace` inherits them
(they use its model, dictionary, compute gate and limits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.config import RunConfig
from core.engine.sweep import check_fit
from core.gate import WorkspaceError, check_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from core.dictionaries.protocol import Dictionary
    from core.hosted import Limits
    from core.models import ModelAdapter


@dataclass
class PromptResult:
    """Feature activations on a user's text."""

    tokens: list[str]
    top_overall: list[dict[str, Any]]  # {"feature", "max", "mean", "position"}
    per_token: list[list[dict[str, Any]]]  # per position: [{"feature", "act"}]


class SearchMixin:
    """Search methods of :class:`~core.workspace.Workspace` (see there for the attributes)."""

    model: ModelAdapter
    dictionary: Dictionary
    tokens: torch.Tensor
    config: RunConfig
    limits: Limits | None
    _fits: set[str]
    _vocab_index: dict[str, list[int]] | None
    _unit_dirs: torch.Tensor | None
    _retrying: Callable[..., Any]
    check_index: Callable[[int], int]
    n_features: int

    @torch.no_grad()
    def activations_on_text(
        self, text: str, features: list[int] | None = None, max_tokens: int = 1024
    ):
        """Token strings and feature activations ``[positions, features]`` on ``text``."""
        self._check_prompt(text)
        if self.limits is not None:
            max_tokens = min(max_tokens, self.limits.max_prompt_tokens)
        # the model cannot read more than its context (to_tokens does not cut the prompt)
        max_tokens = min(max_tokens, self.model.n_ctx)
        ids = self.model.to_tokens(text)
        if ids.shape[1] > max_tokens:
            raise WorkspaceError(
                f"the prompt has {ids.shape[1]:,} tokens; the limit is {max_tokens:,}: shorten it"
            )
        return self.model.token_strings(ids[0]), self.activations_on_ids(ids[0], features)

    @torch.no_grad()
    def activations_on_ids(
        self, ids: torch.Tensor, features: list[int] | None = None
    ) -> torch.Tensor:
        """Feature activations ``[positions, features]`` on one row of token ids (BOS
        positions are 0): the per-token encoding of search by prompt, also used on stored
        rows of the token set (:mod:`core.corpus_search`)."""
        ids = ids.reshape(1, -1)
        hook = self.config.hook or self.dictionary.hook_in

        def run(config: RunConfig) -> torch.Tensor:
            self._check_fit(hook)
            return self.model.run_to_hooks(ids.to(self.model.device), [hook])[hook]

        x = self._retrying(run, "the prompt's activations")
        x = x.reshape(x.shape[1], -1).to(self.dictionary_dtype)
        sel = None if features is None else torch.tensor(features, device=x.device)
        acts = self.dictionary.encode(x, sel).float().cpu()
        bos = self.model.bos_token_id
        if bos is not None:
            acts[ids[0].cpu() == bos] = 0.0
        return acts

    def _check_prompt(self, text: str) -> None:
        """Text a user typed: not empty, valid UTF-8, within the hosted limits."""
        if not isinstance(text, str) or not text.strip():
            raise WorkspaceError("the prompt is empty: type some text")
        check_text(text)
        if self.limits is not None:
            self.limits.check_prompt(text)

    def _check_fit(self, hook: str) -> None:
        """A clear error when the dictionary cannot read ``hook`` of the model (a missing
        hook, another width); checked once per hook, inside the compute gate."""
        if hook in self._fits:
            return
        try:
            check_fit(self.model, self.dictionary, hook, self.tokens, self.model.device)
        except ValueError as exc:
            raise WorkspaceError(str(exc)) from exc
        self._fits.add(hook)

    @property
    def dictionary_dtype(self) -> torch.dtype:
        w = self.dictionary.decoder_directions(torch.tensor([0]))
        return w.dtype

    def prompt_search(self, text: str, k: int = 10) -> PromptResult:
        """Features most active on ``text``, overall and per token."""
        toks, acts = self.activations_on_text(text)
        mx, pos = acts.max(dim=0)
        order = torch.argsort(mx, descending=True)[:k]
        top = [
            {
                "feature": int(f),
                "max": float(mx[f]),
                "mean": float(acts[:, f].mean()),
                "position": int(pos[f]),
                "token": toks[int(pos[f])],
            }
            for f in order
            if mx[f] > 0
        ]
        per = []
        for p in range(acts.shape[0]):
            v, i = acts[p].topk(min(k, acts.shape[1]))
            per.append(
                [{"feature": int(a), "act": float(b)} for b, a in zip(v, i, strict=True) if b > 0]
            )
        return PromptResult(tokens=toks, top_overall=top, per_token=per)

    def feature_on_text(self, i: int, text: str) -> dict[str, Any]:
        """One feature's activation on each token of ``text``."""
        i = self.check_index(i)
        toks, acts = self.activations_on_text(text, features=[i])
        return {"tokens": toks, "acts": acts[:, 0].tolist()}

    def _token_ids(self, token: str) -> list[int]:
        if self._vocab_index is None:
            index: dict[str, list[int]] = {}
            for i, s in enumerate(self.model.vocab_strings()):
                index.setdefault(s, []).append(i)
            self._vocab_index = index
        if token in self._vocab_index:
            return self._vocab_index[token]
        if token.isdigit() and int(token) < self.model.d_vocab:
            return [int(token)]
        tok = self.model.tokenizer
        if tok is not None:
            ids = tok(token, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                return ids
            raise WorkspaceError(
                f"{token!r} is {len(ids)} tokens for this model; search for a single token "
                f"(e.g. {self.model.token_strings(ids[:1])[0]!r})"
            )
        raise WorkspaceError(f"{token!r} is not a token of this model")

    @torch.no_grad()
    def token_search(self, token: str, k: int = 20) -> dict[str, Any]:
        """Features whose decoder direction most promotes / suppresses ``token``'s logit."""
        hook_out = self.dictionary.hook_out
        if self.model.residual_directions(hook_out, torch.empty(0, self.dictionary.d_out)) is None:
            raise WorkspaceError(
                "this dictionary does not write to the residual stream: no logit effects"
            )
        ids = self._token_ids(token)
        tid = ids[0]
        device = self.model.device
        effects = []
        for s in range(0, self.n_features, 8192):
            idx = torch.arange(s, min(s + 8192, self.n_features), device=device)
            w = self.dictionary.decoder_directions(idx).to(self.model.dtype)
            w = self.model.residual_directions(hook_out, w)
            effects.append(self.model.logit_directions(w, [tid])[:, 0].float().cpu())
        eff = torch.cat(effects)
        k = min(k, eff.numel())
        pv, pi = eff.topk(k)
        nv, ni = eff.topk(k, largest=False)
        return {
            "token": self.model.token_strings([tid])[0],
            "token_id": tid,
            "promote": [
                {"feature": int(i), "effect": float(v)} for v, i in zip(pv, pi, strict=True)
            ],
            "suppress": [
                {"feature": int(i), "effect": float(v)} for v, i in zip(nv, ni, strict=True)
            ],
        }

    @torch.no_grad()
    def similar(self, i: int, k: int = 10) -> list[dict[str, Any]]:
        """Nearest features to ``i`` by decoder cosine similarity."""
        i = self.check_index(i)
        if self._unit_dirs is None:
            w = self.dictionary.decoder_directions(None).float()
            self._unit_dirs = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = self._unit_dirs @ self._unit_dirs[i]
        cos[i] = float("-inf")
        v, idx = cos.topk(min(k, self.n_features - 1))
        return [{"feature": int(a), "cosine": float(b)} for b, a in zip(v, idx, strict=True)]

    def vocab_size(self) -> int:
        return self.model.d_vocab
