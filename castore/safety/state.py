"""BUILD state is data: what a stream may set on an object it constructed.

A state holds only data (castore.safety.data). Attribute names are instance state: text,
no dunder, nothing that shadows a method, property or other behaviour of the class
(shadowing a plain default such as ``n_jobs = None`` is how classes set defaults, and
stays allowed). Builtin containers take no state at all, and numpy's dtype and array
states and UUIDs are validated field by field, since their ``__setstate__`` trusts them.
"""

from __future__ import annotations

import collections
import functools
import types
import uuid
from typing import Any

from castore.errors import UnsafeObjectError
from castore.safety.checks import check_array_state, check_random_state, checked_dtype_state
from castore.safety.data import DataGuard, describe
from castore.safety.names import lookup

_CONTAINERS = (dict, list, tuple, set, frozenset, collections.deque, str, bytes, int, float)
_DATA_DEFAULTS = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset)


def check_state(target: Any, state: Any, guard: DataGuard) -> Any:
    """The state to give `target` (possibly rebuilt), or UnsafeObjectError."""
    klass = type(target)
    if isinstance(target, _CONTAINERS) and klass.__module__ in ("builtins", "collections"):
        raise UnsafeObjectError(f"the stream sets state on a {klass.__qualname__}, a builtin type")
    numpy_dtype, ndarray = lookup("numpy", "dtype"), lookup("numpy", "ndarray")
    wrapper = lookup("joblib.numpy_pickle", "NumpyArrayWrapper")
    if numpy_dtype is not None and isinstance(target, numpy_dtype):
        guard.require(state, "a numpy dtype's state")
        return checked_dtype_state(target, state)
    if _random_state(target):
        guard.require(state, "a numpy random state")
        check_random_state(target, state)
        return state
    if ndarray is not None and isinstance(target, ndarray):
        guard.require(state, "a numpy array's state")
        check_array_state(target, state)
        return state
    if klass is functools.partial:
        _check_partial(state, guard)
        return state
    if klass is uuid.UUID:
        _check_uuid(state)
        return state
    guard.require(state, f"the state of {describe(klass)}", classes=klass is wrapper)
    has_setstate = getattr(klass, "__setstate__", None) is not None
    if isinstance(state, dict):
        check_names(klass, state, as_attributes=hasattr(target, "__dict__"))
    elif not has_setstate:
        if not (isinstance(state, tuple) and len(state) == 2):
            raise UnsafeObjectError(f"the stream gives {describe(klass)} a malformed state")
        attributes, slots = state
        if attributes is not None:
            if type(attributes) is not dict:
                raise UnsafeObjectError(f"the stream gives {describe(klass)} a malformed state")
            check_names(klass, attributes, as_attributes=True)
        if slots is not None:
            _check_slots(klass, slots)
    return state


def _random_state(target: Any) -> bool:
    """Whether `target` is a numpy RandomState, Generator or bit generator."""
    kinds = [lookup("numpy.random", name) for name in ("RandomState", "Generator", "BitGenerator")]
    return any(isinstance(kind, type) and isinstance(target, kind) for kind in kinds)


def check_names(klass: type, state: dict[Any, Any], *, as_attributes: bool) -> None:
    """Keys are text and no dunder; as attributes, none shadows behaviour of the class."""
    for name in state:
        if type(name) is not str or name.startswith("__"):
            raise UnsafeObjectError(
                f"the stream sets the attribute {name!r:.60} of {describe(klass)}: "
                "state holds instance attributes only, never dunders"
            )
        if as_attributes and not _may_shadow(klass, name):
            raise UnsafeObjectError(
                f"the stream sets the attribute {name!r} of {describe(klass)}, which would "
                "shadow behaviour of its class"
            )


@functools.lru_cache(maxsize=4096)
def _may_shadow(klass: type, name: str) -> bool:
    for base in klass.__mro__:
        if name in base.__dict__:
            return isinstance(base.__dict__[name], _DATA_DEFAULTS)
    return True


def _check_slots(klass: type, slots: Any) -> None:
    if type(slots) is not dict:
        raise UnsafeObjectError(f"the stream gives {describe(klass)} malformed slot state")
    for name in slots:
        member = next((b.__dict__[name] for b in klass.__mro__ if name in b.__dict__), None)
        if type(name) is not str or not isinstance(member, types.MemberDescriptorType):
            raise UnsafeObjectError(
                f"the stream sets {name!r:.60} on {describe(klass)}, which is not one of its slots"
            )


def _check_partial(state: Any, guard: DataGuard) -> None:
    """A partial's state replaces its function: the same rule as for constructing one."""
    ok = type(state) is tuple and len(state) == 4 and type(state[1]) is tuple
    ok = ok and type(state[2]) in (dict, type(None)) and state[3] in (None, {})
    if not ok or guard.checked_partial is None or not guard.checked_partial(state[0]):
        raise UnsafeObjectError("the stream gives a functools.partial a refused function")
    guard.require(state[1:], "the arguments of a functools.partial")


def _check_uuid(state: Any) -> None:
    """uuid.UUID.__setstate__ stores whatever `int` holds: it must be a 128-bit integer."""
    ok = (
        type(state) is dict
        and set(state) <= {"int", "is_safe"}
        and type(state.get("int")) is int
        and 0 <= state["int"] < 1 << 128
        and type(state.get("is_safe", 0)) is int
    )
    if not ok:
        raise UnsafeObjectError("the stream gives a UUID a malformed state")
