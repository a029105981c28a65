"""Every dictionary family, imported so that each registers its loaders.

Look a spec kind up with :func:`loader_for` from here (not from the registry directly): importing
this module guarantees every family has registered. A new family is one module that registers
its adapter and loaders (:mod:`core.dictionaries.registry`) plus one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from core.dictionaries import clt, directions, saelens
from core.dictionaries.registry import LOADERS, loader_for

FAMILIES = (saelens, clt, directions)

__all__ = ["FAMILIES", "LOADERS", "loader_for"]
