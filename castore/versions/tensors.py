"""Dicts of numpy arrays or torch tensors in the safetensors layout: no pickle either way.

The stream is a valid ``.safetensors`` file: an 8-byte little-endian header length, a JSON
header padded with spaces to a multiple of 8 bytes, then every tensor's raw little-endian
bytes. Tensors are laid out widest element first, so each starts aligned to its element
size, and each tensor's bytes are contiguous, so that it chunks and deduplicates on its own.
The header keeps the dict's order; its ``__metadata__`` says ``{"format": "np"}`` or
``{"format": "pt"}`` (torch), as the safetensors library writes them.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from typing import Any

from castore.errors import DeserializationError, IncompatibleEnvironmentError, InvalidInputError
from castore.versions import strict_json

HEADER_LIMIT = 100 * 1024 * 1024
"""The largest header a reader accepts, as the safetensors library's."""
MAX_DIMENSIONS = 64
MAX_BYTES = 2**63 - 1
"""Extents times element size stay below this, as numpy's and torch's strides must."""
MAX_EMPTY_EXTENTS = 1 << 20
"""An empty tensor's other extents cost no bytes, but a reduction over its empty axis
makes an array that large: such dicts (rare) are saved with joblib."""

# safetensors dtype name -> (numpy dtype name, element size); bfloat16 exists only in torch.
_DTYPES = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "U16": ("uint16", 2),
    "I16": ("int16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "U32": ("uint32", 4),
    "I32": ("int32", 4),
    "F32": ("float32", 4),
    "U64": ("uint64", 8),
    "I64": ("int64", 8),
    "F64": ("float64", 8),
}
_CODES = {name: code for code, (name, _size) in _DTYPES.items()}


def _code(dtype: Any) -> str | None:
    """The safetensors name of a numpy or torch dtype, or None if the layout has none."""
    name = dtype.name if hasattr(dtype, "kind") else str(dtype).removeprefix("torch.")
    return _CODES.get(name)


