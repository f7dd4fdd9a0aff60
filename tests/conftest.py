"""Store locations for the conformance tests: memory, local, and real S3 servers on loopback.

S3 runs against moto's server mode always, against Ceph's radosgw where its Debian packages
are installed (CASTORE_REQUIRE_RADOSGW=1 turns its absence into a failure, as CI sets), and
against any external endpoint given by CASTORE_TEST_S3_ENDPOINT, CASTORE_TEST_S3_KEY,
CASTORE_TEST_S3_SECRET and CASTORE_TEST_S3_BUCKET.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import s3fs

import castore
from tests.servers.moto_server import running_moto
from tests.servers.radosgw import S3Server, radosgw_available, running_radosgw

BUCKET = "castore-tests"


@pytest.fixture(autouse=True)
def private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own cache directory, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CASTORE_CACHE_DIR", str(cache))
    return cache


@dataclass(frozen=True)
class Location:
    """Where a test store lives: a URL plus the storage options that reach it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def init(self, **kwargs: Any) -> castore.Store:
        """Create a store here."""
        return castore.init(self.url, **kwargs, **self.options)

    def open(self) -> castore.Store:
        """Open the store here."""
        return castore.open(self.url, **self.options)


def _s3_options(server: S3Server) -> dict[str, Any]:
    return {
        "endpoint_url": server.endpoint_url,
        "key": server.key,
        "secret": server.secret,
    }


def _prepare_bucket(server: S3Server, bucket: str) -> None:
    fs = s3fs.S3FileSystem(**_s3_options(server), skip_instance_cache=True)
    if not fs.exists(bucket):
        fs.mkdir(bucket)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process."""
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        _prepare_bucket(server, BUCKET)
        yield server


@pytest.fixture(scope="session")
def radosgw_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A single-node Ceph cluster with radosgw, if its packages are installed."""
    if not radosgw_available():
        if os.environ.get("CASTORE_REQUIRE_RADOSGW") == "1":
            pytest.fail("radosgw is required (CASTORE_REQUIRE_RADOSGW=1) but not installed")
        pytest.skip("Ceph radosgw is not installed (run tests/servers/install-ceph.sh)")
    with running_radosgw(tmp_path_factory.mktemp("ceph")) as server:
        _prepare_bucket(server, BUCKET)
        yield server


@pytest.fixture(scope="session")
def external_s3() -> S3Server:
    """An S3 endpoint named by environment variables."""
    endpoint = os.environ.get("CASTORE_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("CASTORE_TEST_S3_ENDPOINT is not set")
    return S3Server(
        endpoint_url=endpoint,
        key=os.environ.get("CASTORE_TEST_S3_KEY", ""),
        secret=os.environ.get("CASTORE_TEST_S3_SECRET", ""),
    )


BACKENDS = ["memory", "local", "s3-moto", "s3-radosgw"]
if os.environ.get("CASTORE_TEST_S3_ENDPOINT"):
    BACKENDS.append("s3-external")


def _location_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Location]:
    kind = request.param

    def make() -> Location:
        name = uuid.uuid4().hex
        if kind == "memory":
            return Location(f"memory://castore-{name}")
        if kind == "local":
            return Location(str(tmp_path / f"store-{name}"))
        if kind == "s3-external":
            server = request.getfixturevalue("external_s3")
            bucket = os.environ.get("CASTORE_TEST_S3_BUCKET", BUCKET)
            _prepare_bucket(server, bucket)
            return Location(f"s3://{bucket}/{name}", _s3_options(server))
        server = request.getfixturevalue("moto_s3" if kind == "s3-moto" else "radosgw_s3")
        return Location(f"s3://{BUCKET}/{name}", _s3_options(server))

    return make


BACKEND_PARAMS = [
    pytest.param(kind, marks=pytest.mark.slow) if kind == "s3-radosgw" else kind
    for kind in BACKENDS
]
"""radosgw runs in the full suite; the quick loop covers S3 through moto alone."""


@pytest.fixture(params=BACKEND_PARAMS)
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Location]:
    """Makes fresh, empty store locations on the parametrized backend."""
    return _location_factory(request, tmp_path)


@pytest.fixture
def location(new_location: Callable[[], Location]) -> Location:
    """A fresh, empty store location on the parametrized backend."""
    return new_location()


@pytest.fixture
def store(location: Location) -> Iterator[castore.Store]:
    """A fresh store with the default configuration on the parametrized backend."""
    with location.init() as opened:
        yield opened


SMALL_PACKS = castore.StoreConfig(
    chunker=castore.ChunkerParams(min_size=1024, avg_size=4096, max_size=16384),
    pack_size=64 * 1024,
)
"""Small chunks and packs, so that multi-pack streams stay small and fast on S3."""


@pytest.fixture
def small_store(location: Location) -> Iterator[castore.Store]:
    """A fresh store with small chunks and packs on the parametrized backend."""
    with location.init(config=SMALL_PACKS) as opened:
        yield opened
