"""Version manifests: immutable msgpack objects named by their own SHA-256.

A manifest says which version of which name it is, how its stream was serialized, the
stream's descriptor, user metadata, the saving environment, the time, and the digest of
the parent version's manifest, so every name's history is a hash chain.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any

import msgpack

from castore.errors import IntegrityError, InvalidInputError, UnsupportedFormatError
from castore.format import wire
from castore.format.names import check_name
from castore.format.streams import StreamDescriptor

MANIFEST_VERSION = 1
MAX_METADATA_BYTES = 64 * 1024
KINDS = ("object", "file", "tree")
MAX_METADATA_DEPTH = wire.MAX_DEPTH - 2
"""Metadata sits two levels down in a manifest, whose whole nesting is bounded."""
TRACKED_PACKAGES = ("numpy", "scipy", "sklearn", "torch", "joblib", "cloudpickle", "pandas")
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the ML libraries this process has imported."""
    packages = {}
    for module in TRACKED_PACKAGES:
        if module in sys.modules:
            try:
                packages[module] = importlib_metadata.version(_DISTRIBUTIONS.get(module, module))
            except importlib_metadata.PackageNotFoundError:
                packages[module] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "castore": importlib_metadata.version("castore"),
        "packages": packages,
    }


SCALAR_MODULES = ("numpy",)
"""Packages whose scalars (np.float32, np.int64, np.bool_...) metadata takes as the Python
numbers they hold: metrics come as such. Recognized by module name, without importing."""


def _python_scalar(value: object) -> bool | int | float | str:
    """The Python value of a numpy scalar (msgpack's hook for what it cannot pack)."""
    module = type(value).__module__.partition(".")[0]
    item = getattr(value, "item", None)
    if module in SCALAR_MODULES and getattr(value, "shape", None) == () and callable(item):
        python = item()
        if isinstance(python, bool | int | float | str):
            return python
    raise TypeError(f"cannot store a {type(value).__module__}.{type(value).__name__}")


def normalize_metadata(metadata: object) -> dict[str, Any]:
    """User metadata as it will read back: a msgpack-able map, at most 64 KiB encoded.
    numpy scalars become the Python numbers they hold (numpy is not imported)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        encoded = msgpack.packb(
            metadata, use_bin_type=True, strict_types=False, default=_python_scalar
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(
            f"metadata must hold only str keys and None, bool, int, float (numpy scalars too), "
            f"str, bytes, lists and dicts: {exc}"
        ) from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata is {len(encoded)} bytes encoded; the limit is {MAX_METADATA_BYTES}"
        )
    normalized = msgpack.unpackb(encoded, raw=False, strict_map_key=False)
    if wire.depth_of(normalized) > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"metadata nests more than {MAX_METADATA_DEPTH} levels deep")
    _check_string_keys(normalized)
    return normalized


def _check_string_keys(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"metadata keys must be strings, not {key!r}")
            _check_string_keys(item)
    elif isinstance(value, list):
        for item in value:
            _check_string_keys(item)


@dataclass(frozen=True)
class Manifest:
    """One version of one name."""

    name: str
    number: int
    kind: str
    """"object" (a serialized Python object), "file" (raw bytes) or "tree" (a backup)."""
    serializer: str
    serializer_version: str
    stream: StreamDescriptor
    parent: bytes | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds")
    )

    def encode(self) -> bytes:
        """The manifest's bytes; their SHA-256 is the version digest."""
        return wire.encode(
            {
                "version": MANIFEST_VERSION,
                "name": self.name,
                "number": self.number,
                "kind": self.kind,
                "serializer": {"name": self.serializer, "version": self.serializer_version},
                "stream": self.stream.to_wire(),
                "parent": self.parent,
                "metadata": self.metadata,
                "environment": self.environment,
                "created": self.created,
            }
        )

    @classmethod
    def decode(cls, data: bytes, digest: bytes) -> Manifest:
        """Check the bytes against the version digest, then parse and validate them."""
        what = f"manifest sha256:{digest.hex()}"
        if hashlib.sha256(data).digest() != digest:
            raise IntegrityError(f"{what} does not match its digest: it was altered or damaged")
        raw = wire.decode_map(data, what)
        wire.check_version(raw, MANIFEST_VERSION, what)
        serializer = wire.field(raw, "serializer", dict, what)
        if "parent" not in raw:
            raise IntegrityError(f"{what} lacks the field 'parent'")
        parent = raw["parent"]
        if parent is not None and (not isinstance(parent, bytes) or len(parent) != 32):
            raise IntegrityError(f"{what} has a malformed parent digest")
        name = wire.field(raw, "name", str, what)
        try:
            check_name(name)
        except InvalidInputError as exc:
            raise IntegrityError(f"{what} holds an invalid name: {exc}") from exc
        kind = wire.field(raw, "kind", str, what)
        if kind not in KINDS:
            raise UnsupportedFormatError(f"{what} has kind {kind!r}, unknown to this castore")
        return cls(
            name=name,
            number=wire.bounded_int(raw, "number", 1, 2**62, what),
            kind=kind,
            serializer=wire.field(serializer, "name", str, what),
            serializer_version=wire.field(serializer, "version", str, what),
            stream=StreamDescriptor.from_wire(wire.field(raw, "stream", dict, what), what),
            parent=parent,
            metadata=wire.field(raw, "metadata", dict, what),
            environment=wire.field(raw, "environment", dict, what),
            created=wire.field(raw, "created", str, what),
        )
