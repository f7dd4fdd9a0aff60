"""docs/FORMAT.md's worked examples are exactly what castore's own encoders produce.

Every hex code block of the document is labelled (FORMAT.md 1.6): ```` ```hex NAME ````
for plain hex, ```` ```hex-annotated NAME ```` for an annotated dump. For every label this
module encodes the values the document states with castore's own code (the encoders in
castore/format/, the ref store for ref objects, the tree writer, the signature code,
and a real ``put`` into a fresh store) and compares the bytes with the document's. A
block without a builder, a builder without a block, or any differing byte fails, naming
the example. Appendix B's FastCDC tables and test vector are checked against the
chunker castore uses.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import struct
import uuid
from pathlib import Path
from unittest import mock

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import castore
from castore.backend import open_backend
from castore.engine import refs
from castore.engine.chunking import cut_whole
from castore.format import layout
from castore.format.compression import Codec, decode_chunk, encode_grouped
from castore.format.config import ChunkerParams, StoreConfig
from castore.format.index import encode_index_object
from castore.format.manifest import Manifest
from castore.format.packs import PackBuilder, PackEntry, encode_entries
from castore.format.streams import StreamDescriptor, encode_stream_object
from castore.format.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    ENTRY_TYPES,
    FIFO,
    FILE,
    SYMLINK,
    Entry,
    TreeWriter,
)
from castore.trust.signatures import PrivateKey, Signature, signing_message
from tests.helpers import ROOT

DOCUMENT = ROOT / "docs" / "FORMAT.md"
REQUIRED = {"config", "pack", "pack-entry", "index", "stream", "manifest", "version-ref"}
"""Examples the document must keep (at least config, a pack entry, an index object, a
manifest and a ref)."""

# -- the document ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of the document."""

    kind: str
    label: str
    body: str
    line: int
    """Line of the opening fence, 1-based."""


_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def parse_blocks(text: str) -> list[Block]:
    """Every fenced code block, with the first two words of its info string."""
    blocks = []
    for match in _FENCE.finditer(text):
        words = match.group("info").split()
        blocks.append(
            Block(
                kind=words[0] if words else "",
                label=words[1] if len(words) > 1 else "",
                body=match.group("body"),
                line=text.count("\n", 0, match.start()) + 1,
            )
        )
    return blocks


@functools.cache
def document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def labelled(kind: str, text: str | None = None) -> dict[str, Block]:
    """The blocks of one kind by label; a repeated label is an error of the document."""
    found: dict[str, Block] = {}
    for block in parse_blocks(document() if text is None else text):
        if block.kind == kind:
            assert block.label, f"FORMAT.md line {block.line}: a ```{kind} block needs a label"
            assert block.label not in found, f"FORMAT.md: two ```{kind} {block.label} blocks"
            found[block.label] = block
    return found


def plain_hex(block: Block) -> bytes:
    """The bytes of a plain hex block (whitespace ignored)."""
    digits = "".join(block.body.split())
    if not re.fullmatch(r"(?:[0-9a-f]{2})*", digits):
        pytest.fail(
            f"FORMAT.md example {block.label!r} (line {block.line}) is not lowercase hex "
            "with an even number of digits"
        )
    return bytes.fromhex(digits)


_TOKEN = re.compile(
    r'"(?P<text>[^"]*)"'  # the UTF-8 bytes of a text
    r"|<(?P<count>\d+) bytes>"  # n bytes shown elsewhere
    r"|(?P<head>[0-9a-f]+)…(?P<tail>[0-9a-f]+)"  # a digest shortened to its ends
    r"|(?P<rest>…)"  # the rest of a structure shown elsewhere
    r"|(?P<hex>[0-9a-f]+)"
    r"|(?P<comment>;.*)"
    r"|(?P<bad>\S+)"
)
_ANY = "(?:[0-9a-f]{2})*?"


def annotated_pattern(block: Block) -> list[tuple[int, str, str]]:
    """An annotated dump as (line, token, regex over lowercase hex) in order."""
    pieces = []
    for number, line in enumerate(block.body.splitlines(), start=block.line + 1):
        for match in _TOKEN.finditer(line):
            token = match.group(0)
            if match.group("comment") is not None:
                break
            if match.group("bad") is not None or (
                match.group("hex") is not None and len(token) % 2
            ):
                pytest.fail(f"FORMAT.md line {number}: {token!r} is neither bytes nor text")
            if match.group("text") is not None:
                regex = match.group("text").encode().hex()
            elif match.group("count") is not None:
                regex = f"[0-9a-f]{{{2 * int(match.group('count'))}}}"
            elif match.group("head") is not None:
                regex = match.group("head") + _ANY + match.group("tail")
            elif match.group("rest") is not None:
                regex = _ANY
            else:
                regex = token
            pieces.append((number, token, regex))
    return pieces


