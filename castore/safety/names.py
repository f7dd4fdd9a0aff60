"""Names of globals: trust patterns, module spellings, and resolving a name to its object."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from castore.errors import DeserializationError, InvalidInputError, UnsafeObjectError

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_PATTERN = re.compile(rf"({_IDENTIFIER}(?:\.{_IDENTIFIER})*)(?:(:)({DOTTED.pattern})|(\.\*))?")

Trustable = str | type | Callable[..., Any]
"""What `trusted=` accepts: a pattern, or a class or function to trust by its name."""


@dataclass(frozen=True)
class Pattern:
    """Trust in one global (``pkg.mod.Name``, ``pkg.mod:Name``) or a package (``pkg.*``)."""

    prefix: str
    wildcard: bool

    @classmethod
    def parse(cls, item: Trustable) -> Pattern:
        """A pattern from its text, or the exact name of a class or function."""
        if not isinstance(item, str):
            module, qualname = (
                getattr(item, "__module__", None),
                getattr(item, "__qualname__", None),
            )
            if not isinstance(module, str) or not isinstance(qualname, str):
                raise InvalidInputError(f"cannot trust {item!r}: it has no importable name")
            item = f"{module}:{qualname}"
        match = _PATTERN.fullmatch(item)
        if match is None:
            raise InvalidInputError(
                f"invalid trusted pattern {item!r}: expected 'package.module.Name', "
                "'package.module:Qualified.Name' or 'package.*'"
            )
        head, colon, tail, star = match.groups()
        return cls(f"{head}.{tail}" if colon else head, wildcard=bool(star))

    def covers_module(self, module: str) -> bool:
        """Whether this wildcard pattern allows importing `module` to look a global up."""
        return self.wildcard and within(module, self.prefix)

    def matches(self, module: str, name: str, defined_in: str | None) -> bool:
        """Whether the global module.name (defined in `defined_in`) is trusted by this pattern."""
        if not self.wildcard:
            return f"{module}.{name}" == self.prefix
        return within(module, self.prefix) and (
            defined_in is None or within(defined_in, self.prefix)
        )

    @property
    def root(self) -> str:
        """The top-level package the pattern names."""
        return self.prefix.split(".", 1)[0]


def within(module: str, package: str) -> bool:
    """Whether `module` is `package` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def under_any(module: str, packages: Iterable[str]) -> bool:
    """Whether `module` lies within any of `packages`."""
    return any(within(module, package) for package in packages)


def lookup(module: str, name: str) -> Any:
    """module.name if `module` is already imported (never imports anything), else None."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def defined_in(obj: Any) -> str | None:
    """The module that defines `obj`, as it says."""
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


_NUMPY_CORE = ("numpy._core", "numpy.core")
"""numpy 2 moved numpy.core to numpy._core; pickles name either."""


def canonical_module(module: str) -> str:
    """The spelling the allowlist uses for a module that older libraries named differently."""
    if within(module, _NUMPY_CORE[1]):
        return _NUMPY_CORE[0] + module[len(_NUMPY_CORE[1]) :]
    return module


def import_module(module: str) -> types.ModuleType:
    """Import a module by its canonical name (numpy._core falls back to numpy.core)."""
    try:
        __import__(module, level=0)
    except ModuleNotFoundError:
        if not within(module, _NUMPY_CORE[0]):
            raise
        module = _NUMPY_CORE[1] + module[len(_NUMPY_CORE[0]) :]
        __import__(module, level=0)
    return sys.modules[module]


def python2_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global that a protocol 0-2 pickle names the Python 2 way."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def refusal(full: str, reason: str) -> UnsafeObjectError:
    """The error for a refused global."""
    return UnsafeObjectError(f"the global {full} is refused: {reason}", full, reason=reason)


def resolve(module: str, name: str, full: str, importer: Callable[[str], Any]) -> Any:
    """Import `module` (through `importer`) and walk `name`; only classes may be walked
    through (no re-exports through modules)."""
    try:
        obj: Any = importer(module)
    except Exception as exc:
        raise DeserializationError(f"the global {full} cannot be imported: {exc}") from exc
    for depth, part in enumerate(name.split(".")):
        if depth and not isinstance(obj, type):
            raise refusal(full, "only classes may be walked through to reach a global")
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise DeserializationError(f"the global {full} does not exist") from exc
    if isinstance(obj, types.ModuleType):
        raise refusal(full, "it is a module")
    return obj
