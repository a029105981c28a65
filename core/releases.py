"""Which SAELens releases and TransformerLens model names fit, decided offline.

Everything here reads the tables that ship inside ``sae-lens`` and ``transformer-lens``;
nothing is downloaded. The Sources page uses it to offer only the releases made for the
chosen model, and the loaders use it to refuse a release for another model, or a model
name TransformerLens does not know, before any download starts.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any

import transformer_lens.loading_from_pretrained as tl_loading
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

from core.source_guard import SourceError

_LAYER_IN_ID = re.compile(r"(?:^|[./_])(?:blocks|layer|layers)[._](\d+)(?:[./_]|$)")


@functools.cache
def _names() -> dict[str, str]:
    """Every official TransformerLens name and alias (lower case) -> the official name."""
    out = {name.lower(): name for name in tl_loading.OFFICIAL_MODEL_NAMES}
    for name, aliases in tl_loading.MODEL_ALIASES.items():
        for alias in aliases:
            out.setdefault(alias.lower(), name)
    return out


def official_name(name: str) -> str | None:
    """The official TransformerLens name for ``name`` or one of its aliases, else ``None``."""
    return _names().get(str(name).strip().lower())


def same_model(a: str, b: str) -> bool:
    """Whether two model names (official names, aliases or Hugging Face ids) are one model."""
    a, b = str(a).strip(), str(b).strip()
    if a.lower() == b.lower():
        return True
    oa, ob = official_name(a), official_name(b)
    if oa is not None and oa == ob:
        return True
    # a Hugging Face id and the bare name ("google/gemma-2-2b" vs "gemma-2-2b")
    return a.lower().rsplit("/", 1)[-1] == b.lower().rsplit("/", 1)[-1]


def closest_model_names(name: str, n: int = 5) -> list[str]:
    """The few official names or aliases closest to ``name`` (for "did you mean")."""
    names = _names()
    found = difflib.get_close_matches(str(name).strip().lower(), list(names), n=n * 3, cutoff=0.5)
    out: list[str] = []
    for key in found:
        official = names[key]
        if official not in out:
            out.append(official)
    return out[:n]


def check_model_name(name: str) -> str:
    """``name`` when TransformerLens knows it; otherwise a :class:`SourceError` that names
    the closest known names instead of listing hundreds."""
    if official_name(name) is not None:
        return name
    close = closest_model_names(name)
    hint = f" Closest known names: {', '.join(close)}." if close else ""
    raise SourceError(
        f"{name!r} is not a model TransformerLens knows.{hint} A model of your own loads as a "
        "local Hugging Face directory (model source: local)."
    )


@dataclass(frozen=True)
class Release:
    """One SAELens release as the directory inside sae-lens describes it."""

    name: str
    model: str
    repo_id: str
    ids: tuple[str, ...]

    def layer_of(self, sae_id: str) -> int | None:
        """The layer an SAE id names (``blocks.8.hook_resid_pre``, ``layer_12/width_16k/..``)."""
        m = _LAYER_IN_ID.search(sae_id)
        return int(m.group(1)) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "repo_id": self.repo_id, "ids": list(self.ids)}


@functools.cache
def all_releases() -> dict[str, Release]:
    """Every pretrained SAELens release, by name (read offline)."""
    return {
        name: Release(name, str(info.model), str(info.repo_id), tuple(info.saes_map))
        for name, info in get_pretrained_saes_directory().items()
    }


def releases_for(model: str | None) -> dict[str, Release]:
    """The releases made for ``model`` (any of its names), sorted by name; all when ``None``."""
    found = {
        name: rel
        for name, rel in all_releases().items()
        if model is None or same_model(rel.model, model)
    }
    return dict(sorted(found.items()))


def check_release(
    release: str, sae_id: str | None, model: str | None, n_layers: int | None = None
) -> Release:
    """Refuse, before anything is downloaded, a release or SAE id that does not exist or
    was made for another model (or for a layer the model does not have)."""
    releases = all_releases()
    rel = releases.get(release)
    if rel is None:
        close = difflib.get_close_matches(release, list(releases), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SourceError(f"there is no SAELens release {release!r}.{hint}")
    if sae_id is not None and sae_id not in rel.ids:
        close = difflib.get_close_matches(sae_id, list(rel.ids), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise SourceError(
            f"release {release!r} has no SAE id {sae_id!r} ({len(rel.ids)} ids{hint})"
        )
    if model is not None and not same_model(rel.model, model):
        n_fit = len(releases_for(model))
        raise SourceError(
            f"release {release!r} was trained on {rel.model}, but the model is {model}: pick "
            f"one of the {n_fit} releases for {model}, or load {rel.model} as the model"
        )
    layer = rel.layer_of(sae_id) if sae_id is not None else None
    if n_layers is not None and layer is not None and layer >= n_layers:
        raise SourceError(
            f"SAE {sae_id!r} reads layer {layer}, but the model has {n_layers} layers (0-"
            f"{n_layers - 1})"
        )
    return rel
