"""Reading snapshots back: find a snapshot's manifest, list its entries, open its files,
diff two of them, and find the snapshots that hold matching paths.

Both listing and diffing stream the tree (castore.format.tree) in path order: a subtree
is contiguous, and two trees merge by path like two sorted lists.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from castore.errors import InvalidInputError, NotFoundError
from castore.format.manifest import Manifest
from castore.format.tree import (
    FILE,
    SKIPPED,
    SYMLINK,
    TREE_KIND,
    TREE_SERIALIZER,
    Entry,
    is_within,
    normalize_path,
    sort_key,
)
from castore.versions import catalog
from castore.versions.catalog import Version
from castore.versions.contents import check_tree_manifest, tree_entries

if TYPE_CHECKING:
    from castore.engine.reader import VerifiedStream
    from castore.engine.repository import Repository


@dataclass(frozen=True)
class Change:
    """One difference between two snapshots."""

    kind: str
    """"added", "removed" or "changed"."""
    path: bytes
    before: Entry | None
    after: Entry | None
    what: tuple[str, ...] = ()
    """For "changed": which of "type", "content", "target", "device", "reason", "mode",
    "mtime", "xattrs"."""

    @property
    def path_str(self) -> str:
        """The path as a str."""
        return os.fsdecode(self.path)


def snapshot_manifest(repo: Repository, ref: str) -> Manifest:
    """The manifest of the snapshot `ref` designates; InvalidInputError if not a backup."""
    manifest, _ = catalog.resolve(repo, ref)
    check_tree_manifest(manifest, ref)
    return manifest


def list_snapshot(repo: Repository, ref: str, path: str | bytes | None = None) -> Iterator[Entry]:
    """The entries of a snapshot in path order; with `path`, that entry and all below it.

    NotFoundError (raised when the listing ends) if the snapshot has no such path.
    """
    manifest = snapshot_manifest(repo, ref)
    top = normalize_path(path) if path is not None else b""
    return _list_entries(repo, manifest, top, f"{ref} has no path {path!r}")


def find_entry(repo: Repository, ref: str, path: str | bytes) -> Entry:
    """The entry at `path` in snapshot `ref`; NotFoundError if it has none."""
    wanted = normalize_path(path)
    for entry in list_snapshot(repo, ref, path):
        return entry if entry.path == wanted else _absent(ref, path)
    return _absent(ref, path)


def _absent(ref: str, path: str | bytes) -> Entry:
    raise NotFoundError(f"{ref} has no path {path!r}")


def open_file(repo: Repository, ref: str, path: str | bytes) -> VerifiedStream:
    """A seekable readable file over the content of file `path` in snapshot `ref`, every
    chunk verified before its bytes are returned (the tree is proven by the version
    digest, so every read is, wherever it starts); the holes of a sparse file read as
    zeros."""
    entry = find_entry(repo, ref, path)
    if entry.type != FILE:
        raise InvalidInputError(f"{path!r} in {ref} is a {entry.type}, not a file")
    return open_entry(repo, entry)


def open_entry(repo: Repository, entry: Entry) -> VerifiedStream:
    """A seekable readable file over a file entry of a snapshot already resolved."""
    if entry.extents is None:
        return repo.open_descriptor(entry.descriptor(), authenticated=True)
    return repo.open_sparse(entry.descriptor(), entry.extents, entry.size)


def entries_below(repo: Repository, manifest: Manifest, path: str | bytes) -> Iterator[Entry]:
    """The entries of a resolved snapshot at `path` and below it, in path order
    (NotFoundError, raised when the listing ends, if there is no such path)."""
    missing = f"version {manifest.number} of {manifest.name} has no path {path!r}"
    return _list_entries(repo, manifest, normalize_path(path), missing)


@dataclass(frozen=True)
class PathMatches:
    """The entries of one snapshot that matched the patterns of a find."""

    version: Version
    """The snapshot."""
    entries: list[Entry]
    """The matching entries, in path order, without their chunk lists (open a file with
    Store.open_snapshot_file)."""


def _listed(entry: Entry) -> Entry:
    """The entry without its chunk list, which a listing does not need (a file of many
    chunks would otherwise hold ~40 bytes per chunk in every match)."""
    return replace(entry, chunk_ids=b"", chunk_sizes=()) if entry.chunk_ids else entry


def path_matcher(patterns: list[str]) -> Callable[[Entry], bool]:
    """restic's find rules: a pattern with a ``/`` matches the whole path (from the
    snapshot's root, a leading ``/`` optional), one without matches the last component;
    ``*``, ``?`` and ``[...]`` as in shell globs, within one component (``*`` never
    matches a ``/``), case-sensitive. Any pattern may match."""
    if not patterns:
        raise InvalidInputError("find needs at least one pattern")
    whole = [os.fsencode(p.strip("/")).split(b"/") for p in patterns if "/" in p]
    last = [os.fsencode(p) for p in patterns if "/" not in p]

    def matches(entry: Entry) -> bool:
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in last):
            return True
        parts = entry.path.split(b"/")
        return any(
            len(parts) == len(pattern) and all(map(fnmatch.fnmatchcase, parts, pattern))
            for pattern in whole
        )

    return matches


def find_paths(
    repo: Repository, patterns: list[str], names: Iterable[str] | None = None
) -> Iterator[PathMatches]:
    """Every snapshot, of `names` (default: every name of the store), that holds an
    entry matching one of `patterns` (see `path_matcher`), oldest version first, with
    those entries in path order. Versions that are not snapshots are passed over."""
    matches = path_matcher(patterns)
    for name in catalog.names(repo) if names is None else names:
        for number in catalog.versions(repo, name):
            manifest, digest = catalog.resolve(repo, f"{name}:{number}")
            if manifest.kind != TREE_KIND or manifest.serializer != TREE_SERIALIZER:
                continue
            check_tree_manifest(manifest, f"{name}:{number}")  # damaged or newer: stop
            with tree_entries(repo, manifest) as entries:
                found = [_listed(entry) for entry in entries if matches(entry)]
            if found:
                yield PathMatches(Version.of(manifest, digest), found)


def _list_entries(
    repo: Repository, manifest: Manifest, top: bytes, missing: str
) -> Iterator[Entry]:
    found = False
    with tree_entries(repo, manifest) as entries:
        for entry in entries:
            if is_within(entry.path, top):
                found = True
                yield entry
            elif found:
                break  # a subtree is contiguous in path order: nothing more below `top`
    if top and not found:
        raise NotFoundError(missing)


def diff_snapshots(repo: Repository, a: str, b: str) -> Iterator[Change]:
    """What changed from snapshot `a` to snapshot `b`, in path order, streamed.

    Files differ in "content" when their SHA-256 differ; "mode", "mtime", "type" and
    "target" (of symlinks) are reported too. Directories differ only by type or mode.
    """
    before, after = snapshot_manifest(repo, a), snapshot_manifest(repo, b)
    return _diff_entries(repo, before, after)


def _diff_entries(repo: Repository, a: Manifest, b: Manifest) -> Iterator[Change]:
    with tree_entries(repo, a) as old, tree_entries(repo, b) as new:
        for before, after in _merge(old, new):
            if before is None:
                assert after is not None
                yield Change("added", after.path, None, after)
            elif after is None:
                yield Change("removed", before.path, before, None)
            elif what := _differences(before, after):
                yield Change("changed", after.path, before, after, what)


def _merge(
    old: Iterator[Entry], new: Iterator[Entry]
) -> Iterator[tuple[Entry | None, Entry | None]]:
    """Pair the entries of two sorted trees by path (None where one tree lacks it)."""
    left, right = next(old, None), next(new, None)
    while left is not None or right is not None:
        left_key = sort_key(left.path) if left is not None else None
        right_key = sort_key(right.path) if right is not None else None
        if right_key is None or (left_key is not None and left_key < right_key):
            yield left, None
            left = next(old, None)
        elif left_key is None or right_key < left_key:
            yield None, right
            right = next(new, None)
        else:
            yield left, right
            left, right = next(old, None), next(new, None)


def _differences(before: Entry, after: Entry) -> tuple[str, ...]:
    if before.type != after.type:
        return ("type",)
    checks = {
        "content": before.type == FILE and before.sha256 != after.sha256,
        "target": before.type == SYMLINK and before.target != after.target,
        "device": (before.major, before.minor) != (after.major, after.minor),
        "reason": before.type == SKIPPED and before.reason != after.reason,
        "mode": before.mode != after.mode,
        "mtime": before.type == FILE and before.mtime_ns != after.mtime_ns,
        "xattrs": before.xattrs != after.xattrs,
    }
    return tuple(name for name, differs in checks.items() if differs)
