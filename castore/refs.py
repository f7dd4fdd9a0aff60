"""Names, versions, tags and the reference grammar; ref objects under ``refs/``.

A version number is taken by exclusively creating ``refs/<name>/@versions/<n>``; a tag is
a log of events ``refs/<name>/@tags/<tag>/<n>``, each created exclusively, the newest
being the tag's value. ``@`` cannot occur in names, so no name's refs hide another's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from castore import wire
from castore.backend import Backend
from castore.digests import PREFIX, format_digest, parse_digest
from castore.errors import IntegrityError, InvalidInputError, ObjectExistsError, ObjectNotFoundError

REFS = "refs"
VERSIONS = "@versions"
TAGS = "@tags"
LATEST = "latest"
MAX_NAME_LENGTH = 200
MAX_REF_OBJECT = 4096

_COMPONENT = r"[a-z0-9_][a-z0-9._-]*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-z0-9_][a-z0-9._-]{0,127}")
_NUMBER = re.compile(r"[1-9][0-9]{0,17}")
STORE_SEPARATOR = "#"

NAME_RULES = (
    "names are lowercase letters, digits, '.', '_', '-' and '/', each '/'-separated part "
    "starting with a letter, digit or '_'"
)


def check_name(name: object) -> str:
    """Return `name` if it is a valid name, else raise InvalidInputError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"invalid name {name!r}: {NAME_RULES} (at most {MAX_NAME_LENGTH})")
    if name.split("/", 1)[0] == "sha256":
        raise InvalidInputError(f"invalid name {name!r}: 'sha256' is reserved for digests")
    return name


def check_tag(tag: object) -> str:
    """Return `tag` if it can be set by users, else raise InvalidInputError."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidInputError(
            f"invalid tag {tag!r}: tags are 1-128 lowercase letters, digits, '.', '_', '-'"
        )
    if tag == LATEST or tag.isdigit():
        raise InvalidInputError(f"tag {tag!r} is reserved: 'latest' and numbers name versions")
    return tag


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a name with a version, tag or digest, or a bare digest."""

    name: str | None
    version: int | None = None
    tag: str | None = None
    digest: bytes | None = None
    store_url: str | None = None

    def __str__(self) -> str:
        text = self.name or ""
        if self.digest is not None:
            text += ("@" if self.name else "") + format_digest(self.digest)
        elif self.version is not None:
            text += f":{self.version}"
        elif self.tag is not None:
            text += f":{self.tag}"
        return f"{self.store_url}{STORE_SEPARATOR}{text}" if self.store_url else text


REFERENCE_FORMS = (
    "expected 'name', 'name:latest', 'name:<version>', 'name:<tag>', 'name@sha256:<hex>', "
    "'sha256:<hex>', or '<store url>#<any of these>'"
)


def parse_reference(text: object) -> Reference:
    """Parse any reference form (docs/FORMAT.md §10); InvalidInputError says what was expected."""
    if not isinstance(text, str) or not text:
        raise InvalidInputError(f"invalid reference {text!r}: {REFERENCE_FORMS}")
    store_url = None
    if STORE_SEPARATOR in text:
        store_url, _, text = text.rpartition(STORE_SEPARATOR)
        if not store_url:
            raise InvalidInputError(f"invalid reference: empty store URL; {REFERENCE_FORMS}")
    try:
        if text.startswith(PREFIX):
            return Reference(None, digest=parse_digest(text), store_url=store_url)
        if "@" in text:
            name, _, digest = text.partition("@")
            return Reference(check_name(name), digest=parse_digest(digest), store_url=store_url)
        name, _, selector = text.partition(":")
        check_name(name)
        if not selector or selector == LATEST:
            return Reference(name, store_url=store_url)
        if selector.isascii() and selector.isdigit():
            if not _NUMBER.fullmatch(selector):
                raise InvalidInputError("versions are numbered from 1, without leading zeros")
            return Reference(name, version=int(selector), store_url=store_url)
        return Reference(name, tag=check_tag(selector), store_url=store_url)
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid reference {text!r}: {exc}; {REFERENCE_FORMS}") from exc


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class VersionRef:
    """What ``refs/<name>/@versions/<n>`` holds: the manifest digest, or a tombstone."""

    manifest: bytes
    deleted: str | None = None


