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
import sys
from typing import Any

from castore.errors import DeserializationError, IncompatibleEnvironmentError, InvalidInputError
from castore.versions import arrow_checks, strict_json

MARK = b"castore"
"""The schema metadata key that records what the frame was: ``{"pandas": "series"}``."""


def fits(obj: object) -> bool:
    """Whether `obj` is a pandas DataFrame or Series that round-trips exactly through
    Arrow: no attrs, an index frequency (if any) pandas checks quickly, unique string
    column labels, no object dtypes, and every column (index levels included) of a type
    the reader accepts. Such objects save as arrow by default when pyarrow is installed."""
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
        not obj.attrs
        and _cheap_frequency(getattr(obj.index, "freq", None), pandas)
        and not isinstance(labels, pandas.MultiIndex)
        and all(isinstance(label, str) for label in labels)
        and labels.is_unique
        and not any(str(dtype) == "object" for dtype in frame.dtypes)
        and not any(str(level.dtype) == "object" for level in _levels(frame.index, pandas))
        and all(arrow_checks.plain(pyarrow, field.type) for field in schema)
    )


def _cheap_frequency(offset: Any, pandas: Any) -> bool:
    """Whether an index frequency (or None) is one that pandas checks against an index in
    vectorized code: setting others (CustomBusinessHour, SemiMonthBegin...) walks every
    row in Python, seconds per hundred thousand rows."""
    offsets = pandas.tseries.offsets
    cheap = {offsets.Day, offsets.BusinessDay, offsets.Week, offsets.MonthBegin}
    cheap |= {offsets.MonthEnd, offsets.QuarterBegin, offsets.QuarterEnd, offsets.YearBegin}
    cheap |= {offsets.YearEnd}
    return offset is None or isinstance(offset, offsets.Tick) or type(offset) in cheap


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


def _read_table(pa: Any, data: Any, where: str) -> Any:
    arrow_checks.check_messages(pa, data, where)
    reader = pa.ipc.open_stream(data)
    for field in reader.schema:
        if not arrow_checks.plain(pa, field.type):
            reason = f"column {field.name!r} has type {field.type}, which castore never writes"
            raise arrow_checks.refuse(reason, where)
    table = reader.read_all()
    table.validate(full=True)
    arrow_checks.check_pandas_metadata(pa, table, where)
    return table


def _frequency(text: object, index: Any, where: str) -> Any:
    """The index frequency the mark names, if it is one castore writes for this index."""
    pandas = sys.modules["pandas"]
    if not isinstance(text, str) or not isinstance(
        index, pandas.DatetimeIndex | pandas.TimedeltaIndex
    ):
        raise arrow_checks.refuse("its index frequency is not a str on a time index", where)
    offset = pandas.tseries.frequencies.to_offset(text)
    if not _cheap_frequency(offset, pandas):
        raise arrow_checks.refuse(f"index frequency {text!r} is not one castore writes", where)
    return offset


def load(stream: bytearray, where: str) -> Any:
    """Read an arrow stream back into the DataFrame or Series it holds."""
    pa = _pyarrow()
    data = pa.py_buffer(stream)
    try:
        table = _read_table(pa, data, where)
        mark = strict_json.parse((table.schema.metadata or {}).get(MARK, b"{}"))
        if not isinstance(mark, dict) or mark.get("pandas") not in ("frame", "series"):
            raise arrow_checks.refuse(
                "its schema does not say whether it holds a frame or a series", where
            )
        frame = table.to_pandas()
        if "freq" in mark:
            frame.index.freq = _frequency(mark["freq"], frame.index, where)
    except DeserializationError:
        raise
    except Exception as exc:  # pyarrow's and pandas' errors on a malformed stream vary
        raise arrow_checks.refuse(f"{type(exc).__name__}: {exc}", where) from None
    if mark["pandas"] == "frame":
        return frame
    name = mark.get("name")
    if list(frame.columns) != ["series"] or not (name is None or isinstance(name, str)):
        raise arrow_checks.refuse("its series is not one column named by a str or None", where)
    return frame["series"].rename(name)
