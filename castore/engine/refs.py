"""Ref objects under ``refs/``: version refs taken exclusively, tags as event logs.

A version number is taken by exclusively creating ``refs/<name>/@versions/<n>``; a tag is
a log of events ``refs/<name>/@tags/<tag>/<n>``, each created exclusively, the newest
being the tag's value. ``@`` cannot occur in names, so no name's refs hide another's.
A version ref that a copy created says so (``copied``): the numbers below it may be
absent from this store, because a copy brings one version without its predecessors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from castore.backend import Backend, read_bounded
from castore.errors import ConflictError, IntegrityError, ObjectExistsError, ObjectNotFoundError
from castore.format import layout, wire
from castore.format.digests import format_digest
from castore.format.names import NAME_PATTERN, NUMBER_PATTERN, TAG_PATTERN

MAX_REF_OBJECT = 4096
_REF_PATH = re.compile(
    rf"{layout.REFS}/(?:{NAME_PATTERN.pattern})/"
    rf"(?:{layout.VERSIONS}|{layout.TAGS}/{TAG_PATTERN.pattern})/{NUMBER_PATTERN.pattern}"
)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class VersionRef:
    """What ``refs/<name>/@versions/<n>`` holds: the manifest digest, or a tombstone."""

    manifest: bytes
    deleted: str | None = None
    copied: str | None = None
    """When a copy from another store created the ref; None for a version saved here."""


@dataclass(frozen=True)
class TagEvent:
    """One entry of a tag's history: the version it was set to, or None when removed."""

    sequence: int
    version: int | None
    manifest: bytes | None
    time: str

    @property
    def digest(self) -> str | None:
        """The version's manifest digest as every other report writes it ("sha256:<hex>")."""
        return format_digest(self.manifest) if self.manifest is not None else None


