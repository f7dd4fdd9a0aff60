"""Locks: who holds them, gc's message about them, and `castore unlock` for dead writers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import castore
from castore.engine.leases import GcMarker
from castore.errors import BackendError, StoreBusyError
from castore.format import layout, wire
from tests.helpers import pattern, run_cli

HOLD_SCRIPT = """
import sys, castore
with castore.open(sys.argv[1]) as store, store.repository.lease.held():
    print("holding", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A local store with garbage for gc to free."""
    path = tmp_path / "store"
    with castore.init(path) as store:
        store.save(pattern(30_000, seed=1), "m", serializer="raw")
        store.save(pattern(30_000, seed=2), "m", serializer="raw")
        store.delete("m:1")
    return path


def _killed_writer(root: Path) -> int:
    """Start a writer, SIGKILL it once it reports holding its lease; return its pid."""
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    return writer.pid


def test_a_killed_writer_is_named_and_unlocked(root: Path) -> None:
    """A killed writer's lease once kept gc out for the whole TTL with no word on who held
    it, and nothing removed it. gc now names host, pid and expiry; a dry run is not kept
    out; unlock removes the lease of a process gone from this host."""
    pid = _killed_writer(root)
    busy = run_cli(root, "gc")
    assert busy.returncode != 0
    assert f"{socket.gethostname()} pid {pid}" in busy.stderr
    assert "expires in" in busy.stderr and "castore unlock" in busy.stderr
    dry = run_cli(root, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would free" in dry.stdout
    unlocked = run_cli(root, "unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert f"removed {layout.WRITER_LEASES}/" in unlocked.stdout
    freed = run_cli(root, "gc")
    assert freed.returncode == 0, freed.stderr
    with castore.open(root) as store:
        assert store.locks() == []
        assert store.load("m:2") == pattern(30_000, seed=2)


def test_unlock_keeps_live_and_foreign_leases_unless_told(root: Path) -> None:
    """A live writer on this host, and a fresh one on another host, keep their leases;
    --remove-all removes them, and the gc marker too."""
    with castore.open(root) as store, store.repository.lease.held():
        backend = store.repository.backend
        foreign = layout.writer_lease_path("f" * 32)
        backend.write(foreign, wire.encode({"host": "elsewhere", "pid": 1, "time": "t"}))
        backend.write(layout.GC_MARKER, wire.encode({"host": "elsewhere", "pid": 2}))
        assert store.unlock() == []
        holders = {h.path: h for h in store.locks()}
        assert len(holders) == 3 and all(h.fresh for h in holders.values())
        assert holders[foreign].host == "elsewhere" and holders[foreign].pid == 1
        ours = [h for h in holders.values() if h.pid == os.getpid()]
        assert len(ours) == 1 and ours[0].on_this_host and not ours[0].process_gone()
        assert {h.path for h in store.unlock(remove_all=True)} == set(holders)
        assert store.locks() == []


def test_stale_leases_are_removed_whoever_held_them(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with castore.open(root) as store:
        foreign = layout.writer_lease_path("e" * 32)
        store.repository.backend.write(foreign, wire.encode({"host": "elsewhere", "pid": 9}))
        monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")
        assert [h.path for h in store.unlock()] == [foreign]


def test_gc_leaves_no_marker_when_it_cannot_read_the_leases(root: Path) -> None:
    """A lease gc cannot read stops it, and its marker goes with it: left behind, the
    marker would keep every writer out."""
    (root / layout.WRITER_LEASES).mkdir(parents=True, exist_ok=True)
    (root / layout.WRITER_LEASES / "planted").symlink_to("/dev/zero")
    with castore.open(root) as store:
        with pytest.raises(BackendError, match="symbolic link"), GcMarker(store.repository.backend):
            pass
        assert not store.repository.backend.exists(layout.GC_MARKER)


def test_busy_gc_leaves_no_marker(root: Path) -> None:
    with castore.open(root) as store, store.repository.lease.held():
        with pytest.raises(StoreBusyError, match="pid"), GcMarker(store.repository.backend):
            pass
        assert not store.repository.backend.exists(layout.GC_MARKER)
