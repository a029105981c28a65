"""Keys of the engine's results: a token tensor's fingerprint and the memo key.

Both live below the memo and the memoised computation (:mod:`core.engine.cached`), so the memo
can store feature data and the engine can build keys without either importing the other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor

from core.engine.features import SCHEMA_VERSION


def token_fingerprint(tokens: Tensor) -> str:
    """sha256 of a token tensor's shape and int64 bytes."""
    t = tokens.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def memo_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` plus the feature-data schema version."""
    text = json.dumps([SCHEMA_VERSION, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
