"""What an arrow stream must be before pyarrow and pandas decode it: what castore writes.

Decoding is where a hostile stream does harm, so each rule closes a way found to make a
small stream cost far more than its size:
- messages carry metadata version V5 and no message-level custom metadata (legacy V4
  streams can ask for compression there), and batches no body compression: a compressed
  buffer declares the size it decompresses to;
- each dictionary is sent once, never as a delta (deltas cost quadratic memory), and
  belongs to one column (columns sharing a dictionary id decode it once per column);
- the buffers of a batch lie one after the other inside its body (overlapping buffers
  let every column decode the same bytes), and nothing follows the end-of-stream marker;
- row counts are non-negative and at most 8 per stream byte (a bit-packed bool column is
  the cheapest that castore writes; a frame with no columns costs no bytes per row);
- column types cost stream bytes for every row (no null, run-end encoded, list or
  extension types);
- pyarrow's ``pandas`` metadata names, for every column, the pandas dtype that its Arrow
  type comes from when castore writes it, so that ``to_pandas`` converts nothing into
  another type (a bool column cast to strings, column labels cast to 500 MB strings).
"""

from __future__ import annotations

import struct
from typing import Any

from castore.errors import DeserializationError
from castore.versions import strict_json

ROWS_PER_BYTE = 8
METADATA_V5 = 4
# Positions of fields in Arrow's flatbuffer schema (format/Message.fbs).
_MESSAGE_VERSION, _MESSAGE_HEADER_TYPE, _MESSAGE_HEADER, _MESSAGE_CUSTOM_METADATA = 0, 1, 2, 4
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
_SCHEMA_FIELDS, _FIELD_DICTIONARY, _ENCODING_ID = 1, 4, 0
_DICTIONARY_ID, _DICTIONARY_DATA, _DICTIONARY_IS_DELTA = 0, 1, 2
_RECORD_BATCH_LENGTH, _RECORD_BATCH_BUFFERS, _RECORD_BATCH_COMPRESSION = 0, 2, 3
_BUFFER_SIZE = 16  # struct Buffer { offset: long; length: long; }
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"

PANDAS_KEYS = {"index_columns", "column_indexes", "columns", "attributes", "creator"}
PANDAS_KEYS |= {"pandas_version"}
COLUMN_KEYS = {"name", "field_name", "pandas_type", "numpy_type", "metadata"}
COLUMN_METADATA_KEYS = {"num_categories", "ordered", "timezone", "encoding", "precision", "scale"}
RANGE_KEYS = {"kind", "name", "start", "stop", "step"}
LABEL_INDEX_TYPES = {("unicode", "str"), ("unicode", "object"), ("empty", "object")}
LABEL_INDEX_TYPES |= {("empty", "str")}


def refuse(reason: str, where: str) -> DeserializationError:
    """The error for an arrow stream castore would not write."""
    return DeserializationError(f"{where} is not a valid arrow stream: {reason}")


class _Flatbuffer:
    """Just enough of the flatbuffer encoding to read fields of tables, bounds-checked."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.where = data, where

    def _unpack(self, layout: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(layout) > len(self.data):
            raise refuse("a message's metadata points outside itself", self.where)
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

    def scalar(self, table: int, index: int, layout: str) -> int:
        """A scalar field's value (0 when absent: the default of every field read here)."""
        at = self.field(table, index)
        return 0 if at is None else self._unpack(layout, at)

    def table(self, table: int, index: int) -> int | None:
        """The position of the table a reference field points to, or None if absent."""
        at = self.field(table, index)
        return None if at is None else at + self._unpack("<I", at)

    def vector(self, table: int, index: int, width: int) -> list[int]:
        """The positions of the elements (`width` bytes each) of a vector field."""
        at = self.table(table, index)
        if at is None:
            return []
        count = self._unpack("<I", at)
        if at + 4 + count * width > len(self.data):
            raise refuse("a message's metadata points outside itself", self.where)
        return [at + 4 + k * width for k in range(count)]

    def tables(self, table: int, index: int) -> list[int]:
        """The positions of the tables a vector field of tables points to."""
        return [at + self._unpack("<I", at) for at in self.vector(table, index, 4)]

    def longs(self, at: int, count: int) -> list[int]:
        """`count` little-endian 64-bit integers from position `at`."""
        return [self._unpack("<q", at + 8 * k) for k in range(count)]


def _check_schema(buffer: _Flatbuffer, schema: int, where: str) -> None:
    identities = []
    for field in buffer.tables(schema, _SCHEMA_FIELDS):
        encoding = buffer.table(field, _FIELD_DICTIONARY)
        if encoding is not None:
            identities.append(buffer.scalar(encoding, _ENCODING_ID, "<q"))
    if len(set(identities)) != len(identities):
        raise refuse("columns share a dictionary", where)


def _check_buffers(buffer: _Flatbuffer, records: int, body: int, where: str) -> None:
    end = 0
    for at in buffer.vector(records, _RECORD_BATCH_BUFFERS, _BUFFER_SIZE):
        offset, length = buffer.longs(at, 2)
        if offset < end or length < 0 or offset + length > body:
            raise refuse("a batch's buffers overlap or lie outside its body", where)
        end = offset + length