class RefStore:
    """Reads and writes the ref objects of one store."""

    def __init__(self, backend: Backend, before_publish: Callable[[], None] | None = None) -> None:
        self._backend = backend
        self._before_publish = before_publish or (lambda: None)

    # -- reading --------------------------------------------------------------------------

    def _read(self, path: str) -> dict[str, Any]:
        data = read_bounded(self._backend, path, MAX_REF_OBJECT)
        if len(data) > MAX_REF_OBJECT:
            raise IntegrityError(f"ref object {path} is {len(data)} bytes, too large")
        return wire.decode_map(data, f"ref object {path}")

    @staticmethod
    def _numbers(paths: list[str], folder: str) -> list[int]:
        numbers = []
        for path in paths:
            last = path[len(folder) + 1 :]
            if NUMBER_PATTERN.fullmatch(last):
                numbers.append(int(last))
        return sorted(numbers)

    # -- names and versions -----------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name with at least one version ref (deleted or not)."""
        return list(self.version_numbers_by_name())

    def version_numbers_by_name(self) -> dict[str, list[int]]:
        """Every name, in order, with its version numbers as `version_numbers` gives them,
        from one recursive listing of ``refs/`` (not one more per name)."""
        marker = f"/{layout.VERSIONS}/"
        found: dict[str, list[int]] = {}
        for path in self._backend.list(layout.REFS):
            head, sep, last = path.partition(marker)
            name = head[len(layout.REFS) + 1 :]
            if sep and NAME_PATTERN.fullmatch(name):  # stray objects under refs/ name nothing
                numbers = found.setdefault(name, [])
                if NUMBER_PATTERN.fullmatch(last):
                    numbers.append(int(last))
        return {name: sorted(found[name]) for name in sorted(found)}

    def strays(self) -> list[str]:
        """Objects under ``refs/`` that are neither a version ref nor a tag event.

        castore never writes them; maintenance reports them rather than guess what they
        were meant to keep alive.
        """
        return [p for p in self._backend.list(layout.REFS) if not _REF_PATH.fullmatch(p)]

    def version_numbers(self, name: str) -> list[int]:
        """Every version number ever taken for `name`, ascending (deleted ones included)."""
        folder = layout.versions_folder(name)
        return self._numbers(self._backend.list(folder), folder)

    def read_version(self, name: str, number: int) -> VersionRef | None:
        """The ref of one version, or None if that number was never taken."""
        path = layout.version_ref_path(name, number)
        try:
            raw = self._read(path)
        except ObjectNotFoundError:
            return None
        manifest = wire.field(raw, "manifest", bytes, f"ref object {path}")
        if len(manifest) != 32:
            raise IntegrityError(f"ref object {path} holds a malformed digest")
        deleted, copied = raw.get("deleted"), raw.get("copied")
        if deleted is not None and not isinstance(deleted, str):
            raise IntegrityError(f"ref object {path} has a malformed deletion time")
        if copied is not None and not isinstance(copied, str):
            raise IntegrityError(f"ref object {path} has a malformed copy time")
        return VersionRef(manifest, deleted or None, copied or None)

    @staticmethod
    def _live(manifest: bytes, copied: bool) -> bytes:
        now = _now()
        return wire.encode(
            {"manifest": manifest, "created": now, **({"copied": now} if copied else {})}
        )

    def create_version(
        self, name: str, number: int, manifest: bytes, *, copied: bool = False
    ) -> None:
        """Take version `number`; raise ObjectExistsError if another writer took it first.

        `copied` marks a ref that a copy from another store creates (FORMAT.md 12.1).
        """
        path = layout.version_ref_path(name, number)
        self._before_publish()
        self._backend.create(path, self._live(manifest, copied))

    def restore_version(self, name: str, number: int, manifest: bytes) -> None:
        """Replace a tombstone by a live, copied ref to the same manifest (FORMAT.md 19)."""
        path = layout.version_ref_path(name, number)
        self._before_publish()
        self._backend.write(path, self._live(manifest, copied=True))

    def mark_deleted(self, name: str, number: int, manifest: bytes) -> None:
        """Replace a version ref by a tombstone that keeps its digest for the hash chain,
        and the time of its copy if a copy created it."""
        path = layout.version_ref_path(name, number)
        current = self.read_version(name, number)
        copied = {"copied": current.copied} if current and current.copied else {}
        self._backend.write(path, wire.encode({"manifest": manifest, "deleted": _now(), **copied}))

    # -- tags -------------------------------------------------------------------------------

    def tag_names(self, name: str) -> list[str]:
        """Every tag that has ever been set on `name`."""
        prefix = layout.tags_folder(name) + "/"
        found = set()
        for path in self._backend.list(layout.tags_folder(name)):
            tag, _, _ = path[len(prefix) :].partition("/")
            found.add(tag)
        return sorted(found)

    def tag_history(self, name: str, tag: str) -> list[TagEvent]:
        """Every event of a tag, oldest first."""
        folder = layout.tag_folder(name, tag)
        events = []
        for number in self._numbers(self._backend.list(folder), folder):
            path = f"{folder}/{number}"
            raw = self._read(path)
            version = raw.get("version")
            manifest = raw.get("manifest")
            if not (version is None or _is_positive_int(version)):
                raise IntegrityError(f"ref object {path} has a malformed version")
            if not (manifest is None or (isinstance(manifest, bytes) and len(manifest) == 32)):
                raise IntegrityError(f"ref object {path} has a malformed digest")
            events.append(TagEvent(number, version, manifest, str(raw.get("time", ""))))
        return events

    def current_tag(self, name: str, tag: str) -> TagEvent | None:
        """The tag's newest event if it points at a version, else None."""
        history = self.tag_history(name, tag)
        if history and history[-1].version is not None:
            return history[-1]
        return None

    def set_tag(self, name: str, tag: str, version: int | None, manifest: bytes | None) -> None:
        """Append an event to the tag's log (version None removes the tag)."""
        folder = layout.tag_folder(name, tag)
        event = wire.encode({"version": version, "manifest": manifest, "time": _now()})
        for _ in range(1000):
            numbers = self._numbers(self._backend.list(folder), folder)
            try:
                self._backend.create(f"{folder}/{(numbers[-1] if numbers else 0) + 1}", event)
                return
            except ObjectExistsError:
                continue
        raise ConflictError(f"could not append to the history of tag {tag} of {name}: retry")
