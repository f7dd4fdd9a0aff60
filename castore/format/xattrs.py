"""Extended attributes of tree entries (tree format version 3): names, bounds, decoding.

An entry's extended attributes are recorded as an array of [name, value] pairs of bin,
in ascending order of their names, so that one set of attributes has one encoding. Only
the namespaces castore backs up are valid: ``user.*``, ``security.*``, ``trusted.*`` and
the two POSIX ACLs (``system.posix_acl_access``, ``system.posix_acl_default``). The
format is specified in docs/FORMAT.md, sections 20.3 and 20.5 (V11).
"""

from __future__ import annotations

from typing import Any

from castore.errors import IntegrityError
from castore.format import wire

Xattrs = tuple[tuple[bytes, bytes], ...]
"""(name, value) pairs in ascending order of name."""

USER_PREFIX = b"user."
PRIVILEGED_PREFIXES = (b"security.", b"trusted.")
"""Namespaces only root reads and writes, whose attributes change what the kernel or a
security module grants (file capabilities, SELinux labels, IMA hashes, overlay redirects)."""
ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
"""The POSIX ACLs, which travel as these two attributes."""
MAX_XATTRS = 1024
"""Most attributes one entry may record."""
MAX_XATTR_NAME_BYTES = 255
"""Longest attribute name (Linux's XATTR_NAME_MAX)."""
MAX_XATTR_VALUE_BYTES = 65536
"""Longest attribute value (Linux's XATTR_SIZE_MAX)."""
MAX_XATTR_BYTES = 1024 * 1024
"""Most bytes of names and values one entry may record, all attributes together."""
MAX_XATTRS_ENCODED = MAX_XATTR_BYTES + MAX_XATTRS * 16
"""Bound on the encoding of one entry's attributes (16 bytes of msgpack framing each)."""


def name_problem(name: bytes) -> str | None:
    """Why `name` cannot be a recorded attribute name, or None if it can."""
    if not 1 <= len(name) <= MAX_XATTR_NAME_BYTES or b"\0" in name:
        return f"names are 1 to {MAX_XATTR_NAME_BYTES} bytes without NUL"
    if name in ACL_NAMES:
        return None
    for prefix in (USER_PREFIX, *PRIVILEGED_PREFIXES):
        if name.startswith(prefix):
            return None if len(name) > len(prefix) else "the name is only a namespace"
    return "not in the user, security or trusted namespace, nor a POSIX ACL"


def is_privileged(name: bytes) -> bool:
    """Whether the attribute grants what mode bits cannot: security and trusted (only
    root may set them), and the POSIX ACLs (named users and groups, and defaults that
    every file later made in a folder inherits)."""
    return name.startswith(PRIVILEGED_PREFIXES) or name in ACL_NAMES


def bounds_problem(xattrs: Xattrs) -> str | None:
    """Why the attributes cannot all be recorded in one entry (count, sizes), or None."""
    if len(xattrs) > MAX_XATTRS:
        return f"more than {MAX_XATTRS} extended attributes"
    if any(len(value) > MAX_XATTR_VALUE_BYTES for _, value in xattrs):
        return f"an extended attribute value is over {MAX_XATTR_VALUE_BYTES} bytes"
    if sum(len(name) + len(value) for name, value in xattrs) > MAX_XATTR_BYTES:
        return f"extended attributes over {MAX_XATTR_BYTES} bytes in all"
    return None


def to_wire(xattrs: Xattrs) -> list[list[bytes]]:
    """The attributes' msgpack value: [name, value] pairs, in order."""
    return [[name, value] for name, value in xattrs]


def decode(raw: dict[str, Any], what: str) -> Xattrs:
    """An entry's `xattrs` key: 1 to MAX_XATTRS pairs of bin, names valid and strictly
    ascending, within the bounds; anything else is an IntegrityError."""
    items = wire.field(raw, "xattrs", list, what)
    if not 1 <= len(items) <= MAX_XATTRS:
        raise IntegrityError(f"{what} records 0 or more than {MAX_XATTRS} extended attributes")
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or not all(type(v) is bytes for v in item):
            raise IntegrityError(f"{what}: an extended attribute is not a pair of bin")
        name, value = item
        problem = name_problem(name)
        if problem:
            raise IntegrityError(f"{what} has an invalid extended attribute {name!r}: {problem}")
        if pairs and name <= pairs[-1][0]:
            raise IntegrityError(f"{what}: extended attribute names are not strictly ascending")
        pairs.append((name, value))
    result = tuple(pairs)
    problem = bounds_problem(result)
    if problem:
        raise IntegrityError(f"{what} records {problem}")
    return result