def _is_plain_array(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and type(value) is numpy.ndarray


def _is_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and type(value) in (torch.Tensor, torch.nn.Parameter)


def fits(obj: object) -> bool:
    """Whether `obj` is a non-empty dict of str to plain numpy arrays, or to dense torch
    tensors, all of dtypes the layout has: such a dict saves as tensors by default."""
    if not isinstance(obj, dict) or not obj:
        return False
    if not all(isinstance(k, str) and k != "__metadata__" for k in obj):
        return False
    values = list(obj.values())
    if any(_too_wide_empty(v) for v in values if _is_plain_array(v) or _is_tensor(v)):
        return False
    if all(_is_plain_array(v) for v in values):
        return all(_code(v.dtype) not in (None, "BF16") for v in values)
    if all(_is_tensor(v) for v in values):
        return all(str(v.layout) == "torch.strided" and _code(v.dtype) for v in values)
    return False


def _too_wide_empty(value: Any) -> bool:
    shape = list(value.shape)
    return 0 in shape and _extent_product(shape, MAX_EMPTY_EXTENTS) > MAX_EMPTY_EXTENTS


def _little_endian_bytes(array: Any) -> Any:
    """A C-contiguous little-endian copy of a numpy array, or the array itself if it is one."""
    import numpy

    return numpy.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _as_records(obj: dict[str, Any]) -> tuple[str, list[tuple[str, str, list[int], Any]]]:
    """The dict's format and (name, dtype code, shape, little-endian uint8 view) per tensor."""
    if not fits(obj):
        raise InvalidInputError(
            "serializer 'tensors' takes a non-empty dict of str to numpy arrays (of bool, "
            "int, uint or float dtypes), or to dense torch tensors, not mixed"
        )
    records = []
    if all(_is_plain_array(v) for v in obj.values()):
        for name, array in obj.items():
            data = _little_endian_bytes(array).reshape(-1).view("uint8")
            records.append((name, str(_code(array.dtype)), list(array.shape), data))
        return "np", records
    for name, tensor in obj.items():
        import torch

        cpu = tensor.detach().cpu().contiguous()
        # numpy has no bfloat16: move every tensor's bytes as uint8 (torch is little-endian
        # on every platform it ships for).
        data = cpu.reshape(-1).view(torch.uint8).numpy()
        records.append((name, str(_code(cpu.dtype)), list(cpu.shape), data))
    return "pt", records


def dump(obj: dict[str, Any], file: io.RawIOBase) -> None:
    """Write `obj` in the safetensors layout into `file`."""
    format_name, records = _as_records(obj)
    order = sorted(records, key=lambda r: (-_DTYPES[r[1]][1], r[0]))
    offsets: dict[str, list[int]] = {}
    position = 0
    for name, _code, _shape, data in order:
        offsets[name] = [position, position + len(data)]
        position += len(data)
    header: dict[str, Any] = {"__metadata__": {"format": format_name}}
    for name, code, shape, _data in records:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": offsets[name]}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    file.write(struct.pack("<Q", len(encoded)) + encoded)
    for _name, _code, _shape, data in order:
        if len(data):
            file.write(memoryview(data))


def _refuse(reason: str, where: str) -> DeserializationError:
    return DeserializationError(f"{where} is not a valid tensors stream: {reason}")


def _parse_header(raw: bytes, where: str) -> dict[str, Any]:
    try:
        header = strict_json.parse(raw)
    except ValueError as exc:
        raise _refuse(f"its header is not JSON ({exc})", where) from None
    if not isinstance(header, dict):
        raise _refuse("its header is not a JSON object", where)
    return header


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _extent_product(shape: list[int], limit: int) -> int:
    """The product of the shape's non-zero extents, or limit + 1 as soon as it exceeds
    `limit`: even an empty tensor's strides must fit in 64 bits, and no huge int is made."""
    total = 1
    for extent in shape:
        total *= extent or 1
        if total > limit:
            return limit + 1
    return total


class _Entry:
    """One tensor the header describes, checked."""

    def __init__(self, name: str, spec: object, data_size: int, where: str) -> None:
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise _refuse(f"tensor {name!r} is not dtype, shape and data_offsets", where)
        code, shape, span = spec["dtype"], spec["shape"], spec["data_offsets"]
        if code not in _DTYPES:
            raise _refuse(f"tensor {name!r} has an unknown dtype {code!r}", where)
        valid_shape = isinstance(shape, list) and len(shape) <= MAX_DIMENSIONS
        if not valid_shape or not all(_is_count(extent) for extent in shape):
            raise _refuse(f"tensor {name!r} has an invalid shape", where)
        if not (isinstance(span, list) and len(span) == 2 and all(map(_is_count, span))):
            raise _refuse(f"tensor {name!r} has invalid data_offsets", where)
        begin, end = span
        if not begin <= end <= data_size:
            raise _refuse(f"tensor {name!r} lies outside the data", where)
        itemsize = _DTYPES[code][1]
        limit = MAX_BYTES // itemsize
        extents = _extent_product(shape, limit)
        if extents > limit:
            raise _refuse(f"tensor {name!r}'s shape is too large", where)
        if 0 in shape and extents > MAX_EMPTY_EXTENTS:
            raise _refuse(f"empty tensor {name!r} has extents over {MAX_EMPTY_EXTENTS}", where)
        if (0 if 0 in shape else extents) * itemsize != end - begin:
            raise _refuse(f"tensor {name!r}'s shape does not match its bytes", where)
        if begin % itemsize:
            raise _refuse(f"tensor {name!r} is not aligned to its element size", where)
        self.name, self.code, self.shape, self.begin, self.end = name, code, shape, begin, end
        self.count = (end - begin) // itemsize


def _entries(header: dict[str, Any], data_size: int, where: str) -> tuple[str, list[_Entry]]:
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse("its __metadata__ is not a map of strings", where)
    entries = [_Entry(name, spec, data_size, where) for name, spec in header.items()]
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise _refuse("its tensors overlap or leave gaps in the data", where)
        position = entry.end
    if position != data_size:
        raise _refuse("bytes after its last tensor", where)
    return metadata.get("format", "np"), entries


def _layout(head: bytes | bytearray, size: int, where: str) -> tuple[str, list[_Entry]]:
    """The format and the checked tensors of a stream of `size` bytes that starts with
    `head` (at least its header), with offsets from the stream's start."""
    if size < 8 or len(head) < 8:
        raise _refuse("it is shorter than its header length", where)
    (header_size,) = struct.unpack_from("<Q", head)
    if header_size > min(size - 8, HEADER_LIMIT):
        raise _refuse(f"its header length {header_size} is larger than the stream", where)
    if header_size % 8:
        raise _refuse("its header is not padded to a multiple of 8 bytes", where)
    header = _parse_header(bytes(head[8 : 8 + header_size]), where)
    base = 8 + header_size
    format_name, entries = _entries(header, size - base, where)
    for entry in entries:
        entry.begin += base
        entry.end += base
    if format_name != "pt" and any(entry.code == "BF16" for entry in entries):
        raise _refuse("it holds bfloat16, which only torch streams can", where)
    return format_name, entries


def _check_bools(entries: list[_Entry], data: Any, where: str) -> None:
    for entry in entries:
        if entry.code == "BOOL" and bytes(data[entry.begin : entry.end]).translate(None, b"\0\1"):
            raise _refuse(f"tensor {entry.name!r} has bool bytes other than 0 and 1", where)


def _numpy_dtype(entry: _Entry) -> Any:
    import numpy

    return numpy.dtype(_DTYPES[entry.code][0]).newbyteorder("<")


def load(stream: bytearray, where: str) -> dict[str, Any]:
    """Read a tensors stream back into a dict, checking every field first: numpy arrays,
    or torch tensors for a ``"pt"`` stream, all views of `stream`; no code is run."""
    format_name, entries = _layout(stream, len(stream), where)
    _check_bools(entries, stream, where)
    if format_name == "pt":
        return _torch_tensors(entries, stream, where)
    import numpy

    return {
        e.name: numpy.frombuffer(stream, _numpy_dtype(e), e.count, e.begin).reshape(e.shape)
        for e in entries
    }


def load_mapped(path: str, mode: str, where: str) -> dict[str, Any]:
    """Like `load`, but numpy arrays are memory-mapped from the verified file at `path`
    with numpy's `mode` ("r", "r+", "c"); torch streams are read into memory."""
    import numpy

    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(8)
        if len(head) == 8:
            head += file.read(min(struct.unpack("<Q", head)[0], HEADER_LIMIT))
    format_name, entries = _layout(head, size, where)
    if format_name == "pt":
        with open(path, "rb") as file:
            return load(bytearray(file.read()), where)
    checked_by_numpy: Any = mode  # numpy refuses a mode it does not know
    whole = numpy.memmap(path, numpy.uint8, checked_by_numpy)
    _check_bools(entries, whole, where)
    return {e.name: whole[e.begin : e.end].view(_numpy_dtype(e)).reshape(e.shape) for e in entries}


def _torch_tensors(entries: list[_Entry], data: bytearray, where: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise IncompatibleEnvironmentError(
            f"{where} holds torch tensors: install torch to load it"
        ) from None
    result = {}
    for e in entries:
        dtype = getattr(torch, _DTYPES[e.code][0])
        # torch.frombuffer refuses a count of 0, so empty tensors are made, not viewed.
        tensor = (
            torch.frombuffer(data, dtype=dtype, count=e.count, offset=e.begin)
            if e.count
            else torch.empty(0, dtype=dtype)
        )
        result[e.name] = tensor.reshape(e.shape)
    return result
