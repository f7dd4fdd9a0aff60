"""Hostile stores: what someone with write access to a local store plants in it.

Each case plants links, pipes or devices where castore keeps objects, as an attacker with
write access (and no key) would, then runs the commands a victim runs. None may follow a
link out of the store, hang, exhaust memory or, worst, let gc delete a committed version
because a listing did not show what a read would have found.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

import castore
from castore.engine.index import ChunkLocation
from castore.engine.repository import Repository
from castore.errors import BackendError, CastoreError, IntegrityError
from castore.format import layout, wire
from castore.format.index import encode_index_object
from castore.format.manifest import Manifest
from castore.format.packs import PackEntry, encode_entries
from castore.format.streams import StreamDescriptor, encode_stream_object
from castore.format.tree import TREE_SERIALIZER
from castore.maintenance.reachability import walk
from castore.versions.contents import check_tree_manifest
from tests.helpers import pattern
from tests.test_backup import commit_raw_tree
from tests.test_restore_safety import hostile_tree

Plant = Callable[[Path, castore.Version], None]


def _objects(root: Path) -> dict[str, bytes]:
    """Every regular file below the store root, by relative path (links not followed)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_bytes()
    return found


def _store_with_garbage(root: Path) -> castore.Version:
    """A kept version and a deleted one, so that gc has a pack it would free."""
    with castore.init(root) as store:
        kept = store.save(pattern(50_000, seed=1), "keep/me", serializer="raw")
        store.put(pattern(30_000, seed=3))
        store.save(pattern(50_000, seed=2), "gone", serializer="raw")
        store.delete("gone:1")
        return kept


def _move_out(root: Path, relative: str, *, as_folder: bool) -> None:
    """Move `relative` outside the store and leave a link to it in its place."""
    place = root / relative
    outside = root.parent / "elsewhere" / relative.replace("/", "_")
    outside.parent.mkdir(exist_ok=True)
    shutil.move(place, outside)
    place.symlink_to(outside, target_is_directory=as_folder)


def _linked_versions_folder(root: Path, kept: castore.Version) -> None:
    _move_out(root, layout.versions_folder(kept.name), as_folder=True)


def _linked_name_folder(root: Path, kept: castore.Version) -> None:
    _move_out(root, f"{layout.REFS}/keep", as_folder=True)


def _linked_version_ref(root: Path, kept: castore.Version) -> None:
    _move_out(root, layout.version_ref_path(kept.name, kept.version), as_folder=False)


def _linked_manifest(root: Path, kept: castore.Version) -> None:
    digest = bytes.fromhex(kept.digest.removeprefix("sha256:"))
    _move_out(root, layout.manifest_path(digest), as_folder=False)


def _linked_stream(root: Path, kept: castore.Version) -> None:
    (stream,) = _files(root / layout.STREAMS)
    _move_out(root, str(stream.relative_to(root)), as_folder=False)


def _linked_pack_folder(root: Path, kept: castore.Version) -> None:
    first = sorted((root / layout.PACKS).iterdir())[0]
    _move_out(root, str(first.relative_to(root)), as_folder=True)


def _fifo_manifest(root: Path, kept: castore.Version) -> None:
    digest = bytes.fromhex(kept.digest.removeprefix("sha256:"))
    place = root / layout.manifest_path(digest)
    place.unlink()
    os.mkfifo(place)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


PLANTS: dict[str, Plant] = {
    "linked @versions folder": _linked_versions_folder,
    "linked name folder": _linked_name_folder,
    "linked version ref": _linked_version_ref,
    "linked manifest": _linked_manifest,
    "linked put stream": _linked_stream,
    "linked pack folder": _linked_pack_folder,
    "named pipe for a manifest": _fifo_manifest,
}


