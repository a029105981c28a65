"""The one interface through which the engine reaches a sparse dictionary.

A dictionary reads activations at ``hook_in`` and writes its reconstruction to
``hook_out``. For an SAE both are the same hook; for a transcoder (or one layer of
a cross-layer transcoder) the encoder reads one hook and the decoder writes
another. The engine only ever calls the members defined here, so SAEs,
transcoders and CLTs differ in their adapters, never in the engine.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.errors import FeaturescopeError

#: what a dictionary does (:attr:`Dictionary.role`)
DictionaryRole = Literal["sae", "transcoder", "skip_transcoder", "clt"]
DICTIONARY_ROLES: tuple[str, ...] = ("sae", "transcoder", "skip_transcoder", "clt")


class DictionaryError(FeaturescopeError, ValueError):
    """A dictionary could not be loaded or does not fit the model (message says how to fix)."""


#: a TransformerLens hook name: dotted identifiers or block numbers, ending in ``hook_...``
HOOK_NAME = re.compile(r"^(?:(?:[A-Za-z_][A-Za-z0-9_]*|\d{1,5})\.){0,8}hook_[A-Za-z0-9_]{1,60}$")


def check_hook_name(name: object, where: str) -> str:
    """``name`` if it is a well-formed hook name (e.g. ``blocks.6.hook_resid_pre``).

    Hook names come from dictionary files; anything else (code, format fields, several
    names) is refused here, before the dictionary meets a model (which then checks that
    the hook exists).
    """
    if not isinstance(name, str) or not HOOK_NAME.match(name):
        raise DictionaryError(
            f"{where} is {str(name)[:80]!r}, not a TransformerLens hook name: write one like "
            "'blocks.6.hook_resid_pre' (dotted names and layer numbers ending in hook_...)"
        )
    return name


def check_finite(tensors: dict[str, Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity, naming the tensor and the count.

    Scans in slices, so no full-size mask is allocated.
    """
    for name, t in tensors.items():
        if t is None or not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        nan = inf = 0
        for part in flat.split(1 << 22):
            bad = ~torch.isfinite(part)
            if bool(bad.any()):
                n_nan = int(torch.isnan(part).sum())
                nan += n_nan
                inf += int(bad.sum()) - n_nan
        if nan or inf:
            raise DictionaryError(
                f"{where}: tensor {name!r} {list(t.shape)} holds {nan:,} NaN and {inf:,} "
                "infinite value(s): the weights are damaged (or training diverged); download or "
                "export them again"
            )


class Dictionary(ABC):
    """Adapter base class. Subclasses register themselves in :mod:`core.dictionaries`."""

    #: the adapter family, the name it is registered under (``"saelens"``, ``"clt"``)
    family: str = "base"

    @property
    def role(self) -> DictionaryRole:
        """What the dictionary does: reconstructs its input (``"sae"``), maps its input to
        another hook (``"transcoder"``, ``"skip_transcoder"``), or reads one layer and writes
        several (``"clt"``)."""
        return "sae"

    @property
    @abstractmethod
    def n_features(self) -> int:
        """Number of features (``d_sae``)."""

    @property
    @abstractmethod
    def d_in(self) -> int:
        """Width of the activations read at :attr:`hook_in`."""

    @property
    @abstractmethod
    def d_out(self) -> int:
        """Width of the activations written at :attr:`hook_out`."""

    @property
    @abstractmethod
    def hook_in(self) -> str:
        """TransformerLens hook whose activations are encoded."""

    @property
    def hook_out(self) -> str:
        """TransformerLens hook the decoder writes to (same as ``hook_in`` for an SAE)."""
        return self.hook_in

    @property
    def signed(self) -> bool:
        """True when activations can be negative (projections on given directions).

        The engine then counts non-zero activations as active, keeps the most negative
        examples next to the most positive, bins histograms over ``[min, max]`` and
        intervals over ``|value|``, and never quantises correlations to int8. False (the
        base's answer) for dictionaries whose activations are non-negative.
        """
        return False

    @property
    def encode_is_separable(self) -> bool:
        """True when a feature's activation depends only on its own encoder row.

        Then :meth:`encode` on a subset of features costs only that subset. TopK-style
        activations are not separable: all features are computed and then sliced.
        """
        return True

    @abstractmethod
    def encode(
        self,
        x: Float[Tensor, "n d_in"],
        features: Int[Tensor, " f"] | None = None,
    ) -> Float[Tensor, "n f"]:
        """Feature activations for ``features`` (all when ``None``), computed in ``x``'s dtype."""

    @abstractmethod
    def decoder_directions(
        self, features: Int[Tensor, " f"] | None = None
    ) -> Float[Tensor, "f d_out"]:
        """Decoder rows (what one unit of each feature adds at :attr:`hook_out`)."""

    @abstractmethod
    def state_tensors(self) -> dict[str, Tensor]:
        """All tensors that fix the dictionary's behaviour (used for the fingerprint)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description: family, role, source, release/id or path, hooks, sizes."""

    @abstractmethod
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dictionary:
        """Move weights (in place where possible) and return self."""

    def feature_extras(self, features: Int[Tensor, " f"]) -> dict[str, Any]:
        """Per-feature extras a particular architecture can show (JSON-able).

        Keys map to lists with one entry per requested feature. The base has none.
        """
        return {}

    def encoder_affine(self, features: Int[Tensor, " f"]) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(W [d_in, f], b [f], shift [d_in])`` when each feature's pre-activation is the
        affine ``(x - shift) @ W + b`` of the flat input (what direct feature attribution
        pulls back through attention); ``None`` when it is not (the base's answer)."""
        return None

    def fingerprint(self) -> str:
        """sha256 over identity-free content: every state tensor's name, shape and bytes."""
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is not None:
            return cached
        digest = tensor_fingerprint(self.state_tensors())
        self._fingerprint_cache = digest
        return digest


def tensor_fingerprint(tensors: dict[str, Tensor], full_bytes_limit: int = 64 << 20) -> str:
    """Stable sha256 of named tensors.

    Tensors up to ``full_bytes_limit`` bytes are hashed whole; larger ones by a strided
    sample of one million elements plus their float64 sum and absolute sum, which keeps
    fingerprinting a multi-GB model to about a second while any realistic change
    (retraining, fine-tuning, different checkpoint) still changes the digest.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        flat = t.reshape(-1)
        if flat.numel() * flat.element_size() > full_bytes_limit:
            step = max(1, flat.numel() // 1_000_000)
            sample = flat[::step]
            stats = torch.stack([flat.double().sum(), flat.double().abs().sum()])
            h.update(stats.cpu().numpy().tobytes())
            flat = sample
        data = flat.contiguous().cpu()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        h.update(data.numpy().tobytes())
    return h.hexdigest()