def check_annotated(block: Block, expected: bytes) -> None:
    """Fail, naming the example and the first token that disagrees, unless it matches."""
    pieces = annotated_pattern(block)
    target = expected.hex()
    if re.fullmatch("".join(regex for _, _, regex in pieces), target):
        return
    so_far = ""
    for number, token, regex in pieces:
        so_far += regex
        if not re.match(so_far, target):
            pytest.fail(
                f"FORMAT.md annotated example {block.label!r} differs from what castore "
                f"encodes: {token!r} on line {number} does not fit; castore's bytes are "
                f"{target}"
            )
    pytest.fail(
        f"FORMAT.md annotated example {block.label!r} ends early: castore's bytes are "
        f"{target} ({len(expected)} bytes)"
    )


def check_bytes(label: str, shown: bytes, expected: bytes) -> None:
    if shown == expected:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(shown, expected, strict=False)) if a != b),
        min(len(shown), len(expected)),
    )
    pytest.fail(
        f"FORMAT.md example {label!r} differs from what castore encodes: "
        f"{len(shown)} bytes shown, {len(expected)} encoded, first difference at byte {at} "
        f"(document {shown[at : at + 8].hex() or 'ends'}, castore "
        f"{expected[at : at + 8].hex() or 'ends'}); castore's bytes:\n{expected.hex()}"
    )


# -- the values the document states, encoded by castore ----------------------------------------

HELLO = b"hello"
HELLO_ID = hashlib.sha256(HELLO).digest()
HELLO_STREAM = StreamDescriptor(HELLO_ID, 5, HELLO_ID, (5,))
EMPTY_STREAM = StreamDescriptor(hashlib.sha256(b"").digest(), 0, b"", ())
ENVIRONMENT = {
    "python": "3.11.7",
    "implementation": "CPython",
    "platform": "Linux",
    "castore": "0.1.0",
    "packages": {},
}
GROUPED_CHUNK = struct.pack("<ff", 1.0, 2.0) + b"\x2a"
"""6.2's example chunk: the float32 values 1.0 and 2.0, then one byte."""
REF_TIME = "2025-01-31T12:00:00.000000+00:00"
RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
SIGNED_AT = "2025-01-31T12:00:00+00:00"


def _pack() -> tuple[bytes, bytes, list[PackEntry]]:
    builder = PackBuilder()
    builder.add(HELLO_ID, Codec.RAW, HELLO, len(HELLO))
    pack_id, data, entries = builder.finish()
    return pack_id, bytes(data), entries


def _manifest(number: int, parent: bytes | None, created: str) -> Manifest:
    return Manifest(
        name="a",
        number=number,
        kind="file",
        serializer="raw",
        serializer_version="1",
        stream=HELLO_STREAM,
        parent=parent,
        metadata={"k": 1},
        environment=ENVIRONMENT,
        created=created,
    )


def _ref_objects(digest: bytes) -> dict[str, tuple[str, bytes]]:
    """Version ref, tombstone and tag events as the ref store writes them, with the time
    the document states."""
    backend = open_backend(f"memory://castore-format-doc-{uuid.uuid4().hex}")
    store = refs.RefStore(backend)
    with mock.patch.object(refs, "_now", lambda: REF_TIME):
        store.create_version("a", 1, digest)
        version_ref = backend.read(layout.version_ref_path("a", 1))
        store.set_tag("a", "production", 1, digest)
        store.set_tag("a", "production", None, None)
        store.mark_deleted("a", 1, digest)
    tag = layout.tag_folder("a", "production")
    return {
        "version-ref": (layout.version_ref_path("a", 1), version_ref),
        "tombstone": (layout.version_ref_path("a", 1), backend.read("refs/a/@versions/1")),
        "tag-set": (f"{tag}/1", backend.read(f"{tag}/1")),
        "tag-removed": (f"{tag}/2", backend.read(f"{tag}/2")),
    }


