"""Every exception class defined in core derives from FeaturescopeError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import core
from core.config import ConfigError
from core.errors import FeaturescopeError
from core.memo import MemoError
from core.source_guard import SourceError


def _core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
    return sorted(n for n in names if n != "core.__main__")


def _core_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _core_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_every_core_exception_derives_from_the_base() -> None:
    classes = _core_exceptions()
    assert len(classes) >= 15, [c.__qualname__ for c in classes]
    offenders = [
        f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, FeaturescopeError)
    ]
    assert not offenders, f"exception classes not derived from FeaturescopeError: {offenders}"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(SourceError, ValueError), (ConfigError, ValueError), (MemoError, RuntimeError)],
)
def test_errors_keep_their_builtin_base(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, FeaturescopeError)
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")
