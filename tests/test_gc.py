"""gc: frees what deleted versions used, never what a committed version needs."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import castore
from castore.engine import leases
from castore.engine.leases import GcMarker
from castore.errors import LeaseExpiredError, StoreBusyError
from castore.format import layout
from castore.versions import catalog
from tests.conftest import SMALL_PACKS, Location
from tests.helpers import location_args, pack_paths, pattern, spawn, without_read_override


def _all_objects(store: castore.Store) -> list[str]:
    folders = ["packs", "index", "manifests", "refs", "streams", "locks"]
    return [path for folder in folders for path in store.repository.backend.list(folder)]


def test_gc_frees_what_only_deleted_versions_used(location: Location) -> None:
    with location.init(config=SMALL_PACKS) as store:
        shared = pattern(200_000, seed=99)
        versions = [
            store.save(shared + pattern(300_000, seed=n), "m", serializer="raw") for n in range(6)
        ]
        before = store.stats()
        for version in versions[::2]:
            store.delete(f"m:{version.version}")
        garbage = store.stats().garbage_bytes
        assert garbage > 0.4 * before.stored_bytes  # half the unique data became garbage
        report = store.gc()
        after = store.stats()
        freed = before.stored_bytes - after.stored_bytes
        assert freed >= 0.9 * garbage
        assert report.bytes_freed >= 0.9 * garbage
        assert after.garbage_bytes <= 0.1 * garbage
        assert after.versions == 3 and after.logical_bytes == 3 * len(shared + pattern(300_000))
        for version in versions[1::2]:
            assert store.load(version.reference)[: len(shared)] == shared
        assert store.verify(read_data=True).ok


def test_dry_run_says_what_would_go_and_changes_nothing(store: castore.Store) -> None:
    store.save(pattern(300_000, seed=1), "m", serializer="raw")
    store.save(pattern(300_000, seed=2), "m", serializer="raw")
    store.delete("m:1")
    objects = _all_objects(store)
    report = store.gc(dry_run=True)
    assert report.dry_run and report.packs_deleted == 1 and report.bytes_freed > 300_000 * 0.9
    assert _all_objects(store) == objects


def test_gc_refuses_while_a_writer_holds_a_fresh_lease(location: Location) -> None:
    with location.init() as writer, location.open() as collector:
        with writer.repository.lease.held(), pytest.raises(StoreBusyError, match="fresh leases"):
            collector.gc()
        collector.gc()  # the lease is gone once the write ended


def test_a_writer_steps_back_while_gc_runs(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "WRITER_WAIT", 0.5)
    with location.init() as collector, location.open() as writer:
        with (
            GcMarker(collector.repository.backend),
            pytest.raises(StoreBusyError, match="gc is running"),
        ):
            writer.put(b"blocked")
        assert writer.put(b"after gc") == castore.format.digests.format_digest(
            __import__("hashlib").sha256(b"after gc").digest()
        )


def test_a_writer_whose_lease_went_stale_publishes_nothing(store: castore.Store) -> None:
    with store.repository.lease.held():
        store.repository.lease._refresher.last_sent -= 10 * leases.lease_ttl()  # as if suspended
        with pytest.raises(LeaseExpiredError, match="nothing was published"):
            store.save({"a": 1}, "m")
    assert store.names() == []
    store.save({"a": 1}, "m")  # a fresh lease works again


def test_a_reader_survives_a_repack_under_it(location: Location) -> None:
    with location.init(config=SMALL_PACKS) as writer:
        keep = writer.save(pattern(300_000, seed=1), "keep", serializer="raw")
        writer.save(pattern(300_000, seed=2), "drop", serializer="raw")
        with location.open() as reader:  # loads the index as it is before gc
            writer.delete("drop:1")
            report = writer.gc(repack_threshold=0.0)
            assert report.index_objects_replaced >= 1
            assert reader.load(keep.reference) == pattern(300_000, seed=1)


def test_gc_deletes_nothing_while_an_index_object_is_damaged(store: castore.Store) -> None:
    store.save(pattern(100_000), "m", serializer="raw")
    (index_path,) = store.repository.backend.list("index")
    store.repository.backend.write(index_path, b"garbage")
    packs = pack_paths(store)
    report = store.gc()
    assert any("castore repair" in p for p in report.problems)
    assert pack_paths(store) == packs


def _spawn(role: str, location: Location, seed: int, env: dict[str, str]) -> subprocess.Popen:
    return spawn("gc_workers", role, *location_args(location), str(seed), env=env)


def _check_committed(location: Location, outputs: list[str], saves: int = 5) -> None:
    saved, deleted = {}, set()
    for line in "\n".join(outputs).splitlines():
        kind, *what = line.split() or [""]
        if kind == "saved" and len(what) == 2:
            saved[what[0]] = what[1]
        elif kind == "deleted" and what:
            deleted.add(what[0])
    assert len(saved) >= saves, "the writers never got going"
    with location.open() as store:
        live = [reference for version, reference in saved.items() if version not in deleted]
        for reference in live:
            assert store.load(reference)  # every committed, undeleted version reads back
        report = store.verify(read_data=True)
        assert report.ok, report.problems


@pytest.mark.slow
@pytest.mark.parametrize("new_location", ["local", "s3-moto", "s3-radosgw"], indirect=True)
def test_writers_and_gc_in_parallel_processes_lose_nothing(location: Location) -> None:
    location.init(config=SMALL_PACKS).close()
    writers = [_spawn("writer", location, seed, {}) for seed in range(3)]
    collector = _spawn("gc", location, 7, {})
    reports: list[str] = []
    threading.Thread(target=lambda: reports.extend(collector.stdout), daemon=True).start()
    started = time.monotonic()
    # Run at least 10 s and until two gc runs completed amid the writers (at most 120 s:
    # on a loaded machine the processes take a while to start).
    while time.monotonic() - started < 120:
        if time.monotonic() - started > 10 and sum(r.startswith("gc ") for r in reports) >= 2:
            break
        time.sleep(0.5)
    outputs = []
    for worker in [*writers, collector]:
        worker.terminate()
        outputs.append(worker.communicate(timeout=60)[0] or "")
    assert any(r.startswith("gc ") for r in reports), f"gc never ran: {reports[-5:]}"
    _check_committed(location, outputs[:-1])


def _kill_after_saves(workers: list[subprocess.Popen], saves: int) -> list[str]:
    """SIGKILL every worker as soon as the first two (the writers) together reported `saves`
    commits: they are then amid their next save or delete, the gc amid its run. Return
    every line the writers printed."""
    lines: queue.Queue[str | None] = queue.Queue()

    def forward(worker: subprocess.Popen) -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            lines.put(line)
        lines.put(None)

    readers = [threading.Thread(target=forward, args=(w,), daemon=True) for w in workers[:2]]
    for reader in readers:
        reader.start()
    seen: list[str] = []
    while sum(line.startswith("saved") for line in seen) < saves:
        line = lines.get(timeout=300)  # a bound on a hang, not a timing assumption
        assert line is not None, "a writer exited"
        seen.append(line)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.wait(timeout=60)
    for reader in readers:
        reader.join(timeout=60)
    while not lines.empty():
        if (line := lines.get()) is not None:
            seen.append(line)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_gc_and_writers_killed_at_random_points_lose_nothing(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = {"CASTORE_LEASE_TTL": "3"}
    location.init(config=SMALL_PACKS).close()
    rng = random.Random(5)
    outputs = []
    for round_number in range(4):
        workers = [_spawn("writer", location, 10 * round_number + s, ttl) for s in range(2)]
        workers.append(_spawn("gc", location, round_number, ttl))
        outputs += _kill_after_saves(workers, saves=rng.randint(1, 3))
    # The killed writers' and gc's leases count as stale at once: the last gc takes over
    # the dead gc's marker and cleans up.
    monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")
    with location.open() as store:
        store.gc()
    monkeypatch.delenv("CASTORE_LEASE_TTL")
    _check_committed(location, [o for o in outputs if "saved" in o or "deleted" in o], saves=4)


def test_gc_keeps_the_files_of_snapshots(store: castore.Store, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "weights.bin").write_bytes(pattern(300_000, seed=1))
    store.backup(source, "backups/run")
    store.save(pattern(100_000, seed=2), "m", serializer="raw")
    store.delete("m:1")
    report = store.gc(repack_threshold=0.0)
    assert report.packs_deleted >= 1
    store.restore("backups/run:1", tmp_path / "restored")
    assert (tmp_path / "restored" / "weights.bin").read_bytes() == pattern(300_000, seed=1)
    assert store.verify(read_data=True).ok


def _store_with_garbage(store: castore.Store) -> castore.Version:
    """A kept version plus a deleted one whose pack gc would free."""
    kept = store.save(pattern(50_000, seed=1), "keep/me", serializer="raw")
    store.save(pattern(50_000, seed=2), "gone", serializer="raw")
    store.delete("gone:1")
    return kept


def test_gc_deletes_nothing_when_a_refs_folder_cannot_be_read(tmp_path: Path) -> None:
    """The review's data loss: an unreadable folder under refs/ once listed as empty."""
    root = tmp_path / "store"
    with castore.init(root) as store:
        kept = _store_with_garbage(store)
        before = _all_objects(store)
    folder = root / "refs" / "keep"
    os.chmod(folder, 0)
    try:
        result = subprocess.run(
            [*without_read_override(), sys.executable, "-m", "castore", "--store", str(root), "gc"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.chmod(folder, 0o755)
    assert result.returncode != 0, result.stdout
    assert "refs" in result.stdout + result.stderr
    with castore.open(root) as store:
        assert _all_objects(store) == before
        assert store.load(kept.reference) == pattern(50_000, seed=1)
        assert store.gc().packs_deleted >= 1  # readable again: gc does its job


def test_gc_deletes_nothing_while_refs_hold_a_stray_object(store: castore.Store) -> None:
    _store_with_garbage(store)
    store.repository.backend.write("refs/keep/me/@versions/007", b"who wrote this?")
    before = _all_objects(store)
    report = store.gc()
    assert report.packs_deleted == 0 and _all_objects(store) == before
    assert any("refs/keep/me/@versions/007" in p for p in report.problems)
    assert any("refs/keep/me/@versions/007" in p for p in store.verify().problems)


def test_gc_deletes_nothing_while_a_tree_cannot_be_read(
    store: castore.Store, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(pattern(20_000, seed=3))
    snapshot = store.backup(tmp_path, "backups/b")
    _store_with_garbage(store)
    manifest, _ = catalog.resolve(store.repository, snapshot.reference)
    ((tree_chunk, _), *_) = manifest.stream.chunks()
    location = store.repository.index.lookup(tree_chunk)
    assert location is not None
    path = layout.pack_path(location.pack_id)
    data = bytearray(store.repository.backend.read(path))
    data[location.entry.offset] ^= 0xFF  # the tree no longer reads back
    store.repository.backend.write(path, bytes(data))
    before = _all_objects(store)
    report = store.gc()
    assert report.problems and report.packs_deleted == 0
    assert _all_objects(store) == before
