"""Bare digests: ``sha256:<hex>`` reads a version first, then content, through every door.

A version digest names a manifest by the SHA-256 of its bytes; a content digest names a
stream by the SHA-256 of the stream's bytes (docs/FORMAT.md, 1.2 and 10.4). `cat`, `get`
and the API's get, get_file and open_stream accept either.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import castore
from castore.format import layout, wire
from castore.format.compression import Codec
from castore.format.digests import format_digest, parse_digest
from castore.format.index import encode_index_object
from castore.format.manifest import Manifest
from castore.format.packs import PackBuilder
from castore.format.streams import StreamDescriptor, encode_stream_object

ATTACK = b"echo pwned\n" + b"#" * (2 * 1024 * 1024)
"""The planted text: a shell command, padded past the 1 MiB blocks that `cat` once wrote
before the whole-stream check failed at the end."""


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", str(root), *args],
        capture_output=True,
        env={**os.environ, "CASTORE_STORE": ""},
        timeout=120,
        check=False,
    )


def _plant_chunk(store: castore.Store, data: bytes) -> StreamDescriptor:
    """Store `data` as one raw chunk in a pack and index object of its own, as any store
    writer can with the format's encoders; return a descriptor of `data` as one chunk."""
    backend = store.repository.backend
    chunk_id = hashlib.sha256(data).digest()
    pack = PackBuilder()
    pack.add(chunk_id, Codec.RAW, data, len(data))
    pack_id, pack_bytes, entries = pack.finish()
    backend.write(layout.pack_path(pack_id), bytes(pack_bytes))
    index = encode_index_object([(pack_id, entries)])
    backend.write(layout.index_path(hashlib.sha256(index).digest()), index)
    return StreamDescriptor(chunk_id, len(data), chunk_id, (len(data),))


def _plant_stream_object(store: castore.Store, name: str, data: bytes) -> None:
    """A stream object under the digest `name` whose chunk list holds `data`."""
    chunk = _plant_chunk(store, data)
    digest = parse_digest(name)
    forged = StreamDescriptor(digest, chunk.size, chunk.chunk_ids, chunk.chunk_sizes)
    store.repository.backend.write(layout.stream_path(digest), encode_stream_object(forged))


def test_a_stream_object_planted_under_a_version_digest_never_stands_in_for_it(
    tmp_path: Path,
) -> None:
    """`castore cat sha256:<pinned version digest> | sh` once ran a planted command: the
    stream object under the version's digest was read first and printed block by block."""
    root = tmp_path / "store"
    saved = b"echo saved by the victim\n"
    with castore.init(root) as store:
        victim = store.save(saved, "team/tool", serializer="raw")
        _plant_stream_object(store, victim.digest, ATTACK)

        assert store.get(victim.digest) == saved
        with store.open_stream(victim.digest) as stream:
            assert stream.read() == saved
        store.get_file(victim.digest, tmp_path / "api.out")
        assert (tmp_path / "api.out").read_bytes() == saved

        report = store.verify()
        assert not report.ok
        assert any(victim.digest in p and "manifest" in p for p in report.problems), report

    cat = _cli(root, "cat", victim.digest)
    assert cat.returncode == 0, cat.stderr.decode()
    assert cat.stdout == saved
    out = tmp_path / "cli.out"
    got = _cli(root, "get", victim.digest, "-o", str(out))
    assert got.returncode == 0, got.stderr.decode()
    assert out.read_bytes() == saved
    verify = _cli(root, "verify")
    assert verify.returncode == 1 and victim.digest.encode() in verify.stdout


def test_the_content_digest_info_shows_reads_through_every_door(
    store: castore.Store, tmp_path: Path
) -> None:
    """The content digest of a saved version was refused unless the same bytes were put."""
    data = b"model bytes, saved and never put"
    version = store.save(data, "m", serializer="raw")
    content = store.info("m:1")["content_digest"]
    assert content == version.content_digest == format_digest(hashlib.sha256(data).digest())

    assert store.get(content) == data
    with store.open_stream(content) as stream:
        assert stream.read() == data
    store.get_file(content, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data

    store.delete("m:1")
    with pytest.raises(castore.NotFoundError, match="no stream or version with digest"):
        store.get(content)


def test_a_version_found_by_content_digest_is_checked_whole(store: castore.Store) -> None:
    """A manifest is proven by its version digest, not by the content digest it claims:
    reading a planted version that claims someone's content digest fails whole, instead of
    handing out the planted bytes."""
    data = b"the real content"
    store.save(data, "real", serializer="raw")
    content = format_digest(hashlib.sha256(data).digest())
    chunk = _plant_chunk(store, ATTACK)
    decoy = Manifest(
        name="a-decoy",  # sorts, and so is searched, before "real"
        number=1,
        kind="file",
        serializer="raw",
        serializer_version="1",
        stream=StreamDescriptor(
            parse_digest(content), chunk.size, chunk.chunk_ids, chunk.chunk_sizes
        ),
    )
    encoded = decoy.encode()
    decoy_digest = hashlib.sha256(encoded).digest()
    store.repository.backend.write(layout.manifest_path(decoy_digest), encoded)
    store.repository.backend.write(
        layout.version_ref_path("a-decoy", 1),
        wire.encode({"manifest": decoy_digest, "created": "2025-01-31T12:00:00.000000+00:00"}),
    )

    with pytest.raises(castore.IntegrityError, match="read back as"):
        store.get(content)
    store.delete("a-decoy:1")
    assert store.get(content) == data


def test_cat_and_get_find_a_version_by_its_content_digest(tmp_path: Path) -> None:
    root = tmp_path / "store"
    data = b"saved with put --name, so only a manifest records it"
    with castore.init(root) as store:
        store.save(data, "tool", serializer="raw")
    content = json.loads(_cli(root, "--json", "info", "tool:1").stdout)["content_digest"]
    with castore.open(root) as store:
        assert not store.repository.backend.exists(layout.stream_path(parse_digest(content)))
    cat = _cli(root, "cat", content)
    assert cat.returncode == 0, cat.stderr.decode()
    assert cat.stdout == data
    out = tmp_path / "out.bin"
    got = _cli(root, "get", content, "-o", str(out))
    assert got.returncode == 0, got.stderr.decode()
    assert out.read_bytes() == data

    unknown = "sha256:" + "ab" * 32
    missing = _cli(root, "cat", unknown)
    assert missing.returncode == 3 and missing.stdout == b""
    assert f"no stream or version with digest {unknown}".encode() in missing.stderr


def test_a_search_that_cannot_read_every_version_says_so(store: castore.Store) -> None:
    """An unreadable version might be the one holding the content: not "not found"."""
    version = store.save(b"held by a version that lost its manifest", "broken", serializer="raw")
    store.repository.backend.delete(layout.manifest_path(parse_digest(version.digest)))
    with pytest.raises(castore.IntegrityError, match="1 of its versions could not be searched"):
        store.get(version.content_digest)
