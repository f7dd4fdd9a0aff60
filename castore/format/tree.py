"""Tree streams: a directory snapshot as a sorted sequence of msgpack maps, one per entry.

A tree stream is stored like any other stream (chunked, deduplicated, compressed) and
recorded as a version whose manifest has kind ``"tree"`` and serializer ``"tree"``.
Entries are written and read one at a time, so no tree is ever held whole in memory;
every entry read back is validated before anyone sees it: field types and bounds, path
syntax (relative, no ``.`` or ``..``), strict ordering, and that every entry's parent
is a directory entry that came before it. The format is specified in docs/FORMAT.md,
section 20 ("Directory snapshots").
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from castore.errors import CastoreError, IntegrityError, InvalidInputError
from castore.format import wire, xattrs
from castore.format.streams import DIGEST_SIZE, StreamDescriptor
from castore.format.xattrs import Xattrs

TREE_FORMAT_VERSION = 3
"""Newest tree stream format this castore reads and writes; the manifest's serializer
version is its str. A snapshot records the lowest version its entries need: 3 if one has
extended attributes or is a FIFO or device, else 2 if one uses a key of version 2
(`nlink`, `hardlink`, `extents`), else 1, which every castore reads (docs/FORMAT.md,
20.1 and 20.3)."""
BASE_TREE_FORMAT_VERSION = 1
"""The version of a tree that uses no key newer than version 1."""
LINKS_TREE_FORMAT_VERSION = 2
"""The version that added hard links and sparse files."""
TREE_KIND = "tree"
"""The manifest kind of a snapshot."""
TREE_SERIALIZER = "tree"
"""The manifest serializer name of a snapshot."""

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
SKIPPED = "skipped"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
DEVICES = (CHARDEV, BLOCKDEV)
SPECIAL_TYPES = (FIFO, *DEVICES)
"""Entry types of version 3: a named pipe, a character device, a block device."""
ENTRY_TYPES = (FILE, DIR, SYMLINK, SKIPPED, *SPECIAL_TYPES)
"""Entry types: a regular file, a directory, a symbolic link, something not backed up,
and (from version 3) FIFOs and device nodes."""

MAX_PATH_BYTES = 4096
"""Longest entry path (Linux's PATH_MAX)."""
MAX_NAME_BYTES = 255
"""Longest path component (Linux's NAME_MAX)."""
MAX_TARGET_BYTES = 4096
"""Longest symlink target."""
MAX_REASON_CHARS = 1024
"""Longest skip reason; longer ones are cut when written."""
MAX_FILE_CHUNKS = 2**21
"""Most chunks one file entry may list (about 128 GiB at the default chunk size)."""
MAX_EXTENTS = 2**16
"""Most data extents one sparse file entry may list (more: the file is read whole)."""
MAX_ENTRY_BYTES = (
    MAX_FILE_CHUNKS * (DIGEST_SIZE + 5) + 64 * 1024 + MAX_EXTENTS * 20 + xattrs.MAX_XATTRS_ENCODED
)
"""Largest encoded entry a reader accepts: bounds the memory one entry can take."""
EMPTY_SHA256 = hashlib.sha256(b"").digest()

MAX_DEVICE_MAJOR = 2**12 - 1
MAX_DEVICE_MINOR = 2**20 - 1
"""Linux's device numbers: 12 bits of major, 20 of minor (what os.makedev and a tar
header's device fields hold)."""
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree: a file, directory, symlink, or a path that was skipped."""

    path: bytes
    """Relative POSIX path, ``/``-separated, as the file system's bytes."""
    type: str
    """One of ENTRY_TYPES."""
    mode: int = 0
    """Permission bits (``stat.S_IMODE``: 0 to 0o7777)."""
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    """File: bytes of content. Symlink: bytes of the target. Directory and skipped: 0."""
    uid: int = 0
    gid: int = 0
    dev: int = 0
    ino: int = 0
    sha256: bytes = b""
    """File: SHA-256 of the content."""
    chunk_ids: bytes = b""
    """File: the content's chunk ids, concatenated in order."""
    chunk_sizes: tuple[int, ...] = ()
    """File: the chunks' raw lengths."""
    target: bytes = b""
    """Symlink: the link target, as stored by the file system (never followed)."""
    reason: str = ""
    """Skipped: why the path was not backed up."""
    nlink: int = 1
    """File: the file system's link count (recorded from version 2 when above 1)."""
    hardlink: bytes = b""
    """File: the path of the earlier entry of the same inode, which it is restored as a
    link to; b"" for the first (or only) name of an inode."""
    extents: tuple[tuple[int, int], ...] | None = None
    """File: (offset, length) of the ranges holding data, the rest being holes; None for
    a file whose whole length is data. The chunks hold the extents' bytes, in order."""
    major: int = 0
    minor: int = 0
    """Device node: the device's major and minor numbers (of its st_rdev)."""
    xattrs: Xattrs = ()
    """Extended attributes (version 3): (name, value) pairs, ascending by name."""

    @property
    def path_str(self) -> str:
        """The path as a str (undecodable bytes kept as surrogates, like os.listdir)."""
        return os.fsdecode(self.path)

    @property
    def name(self) -> bytes:
        """The last component of the path."""
        return self.path.rpartition(b"/")[2]

    @property
    def parent(self) -> bytes:
        """The path of the directory holding the entry; b"" at the top."""
        return self.path.rpartition(b"/")[0]

    @property
    def stored_size(self) -> int:
        """Bytes of content in the store: the file's size, less its holes."""
        if self.extents is None:
            return self.size
        return sum(length for _, length in self.extents)

    @property
    def format_version(self) -> int:
        """The lowest tree format version that can record this entry."""
        if self.xattrs or self.type in SPECIAL_TYPES:
            return TREE_FORMAT_VERSION
        if self.nlink > 1 or self.hardlink or self.extents is not None:
            return LINKS_TREE_FORMAT_VERSION
        return BASE_TREE_FORMAT_VERSION

    def descriptor(self) -> StreamDescriptor:
        """A file entry's stored content (its data extents, if sparse) as a stream
        descriptor, for reading it from the store."""
        if self.type != FILE:
            raise InvalidInputError(f"{self.path_str} is a {self.type}, not a file")
        return StreamDescriptor(self.sha256, self.stored_size, self.chunk_ids, self.chunk_sizes)

    @classmethod
    def from_stat(cls, path: bytes, kind: str, st: os.stat_result, **content: Any) -> Entry:
        """An entry carrying `st`'s metadata; `content` gives the type-specific fields."""
        return cls(
            path=path,
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
            dev=st.st_dev,
            ino=st.st_ino,
            **content,
        )

    @classmethod
    def file(
        cls,
        path: bytes,
        st: os.stat_result,
        content: StreamDescriptor,
        *,
        hardlink: bytes = b"",
        extents: tuple[tuple[int, int], ...] | None = None,
    ) -> Entry:
        """A file entry: `st`'s metadata and the content `content` describes (the data
        `extents` of a sparse file; `hardlink` names an earlier name of its inode)."""
        return cls.from_stat(
            path,
            FILE,
            st,
            size=content.size if extents is None else st.st_size,
            sha256=content.sha256,
            chunk_ids=content.chunk_ids,
            chunk_sizes=content.chunk_sizes,
            nlink=st.st_nlink,
            hardlink=hardlink,
            extents=extents,
        )

    @classmethod
    def skipped(cls, path: bytes, reason: str) -> Entry:
        """The record of a path that was not backed up, and why."""
        return cls(path=path, type=SKIPPED, reason=reason[:MAX_REASON_CHARS])

    def to_wire(self) -> dict[str, Any]:
        """The entry's msgpack map, keys in the order of docs/FORMAT.md section 20.3."""
        if self.type == SKIPPED:
            return {"path": self.path, "type": SKIPPED, "reason": self.reason}
        fields: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "size": self.size,
            "uid": self.uid,
            "gid": self.gid,
            "dev": self.dev,
            "ino": self.ino,
        }
        if self.type == FILE:
            fields.update(sha256=self.sha256, chunks=self.chunk_ids, sizes=list(self.chunk_sizes))
            if self.nlink > 1:
                fields["nlink"] = self.nlink
            if self.hardlink:
                fields["hardlink"] = self.hardlink
            if self.extents is not None:
                fields["extents"] = [list(extent) for extent in self.extents]
        elif self.type == SYMLINK:
            fields["target"] = self.target
        elif self.type in DEVICES:
            fields.update(major=self.major, minor=self.minor)
        if self.xattrs:
            fields["xattrs"] = xattrs.to_wire(self.xattrs)
        return fields

    @classmethod
    def from_wire(cls, raw: object, what: str, version: int = TREE_FORMAT_VERSION) -> Entry:
        """Validate one decoded map (docs/FORMAT.md section 20.5) and build the entry;
        keys newer than the tree's format `version` are ignored, as unknown keys are."""
        if not isinstance(raw, dict):
            raise IntegrityError(f"{what} is not a msgpack map")
        path = wire.field(raw, "path", bytes, what)
        problem = path_problem(path)
        if problem:
            raise IntegrityError(f"{what} has an invalid path {path!r}: {problem}")
        what = f"{what} ({os.fsdecode(path)!r})"
        kind = wire.field(raw, "type", str, what)
        if kind == SKIPPED:
            return cls.skipped(path, wire.field(raw, "reason", str, what))
        if kind not in ENTRY_TYPES or (kind in SPECIAL_TYPES and version < TREE_FORMAT_VERSION):
            raise IntegrityError(f"{what} has unknown type {kind!r}")
        common = _common_fields(raw, what)
        if version >= TREE_FORMAT_VERSION and "xattrs" in raw:
            common["xattrs"] = xattrs.decode(raw, what)
        if kind == FILE:
            extra = _version2_fields(raw, path, common["size"], what) if version >= 2 else {}
            stored = common["size"]
            if extra.get("extents") is not None:
                stored = sum(length for _, length in extra["extents"])
            return cls(path=path, type=kind, **common, **_file_fields(raw, stored, what), **extra)
        if kind == SYMLINK:
            return cls(path=path, type=kind, **common, target=_target_field(raw, common, what))
        if common["size"] != 0:
            raise IntegrityError(f"{what}: a {kind} has size 0, not {common['size']}")
        if kind in DEVICES:
            common["major"] = wire.bounded_int(raw, "major", 0, MAX_DEVICE_MAJOR, what)
            common["minor"] = wire.bounded_int(raw, "minor", 0, MAX_DEVICE_MINOR, what)
        return cls(path=path, type=kind, **common)