@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_gc_deletes_nothing_in_a_store_with_planted_links(tmp_path: Path, plant: Plant) -> None:
    """The red team's data loss: listings skipped links that reads follow, so gc believed
    a version, a stream or a pack folder absent and freed what it needed. Now gc names
    what it cannot trust and deletes nothing, inside the store or outside it."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    plant(root, kept)
    inside, outside = _objects(root), _objects(tmp_path / "elsewhere")
    with castore.open(root) as store:
        try:
            problems = store.gc().problems
        except CastoreError as exc:  # stopping with an error is as safe as a report
            problems = [str(exc)]
        assert any("symbolic link" in p or "named pipe" in p for p in problems), problems
        try:
            assert not store.verify().ok
        except CastoreError as exc:
            assert "symbolic link" in str(exc)
    assert _objects(root) == inside
    assert _objects(tmp_path / "elsewhere") == outside


@pytest.mark.parametrize("command", [["ls"], ["log", "keep/me"], ["verify"], ["gc"], ["stats"]])
def test_commands_refuse_a_named_pipe_for_config_without_hanging(
    tmp_path: Path, command: list[str]
) -> None:
    """A named pipe in place of `config` once hung every command forever."""
    root = tmp_path / "store"
    _store_with_garbage(root)
    (root / layout.CONFIG).unlink()
    os.mkfifo(root / layout.CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "castore", "--store", str(root), *command],
        capture_output=True,
        text=True,
        timeout=120,  # a bound on a hang, not a timing assumption
        check=False,
    )
    assert result.returncode != 0
    assert "named pipe" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_ref_linked_to_dev_zero_is_a_castore_error(tmp_path: Path) -> None:
    """A ref symlinked to /dev/zero once ended in a raw MemoryError."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    ref = root / layout.version_ref_path(kept.name, kept.version)
    ref.unlink()
    ref.symlink_to("/dev/zero")
    with castore.open(root) as store, pytest.raises(CastoreError, match="symbolic link"):
        store.load(f"{kept.name}:{kept.version}")


def test_tag_never_writes_through_a_linked_folder(tmp_path: Path) -> None:
    """`castore tag` once wrote a file into a folder outside the store."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    tags = root / layout.tags_folder(kept.name)
    if tags.exists():
        shutil.rmtree(tags)
    tags.parent.mkdir(parents=True, exist_ok=True)
    tags.symlink_to(outside, target_is_directory=True)
    with castore.open(root) as store, pytest.raises(BackendError, match="symbolic link"):
        store.tag(f"{kept.name}:1", "production")
    assert list(outside.iterdir()) == []


def _index_paths(store: castore.Store) -> list[str]:
    return store.repository.backend.list(layout.INDEX)


def test_gc_keeps_a_pack_whose_index_object_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the index objects gone, a committed version's pack looked like an old orphan
    and gc deleted it. A needed chunk that no index object places now stops gc."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")  # every pack is old enough to be an orphan
    with castore.open(root) as store:
        for path in _index_paths(store):
            store.repository.backend.delete(path)
        before = _objects(root)
        report = store.gc()
        assert report.packs_deleted == 0 and report.orphan_packs == 0
        assert any("in no index object" in p for p in report.problems), report.problems
        assert _objects(root) == before
        store.repair()
        assert store.load(kept.reference) == pattern(50_000, seed=1)


def _needed_chunk(repo: Repository, kept: castore.Version) -> tuple[bytes, ChunkLocation]:
    """A chunk version 1 of `kept` needs, and where the index places it."""
    users = walk(repo, track_users=True).users
    needed = next(c for c, who in users.items() if f"{kept.name}:1" in who)
    location = repo.index.lookup(needed)
    assert location is not None
    return needed, location


def test_gc_keeps_the_real_copy_when_a_planted_index_lies(tmp_path: Path) -> None:
    """A planted index object listing a needed chunk in a pack that does not exist once won
    the index lookup, so the pack really holding it looked dead and was deleted."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    with castore.open(root) as store:
        repo = store.repository
        needed, real = _needed_chunk(repo, kept)
        first_real = min(_index_paths(store))
        start = real.entry.offset
        lie = PackEntry(needed, start, real.entry.stored_len, real.entry.raw_len, real.entry.codec)
        for attempt in range(10_000):  # vary a second entry until the lie sorts, and loads, first
            filler = hashlib.sha256(b"%d" % attempt).digest()
            entries = [lie, PackEntry(filler, start + lie.stored_len, 10, 10, 0)]
            phantom = hashlib.sha256(encode_entries(entries)).digest()
            data = encode_index_object([(phantom, entries)])
            planted = layout.index_path(hashlib.sha256(data).digest())
            if planted < first_real:
                break
        repo.backend.write(planted, data)
    with castore.open(root) as store:
        store.repository.index.reload()
        assert not store.repository.index.damaged
        located = store.repository.index.lookup(needed)
        assert located is not None and located.pack_id == phantom  # the lie wins the lookup
        store.gc()
        assert store.repository.backend.exists(layout.pack_path(real.pack_id))
        store.repository.backend.delete(planted)
    with castore.open(root) as store:
        assert store.load(kept.reference) == pattern(50_000, seed=1)
        assert store.verify(read_data=True).ok


