"""castore's exception hierarchy: every error raised on purpose derives from CastoreError;
every warning castore issues, from CastoreWarning."""


class CastoreError(Exception):
    """Base class of every error castore raises on purpose."""


class NotFoundError(CastoreError):
    """A reference, digest or object that the store does not hold."""


class NotAStoreError(NotFoundError):
    """The location holds no castore store (its config object is missing)."""


class StoreExistsError(CastoreError):
    """`init` was asked to create a store where one already exists."""


class InvalidInputError(CastoreError, ValueError):
    """Malformed input from the caller: a bad digest, reference, URL or argument."""


class IntegrityError(CastoreError):
    """Stored bytes do not match their digest, or a stored structure is malformed."""


class UnsupportedFormatError(CastoreError):
    """The store was written by a newer castore whose format this version cannot read."""


class BackendError(CastoreError):
    """The storage backend failed: I/O error, network error, permission denied."""


class ObjectExistsError(CastoreError):
    """An exclusive create found the object already present."""


class ObjectNotFoundError(NotFoundError):
    """The backend holds no object under the requested path."""


class UnsafeObjectError(CastoreError):
    """A serialized object needs a global (or a call) that the load policy does not allow."""

    def __init__(
        self,
        message: str,
        global_name: str | None = None,
        refused: tuple[str, ...] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.global_name = global_name
        """The (first) refused global, as ``module.qualified_name``; None for an operation."""
        self.refused = refused or ((global_name,) if global_name else ())
        """Every refused global of the stream, in order."""
        self.reason = reason or message
        """Why the (first) global or the operation was refused, e.g. "it is not on the
        allowlist"."""


class DeserializationError(CastoreError):
    """A serialized stream is malformed, or rebuilding an allowed object from it failed."""


class StoreBusyError(CastoreError):
    """gc and writers exclude each other, and the other side is active."""


class LeaseExpiredError(CastoreError):
    """The writer could not keep its lease fresh, so it must not publish what it wrote."""


class UntrustedVersionError(IntegrityError):
    """A version that must be signed carries no valid signature by a trusted key."""


class IncompatibleEnvironmentError(CastoreError):
    """The version cannot load in this Python (cloudpickle's output is version-bound)."""


class ConflictError(CastoreError):
    """Concurrent writers kept taking what this operation needed; retrying may succeed."""


class CastoreWarning(UserWarning):
    """Base class of every warning castore issues."""


class UnloadableVersionWarning(CastoreWarning):
    """A version was saved that will not load under the default policy (it needs globals
    that policy refuses): its readers need trust it does not give. See `Store.inspect` and
    ``save(..., check_loadable=True)``."""