TOP_KEYS = ("mode", "mtime_ns", "uid", "gid")
"""The keys of a snapshot's `root` metadata: the backed-up directory's own metadata."""


def top_metadata(st: os.stat_result) -> dict[str, int]:
    """The backed-up directory's own mode, mtime and owner, as the snapshot's manifest
    records them under metadata `root` (docs/FORMAT.md 20.1)."""
    return {
        "mode": stat.S_IMODE(st.st_mode),
        "mtime_ns": st.st_mtime_ns,
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def top_entry(metadata: dict[str, Any], what: str) -> Entry | None:
    """A snapshot's `root` metadata, validated, as a directory entry with the empty path
    (what a full restore gives the target); None for a snapshot that records none."""
    if "root" not in metadata:
        return None
    raw = wire.field(metadata, "root", dict, what)
    what = f"{what}, metadata 'root'"
    if set(raw) != set(TOP_KEYS):
        raise IntegrityError(f"{what} does not hold exactly {', '.join(TOP_KEYS)}")
    return Entry(
        path=b"",
        type=DIR,
        mode=wire.bounded_int(raw, "mode", 0, 0o7777, what),
        mtime_ns=wire.bounded_int(raw, "mtime_ns", *_INT64, what),
        uid=wire.bounded_int(raw, "uid", *_UINT32, what),
        gid=wire.bounded_int(raw, "gid", *_UINT32, what),
    )


def _common_fields(raw: dict[str, Any], what: str) -> dict[str, Any]:
    """The metadata fields every file, directory and symlink entry has, bounds checked."""
    return {
        "mode": wire.bounded_int(raw, "mode", 0, 0o7777, what),
        "mtime_ns": wire.bounded_int(raw, "mtime_ns", *_INT64, what),
        "ctime_ns": wire.bounded_int(raw, "ctime_ns", *_INT64, what),
        "size": wire.bounded_int(raw, "size", 0, _INT64[1], what),
        "uid": wire.bounded_int(raw, "uid", *_UINT32, what),
        "gid": wire.bounded_int(raw, "gid", *_UINT32, what),
        "dev": wire.bounded_int(raw, "dev", *_UINT64, what),
        "ino": wire.bounded_int(raw, "ino", *_UINT64, what),
    }


def _file_fields(raw: dict[str, Any], size: int, what: str) -> dict[str, Any]:
    """A file entry's content fields: digest, chunk ids and sizes that add up to `size`."""
    content: dict[str, Any] = {k: raw[k] for k in ("sha256", "chunks", "sizes") if k in raw}
    descriptor = StreamDescriptor.from_wire({**content, "size": size}, what)
    if len(descriptor.chunk_sizes) > MAX_FILE_CHUNKS:
        raise IntegrityError(f"{what} lists more than {MAX_FILE_CHUNKS} chunks")
    if size == 0 and descriptor.sha256 != EMPTY_SHA256:
        raise IntegrityError(f"{what} is empty but its SHA-256 is not that of no bytes")
    return {
        "sha256": descriptor.sha256,
        "chunk_ids": descriptor.chunk_ids,
        "chunk_sizes": descriptor.chunk_sizes,
    }


def _version2_fields(raw: dict[str, Any], path: bytes, size: int, what: str) -> dict[str, Any]:
    """A file entry's keys of tree format version 2: `nlink`, `hardlink`, `extents`."""
    extra: dict[str, Any] = {}
    if "nlink" in raw:
        extra["nlink"] = wire.bounded_int(raw, "nlink", 2, _UINT32[1], what)
    if "hardlink" in raw:
        link = wire.field(raw, "hardlink", bytes, what)
        problem = path_problem(link)
        if problem:
            raise IntegrityError(f"{what} has an invalid hardlink path {link!r}: {problem}")
        if sort_key(link) >= sort_key(path):
            raise IntegrityError(f"{what}: its hardlink {link!r} does not come before it")
        extra["hardlink"] = link
    if "extents" in raw:
        extra["extents"] = _extents_field(raw, size, what)
    return extra


def _extents_field(raw: dict[str, Any], size: int, what: str) -> tuple[tuple[int, int], ...]:
    """A sparse file's data extents: ascending, disjoint, non-empty, within `size`."""
    items = wire.field(raw, "extents", list, what)
    if len(items) > MAX_EXTENTS:
        raise IntegrityError(f"{what} lists more than {MAX_EXTENTS} extents")
    extents = []
    end = 0
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(type(value) is int for value in item)
        ):
            raise IntegrityError(f"{what}: an extent is not an array of two ints")
        offset, length = item
        if offset < end or length < 1 or offset + length > size:
            raise IntegrityError(
                f"{what}: extent [{offset}, {length}] is not after the previous one, "
                f"empty, or beyond the size {size}"
            )
        end = offset + length
        extents.append((offset, length))
    return tuple(extents)


