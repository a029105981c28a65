"""FeatureSource: the one interface pages and exports read feature data through.

Two implementations:

* :class:`core.workspace.Workspace` (``live``): a model is loaded; it reads what the memo
  (or a registered precompute output) holds and computes the rest; it can also search,
  show effects and steer.
* :class:`core.precompute.reader.PrecomputedStore` (not ``live``): a precompute output
  directory opened without a model; it answers only what it stores.

Both return plain data (:class:`~core.engine.features.FeatureData`, dicts and lists), so
code written against this protocol never touches torch. This module imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.engine.features import FeatureData


@runtime_checkable
class FeatureSource(Protocol):
    """What a page needs of a dictionary's features on one token set.

    Attributes:
        live: True when a model is loaded (compute, search, effects, steering work).
        n_features: size of the dictionary (valid indices ``0..n_features-1``).
    """

    live: bool

    @property
    def n_features(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """What is shown: model, dictionary, dataset, sizes, hook (for the sidebar)."""
        ...

    def identity_key(self) -> str:
        """Short id of (model, dictionary, tokens, result config), used in deep links; a
        workspace and a precompute output of the same sources share it."""
        ...

    def dictionary_key(self) -> str:
        """The dictionary's fingerprint (``Dictionary.fingerprint()``): the knowledge store's
        key for labels, notes and explanations of its features."""
        ...

    def check_index(self, i: object) -> int:
        """``i`` as a valid feature index (text from a URL is read), or a
        ``FeaturescopeError`` (a ``ValueError`` or ``KeyError``) naming the valid range."""
        ...

    def has(self, i: int) -> bool:
        """True when :meth:`feature` can answer for ``i`` (a live source can compute any
        valid index; a precompute output has only the features it stored)."""
        ...

    def feature(self, i: int) -> FeatureData:
        """One feature's dashboard data; a clear error (a ``FeaturescopeError``) when it
        cannot be had."""
        ...

    def features(self, indices: list[int]) -> dict[int, FeatureData]:
        """Several features' data, keyed by index in ascending order."""
        ...

    def summary(self) -> dict[str, list]:
        """The summary table (:data:`core.previews.SUMMARY_COLUMNS`, one row per
        feature; a precompute output adds ``skipped``)."""
        ...
