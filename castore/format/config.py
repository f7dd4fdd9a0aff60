"""The store's `config` object: format version, identity and write parameters."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from castore.errors import IntegrityError, InvalidInputError, UnsupportedFormatError
from castore.format import wire

FORMAT_NAME = "castore"
FORMAT_VERSION = 2
"""The store format version new stores get, and the highest this castore reads."""
BYTE_GROUPS_VERSION = 2
"""The first store format version whose writers may store byte-grouped chunks (codec 2)."""
CONFIG_PATH = "config"
MAX_CONFIG_SIZE = 64 * 1024

# pyfastcdc's own limits, which also bound any chunk a store may hold.
MIN_CHUNK_LIMIT = 64
MAX_CHUNK_LIMIT = 16 * 1024 * 1024
CHUNKER_LIMITS = {
    "min_size": (MIN_CHUNK_LIMIT, 1024**2),
    "avg_size": (256, 4 * 1024**2),
    "max_size": (1024, MAX_CHUNK_LIMIT),
    "normalization": (0, 3),
}
"""Allowed range of each chunker parameter (docs/FORMAT.md 4): exactly what pyfastcdc cuts
with, so a config that passes never makes pyfastcdc refuse to cut."""


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC (2020) parameters; pyfastcdc's average is roughly avg_size + min_size.

    Sizes are in bytes. Values outside `CHUNKER_LIMITS`, or not ordered
    min_size <= avg_size <= max_size, raise InvalidInputError.
    """

    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024
    normalization: int = 1

    def __post_init__(self) -> None:
        for key, (low, high) in CHUNKER_LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidInputError(
                    f"chunker {key} must be an integer from {low} to {high}, not {value!r}"
                )
        if not self.min_size <= self.avg_size <= self.max_size:
            raise InvalidInputError(
                "chunker sizes must satisfy min_size <= avg_size <= max_size, not "
                f"{self.min_size}, {self.avg_size}, {self.max_size}"
            )


@dataclass(frozen=True)
class CompressionParams:
    """Per-chunk compression: zstd at `level`, kept only if it saves `min_saving` or more."""

    level: int = 3
    min_saving: float = 1 / 32


@dataclass(frozen=True)
class StoreConfig:
    """Everything fixed when a store is created."""

    store_id: str = field(default_factory=lambda: secrets.token_hex(16))
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression: CompressionParams = field(default_factory=CompressionParams)
    pack_size: int = 16 * 1024 * 1024
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = FORMAT_VERSION
    """Store format version: `version=1` makes a store that castores older than byte
    groups read and write (its writers store only codecs 0 and 1)."""

    @property
    def byte_groups(self) -> bool:
        """Whether writers may store chunks byte-grouped (codec 2, docs/FORMAT.md 6.2)."""
        return self.version >= BYTE_GROUPS_VERSION

    def encode(self) -> bytes:
        """The msgpack bytes of the config object (docs/FORMAT.md, "config")."""
        return wire.encode(
            {
                "format": FORMAT_NAME,
                "version": self.version,
                "store_id": self.store_id,
                "hash": "sha256",
                "chunker": {
                    "algorithm": "fastcdc2020",
                    "min_size": self.chunker.min_size,
                    "avg_size": self.chunker.avg_size,
                    "max_size": self.chunker.max_size,
                    "normalization": self.chunker.normalization,
                },
                "compression": {
                    "codec": "zstd",
                    "level": self.compression.level,
                    "min_saving": self.compression.min_saving,
                },
                "pack_size": self.pack_size,
                "created": self.created,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> StoreConfig:
        """Parse and validate a config object; refuse formats newer than this castore."""
        what = "store config"
        if len(data) > MAX_CONFIG_SIZE:
            raise IntegrityError(f"{what} is {len(data)} bytes, more than {MAX_CONFIG_SIZE}")
        raw = wire.decode_map(data, what)
        if raw.get("format") != FORMAT_NAME:
            raise IntegrityError(f"{what} does not describe a castore store")
        version = wire.field(raw, "version", int, what)
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"the store has format version {version}; this castore reads up to "
                f"{FORMAT_VERSION}: upgrade castore to open it"
            )
        if version < 1:
            raise IntegrityError(f"{what} has invalid format version {version}")
        if raw.get("hash") != "sha256":
            raise IntegrityError(f"{what} names unsupported hash {raw.get('hash')!r}")
        chunker = _decode_chunker(wire.field(raw, "chunker", dict, what))
        compression = _decode_compression(wire.field(raw, "compression", dict, what))
        store_id = wire.field(raw, "store_id", str, what)
        if not 1 <= len(store_id) <= 64:
            raise IntegrityError(f"{what} has an invalid store id")
        return cls(
            store_id=store_id,
            chunker=chunker,
            compression=compression,
            pack_size=wire.bounded_int(raw, "pack_size", 1024, 1024**3, what),
            created=wire.field(raw, "created", str, what),
            version=version,
        )


def _decode_chunker(raw: dict[str, Any]) -> ChunkerParams:
    what = "store config chunker"
    if raw.get("algorithm") != "fastcdc2020":
        raise IntegrityError(f"{what} names unsupported algorithm {raw.get('algorithm')!r}")
    values = {key: wire.field(raw, key, int, what) for key in CHUNKER_LIMITS}
    try:
        return ChunkerParams(**values)
    except InvalidInputError as exc:  # a writer broke FORMAT.md 4: the config is damaged
        raise IntegrityError(f"{what} is damaged: {exc}") from exc


def _decode_compression(raw: dict[str, Any]) -> CompressionParams:
    what = "store config compression"
    if raw.get("codec") != "zstd":
        raise IntegrityError(f"{what} names unsupported codec {raw.get('codec')!r}")
    min_saving = raw.get("min_saving")
    if isinstance(min_saving, bool) or not isinstance(min_saving, int | float):
        raise IntegrityError(f"{what} min_saving should be a number")
    if not 0.0 <= min_saving < 1.0:
        raise IntegrityError(f"{what} min_saving {min_saving} is outside [0, 1)")
    return CompressionParams(
        level=wire.bounded_int(raw, "level", -7, 22, what), min_saving=float(min_saving)
    )