def _target_field(raw: dict[str, Any], common: dict[str, int], what: str) -> bytes:
    """A symlink's target: 1 to MAX_TARGET_BYTES bytes without NUL, `size` long."""
    target = wire.field(raw, "target", bytes, what)
    if not 1 <= len(target) <= MAX_TARGET_BYTES or b"\0" in target:
        raise IntegrityError(f"{what} has an invalid symlink target")
    if common["size"] != len(target):
        raise IntegrityError(f"{what}: size {common['size']} is not the target's length")
    return target


def path_problem(path: bytes) -> str | None:
    """Why `path` cannot be an entry path, or None if it can."""
    if not 1 <= len(path) <= MAX_PATH_BYTES:
        return f"paths are 1 to {MAX_PATH_BYTES} bytes long"
    if b"\0" in path:
        return "it contains a NUL byte"
    if path.startswith(b"/"):
        return "it is absolute"
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            return "it has an empty, '.' or '..' component"
        if len(part) > MAX_NAME_BYTES:
            return f"a component is longer than {MAX_NAME_BYTES} bytes"
    return None


def sort_key(path: bytes) -> bytes:
    """The order of entries: byte order of the path with ``/`` read as byte 0.

    Components cannot contain NUL, so this is component-wise order: a directory comes
    right before its contents, and its contents are contiguous (depth-first order).
    """
    return path.replace(b"/", b"\0")


