"""How Python objects become byte streams and back: joblib, pickle, cloudpickle, raw."""

from __future__ import annotations

import os
import pickle
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from types import ModuleType
from typing import IO, Any, Protocol

from castore import safety
from castore.engine.writer import StreamWriter
from castore.errors import DeserializationError, IncompatibleEnvironmentError, InvalidInputError
from castore.versions import arrow, boosters, tensors


@dataclass(frozen=True)
class LoadOptions:
    """How a serializer reads a stream back."""

    path: str | None = None
    """A verified local copy of the stream, for memory-mapped loads."""
    mmap_mode: str | None = None
    """numpy's memory-map mode for arrays (joblib and tensors), or None to read them."""
    size: int | None = None
    """The stream's length, which bounds every length field read from it."""
    allowlist: safety.Allowlist | None = None
    """What the restricted unpickler admits; None means the built-in rules only."""
    unsafe: bool = False
    """Unpickle with Python's plain unpickler: only for streams from a trusted author."""
    where: str = "the stream"
    """How errors name the stream, e.g. "version 3 of churn/model"."""

    def restrictions(self) -> safety.Allowlist:
        """The allowlist to enforce."""
        return self.allowlist or safety.Allowlist()


DEFAULT_LOAD = LoadOptions()
READ_PIECE = 4 * 1024 * 1024


