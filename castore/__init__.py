"""castore: a content-addressed, deduplicated, verified store for ML models and backups."""

from castore.backend.counting import Requests
from castore.engine.cache import CacheUsage, LocalCache, parse_size
from castore.engine.leases import LeaseHolder
from castore.engine.progress import Progress
from castore.engine.writer import WriteStats
from castore.errors import (
    BackendError,
    CastoreError,
    CastoreWarning,
    ConflictError,
    DeserializationError,
    IncompatibleEnvironmentError,
    IntegrityError,
    InvalidInputError,
    LeaseExpiredError,
    NotAStoreError,
    NotFoundError,
    StoreBusyError,
    StoreExistsError,
    UnloadableVersionWarning,
    UnsafeObjectError,
    UnsupportedFormatError,
    UntrustedVersionError,
)
from castore.format.config import ChunkerParams, CompressionParams, StoreConfig
from castore.format.digests import PREFIX as DIGEST_PREFIX
from castore.maintenance.copy import CopyReport, TagCopy, VersionCopy
from castore.maintenance.gc import DEFAULT_REPACK_THRESHOLD, GcReport
from castore.maintenance.repair import RepairReport
from castore.maintenance.stats import StoreStats
from castore.maintenance.verify import VerifyReport
from castore.safety import GlobalUse, trusted_globals_path
from castore.snapshots.backup import BackupStats, Snapshot
from castore.snapshots.browse import Change, PathMatches
from castore.snapshots.restore import OVERWRITE as RESTORE_OVERWRITE
from castore.snapshots.restore import RestorePlan, RestoreStats
from castore.store import Store, init, load, save
from castore.store import open_store as open
from castore.trust.signatures import (
    PrivateKey,
    PublicKey,
    Signature,
    SignatureCheck,
    TrustPolicy,
    generate_key,
    load_private_key,
    load_public_key,
    trust_key,
    trusted_keys_path,
)
from castore.versions.catalog import Diff, HistoryCheck, LogEntry, Version
from castore.versions.loading import Inspection

__all__ = [
    "DEFAULT_REPACK_THRESHOLD",
    "DIGEST_PREFIX",
    "RESTORE_OVERWRITE",
    "BackendError",
    "BackupStats",
    "CacheUsage",
    "CastoreError",
    "CastoreWarning",
    "Change",
    "ChunkerParams",
    "CompressionParams",
    "ConflictError",
    "CopyReport",
    "DeserializationError",
    "Diff",
    "GcReport",
    "GlobalUse",
    "HistoryCheck",
    "IncompatibleEnvironmentError",
    "Inspection",
    "IntegrityError",
    "InvalidInputError",
    "LeaseExpiredError",
    "LeaseHolder",
    "LocalCache",
    "LogEntry",
    "NotAStoreError",
    "NotFoundError",
    "PathMatches",
    "PrivateKey",
    "Progress",
    "PublicKey",
    "RepairReport",
    "Requests",
    "RestorePlan",
    "RestoreStats",
    "Signature",
    "SignatureCheck",
    "Snapshot",
    "Store",
    "StoreBusyError",
    "StoreConfig",
    "StoreExistsError",
    "StoreStats",
    "TagCopy",
    "TrustPolicy",
    "UnloadableVersionWarning",
    "UnsafeObjectError",
    "UnsupportedFormatError",
    "UntrustedVersionError",
    "VerifyReport",
    "Version",
    "VersionCopy",
    "WriteStats",
    "generate_key",
    "init",
    "load",
    "load_private_key",
    "load_public_key",
    "open",
    "parse_size",
    "save",
    "trust_key",
    "trusted_globals_path",
    "trusted_keys_path",
]
__version__ = "0.1.0"