def _tree() -> bytes:
    """20.9: uid and gid 1000, dev 2049, the stated modes, times and inodes."""
    second = 1_700_000_000_000_000_000
    content = b"hello\n"
    digest = hashlib.sha256(content).digest()

    def entry(path: bytes, kind: str, mode: int, time: int, size: int, ino: int) -> Entry:
        return Entry(path, kind, mode, time, time, size, uid=1000, gid=1000, dev=2049, ino=ino)

    file = entry(b"docs/a.txt", FILE, 0o644, second + 123_456_789, len(content), 131075)
    entries = [
        entry(b"docs", DIR, 0o755, second, 0, 131074),
        dataclasses.replace(file, sha256=digest, chunk_ids=digest, chunk_sizes=(len(content),)),
        dataclasses.replace(entry(b"latest", SYMLINK, 0o777, second, 4, 131076), target=b"docs"),
        Entry.skipped(b"run.sock", "unsupported file type: socket"),
    ]
    out = bytearray()
    writer = TreeWriter(out.extend)
    for each in entries:
        writer.add(each)
    writer.flush()
    return bytes(out)


@dataclasses.dataclass(frozen=True)
class Example:
    data: bytes
    path: str | None = None
    """Where the object is stored, when the document names it."""


@functools.cache
def examples() -> dict[str, Example]:
    """Every labelled example, encoded by castore from the document's stated values."""
    pack_id, pack, entries = _pack()
    manifest = _manifest(1, None, REF_TIME).encode()
    version_digest = hashlib.sha256(manifest).digest()
    key = PrivateKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET)))
    message = signing_message(version_digest)
    signature = Signature(version_digest, key.public_key, key.sign(message), SIGNED_AT)
    index = encode_index_object([(pack_id, entries)])
    config = StoreConfig(store_id="00112233445566778899aabbccddeeff", created=SIGNED_AT)
    found = {
        "config": Example(config.encode(), layout.CONFIG),
        "pack": Example(pack, layout.pack_path(pack_id)),
        "pack-entry": Example(encode_entries(entries)),
        "index": Example(index, layout.index_path(hashlib.sha256(index).digest())),
        "stream": Example(encode_stream_object(HELLO_STREAM), layout.stream_path(HELLO_ID)),
        "stream-empty": Example(
            encode_stream_object(EMPTY_STREAM), layout.stream_path(EMPTY_STREAM.sha256)
        ),
        "manifest": Example(manifest, layout.manifest_path(version_digest)),
        "tree": Example(_tree()),
        "signature-message": Example(message),
        "signature": Example(key.sign(message)),
        "signature-object": Example(signature.encode(), signature.path),
        "grouped-record": Example(encode_grouped(memoryview(GROUPED_CHUNK), 4, 1 / 32)),
    }
    for label, (path, data) in _ref_objects(version_digest).items():
        found[label] = Example(data, path)
    return found


# -- tests ---------------------------------------------------------------------------------------


def test_every_hex_example_has_a_builder_and_the_required_ones_exist() -> None:
    shown = set(labelled("hex")) | set(labelled("hex-annotated"))
    checked_elsewhere = {"zstd-record"}
    assert not shown - set(examples()) - checked_elsewhere, (
        f"FORMAT.md examples nobody checks: {sorted(shown - set(examples()) - checked_elsewhere)}"
    )
    assert not set(examples()) - shown, (
        f"examples missing from FORMAT.md: {sorted(set(examples()) - shown)}"
    )
    assert not REQUIRED - set(labelled("hex")), (
        f"FORMAT.md lacks the worked hex examples {sorted(REQUIRED - set(labelled('hex')))}"
    )


def test_no_hex_block_is_left_unlabelled() -> None:
    for block in parse_blocks(document()):
        lines = [line for line in block.body.splitlines() if line.strip()]
        if (
            block.kind in ("", "text")
            and lines
            and all(re.fullmatch(r"[0-9a-f ]{32,}", line) for line in lines)
        ):
            pytest.fail(f"FORMAT.md line {block.line}: a hex block needs ```hex <label>")


@pytest.mark.parametrize("label", sorted(set(labelled("hex")) - {"zstd-record"}))
def test_hex_example_is_what_castore_encodes(label: str) -> None:
    check_bytes(label, plain_hex(labelled("hex")[label]), examples()[label].data)


