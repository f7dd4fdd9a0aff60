"""Test data and store surgery shared by the test modules."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyfastcdc import FastCDC

import castore
from castore.format import layout
from castore.format.digests import parse_digest
from castore.format.streams import StreamDescriptor


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that neither compress away nor repeat."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def pyfastcdc_accepts(min_size: int, avg_size: int, max_size: int, normalization: int = 1) -> bool:
    """Whether pyfastcdc itself would cut with these chunker parameters."""
    try:
        FastCDC(avg_size, min_size=min_size, max_size=max_size, normalized_chunking=normalization)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def stream_of(store: castore.Store, digest: str) -> StreamDescriptor:
    """The stored descriptor of a put stream."""
    return store.repository.stream_descriptor(parse_digest(digest))


def stream_object_path(digest: str) -> str:
    """Where a put stream's object lives."""
    return layout.stream_path(parse_digest(digest))


def pack_paths(store: castore.Store) -> list[str]:
    """Every pack object of the store."""
    return store.repository.backend.list(layout.PACKS)


def flip_byte(store: castore.Store, path: str, offset: int) -> None:
    """Invert one byte of a stored object (negative offsets count from the end)."""
    data = bytearray(store.repository.backend.read(path))
    data[offset] ^= 0xFF
    store.repository.backend.write(path, bytes(data))


ROOT = Path(__file__).resolve().parent.parent


def spawn(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Run ``python -m tests.<module> ARGS`` from the repository, its stdout piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", f"tests.{module}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def location_args(location: object) -> list[str]:
    """A Location as command-line arguments: its URL and its storage options as JSON."""
    return [location.url, json.dumps(location.options)]  # type: ignore[attr-defined]


def without_read_override() -> list[str]:
    """A command prefix under which root, too, is refused by mode 000 (setpriv drops the
    capabilities that let root read anything); empty when not running as root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


def plant_version(store: castore.Store, name: str, data: bytes, serializer: str) -> castore.Version:
    """Commit `data` as a version of `name` labelled `serializer`, byte for byte, as any
    store writer could (no serializer runs)."""
    from castore.versions import catalog

    return catalog.commit_version(
        store.repository,
        name,
        store.repository.write_stream(data),
        kind="object",
        serializer=serializer,
        serializer_version="x",
        metadata={},
        tags=(),
        force=True,
    )


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m castore --store ROOT ARGS`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
