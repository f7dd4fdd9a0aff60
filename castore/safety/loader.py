"""Entry points: restricted loads of pickle, cloudpickle and joblib streams, and scans.

Every load and scan runs inside the audit hook's guard (castore.safety.audit); every
failure of a load is a castore error that names the stream; a refusal names every refused
global at once and says what would make the stream load. A scan reads a stream as a load
would after a refusal, building nothing, and reports every global it names.
"""

from __future__ import annotations

import codecs
import pickle
import warnings
from typing import IO, Any

from castore.errors import CastoreError, CastoreWarning, DeserializationError, UnsafeObjectError
from castore.safety import audit
from castore.safety.bounds import LimitedReader, stream_size
from castore.safety.decompress import decompressed
from castore.safety.joblib_arrays import JoblibUnpickler
from castore.safety.policy import Allowlist
from castore.safety.report import GlobalUse, Scan, hint
from castore.safety.unpickler import RestrictedUnpickler

PROTO = pickle.PROTO[0]

for _codec in ("raw-unicode-escape", "latin-1", "ascii", "utf-8", "unicode-escape"):
    codecs.lookup(_codec)  # imported now: protocol 0 text must not import modules mid-load
del _codec


def _run(unpickler: RestrictedUnpickler, where: str) -> Any:
    """Unpickle under the audit guard; refusals name `where`, failures are castore errors."""
    try:
        with audit.guarding(unpickler.allowlist.import_roots()):
            return unpickler.load()
    except UnsafeObjectError as exc:
        message = f"{where}: {exc}; {hint(exc.refused)}"
        raise UnsafeObjectError(message, exc.global_name, exc.refused) from None
    except DeserializationError as exc:
        raise DeserializationError(f"{where}: {exc}") from exc
    except CastoreError:
        raise
    except Exception as exc:  # the stream is untrusted: any failure is a malformed object
        raise DeserializationError(
            f"{where} could not be unpickled: {type(exc).__name__}: {exc}"
        ) from exc


def load_pickle(
    file: IO[bytes], allowlist: Allowlist, *, size: int | None = None, where: str = "the stream"
) -> Any:
    """Unpickle a pickle or cloudpickle stream, admitting only what `allowlist` allows."""
    source = LimitedReader(file, stream_size(file, size))
    return _ended(_run(RestrictedUnpickler(source, allowlist), where), source, where)


def _ended(obj: Any, source: LimitedReader, where: str) -> Any:
    """`obj`, once the stream is known to end with it (FORMAT.md 11.4); reading to the
    end of a compressed stream also checks its checksum."""
    if source.read(1):
        raise DeserializationError(f"{where} holds bytes after its object: it is damaged")
    return obj


def load_joblib(
    file: IO[bytes],
    allowlist: Allowlist,
    *,
    size: int | None = None,
    path: str | None = None,
    mmap_mode: str | None = None,
    where: str = "the stream",
) -> Any:
    """Load a joblib stream, admitting only what `allowlist` allows.

    With `path` (a local file holding the stream) and `mmap_mode`, arrays are memory-mapped.
    A stream that joblib compressed as a whole (an imported ``compress=3`` file) is
    decompressed as it is read; its arrays cannot be mapped, and load into memory, as
    joblib does it.
    """
    source, compressed = _joblib_source(file, size, where)
    if compressed and mmap_mode is not None:
        warnings.warn(
            f"{where} is a compressed joblib file: mmap_mode is ignored, its arrays load "
            "into memory",
            CastoreWarning,
            stacklevel=2,
        )
        path = mmap_mode = None
    unpickler = JoblibUnpickler(source, allowlist, path=path, mmap_mode=mmap_mode)
    return _ended(_run(unpickler, where), source, where)


def _joblib_source(file: IO[bytes], size: int | None, where: str) -> tuple[LimitedReader, bool]:
    """The pickle stream of a joblib file, and whether it was compressed."""
    peek = getattr(file, "peek", None)
    first = peek(8)[:8] if peek is not None else b""
    if first[:1] in (bytes([PROTO]), b""):
        return LimitedReader(file, stream_size(file, size)), False
    not_joblib = DeserializationError(
        f"{where} is not a joblib stream: it starts with neither a pickle protocol mark "
        "nor a compression joblib writes"
    )
    try:
        found = decompressed(file, first, stream_size(file, size))
    except DeserializationError as exc:
        raise DeserializationError(f"{where}: {exc}") from None
    if found is None:
        raise not_joblib
    inner, length = found
    if inner.read(1) != bytes([PROTO]):  # what joblib writes, compressed or not
        inner.close()
        raise not_joblib
    inner.seek(0)
    return LimitedReader(inner, length), True


def _scan(unpickler: RestrictedUnpickler, source: LimitedReader) -> Scan:
    """Scan under the audit guard; a stream that cannot be read to its end, or that goes
    on after its object, is reported (a load would refuse it)."""
    problem = None
    try:
        with audit.guarding(unpickler.allowlist.import_roots()):
            unpickler.scan()
        _ended(None, source, "the stream")
    except CastoreError as exc:
        problem = str(exc)
    uses = (GlobalUse.of(name, decision) for name, decision in unpickler.decisions.items())
    return Scan(tuple(uses), problem)


def scan_pickle(file: IO[bytes], allowlist: Allowlist, *, size: int | None = None) -> Scan:
    """The globals a pickle or cloudpickle stream names and what `allowlist` makes of
    each, read without building anything."""
    source = LimitedReader(file, stream_size(file, size))
    return _scan(RestrictedUnpickler(source, allowlist), source)


def scan_joblib(file: IO[bytes], allowlist: Allowlist, *, size: int | None = None) -> Scan:
    """The globals a joblib stream names (its object arrays' too) and what `allowlist`
    makes of each; array data is skipped, nothing is built."""
    try:
        source, _ = _joblib_source(file, size, "the stream")
    except DeserializationError as exc:
        return Scan(problem=str(exc))
    return _scan(JoblibUnpickler(source, allowlist), source)
