"""The registries drive loading: every spec kind has a loader its family registered."""

from __future__ import annotations

import typing

import pytest

from core.dictionaries import DictionaryError
from core.dictionaries.clt import CLTDictionary
from core.dictionaries.directions import DirectionsDictionary
from core.dictionaries.loaders import LOADERS, loader_for
from core.dictionaries.registry import REGISTRY, register_loader
from core.dictionaries.saelens import SAELensDictionary
from core.source_guard import SourceError
from core.sources import DictionarySpec, load_dictionary


def test_every_spec_kind_has_a_loader() -> None:
    kinds = typing.get_args(typing.get_type_hints(DictionarySpec)["kind"])
    assert sorted(kinds) == sorted(LOADERS)
    assert {
        "saelens": SAELensDictionary,
        "clt": CLTDictionary,
        "directions": DirectionsDictionary,
    } == REGISTRY


def test_unknown_kind_names_the_known_kinds() -> None:
    with pytest.raises(
        DictionaryError, match="known kinds: clt, demo, directions, saelens, saelens_local"
    ):
        loader_for("nope")
    with pytest.raises(SourceError, match=r"unknown dictionary kind 'nope' \(known kinds: clt"):
        load_dictionary(DictionarySpec(kind="nope"))  # type: ignore[arg-type]


def test_load_dictionary_dispatches_through_the_registry(monkeypatch) -> None:
    seen: list[tuple[str, str]] = []
    sentinel = object()

    def fake(spec, device):
        seen.append((spec.kind, device))
        return sentinel

    monkeypatch.setitem(LOADERS, "demo", fake)
    assert load_dictionary(DictionarySpec(kind="demo"), device="cpu") is sentinel
    assert seen == [("demo", "cpu")]


def test_a_kind_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_loader("clt")(lambda spec, device: None)  # type: ignore[arg-type,return-value]
    assert LOADERS["clt"].__module__ == "core.dictionaries.clt"
