"""joblib's format: a pickle in which each NumpyArrayWrapper is followed by the array's bytes.

Arrays are read here rather than by joblib, so that their sizes are checked against the
stream before anything is allocated, and object arrays (a nested pickle) go through the
same restrictions. While scanning, headers are still read and the array bytes skipped,
so that every global of the stream is found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from castore.errors import DeserializationError, UnsafeObjectError
from castore.safety.bounds import LimitedReader
from castore.safety.names import lookup
from castore.safety.policy import Allowlist
from castore.safety.unpickler import REFUSED, Refused, RestrictedUnpickler

MAX_DIMENSIONS = 64
"""numpy's own limit on an array's dimensions."""


@dataclass(frozen=True)
class ArrayHeader:
    """What a joblib NumpyArrayWrapper says about the array bytes that follow it, checked."""

    subclass: Any
    """An ndarray class, or REFUSED when the stream names a refused one (it is then only
    scanned)."""
    shape: tuple[int, ...]
    fortran: bool
    dtype: Any
    aligned: bool
    allow_mmap: bool

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of array data in the stream."""
        return self.count * self.dtype.itemsize

    @classmethod
    def of(cls, wrapper: Any, allowlist: Allowlist) -> ArrayHeader:
        """Validate a wrapper's state: every field comes from the untrusted stream."""
        import numpy as np

        state = vars(wrapper)
        shape, dtype, subclass = state.get("shape"), state.get("dtype"), state.get("subclass")
        alignment = state.get("numpy_array_alignment_bytes")
        if (
            not isinstance(shape, tuple)
            or len(shape) > MAX_DIMENSIONS
            or not all(
                isinstance(n, int | np.integer) and not isinstance(n, bool) and 0 <= n < 2**63
                for n in shape
            )
        ):  # bounded first: math.prod of large integers alone can take seconds
            raise DeserializationError(f"a joblib array has a malformed shape {shape!r}")
        if not isinstance(dtype, np.dtype):
            raise DeserializationError(f"a joblib array has a malformed dtype {dtype!r}")
        if dtype.itemsize == 0 and 0 not in shape:  # elements for free: len() of 2**62
            raise DeserializationError("a joblib array has elements of no size")
        if subclass is not REFUSED and (
            not (isinstance(subclass, type) and issubclass(subclass, np.ndarray))
            or not (
                subclass in (np.ndarray, np.memmap) or allowlist.admission_of(subclass) is not None
            )
        ):
            raise DeserializationError(f"a joblib array has a malformed class {subclass!r}")
        if state.get("order") not in ("C", "F") or not isinstance(alignment, int | None):
            raise DeserializationError("a joblib array has a malformed order or alignment")
        return cls(
            subclass=subclass,
            shape=tuple(int(n) for n in shape),
            fortran=state["order"] == "F",
            dtype=dtype,
            aligned=alignment is not None,
            allow_mmap=state.get("allow_mmap") is True,
        )


class JoblibUnpickler(RestrictedUnpickler):
    """joblib's format: a pickle in which each NumpyArrayWrapper is followed by array bytes.

    Arrays are read here rather than by joblib, so that their sizes are checked against
    the stream before anything is allocated, and object arrays (a nested pickle) go
    through the same restrictions. While scanning, the wrappers and their dtypes are still
    built, so that the array bytes after them can be skipped.
    """

    def __init__(
        self,
        source: LimitedReader,
        allowlist: Allowlist,
        *,
        path: str | None = None,
        mmap_mode: str | None = None,
    ) -> None:
        super().__init__(source, allowlist)
        self._path = path
        self._mmap_mode = mmap_mode if path is not None else None

    def needed_to_read(self, cls: type) -> bool:
        """Array wrappers and dtypes: they say how many bytes of array data follow."""
        wrapper = lookup("joblib.numpy_pickle", "NumpyArrayWrapper")
        dtype = lookup("numpy", "dtype")
        return cls is wrapper or (isinstance(dtype, type) and issubclass(cls, dtype))

    def built(self, obj: Any) -> Any:
        """Replace a NumpyArrayWrapper by the array that follows it in the stream."""
        wrapper = lookup("joblib.numpy_pickle", "NumpyArrayWrapper")
        if wrapper is None or type(obj) is not wrapper:
            return super().built(obj)
        import numpy as np

        header = ArrayHeader.of(obj, self.allowlist)
        if header.dtype.hasobject:
            array = self._object_array()
        elif self.scanning:
            array = self._skip_array(header)
        elif self._mmap_mode is not None and header.allow_mmap:
            array = self._mapped_array(header)
        else:
            array = self._read_array(header)
        if array is REFUSED:  # only read past, while scanning
            return array
        if header.subclass not in (np.ndarray, np.memmap):
            array = array.view(header.subclass)
        return array

    def _object_array(self) -> Any:
        """The nested pickle of an object array, checked on its own; its globals are
        recorded with the stream's, and its refusals are the stream's."""
        import numpy as np

        nested = RestrictedUnpickler(self.source, self.allowlist)
        nested.decisions = self.decisions
        if self.scanning:
            nested.scan()
            return REFUSED
        try:
            array = nested.load()
        except UnsafeObjectError:
            if nested.first_refusal is None:
                raise
            self._refuse(nested.first_refusal)  # read on, to name the stream's other refusals
            return REFUSED
        if not isinstance(array, np.ndarray):
            raise DeserializationError("a joblib object array holds no array")
        return array

    def _skip_padding(self, header: ArrayHeader) -> None:
        if header.aligned:
            padding = self.source.read(1)
            if len(padding) != 1 or len(self.source.read(padding[0])) != padding[0]:
                raise DeserializationError("the stream ends inside an array's padding")

    def _check_size(self, header: ArrayHeader) -> None:
        left = self.source.remaining
        if left is not None and header.nbytes > left:
            raise DeserializationError(
                f"an array of shape {header.shape} needs {header.nbytes} bytes but the stream "
                f"holds only {left} more"
            )

    def _skip_array(self, header: ArrayHeader) -> Refused:
        """Read past an array's bytes, for REFUSED to stand for it."""
        self._skip_padding(header)
        self._check_size(header)
        if self.source.skip(header.nbytes) != header.nbytes:
            raise DeserializationError("the stream ends inside an array")
        return REFUSED

    def _read_array(self, header: ArrayHeader) -> Any:
        import numpy as np

        self._skip_padding(header)
        self._check_size(header)
        data: bytes | bytearray | np.ndarray[Any, Any]
        if self.source.remaining is None:
            data = bytearray(self.source.read(header.nbytes))
            flat = np.frombuffer(data, dtype=header.dtype, count=len(data) // header.dtype.itemsize)
        else:
            flat = np.empty(header.count, dtype=header.dtype)
            data = flat.view(np.uint8) if header.nbytes else b""
            self.source.readinto(data)
        if flat.size * header.dtype.itemsize != header.nbytes or len(data) != header.nbytes:
            raise DeserializationError("the stream ends inside an array")
        array = (
            flat.reshape(header.shape[::-1]).transpose()
            if header.fortran
            else flat.reshape(header.shape)
        )
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def _mapped_array(self, header: ArrayHeader) -> Any:
        from joblib.backports import make_memmap

        self._skip_padding(header)
        self._check_size(header)
        array = make_memmap(
            self._path,
            dtype=header.dtype,
            shape=header.shape,
            order="F" if header.fortran else "C",
            mode=self._mmap_mode,
            offset=self.source.position,
        )
        self.source.skip(header.nbytes)
        return array
