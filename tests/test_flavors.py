"""Data-only flavors: dicts of arrays or tensors (safetensors layout) and pandas frames
(Arrow IPC) save by default, load under the default policy with no trust, and their
readers refuse any stream a castore writer would not produce, with castore's errors."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import castore
from castore.versions import arrow_checks
from tests.helpers import plant_version

NUMPY_DTYPES = ["bool", "uint8", "int8", "<u2", ">i2", "float16", "<u4", ">i4", "float32"]
NUMPY_DTYPES += ["<u8", "int64", ">f8"]
FIXTURE = [HealthCheck.function_scoped_fixture]  # one store for all examples: names differ


@pytest.fixture
def store(tmp_path: Path) -> castore.Store:
    return castore.init(str(tmp_path / "store"))


def _no_warning_save(store: castore.Store, obj: object, name: str) -> castore.Version:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return store.save(obj, name)


arrays = st.sampled_from(NUMPY_DTYPES).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(st.dictionaries(st.text(min_size=0, max_size=8), arrays, min_size=1, max_size=5))
def test_a_dict_of_arrays_round_trips_as_tensors_with_no_trust(
    store: castore.Store, tensors: dict[str, np.ndarray]
) -> None:
    if "__metadata__" in tensors:
        return
    version = _no_warning_save(store, tensors, "weights")
    assert version.serializer == "tensors"
    loaded = store.load(version.reference)
    assert list(loaded) == list(tensors)
    for key, array in tensors.items():
        assert loaded[key].dtype == array.dtype.newbyteorder("<")
        assert loaded[key].shape == array.shape
        np.testing.assert_array_equal(loaded[key], array)
    assert store.inspect(version.reference).loads


def test_the_stream_is_a_safetensors_file_with_aligned_tensors(store: castore.Store) -> None:
    tensors = {"b": np.arange(3, dtype=np.int8), "w": np.ones((4, 5)), "h": np.zeros(7, "<u2")}
    version = store.save(tensors, "weights")
    data = store.get(version.content_digest)
    loaded = safetensors.numpy.load(data)
    assert set(loaded) == set(tensors)
    for key, array in tensors.items():
        np.testing.assert_array_equal(loaded[key], array)
    (header_size,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + header_size])
    assert header_size % 8 == 0
    assert list(header) == ["__metadata__", "b", "w", "h"]
    for key in tensors:
        begin, _end = header[key]["data_offsets"]
        assert begin % tensors[key].itemsize == 0


def test_changing_one_tensor_stores_little_more_than_that_tensor(store: castore.Store) -> None:
    rng = np.random.default_rng(1)
    model = {f"layer{i}": rng.standard_normal(256 * 1024).astype(np.float32) for i in range(8)}
    store.save(model, "model")
    before = store.stats().stored_bytes
    model["layer3"] = rng.standard_normal(256 * 1024).astype(np.float32)
    store.save(model, "model")
    added = store.stats().stored_bytes - before
    one_tensor = model["layer3"].nbytes
    assert one_tensor * 0.8 < added < one_tensor * 1.5


def test_torch_tensors_load_back_as_torch_tensors(store: castore.Store) -> None:
    torch = pytest.importorskip("torch")
    import safetensors.torch

    state = {
        "w": torch.randn(3, 4, dtype=torch.bfloat16),
        "b": torch.nn.Parameter(torch.arange(5.0)),
        "mask": torch.tensor([True, False]),
        "t": torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),  # not contiguous
        "empty": torch.zeros(0, 3),
    }
    version = _no_warning_save(store, state, "state")
    assert version.serializer == "tensors"
    loaded = store.load(version.reference)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert type(loaded[key]) is torch.Tensor
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor.detach())
    from_file = safetensors.torch.load(store.get(version.content_digest))
    assert torch.equal(from_file["w"], state["w"])


def test_mixed_or_unsupported_dicts_go_to_joblib(store: castore.Store) -> None:
    assert store.save({"a": np.ones(2), "b": 1}, "mixed").serializer == "joblib"
    assert store.save({"a": np.array(["x"])}, "strings").serializer == "joblib"
    assert store.save({1: np.ones(2)}, "int-keys").serializer == "joblib"
    assert store.save({}, "empty").serializer == "joblib"
    assert store.save({"__metadata__": np.ones(2)}, "reserved").serializer == "joblib"
    assert store.save({"a": np.zeros((0, 2**21))}, "empty-wide").serializer == "joblib"
    assert store.save({"a": np.zeros((0, 768))}, "empty-narrow").serializer == "tensors"
    with pytest.raises(castore.InvalidInputError, match="tensors"):
        store.save({"a": np.ones(2), "b": 1}, "forced", serializer="tensors")


FRAMES = {
    "numbers": pd.DataFrame({"i": [1, 2], "f": [1.5, np.nan], "u": np.arange(2, dtype="u1")}),
    "dtypes": pd.DataFrame(
        {
            "cat": pd.Categorical(["x", "y", "x"]),
            "when": pd.date_range("2020", periods=3, tz="UTC"),
            "delta": pd.to_timedelta([1, 2, 3], unit="s"),
            "text": pd.array(["p", None, "r"], dtype="string"),
            "flag": [True, False, True],
            "nullable": pd.array([1, None, 3], dtype="Int64"),
        },
        index=pd.Index([5, 6, 7], name="row"),
    ),
    "multiindex": pd.DataFrame(
        {"v": [1.0, 2.0]}, index=pd.MultiIndex.from_tuples([(1, 2), (3, 4)], names=["a", "b"])
    ),
    "empty": pd.DataFrame({"a": pd.Series([], dtype="float64")}),
    "index-named-as-a-column": pd.DataFrame({"a": [1, 2]}, index=pd.Index([3, 4], name="a")),
    "labels-named": pd.DataFrame({"a": [1]}).rename_axis(columns="field"),
}


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_a_dataframe_round_trips_as_arrow_with_no_trust(store: castore.Store, kind: str) -> None:
    frame = FRAMES[kind]
    version = _no_warning_save(store, frame, kind)
    assert version.serializer == "arrow"
    pd.testing.assert_frame_equal(store.load(version.reference), frame, check_exact=True)
    assert store.inspect(version.reference).loads


@pytest.mark.parametrize("name", [None, "price"])
def test_a_series_round_trips_as_arrow(store: castore.Store, name: str | None) -> None:
    series = pd.Series([1.5, None, 2.5], name=name, index=pd.date_range("2021", periods=3))
    version = _no_warning_save(store, series, "series")
    assert version.serializer == "arrow"
    pd.testing.assert_series_equal(store.load(version.reference), series, check_exact=True)


def test_frames_arrow_cannot_hold_exactly_go_to_joblib(store: castore.Store) -> None:
    candidates = {
        "int-labels": pd.DataFrame({1: [1.0]}),
        "object-column": pd.DataFrame({"a": pd.Series([1, "x"], dtype=object)}),
        "duplicate-labels": pd.DataFrame([[1, 2]], columns=["a", "a"]),
        "periods": pd.DataFrame({"p": pd.period_range("2020", periods=2, freq="D")}),
        "attrs": pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=True),
    }
    candidates["attrs"].attrs["source"] = "survey"
    hours = pd.date_range("2024-01-02 09:00", periods=3, freq="cbh")
    candidates["costly-frequency"] = pd.DataFrame({"a": [1, 2, 3]}, index=hours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", castore.UnloadableVersionWarning)
        for name, frame in candidates.items():
            assert store.save(frame, name).serializer == "joblib", name


def test_a_version_of_an_unknown_serializer_resolves_but_does_not_load(
    store: castore.Store,
) -> None:
    version = plant_version(store, "future", b"bytes", "serializer-of-2030")
    assert store.info(version.reference)["serializer"]["name"] == "serializer-of-2030"
    with pytest.raises(castore.UnsupportedFormatError, match="serializer-of-2030"):
        store.load(version.reference)
    with pytest.raises(castore.UnsupportedFormatError, match="newer castore"):
        store.inspect(version.reference)


# -- hostile tensors streams ------------------------------------------------------------------


def _tensors_stream(header: object, data: bytes = b"", pad: bool = True) -> bytes:
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


HOSTILE_TENSORS = {
    "short": b"\x01\x02",
    "header longer than stream": struct.pack("<Q", 1 << 40) + b"{}",
    "header not padded": _tensors_stream(b'{"a":1}', pad=False),
    "not json": _tensors_stream(b"{nope"),
    "not an object": _tensors_stream([1, 2]),
    "duplicate key": _tensors_stream(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        b"\0",
    ),
    "unknown dtype": _tensors_stream({"a": _entry("F128", [1], 0, 16)}, bytes(16)),
    "shape too small": _tensors_stream({"a": _entry("F32", [1], 0, 8)}, bytes(8)),
    "huge shape": _tensors_stream({"a": _entry("U8", [2**62, 2**62, 0 + 1], 0, 8)}, bytes(8)),
    "negative dim": _tensors_stream({"a": _entry("U8", [-1], 0, 1)}, bytes(1)),
    "bool dim": _tensors_stream({"a": _entry("U8", [True], 0, 1)}, bytes(1)),
    "too many dims": _tensors_stream({"a": _entry("U8", [1] * 65, 0, 1)}, bytes(1)),
    "float offset": _tensors_stream({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1]}}),
    "extra field": _tensors_stream({"a": {**_entry("U8", [1], 0, 1), "x": 1}}, bytes(1)),
    "outside the data": _tensors_stream({"a": _entry("U8", [4], 0, 4)}, bytes(2)),
    "overlap": _tensors_stream(
        {"a": _entry("U8", [2], 0, 2), "b": _entry("U8", [2], 1, 3)}, bytes(3)
    ),
    "gap": _tensors_stream({"a": _entry("U8", [1], 1, 2)}, bytes(2)),
    "trailing bytes": _tensors_stream({"a": _entry("U8", [1], 0, 1)}, bytes(2)),
    "misaligned": _tensors_stream(
        {"a": _entry("U8", [1], 0, 1), "b": _entry("F32", [1], 1, 5)}, bytes(5)
    ),
    "bool byte 2": _tensors_stream({"a": _entry("BOOL", [2], 0, 2)}, b"\x01\x02"),
    "nan constant": _tensors_stream(b'{"__metadata__":{"x":NaN}}'),
    "metadata not strings": _tensors_stream({"__metadata__": {"format": 1}}),
    "bf16 outside torch": _tensors_stream({"a": _entry("BF16", [1], 0, 2)}, bytes(2)),
    "deep json": _tensors_stream(b"[" * 100_000 + b"]" * 100_000),
    "huge int": _tensors_stream(
        b'{"a":{"dtype":"U8","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,1]}}'
    ),
}


PT = {"__metadata__": {"format": "pt"}}
# Found by attacking the reader: empty tensors whose other extents overflow 64-bit strides.
HOSTILE_TENSORS |= {
    "zero next to 2**64": _tensors_stream({"a": _entry("U8", [0, 2**64], 0, 0)}),
    "zero next to two 2**63-1": _tensors_stream(
        {"a": _entry("U8", [0, 2**63 - 1, 2**63 - 1], 0, 0)}
    ),
    "torch zero next to 2**64": _tensors_stream(PT | {"a": _entry("U8", [0, 2**64], 0, 0)}),
    "torch strides overflow": _tensors_stream(PT | {"a": _entry("U8", [0, 2**62, 2**62], 0, 0)}),
    # ... and an empty tensor whose reduction over the empty axis makes 1 GB.
    "empty but wide": _tensors_stream({"a": _entry("F64", [0, 2**27], 0, 0)}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TENSORS))
def test_hostile_tensors_streams_are_refused_as_damage(store: castore.Store, case: str) -> None:
    version = plant_version(store, "victim/weights", HOSTILE_TENSORS[case], "tensors")
    for mmap_mode in (None, "r"):
        with pytest.raises(castore.DeserializationError, match="not a valid tensors stream"):
            store.load(version.reference, mmap_mode=mmap_mode)


def _load_flipped(
    store: castore.Store, data: st.DataObject, stream: bytearray, serializer: str
) -> object:
    """Load `stream` with one to four bytes set to values hypothesis draws, as a version
    of `serializer`: what it loads as, or None if castore refused it as damage."""
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    version = plant_version(store, "fuzzed", bytes(stream), serializer)
    try:
        return store.load(version.reference)
    except castore.DeserializationError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE)
@given(st.data())
def test_mutated_tensors_streams_load_or_fail_with_castore_errors(
    store: castore.Store, data: st.DataObject
) -> None:
    valid = bytearray(
        _tensors_stream(
            {
                "__metadata__": {"format": "np"},
                "w": _entry("F32", [2], 0, 8),
                "m": _entry("BOOL", [3], 8, 11),
            },
            np.ones(2, "<f4").tobytes() + b"\x01\x00\x01",
        )
    )
    loaded = _load_flipped(store, data, valid, "tensors")
    if loaded is None:
        return
    assert isinstance(loaded, dict)
    assert sum(a.nbytes for a in loaded.values()) <= len(valid)


# -- hostile arrow streams --------------------------------------------------------------------


def _arrow_stream(table: pa.Table, compression: str | None = None) -> bytes:
    mark = {b"castore": json.dumps({"pandas": "frame"}).encode()}
    table = table.replace_schema_metadata(mark)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _null_rows(count: int) -> pa.Table:
    return pa.table({"n": pa.nulls(count)})


HOSTILE_ARROW = {
    "compressed": (_arrow_stream(pa.table({"z": np.zeros(1 << 16)}), "zstd"), "compressed"),
    "dictionary compressed": (
        _arrow_stream(pa.table({"c": pa.array(["a"] * 100).dictionary_encode()}), "lz4"),
        "compressed",
    ),
    "null rows": (_arrow_stream(_null_rows(1000)), "type null"),
    "run-end encoded": (
        _arrow_stream(pa.table({"r": pa.RunEndEncodedArray.from_arrays([1000], [1.0])})),
        "run_end_encoded",
    ),
    "list": (_arrow_stream(pa.table({"l": [[1], [2, 3]]})), "list"),
    "struct": (_arrow_stream(pa.table({"s": [{"a": 1}]})), "struct"),
    "not arrow": (b"\xff\xff\xff\xff" + bytes(100), ""),
    "truncated": (_arrow_stream(pa.table({"a": [1, 2, 3]}))[:-20], ""),
}


def _with_pandas(table: pa.Table, pandas: dict | bytes) -> bytes:
    """A stream whose pyarrow pandas metadata is `pandas` (or its JSON), as a store writer
    may plant."""
    raw = pandas if isinstance(pandas, bytes) else json.dumps(pandas).encode()
    metadata = {b"castore": b'{"pandas": "frame"}', b"pandas": raw}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _column(name: str, pandas_type: str, numpy_type: str) -> dict:
    return {"name": name, "field_name": name, "pandas_type": pandas_type,
            "numpy_type": numpy_type, "metadata": None}  # fmt: skip


LABELS = {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str",
          "metadata": None}  # fmt: skip


def _pandas(columns: list, labels: list | None = None) -> dict:
    return {"index_columns": [], "column_indexes": [LABELS] if labels is None else labels,
            "columns": columns}  # fmt: skip


def _legacy_compressed() -> bytes:
    """A V4 stream asking for zstd in a message's custom metadata (Arrow's old way): its
    buffer declares 64 MiB and is a few KiB."""
    size = 64 << 20
    frame = pa.Codec("zstd").compress(pa.py_buffer(bytes(size)), asbytes=True)
    payload = np.frombuffer(struct.pack("<q", size) + frame, np.uint8)
    schema = pa.schema([pa.field("a", pa.uint8())], metadata={b"castore": b'{"pandas": "frame"}'})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(metadata_version=pa.ipc.MetadataVersion.V4)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        writer.write_batch(
            pa.record_batch([pa.array(payload)], schema=schema),
            custom_metadata={"ARROW:experimental_compression": "ZSTD"},
        )
    return sink.getvalue().to_pybytes()


def _delta_dictionaries() -> bytes:
    field = pa.field("a", pa.dictionary(pa.int32(), pa.string()))
    schema = pa.schema([field], metadata={b"castore": b'{"pandas": "frame"}'})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    values = pa.array(["a", "b"])
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for extra in ("c", "d"):
            values = pa.concat_arrays([values, pa.array([extra])])
            codes = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), values)
            writer.write_batch(pa.record_batch([codes], schema=schema))
    return sink.getvalue().to_pybytes()


def _rows_without_bytes(rows: int) -> bytes:
    """A frame with no columns whose batch length is patched to `rows`."""
    marker = 0x12345
    table = pa.table({"x": pa.nulls(marker)}).drop_columns(["x"])
    data = _with_pandas(table, _pandas([]))
    needle = marker.to_bytes(8, "little")
    assert needle in data
    return data.replace(needle, rows.to_bytes(8, "little", signed=True))


BOOLS = pa.table({"a": pa.array(np.zeros(1000, bool))})
INTS = pa.table({"a": pa.array(np.arange(10))})
HALF_NULL_BOOLS = pa.table({"a": pa.array(np.zeros(1000, bool), mask=np.arange(1000) % 2 == 0)})
# Found by attacking the arrow reader: each made a small stream cost far more than its size.
HOSTILE_ARROW |= {
    "compressed in V4 custom metadata": (_legacy_compressed(), "metadata version V5"),
    "delta dictionaries": (_delta_dictionaries(), "dictionary is sent twice or as a delta"),
    "label dtype of 400 MB strings": (
        _with_pandas(
            INTS, _pandas([_column("a", "int64", "int64")], [LABELS | {"numpy_type": "U100000000"}])
        ),
        "column labels",
    ),
    "tuple labels to literal_eval": (
        _with_pandas(INTS, _pandas([_column("a", "int64", "int64")], [LABELS, LABELS])),
        "column labels",
    ),
    "bools cast to strings": (
        _with_pandas(BOOLS, _pandas([_column("a", "bool", "large_string[pyarrow]")])),
        "claims dtype",
    ),
    "ints as periods": (
        _with_pandas(INTS, _pandas([_column("a", "int64", "period[D]")])),
        "claims dtype",
    ),
    "nullable bools as numpy bools": (
        _with_pandas(HALF_NULL_BOOLS, _pandas([_column("a", "bool", "bool")])),
        "claims dtype",
    ),
    "no pandas metadata": (_arrow_stream(HALF_NULL_BOOLS), "no pandas metadata"),
    "no mark": (
        _with_pandas(INTS, _pandas([_column("a", "int64", "int64")])).replace(
            b"castore", b"xastore"
        ),
        "frame or a series",
    ),
    "rows that cost no bytes": (_rows_without_bytes(2**40), "row counts"),
    "negative rows": (_rows_without_bytes(-1), "row counts"),
}


def _patched_messages(data: bytes, patch: object) -> bytes:
    """`data` with `patch(buffer, flatbuffer, base, kind, header)` applied to each message's
    metadata in place (`base` is where the metadata starts in `buffer`)."""
    out = bytearray(data)
    position = 0
    while True:
        length = struct.unpack_from("<i", out, position + 4)[0]
        if length == 0:
            return bytes(out)
        base = position + 8
        flat = arrow_checks._Flatbuffer(bytes(out[base : base + length]), "test")
        root = flat.root()
        kind = flat.scalar(root, 1, "<B")
        patch(out, flat, base, kind, flat.table(root, 2))  # type: ignore[operator]
        position = base + length + flat.scalar(root, 3, "<q")


def _aliased_buffers(out: bytearray, flat: object, base: int, kind: int, header: int) -> None:
    """Point every buffer of a record batch at the first one."""
    if kind == 3:
        for at in flat.vector(header, 2, 16):  # type: ignore[attr-defined]
            struct.pack_into("<q", out, base + at, 0)


def _past_the_body(out: bytearray, flat: object, base: int, kind: int, header: int) -> None:
    if kind == 3:
        last = flat.vector(header, 2, 16)[-1]  # type: ignore[attr-defined]
        struct.pack_into("<q", out, base + last + 8, 1 << 20)


def _one_dictionary_id(out: bytearray, flat: object, base: int, kind: int, header: int) -> None:
    if kind == 1:
        for field in flat.tables(header, 1):  # type: ignore[attr-defined]
            encoding = flat.field(flat.table(field, 4), 0)  # type: ignore[attr-defined]
            if encoding is not None:  # an absent id is 0 already
                struct.pack_into("<q", out, base + encoding, 0)


def _frame_stream(frame: pd.DataFrame, edit: object = None, mark: bytes | None = None) -> bytes:
    """The stream castore writes for `frame`, its pandas metadata passed through `edit`
    (and its castore mark replaced by `mark`)."""
    table = pa.Table.from_pandas(frame)
    metadata = dict(table.schema.metadata)
    pandas = json.loads(metadata[b"pandas"])
    if edit is not None:
        edit(pandas)  # type: ignore[operator]
    mark = mark or b'{"pandas": "frame"}'
    metadata |= {b"pandas": json.dumps(pandas).encode(), b"castore": mark}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


BOOL_COLUMNS = pd.DataFrame({f"c{i}": np.zeros(64, bool) for i in range(4)})
CATEGORIES = pd.DataFrame({n: pd.Categorical(["x", "y"]) for n in ("p", "q")})
TWO = pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]})
DATED = TWO.set_axis(pd.date_range("2024-01-01", periods=2, freq="D"))
# Found by the second attack on the arrow reader.
HOSTILE_ARROW |= {
    "buffers that overlap": (
        _patched_messages(_frame_stream(BOOL_COLUMNS), _aliased_buffers),
        "buffers overlap",
    ),
    "a buffer past the body": (
        _patched_messages(_frame_stream(BOOL_COLUMNS), _past_the_body),
        "outside its body",
    ),
    "columns sharing a dictionary": (
        _patched_messages(_frame_stream(CATEGORIES), _one_dictionary_id),
        "share a dictionary",
    ),
    "bytes after the end": (_frame_stream(TWO) + b"tail", "end-of-stream"),
    "no end marker": (_frame_stream(TWO)[:-8], "end-of-stream"),
    "frame attributes": (
        _frame_stream(TWO, lambda p: p.update(attributes={"x": [[]] * 1000})),
        "frame attributes",
    ),
    "duplicate labels": (
        _frame_stream(TWO, lambda p: p["columns"][1].update(name="a")),
        "'b' is labelled 'a'",
    ),
    "a None label": (
        _frame_stream(TWO, lambda p: p["columns"][0].update(name=None)),
        "labelled None",
    ),
    "labels level named by an int": (
        _frame_stream(TWO, lambda p: p["column_indexes"][0].update(name=7)),
        "column labels",
    ),
    "a costly index frequency": (
        _frame_stream(DATED, mark=b'{"pandas": "frame", "freq": "cbh"}'),
        "frequency 'cbh' is not one castore writes",
    ),
    "a range index repeated": (
        _frame_stream(TWO, lambda p: p.update(index_columns=p["index_columns"] * 3)),
        "neither a column nor a range",
    ),
    "a range index of another length": (
        _frame_stream(TWO, lambda p: p["index_columns"][0].update(stop=100)),
        "range as long as the table",
    ),
    "an index column twice": (
        _frame_stream(
            TWO.set_axis(pd.Index([5, 3], name="row")),
            lambda p: p.update(index_columns=p["index_columns"] * 2),
        ),
        "used twice",
    ),
    "the int64 minimum as a time": (
        _with_pandas(
            pa.table({"t": pa.array([0, -(2**63)], pa.timestamp("s"))}),
            _pandas([_column("t", "datetime", "datetime64[s]")]),
        ),
        "int64 minimum",
    ),
    # Found by the fourth attack: to_pandas drops a dictionary's time zone.
    "a categorical of zoned times": (
        _with_pandas(
            pa.table(
                {
                    "c": pa.DictionaryArray.from_arrays(
                        pa.array([0, 1], pa.int8()), pa.array([0, 1], pa.timestamp("ns", "UTC"))
                    )
                }
            ),
            _pandas([_column("c", "categorical", "int8")]),
        ),
        "dictionary<values=timestamp",
    ),
    "a key twice": (
        _with_pandas(
            INTS,
            json.dumps(_pandas([_column("a", "int64", "int64")]))
            .replace('"column_indexes"', '"columns": [], "column_indexes"')
            .encode(),
        ),
        "not JSON",
    ),
}


def test_a_categorical_of_zoned_times_saves_with_joblib_and_keeps_its_zone(
    store: castore.Store,
) -> None:
    frame = pd.DataFrame({"c": pd.Categorical(pd.date_range("2020", periods=3, tz="UTC"))})
    naive = pd.DataFrame({"c": pd.Categorical(pd.date_range("2020", periods=3))})
    assert store.save(naive, "naive").serializer == "arrow"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", castore.UnloadableVersionWarning)
        version = store.save(frame, "zoned")
    assert version.serializer == "joblib"
    pd.testing.assert_frame_equal(store.load(version.reference, allow_unsafe=True), frame)


def test_a_frequency_on_an_index_that_has_none_is_refused(store: castore.Store) -> None:
    stream = _frame_stream(TWO, mark=b'{"pandas": "frame", "freq": "D"}')
    version = plant_version(store, "victim/frame", stream, "arrow")
    with pytest.raises(castore.DeserializationError, match="frequency"):
        store.load(version.reference)


@pytest.mark.parametrize("case", sorted(HOSTILE_ARROW))
def test_hostile_arrow_streams_are_refused_as_damage(store: castore.Store, case: str) -> None:
    data, reason = HOSTILE_ARROW[case]
    version = plant_version(store, "victim/frame", data, "arrow")
    with pytest.raises(castore.DeserializationError, match=f"not a valid arrow stream.*{reason}"):
        store.load(version.reference)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE)
@given(st.data())
def test_mutated_arrow_streams_load_or_fail_with_castore_errors(
    store: castore.Store, data: st.DataObject
) -> None:
    frame = pd.DataFrame({"a": [1, 2], "c": pd.Categorical(["x", "y"]), "s": ["p", None]})
    valid = bytearray(store.get(store.save(frame, "frame").content_digest))
    loaded = _load_flipped(store, data, valid, "arrow")
    if loaded is None:
        return
    assert isinstance(loaded, pd.DataFrame | pd.Series)
    assert len(loaded) <= len(valid) * 8


def test_tensors_memory_map_from_the_verified_local_copy(store: castore.Store) -> None:
    tensors = {"w": np.arange(1000, dtype=np.float32), "m": np.array([True, False])}
    version = store.save(tensors, "weights")
    loaded = store.load(version.reference, mmap_mode="r")
    for key, array in tensors.items():
        assert isinstance(loaded[key], np.memmap)
        np.testing.assert_array_equal(loaded[key], array)
    with pytest.raises(castore.InvalidInputError, match="mmap_mode"):
        store.load(version.reference, mmap_mode="w+")


@pytest.mark.parametrize("kind", ["tensors", "joblib"])
def test_mapped_arrays_cannot_change_what_later_loads_read(store: castore.Store, kind: str) -> None:
    """Every load of a stream maps the same verified copy: "r+" would write through to it,
    so it is refused, and "c" gives writable arrays whose writes stay in the process."""
    weights = np.arange(1000, dtype=np.float64)
    obj = {"w": weights} if kind == "tensors" else {"w": weights, "note": "joblib"}
    version = store.save(obj, "mapped")
    assert version.serializer == ("tensors" if kind == "tensors" else "joblib")
    with pytest.raises(castore.InvalidInputError, match='"c" maps arrays copy-on-write'):
        store.load(version.reference, mmap_mode="r+")
    written = store.load(version.reference, mmap_mode="c")
    written["w"][:] = -1.0
    np.testing.assert_array_equal(store.load(version.reference, mmap_mode="r")["w"], weights)


# -- XGBoost models ------------------------------------------------------------------------

xgboost = pytest.importorskip("xgboost")
FEATURES = np.random.default_rng(7).random((300, 5))
TARGETS = (FEATURES[:, 0] * 3).astype(int)


def _fitted(kind: str) -> object:
    if kind == "booster":
        return xgboost.train({"max_depth": 3}, xgboost.DMatrix(FEATURES, label=TARGETS), 4)
    estimator = {"classifier": xgboost.XGBClassifier, "regressor": xgboost.XGBRegressor}[kind]
    return estimator(n_estimators=4, max_depth=3).fit(FEATURES, TARGETS)


def _predict(model: object) -> np.ndarray:
    if isinstance(model, xgboost.Booster):
        return model.predict(xgboost.DMatrix(FEATURES))
    return model.predict(FEATURES)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["booster", "classifier", "regressor"])
def test_an_xgboost_model_round_trips_in_its_json_format(store: castore.Store, kind: str) -> None:
    model = _fitted(kind)
    version = _no_warning_save(store, model, kind)
    assert version.serializer == "xgboost"
    loaded = store.load(version.reference)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(_predict(loaded), _predict(model))
    assert store.inspect(version.reference).loads


def test_xgboost_models_the_reader_does_not_accept_go_to_joblib(store: castore.Store) -> None:
    matrix = xgboost.DMatrix(FEATURES, label=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", castore.UnloadableVersionWarning)
        for booster in ("dart", "gblinear"):
            model = xgboost.train({"booster": booster}, matrix, 2)
            assert store.save(model, booster).serializer == "joblib"


def _model_json() -> dict:
    return json.loads(_fitted("classifier").get_booster().save_raw("json"))  # type: ignore[attr-defined]


def _tree(model: dict, index: int = 0) -> dict:
    return model["learner"]["gradient_booster"]["model"]["trees"][index]


def _mutated(change: object) -> bytes:
    model = _model_json()
    change(model)  # type: ignore[operator]
    return json.dumps(model).encode()


def _chain(model: dict, depth: int) -> None:
    """Make tree 0 a chain of `depth` splits, each with a leaf beside it."""
    nodes = 2 * depth + 1
    tree = _tree(model)
    left, right, parents = [-1] * nodes, [-1] * nodes, [0] * nodes
    parents[0] = 2**31 - 1
    for level in range(depth):
        node = 2 * level
        left[node], right[node] = node + 1, node + 2
        parents[node + 1] = parents[node + 2] = node
    tree.update(
        left_children=left,
        right_children=right,
        parents=parents,
        split_indices=[0] * nodes,
        split_type=[0] * nodes,
        default_left=[0] * nodes,
        **{key: [0.5] * nodes for key in ("split_conditions", "base_weights")},
        **{key: [1.0] * nodes for key in ("loss_changes", "sum_hessian")},
    )
    tree["tree_param"]["num_nodes"] = str(nodes)


def _features(model: dict, count: int) -> None:
    learner = model["learner"]
    for part in [learner["learner_model_param"]] + [
        tree["tree_param"] for tree in learner["gradient_booster"]["model"]["trees"]
    ]:
        part["num_feature"] = str(count)


def _groups(model: dict, count: int) -> None:
    """Make the model `count` trees, one per output group (a valid multi-class layout)."""
    booster = model["learner"]["gradient_booster"]["model"]
    booster["trees"] = [dict(_tree(model), id=number) for number in range(count)]
    booster["tree_info"] = list(range(count))
    booster["iteration_indptr"] = [0, count]
    booster["gbtree_model_param"]["num_trees"] = str(count)
    learner = model["learner"]
    learner["learner_model_param"].update(num_class=str(count), base_score="5E-1")
    learner["objective"]["softmax_multiclass_param"]["num_class"] = str(count)


HOSTILE_XGBOOST = {
    "split on a missing feature": lambda m: _tree(m)["split_indices"].__setitem__(0, 10**6),
    "cycle": lambda m: _tree(m)["left_children"].__setitem__(0, 0),
    "child outside": lambda m: _tree(m)["right_children"].__setitem__(0, 10**6),
    "short array": lambda m: _tree(m).__setitem__("left_children", [1]),
    "more trees declared": lambda m: m["learner"]["gradient_booster"]["model"][
        "gbtree_model_param"
    ].__setitem__("num_trees", "1000"),
    "tree_info outside the groups": lambda m: m["learner"]["gradient_booster"]["model"][
        "tree_info"
    ].__setitem__(0, 5),
    "stray parent": lambda m: _tree(m)["parents"].__setitem__(1, 2),
    "categorical": lambda m: _tree(m)["split_type"].__setitem__(0, 1),
    "one child": lambda m: _tree(m)["right_children"].__setitem__(0, -1),
    "nan": lambda m: _tree(m)["split_conditions"].__setitem__(0, float("nan")),
    "unknown booster": lambda m: m["learner"]["gradient_booster"].__setitem__("name", "evil"),
    # Found by attacking the reader (exceptions that escaped, and small models whose
    # ordinary use took gigabytes or minutes):
    "huge int in floats": lambda m: _tree(m)["split_conditions"].__setitem__(0, 10**400),
    "list estimator type": lambda m: m["learner"]["attributes"].__setitem__(
        "scikit_learn", '{"_estimator_type": ["classifier"]}'
    ),
    "deep estimator attribute": lambda m: m["learner"]["attributes"].__setitem__(
        "scikit_learn", "[" * 100_000 + "]" * 100_000
    ),
    "2**26 features": lambda m: [
        part.__setitem__("num_feature", str(2**26))
        for part in [m["learner"]["learner_model_param"]]
        + [t["tree_param"] for t in m["learner"]["gradient_booster"]["model"]["trees"]]
    ],
    # Found by the fourth attack: within the old bound of 65,536 features, models of a
    # few KB whose predict(pred_contribs=True) takes gigabytes for a few rows.
    "65536 features in a small model": lambda m: _features(m, 2**16),
    "64 groups of 4096 features": lambda m: [_groups(m, 64), _features(m, 4096)],
    "2**24 classes": lambda m: m["learner"]["learner_model_param"].__setitem__(
        "num_class", str(2**24)
    ),
    "empty base_score": lambda m: m["learner"]["learner_model_param"].__setitem__(
        "base_score", "[]"
    ),
    "1000 base scores": lambda m: m["learner"]["learner_model_param"].__setitem__(
        "base_score", json.dumps([0.5] * 1000)
    ),
    "a base score float() overflows": lambda m: m["learner"]["learner_model_param"].__setitem__(
        "base_score", "[1" + "0" * 400 + "]"
    ),
    "deep chain": lambda m: _chain(m, 300),
    # str.isdigit() admits "²" and Arabic-Indic digits, which XGBoost reads otherwise
    "superscript count": lambda m: _tree(m)["tree_param"].__setitem__("num_nodes", "\u00b2"),
    "arabic-indic count": lambda m: m["learner"]["learner_model_param"].__setitem__(
        "num_class", "\u0660"
    ),
    "unknown estimator": lambda m: m["learner"]["attributes"].__setitem__(
        "scikit_learn", '{"_estimator_type": "os.system"}'
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XGBOOST))
def test_hostile_xgboost_models_are_refused_before_xgboost_reads_them(
    store: castore.Store, case: str
) -> None:
    version = plant_version(store, "victim/booster", _mutated(HOSTILE_XGBOOST[case]), "xgboost")
    with pytest.raises(castore.DeserializationError, match="not a valid xgboost model"):
        store.load(version.reference)


def test_a_wide_model_within_the_bounds_loads(store: castore.Store) -> None:
    stream = _mutated(lambda m: [_groups(m, 64), _features(m, 1024)])
    version = plant_version(store, "wide/booster", stream, "xgboost")
    booster = store.load(version.reference)
    assert isinstance(booster, xgboost.Booster)
    assert (booster.num_features(), booster.num_boosted_rounds()) == (1024, 1)


PREDICT_ALL = """
import sys, numpy, xgboost, castore
store = castore.open(sys.argv[1])
features = numpy.random.default_rng(0).random((50, 5))
for name in store.names():
    model = store.load(name)
    booster = model if isinstance(model, xgboost.Booster) else model.get_booster()
    booster.predict(xgboost.DMatrix(features))
