"""Saving and loading objects by name, version, tag and digest, on every backend."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import pytest

import castore
from castore.format import layout
from castore.versions import catalog
from tests.conftest import Location
from tests.helpers import location_args, pack_paths, spawn


def _weights(seed: int, count: int = 4, size: int = 50_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal(size).astype(np.float32) for i in range(count)}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_every_reference_form_loads_the_right_version(store: castore.Store) -> None:
    first, second = _weights(1), _weights(2)
    v1 = store.save(first, "churn/classifier", metadata={"auc": 0.91}, tags=["candidate"])
    v2 = store.save(second, "churn/classifier", metadata={"auc": 0.93})
    assert (v1.name, v1.version, v2.version) == ("churn/classifier", 1, 2)
    forms = {
        "churn/classifier": second,
        "churn/classifier:latest": second,
        "churn/classifier:1": first,
        "churn/classifier:2": second,
        "churn/classifier:candidate": first,
        f"churn/classifier@{v1.digest}": first,
        v2.digest: second,
        store.qualified("churn/classifier:1"): first,
    }
    for ref, expected in forms.items():
        _assert_same(store.load(ref), expected)
    assert store.resolve("churn/classifier:candidate") == f"churn/classifier@{v1.digest}"
    assert store.resolve(v2.digest) == v2.reference


def test_qualified_reference_saves_and_loads_in_one_call(location: Location) -> None:
    with location.init() as store:
        qualified = store.qualified(store.save(_weights(3), "m").reference)
    _assert_same(castore.load(qualified, **location.options), _weights(3))
    url = qualified.partition("#")[0]
    second = castore.save(_weights(4), f"{url}#m", tags=["candidate"], **location.options)
    assert (second.name, second.version) == ("m", 2)
    _assert_same(castore.load(f"{url}#m:candidate", **location.options), _weights(4))
    for target in ("m", f"{url}#m:2", f"{url}#m:candidate", f"{url}#{second.digest}"):
        with pytest.raises(castore.InvalidInputError, match="save takes a store and a name"):
            castore.save(_weights(5), target, **location.options)
    with pytest.raises(castore.NotAStoreError):
        castore.save(_weights(5), f"{url}-typo#m", **location.options)


def test_version_digest_and_content_digest_differ_and_are_reported(store: castore.Store) -> None:
    version = store.save(b"raw model bytes", "onnx/model", serializer="raw")
    info = store.info("onnx/model:1")
    assert info["digest"] == version.digest != info["content_digest"]
    manifest_bytes = store.repository.backend.read(
        layout.manifest_path(bytes.fromhex(version.digest[7:]))
    )
    assert layout.digest_of(manifest_bytes).hex() == version.digest[7:]
    assert info["size"] == len(b"raw model bytes") and info["serializer"]["name"] == "raw"


def test_saving_identical_content_and_metadata_returns_the_latest(store: castore.Store) -> None:
    first = store.save(_weights(1), "m", metadata={"auc": 0.9})
    assert store.save(_weights(1), "m", metadata={"auc": 0.9}) == first
    assert store.last_write.new_chunks == 0
    assert store.versions("m") == [1]
    assert store.save(_weights(1), "m", metadata={"auc": 0.9}, force=True).version == 2
    assert store.save(_weights(1), "m", metadata={"auc": 0.95}).version == 3


@pytest.mark.filterwarnings("ignore::castore.UnloadableVersionWarning")  # saved on purpose
def test_every_serializer_round_trips(store: castore.Store, tmp_path: Path) -> None:
    payload = tmp_path / "model.onnx"
    payload.write_bytes(b"\x00onnx-bytes" * 1000)
    assert store.load(store.save({"a": [1, 2]}, "p", serializer="pickle").reference) == {
        "a": [1, 2]
    }
    lambda_version = store.save(lambda x: x * x, "f", serializer="cloudpickle")
    square = store.load(lambda_version.reference, allow_unsafe=True)  # a lambda is code
    assert square(7) == 49
    assert (
        store.load(store.save(payload, "raw/path", serializer="raw").reference)
        == payload.read_bytes()
    )
    assert store.load(store.save(b"abc", "raw/bytes", serializer="raw").reference) == b"abc"
    with pytest.raises(castore.InvalidInputError, match="unknown serializer"):
        store.save(1, "x", serializer="yaml")


@pytest.mark.filterwarnings("ignore::castore.UnloadableVersionWarning")  # saved on purpose
def test_cloudpickle_refuses_another_python_minor(store: castore.Store) -> None:
    version = store.save(lambda: 1, "f", serializer="cloudpickle")
    manifest, digest = catalog.resolve(store.repository, version.reference)
    foreign = dataclasses.replace(
        manifest, number=2, parent=digest, environment={**manifest.environment, "python": "3.8.10"}
    )
    data = foreign.encode()
    store.repository.backend.write(layout.manifest_path(layout.digest_of(data)), data)
    store.repository.refs.create_version("f", 2, layout.digest_of(data))
    with pytest.raises(castore.IncompatibleEnvironmentError, match=r"Python 3\.8"):
        store.load("f:2")
    assert store.load("f:1", allow_unsafe=True)() == 1


def test_mmap_load_maps_arrays_from_a_verified_local_copy(store: castore.Store) -> None:
    weights = _weights(5)
    store.save(weights, "big")
    loaded = store.load("big", mmap_mode="r")
    assert all(isinstance(a, np.memmap) for a in loaded.values())
    _assert_same(loaded, weights)
    # A damaged cached copy is detected and replaced, never mapped.
    (cached,) = [
        p for p in store.repository.cache.root.rglob("*") if p.is_file() and "streams" in p.parts
    ]
    data = bytearray(cached.read_bytes())
    data[-10] ^= 0xFF
    cached.write_bytes(bytes(data))
    _assert_same(store.load("big", mmap_mode="r"), weights)


@pytest.mark.parametrize("new_location", ["s3-moto", "s3-radosgw"], indirect=True)
def test_second_load_from_s3_fetches_no_chunk_data(location: Location) -> None:
    with location.init() as store:
        store.save(_weights(6), "cached")
        _assert_same(store.load("cached"), _weights(6))
        for pack in pack_paths(store):  # proves the second load reads no pack
            store.repository.backend.delete(pack)
        _assert_same(store.load("cached"), _weights(6))
        assert store.repository.cache.hits > 0


@pytest.mark.slow
def test_concurrent_savers_in_processes_get_distinct_versions(location: Location) -> None:
    if location.url.startswith("memory://"):
        pytest.skip("a memory store is private to one process")
    location.init().close()
    start = time.time() + 2.0
    workers = [
        spawn("save_worker", *location_args(location), "shared/name", str(n), str(start))
        for n in range(6)
    ]
    outputs = [w.communicate(timeout=120)[0].split() for w in workers]
    assert all(w.returncode == 0 for w in workers)
    numbers = sorted(int(out[0]) for out in outputs)
    assert numbers == list(range(1, 7))
    with location.open() as store:
        assert sorted(store.load(f"shared/name:{n}")["worker"] for n in numbers) == list(range(6))
        assert store.verify_history("shared/name") == []


def test_tags_move_and_keep_their_history(store: castore.Store) -> None:
    store.save(_weights(1), "m")
    store.save(_weights(2), "m")
    store.tag("m:1", "production")
    assert store.tags("m") == {"production": 1}
    store.tag("m:2", "production")
    assert store.load("m:production")["layer0"][0] == _weights(2)["layer0"][0]
    store.untag("m", "production")
    assert store.tags("m") == {}
    with pytest.raises(castore.NotFoundError, match="no tag 'production'"):
        store.load("m:production")
    history = store.tag_history("m", "production")
    assert [e.version for e in history] == [1, 2, None]
    for reserved in ["latest", "42"]:
        with pytest.raises(castore.InvalidInputError, match="reserved"):
            store.tag("m:1", reserved)


def test_names_versions_log_diff_and_delete(store: castore.Store) -> None:
    base = _weights(1, count=8)
    store.save(base, "a/model", metadata={"auc": 0.9, "data": "v1"})
    changed = {**base, "layer3": _weights(9, count=1)["layer0"]}
    store.save(changed, "a/model", metadata={"auc": 0.92, "seed": 3})
    store.save({"x": 1}, "b", tags=["production"])
    assert store.names() == ["a/model", "b"]
    assert store.versions("a/model") == [1, 2]
    difference = store.diff("a/model:1", "a/model:2")
    assert difference.metadata_changed == {"auc": (0.9, 0.92)}
    assert difference.metadata_added == {"seed": 3}
    assert difference.metadata_removed == {"data": "v1"}
    assert 0.6 * difference.b.size < difference.shared_bytes < difference.b.size
    assert [e.version for e in store.log("a/model")] == [2, 1]

    store.delete("b:production")
    assert store.names() == ["a/model"]
    with pytest.raises(castore.NotFoundError, match="was deleted"):
        store.load("b:1")
    assert store.tags("b") == {}
    store.delete("a/model:1")
    assert store.versions("a/model") == [2]
    assert store.log("a/model")[1].deleted
    assert store.verify_history("a/model") == []
    assert store.save(base, "a/model").version == 3


def test_log_verify_catches_a_rewritten_or_missing_version(store: castore.Store) -> None:
    for seed in range(3):
        store.save({"seed": seed}, "chain")
    assert store.log("chain", verify=True)
    manifest, digest = catalog.resolve(store.repository, "chain:2")
    forged = dataclasses.replace(manifest, metadata={"approved": True})
    data = forged.encode()
    store.repository.backend.write(layout.manifest_path(layout.digest_of(data)), data)
    ref_path = "refs/chain/@versions/2"
    ref = store.repository.backend.read(ref_path)
    store.repository.backend.write(ref_path, ref.replace(digest, layout.digest_of(data)))
    problems = store.verify_history("chain")
    assert len(problems) == 1 and "chain:3" in problems[0] and "rewritten" in problems[0]
    with pytest.raises(castore.IntegrityError, match="history of chain is broken"):
        store.log("chain", verify=True)
    store.repository.backend.delete("refs/chain/@versions/1")
    assert any("chain:1: version is missing" in p for p in store.verify_history("chain"))


def test_a_manifest_swapped_under_a_ref_is_caught(store: castore.Store) -> None:
    store.save({"a": 1}, "one")
    other = store.save({"b": 2}, "two")
    path = "refs/one/@versions/1"
    swapped = store.repository.backend.read(path).replace(
        catalog.resolve(store.repository, "one:1")[1], bytes.fromhex(other.digest[7:])
    )
    store.repository.backend.write(path, swapped)
    with pytest.raises(castore.IntegrityError, match="swapped"):
        store.load("one:1")


def test_a_tampered_manifest_fails_its_digest(store: castore.Store) -> None:
    version = store.save({"a": 1}, "m", metadata={"note": "original"})
    path = layout.manifest_path(bytes.fromhex(version.digest[7:]))
    store.repository.backend.write(
        path, store.repository.backend.read(path).replace(b"original", b"tampered")
    )
    with pytest.raises(castore.IntegrityError, match="does not match its digest"):
        store.load(version.digest)


def test_unknown_names_and_versions_say_what_exists(store: castore.Store) -> None:
    store.save({"a": 1}, "churn/classifier", tags=["production"])
    with pytest.raises(castore.NotFoundError, match="did you mean churn/classifier"):
        store.load("churn/clasifier")
    with pytest.raises(castore.NotFoundError, match=r"has versions 1; tags: production"):
        store.load("churn/classifier:7")
    store.save({"a": 2}, "churn/classifier")
    store.save({"a": 3}, "churn/classifier")
    store.delete("churn/classifier:2")
    with pytest.raises(castore.NotFoundError, match=r"has versions 1, 3; tags: production"):
        store.load("churn/classifier:7")
    with pytest.raises(castore.NotFoundError, match="no version with digest"):
        store.load("sha256:" + "1" * 64)


@pytest.mark.parametrize(
    "metadata",
    [
        {"when": object()},
        {1: "int key"},
        {"big": "x" * 70_000},
        ["not", "a", "dict"],
        {"deep": functools.reduce(lambda inner, _: [inner], range(40), 1)},
    ],
)
def test_bad_metadata_is_refused_before_anything_is_written(store: castore.Store, metadata) -> None:
    with pytest.raises(castore.InvalidInputError):
        store.save({"a": 1}, "m", metadata=metadata)
    assert store.names() == []


def test_short_digests_resolve_when_unique(store: castore.Store) -> None:
    """The short digests ls prints were refused as references."""
    v1 = store.save(b"first", "m", serializer="raw")
    v2 = store.save(b"second", "m", serializer="raw")
    short = v1.digest[: len("sha256:") + 8]
    assert store.resolve(short) == v1.reference
    assert store.resolve(f"m@{short}") == v1.reference
    assert store.resolve(f"m@{v2.digest[:30]}") == v2.reference
    with pytest.raises(castore.InvalidInputError, match="malformed digest"):
        store.resolve(v1.digest[:14])  # 7 hex digits: too short to be a prefix
    store.save(b"other", "n", serializer="raw")
    with pytest.raises(castore.NotFoundError, match="among the versions of n"):
        store.resolve(f"n@{short}")
    hex_digits = v1.digest.removeprefix("sha256:")
    twin = hex_digits[:12] + ("0" if hex_digits[12] != "0" else "1") + hex_digits[13:]
    store.repository.backend.write(f"manifests/{twin[:2]}/{twin}", b"planted")
    with pytest.raises(castore.InvalidInputError, match="ambiguous") as refused:
        store.resolve(short)
    assert v1.digest in str(refused.value) and f"sha256:{twin}" in str(refused.value)
    assert store.resolve(v1.digest[:20]) == v1.reference  # more digits tell them apart


def test_an_empty_selector_is_invalid(store: castore.Store) -> None:
    """'name:' resolved to the latest version."""
    store.save(b"bytes", "m", serializer="raw")
    with pytest.raises(castore.InvalidInputError, match="nothing follows ':'"):
        store.resolve("m:")


def test_numpy_scalars_are_metadata(store: castore.Store) -> None:
    """np.float32 is what metrics come as; metadata refused it."""
    metrics = {"auc": np.float32(0.5), "epochs": np.int64(3), "ok": np.bool_(True)}
    version = store.save(
        b"weights", "m", serializer="raw", metadata={**metrics, "nested": [np.float64(2)]}
    )
    assert version.metadata == {"auc": 0.5, "epochs": 3, "ok": True, "nested": [2.0]}
    assert type(version.metadata["epochs"]) is int and type(version.metadata["ok"]) is bool
    for refused in (np.zeros(2), np.datetime64("2024-01-01")):
        with pytest.raises(castore.InvalidInputError, match="metadata must hold only"):
            store.save(b"weights", "m", serializer="raw", metadata={"x": refused})