@dataclass(frozen=True)
class TagEvent:
    """One entry of a tag's history: the version it was set to, or None when removed."""

    sequence: int
    version: int | None
    manifest: bytes | None
    time: str


class RefStore:
    """Reads and writes the ref objects of one store."""

    def __init__(self, backend: Backend, before_publish: Callable[[], None] | None = None) -> None:
        self._backend = backend
        self._before_publish = before_publish or (lambda: None)

    # -- paths ------------------------------------------------------------------------------

    @staticmethod
    def _versions_folder(name: str) -> str:
        return f"{REFS}/{name}/{VERSIONS}"

    @staticmethod
    def _tag_folder(name: str, tag: str) -> str:
        return f"{REFS}/{name}/{TAGS}/{tag}"

    def _read(self, path: str) -> dict[str, Any]:
        data = self._backend.read(path)
        if len(data) > MAX_REF_OBJECT:
            raise IntegrityError(f"ref object {path} is {len(data)} bytes, too large")
        return wire.decode_map(data, f"ref object {path}")

    @staticmethod
    def _numbers(paths: list[str], folder: str) -> list[int]:
        numbers = []
        for path in paths:
            last = path[len(folder) + 1 :]
            if _NUMBER.fullmatch(last):
                numbers.append(int(last))
        return sorted(numbers)

    # -- names and versions -----------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name with at least one version ref (deleted or not)."""
        marker = f"/{VERSIONS}/"
        found = set()
        for path in self._backend.list(REFS):
            head, sep, _ = path.partition(marker)
            name = head[len(REFS) + 1 :]
            if sep and _NAME.fullmatch(name):  # stray objects under refs/ name nothing
                found.add(name)
        return sorted(found)

    def version_numbers(self, name: str) -> list[int]:
        """Every version number ever taken for `name`, ascending (deleted ones included)."""
        folder = self._versions_folder(name)
        return self._numbers(self._backend.list(folder), folder)

    def read_version(self, name: str, number: int) -> VersionRef | None:
        """The ref of one version, or None if that number was never taken."""
        path = f"{self._versions_folder(name)}/{number}"
        try:
            raw = self._read(path)
        except ObjectNotFoundError:
            return None
        manifest = wire.field(raw, "manifest", bytes, f"ref object {path}")
        if len(manifest) != 32:
            raise IntegrityError(f"ref object {path} holds a malformed digest")
        deleted = raw.get("deleted")
        if deleted is not None and not isinstance(deleted, str):
            raise IntegrityError(f"ref object {path} has a malformed deletion time")
        return VersionRef(manifest, deleted)

    def create_version(self, name: str, number: int, manifest: bytes) -> None:
        """Take version `number`; raise ObjectExistsError if another writer took it first."""
        path = f"{self._versions_folder(name)}/{number}"
        self._before_publish()
        self._backend.create(path, wire.encode({"manifest": manifest, "created": _now()}))

    def mark_deleted(self, name: str, number: int, manifest: bytes) -> None:
        """Replace a version ref by a tombstone that keeps its digest for the hash chain."""
        path = f"{self._versions_folder(name)}/{number}"
        self._backend.write(path, wire.encode({"manifest": manifest, "deleted": _now()}))

    # -- tags -------------------------------------------------------------------------------

    def tag_names(self, name: str) -> list[str]:
        """Every tag that has ever been set on `name`."""
        prefix = f"{REFS}/{name}/{TAGS}/"
        found = set()
        for path in self._backend.list(f"{REFS}/{name}/{TAGS}"):
            tag, _, _ = path[len(prefix) :].partition("/")
            found.add(tag)
        return sorted(found)

    def tag_history(self, name: str, tag: str) -> list[TagEvent]:
        """Every event of a tag, oldest first."""
        folder = self._tag_folder(name, tag)
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
        folder = self._tag_folder(name, tag)
        event = wire.encode({"version": version, "manifest": manifest, "time": _now()})
        for _ in range(1000):
            numbers = self._numbers(self._backend.list(folder), folder)
            try:
                self._backend.create(f"{folder}/{(numbers[-1] if numbers else 0) + 1}", event)
                return
            except ObjectExistsError:
                continue
        raise IntegrityError(f"could not append to the history of tag {tag} of {name}")
