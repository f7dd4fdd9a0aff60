"""Validation of the relative object paths that backends accept."""

from castore.errors import InvalidInputError


def check_object_path(path: str) -> str:
    """Return `path` if it is a clean relative POSIX path, else raise InvalidInputError.

    Backends join it under their root, so it must never climb out of it.
    """
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"invalid object path {path!r}")
    return path


def is_temporary(path: str) -> bool:
    """Whether `path` names an in-progress temporary file that listings must skip."""
    return path.rsplit("/", 1)[-1].startswith(".")
