"""copy between stores keeps the destination's history true: versions it was not given
are absent (not deleted), each copied version takes its own number in any order, loads
and survives gc, tags come along unless the destination moved them; and a deleted,
collected version says so, by number and by digest."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import castore
from castore.format import layout
from castore.format.digests import parse_digest
from tests.conftest import Location
from tests.helpers import pattern


def _data(number: int) -> bytes:
    return pattern(120_000, seed=number)


@pytest.fixture
def stores(
    new_location: Callable[[], Location],
) -> Iterator[tuple[castore.Store, castore.Store]]:
    """A source holding m:1..m:3 and an empty destination, on the parametrized backend."""
    with new_location().init() as source, new_location().init() as dest:
        for number in (1, 2, 3):
            source.save(_data(number), "m", serializer="raw")
        yield source, dest


def _collect(store: castore.Store, monkeypatch: pytest.MonkeyPatch) -> castore.GcReport:
    """gc with no lease TTL to wait out: every unreferenced object goes now."""
    monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")
    try:
        report = store.gc()
    finally:
        monkeypatch.delenv("CASTORE_LEASE_TTL")
    assert not report.problems, report.problems
    return report


def _actions(report: castore.CopyReport) -> list[tuple[int, str]]:
    return [(item.version.version, item.action) for item in report.versions]


def test_copies_in_any_order_take_their_numbers_and_survive_gc(
    stores: tuple[castore.Store, castore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = stores
    for number in (3, 2, 1):
        assert _actions(source.copy(f"m:{number}", dest)) == [(number, "copied")]
        _collect(dest, monkeypatch)
        assert dest.versions("m") == list(range(number, 4))
        for copied in range(number, 4):
            assert dest.load(f"m:{copied}") == _data(copied)
            assert dest.resolve(f"m:{copied}") == source.resolve(f"m:{copied}")
        check = dest.check_history("m")
        assert check.ok, check.problems
        assert check.absent == ([(1, number - 1)] if number > 1 else [])
        assert all(entry.deleted is None for entry in dest.log("m", verify=True))
    assert dest.resolve("m:latest") == source.resolve("m:3")
    assert dest.verify(read_data=True).ok


def test_save_after_a_copy_takes_the_next_number_and_gaps_fill_later(
    stores: tuple[castore.Store, castore.Store],
) -> None:
    source, dest = stores
    source.copy("m:1", dest)
    source.copy("m:3", dest)
    assert dest.check_history("m").not_in_store == ["m:2"]
    saved = dest.save(b"made in dest", "m", serializer="raw")
    assert saved.version == 4 and saved.parent == source.version("m:3").digest
    assert _actions(source.copy("m:2", dest)) == [(2, "copied")]
    assert dest.load("m:2") == _data(2)
    assert dest.check_history("m") == castore.HistoryCheck("m", [], [])
    source.save(b"made in source", "m", serializer="raw")
    with pytest.raises(castore.IntegrityError, match="diverged"):
        source.copy("m:4", dest)


def test_copy_refuses_to_break_the_destinations_chain(
    stores: tuple[castore.Store, castore.Store],
) -> None:
    source, dest = stores
    dest.save(b"a first version of its own", "m", serializer="raw")
    with pytest.raises(castore.IntegrityError, match="does not follow m:1"):
        source.copy("m:2", dest)
    assert dest.versions("m") == [1]
    assert dest.check_history("m").ok


def test_a_deleted_copy_keeps_its_gap_a_removed_ref_is_damage(
    stores: tuple[castore.Store, castore.Store],
) -> None:
    source, dest = stores
    source.copy("m:2", dest)
    dest.save(b"saved on top", "m", serializer="raw")
    dest.delete("m:2")
    assert dest.check_history("m") == castore.HistoryCheck("m", [], [(1, 1)])
    dest.repository.backend.delete(layout.version_ref_path("m", 2))
    check = dest.check_history("m")
    assert check.problems == [
        "m:2: version is missing from the history (m:3 was saved on top of it here)"
    ]
    assert not dest.verify().ok


def test_tags_come_along_unless_the_destination_moved_them(
    stores: tuple[castore.Store, castore.Store],
) -> None:
    source, dest = stores
    source.tag("m:2", "production")
    source.tag("m:3", "candidate")
    report = source.copy("m:2", dest)
    assert [(t.tag, t.action) for t in report.tags] == [("production", "set")]
    assert dest.tags("m") == {"production": 2}
    source.tag("m:3", "production")  # the source moves on: the destination follows
    report = source.copy("m:3", dest)
    assert {(t.tag, t.action, t.dest_version) for t in report.tags} == {
        ("candidate", "set", None),
        ("production", "moved", 2),
    }
    assert dest.tags("m") == {"production": 3, "candidate": 3}
    source.copy("m:1", dest)
    dest.tag("m:1", "production")  # the destination's own decision is kept
    report = source.copy("m:3", dest)
    assert {(t.tag, t.action, t.dest_version) for t in report.tags} == {
        ("candidate", "unchanged", 3),
        ("production", "kept", 1),
    }
    assert dest.tags("m") == {"production": 1, "candidate": 3}


def test_no_tags_leaves_tags_behind(stores: tuple[castore.Store, castore.Store]) -> None:
    source, dest = stores
    source.tag("m:3", "production")
    assert source.copy("m", dest, tags=False).tags == []
    assert dest.versions("m") == [1, 2, 3] and dest.tags("m") == {}
    assert [(t.tag, t.action) for t in source.copy("m", dest).tags] == [("production", "set")]


def test_a_version_deleted_in_the_destination_stays_deleted_unless_copied_by_itself(
    stores: tuple[castore.Store, castore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = stores
    source.copy("m", dest)
    dest.delete("m:2")
    _collect(dest, monkeypatch)
    report = source.copy("m", dest)
    assert _actions(report) == [(1, "present"), (2, "skipped"), (3, "present")]
    assert report.versions[1].deleted is not None
    with pytest.raises(castore.NotFoundError, match="was deleted"):
        dest.load("m:2")
    assert _actions(source.copy("m:2", dest)) == [(2, "restored")]
    _collect(dest, monkeypatch)
    assert dest.load("m:2") == _data(2)
    assert dest.check_history("m") == castore.HistoryCheck("m", [], [])


def test_placeholders_of_the_old_copy_are_replaced_by_a_copy(
    stores: tuple[castore.Store, castore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier castore wrote tombstones for the numbers below a copied version."""
    source, dest = stores
    for number in (1, 2):
        digest = parse_digest(source.version(f"m:{number}").digest)
        dest.repository.refs.mark_deleted("m", number, digest)
    source.copy("m:3", dest)
    assert _actions(source.copy("m:2", dest)) == [(2, "restored")]
    _collect(dest, monkeypatch)
    assert dest.load("m:2") == _data(2)
    assert [e.version for e in dest.log("m", verify=True) if e.deleted] == [1]


