"""Entry points: restricted loads of pickle, cloudpickle and joblib streams, and scans.

Every load runs inside the audit hook's guard (castore.safety.audit); every failure is a
castore error that names the stream; a refusal names every refused global at once and
says what would make the stream load.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

from castore.errors import CastoreError, DeserializationError, UnsafeObjectError
from castore.safety import audit
from castore.safety.bounds import LimitedReader, stream_size
from castore.safety.joblib_arrays import JoblibUnpickler
from castore.safety.names import under_any
from castore.safety.policy import TRUSTED_GLOBALS_FILE, Allowlist
from castore.safety.unpickler import RestrictedUnpickler
from castore.trust.userconfig import config_dir

PROTO = pickle.PROTO[0]

for _codec in ("raw-unicode-escape", "latin-1", "ascii", "utf-8", "unicode-escape"):
    codecs.lookup(_codec)  # imported now: protocol 0 text must not import modules mid-load
del _codec


def hint(refused: tuple[str, ...]) -> str:
    """What a user who trusts the author of a refused stream can do."""
    if any(under_any(name, ("cloudpickle", "dill")) for name in refused):
        return (
            "nothing from it was run. It holds functions or classes pickled by value "
            "(cloudpickle), which run their own code when loaded: no trusted= entry makes "
            "that safe. If you trust whoever saved it, have the version signed by a key you "
            "trust, or load it with allow_unsafe=True"
        )
    allow = (
        f"allow {'it' if len(refused) == 1 else 'them'} with trusted={list(refused)!r} (or "
        f"lines in {config_dir() / TRUSTED_GLOBALS_FILE}), "
        if refused
        else ""
    )
    return (
        f"nothing from it was run. If you trust whoever saved it, {allow}have the version "
        "signed by a key you trust, or load it with allow_unsafe=True"
    )


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
    peek = getattr(file, "peek", None)
    if peek is not None and peek(1)[:1] not in (bytes([PROTO]), b""):
        raise DeserializationError(
            f"{where} is not an uncompressed joblib stream (castore never writes compressed "
            "ones): the safe loader refuses it; load it with allow_unsafe=True if you trust it"
        )
    source = LimitedReader(file, stream_size(file, size))
    return _run(JoblibUnpickler(source, allowlist, path=path, mmap_mode=mmap_mode), where)
