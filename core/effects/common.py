"""What ablation and steering share: the error, the hooks a feature is read and written at.

:func:`ablation_site` resolves where a feature is read (its activation) and written (its
decoder contribution) and the cheapest exact way to rerun the model from there;
:func:`encode_features` reads chosen features' activations at every position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from core.dictionaries.protocol import Dictionary
from core.errors import FeaturescopeError
from core.models import ModelAdapter, ModelError

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class EffectsError(FeaturescopeError, ValueError):
    """Effects or steering cannot be computed as asked (message says why and what to do)."""


# --- where to ablate ----------------------------------------------------------------------
@dataclass(frozen=True)
class AblationSite:
    """Where a feature is read and removed, and how the rest of the model is run.

    Attributes:
        read_hook: hook whose clean activations give the feature's activation.
        write_hook: hook the feature's contribution is removed from.
        start_layer: block the ablated run restarts at from a cached clean residual
            (``n_layers`` means only the final norm and unembedding remain); ``None``
            runs the whole model with a forward hook.
        edit_resid: the write hook *is* the residual stream entering ``start_layer``, so
            the cached residual is edited directly and no hook is registered.
    """

    read_hook: str
    write_hook: str
    start_layer: int | None
    edit_resid: bool

    def to_dict(self) -> dict[str, Any]:
        return {"read_hook": self.read_hook, "write_hook": self.write_hook}


def ablation_site(
    model: ModelAdapter, dictionary: Dictionary, hook: str | None = None
) -> AblationSite:
    """Resolve the read and write hooks and the cheapest exact way to rerun the model.

    Args:
        hook: the sweep's hook override (``RunConfig.hook``); the dictionary's
            ``hook_in`` when ``None``. An SAE writes back where it reads; a transcoder
            always writes to its ``hook_out``.
    """
    read = hook or dictionary.hook_in
    write = dictionary.hook_out if dictionary.hook_out != dictionary.hook_in else read
    try:
        model.check_hook(read)
        model.check_hook(write)
    except ModelError as exc:
        raise EffectsError(str(exc)) from exc
    n_layers = model.n_layers
    m = _BLOCK_RE.match(write)
    if m is None:
        return AblationSite(read, write, None, False)
    layer, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_pre":
        return AblationSite(read, write, layer, True)
    if rest == "hook_resid_post":
        # blocks.L.hook_resid_post is, value for value, what block L+1 receives
        return AblationSite(read, write, min(layer + 1, n_layers), True)
    return AblationSite(read, write, layer, False)


def encode_features(
    dictionary: Dictionary, x: Tensor, feats: list[int], keep: Tensor
) -> Float[Tensor, "b s f"]:
    """Activations of ``feats`` at every position of ``x`` ``[b, s, ...]`` (0 where not kept)."""
    b, s = x.shape[:2]
    ref = dictionary.decoder_directions(torch.tensor(feats[:1]))
    flat = x.reshape(b * s, -1).to(device=ref.device, dtype=ref.dtype)
    idx = torch.tensor(feats, device=ref.device, dtype=torch.long)
    a = dictionary.encode(flat, idx).float().reshape(b, s, len(feats))
    return a * keep.to(a.device)[..., None]