def normalize_path(text: str | bytes) -> bytes:
    """A path given by a user, inside a snapshot, as an entry path; b"" means the root.

    Leading ``/``, ``.`` components and repeated or trailing ``/`` are dropped
    (``/a//b/./`` is ``a/b``); ``..`` is refused with InvalidInputError.
    """
    raw = os.fsencode(text)
    parts = [part for part in raw.split(b"/") if part not in (b"", b".")]
    if b".." in parts:
        raise InvalidInputError(f"invalid path {text!r}: '..' cannot name a path in a snapshot")
    path = b"/".join(parts)
    problem = path_problem(path) if path else None
    if problem:
        raise InvalidInputError(f"invalid path {text!r}: {problem}")
    return path


def is_within(path: bytes, top: bytes) -> bool:
    """Whether `path` is `top` or inside it (b"" is the root, which holds everything)."""
    return not top or path == top or path.startswith(top + b"/")


class TreeOrder:
    """Checks that entries come in strictly ascending order, each under a directory entry,
    and that every hard link names an earlier file entry with the same content.

    It keeps the chain of directories above the current entry, and the file entries
    that other names may link to (those with `nlink` above 1), so checking takes memory
    proportional to the depth of the tree and the number of multiply-linked files.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._previous: Entry | None = None
        self._open_dirs: list[bytes] = []
        self._link_targets: dict[bytes, tuple[bytes, int, object]] = {}
        self.count = 0
        """Entries checked so far."""

    def check(self, entry: Entry) -> None:
        """Accept the next entry, or raise IntegrityError saying what is wrong."""
        previous = self._previous
        if previous is not None and sort_key(entry.path) <= sort_key(previous.path):
            relation = "repeats" if entry.path == previous.path else "comes after"
            raise IntegrityError(
                f"{self._what}: entry {entry.path_str!r} {relation} {previous.path_str!r}: "
                "entries must be in strictly ascending path order"
            )
        parent = entry.parent
        while self._open_dirs and self._open_dirs[-1] != parent:
            self._open_dirs.pop()
        if parent and not self._open_dirs:
            raise IntegrityError(
                f"{self._what}: entry {entry.path_str!r} is not inside a directory entry of "
                "the tree (its parent is missing, or is a file or symlink)"
            )
        if entry.type == DIR:
            self._open_dirs.append(entry.path)
        elif entry.type == FILE:
            self._check_link(entry)
        self._previous = entry
        self.count += 1

    def _check_link(self, entry: Entry) -> None:
        content = (entry.sha256, entry.size, entry.extents)
        if not entry.hardlink:
            if entry.nlink > 1:
                self._link_targets[entry.path] = content
            return
        if self._link_targets.get(entry.hardlink) != content:
            raise IntegrityError(
                f"{self._what}: entry {entry.path_str!r} is a hard link of "
                f"{os.fsdecode(entry.hardlink)!r}, which is not an earlier file entry "
                "(with nlink above 1 and no hardlink of its own) of the same content"
            )


class TreeWriter:
    """Encodes entries, in order, into a writable binary sink (a StreamWriter)."""

    FLUSH_BYTES = 1024 * 1024

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._packer = msgpack.Packer(use_bin_type=True)
        self._order = TreeOrder("tree being written")
        self._buffer = bytearray()
        self.version = BASE_TREE_FORMAT_VERSION
        """The tree format version the entries written so far need."""

    @property
    def count(self) -> int:
        """Entries written so far."""
        return self._order.count

    def add(self, entry: Entry) -> None:
        """Append one entry; IntegrityError if it is out of order or invalid."""
        problem = path_problem(entry.path)
        if problem:
            raise IntegrityError(f"cannot write entry {entry.path!r}: {problem}")
        self._order.check(entry)
        self.version = max(self.version, entry.format_version)
        self._buffer += self._packer.pack(entry.to_wire())
        if len(self._buffer) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand the encoded entries to the sink."""
        if self._buffer:
            self._write(bytes(self._buffer))
            self._buffer.clear()


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise ValueError("a map repeats a key")
    return mapping


