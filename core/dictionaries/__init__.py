"""Dictionary adapters and their registries (adapter name -> class, spec kind -> loader).

Importing this package stays light: the families (``saelens``, ``clt``) register themselves
when imported, and :mod:`core.dictionaries.loaders` imports them all.
"""

from __future__ import annotations

from core.dictionaries.protocol import Dictionary, DictionaryError, tensor_fingerprint
from core.dictionaries.registry import LOADERS, REGISTRY, register, register_loader

__all__ = [
    "LOADERS",
    "REGISTRY",
    "Dictionary",
    "DictionaryError",
    "register",
    "register_loader",
    "tensor_fingerprint",
]
