"""The dictionary registries, filled at import by each family's module.

* :data:`REGISTRY`: adapter name -> adapter class (``"saelens"``, ``"clt"``).
* :data:`LOADERS`: spec kind -> the function that loads a dictionary of that kind
  (``"demo"``, ``"saelens"``, ``"saelens_local"``, ``"clt"``).

A family module (``saelens.py``, the ``clt/`` package) registers its adapter with
:func:`register` and a loader for each spec kind it serves with :func:`register_loader`;
:mod:`core.dictionaries.loaders` imports every family, so loading looks the kind up here instead
of branching on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from core.dictionaries.protocol import Dictionary, DictionaryError


class DictionarySpecFields(Protocol):
    """What a loader reads from a :class:`~core.sources.DictionarySpec`."""

    kind: str
    release: str | None
    sae_id: str | None
    path: str | None
    layer: int | None
    weights_file: str | None


# ``loader(spec, device) -> Dictionary``; ``device`` is already validated.
DictionaryLoader = Callable[[DictionarySpecFields, str], Dictionary]

REGISTRY: dict[str, type[Dictionary]] = {}
LOADERS: dict[str, DictionaryLoader] = {}


def register(name: str):
    """Class decorator: make an adapter reachable by ``name`` (e.g. ``"saelens"``, ``"clt"``)."""

    def wrap(cls: type[Dictionary]) -> type[Dictionary]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"dictionary adapter {name!r} registered twice")
        REGISTRY[name] = cls
        return cls

    return wrap


def register_loader(*kinds: str):
    """Function decorator: load specs of each of ``kinds`` with the decorated function."""

    def wrap(loader: DictionaryLoader) -> DictionaryLoader:
        for kind in kinds:
            if kind in LOADERS and LOADERS[kind] is not loader:
                raise ValueError(f"dictionary kind {kind!r} registered twice")
            LOADERS[kind] = loader
        return loader

    return wrap


def loader_for(kind: str) -> DictionaryLoader:
    """The loader registered for ``kind``; :class:`DictionaryError` naming the known kinds."""
    try:
        return LOADERS[kind]
    except KeyError:
        known = ", ".join(sorted(LOADERS)) or "none registered"
        raise DictionaryError(f"unknown dictionary kind {kind!r} (known kinds: {known})") from None