def check_messages(pa: Any, data: Any, where: str) -> None:
    """Check every message's metadata (see the module) before any batch is decoded."""
    dictionaries: set[int] = set()
    rows = 0
    source = pa.BufferReader(data)
    for message in pa.ipc.MessageReader.open_stream(source):
        buffer = _Flatbuffer(message.metadata.to_pybytes(), where)
        root = buffer.root()
        if buffer.scalar(root, _MESSAGE_VERSION, "<h") != METADATA_V5:
            raise refuse("its messages are not of Arrow's metadata version V5", where)
        if buffer.field(root, _MESSAGE_CUSTOM_METADATA) is not None:
            raise refuse("a message carries custom metadata", where)
        kind = buffer.scalar(root, _MESSAGE_HEADER_TYPE, "<B")
        header = buffer.table(root, _MESSAGE_HEADER)
        if header is None:
            continue
        if kind == _SCHEMA:
            _check_schema(buffer, header, where)
            continue
        if kind == _DICTIONARY_BATCH:
            identity = buffer.scalar(header, _DICTIONARY_ID, "<q")
            if buffer.scalar(header, _DICTIONARY_IS_DELTA, "<B") or identity in dictionaries:
                raise refuse("a dictionary is sent twice or as a delta", where)
            dictionaries.add(identity)
            records = buffer.table(header, _DICTIONARY_DATA)
        elif kind == _RECORD_BATCH:
            records = header
        else:
            continue
        if records is None:
            continue
        if buffer.field(records, _RECORD_BATCH_COMPRESSION) is not None:
            raise refuse("it holds compressed buffers, which castore never writes", where)
        if kind == _RECORD_BATCH:
            length = buffer.scalar(records, _RECORD_BATCH_LENGTH, "<q")
            rows += length
            if length < 0 or rows > ROWS_PER_BYTE * data.size:
                raise refuse("its row counts are negative or more than its bytes hold", where)
        body = message.body.size if message.body is not None else 0
        _check_buffers(buffer, records, body, where)
    if source.tell() != data.size or data[-len(END_OF_STREAM) :].to_pybytes() != END_OF_STREAM:
        raise refuse("it does not end at its end-of-stream marker", where)


def plain(pa: Any, kind: Any) -> bool:
    """Whether an Arrow type costs bytes in the stream for every row it has."""
    types = pa.types
    if isinstance(kind, pa.ExtensionType):
        return False
    if types.is_dictionary(kind):
        # to_pandas drops the time zone of a dictionary's timestamps: wrong data back.
        zoned = types.is_timestamp(kind.value_type) and kind.value_type.tz is not None
        return not zoned and plain(pa, kind.index_type) and plain(pa, kind.value_type)
    return any(
        check(kind)
        for check in (
            types.is_boolean,
            types.is_integer,
            types.is_floating,
            types.is_decimal,
            types.is_timestamp,
            types.is_duration,
            types.is_date,
            types.is_time,
            types.is_string,
            types.is_large_string,
            types.is_binary,
            types.is_large_binary,
        )
    )


def _numpy_name(kind: Any) -> str:
    import numpy

    return numpy.dtype(kind.to_pandas_dtype()).name


def _numpy_types(pa: Any, kind: Any, has_nulls: bool) -> set[str]:
    """The pandas dtypes a column of Arrow type `kind` comes from when castore writes it."""
    types = pa.types
    if types.is_dictionary(kind):
        return {_numpy_name(kind.index_type)}  # a categorical's codes
    if types.is_boolean(kind):
        return {"boolean"} | (set() if has_nulls else {"bool"})
    if types.is_integer(kind) or types.is_floating(kind):
        name = _numpy_name(kind)
        nullable = name.capitalize().replace("Uint", "UInt")
        return {nullable} | (set() if has_nulls and types.is_integer(kind) else {name})
    if types.is_timestamp(kind):
        naive = f"datetime64[{kind.unit}]"
        return {naive} if kind.tz is None else {naive, f"datetime64[{kind.unit}, {kind.tz}]"}
    if types.is_duration(kind):
        return {f"timedelta64[{kind.unit}]"}
    if types.is_string(kind) or types.is_large_string(kind):
        return {"str", "string", "object"}
    return {"object"}  # decimals, dates, times and binaries come from object columns


