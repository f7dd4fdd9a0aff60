"""Property-based fuzzing of every decoder of stored bytes: only castore errors, bounded cost.

Each decoder gets random bytes, byte-level mutations of valid objects and, for msgpack
objects, structure-aware mutations (fields replaced, removed or added, binary fields
damaged). Whatever comes in, the decoder must return or raise a CastoreError, within
TIME_LIMIT seconds and MEMORY_LIMIT bytes of traced allocations (plus a small multiple of
the input).

CASTORE_FUZZ_EXAMPLES sets the examples per test (default 100, a few seconds in all);
CASTORE_FUZZ_REPORT names a file that receives the number of cases run per decoder.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import pickle
import time
import tracemalloc
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import joblib
import msgpack
import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from castore import safety
from castore.backend import open_backend
from castore.engine.refs import RefStore
from castore.errors import CastoreError
from castore.format import tree
from castore.format.compression import (
    ChunkEncoder,
    Codec,
    decode_chunk,
    encode_grouped,
    encode_zstd,
)
from castore.format.config import ChunkerParams, CompressionParams, StoreConfig
from castore.format.index import decode_index_tables, encode_index_object
from castore.format.manifest import Manifest
from castore.format.names import parse_reference
from castore.format.packs import (
    ENTRY,
    HEADER,
    TRAILER,
    PackBuilder,
    check_pack,
    decode_entries,
    footer_location,
)
from castore.format.streams import StreamDescriptor, decode_stream_object, encode_stream_object
from castore.format.tree import Entry, read_tree
from castore.trust import signatures as signing
from tests.helpers import pattern

EXAMPLES = int(os.environ.get("CASTORE_FUZZ_EXAMPLES", "100"))
TIME_LIMIT = 2.0
"""Seconds one decoding may take."""
MEMORY_LIMIT = 96 * 1024 * 1024
"""Bytes one decoding may allocate beyond 16 times its input: chunks decode to 16 MiB, and
an xz-compressed joblib file may take its decoder's LZMA_MEMORY (80 MiB)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)
CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def traced_memory() -> Iterator[None]:
    """Trace allocations while fuzzing; report the case counts at the end."""
    tracemalloc.start()
    yield
    tracemalloc.stop()
    report = os.environ.get("CASTORE_FUZZ_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as file:
            for decoder, count in sorted(CASES.items()):
                file.write(f"{decoder}\t{count}\n")
            file.write(f"total\t{sum(CASES.values())}\n")


def survive(decoder: str, decode: Callable[[], object], size: int) -> None:
    """Run one decoding: a CastoreError is fine, anything else fails; so does slowness or bloat."""
    CASES[decoder] += 1
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    with contextlib.suppress(CastoreError):
        decode()
    elapsed = time.perf_counter() - start
    allocated = tracemalloc.get_traced_memory()[1] - before
    assert elapsed < TIME_LIMIT, f"{decoder} took {elapsed:.2f} s on {size} bytes"
    assert allocated < MEMORY_LIMIT + 16 * size, f"{decoder} allocated {allocated} bytes"


# -- input strategies --------------------------------------------------------------------------

INTERESTING_BYTES = [
    0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xCA, 0xCB, 0xCF,
    0xD3, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xA0, 0x90, 0x80, 0x95, 0x94, 0x93, 0x52,
]  # fmt: skip
"""Boundary values and msgpack and pickle type markers."""


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid object with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        if kind in ("flip", "set") and data:
            at = min(position, len(data) - 1)
            if kind == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            else:
                data[at] = draw(st.sampled_from(INTERESTING_BYTES))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "repeat":
            data[position:position] = data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, max_size=4
    )


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.sampled_from([b"\x00" * 32, b"\xff" * 32, b"\x00" * 49, 0, 1, -1, 2**31, 2**62]),
    _containers,
    max_leaves=8,
)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair inside nested dicts and lists."""
    slots = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        slots.append((value, key))
        if isinstance(item, dict | list) and item:
            slots.extend(_slots(item))
    return slots


def _damage(draw: st.DrawFn, data: bytes) -> bytes:
    """A binary field, cut, extended or with one byte changed."""
    kind = draw(st.sampled_from(["cut", "extend", "flip"]))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _values(data: bytes) -> list[Any]:
    return list(msgpack.Unpacker(io.BytesIO(data), raw=False))


@st.composite
def restructured(draw: st.DrawFn, seeds: list[bytes], sequence: bool = False) -> bytes:
    """A valid msgpack object (or sequence of them) with fields replaced, removed, added
    or damaged."""
    seed = draw(st.sampled_from(seeds))
    value = copy.deepcopy(_values(seed) if sequence else msgpack.unpackb(seed, raw=False))
    for _ in range(draw(st.integers(1, 4))):
        container, key = draw(st.sampled_from(_slots(value) or [(value, "x")]))
        action = draw(st.sampled_from(["replace", "remove", "add", "damage"]))
        if action == "remove":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(MSGPACK_VALUES)
        elif action == "damage" and isinstance(container[key], bytes):
            container[key] = _damage(draw, container[key])
        else:
            container[key] = draw(MSGPACK_VALUES)
        if not _slots(value):
            break
    if sequence:
        return b"".join(msgpack.packb(item, use_bin_type=True) for item in value)
    return msgpack.packb(value, use_bin_type=True)


def untrusted(
    seeds: list[bytes], *, msgpack_objects: bool = True, sequence: bool = False
) -> st.SearchStrategy[bytes]:
    """Random bytes, mutated seeds and (for msgpack objects) restructured seeds."""
    options = [st.binary(max_size=1024), mutated(seeds)]
    if msgpack_objects:
        options.append(restructured(seeds, sequence))
    return st.one_of(*options)


# -- seeds: valid objects of every kind --------------------------------------------------------


def _chunks() -> list[bytes]:
    return [b"a" * 5000, pattern(3000, seed=1), pattern(100, seed=2)]


def _descriptor() -> StreamDescriptor:
    chunks = _chunks()
    whole = b"".join(chunks)
    return StreamDescriptor(
        sha256=hashlib.sha256(whole).digest(),
        size=len(whole),
        chunk_ids=b"".join(hashlib.sha256(c).digest() for c in chunks),
        chunk_sizes=tuple(len(c) for c in chunks),
    )


def _pack() -> tuple[bytes, bytes, list[Any]]:
    builder = PackBuilder()
    encoder = ChunkEncoder(StoreConfig())
    for chunk in _chunks():
        codec, payload = encoder.encode(memoryview(chunk))
        builder.add(hashlib.sha256(chunk).digest(), codec, payload, len(chunk))
    pack_id, data, entries = builder.finish()
    return pack_id, bytes(data), entries


PACK_ID, PACK, ENTRIES = _pack()
CONFIGS = [
    StoreConfig().encode(),
    StoreConfig(chunker=ChunkerParams(64, 256, 1024, 0), pack_size=1024).encode(),
]
MANIFESTS = [
    Manifest(
        name="churn/classifier",
        number=3,
        kind="object",
        serializer="joblib",
        serializer_version="1.4",
        stream=_descriptor(),
        parent=bytes(range(32)),
        metadata={"auc": 0.91, "tags": ["a", "b"], "nested": {"k": None}},
        environment={"python": "3.11.7", "packages": {"numpy": "2.0"}},
    ).encode()
]
INDEX_OBJECTS = [encode_index_object([(PACK_ID, ENTRIES), (bytes(32), ENTRIES[:1])])]
STREAM_OBJECTS = [encode_stream_object(_descriptor())]
_KEY = signing.PrivateKey.generate()
SIGNED = bytes(range(32))
SIGNATURES = [
    signing.Signature(SIGNED, _KEY.public_key, _KEY.sign(signing.signing_message(SIGNED))).encode()
]


def _tree() -> bytes:
    content = _descriptor()
    entries = [
        Entry(path=b"d", type=tree.DIR, mode=0o755, mtime_ns=1, uid=1000),
        Entry(path=b"d/empty", type=tree.FILE, mode=0o644, sha256=tree.EMPTY_SHA256),
        Entry(
            path=b"d/file",
            type=tree.FILE,
            size=content.size,
            sha256=content.sha256,
            chunk_ids=content.chunk_ids,
            chunk_sizes=content.chunk_sizes,
        ),
        Entry(path=b"d/link", type=tree.SYMLINK, size=4, target=b"file"),
        Entry.skipped(b"d/socket", "a socket"),
        Entry(path=b"z", type=tree.DIR),
    ]
    stream = bytearray()
    writer = tree.TreeWriter(stream.extend)
    for entry in entries:
        writer.add(entry)
    writer.flush()
    return bytes(stream)


TREES = [_tree()]
REF_OBJECTS = [
    msgpack.packb({"manifest": bytes(32), "created": "2025-01-31T12:00:00+00:00"}),
    msgpack.packb({"manifest": bytes(32), "deleted": "2025-01-31T12:00:00+00:00"}),
    msgpack.packb({"version": 2, "manifest": bytes(32), "time": "2025"}),
    msgpack.packb({"version": None, "manifest": None, "time": "2025"}),
]
REFERENCES = [
    "churn/classifier",
    "churn/classifier:latest",
    "churn/classifier:3",
    "churn/classifier:production",
    "churn/classifier@sha256:" + "ab" * 32,
    "sha256:" + "0" * 64,
    "s3://bucket/prefix#team/model:7",
]


# -- decoders ----------------------------------------------------------------------------------


@FUZZ
@given(untrusted(CONFIGS))
def test_config_decoder(data: bytes) -> None:
    survive("StoreConfig.decode", lambda: StoreConfig.decode(data), len(data))


@FUZZ
@given(untrusted(MANIFESTS))
def test_manifest_decoder(data: bytes) -> None:
    # Manifests are checked against their digest first: use the digest of the mutated bytes.
    digest = hashlib.sha256(data).digest()
    survive("Manifest.decode", lambda: Manifest.decode(data, digest), len(data))


def _fix_footer(data: bytes) -> bytes:
    """Make the trailer's table digest match the (mutated) table, to reach deeper checks."""
    if len(data) < len(HEADER) + TRAILER.size:
        return data
    count = int.from_bytes(data[-TRAILER.size : -TRAILER.size + 4], "little")
    start = len(data) - TRAILER.size - count * ENTRY.size
    if start < 0:
        return data
    table = data[start : len(data) - TRAILER.size]
    return data[:-40] + hashlib.sha256(table).digest() + data[-8:]