def read_tree(
    file: BinaryIO, size: int, what: str, version: int = TREE_FORMAT_VERSION
) -> Iterator[Entry]:
    """Decode and validate a tree stream of `size` bytes and format `version`, entry by
    entry.

    Any malformation (bad msgpack, an entry over MAX_ENTRY_BYTES, a field of the wrong
    type, a bad path, disorder, trailing bytes) is an IntegrityError naming `what`.
    """
    unpacker = msgpack.Unpacker(
        file,
        read_size=256 * 1024,
        max_buffer_size=MAX_ENTRY_BYTES,
        raw=False,
        strict_map_key=True,
        object_pairs_hook=_unique_map,
        max_ext_len=0,
    )
    order = TreeOrder(what)
    while (raw := _next_value(unpacker, what, order.count)) is not _END:
        entry = Entry.from_wire(raw, f"{what}, entry {order.count}", version)
        order.check(entry)
        yield entry
    _check_end(unpacker, size, what)


def _check_end(unpacker: msgpack.Unpacker, size: int, what: str) -> None:
    """After the last entry: the stream must end exactly there."""
    try:
        rest = unpacker.read_bytes(1)
    except ValueError:  # msgpack's way of saying that an incomplete value is buffered
        rest = b"?"
    if rest or unpacker.tell() != size:
        raise IntegrityError(f"{what} ends with bytes that are not a whole entry")


_END = object()


def _next_value(unpacker: msgpack.Unpacker, what: str, number: int) -> object:
    """The next decoded value, _END at the end; undecodable data is an IntegrityError."""
    try:
        return next(unpacker)
    except StopIteration:
        return _END
    except CastoreError:
        raise  # the stream itself failed verification
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise IntegrityError(f"{what}: entry {number} is not valid msgpack: {exc!r}") from exc
