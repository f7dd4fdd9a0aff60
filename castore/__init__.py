"""castore: a content-addressed, deduplicated, verified store for ML models and backups."""

from castore.errors import (
    BackendError,
    CastoreError,
    IncompatibleEnvironmentError,
    IntegrityError,
    InvalidInputError,
    NotAStoreError,
    NotFoundError,
    StoreExistsError,
    UnsupportedFormatError,
)
from castore.format.config import ChunkerParams, CompressionParams, StoreConfig
from castore.store import Store, init, load
from castore.store import open_store as open
from castore.versions.catalog import Diff, LogEntry, Version

__all__ = [
    "BackendError",
    "CastoreError",
    "ChunkerParams",
    "CompressionParams",
    "Diff",
    "IncompatibleEnvironmentError",
    "IntegrityError",
    "InvalidInputError",
    "LogEntry",
    "NotAStoreError",
    "NotFoundError",
    "Store",
    "StoreConfig",
    "StoreExistsError",
    "UnsupportedFormatError",
    "Version",
    "init",
    "load",
    "open",
]
__version__ = "0.1.0"
