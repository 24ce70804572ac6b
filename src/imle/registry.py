"""The one registry mechanism of classes chosen by a string in the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def class_registrar(table: dict[str, Any], kind: str) -> Callable[[str], Callable[[T], T]]:
    """A ``register(name)`` class decorator for ``table``: it sets ``cls.name = name`` and
    stores the class under that name (``kind`` names what is registered, for the docs)."""

    def register(name: str) -> Callable[[T], T]:
        def wrap(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            table[name] = cls
            return cls

        return wrap

    register.__doc__ = f"Class decorator adding a {kind} subclass under ``name``."
    return register


def factory_registrar(table: dict[str, Any], kind: str) -> Callable[[str], Callable[[T], T]]:
    """A ``register(name)`` decorator storing a factory function in ``table`` under ``name``
    (``kind`` describes the factory, for the docs)."""

    def register(name: str) -> Callable[[T], T]:
        def wrap(factory: T) -> T:
            table[name] = factory
            return factory

        return wrap

    register.__doc__ = f"Decorator adding a {kind} under ``name``."
    return register