@pytest.mark.parametrize("label", sorted(labelled("hex-annotated")))
def test_annotated_example_is_what_castore_encodes(label: str) -> None:
    check_annotated(labelled("hex-annotated")[label], examples()[label].data)


@pytest.mark.parametrize("label", sorted(label for label, e in examples().items() if e.path))
def test_the_document_names_each_example_where_castore_stores_it(label: str) -> None:
    path = examples()[label].path
    if path is None or path not in document():
        pytest.fail(f"FORMAT.md does not name {path}, where {label!r} is stored")


def test_stated_digests_and_keys_are_castores() -> None:
    manifest = examples()["manifest"].data
    second = _manifest(2, hashlib.sha256(manifest).digest(), "2025-01-31T12:00:01.000000+00:00")
    key = PrivateKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET)))
    stated = {
        "version 2's digest": hashlib.sha256(second.encode()).hexdigest(),
        "the pack id": _pack()[0].hex(),
        "the RFC 8032 public key": key.public_key.raw.hex(),
        "its key id": key.public_key.key_id,
        "its OpenSSH line": key.public_key.to_openssh(),
    }
    for what, value in stated.items():
        if value not in document():
            pytest.fail(f"FORMAT.md does not state {what}, {value}")


def _known_digests() -> set[str]:
    """Every 64-hex-digit value the document may show, as castore computes it."""
    pack_id, _, _ = _pack()
    key = PrivateKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET)))
    values = {
        HELLO_ID,
        pack_id,
        EMPTY_STREAM.sha256,
        hashlib.sha256(b"hello\n").digest(),
        hashlib.sha256(examples()["index"].data).digest(),
        key.public_key.raw,
        bytes.fromhex(RFC8032_SECRET),
        bytes.fromhex(key.public_key.key_id),
    }
    manifest = examples()["manifest"].data
    values.add(hashlib.sha256(manifest).digest())
    second = _manifest(2, hashlib.sha256(manifest).digest(), "2025-01-31T12:00:01.000000+00:00")
    values.add(hashlib.sha256(second.encode()).digest())
    return {value.hex() for value in values}


def test_every_digest_the_document_shows_is_one_castore_computes() -> None:
    """Digests in prose, paths and annotated dumps (Appendix B's checks have their test)."""
    text = document()
    for block in parse_blocks(text):
        if block.kind in ("hex", "table", "text"):
            text = text.replace(block.body, "")
    appendix_b = text.index("## Appendix B")
    shown = re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", text[:appendix_b])
    unknown = sorted(set(shown) - _known_digests())
    assert not unknown, f"FORMAT.md shows digests castore does not compute: {unknown}"


def test_a_real_put_stores_the_documented_objects(tmp_path: Path) -> None:
    """Appendix A: "a store after put(b"hello")" holds exactly these bytes."""
    store = castore.init(str(tmp_path / "store"))
    try:
        store.put(HELLO)
        store.put(b"")
        root = tmp_path / "store"
        for label in ("pack", "index", "stream", "stream-empty"):
            example = examples()[label]
            assert example.path is not None
            stored = (root / example.path).read_bytes()
            check_bytes(label, plain_hex(labelled("hex")[label]), stored)
        assert sorted(p.name for p in (root / "packs").rglob("*") if p.is_file()) == [
            _pack()[0].hex()
        ], "put(b'hello') should store exactly the pack of FORMAT.md 7.4"
    finally:
        store.close()


def test_the_zstd_record_decodes_as_described() -> None:
    """The zstd bytes are the implementation's, not the format's: check what is said."""
    record = plain_hex(labelled("hex")["zstd-record"])
    assert len(record) == 19 and record[:4] == bytes.fromhex("28b52ffd")
    assert zstandard.frame_content_size(record) == 1000
    raw = decode_chunk(Codec.ZSTD, memoryview(record), 1000, "FORMAT.md zstd record")
    assert bytes(raw) == b"a" * 1000


def test_the_grouped_record_decodes_to_the_chunk_it_states() -> None:
    block = labelled("hex-annotated")["grouped-record"]
    record = bytes.fromhex("".join(token for _, token, _ in annotated_pattern(block)))
    assert GROUPED_CHUNK.hex() in document().replace(" ", "")
    raw = decode_chunk(Codec.GROUPED, memoryview(record), len(GROUPED_CHUNK), "FORMAT.md 6.2")
    assert bytes(raw) == GROUPED_CHUNK


