"""Restoring extended attributes: which a restore may set, and setting them safely.

``user.*`` attributes are set by default; ``security.*``, ``trusted.*`` and the POSIX
ACLs only with the opt-in that keeps setuid and setgid bits (as root, owners restored):
a planted ``security.capability`` grants a program root's powers as surely as a setuid
bit, and an ACL grants named users access that the mode bits do not, to the restored
files and (a default ACL) to every file later made in a restored folder. Attributes are
set on an open descriptor, or on a path that resolves through an open directory
descriptor without following the last component: never through a symlink.
"""

from __future__ import annotations

import errno
import os
import threading

from castore.format import xattrs
from castore.format.xattrs import Xattrs

REFUSED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)
"""What a file system answers that has no extended attributes, or none of this kind on
this kind of file (Linux refuses ``user.*`` on symlinks and special files with EPERM)."""


def restorable(pairs: Xattrs, privileged: bool) -> Xattrs:
    """The attributes a restore sets: all, or with `privileged` False none of the
    security and trusted namespaces and no ACL."""
    return pairs if privileged else tuple(p for p in pairs if not xattrs.is_privileged(p[0]))


def proc_path(fd: int, name: bytes = b"") -> bytes:
    """A path to what `fd` is open on (or to `name` in the directory `fd` is open on) that
    the kernel resolves through the descriptor itself, not by walking names: so an
    O_PATH descriptor of a FIFO or device can be chmodded, and a symlink's attributes
    set, without opening the device or following the link."""
    return b"/proc/self/fd/%d" % fd + (b"/" + name if name else b"")


class XattrWriter:
    """Sets an entry's attributes; counts those the target file system refused."""

    def __init__(self, enabled: bool, privileged: bool) -> None:
        self.enabled = enabled
        """Whether attributes are restored at all."""
        self.privileged = privileged
        """Whether security.*, trusted.* and ACLs are."""
        self._lock = threading.Lock()
        self.refused = 0
        """Attributes the target file system would not take (counted, not fatal)."""

    def stripped(self, pairs: Xattrs) -> int:
        """How many of `pairs` the policy leaves out (0 when attributes are not restored)."""
        return len(pairs) - len(restorable(pairs, self.privileged)) if self.enabled else 0

    def apply(self, target: int | bytes, pairs: Xattrs, *, follow_symlinks: bool = True) -> None:
        """Set the restorable `pairs` on `target` (a descriptor, or a path from proc_path
        with `follow_symlinks` False for a symlink)."""
        if not self.enabled:
            return
        refused = 0
        for name, value in restorable(pairs, self.privileged):
            try:
                os.setxattr(target, name, value, follow_symlinks=follow_symlinks)
            except OSError as exc:
                if exc.errno not in REFUSED:
                    raise
                refused += 1
        if refused:
            with self._lock:
                self.refused += refused
