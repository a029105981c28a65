"""Hook activations kept on disk between runs, so later sweeps skip the model.

A sweep over a token set needs the model only to produce the activations at one hook.
Stored once (safetensors, one file per (model, hook, token set, dtype)), they let any
later sweep over other features of the same dictionary, or of another dictionary on the
same hook, run without a forward pass. Files are written atomically and checked on
read; a damaged file is deleted and the activations recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from core.storage import save_tensors

log = logging.getLogger(__name__)


def activation_store_for(memo_directory: str | Path) -> ActivationStore:
    """The activation store of everything that stores features in the memo at
    ``memo_directory`` (the app, the API, the runner): ``activations/`` beside it."""
    return ActivationStore(Path(memo_directory).parent / "activations")


class ActivationStore:
    """A directory of ``<key>.safetensors`` files, each one ``[sequences, positions, width]``."""

    def __init__(self, directory: str | Path, max_bytes: int = 8 << 30):
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    @staticmethod
    def key(model_fingerprint: str, hook: str, tokens_fingerprint: str, dtype: torch.dtype) -> str:
        text = json.dumps([model_fingerprint, hook, tokens_fingerprint, str(dtype)])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, expected_shape: tuple[int, int] | None = None) -> Tensor | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            x = load_file(str(p))["acts"]
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            log.warning("dropping unreadable activation file %s: %s", p.name, exc)
            p.unlink(missing_ok=True)
            return None
        if expected_shape is not None and tuple(x.shape[:2]) != expected_shape:
            p.unlink(missing_ok=True)
            return None
        return x

    def save(self, key: str, acts: Tensor) -> bool:
        if acts.numel() * acts.element_size() > self.max_bytes:
            return False
        return save_tensors(
            {"acts": acts},
            self.path(key),
            "they will be recomputed next time",
            "FEATURESCOPE_CACHE_DIR",
        )
