"""Dictionary adapters and their registry (name -> adapter class)."""

from __future__ import annotations

from core.dictionaries.protocol import Dictionary, DictionaryError, tensor_fingerprint

REGISTRY: dict[str, type[Dictionary]] = {}


def register(name: str):
    """Class decorator: make an adapter reachable by ``name`` (e.g. ``"saelens"``, ``"clt"``)."""

    def wrap(cls: type[Dictionary]) -> type[Dictionary]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"dictionary adapter {name!r} registered twice")
        REGISTRY[name] = cls
        return cls

    return wrap


__all__ = ["REGISTRY", "Dictionary", "DictionaryError", "register", "tensor_fingerprint"]
