"""verify names exactly the versions damage affects; repair recovers what packs still hold;
stats and copy between stores."""

from __future__ import annotations

from pathlib import Path

import pytest

import castore
from castore.format import layout
from castore.versions import catalog
from tests.conftest import SMALL_PACKS, Location
from tests.helpers import flip_byte, pack_paths, pattern


def _three_versions(store: castore.Store) -> list[castore.Version]:
    """Three versions whose data lives in separate packs (one save = one session)."""
    return [store.save(pattern(150_000, seed=n), "m", serializer="raw") for n in range(3)]


def _packs_of(store: castore.Store, version: castore.Version) -> set[bytes]:
    manifest, _ = catalog.resolve(store.repository, version.reference)
    return {store.repository.index.lookup(c).pack_id for c, _ in manifest.stream.chunks()}


def test_healthy_store_verifies_with_and_without_data(small_store: castore.Store) -> None:
    _three_versions(small_store)
    small_store.put(pattern(50_000, seed=9))
    for report in (small_store.verify(), small_store.verify(read_data=True)):
        assert report.ok and report.versions_checked == 3 and report.streams_checked == 1
    parts = [small_store.verify(subset=f"{n}/3").packs_checked for n in (1, 2, 3)]
    assert sum(parts) == len(pack_paths(small_store))


def test_deleted_pack_names_exactly_the_affected_version(small_store: castore.Store) -> None:
    versions = _three_versions(small_store)
    victim = sorted(_packs_of(small_store, versions[1]))[0]
    small_store.repository.backend.delete(layout.pack_path(victim))
    report = small_store.verify()
    assert report.affected == ["m:2"]
    assert small_store.repair().affected == ["m:2"]


def test_flipped_bit_names_exactly_the_affected_version(small_store: castore.Store) -> None:
    versions = _three_versions(small_store)
    victim = sorted(_packs_of(small_store, versions[2]))[0]
    flip_byte(small_store, layout.pack_path(victim), 100)
    assert small_store.verify().ok  # structure is intact...
    assert small_store.verify(read_data=True).affected == ["m:3"]  # ...the bytes are not


def test_deleted_index_object_is_rebuilt_from_pack_footers(location: Location) -> None:
    with location.init(config=SMALL_PACKS) as store:
        versions = _three_versions(store)
        index_objects = store.repository.backend.list(layout.INDEX)
        store.repository.backend.delete(index_objects[0])
    with location.open() as store:
        assert not store.verify(read_data=False).ok
        report = store.repair()
        assert report.packs_reindexed >= 1 and report.lost_chunks == 0 and report.affected == []
        assert store.verify(read_data=True).ok
        for version in versions:
            assert store.load(version.reference) == pattern(150_000, seed=version.version - 1)


def test_damaged_index_object_is_replaced_by_repair(location: Location) -> None:
    with location.init(config=SMALL_PACKS) as store:
        _three_versions(store)
        flip_byte(store, store.repository.backend.list(layout.INDEX)[1], -5)
    with location.open() as store:
        report = store.repair()
        assert report.index_objects_removed == 1 and report.lost_chunks == 0
        assert store.verify(read_data=True).ok


def test_truncated_manifest_and_dangling_ref_are_named(small_store: castore.Store) -> None:
    versions = _three_versions(small_store)
    manifest = layout.manifest_path(bytes.fromhex(versions[0].digest[7:]))
    small_store.repository.backend.write(
        manifest, small_store.repository.backend.read(manifest)[:40]
    )
    small_store.repository.refs.create_version("other", 1, bytes(32))  # points at no manifest
    affected = small_store.verify().affected
    assert affected == ["m:1", "other:1"]


def test_stats_count_what_dedup_and_compression_save(small_store: castore.Store) -> None:
    shared = pattern(200_000, seed=1)
    small_store.save(shared + b"a", "m", serializer="raw")
    small_store.save(shared + b"b", "m", serializer="raw")
    text = b"".join(f"line {i} of a log\n".encode() for i in range(5_000))
    small_store.save(text, "log", serializer="raw")
    stats = small_store.stats()
    assert (stats.names, stats.versions, stats.deleted_versions) == (2, 3, 0)
    assert stats.logical_bytes == 2 * (len(shared) + 1) + len(text)
    assert stats.unique_bytes < stats.logical_bytes * 0.7
    assert stats.dedup_ratio > 1.4 and stats.compression_ratio > 1.2
    assert stats.garbage_bytes == 0


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_copy_between_local_and_s3_moves_only_missing_chunks(
    new_location, request: pytest.FixtureRequest, moto_s3, tmp_path: Path
) -> None:
    from tests.conftest import BUCKET, _s3_options

    source_location = new_location()
    s3 = Location(f"s3://{BUCKET}/copy-{tmp_path.name}", _s3_options(moto_s3))
    with source_location.init(config=SMALL_PACKS) as source, s3.init() as dest:
        first = source.save(pattern(300_000, seed=1), "team/model", serializer="raw")
        source.save(pattern(300_000, seed=2), "team/model", serializer="raw", tags=["production"])
        source.delete("team/model:1")
        source.save(pattern(300_000, seed=2) + b"!", "team/model", serializer="raw")
        copied = [item.version for item in source.copy("team/model", dest).versions]
        assert [v.version for v in copied] == [2, 3]
        assert dest.resolve("team/model:production") == source.resolve("team/model:production")
        assert dest.verify_history("team/model") == []
        assert dest.verify(read_data=True).ok
        packs = pack_paths(dest)
        again = source.copy("team/model:3", dest).versions
        assert [(item.version.digest, item.action) for item in again] == [
            (copied[1].digest, "present")
        ]
        assert pack_paths(dest) == packs  # nothing new travelled
        # and back: a pinned reference loads the same bytes from either store
        with source_location.init() if False else castore.init(tmp_path / "third") as third:
            dest.copy("team/model:3", third)
            assert third.load(copied[1].reference) == source.load(copied[1].reference)
        with pytest.raises(castore.NotFoundError, match="no version 1 of team/model"):
            dest.load(first.reference.split("@")[0] + ":1")  # never copied: absent, not deleted
        assert dest.check_history("team/model").not_in_store == ["team/model:1"]


def test_copy_refuses_diverged_histories(new_location) -> None:
    with new_location().init() as a, new_location().init() as b:
        a.save(b"from a", "m", serializer="raw")
        b.save(b"from b", "m", serializer="raw")
        with pytest.raises(castore.IntegrityError, match="diverged"):
            a.copy("m:1", b)
