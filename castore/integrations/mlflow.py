"""castore as an MLflow artifact repository, for artifact locations ``castore+<store URL>``.

``mlflow.create_experiment("churn", artifact_location="castore+s3://bucket/store")`` (or
``castore+file:///srv/store``, or ``mlflow server --default-artifact-root castore+...``)
keeps the runs' artifacts in an existing castore store, so an artifact identical to an
earlier one adds no data, only its small manifest. S3 settings come from the usual AWS
variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``...), as for the command line.

MLflow appends paths to the location it is given (``<run id>/artifacts``,
``<experiment id>/<run id>/artifacts``, ``models/<model id>/artifacts``...), so the store
is the nearest ancestor of the artifact URI that holds a castore store: the URI itself,
then one path component less at a time. What follows the store is the run's prefix.

Each artifact file is a ``raw`` version of the name ``mlflow/<prefix>/<artifact path>``,
every path component escaped into castore's name grammar: lowercase letters, digits, '.'
and '-' stay as they are (a leading '.' or '-' does not), every other UTF-8 byte becomes
``_`` and two hex digits (``MLmodel`` is ``_4d_4cmodel``, ``_`` is ``_5f``), so the
mapping reverses exactly. Logging a path again saves its next version; MLflow sees the
latest, as an overwrite, and castore keeps the history. Directories are the '/' in names:
an empty directory logs nothing. Deleting artifacts deletes every version of their names;
``castore gc`` then frees the data no other version shares.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

import castore
from castore.errors import InvalidInputError, NotAStoreError, NotFoundError

SCHEME_PREFIX = "castore+"
NAME_ROOT = "mlflow"
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_NOT_FIRST = frozenset(".-")  # a name component must start with a letter, digit or '_'


def encode_component(component: str) -> str:
    """One path component as one castore name component (see the module)."""
    if component in ("", ".", ".."):
        raise InvalidInputError(f"artifact path component {component!r} names no file")
    encoded = []
    for position, char in enumerate(component):
        if char in _KEPT and not (position == 0 and char in _NOT_FIRST):
            encoded.append(char)
        else:
            encoded.extend(f"_{byte:02x}" for byte in char.encode())
    return "".join(encoded)


def decode_component(encoded: str) -> str:
    """The path component `encode_component` turned into `encoded`."""
    data = bytearray()
    position = 0
    try:
        while position < len(encoded):
            if encoded[position] == "_":
                data.append(int(encoded[position + 1 : position + 3], 16))
                position += 3
            else:
                data.extend(encoded[position].encode())
                position += 1
        return data.decode()
    except ValueError as exc:  # a name under mlflow/ that this module did not write
        raise InvalidInputError(f"{encoded!r} is not an escaped artifact path component") from exc


def encode_path(path: str) -> str:
    """A '/'-separated relative path as '/'-separated name components."""
    return "/".join(encode_component(part) for part in path.strip("/").split("/"))


def open_store_above(uri: str) -> tuple[castore.Store, str]:
    """The store at or nearest above a ``castore+<URL>`` URI, and the URI's path after it."""
    if not uri.startswith(SCHEME_PREFIX):
        raise InvalidInputError(f"{uri!r} is not a castore artifact URI: castore+<store URL>")
    parts = urlsplit(uri[len(SCHEME_PREFIX) :])
    if not parts.scheme:
        raise InvalidInputError(f"{uri!r} names no store URL scheme: castore+file:///path, ...")
    components = [part for part in parts.path.split("/") if part]
    for kept in range(len(components), -1, -1):
        # MLflow writes castore+file:/path (no "//"); the store URL always gets them back
        url = f"{parts.scheme}://{parts.netloc}/{'/'.join(components[:kept])}"
        try:
            return castore.open(url), "/".join(components[kept:])
        except NotAStoreError:
            continue
    raise NotAStoreError(
        f"no castore store at {uri!r} or above it; create one with 'castore init' first"
    )


class CastoreArtifactRepository(ArtifactRepository):
    """MLflow artifacts as versions in a castore store (see the module)."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.store, prefix = open_store_above(artifact_uri)
        self.root = posixpath.join(NAME_ROOT, encode_path(prefix)) if prefix else NAME_ROOT
        """The name prefix of this URI's artifacts."""

    def _name(self, artifact_path: str | None) -> str:
        path = (artifact_path or "").strip("/")
        return posixpath.join(self.root, encode_path(path)) if path else self.root

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        """Save a local file as the next version of its artifact path."""
        target = posixpath.join(artifact_path or "", os.path.basename(local_file))
        self.store.save(Path(local_file), self._name(target), serializer="raw")

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Save every file under a local directory, keeping its relative path."""
        for folder, subfolders, files in os.walk(local_dir):
            subfolders.sort()
            inner = Path(folder).relative_to(local_dir).parts  # () for local_dir itself
            for file in sorted(files):
                target = posixpath.join(artifact_path or "", *inner, file)
                self.store.save(Path(folder, file), self._name(target), serializer="raw")

    def _names_under(self, name: str) -> list[str]:
        return [n for n in self.store.names() if n == name or n.startswith(f"{name}/")]

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        """The files and directories directly under `path` (nothing for a file, or for a
        path with no artifacts), as MLflow lists them."""
        base = self._name(path)
        prefix = (path or "").strip("/")
        children: dict[str, FileInfo] = {}
        for name in self._names_under(base):
            if name == base:
                continue
            first, nested, _ = name[len(base) + 1 :].partition("/")
            child = posixpath.join(prefix, decode_component(first))
            if nested:
                children[child] = FileInfo(child, True, None)
            elif child not in children:  # a name that is also a directory lists as one
                children[child] = FileInfo(child, False, self.store.version(name).stream_size)
        return [children[key] for key in sorted(children)]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        try:
            version = self.store.version(self._name(remote_file_path))
        except NotFoundError as exc:  # MLflow's code for it: a tracking server answers 404
            raise MlflowException(str(exc), error_code=RESOURCE_DOES_NOT_EXIST) from exc
        self.store.get_file(version.digest, local_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        """Delete every version of the artifacts at or under `artifact_path` (all of this
        URI's without it); ``castore gc`` frees their data."""
        for name in self._names_under(self._name(artifact_path)):
            for number in self.store.versions(name):
                self.store.delete(f"{name}:{number}")
