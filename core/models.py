"""Model access behind one small adapter.

Everything the engine asks of a language model goes through :class:`ModelAdapter`:
run up to a hook, map a direction to logits, run the rest of the network from a hook,
tokenise and detokenise. Today it wraps a TransformerLens ``HookedTransformer``; the
newer ``TransformerBridge`` can replace it by changing this module alone.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from core.dictionaries.protocol import tensor_fingerprint
from core.errors import FeaturescopeError


class ModelError(FeaturescopeError, ValueError):
    """The model cannot do what was asked (missing hook, no tokenizer, ...)."""


class _StopForward(FeaturescopeError):
    """Raised inside a hook to stop the forward pass once the wanted activation is seen."""


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook: str) -> int | None:
    """Block index a hook belongs to (``blocks.6.hook_resid_pre`` -> 6), else ``None``."""
    m = _LAYER_RE.match(hook)
    return int(m.group(1)) if m else None


_ATTN_Z_RE = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def attention_z_layer(hook: str) -> int | None:
    """The block of an attention-output hook (``blocks.3.attn.hook_z`` -> 3: activations
    ``[batch, pos, heads, d_head]``, read flat as ``heads * d_head``), else ``None``."""
    m = _ATTN_Z_RE.match(hook)
    return int(m.group(1)) if m else None


class ModelAdapter:
    """A TransformerLens model plus the identity the memo layer needs.

    Args:
        model: a ``HookedTransformer``.
        source: JSON-able description of where it came from (hub name, path, demo).
    """

    def __init__(
        self,
        model: HookedTransformer,
        source: dict[str, Any] | None = None,
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ):
        self._bos_override = bos_token_id
        self._pad_override = pad_token_id
        if not isinstance(model, HookedTransformer):
            raise ModelError(
                f"expected a transformer_lens.HookedTransformer, got {type(model).__name__}"
            )
        self.model = model.eval()
        self.source = dict(source or {})
        self._fingerprint: str | None = None

    # --- identity ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.source.get("name") or self.model.cfg.model_name)

    def identity(self) -> dict[str, Any]:
        cfg = self.model.cfg
        return {
            "name": self.name,
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "d_vocab": cfg.d_vocab,
            **self.source,
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tensor_fingerprint(dict(self.model.state_dict()))
        return self._fingerprint

    # --- structure ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return (
            self.model.cfg.device
            if isinstance(self.model.cfg.device, torch.device)
            else (torch.device(self.model.cfg.device or "cpu"))
        )

    @property
    def d_vocab(self) -> int:
        return int(self.model.cfg.d_vocab)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.model.cfg.d_model)

    @property
    def n_heads(self) -> int:
        return int(self.model.cfg.n_heads)

    @property
    def n_ctx(self) -> int:
        """The longest sequence the model takes."""
        return int(self.model.cfg.n_ctx)

    def check_hook(self, hook: str) -> None:
        if hook not in self.model.hook_dict:
            near = sorted(
                h for h in self.model.hook_dict if h.split(".")[-1] == hook.split(".")[-1]
            )
            hint = f" Hooks with the same ending: {near[:6]}" if near else ""
            layer = hook_layer(hook)
            kept = getattr(self, "freed_after", None)
            if kept is not None and layer is not None and layer >= kept:
                hint = f" Blocks {kept} and later were freed (free_unused_layers)."
            raise ModelError(
                f"hook {hook!r} is not in model {self.name!r} ({self.n_layers} layers).{hint}"
            )

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ModelAdapter:
        """Move the model (and cast it) in place; nothing happens when it is already there."""
        if dtype is not None and self.model.cfg.dtype != dtype:
            self.model.to(dtype)
        target = torch.device(device)
        here = self.device
        if target.type != here.type or (target.index is not None and target.index != here.index):
            self.model.to(target)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cfg.dtype

    # --- tokens -------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def bos_token_id(self) -> int | None:
        if self._bos_override is not None:
            return self._bos_override
        tok = self.model.tokenizer
        return None if tok is None or tok.bos_token_id is None else int(tok.bos_token_id)

    @property
    def pad_token_id(self) -> int | None:
        if self._pad_override is not None:
            return self._pad_override
        tok = self.model.tokenizer
        return None if tok is None or tok.pad_token_id is None else int(tok.pad_token_id)

    def to_tokens(self, text: str, prepend_bos: bool = True) -> Int[Tensor, "1 seq"]:
        """All of ``text``'s tokens: a text longer than the model's context is not cut
        (callers compare the length with their limit and say so)."""
        if self.model.tokenizer is None:
            raise ModelError("this model has no tokenizer: pass token ids instead of text")
        return self.model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)

    def token_strings(self, ids: list[int] | Tensor) -> list[str]:
        """One string per token id (``"<id>"`` placeholders when there is no tokenizer)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        tok = self.model.tokenizer
        if tok is None:
            return [f"<{i}>" for i in ids]
        return [tok.decode([i]) for i in ids]

    def vocab_strings(self) -> list[str]:
        """Decoded string of every vocabulary id (cached)."""
        cached = getattr(self, "_vocab_strings", None)
        if cached is None:
            cached = self.token_strings(list(range(self.d_vocab)))
            self._vocab_strings = cached
        return cached

    # --- compute ------------------------------------------------------------------
    @torch.no_grad()
    def run_to_hooks(self, tokens: Int[Tensor, "b s"], hooks: list[str]) -> dict[str, Tensor]:
        """Activations at ``hooks``, stopping the forward pass right after the last one.

        Hook functions are registered for this call only and removed on exit, so no
        state is left on the shared model.
        """
        wanted = set(hooks)
        store: dict[str, Tensor] = {}

        def capture(act: Tensor, hook) -> Tensor:
            store[hook.name] = act
            if wanted.issubset(store):
                raise _StopForward
            return act

        fwd = [(h, capture) for h in hooks]
        with self.model.hooks(fwd_hooks=fwd), contextlib.suppress(_StopForward):
            self.model(tokens, return_type=None)
        missing = wanted - set(store)
        if missing:
            raise ModelError(f"hooks {sorted(missing)} were never reached in the forward pass")
        return store

    def free_unused_layers(self, hooks: list[str]) -> int:
        """Drop the transformer blocks after the last of ``hooks`` (a sweep stops there),
        keeping the embeddings, ``ln_final`` and ``W_U`` (logit effects need them); returns
        the bytes of parameters freed. The fingerprint is taken first, so memo keys do not
        change. Hooks in the dropped blocks are gone afterwards (:meth:`check_hook` says so);
        a hook outside the blocks (embeddings, final norm) keeps every block.
        """
        layers = [hook_layer(h) for h in hooks]
        if not layers or any(layer is None for layer in layers):
            return 0
        keep = max(int(layer) for layer in layers if layer is not None) + 1
        blocks = self.model.blocks
        if keep >= len(blocks):
            return 0
        self.fingerprint()
        freed = sum(p.numel() * p.element_size() for b in blocks[keep:] for p in b.parameters())
        self.model.blocks = torch.nn.ModuleList(list(blocks[:keep]))
        self.model.setup()  # the hook table forgets the dropped blocks' hooks
        self.freed_after = keep
        return int(freed)

    def residual_directions(
        self, hook: str, directions: Float[Tensor, "f width"]
    ) -> Float[Tensor, "f d_model"] | None:
        """What directions written at ``hook`` add to the residual stream: flat ``hook_z``
        directions go through that layer's ``W_O`` (summed over heads); directions as wide
        as the residual stream are returned as they are; ``None`` for any other width."""
        layer = attention_z_layer(hook)
        if layer is not None:
            w_o = self.model.blocks[layer].attn.W_O  # [heads, d_head, d_model]
            d = directions.to(w_o.dtype).reshape(directions.shape[0], *w_o.shape[:2])
            return torch.einsum("fhd,hdm->fm", d, w_o)
        return directions if directions.shape[-1] == self.d_model else None

    @torch.no_grad()
    def logit_directions(
        self,
        directions: Float[Tensor, "f d_model"],
        token_ids: list[int] | None = None,
        out: Tensor | None = None,
    ) -> Float[Tensor, "f vocab"]:
        """Direct effect of residual-stream directions on the logits (of ``token_ids`` only,
        in that order, when given), into ``out`` when given (a buffer of the result's shape
        and dtype, reused by callers that make many: a new one is paged in each time).

        The final normalisation's linear part is applied (its elementwise scale when
        it was not folded into ``W_U``, and mean-centring for LayerNorm); its division
        by the residual norm is a positive per-token factor and is left out, so the
        values rank tokens exactly as the model would for a fixed norm. ``b_U`` is
        not added: it does not depend on the feature.
        """
        m = self.model
        d = directions.to(m.W_U.dtype)
        ln = getattr(m, "ln_final", None)
        norm_type = m.cfg.normalization_type
        if norm_type in ("LN", "LNPre"):
            d = d - d.mean(dim=-1, keepdim=True)
        if ln is not None and hasattr(ln, "w"):
            d = d * ln.w
        return torch.matmul(d, m.W_U if token_ids is None else m.W_U[:, token_ids], out=out)
