"""A snapshot's contents as one stream (restic's dump): a file's bytes, or a folder as a
tar archive, read straight from the store without restoring anything."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from contextlib import closing
from typing import TYPE_CHECKING, BinaryIO

from castore.errors import IntegrityError, InvalidInputError, NotFoundError
from castore.format.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    SYMLINK,
    Entry,
    is_within,
    normalize_path,
)
from castore.snapshots.browse import entries_below, open_entry, snapshot_manifest
from castore.snapshots.restore import SETID_BITS
from castore.snapshots.xattr_restore import restorable

if TYPE_CHECKING:
    from castore.engine.repository import Repository

ARCHIVES = ("tar",)
"""Archive formats `dump` writes a folder as."""
_NODE_MEMBERS = {FIFO: tarfile.FIFOTYPE, CHARDEV: tarfile.CHRTYPE, BLOCKDEV: tarfile.BLKTYPE}
XATTR_PAX_PREFIX = "SCHILY.xattr."
"""The pax header of an extended attribute, as GNU tar and star write and read it."""
COPY_BLOCK = 1024 * 1024


def _check_content(repo: Repository, entry: Entry) -> None:
    """Read a file entry's stored bytes once and check them against its SHA-256, before
    any is written out: a tree whose digest and chunks disagree is damage, and `diff`
    and `ls` go by the digest. Every chunk is verified against its id on both reads,
    and the second read of a remote store comes from the local cache."""
    whole = hashlib.sha256()
    with closing(repo.iter_chunks(entry.descriptor(), authenticated=True)) as chunks:
        for chunk in chunks:
            whole.update(chunk)
    if whole.digest() != entry.sha256:
        raise IntegrityError(
            f"{entry.path_str!r} reads as sha256:{whole.hexdigest()}, not as the "
            f"sha256:{entry.sha256.hex()} its snapshot records: the snapshot is damaged"
        )


def _copy_checked(repo: Repository, entry: Entry, out: BinaryIO) -> None:
    _check_content(repo, entry)
    with open_entry(repo, entry) as source:
        shutil.copyfileobj(source, out, COPY_BLOCK)


def dump_file(repo: Repository, ref: str, path: str, out: BinaryIO) -> int:
    """Write the content of file `path` of snapshot `ref` to `out`; return its size.

    The file is checked against its SHA-256 before its first byte is written, and every
    chunk against its id (the tree is proven by the version digest), so what reaches
    `out` is the backed-up content or nothing.
    """
    manifest = snapshot_manifest(repo, ref)
    top = normalize_path(path)
    if not top:
        raise InvalidInputError(f"the root of {ref} is a directory: dump it with --archive tar")
    entry = next(entries_below(repo, manifest, top), None)
    if entry is None or entry.path != top:
        raise NotFoundError(f"{ref} has no path {path!r}")
    if entry.type == DIR:
        raise InvalidInputError(
            f"{path!r} in {ref} is a directory: dump it as an archive (--archive tar)"
        )
    if entry.type != FILE:
        raise InvalidInputError(f"{path!r} in {ref} is a {entry.type}, not a file")
    _copy_checked(repo, entry, out)
    return entry.size


def dump_tar(repo: Repository, ref: str, path: str, out: BinaryIO, *, devices: bool = False) -> int:
    """Write `path` of snapshot `ref` (a folder with everything below it, or one file;
    "" or "/" for the whole snapshot) to `out` as a POSIX (pax) tar stream; return the
    number of members.

    Members are named by their paths in the snapshot and keep their modes (less setuid
    and setgid, which restore also drops unless asked), owners (by number) and mtimes; a
    second name of a hard-linked file is a hard link member when its first name is in
    the archive. FIFOs are members of their type; device nodes only with `devices` (tar
    run as root makes them: a planted block device would be the raw disk). Extended
    attributes are ``SCHILY.xattr.*`` pax headers, but not those of the security and
    trusted namespaces, which restore also leaves out unless asked. Entries the backup
    skipped have no member. Each file is checked against
    its SHA-256 before its member is written, so a damaged file ends the stream with
    IntegrityError before any of its bytes.
    """
    manifest = snapshot_manifest(repo, ref)
    top = normalize_path(path)
    members = 0
    with tarfile.open(
        fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as archive:
        for entry in entries_below(repo, manifest, top):
            info = _member(entry, linked=bool(entry.hardlink) and is_within(entry.hardlink, top))
            if info is None or (info.isdev() and not info.isfifo() and not devices):
                continue
            if info.type == tarfile.REGTYPE:
                _check_content(repo, entry)
                with open_entry(repo, entry) as source:
                    archive.addfile(info, source)
            else:
                archive.addfile(info)
            members += 1
    return members


def _member(entry: Entry, *, linked: bool) -> tarfile.TarInfo | None:
    """The tar header of an entry (None for a skipped path); `linked` makes a file a
    hard link to its first name."""
    info = tarfile.TarInfo(entry.path_str or ".")
    info.mode, info.uid, info.gid = entry.mode & ~SETID_BITS, entry.uid, entry.gid
    info.mtime = entry.mtime_ns / 1e9  # pax keeps the fraction
    if entry.type == DIR:
        info.type = tarfile.DIRTYPE
    elif entry.type == SYMLINK:
        info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(entry.target)
    elif entry.type == FILE and linked:
        info.type, info.linkname = tarfile.LNKTYPE, os.fsdecode(entry.hardlink)
    elif entry.type == FILE:
        info.size = entry.size
    elif entry.type in _NODE_MEMBERS:
        info.type, info.devmajor, info.devminor = (
            _NODE_MEMBERS[entry.type],
            entry.major,
            entry.minor,
        )
    else:
        return None
    # tarfile writes a value that is not UTF-8 as the same bytes, with hdrcharset BINARY;
    # a pax keyword must be UTF-8 and cannot hold "=", so such names have no header.
    info.pax_headers = {
        XATTR_PAX_PREFIX + keyword: value.decode("utf-8", "surrogateescape")
        for name, value in restorable(entry.xattrs, privileged=False)
        if (keyword := _pax_keyword(name)) is not None
    }
    return info


def _pax_keyword(name: bytes) -> str | None:
    """An attribute name as a pax keyword, or None if pax cannot carry it."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "=" in text else text