@FUZZ
@given(untrusted([PACK], msgpack_objects=False), st.booleans())
def test_pack_decoder(data: bytes, fix_footer: bool) -> None:
    if fix_footer:
        data = _fix_footer(data)
    pack_id = data[-40:-8] if len(data) >= 40 else PACK_ID
    survive("packs.check_pack", lambda: check_pack(data, pack_id), len(data))


@FUZZ
@given(
    untrusted(
        [PACK[-TRAILER.size - ENTRY.size * len(ENTRIES) : -TRAILER.size]], msgpack_objects=False
    )
)
def test_pack_entry_decoder(data: bytes) -> None:
    survive("packs.decode_entries", lambda: decode_entries(data, "fuzz"), len(data))


@FUZZ
@given(untrusted([PACK[-TRAILER.size :]], msgpack_objects=False), st.integers(0, 2**64))
def test_pack_footer_locator(trailer: bytes, pack_size: int) -> None:
    survive(
        "packs.footer_location",
        lambda: footer_location(trailer, pack_size, "fuzz"),
        len(trailer),
    )


_FLOATS = np.random.default_rng(5).standard_normal(1500).astype(np.float32).tobytes() + b"xyz"
CHUNK_PAYLOADS = {
    Codec.ZSTD: [bytes(encode_zstd(memoryview(b"z" * 5000), CompressionParams())[1])],
    Codec.GROUPED: [
        encode_grouped(memoryview(_FLOATS), 4, 1 / 32),  # zstd and raw groups, a tail
        encode_grouped(memoryview(_FLOATS[:-3]), 2, 1 / 32),
        encode_grouped(memoryview(bytes(4000)), 4, 1 / 32),  # zstd groups only
    ],
}


