"""Saving objects as versions, and telling the saver when a version will not load.

A version that the default policy refuses loads for nobody who has not trusted its
globals or its signer, so castore says so when it is saved: `save` scans the stream while
it is written (the bytes go through a pipe to a scanning thread, so nothing is read
twice) and warns with UnloadableVersionWarning; with ``check_loadable`` it loads the
stream back under the default policy instead, and records no version that fails.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from castore.errors import (
    DeserializationError,
    InvalidInputError,
    UnloadableVersionWarning,
    UnsafeObjectError,
)
from castore.format.manifest import normalize_metadata
from castore.format.names import check_name, check_tag
from castore.format.streams import StreamDescriptor
from castore.safety import Scan
from castore.versions.catalog import Version, commit_version
from castore.versions.loading import read_stream
from castore.versions.serializers import (
    LoadOptions,
    Serializer,
    serializer_for,
    serializer_named,
)

if TYPE_CHECKING:
    from castore.engine.repository import Repository

DRAIN_PIECE = 1024 * 1024


def save(
    repo: Repository,
    obj: Any,
    name: str,
    *,
    metadata: dict[str, Any] | None,
    tags: Iterable[str],
    serializer: str | None,
    force: bool,
    check_loadable: bool,
) -> Version:
    """Serialize `obj` straight into the store and commit it as a version of `name`, with
    `serializer`, or (None) the one that suits `obj` (`serializer_for`).

    An object stream the default policy would refuse is reported: with `check_loadable`
    by the load's own error (and no version is recorded), else by a warning.
    """
    check_name(name)
    chosen, payload = serializer_for(obj, serializer)
    clean_metadata = normalize_metadata(metadata)
    tags = [check_tag(t) for t in tags]
    scan = None
    if chosen.kind == "object" and check_loadable:
        stream = repo.write_stream(lambda writer: chosen.dump(payload, writer))
        _load_back(repo, stream, chosen, name)
    elif chosen.pickled:
        stream, scan = _write_scanned(repo, payload, chosen)
    else:
        stream = repo.write_stream(lambda writer: chosen.dump(payload, writer))
    version = commit_version(
        repo,
        name,
        stream,
        kind=chosen.kind,
        serializer=chosen.name,
        serializer_version=chosen.version(),
        metadata=clean_metadata,
        tags=tags,
        force=force,
    )
    if scan is not None and not scan.admitted:
        warnings.warn(_unloadable(version, scan), UnloadableVersionWarning, stacklevel=3)
    return version


def import_file(
    repo: Repository,
    path: str | os.PathLike[str],
    name: str,
    *,
    serializer: str,
    metadata: dict[str, Any] | None,
    tags: Iterable[str],
    check: bool,
) -> Version:
    """Record an existing file (a ``joblib.dump`` or pickle file) as the next version of
    `name`, its bytes as they are: its ``sha256sum`` is the version's content digest.

    With `check`, the stream is loaded back under the default policy first, and a file
    that would not load (refused globals, a damaged file) records no version. Files that
    joblib compressed (``compress=3``) keep their bytes and load as joblib loads them.
    """
    check_name(name)
    chosen = serializer_named(serializer)
    if not chosen.pickled:
        raise InvalidInputError(
            f"import takes pickle-based files (joblib, pickle, cloudpickle), not {serializer!r}: "
            "store other files with put --name"
        )
    clean_metadata = normalize_metadata(metadata)
    tags = [check_tag(t) for t in tags]
    try:
        with open(path, "rb") as file:
            stream = repo.write_stream(file)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
    if check:
        _load_back(repo, stream, chosen, name)
    return commit_version(
        repo,
        name,
        stream,
        kind=chosen.kind,
        serializer=chosen.name,
        serializer_version=chosen.version(),
        metadata=clean_metadata,
        tags=tags,
        force=False,
    )


def _load_back(repo: Repository, stream: StreamDescriptor, chosen: Serializer, name: str) -> None:
    """Load a new stream under the default policy; its error says why it would not load."""
    options = LoadOptions(size=stream.size, where=f"the new version of {name}")
    prefix = f"{name} was not saved, because it would not load under the default policy"
    try:
        read_stream(repo, stream, chosen, options)
    except UnsafeObjectError as exc:
        raise UnsafeObjectError(f"{prefix}: {exc}", exc.global_name, exc.refused) from None
    except DeserializationError as exc:
        raise DeserializationError(f"{prefix}: {exc}") from exc


def _write_scanned(repo: Repository, obj: Any, chosen: Serializer) -> tuple[StreamDescriptor, Scan]:
    """Write `obj`'s stream while a thread scans its bytes on their way to the store."""
    read_fd, write_fd = os.pipe()
    reader, writer = open(read_fd, "rb"), open(write_fd, "wb")  # noqa: SIM115
    outcome: list[Scan | Exception] = []
    scanner = threading.Thread(
        target=_scan_pipe, args=(reader, chosen, outcome), name="castore-save-scan", daemon=True
    )
    scanner.start()
    try:
        with writer:
            stream = repo.write_stream(
                lambda target: chosen.dump(obj, target), observe=writer.write
            )
    finally:
        scanner.join()
    (result,) = outcome
    if isinstance(result, Exception):
        raise result
    return stream, result


def _scan_pipe(pipe: IO[bytes], chosen: Serializer, outcome: list[Scan | Exception]) -> None:
    """Scan what comes through the pipe under the default policy, then drain it to its end,
    so that the writer never waits on a full pipe."""
    with pipe:
        try:
            outcome.append(chosen.scan(pipe))
        except Exception as exc:  # handed to the saving thread
            outcome.append(exc)
        while pipe.read(DRAIN_PIECE):
            pass


def _unloadable(version: Version, scan: Scan) -> str:
    where, problem = f"version {version.version} of {version.name}", scan.problem
    if problem is not None:
        return f"castore could not check that {where} loads under the default policy: {problem}"
    names = ", ".join(scan.refused)
    return (
        f"{where} will not load under the default policy: it needs the refused globals "
        f"{names}. {scan.advice}. save(..., check_loadable=True) refuses such saves"
    )
