"""Entry points: restricted loads of pickle, cloudpickle and joblib streams, and scans.

Every load and scan runs inside the audit hook's guard (castore.safety.audit); every
failure of a load is a castore error that names the stream; a refusal names every refused
global at once and says what would make the stream load. A scan reads a stream as a load
would after a refusal, building nothing, and reports every global it names.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

from castore.errors import CastoreError, DeserializationError, UnsafeObjectError
from castore.safety import audit
from castore.safety.bounds import LimitedReader, stream_size
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
    return _run(RestrictedUnpickler(source, allowlist), where)


def load_joblib(
    file: IO[bytes],
    allowlist: Allowlist,
    *,
    size: int | None = None,
    path: str | None = None,
    mmap_mode: str | None = None,
    where: str = "the stream",
) -> Any:
    """Load an uncompressed joblib stream, admitting only what `allowlist` allows.

    With `path` (a local file holding the stream) and `mmap_mode`, arrays are memory-mapped.
    """
    source = _joblib_source(file, size, where)
    return _run(JoblibUnpickler(source, allowlist, path=path, mmap_mode=mmap_mode), where)


def _joblib_source(file: IO[bytes], size: int | None, where: str) -> LimitedReader:
    peek = getattr(file, "peek", None)
    if peek is not None and peek(1)[:1] not in (bytes([PROTO]), b""):
        raise DeserializationError(
            f"{where} is not an uncompressed joblib stream (castore never writes compressed "
            "ones): the safe loader refuses it; load it with allow_unsafe=True if you trust it"
        )
    return LimitedReader(file, stream_size(file, size))


def _scan(unpickler: RestrictedUnpickler) -> Scan:
    """Scan under the audit guard; a stream that cannot be read to its end is reported."""
    problem = None
    try:
        with audit.guarding(unpickler.allowlist.import_roots()):
            unpickler.scan()
    except CastoreError as exc:
        problem = str(exc)
    uses = (GlobalUse.of(name, decision) for name, decision in unpickler.decisions.items())
    return Scan(tuple(uses), problem)


def scan_pickle(file: IO[bytes], allowlist: Allowlist, *, size: int | None = None) -> Scan:
    """The globals a pickle or cloudpickle stream names and what `allowlist` makes of
    each, read without building anything."""
    return _scan(RestrictedUnpickler(LimitedReader(file, stream_size(file, size)), allowlist))


def scan_joblib(file: IO[bytes], allowlist: Allowlist, *, size: int | None = None) -> Scan:
    """The globals an uncompressed joblib stream names (its object arrays' too) and what
    `allowlist` makes of each; array data is skipped, nothing is built."""
    try:
        source = _joblib_source(file, size, "the stream")
    except DeserializationError as exc:
        return Scan(problem=str(exc))
    return _scan(JoblibUnpickler(source, allowlist))