@FUZZ
@given(
    st.sampled_from(sorted(CHUNK_PAYLOADS)).flatmap(
        lambda codec: st.tuples(
            st.just(codec), untrusted(CHUNK_PAYLOADS[codec], msgpack_objects=False)
        )
    ),
    # The seeds' own raw lengths get past the length checks to the groups themselves.
    st.one_of(
        st.sampled_from([5000, 4000, len(_FLOATS), len(_FLOATS) - 3]), st.integers(0, 2**24 + 1)
    ),
)
def test_chunk_decoder(case: tuple[Codec, bytes], raw_len: int) -> None:
    codec, payload = case
    survive(
        f"compression.decode_chunk[{codec.name}]",
        lambda: decode_chunk(codec, memoryview(payload), raw_len, "fuzz"),
        len(payload),
    )


@FUZZ
@given(untrusted(INDEX_OBJECTS))
def test_index_object_decoder(data: bytes) -> None:
    survive("index.decode_index_tables", lambda: decode_index_tables(data, "fuzz"), len(data))


@FUZZ
@given(untrusted(STREAM_OBJECTS), st.booleans())
def test_stream_object_decoder(data: bytes, own_digest: bool) -> None:
    digest = _descriptor().sha256
    if own_digest:  # the digest the object claims, to get past that check
        try:
            claimed = msgpack.unpackb(data, raw=False).get("sha256")
        except Exception:
            claimed = None
        digest = claimed if isinstance(claimed, bytes) and len(claimed) == 32 else digest
    survive("streams.decode_stream_object", lambda: decode_stream_object(data, digest), len(data))


