"""msgpack encoding of stored structures and strict, bounded decoding of untrusted bytes."""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from castore.errors import IntegrityError, UnsupportedFormatError

T = TypeVar("T")


def encode(value: Any) -> bytes:
    """Encode a structure of maps, lists, str, bytes, ints and floats as msgpack."""
    return msgpack.packb(value, use_bin_type=True)


def decode_map(data: bytes, what: str) -> dict[str, Any]:
    """Decode one msgpack map from `data`; any malformation is an IntegrityError.

    Lengths inside the data can never exceed the data itself (msgpack bounds them by
    the buffer size), so an absurd length field cannot make us allocate.
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise IntegrityError(f"{what} is not valid msgpack: {exc}") from exc
    if not isinstance(value, dict):
        raise IntegrityError(f"{what} is not a msgpack map")
    deepest = depth_of(value)
    if deepest > MAX_DEPTH:
        raise IntegrityError(f"{what} nests more than {MAX_DEPTH} levels deep")
    return value


MAX_DEPTH = 32
"""Deepest nesting of maps and lists a stored structure may have."""


def depth_of(value: Any) -> int:
    """How deeply maps and lists nest in `value` (iteratively: absurd input cannot recurse).

    Absurdly nested data is refused, because repr, json and comparisons of it recurse.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def field(mapping: dict[str, Any], key: str, kind: type[T], what: str) -> T:
    """Return mapping[key] after checking it exists and has type `kind` (bool is no int)."""
    if key not in mapping:
        raise IntegrityError(f"{what} lacks the field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IntegrityError(
            f"{what} field {key!r} should be {kind.__name__}, not {type(value).__name__}"
        )
    return value


def bounded_int(mapping: dict[str, Any], key: str, low: int, high: int, what: str) -> int:
    """Return an integer field after checking low <= value <= high."""
    value = field(mapping, key, int, what)
    if not low <= value <= high:
        raise IntegrityError(f"{what} field {key!r} = {value} is outside [{low}, {high}]")
    return value


def check_version(mapping: dict[str, Any], supported: int, what: str) -> int:
    """The object's `version` field; newer than `supported` means a newer castore wrote it."""
    version = bounded_int(mapping, "version", 1, 2**31, what)
    if version > supported:
        raise UnsupportedFormatError(
            f"{what} has format version {version}; this castore reads up to {supported}: "
            "upgrade castore"
        )
    return version
