"""Extended attributes on the file system: which ones a backup reads, reading them.

A backup records ``user.*`` attributes always and, as root, the privileged namespaces
(``security.*``, ``trusted.*``) and the POSIX ACLs, which only root can read in full.
Nothing here follows a symlink.
"""

from __future__ import annotations

import errno
import os

from castore.format import xattrs
from castore.format.xattrs import Xattrs

UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
"""What a file system without extended attributes (or without them on this kind of
file) answers."""


def recorded(name: bytes, privileged: bool) -> bool:
    """Whether a backup records the attribute `name` (`privileged`: it runs as root)."""
    if name.startswith(xattrs.USER_PREFIX):
        return True
    return privileged and (xattrs.is_privileged(name) or name in xattrs.ACL_NAMES)


def read_xattrs(path: str, privileged: bool) -> Xattrs:
    """The recorded attributes of `path` (never following a symlink), in order of name;
    none on a file system without them. OSError if they cannot be read or exceed the
    bounds of one entry (docs/FORMAT.md 20.3)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return ()
        raise
    found = []
    for name in sorted(os.fsencode(name) for name in names):
        if not recorded(name, privileged) or xattrs.name_problem(name):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed since the listing
                continue
            raise
        found.append((name, value))
    pairs = tuple(found)
    problem = xattrs.bounds_problem(pairs)
    if problem:
        raise OSError(errno.E2BIG, problem)
    return pairs