@pytest.mark.parametrize("ttl", ["600", "-1"], ids=["manifest-kept", "manifest-collected"])
def test_a_deleted_collected_version_reads_as_deleted(
    store: castore.Store, monkeypatch: pytest.MonkeyPatch, ttl: str
) -> None:
    for number in (1, 2):
        store.save(_data(number), "m", serializer="raw")
    doomed = store.version("m:1")
    store.delete("m:1")
    assert store.load(doomed.reference) == _data(1)  # a digest resolves until gc frees it
    monkeypatch.setenv("CASTORE_LEASE_TTL", ttl)  # 600: gc keeps young manifests
    report = store.gc()
    monkeypatch.delenv("CASTORE_LEASE_TTL")
    assert report.manifests_deleted == (1 if ttl == "-1" else 0)
    assert store.verify().ok
    for ref in ("m:1", doomed.reference, doomed.digest):
        with pytest.raises(castore.NotFoundError, match=r"^version 1 of m was deleted at 20"):
            store.load(ref)
        with pytest.raises(castore.NotFoundError, match=r"^version 1 of m was deleted at 20"):
            store.open_version(ref)
    unknown = "sha256:" + "ab" * 32
    with pytest.raises(castore.NotFoundError, match="no version with digest"):
        store.load(unknown)


def test_progress_counts_chunks_sent_against_the_versions_total(
    stores: tuple[castore.Store, castore.Store],
) -> None:
    source, dest = stores
    one: list[castore.Progress] = []
    report = source.copy("m:2", dest, progress=one.append)
    assert one[-1].files == one[-1].total_files == 1
    assert one[-1].bytes == one[-1].total_bytes == report.bytes_sent > 0
    assert one[-1].fraction == 1.0 and one[-1].path == "m:2"
    assert [p.bytes for p in one] == sorted(p.bytes for p in one)  # never goes back

    whole: list[castore.Progress] = []
    report = source.copy("m", dest, progress=whole.append)
    assert whole[-1].total_files == 3 and whole[-1].total_bytes is None
    assert whole[-1].bytes == report.bytes_sent and whole[-1].fraction == 1.0
    done = {p.path: p for p in whole if p.files == int(p.path[2:])}  # each version's end
    assert sorted(done) == ["m:1", "m:2", "m:3"]
    # m:2 was there already: nothing of it was sent, and it still counts as handled.
    assert done["m:2"].bytes == done["m:1"].bytes > 0