print(len(store.names()))
"""


def test_xgboost_models_that_pass_the_checks_predict_without_crashing(tmp_path: Path) -> None:
    """Mutated models either are refused or predict in a separate process without crashing
    it: the checks are what stands between a store writer and XGBoost's C++."""
    import subprocess
    import sys

    survivors = castore.init(str(tmp_path / "survivors"))
    base = _model_json()
    scratch = castore.init(str(tmp_path / "scratch"))

    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def mutate(data: st.DataObject) -> None:
        model = json.loads(json.dumps(base))
        tree = _tree(model, data.draw(st.integers(0, 3)))
        internal = [n for n, child in enumerate(tree["left_children"]) if child != -1]
        key = data.draw(
            st.sampled_from(["left_children", "right_children", "parents", "split_indices"])
        )
        at = data.draw(st.sampled_from(internal))
        tree[key][at] = data.draw(st.one_of(st.integers(-2, 40), st.integers(2**20, 2**31)))
        stream = json.dumps(model).encode()
        version = plant_version(scratch, "m", stream, "xgboost")
        try:
            scratch.load(version.reference)
        except castore.DeserializationError:
            return
        plant_version(survivors, f"ok/{len(survivors.names())}", stream, "xgboost")

    mutate()
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_ALL, str(tmp_path / "survivors")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:] or f"exit status {done.returncode}"
    assert done.stdout.split() == [str(len(survivors.names()))]
