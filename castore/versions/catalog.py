"""Named, versioned objects: commit, resolve, tag, log, diff and delete (saving and
loading objects are castore.versions.saving and castore.versions.loading).

Write order for a save: packs -> index object -> manifest -> version ref (created
exclusively; the loser of a race rebuilds its manifest on the new latest and retries).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from castore.engine.refs import TagEvent, VersionRef
from castore.errors import (
    CastoreError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.manifest import Manifest, environment
from castore.format.names import Reference, check_name, check_tag, parse_reference
from castore.format.streams import StreamDescriptor
from castore.format.tree import TREE_KIND
from castore.trust.signatures import TrustPolicy, signatures

if TYPE_CHECKING:
    from castore.engine.repository import Repository

MAX_SAVE_ATTEMPTS = 1000


@dataclass(frozen=True)
class Version:
    """One saved version: its name, number and version digest, and what it holds."""

    name: str
    version: int
    digest: str
    """``sha256:<hex>`` of the manifest: what ``name@sha256:<hex>`` pins."""
    content_digest: str
    """``sha256:<hex>`` of the serialized stream (equal to sha256sum of its bytes)."""
    size: int
    """Bytes the version holds: its stream's size; for a snapshot, the total size of its
    files as its metadata records it (docs/FORMAT.md 20.1), or its tree stream's size if it
    records none (stats counts a snapshot's files from its tree)."""
    stream_size: int
    """Bytes of the stored stream (for a snapshot, its tree stream)."""
    serializer: str
    created: str
    metadata: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    kind: str = "object"
    """What the version holds: "object" (serialized), "file" (raw bytes) or "tree"."""

    @property
    def reference(self) -> str:
        """The pinned reference ``name@sha256:<hex>``."""
        return f"{self.name}@{self.digest}"

    @classmethod
    def of(cls, manifest: Manifest, digest: bytes) -> Version:
        """The public view of a manifest."""
        return cls(
            name=manifest.name,
            version=manifest.number,
            digest=format_digest(digest),
            content_digest=format_digest(manifest.stream.sha256),
            size=_recorded_size(manifest),
            stream_size=manifest.stream.size,
            serializer=manifest.serializer,
            created=manifest.created,
            metadata=manifest.metadata,
            parent=format_digest(manifest.parent) if manifest.parent else None,
            kind=manifest.kind,
        )


def _recorded_size(manifest: Manifest) -> int:
    """A version's size without reading its stream: a snapshot's files' total comes from
    its metadata (informational, 20.1: a bad value falls back to the stream's size)."""
    recorded = manifest.metadata.get("bytes") if manifest.kind == TREE_KIND else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0:
        return recorded
    return manifest.stream.size


@dataclass(frozen=True)
class LogEntry:
    """One line of a name's history: a version, or the tombstone of a deleted one."""

    version: int
    digest: str
    deleted: str | None
    details: Version | None


@dataclass(frozen=True)
class Diff:
    """How two versions differ."""

    a: Version
    b: Version
    metadata_added: dict[str, Any]
    metadata_removed: dict[str, Any]
    metadata_changed: dict[str, tuple[Any, Any]]
    shared_bytes: int
    """Bytes of b's stream that are chunks a also has."""

    @property
    def same_content(self) -> bool:
        """Whether both versions hold identical streams."""
        return self.a.content_digest == self.b.content_digest


# -- reading -----------------------------------------------------------------------------------


def read_manifest(repo: Repository, digest: bytes, referrer: str | None = None) -> Manifest:
    """The manifest with this version digest, verified against it."""
    try:
        data = repo.backend.read(layout.manifest_path(digest))
    except ObjectNotFoundError as exc:
        if referrer:
            raise IntegrityError(
                f"{referrer} points at manifest {format_digest(digest)}, which is missing"
            ) from exc
        raise NotFoundError(
            f"no version with digest {format_digest(digest)} in {repo.url}"
        ) from exc
    return Manifest.decode(data, digest)


def _deleted(name: str, number: int, when: str) -> str:
    return f"version {number} of {name} was deleted at {when}"


def _tombstone_of(repo: Repository, digest: bytes, name: str | None) -> tuple[str, int, str] | None:
    """(name, number, deletion time) of a tombstone recording `digest`, searching `name`'s
    versions, or every name's when None; for messages about digests gc has collected."""
    by_name = (
        {name: repo.refs.version_numbers(name)}
        if name is not None
        else repo.refs.version_numbers_by_name()
    )
    for candidate, numbers in by_name.items():
        for number in numbers:
            try:
                version_ref = repo.refs.read_version(candidate, number)
            except IntegrityError:
                continue  # a damaged ref records nothing; verify reports it
            if version_ref is not None and version_ref.deleted and version_ref.manifest == digest:
                return candidate, number, version_ref.deleted
    return None


def deletion_of(repo: Repository, digest: bytes, name: str | None = None) -> str | None:
    """ "version N of NAME was deleted at T" if a tombstone (of `name`, or of any name)
    records the version digest `digest`, else None."""
    tombstone = _tombstone_of(repo, digest, name)
    return None if tombstone is None else _deleted(*tombstone)


def manifest_by_digest(repo: Repository, digest: bytes, name: str | None = None) -> Manifest:
    """The manifest a digest reference designates. A version deleted here resolves while
    its data lasts (FORMAT.md 10.4); once gc has freed it, it reads as deleted, not as
    missing or as damage."""
    try:
        manifest = read_manifest(repo, digest)
    except NotFoundError:
        deleted = deletion_of(repo, digest, name)
        if deleted is None:
            raise
        raise NotFoundError(deleted) from None
    try:
        version_ref = repo.refs.read_version(manifest.name, manifest.number)
    except IntegrityError:  # a damaged ref does not stop a digest, which needs no ref
        return manifest
    if version_ref is None or not version_ref.deleted or version_ref.manifest != digest:
        return manifest
    repo.index.refresh()
    if any(chunk_id not in repo.index for chunk_id, _ in manifest.stream.chunks()):
        raise NotFoundError(
            _deleted(manifest.name, manifest.number, version_ref.deleted)
            + "; gc has freed its data"
        )
    return manifest


def _spans(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending numbers as (first, last) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and runs[-1][1] == number - 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def _span(first: int, last: int) -> str:
    """A run of version numbers as people write it: ``1-3``, or ``5``."""
    return str(first) if first == last else f"{first}-{last}"


def _describe(repo: Repository, name: str) -> str:
    """What the store has under `name`, or close names, for not-found messages."""
    names = repo.refs.names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        listing = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "(none)"
        return f"there is no name {name!r} in {repo.url}; names: {listing}{hint}"
    live = versions(repo, name)
    tags = [t for t in repo.refs.tag_names(name) if repo.refs.current_tag(name, t)]
    runs = ", ".join(_span(*run) for run in _spans(live))
    listed = f"versions {runs}" if live else "no live versions"
    return f"{name} has {listed}; tags: {', '.join(tags) or '(none)'}"


def _expand(repo: Repository, parsed: Reference) -> bytes:
    """The one version digest a short digest starts: among the versions of its name (live
    or deleted), or among every manifest for a bare one. Several are an InvalidInputError
    listing them, as git does."""
    prefix = parsed.digest_prefix
    assert prefix is not None
    if parsed.name is not None:
        known = [
            repo.refs.read_version(parsed.name, n) for n in repo.refs.version_numbers(parsed.name)
        ]
        digests = {ref.manifest for ref in known if ref is not None}
    else:
        listed = repo.backend.list(f"{layout.MANIFESTS}/{prefix[:2]}")
        digests = {d for d in map(layout.name_of, listed) if d is not None}
    found = sorted(d for d in digests if d.hex().startswith(prefix))
    if not found:
        where = f"among the versions of {parsed.name}" if parsed.name else f"in {repo.url}"
        raise NotFoundError(f"no version digest starts with {prefix} {where}")
    if len(found) > 1:
        raise InvalidInputError(
            f"short digest {prefix} is ambiguous; it starts "
            + ", ".join(format_digest(d) for d in found)
            + ": give more digits"
        )
    return found[0]


def resolve(repo: Repository, ref: str | Reference) -> tuple[Manifest, bytes]:
    """The manifest and version digest a reference designates."""
    parsed = ref if isinstance(ref, Reference) else parse_reference(ref)
    if parsed.store_url is not None and parsed.store_url != repo.url:
        raise InvalidInputError(
            f"reference {ref} pins the store {parsed.store_url}, not {repo.url}: "
            "open that store, or use castore.load() with the qualified reference"
        )
    if parsed.digest_prefix is not None:
        parsed = replace(parsed, digest=_expand(repo, parsed), digest_prefix=None)
    if parsed.digest is not None:
        manifest = manifest_by_digest(repo, parsed.digest, parsed.name)
        if parsed.name is not None and manifest.name != parsed.name:
            raise NotFoundError(
                f"{format_digest(parsed.digest)} is version {manifest.number} of "
                f"{manifest.name}, not of {parsed.name}"
            )
        return manifest, parsed.digest
    name = parsed.name
    assert name is not None
    tagged: bytes | None = None
    if parsed.tag is not None:
        event = repo.refs.current_tag(name, parsed.tag)
        if event is None or event.version is None:
            raise NotFoundError(f"no tag {parsed.tag!r} on {name}: {_describe(repo, name)}")
        number, tagged = event.version, event.manifest
    elif parsed.version is not None:
        number = parsed.version
    else:
        number, latest = _newest_live(repo, name)
        return read_version_manifest(repo, name, number, latest.manifest), latest.manifest
    version_ref = repo.refs.read_version(name, number)
    if version_ref is None:
        raise NotFoundError(f"no version {number} of {name}: {_describe(repo, name)}")
    if version_ref.deleted:
        raise NotFoundError(_deleted(name, number, version_ref.deleted))
    if parsed.tag is not None and tagged != version_ref.manifest:
        raise IntegrityError(f"tag {parsed.tag} of {name} disagrees with version {number}'s ref")
    return read_version_manifest(repo, name, number, version_ref.manifest), version_ref.manifest


def read_version_manifest(repo: Repository, name: str, number: int, digest: bytes) -> Manifest:
    """The manifest that version `number` of `name` points at, checked to be that version's:
    a ref swapped for another version's would otherwise pass its digest check."""
    where = f"version {number} of {name}"
    manifest = read_manifest(repo, digest, referrer=where)
    if manifest.name != name or manifest.number != number:
        raise IntegrityError(
            f"{where} points at the manifest of version {manifest.number} of {manifest.name}: "
            "the ref was swapped"
        )
    return manifest


def names(repo: Repository) -> list[str]:
    """Every name with at least one live version: one listing of ``refs/`` in all, then
    for each name its refs read newest first up to the first live one."""
    return [
        name
        for name, numbers in repo.refs.version_numbers_by_name().items()
        if _newest_live_among(repo, check_name(name), numbers) is not None
    ]


def _newest_live_among(
    repo: Repository, name: str, numbers: list[int]
) -> tuple[int, VersionRef] | None:
    """The newest live version of `name` among `numbers` (ascending) and its ref, reading
    refs newest first only up to the first one not deleted."""
    for number in reversed(numbers):
        version_ref = repo.refs.read_version(name, number)
        if version_ref is not None and not version_ref.deleted:
            return number, version_ref
    return None


def _newest_live(repo: Repository, name: str) -> tuple[int, VersionRef]:
    """The newest live version of `name` and its ref (``latest`` costs one ref read, not
    one per version)."""
    found = _newest_live_among(repo, name, repo.refs.version_numbers(name))
    if found is None:
        raise NotFoundError(f"nothing saved as {name}: {_describe(repo, name)}")
    return found


def versions(repo: Repository, name: str) -> list[int]:
    """Live (not deleted) version numbers of a name, ascending."""
    check_name(name)
    numbers = repo.refs.version_numbers(name)
    live = []
    for number in numbers:
        version_ref = repo.refs.read_version(name, number)
        if version_ref is not None and not version_ref.deleted:
            live.append(number)
    return live


def _tip(repo: Repository, name: str) -> tuple[int, bytes | None, Manifest | None]:
    """The newest version number taken, its manifest digest, and its manifest if not deleted."""
    numbers = repo.refs.version_numbers(name)
    if not numbers:
        return 0, None, None
    newest = numbers[-1]
    version_ref = repo.refs.read_version(name, newest)
    if version_ref is None:
        raise IntegrityError(f"version {newest} of {name} vanished while being read")
    if version_ref.deleted:
        return newest, version_ref.manifest, None
    where = f"version {newest} of {name}"
    return newest, version_ref.manifest, read_manifest(repo, version_ref.manifest, where)


# -- writing -----------------------------------------------------------------------------------


def commit_version(
    repo: Repository,
    name: str,
    stream: StreamDescriptor,
    *,
    kind: str,
    serializer: str,
    serializer_version: str,
    metadata: dict[str, Any],
    tags: Iterable[str],
    force: bool,
) -> Version:
    """Record a stored stream as the next version of `name` (or return an identical latest)."""
    tags = [check_tag(t) for t in tags]
    for _ in range(MAX_SAVE_ATTEMPTS):
        newest, parent_digest, parent = _tip(repo, name)
        number = newest + 1
        unchanged = (
            parent is not None
            and parent.stream.sha256 == stream.sha256
            and parent.metadata == metadata
            and parent.serializer == serializer
        )
        if unchanged and not force:
            assert parent is not None and parent_digest is not None
            _apply_tags(repo, name, parent.number, parent_digest, tags)
            return Version.of(parent, parent_digest)
        manifest = Manifest(
            name=name,
            number=number,
            kind=kind,
            serializer=serializer,
            serializer_version=serializer_version,
            stream=stream,
            parent=parent_digest,
            metadata=metadata,
            environment=environment(),
        )
        data = manifest.encode()
        digest = layout.digest_of(data)
        repo.backend.write(layout.manifest_path(digest), data)
        try:
            repo.refs.create_version(name, number, digest)
        except ObjectExistsError:
            continue  # another writer took this number: rebuild on the new latest
        _apply_tags(repo, name, number, digest, tags)
        return Version.of(manifest, digest)
    raise ConflictError(
        f"could not take a version number for {name} after {MAX_SAVE_ATTEMPTS} tries: "
        "other writers kept taking them; retry"
    )


def _apply_tags(repo: Repository, name: str, number: int, digest: bytes, tags: list[str]) -> None:
    for tag in tags:
        current = repo.refs.current_tag(name, tag)
        if current is None or current.manifest != digest:
            repo.refs.set_tag(name, tag, number, digest)


# -- tags, history, comparison, deletion -------------------------------------------------------


def tag(repo: Repository, ref: str, tag_name: str) -> Version:
    """Point `tag_name` at the version `ref` designates."""
    check_tag(tag_name)
    manifest, digest = resolve(repo, ref)
    _apply_tags(repo, manifest.name, manifest.number, digest, [tag_name])
    return Version.of(manifest, digest)


def untag(repo: Repository, name: str, tag_name: str) -> None:
    """Remove a tag (its history keeps the removal)."""
    check_name(name)
    if repo.refs.current_tag(name, check_tag(tag_name)) is None:
        raise NotFoundError(f"no tag {tag_name!r} on {name}: {_describe(repo, name)}")
    repo.refs.set_tag(name, tag_name, None, None)


def tags(repo: Repository, name: str) -> dict[str, int]:
    """Current tags of a name and the version each points at."""
    check_name(name)
    current = {}
    for tag_name in repo.refs.tag_names(name):
        event = repo.refs.current_tag(name, tag_name)
        if event is not None and event.version is not None:
            current[tag_name] = event.version
    return current


def tag_history(repo: Repository, name: str, tag_name: str) -> list[TagEvent]:
    """Every move of a tag, oldest first."""
    return repo.refs.tag_history(check_name(name), check_tag(tag_name))


def log(repo: Repository, name: str, *, verify: bool = False) -> list[LogEntry]:
    """A name's versions, newest first, deleted ones as tombstones.

    With `verify`, a broken hash chain raises IntegrityError naming every problem.
    """
    check_name(name)
    if verify:
        problems = verify_history(repo, name)
        if problems:
            raise IntegrityError(f"the history of {name} is broken: " + "; ".join(problems))
    entries = []
    for number in repo.refs.version_numbers(name):
        version_ref = repo.refs.read_version(name, number)
        if version_ref is None:
            continue
        details = None
        if not version_ref.deleted:
            manifest = read_manifest(repo, version_ref.manifest, f"version {number} of {name}")
            details = Version.of(manifest, version_ref.manifest)
        entries.append(
            LogEntry(number, format_digest(version_ref.manifest), version_ref.deleted, details)
        )
    if not entries:
        raise NotFoundError(f"nothing saved as {name}: {_describe(repo, name)}")
    return entries[::-1]


@dataclass(frozen=True)
class HistoryCheck:
    """What checking a name's hash chain found (docs/FORMAT.md 11.5)."""

    name: str
    problems: list[str]
    """Damage or tampering: rewritten, swapped, removed or unreadable versions."""
    absent: list[tuple[int, int]]
    """Runs (first, last) of numbers that are not in this store because a copy brought a
    later version without them: gaps, not damage."""

    @property
    def ok(self) -> bool:
        """True when the chain is intact (absent versions are no problem)."""
        return not self.problems

    @property
    def not_in_store(self) -> list[str]:
        """The absent runs as references people read: ``m:1-2``, ``m:5``."""
        return [f"{self.name}:{_span(*run)}" for run in self.absent]


def check_history(repo: Repository, name: str) -> HistoryCheck:
    """Check a name's hash chain; tell versions never copied here from removed ones.

    Whatever cannot be read is a problem in the list, never an exception or a skip.
    """
    check_name(name)
    try:
        numbers = repo.refs.version_numbers(name)
    except CastoreError as exc:
        return HistoryCheck(name, [f"{name}: its versions cannot be listed: {exc}"], [])
    problems: list[str] = []
    absent: list[tuple[int, int]] = []
    below: tuple[int, bytes | None] = (0, None)  # the previous number listed, and its digest
    for number in numbers:
        where = f"{name}:{number}"
        try:
            version_ref = repo.refs.read_version(name, number)
            if version_ref is None:
                raise CastoreError("the version ref vanished while being read")
        except CastoreError as exc:
            problems.append(f"{where}: {exc}")
            below = (number, None)
            continue
        previous, previous_digest = below
        if previous < number - 1:
            # A save builds on the ref just below it (12.3): only a copy leaves a gap.
            if version_ref.copied:
                absent.append((previous + 1, number - 1))
            else:
                if previous < number - 2:
                    absent.append((previous + 1, number - 2))  # cannot be told apart
                problems.append(
                    f"{name}:{number - 1}: version is missing from the history "
                    f"({where} was saved on top of it here)"
                )
            previous_digest = None
        if not version_ref.deleted:
            try:
                manifest = read_version_manifest(repo, name, number, version_ref.manifest)
            except CastoreError as exc:
                problems.append(f"{where}: {exc}")
            else:
                if previous_digest is not None and manifest.parent != previous_digest:
                    problems.append(
                        f"{where}: its parent is not version {number - 1}: history was rewritten"
                    )
                if number == 1 and manifest.parent is not None:
                    problems.append(f"{where}: the first version claims a parent")
        below = (number, version_ref.manifest)
    return HistoryCheck(name, problems, absent)


def verify_history(repo: Repository, name: str) -> list[str]:
    """Problems in a name's hash chain: missing, rewritten, swapped or unreadable versions
    (versions a copy did not bring are not problems: see check_history)."""
    return check_history(repo, name).problems


def diff(repo: Repository, a: str, b: str) -> Diff:
    """Metadata changes between two versions and how many bytes of b's stream a shares."""
    manifest_a, digest_a = resolve(repo, a)
    manifest_b, digest_b = resolve(repo, b)
    chunks_a = {chunk_id for chunk_id, _ in manifest_a.stream.chunks()}
    shared = sum(size for chunk_id, size in manifest_b.stream.chunks() if chunk_id in chunks_a)
    meta_a, meta_b = manifest_a.metadata, manifest_b.metadata
    return Diff(
        a=Version.of(manifest_a, digest_a),
        b=Version.of(manifest_b, digest_b),
        metadata_added={k: v for k, v in meta_b.items() if k not in meta_a},
        metadata_removed={k: v for k, v in meta_a.items() if k not in meta_b},
        metadata_changed={
            k: (meta_a[k], meta_b[k])
            for k in meta_a.keys() & meta_b.keys()
            if meta_a[k] != meta_b[k]
        },
        shared_bytes=shared,
    )


def delete(repo: Repository, ref: str) -> Version:
    """Delete one version: its ref becomes a tombstone, tags on it are removed; gc frees data."""
    manifest, digest = resolve(repo, ref)
    for tag_name, number in tags(repo, manifest.name).items():
        if number == manifest.number:
            repo.refs.set_tag(manifest.name, tag_name, None, None)
    repo.refs.mark_deleted(manifest.name, manifest.number, digest)
    return Version.of(manifest, digest)


def info(repo: Repository, ref: str, policy: TrustPolicy) -> dict[str, Any]:
    """Everything known about a version, for people and scripts; `policy` says which of
    its signatures a trusted key made."""
    manifest, digest = resolve(repo, ref)
    version = Version.of(manifest, digest)
    return {
        "name": manifest.name,
        "version": manifest.number,
        "reference": version.reference,
        "digest": version.digest,
        "content_digest": version.content_digest,
        "size": version.size,
        "stream_size": version.stream_size,
        "chunks": len(manifest.stream.chunk_sizes),
        "kind": manifest.kind,
        "serializer": {"name": manifest.serializer, "version": manifest.serializer_version},
        "created": manifest.created,
        "parent": version.parent,
        "tags": sorted(t for t, n in tags(repo, manifest.name).items() if n == manifest.number),
        "metadata": manifest.metadata,
        "environment": manifest.environment,
        "signatures": [
            {
                "key_id": check.key_id,
                "key": policy.describe(check.key_id),
                "valid": check.valid,
                "trusted": check.valid and policy.trusts(check.key_id),
                "created": check.created,
                "problem": check.problem,
            }
            for check in signatures(repo, digest)
        ],
    }
