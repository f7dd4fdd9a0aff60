"""castore: a content-addressed, deduplicated, verified store for ML models and backups."""

from castore.config import ChunkerParams, CompressionParams, StoreConfig
from castore.errors import (
    BackendError,
    CastoreError,
    IntegrityError,
    InvalidInputError,
    NotAStoreError,
    NotFoundError,
    StoreExistsError,
    UnsupportedFormatError,
)
from castore.store import Store, init
from castore.store import open_store as open

__all__ = [
    "BackendError",
    "CastoreError",
    "ChunkerParams",
    "CompressionParams",
    "IntegrityError",
    "InvalidInputError",
    "NotAStoreError",
    "NotFoundError",
    "Store",
    "StoreConfig",
    "StoreExistsError",
    "UnsupportedFormatError",
    "init",
    "open",
]
__version__ = "0.1.0"