def test_a_tree_format_version_of_odd_digits_is_damage(tmp_path: Path) -> None:
    """ "²" passes str.isdigit and then crashed int(); 5000 digits cost a big-int parse."""
    for version in ("²", "1" * 5000, "01", "-1", ""):
        manifest = Manifest(
            name="b",
            number=1,
            kind="tree",
            serializer=TREE_SERIALIZER,
            serializer_version=version,
            stream=StreamDescriptor(hashlib.sha256(b"").digest(), 0, b"", ()),
        )
        with pytest.raises(IntegrityError, match="invalid tree format version"):
            check_tree_manifest(manifest, "b:1")


@pytest.mark.parametrize("planted", ["config", "version ref"])
def test_a_giant_small_object_is_refused_unread(tmp_path: Path, planted: str) -> None:
    """Objects whose decoders refuse more than a few KiB are read no further than that: a
    planted 4 GiB (sparse) config or ref once went whole into memory first."""
    root = tmp_path / "store"
    kept = _store_with_garbage(root)
    path = layout.CONFIG if planted == "config" else layout.version_ref_path(kept.name, 1)
    with open(root / path, "r+b") as file:
        file.truncate(4 * 1024**3)
    tracemalloc.start()
    try:
        with (
            pytest.raises(IntegrityError, match=r"bytes, more than|too large"),
            castore.open(root) as store,
        ):
            store.load(f"{kept.name}:1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2


# -- every reading command against every planted store ----------------------------------

KEPT_BYTES = pattern(50_000, seed=1)


def _fifo_config(root: Path, kept: castore.Version) -> None:
    (root / layout.CONFIG).unlink()
    os.mkfifo(root / layout.CONFIG)


def _ref_to_dev_zero(root: Path, kept: castore.Version) -> None:
    ref = root / layout.version_ref_path(kept.name, kept.version)
    ref.unlink()
    ref.symlink_to("/dev/zero")


def _giant_ref(root: Path, kept: castore.Version) -> None:
    with open(root / layout.version_ref_path(kept.name, kept.version), "r+b") as file:
        file.truncate(4 * 1024**3)


def _corrupted_chunk(root: Path, kept: castore.Version) -> None:
    with castore.open(root) as store:
        _, location = _needed_chunk(store.repository, kept)
        path = root / layout.pack_path(location.pack_id)
    data = bytearray(path.read_bytes())
    data[location.entry.offset + location.entry.stored_len // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _swapped_ref(root: Path, kept: castore.Version) -> None:
    with castore.open(root) as store:
        other = store.version("backups/b:1")
        store.repository.backend.write(
            layout.version_ref_path(kept.name, kept.version),
            wire.encode({"manifest": bytes.fromhex(other.digest.removeprefix("sha256:"))}),
        )


def _setid_snapshot(root: Path, kept: castore.Version) -> None:
    """The next version of backups/b: set-id programs and folders, planted by hand."""
    with castore.open(root) as store:
        commit_raw_tree(store, "backups/b", hostile_tree(store))


def _hard_linked_target(root: Path, kept: castore.Version) -> None:
    """The restore target already holds a hard link to an outside file, under the name
    and with the size and mtime of a snapshot entry."""
    target, outside = root.parent / "target", root.parent / "bystander" / "linked"
    target.mkdir()
    outside.parent.mkdir(exist_ok=True)
    source = root.parent / "source" / "file"
    shutil.copy2(source, outside)
    os.chmod(outside, 0o600)
    os.link(outside, target / "file")


def _stream_named_by_a_version_digest(root: Path, kept: castore.Version) -> None:
    """A put stream whose name is the kept version's digest, holding a shell command."""
    with castore.open(root) as store:
        descriptor = store.repository.write_stream(b"echo pwned\n" + b"#" * 2**21)
        digest = bytes.fromhex(kept.digest.removeprefix("sha256:"))
        store.repository.backend.write(layout.stream_path(digest), encode_stream_object(descriptor))


HOSTILE: dict[str, Plant | None] = {
    "intact": None,
    **PLANTS,
    "named pipe for config": _fifo_config,
    "ref linked to /dev/zero": _ref_to_dev_zero,
    "4 GiB ref": _giant_ref,
    "corrupted chunk": _corrupted_chunk,
    "swapped ref": _swapped_ref,
    "set-id snapshot": _setid_snapshot,
    "hard link in the target": _hard_linked_target,
    "stream named by a version digest": _stream_named_by_a_version_digest,
}

COMMANDS = [
    ["ls"],
    ["ls", "keep/me"],
    ["log", "keep/me", "--verify"],
    ["info", "keep/me:1"],
    ["diff", "keep/me:1", "keep/me:1"],
    ["ls", "backups/b:latest"],
    ["cat", "keep/me:1"],
    ["cat", "{digest}"],
    ["get", "keep/me:1", "-o", "{out}"],
    ["restore", "backups/b:latest", "{target}"],
    ["copy", "keep/me", "{dest}"],
    ["verify"],
    ["stats"],
    ["gc", "--dry-run"],
    ["gc"],
]
CASTORE_EXIT_CODES = {0, 1, 2, 3, 4, 5}


def _tree(folder: Path) -> dict[str, object]:
    """Every entry below `folder`: link targets (not followed); file bytes, mode, mtime."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            found[relative] = os.readlink(path)
        elif path.is_file():
            info = path.stat()
            found[relative] = (path.read_bytes(), info.st_mode, info.st_mtime_ns, info.st_uid)
    return found


@pytest.mark.parametrize("plant", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_command_on_a_hostile_store(tmp_path: Path, plant: Plant | None) -> None:
    """Each reading command gives a castore error or correct output, in bounded time and
    memory (the driver's watchdog and address-space limit), writes nothing outside its
    target or the stores, and creates no setuid file."""
    root, dest, target, out = (tmp_path / n for n in ("store", "dest", "target", "out.bin"))
    kept = _store_with_garbage(root)
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_bytes(pattern(10_000, seed=7))
    with castore.open(root) as store:
        store.backup(source, "backups/b")
    castore.init(dest).close()
    bystander = tmp_path / "bystander"
    bystander.mkdir(exist_ok=True)
    (bystander / "precious").write_bytes(b"keep me")
    if plant is not None:
        plant(root, kept)
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    outside = {"elsewhere": _tree(tmp_path / "elsewhere"), "bystander": _tree(bystander)}
    places = {"out": str(out), "target": str(target), "dest": str(dest), "digest": kept.digest}
    commands = [["--store", str(root), *(a.format(**places) for a in c)] for c in COMMANDS]
    result = subprocess.run(
        [sys.executable, "-m", "tests.hostile_driver", json.dumps(commands)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=20 * 60,
        check=False,
    )
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == len(commands), f"a command hung or died: {result.stderr[-2000:]}"
    for command, report in zip(COMMANDS, reports, strict=True):
        assert report["crash"] is None, (command, report["crash"])
        assert report["code"] in CASTORE_EXIT_CODES, (command, report)
        assert "Traceback" not in report["stderr"], (command, report["stderr"])
        if plant is None:
            assert report["code"] == 0, (command, report["stderr"])
        if command[0] == "cat":
            emitted = base64.b64decode(report["stdout"])
            assert emitted == (KEPT_BYTES if report["code"] == 0 else b""), command
        if command[0] == "get":
            assert out.read_bytes() == KEPT_BYTES if report["code"] == 0 else not out.exists()
    assert {"elsewhere": _tree(tmp_path / "elsewhere"), "bystander": _tree(bystander)} == outside
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), path
