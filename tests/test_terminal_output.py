"""Human output never hands a store's control characters to the terminal.

Whoever writes to a store chooses file names, link targets, times and tombstones; raw on a
terminal, escape sequences in them rewrite lines, retitle the window or set the clipboard.
"""

from __future__ import annotations

import os
import pickle
import unicodedata
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import castore
from castore.cli.terminal import guarded, shown
from castore.engine import refs as ref_objects
from castore.format import layout, wire
from castore.format.manifest import Manifest
from castore.versions import catalog
from tests.helpers import run_cli

ESCAPES = [
    "\x1b]52;c;ZWNobyBwd25lZA==\x07",  # OSC 52: write the clipboard
    "\x1b]0;window title\x07",
    "\x1b[2K\r",  # erase the line, back to its start
    "\x9b2J",  # C1 CSI: clear the screen
    "\u202e",  # right-to-left override
    "\n-rw-r--r-- forged line",
]


UNSAFE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _unsafe(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE]


@given(st.text())
def test_shown_leaves_nothing_unsafe_and_keeps_plain_text(text: str) -> None:
    escaped = shown(text)
    assert "\n" not in escaped and not _unsafe(escaped)
    if text.isprintable() and "\\" not in text:
        assert escaped == text


@given(st.text(), st.text())
def test_shown_tells_different_strings_apart(a: str, b: str) -> None:
    """Escaping is one-to-one: two stored strings never look the same."""
    if a != b:
        assert shown(a) != shown(b)


@given(st.text())
def test_guarded_keeps_line_breaks_and_nothing_else_unsafe(text: str) -> None:
    lines = guarded(text).split("\n")
    assert len(lines) == text.count("\n") + 1
    assert all(not _unsafe(line) for line in lines)


def test_snapshot_listing_and_diff_escape_paths_and_targets(tmp_path: Path) -> None:
    """File names and link targets are any bytes but '/' and NUL: ls and diff escape them."""
    source = tmp_path / "source"
    source.mkdir()
    for number, escape in enumerate(ESCAPES):
        (source / f"file{number}{escape}").write_bytes(b"x")
        os.symlink(f"/etc/shadow{escape}", source / f"link{number}")
    root = tmp_path / "store"
    with castore.init(root) as store:
        store.backup(source, "backups/b")
        (source / f"new{ESCAPES[0]}").write_bytes(b"y")
        store.backup(source, "backups/b")
    for args in (["ls", "backups/b:1"], ["diff", "backups/b:1", "backups/b:2"]):
        result = run_cli(root, *args)
        assert result.returncode == 0, result.stderr
        assert not _unsafe(result.stdout), (args, result.stdout)
        assert "\\x1b]52;c;" in result.stdout
        assert not any(line.startswith("-rw-r--r-- forged") for line in result.stdout.split("\n"))


def test_planted_times_and_tombstones_are_escaped(tmp_path: Path) -> None:
    """A planted version's creation time and a planted tombstone's time are free strings."""
    root = tmp_path / "store"
    with castore.init(root) as store:
        first = store.save(b"one", "m", serializer="raw")
        repo = store.repository
        manifest = repo  # the planted version 2: a valid manifest with a hostile time
        descriptor = repo.write_stream(b"two")
        planted = Manifest(
            name="m",
            number=2,
            kind="object",
            serializer="raw",
            serializer_version="1",
            stream=descriptor,
            parent=bytes.fromhex(first.digest.removeprefix("sha256:")),
            created="2026-01-01" + ESCAPES[1],
        )
        data = planted.encode()
        digest = layout.digest_of(data)
        repo.backend.write(layout.manifest_path(digest), data)
        repo.refs.create_version("m", 2, digest)
        repo.backend.write(
            layout.version_ref_path("m", 1),
            wire.encode({"manifest": layout.digest_of(b"x"), "deleted": "now" + ESCAPES[2]}),
        )
        assert manifest is repo and ref_objects  # the store's own objects, planted by hand
    for args in (["ls", "m"], ["log", "m"], ["log", "m", "--verify"], ["verify"]):
        result = run_cli(root, *args)
        assert not _unsafe(result.stdout + result.stderr), (args, result.stdout, result.stderr)


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    """A name the user typed, echoed back in an error, cannot drive the terminal either."""
    root = tmp_path / "store"
    castore.init(root).close()
    result = run_cli(root, "cat", "m" + ESCAPES[0])
    assert result.returncode != 0
    assert not _unsafe(result.stderr), result.stderr


def test_planted_global_names_are_escaped_by_inspect(tmp_path: Path) -> None:
    """The globals a stream names, listed by inspect and info --globals, are the writer's."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded

    first = text("mod" + "".join(ESCAPES)) + text("Name") + pickle.STACK_GLOBAL
    second = text("os") + text("sys" + ESCAPES[0]) + pickle.STACK_GLOBAL
    data = pickle.PROTO + b"\x04" + first + second + pickle.TUPLE2 + pickle.STOP
    root = tmp_path / "store"
    with castore.init(root) as store:
        catalog.commit_version(
            store.repository,
            "m",
            store.repository.write_stream(data),
            kind="object",
            serializer="pickle",
            serializer_version="x",
            metadata={},
            tags=(),
            force=True,
        )
        assert len(store.inspect("m").refused) == 2
    for args in (["inspect", "m"], ["info", "m", "--globals"]):
        result = run_cli(root, *args)
        assert "2 refused" in result.stdout, result.stderr
        assert not _unsafe(result.stdout + result.stderr), (args, result.stdout, result.stderr)
        assert not any(line.startswith("-rw-r--r-- forged") for line in result.stdout.split("\n"))
