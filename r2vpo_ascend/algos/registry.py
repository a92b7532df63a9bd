"""The one implementation behind the name registries of policy losses and advantage estimators."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def register(registry: dict[str, F], name: str, kind: str) -> Callable[[F], F]:
    """Decorator adding a function to ``registry`` under ``name``; a taken name raises."""
    def decorator(fn: F) -> F:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = fn
        return fn
    return decorator


def lookup(registry: dict[str, F], name: str, kind: str) -> F:
    """``registry[name]``, or a ``ValueError`` listing the registered names."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(registry)}")
    return registry[name]
