"""What counts as data: the values a stream may hand to constructors, states and the caller.

Data is None, numbers, text, bytes, builtin containers of data, instances the stream
constructed through admitted classes, and the type tokens the policy lets objects hold.
Never a function, method, partial, class, module or code object read from the stream.
A container checked as data is frozen: the stream may no longer change it.
"""

from __future__ import annotations

import collections
import functools
import sys
import types
from collections.abc import Callable
from typing import Any

from castore.errors import UnsafeObjectError
from castore.safety.bounds import MAX_INT_BITS

ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, memoryview})
ATOMS |= {type(Ellipsis), type(NotImplemented)}
_INT_LIMIT = 1 << MAX_INT_BITS
SEQUENCES = (list, tuple, set, frozenset, collections.deque)

CODE_TYPES: tuple[type, ...] = (
    type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
    types.CodeType, types.FrameType, types.CellType, types.GeneratorType, types.CoroutineType,
    types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType,
    types.ClassMethodDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType,
    types.TracebackType, classmethod, staticmethod, property, functools.partial,
    functools.partialmethod,
)  # fmt: skip
"""Objects that are or hold code."""

_CALLABLE_MODULES = frozenset({"builtins", "functools", "operator", "itertools", "_operator"})


def is_code(value: Any) -> bool:
    """Whether `value` is a function, method, partial, class or other code-like object."""
    if isinstance(value, CODE_TYPES):
        return True
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ufunc):
        return True
    return callable(value) and type(value).__module__ in _CALLABLE_MODULES


def describe(value: Any) -> str:
    """A short name for `value` in error messages."""
    name = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    if isinstance(name, str):
        return f"{module}.{name}" if isinstance(module, str) else name
    return f"a {type(value).__qualname__}"


class DataGuard:
    """Checks values as data, freezing every container it checked.

    `tokens` maps the ids of globals the result may hold (type tokens, trusted globals)
    to them; `classes` those that may be named as arguments of checked reconstructors.
    """

    def __init__(self) -> None:
        self.tokens: dict[int, Any] = {}
        self.classes: dict[int, Any] = {}
        self.frozen: dict[int, Any] = {}  # id -> object, kept alive so that ids stay unique
        self.checked_partial: Callable[[Any], bool] | None = None
        """Whether a functools.partial may wrap a function (set by the unpickler)."""

    def require(self, value: Any, what: str, *, classes: bool = False) -> None:
        """Refuse `value` unless it is data; freeze the containers it holds."""
        frozen, tokens = self.frozen, self.tokens
        pending = [value]
        pop, extend = pending.pop, pending.extend
        while pending:
            item = pop()
            kind = type(item)
            if kind in ATOMS:
                if kind is int and not -_INT_LIMIT < item < _INT_LIMIT:
                    raise UnsafeObjectError(
                        f"{what} holds an integer of more than {MAX_INT_BITS} bits"
                    )
                continue
            key = id(item)
            if key in frozen:
                continue
            if kind is dict or kind is list or kind is tuple:
                frozen[key] = item
                if kind is dict:
                    extend(item.keys())
                    extend(item.values())
                else:
                    extend(item)
            elif isinstance(item, SEQUENCES):
                frozen[key] = item
                extend(item)
            elif isinstance(item, dict):
                frozen[key] = item
                extend(item.keys())
                extend(item.values())
                factory = getattr(item, "default_factory", None)
                if factory is not None:
                    extend((factory,))
            elif key in tokens or (classes and key in self.classes):
                continue
            elif is_code(item):
                raise UnsafeObjectError(
                    f"{what} holds {describe(item)}: a loaded object holds no function, "
                    "method, partial or class unless you trust it"
                )

    def is_frozen(self, container: Any) -> bool:
        """Whether `container` was checked as data, so that the stream may not change it."""
        return id(container) in self.frozen


ArgumentCheck = Callable[[tuple[Any, ...], dict[str, Any]], None]