def _is_count(value: object) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def _check_column(pa: Any, entry: object, table: Any, indexes: list[object], where: str) -> str:
    if not isinstance(entry, dict) or set(entry) != COLUMN_KEYS:
        raise refuse("a column's pandas metadata is not the fields pyarrow writes", where)
    field_name = entry["field_name"]
    if not isinstance(field_name, str) or table.schema.get_field_index(field_name) < 0:
        raise refuse("pandas metadata names a column the stream does not have", where)
    # A data column's label is its field's name, so labels are unique; an index level's
    # name is any str or None.
    if field_name in indexes:
        if not (entry["name"] is None or isinstance(entry["name"], str)):
            raise refuse(f"index level {field_name!r}'s name is not a str", where)
    elif entry["name"] != field_name:
        raise refuse(f"column {field_name!r} is labelled {entry['name']!r}", where)
    column = table.column(field_name)
    if entry["numpy_type"] not in _numpy_types(pa, column.type, column.null_count > 0):
        reason = f"column {field_name!r} of type {column.type} claims dtype {entry['numpy_type']!r}"
        raise refuse(reason, where)
    is_dictionary = pa.types.is_dictionary(column.type)
    if (entry["pandas_type"] == "categorical") != is_dictionary:
        raise refuse(f"column {field_name!r}'s pandas_type does not match its type", where)
    metadata = entry["metadata"]
    if metadata is not None and not (
        isinstance(metadata, dict)
        and set(metadata) <= COLUMN_METADATA_KEYS
        and all(isinstance(v, str | int | bool) for v in metadata.values())
    ):
        raise refuse(f"column {field_name!r}'s pandas metadata is not plain", where)
    timezone = metadata.get("timezone") if isinstance(metadata, dict) else None
    if timezone is not None and getattr(column.type, "tz", None) != timezone:
        raise refuse(f"column {field_name!r}'s timezone does not match its type", where)
    return field_name


def _is_range(entry: object, rows: int) -> bool:
    """Whether `entry` is pyarrow's record of a RangeIndex of exactly `rows` rows."""
    return (
        isinstance(entry, dict)
        and set(entry) == RANGE_KEYS
        and entry["kind"] == "range"
        and (entry["name"] is None or isinstance(entry["name"], str))
        and all(_is_count(entry[key]) for key in ("start", "stop", "step"))
        and entry["step"] != 0
        and len(range(entry["start"], entry["stop"], entry["step"])) == rows
    )


def _check_indexes(entries: list[object], fields: set[str], rows: int, where: str) -> None:
    """The index: one range as long as the table, or distinct columns (its levels)."""
    if len(entries) == 1 and not isinstance(entries[0], str):
        if not _is_range(entries[0], rows):
            raise refuse("its range index is not a range as long as the table", where)
        return
    if not all(isinstance(entry, str) and entry in fields for entry in entries):
        raise refuse("an index is neither a column nor a range", where)
    if len(set(entries)) != len(entries):
        raise refuse("an index column is used twice", where)


def check_pandas_metadata(pa: Any, table: Any, where: str) -> None:
    """Refuse pandas metadata that would make ``to_pandas`` convert a column or the
    column labels into anything but the dtype its Arrow type comes from (see the module)."""
    raw = (table.schema.metadata or {}).get(b"pandas")
    if raw is None:
        raise refuse("it has no pandas metadata, which castore always writes", where)
    try:
        metadata = strict_json.parse(raw)
    except ValueError:
        raise refuse("its pandas metadata is not JSON", where) from None
    if not isinstance(metadata, dict) or not set(metadata) <= PANDAS_KEYS:
        raise refuse("its pandas metadata has fields pyarrow does not write", where)
    if metadata.get("attributes", {}) != {}:
        raise refuse("it carries frame attributes, which castore never writes", where)
    _check_labels(metadata.get("column_indexes", []), where)
    indexes = metadata.get("index_columns", [])
    columns = metadata.get("columns", [])
    if not isinstance(indexes, list) or not isinstance(columns, list):
        raise refuse("its pandas columns or index columns are not lists", where)
    named = [_check_column(pa, entry, table, indexes, where) for entry in columns]
    if sorted(named) != sorted(table.schema.names):
        raise refuse("its pandas metadata does not describe each column once", where)
    _check_indexes(indexes, set(named), table.num_rows, where)
    _check_no_sentinel_times(pa, table, where)


def _check_no_sentinel_times(pa: Any, table: Any, where: str) -> None:
    """pandas reads the int64 minimum of a timestamp or duration as NaT: a value the stream
    holds as data would come back as a null (castore's writer never stores it)."""
    import pyarrow.compute

    for column in table.columns:
        kind = column.type
        values = column
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
            values = pa.chunked_array([chunk.dictionary for chunk in column.chunks], kind)
        if not (pa.types.is_timestamp(kind) or pa.types.is_duration(kind)):
            continue
        lowest = pyarrow.compute.min(values.cast(pa.int64())).as_py()
        if lowest == -(2**63):
            raise refuse("a time holds the int64 minimum, which pandas reads as NaT", where)


def _check_labels(levels: object, where: str) -> None:
    """The column labels: at most one level, of strings, named by a str or None."""
    if not isinstance(levels, list) or len(levels) > 1:
        raise refuse("its column labels are not one level of strings", where)
    for level in levels:
        if (
            not isinstance(level, dict)
            or not set(level) <= COLUMN_KEYS
            or (level.get("pandas_type"), level.get("numpy_type")) not in LABEL_INDEX_TYPES
            or not (level.get("name") is None or isinstance(level.get("name"), str))
            or level.get("metadata") not in (None, {"encoding": "UTF-8"})
        ):
            raise refuse("its column labels are not one level of strings", where)
