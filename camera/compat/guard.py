"""The checks every hook makes before it touches a private member of aiortc or aioice.

One error type, :class:`IncompatibleLibrary`, names the library, its installed
version and the member that is missing or not what the hook expects. The checks
take the module or class to look at as an argument, so tests can point them at a
throwaway object instead of breaking the real library.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from camera.errors import PeercamError


class IncompatibleLibrary(PeercamError, RuntimeError):
    """aiortc or aioice is not the version, or lacks the private member, peercam hooks."""

    def __init__(self, library: str, version: str, detail: str) -> None:
        super().__init__(f"{library} {version}: {detail}")
        self.library = library
        self.version = version


class HooksConflict(PeercamError, RuntimeError):
    """The hooks are already installed with other settings (use ``reconfigure``)."""


@dataclass(frozen=True)
class Library:
    """A library peercam hooks, and the release series the hooks were written for."""

    name: str
    series: str
    """``major.minor``: the pin in pyproject.toml is ``name==series.*``."""

    def version(self, module: ModuleType | Any) -> str:
        return str(getattr(module, "__version__", "unknown"))

    def fail(self, module: ModuleType | Any, detail: str) -> IncompatibleLibrary:
        return IncompatibleLibrary(self.name, self.version(module), detail)


AIORTC = Library("aiortc", "1.16")
AIOICE = Library("aioice", "0.13")

Kind = Literal["method", "coroutine", "function", "attribute"]


@dataclass(frozen=True)
class Member:
    """A private (or internal) member a hook uses, and what it must look like."""

    name: str
    kind: Kind
    params: tuple[str, ...] | None = None
    """For callables: the parameter names the hook relies on, in order (``self`` included
    for methods); None: not checked."""


def check_version(library: Library, module: ModuleType | Any) -> None:
    """Refuse any release outside the series the hooks were written against."""
    version = library.version(module)
    if version != library.series and not version.startswith(library.series + "."):
        raise IncompatibleLibrary(
            library.name,
            version,
            f"peercam hooks {library.name} {library.series} internals (pinned "
            f"{library.name}=={library.series}.*, camera/compat); found {library.name} {version}",
        )


def require(library: Library, module: ModuleType | Any, owner: Any, member: Member) -> Any:
    """``owner.<member>`` after checking it is there and of the expected kind and signature."""
    owner_name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) or (
        type(owner).__qualname__)
    where = f"{owner_name}.{member.name}"
    if not hasattr(owner, member.name):
        raise library.fail(module, f"{where} is missing: the hook that uses it would be lost")
    value = inspect.getattr_static(owner, member.name)
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    if member.kind == "attribute":
        return getattr(owner, member.name)
    if not callable(value):
        raise library.fail(module, f"{where} is not callable (got {type(value).__name__})")
    if member.kind == "coroutine" and not inspect.iscoroutinefunction(value):
        raise library.fail(module, f"{where} is no longer a coroutine function")
    if member.kind in ("method", "function") and inspect.iscoroutinefunction(value):
        raise library.fail(module, f"{where} became a coroutine function")
    if member.params is not None:
        try:
            names = tuple(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            names = ()
        if names[: len(member.params)] != member.params:
            raise library.fail(
                module, f"{where} takes {names}, the hook expects {member.params}"
            )
    return getattr(owner, member.name)


def require_all(
    library: Library, module: ModuleType | Any, owner: Any, members: tuple[Member, ...]
) -> None:
    for member in members:
        require(library, module, owner, member)


def instance_attribute(
    library: Library,
    module: ModuleType | Any,
    obj: object,
    name: str,
    expected: type | tuple[type, ...],
) -> Any:
    """``getattr(obj, name)`` if it is there and an instance of ``expected``."""
    value = getattr(obj, name, _MISSING)
    if value is _MISSING:
        raise library.fail(module, f"{type(obj).__qualname__}.{name} is missing: "
                           "the hook that uses it would be lost")
    if not isinstance(value, expected):
        raise library.fail(
            module, f"{type(obj).__qualname__}.{name} is {type(value).__qualname__}, "
            f"not the {_names(expected)} the hook expects"
        )
    return value


def _names(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(k.__qualname__ for k in kinds)


_MISSING = object()
