"""pandas DataFrames and Series as an Arrow IPC stream: no pickle either way.

The stream is Arrow's IPC streaming format, written by pyarrow with no compression (castore
compresses chunks itself) and pyarrow's ``pandas`` schema metadata, which restores the
index and dtypes. A Series is stored as a one-column frame, marked in the schema metadata.

A reader decodes only what a castore writer produces, because decoding is where a hostile
stream does harm: compressed buffers declare their decompressed size (an 18-byte bomb),
and types with no per-row bytes (null, run-end encoded, zero-width lists) or pyarrow
extension types make pandas build arbitrary numbers of objects. Every message is checked
to carry no compression before anything is decoded, every column's type must be one of
plain scalar types or dictionaries of them, and the decoded table is validated in full.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from typing import Any

from castore.errors import DeserializationError, IncompatibleEnvironmentError, InvalidInputError

MARK = b"castore"
"""The schema metadata key that records what the frame was: ``{"pandas": "series"}``."""

# Positions of fields in Arrow's flatbuffer schema (format/Message.fbs).
_MESSAGE_HEADER_TYPE, _MESSAGE_HEADER = 1, 2
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3
_DICTIONARY_DATA, _RECORD_BATCH_COMPRESSION = 1, 3


def fits(obj: object) -> bool:
    """Whether `obj` is a pandas DataFrame or Series that round-trips exactly through
    Arrow: unique string column labels, no object dtypes, and every column (index levels
    included) of a type the reader accepts. Such objects save as arrow by default when
    pyarrow is installed."""
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(obj, pandas.DataFrame | pandas.Series):
        return False
    try:
        import pyarrow
    except ImportError:
        return False
    try:
        frame, _mark = _as_frame(obj, pandas)
        schema = pyarrow.Schema.from_pandas(frame)
    except (InvalidInputError, pyarrow.ArrowException, ValueError, TypeError):
        return False
    labels = frame.columns
    return (
        not isinstance(labels, pandas.MultiIndex)
        and all(isinstance(label, str) for label in labels)
        and labels.is_unique
        and not any(str(dtype) == "object" for dtype in frame.dtypes)
        and not any(str(level.dtype) == "object" for level in _levels(frame.index, pandas))
        and all(_plain(pyarrow, field.type) for field in schema)
    )


def _levels(index: Any, pandas: Any) -> list[Any]:
    return list(index.levels) if isinstance(index, pandas.MultiIndex) else [index]


def _as_frame(obj: Any, pandas: Any) -> tuple[Any, dict[str, Any]]:
    """The frame to store for `obj`, and the mark that says what `obj` was (and the
    frequency of its index, which Arrow does not keep)."""
    if not isinstance(obj, pandas.DataFrame | pandas.Series):
        raise InvalidInputError(
            f"serializer 'arrow' takes a pandas DataFrame or Series, not {type(obj).__name__}"
        )
    freq = {"freq": obj.index.freqstr} if getattr(obj.index, "freq", None) else {}
    if isinstance(obj, pandas.DataFrame):
        return obj, {"pandas": "frame"} | freq
    if obj.name is not None and not isinstance(obj.name, str):
        raise InvalidInputError("serializer 'arrow' takes Series named by a str or None")
    return obj.to_frame(name="series"), {"pandas": "series", "name": obj.name} | freq


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise IncompatibleEnvironmentError(
            "the arrow serializer needs pyarrow: pip install 'castore[pandas]'"
        ) from None
    return pyarrow


def dump(obj: Any, file: io.RawIOBase) -> None:
    """Write a DataFrame or Series as an uncompressed Arrow IPC stream into `file`."""
    pa = _pyarrow()
    frame, mark = _as_frame(obj, sys.modules.get("pandas"))
    try:
        table = pa.Table.from_pandas(frame)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise InvalidInputError(f"serializer 'arrow' cannot store this frame: {exc}") from None
    metadata = dict(table.schema.metadata or {}) | {MARK: json.dumps(mark).encode()}
    table = table.replace_schema_metadata(metadata)
    options = pa.ipc.IpcWriteOptions(compression=None)
    with pa.ipc.new_stream(file, table.schema, options=options) as writer:
        writer.write_table(table)


def _refuse(reason: str, where: str) -> DeserializationError:
    return DeserializationError(f"{where} is not a valid arrow stream: {reason}")


class _Flatbuffer:
    """Just enough of the flatbuffer encoding to find one field of a table, bounds-checked."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.where = data, where

    def _unpack(self, layout: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(layout) > len(self.data):
            raise _refuse("a message's metadata points outside itself", self.where)
        value: int = struct.unpack_from(layout, self.data, at)[0]
        return value

    def root(self) -> int:
        """The position of the root table."""
        return self._unpack("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        """The position of field `index` of the table at `table`, or None if it is absent."""
        vtable = table - self._unpack("<i", table)
        if 4 + 2 * index >= self._unpack("<H", vtable):
            return None
        offset = self._unpack("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def byte(self, table: int, index: int) -> int:
        """A ubyte field's value (0 when absent, its default)."""
        at = self.field(table, index)
        return 0 if at is None else self._unpack("<B", at)

    def table(self, table: int, index: int) -> int | None:
        """The position of the table a reference field points to, or None if absent."""
        at = self.field(table, index)
        return None if at is None else at + self._unpack("<I", at)


def _check_uncompressed(pa: Any, data: Any, where: str) -> None:
    """Refuse any record or dictionary batch that declares compressed buffers."""
    for message in pa.ipc.MessageReader.open_stream(data):
        buffer = _Flatbuffer(message.metadata.to_pybytes(), where)
        root = buffer.root()
        kind = buffer.byte(root, _MESSAGE_HEADER_TYPE)
        batch = buffer.table(root, _MESSAGE_HEADER)
        if kind == _DICTIONARY_BATCH and batch is not None:
            batch = buffer.table(batch, _DICTIONARY_DATA)
        elif kind != _RECORD_BATCH:
            continue
        if batch is not None and buffer.field(batch, _RECORD_BATCH_COMPRESSION) is not None:
            raise _refuse("it holds compressed buffers, which castore never writes", where)


def _plain(pa: Any, kind: Any) -> bool:
    """Whether an Arrow type costs bytes in the stream for every row it has."""
    types = pa.types
    if types.is_dictionary(kind):
        return _plain(pa, kind.index_type) and _plain(pa, kind.value_type)
    return any(
        check(kind)
        for check in (
            types.is_boolean,
            types.is_integer,
            types.is_floating,
            types.is_decimal,
            types.is_temporal,
            types.is_string,
            types.is_large_string,
            types.is_binary,
            types.is_large_binary,
        )
    ) and not isinstance(kind, pa.ExtensionType)


def _read_table(pa: Any, data: Any, where: str) -> Any:
    _check_uncompressed(pa, data, where)
    reader = pa.ipc.open_stream(data)
    for field in reader.schema:
        if not _plain(pa, field.type):
            reason = f"column {field.name!r} has type {field.type}, which castore never writes"
            raise _refuse(reason, where)
    table = reader.read_all()
    table.validate(full=True)
    return table


def load(stream: bytearray, where: str) -> Any:
    """Read an arrow stream back into the DataFrame or Series it holds."""
    pa = _pyarrow()
    data = pa.py_buffer(stream)
    try:
        table = _read_table(pa, data, where)
        mark = json.loads((table.schema.metadata or {}).get(MARK, b"{}"))
        if not isinstance(mark, dict) or mark.get("pandas") not in ("frame", "series"):
            raise _refuse("its schema does not say whether it holds a frame or a series", where)
        frame = table.to_pandas()
        if "freq" in mark:
            if not isinstance(mark["freq"], str):
                raise _refuse("its index frequency is not a str", where)
            frame.index.freq = mark["freq"]
    except DeserializationError:
        raise
    except Exception as exc:  # pyarrow's and pandas' errors on a malformed stream vary
        raise _refuse(f"{type(exc).__name__}: {exc}", where) from None
    if mark["pandas"] == "frame":
        return frame
    name = mark.get("name")
    if list(frame.columns) != ["series"] or not (name is None or isinstance(name, str)):
        raise _refuse("its series is not one column named by a str or None", where)
    return frame["series"].rename(name)