@FUZZ
@given(untrusted(TREES, sequence=True))
def test_tree_decoder(data: bytes) -> None:
    def decode() -> None:
        for _ in read_tree(io.BufferedReader(io.BytesIO(data)), len(data), "fuzz"):
            pass

    survive("tree.read_tree", decode, len(data))


@FUZZ
@given(untrusted(SIGNATURES))
def test_signature_decoder(data: bytes) -> None:
    key_id = _KEY.public_key.key_id

    def decode() -> None:
        signing.Signature.decode(data, SIGNED, key_id).is_valid()

    survive("signing.Signature.decode", decode, len(data))


REFERENCE_CHARACTERS = st.sampled_from(list(":@#/._-0123456789abcdef²٣ sha256A\x00é"))


@st.composite
def references(draw: st.DrawFn) -> str:
    """Valid references with characters inserted, replaced or removed."""
    text = list(draw(st.sampled_from(REFERENCES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "replace", "remove"]))
        if action == "insert" or not text:
            text[at:at] = draw(st.lists(REFERENCE_CHARACTERS, min_size=1, max_size=5000))
        elif action == "replace":
            text[min(at, len(text) - 1)] = draw(REFERENCE_CHARACTERS)
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


@FUZZ
@given(st.one_of(st.text(), references()))
def test_reference_parser(text: str) -> None:
    survive("refs.parse_reference", lambda: parse_reference(text), len(text.encode()))


@pytest.fixture(scope="module")
def ref_backend() -> Any:
    """A memory backend for ref objects (hypothesis examples share it; each cleans up)."""
    return open_backend(f"memory://castore-fuzz-{uuid.uuid4().hex}")


PATH_COMPONENTS = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda text: text not in (".", "..") and not text.startswith("."))


