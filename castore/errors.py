"""castore's exception hierarchy: every error raised on purpose derives from CastoreError."""


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