# -- Appendix B ----------------------------------------------------------------------------------


def _table(label: str) -> str:
    return labelled("table")[label].body


def test_the_fastcdc_tables_are_those_of_castores_chunker() -> None:
    from pyfastcdc.py import constants  # the tables of the chunker castore cuts with

    masks: dict[int, int] = {}
    for line in _table("masks").splitlines():
        if re.fullmatch(r"\s*0-4: 0{16} \(five times\)", line):
            masks.update(dict.fromkeys(range(5), 0))
            continue
        for number, value in re.findall(r"(\d+): ([0-9a-f]{16})", line):
            masks[int(number)] = int(value, 16)
    assert masks == dict(enumerate(constants.MASKS)), "FORMAT.md Appendix B MASKS differ"

    gear: list[int] = []
    for line in _table("gear").splitlines():
        number, _, values = line.partition(":")
        assert int(number) == len(gear), f"GEAR line {line!r} is out of place"
        gear.extend(int(value, 16) for value in values.split())
    assert gear == list(constants.GEAR), "FORMAT.md Appendix B GEAR differs"
    check = hashlib.sha256(b"".join(v.to_bytes(8, "little") for v in gear)).hexdigest()
    if f"`{check}`" not in document():
        pytest.fail(f"FORMAT.md states another SHA-256 of GEAR than {check}")


def test_the_chunking_test_vector_is_what_castore_cuts() -> None:
    counter, data = 0, bytearray()
    while len(data) < 1024 * 1024:
        data += hashlib.sha256(str(counter).encode()).digest()
        counter += 1
    x = bytes(data[: 1024 * 1024])
    chunks = cut_whole(x, ChunkerParams())
    lengths = [len(chunk) for chunk in chunks]
    shown = [int(n) for n in labelled("text")["chunk-lengths"].body.replace(",", " ").split()]
    assert lengths == shown, f"FORMAT.md Appendix B chunk lengths differ: castore cuts {lengths}"
    ids = b"".join(hashlib.sha256(chunk).digest() for chunk in chunks)
    for value in (hashlib.sha256(x).hexdigest(), hashlib.sha256(ids).hexdigest()):
        if f"`{value}`" not in document():
            pytest.fail(f"FORMAT.md Appendix B does not state {value}")
    zeros = [len(c) for c in cut_whole(bytes(1024 * 1024), ChunkerParams())]
    assert zeros == [262144] * 4
    small = [len(c) for c in cut_whole(x[:65536], ChunkerParams(256, 1024, 4096, 1))]
    first_ten = ", ".join(map(str, small[:10]))
    stated = f"give {len(small)} chunks, the first ten of lengths\n`{first_ten}`"
    if stated not in document():
        pytest.fail(f"FORMAT.md Appendix B: castore cuts {len(small)} chunks, {small[:10]}...")


def _section(number: str) -> str:
    """The text of FORMAT.md's section `number` (up to the next heading of its level)."""
    text = document()
    start = text.index(f"### {number} ")
    return text[start : text.index("\n### ", start + 1)]


def test_every_key_and_type_a_tree_entry_can_have_is_specified_in_20_3() -> None:
    """Section 20.3 lists, with its type, every key the tree writer can put in an entry,
    and every entry type (so a new key cannot be added without documenting it)."""
    pairs = ((b"user.a", b"1"),)
    fullest = [
        Entry(
            b"f",
            FILE,
            size=1,
            sha256=hashlib.sha256(b"x").digest(),
            chunk_ids=bytes(32),
            chunk_sizes=(1,),
            nlink=2,
            hardlink=b"e",
            extents=((0, 1),),
            xattrs=pairs,
        ),
        Entry(b"l", SYMLINK, size=1, target=b"x", xattrs=pairs),
        Entry(b"c", CHARDEV, major=1, minor=3, xattrs=pairs),
        Entry(b"b", BLOCKDEV),
        Entry(b"p", FIFO),
        Entry(b"d", DIR),
        Entry.skipped(b"s", "why"),
    ]
    section = _section("20.3")
    for entry in fullest:
        for key in entry.to_wire():
            assert re.search(rf"^\| `{key}` \| [a-z]", section, re.M), f"20.3 lacks key {key!r}"
        assert f'`"{entry.type}"`' in section, f"20.3 lacks the entry type {entry.type!r}"
    assert set(ENTRY_TYPES) == {entry.type for entry in fullest}