@FUZZ
@given(data=untrusted(REF_OBJECTS), component=PATH_COMPONENTS, name=PATH_COMPONENTS)
def test_ref_store_reads(ref_backend: Any, data: bytes, component: str, name: str) -> None:
    refs = RefStore(ref_backend)
    for path in ref_backend.list("refs"):
        ref_backend.delete(path)
    writes = {
        "refs/a/@versions/1": data,
        "refs/a/@tags/t/1": data,
        f"refs/a/@versions/{component}": REF_OBJECTS[0],
        f"refs/a/@tags/{component}/1": data,
        f"refs/{name}/@versions/1": REF_OBJECTS[0],
    }
    for path, content in writes.items():
        with contextlib.suppress(CastoreError):  # a name the backend refuses to store
            ref_backend.write(path, content)

    def read() -> None:
        refs.names()
        refs.version_numbers("a")
        refs.tag_names("a")
        refs.read_version("a", 1)
        refs.tag_history("a", "t")
        refs.current_tag("a", "t")

    survive("refs.RefStore reads", read, len(data) + len(component))


FEATURES = np.random.default_rng(0).standard_normal((40, 3))
LABELS = (FEATURES[:, 0] > 0).astype(int)


def _pickle_seeds() -> dict[str, Any]:
    """Objects whose state numpy, scipy or scikit-learn's compiled code trusts."""
    return {
        "arrays": {"a": np.arange(6).reshape(2, 3), "f": np.ones((2, 2), order="F")},
        "containers": [1, 2.5, "x", b"y", None, (1,), {1}, OrderedDict(k=1), 3j],
        "masked": np.ma.masked_array([1, 2], [0, 1]),
        "sparse": scipy.sparse.csr_matrix(np.eye(3)),
        "objects": np.array([{"k": 1}, None], dtype=object),
        "dtypes": [np.dtype([("a", "<i4"), ("b", ">f8", (2,))]), np.dtype("M8[s]")],
        "linear": LogisticRegression().fit(FEATURES, LABELS),
        "forest": RandomForestClassifier(2, max_depth=3, random_state=0).fit(FEATURES, LABELS),
        "neighbours": KNeighborsClassifier(algorithm="kd_tree").fit(FEATURES, LABELS),
        "boosting": HistGradientBoostingClassifier(max_iter=2).fit(FEATURES, LABELS),
    }


PICKLES = [pickle.dumps(v, protocol=p) for v in _pickle_seeds().values() for p in (2, 5)]
JOBLIBS = []
for _number, _value in enumerate(_pickle_seeds().values()):
    # Uncompressed as castore writes them, and each compression joblib writes (imports).
    for _compress in (0, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)):
        if _compress and _number % 2:
            continue  # half the seeds compressed: the fuzzer mutates inside each format
        _buffer = io.BytesIO()
        joblib.dump(_value, _buffer, compress=_compress)
        JOBLIBS.append(_buffer.getvalue())


def _use(obj: object) -> None:
    """Run what compiled code would run on a loaded model or matrix (its errors are fine:
    this looks for crashes, which the checks of castore.safety must prevent)."""
    with contextlib.suppress(Exception):
        if hasattr(obj, "predict"):
            obj.predict(FEATURES)
        elif scipy.sparse.issparse(obj):
            obj @ np.ones(obj.shape[1])


@FUZZ
@given(untrusted(PICKLES, msgpack_objects=False))
def test_restricted_unpickler(data: bytes) -> None:
    def load() -> None:
        _use(safety.load_pickle(io.BytesIO(data), safety.Allowlist(), size=len(data)))

    survive("safety.load_pickle", load, len(data))


@FUZZ
@given(untrusted(JOBLIBS, msgpack_objects=False))
def test_restricted_joblib_loader(data: bytes) -> None:
    def load() -> None:
        file = io.BufferedReader(io.BytesIO(data))
        _use(safety.load_joblib(file, safety.Allowlist(), size=len(data)))

    survive("safety.load_joblib", load, len(data))


def test_deeply_nested_manifest_metadata_is_refused() -> None:
    fields = msgpack.unpackb(MANIFESTS[0], raw=False)
    fields["metadata"] = {}
    deep = b"\x81\xa1x" + b"\x91" * 1000 + b"\xc0"  # {"x": [[[...[None]...]]]}
    data = msgpack.packb(fields, use_bin_type=True).replace(
        b"\xa8metadata\x80", b"\xa8metadata" + deep
    )
    with pytest.raises(CastoreError):
        Manifest.decode(data, hashlib.sha256(data).digest())