class Serializer(Protocol):
    """Turns objects into a byte stream written to a file, and back."""

    name: str
    kind: str
    pickled: bool
    """Whether the stream is a pickle, which the restricted unpickler guards and a save
    scans for globals the default policy refuses."""

    def version(self) -> str:
        """The version of the library that writes the stream."""
        ...

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """Write the object's serialized bytes into a store stream."""
        ...

    def load(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> Any:
        """Read an object back from `file`, as `options` say."""
        ...

    def scan(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> safety.Scan:
        """The globals the stream in `file` names and what `options`' allowlist makes of
        each, found without building anything."""
        ...


def _distribution_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


@contextmanager
def _picklable(obj: Any, serializer: str) -> Iterator[None]:
    """Turn pickle's refusal of functions defined in place into a castore error."""
    try:
        yield
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        if "pickle" not in str(exc).lower():
            raise
        raise InvalidInputError(
            f"serializer {serializer!r} cannot save this {type(obj).__name__}: {exc}. "
            "Lambdas, local functions and classes defined in __main__ need "
            "serializer='cloudpickle' (which loads only with a trusted signature or "
            "allow_unsafe=True)"
        ) from exc


class JoblibSerializer:
    """joblib.dump / joblib.load: numpy arrays stored raw, memory-mappable."""

    name = "joblib"
    kind = "object"
    pickled = True

    def version(self) -> str:
        """joblib's version."""
        return _distribution_version("joblib")

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """joblib.dump into the file, uncompressed (castore compresses per chunk)."""
        import joblib

        with _picklable(obj, self.name):
            joblib.dump(obj, file)

    def load(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> Any:
        """joblib's format, restricted unless `unsafe`; mmap loads map the local copy."""
        if options.unsafe:
            import joblib

            if options.mmap_mode is not None:
                return joblib.load(options.path, mmap_mode=options.mmap_mode)
            return joblib.load(file)
        return safety.load_joblib(
            file,
            options.restrictions(),
            size=options.size,
            path=options.path,
            mmap_mode=options.mmap_mode,
            where=options.where,
        )

    def scan(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> safety.Scan:
        """The restricted unpickler's scan of joblib's format (array data is skipped)."""
        return safety.scan_joblib(file, options.restrictions(), size=options.size)


class PickleSerializer:
    """The standard library's pickle, protocol 5."""

    name = "pickle"
    kind = "object"
    pickled = True

    def version(self) -> str:
        """The pickle protocol used."""
        return "protocol-5"

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """pickle.dump with protocol 5."""
        with _picklable(obj, self.name):
            pickle.dump(obj, file, protocol=5)

    def load(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> Any:
        """pickle.load if `unsafe`, else the restricted unpickler (cloudpickle streams too)."""
        if options.unsafe:
            return pickle.load(file)
        return safety.load_pickle(
            file, options.restrictions(), size=options.size, where=options.where
        )

    def scan(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> safety.Scan:
        """The restricted unpickler's scan (cloudpickle streams too)."""
        return safety.scan_pickle(file, options.restrictions(), size=options.size)


class CloudpickleSerializer(PickleSerializer):
    """cloudpickle, for lambdas and classes defined in __main__; bound to a Python minor."""

    name = "cloudpickle"

    def version(self) -> str:
        """cloudpickle's version."""
        return _distribution_version("cloudpickle")

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """cloudpickle.dump with protocol 5."""
        try:
            import cloudpickle
        except ImportError as exc:
            raise InvalidInputError(
                "serializer 'cloudpickle' needs the cloudpickle package: "
                "pip install 'castore[cloudpickle]'"
            ) from exc
        cloudpickle.dump(obj, file, protocol=5)


class RawSerializer:
    """Bytes, a binary file or a path stored as they are; loads back as bytes."""

    name = "raw"
    kind = "file"
    pickled = False

    def version(self) -> str:
        """No library is involved."""
        return "1"

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """Copy the bytes, file object or file at a path."""
        if isinstance(obj, bytes | bytearray | memoryview):
            file.write(obj)
        elif isinstance(obj, os.PathLike):
            with open(obj, "rb") as source:
                file.copy_from(source)
        elif hasattr(obj, "read"):
            file.copy_from(obj)
        else:
            raise InvalidInputError(
                f"serializer 'raw' takes bytes, a binary file or a path, not {type(obj).__name__}"
            )

    def load(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> Any:
        """The stored bytes: nothing is interpreted, so no policy applies."""
        return file.read()

    def scan(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> safety.Scan:
        """Nothing: raw bytes name no globals."""
        return safety.Scan()


def _read_whole(file: IO[bytes], options: LoadOptions) -> bytearray:
    """The whole stream in one buffer that loaded arrays may share. It grows as verified
    bytes arrive, not by the size a manifest declares."""
    buffer = bytearray()
    try:
        while piece := file.read(READ_PIECE):
            buffer += piece
    except MemoryError:
        raise DeserializationError(
            f"{options.where} does not fit in memory ({len(buffer)} bytes read)"
        ) from None
    return buffer


class DataSerializer:
    """A serializer whose streams hold data only (castore/versions/tensors.py, arrow.py,
    boosters.py): its reader accepts only what its writer produces and builds no object
    the stream names, so no load policy applies and a scan finds no globals."""

    kind = "object"
    pickled = False

    def __init__(self, name: str, codec: ModuleType, library: str | None) -> None:
        self.name = name
        self._codec = codec
        self._library = library

    def version(self) -> str:
        """The version of the library that writes the stream, or the layout's own."""
        return "1" if self._library is None else _distribution_version(self._library)

    def dump(self, obj: Any, file: StreamWriter) -> None:
        """The codec's stream for `obj`; InvalidInputError if it cannot hold `obj`."""
        self._codec.dump(obj, file)

    def load(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> Any:
        """The object back, every field checked first. With `options.mmap_mode`, a codec
        that can (tensors) maps arrays from the verified local copy."""
        load_mapped = getattr(self._codec, "load_mapped", None)
        if load_mapped is not None and options.mmap_mode is not None and options.path:
            return load_mapped(options.path, options.mmap_mode, options.where)
        return self._codec.load(_read_whole(file, options), options.where)

    def scan(self, file: IO[bytes], options: LoadOptions = DEFAULT_LOAD) -> safety.Scan:
        """Nothing: these streams name no globals."""
        return safety.Scan()


SERIALIZERS: dict[str, Serializer] = {
    s.name: s
    for s in (
        JoblibSerializer(),
        PickleSerializer(),
        CloudpickleSerializer(),
        RawSerializer(),
        DataSerializer("tensors", tensors, library=None),
        DataSerializer("arrow", arrow, library="pyarrow"),
        DataSerializer("xgboost", boosters, library="xgboost"),
    )
}


def serializer_for(obj: Any, name: str | None) -> tuple[Serializer, Any]:
    """The serializer called `name`, or with None the one that suits `obj` (tensors for a
    dict of arrays or tensors, arrow for a pandas frame or series, xgboost for an XGBoost
    model the reader accepts, else joblib), and what to pass to its ``dump``: `obj`, or the
    model xgboost already serialized and checked to decide."""
    if name is not None:
        return serializer_named(name), obj
    if tensors.fits(obj):
        return SERIALIZERS["tensors"], obj
    if arrow.fits(obj):
        return SERIALIZERS["arrow"], obj
    model = boosters.checked_model(obj)
    if model is not None:
        return SERIALIZERS["xgboost"], model
    return SERIALIZERS["joblib"], obj


def serializer_named(name: object) -> Serializer:
    """The serializer called `name`; InvalidInputError lists the known ones otherwise."""
    if not isinstance(name, str) or name not in SERIALIZERS:
        raise InvalidInputError(f"unknown serializer {name!r}; choose one of {sorted(SERIALIZERS)}")
    return SERIALIZERS[name]


def python_minor() -> str:
    """This interpreter's major.minor version, e.g. '3.11'."""
    return ".".join(platform.python_version_tuple()[:2])


def check_loadable(serializer: str, saved_python: str, where: str) -> None:
    """Refuse cloudpickle streams saved under another Python minor version, clearly."""
    saved_minor = ".".join(saved_python.split(".")[:2])
    if serializer == "cloudpickle" and saved_minor != python_minor():
        raise IncompatibleEnvironmentError(
            f"{where} was saved with cloudpickle under Python {saved_python}; this is Python "
            f"{platform.python_version()}. cloudpickle's output only loads in the Python minor "
            f"version that wrote it: load it with Python {saved_minor}, or re-save it with "
            "serializer='joblib' or 'pickle'"
        )
