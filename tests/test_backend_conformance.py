"""The backend conformance suite over every backend: local, memory, S3 on moto and radosgw.

Mirrors `new_location` in conftest.py; S3 backends live under a fresh prefix of the shared
test bucket. Failures of the storage itself (unreachable, refused) must never look like an
empty listing or a missing object.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from castore.backend import Backend, open_backend
from castore.backend.local import LocalBackend
from castore.errors import BackendError
from castore.testing.backend_conformance import (
    BackendConformance,
    BackendSpec,
    LocalBackendConformance,
)
from tests.conftest import BUCKET, _prepare_bucket, _s3_options
from tests.servers.radosgw import S3Server

BACKEND_KINDS = [
    "local",
    "memory",
    "s3-moto",
    pytest.param("s3-radosgw", marks=pytest.mark.slow),
]


@pytest.fixture(params=BACKEND_KINDS)
def backend_location(request: pytest.FixtureRequest, tmp_path: Path) -> BackendSpec:
    """Where a fresh, empty backend of the parametrized kind lives."""
    name = uuid.uuid4().hex
    kind = request.param
    if kind == "local":
        return BackendSpec(str(tmp_path / f"backend-{name}"))
    if kind == "memory":
        return BackendSpec(f"memory://castore-{name}")
    server = request.getfixturevalue("moto_s3" if kind == "s3-moto" else "radosgw_s3")
    return BackendSpec(f"s3://{BUCKET}/{name}", _s3_options(server))


class TestBackendConformance(BackendConformance):
    """The whole suite on each backend kind."""

    @pytest.fixture
    def backend(self, backend_location: BackendSpec) -> Backend:
        """A fresh, empty backend with its container made."""
        backend = open_backend(backend_location.url, backend_location.storage_options)
        backend.ensure_container()
        return backend

    @pytest.fixture
    def backend_spec(self, backend_location: BackendSpec) -> BackendSpec | None:
        """Every kind but memory:// (private to its process) is reachable from others."""
        return None if backend_location.url.startswith("memory://") else backend_location


class TestLocalBackend(LocalBackendConformance):
    """The local-only checks: permissions, links, temporary files."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        """A fresh LocalBackend with its root made."""
        backend = LocalBackend(tmp_path / "backend")
        backend.ensure_container()
        return backend


def _closed_port() -> int:
    """A loopback port nobody listens on (free right now, and nothing is started on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_s3_is_an_error_not_absence() -> None:
    """With the server unreachable, list, exists and read fail with BackendError: an empty
    listing or a missing object would let gc and writers act on a store they cannot see."""
    options = {
        "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
        "key": "testing",
        "secret": "testing",
        "retries": 1,
        "config_kwargs": {"retries": {"max_attempts": 1}},
        "skip_instance_cache": True,
    }
    backend = open_backend(f"s3://{BUCKET}/unreachable", options)
    with pytest.raises(BackendError, match="cannot list refs"):
        backend.list("refs")
    with pytest.raises(BackendError):
        backend.exists("refs/model")
    with pytest.raises(BackendError):
        backend.read("refs/model")
    with pytest.raises(BackendError):
        backend.size("refs/model")


def test_missing_bucket_fails_the_listing(moto_s3: S3Server) -> None:
    """A bucket that does not exist is a failure to list, not an empty folder."""
    backend = open_backend(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/x", _s3_options(moto_s3))
    with pytest.raises(BackendError, match="cannot list refs"):
        backend.list("refs")
    assert not backend.exists("refs/model")


def test_refused_credentials_fail_the_listing(radosgw_s3: S3Server) -> None:
    """radosgw checks signatures: with a wrong secret, list must fail, not answer []."""
    _prepare_bucket(radosgw_s3, BUCKET)
    good = open_backend(f"s3://{BUCKET}/{uuid.uuid4().hex}", _s3_options(radosgw_s3))
    good.write("refs/model", b"x")
    options = {**_s3_options(radosgw_s3), "secret": "wrong-secret", "skip_instance_cache": True}
    bad = open_backend(good.url, options)
    with pytest.raises(BackendError, match="cannot list refs"):
        bad.list("refs")
    with pytest.raises(BackendError):
        bad.exists("refs/model")
    with pytest.raises(BackendError):
        bad.read("refs/model")
