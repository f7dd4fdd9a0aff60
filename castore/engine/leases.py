"""Writer leases and the gc marker: how writers and gc exclude each other without a server.

A writer holds a lease object under ``locks/writers/`` while it writes, refreshed in the
background. gc creates ``locks/gc`` exclusively and runs only if no lease is fresh; a
writer that finds a fresh gc marker after creating its lease steps back. Freshness compares
the storage's own timestamps, never two machines' clocks. A writer whose lease may have
gone stale (it was suspended longer than the TTL) refuses to publish anything, because a
gc may have removed data it deduplicated against. docs/FORMAT.md, "Garbage collection".
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from castore.backend import Backend
from castore.errors import (
    CastoreError,
    LeaseExpiredError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreBusyError,
)
from castore.format import layout, wire

DEFAULT_TTL = 600.0
"""Seconds after its last refresh that a lease or marker counts as abandoned."""
SAFETY_MARGIN = 0.2
"""A writer stops trusting its lease when this share of the TTL is all that is left."""
WRITER_WAIT = 30.0
"""How long a writer waits for a running gc before giving up."""


def lease_ttl() -> float:
    """The TTL in force: $CASTORE_LEASE_TTL seconds, else DEFAULT_TTL."""
    return float(os.environ.get("CASTORE_LEASE_TTL", DEFAULT_TTL))


def _holder() -> bytes:
    return wire.encode(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )


def _age_between(backend: Backend, path: str, reference: float) -> float | None:
    """How much older `path` is than the `reference` storage time (None if it is gone)."""
    try:
        return reference - backend.modified(path)
    except ObjectNotFoundError:
        return None


class _Refresher:
    """Rewrites one object every ttl/5 seconds until stopped; remembers the last success."""

    def __init__(self, backend: Backend, path: str, ttl: float) -> None:
        self._backend = backend
        self._path = path
        self._ttl = ttl
        self._stop = threading.Event()
        self.last_sent = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="castore-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 5):
            sent = time.monotonic()
            with contextlib.suppress(CastoreError):  # a failed refresh only ages the lease
                self._backend.write(self._path, _holder())
                self.last_sent = sent

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class WriterLease:
    """A store-wide writer lease shared by every write of one Store object."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._holders = 0
        self._path: str | None = None
        self._refresher: _Refresher | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lease for the duration of one write operation."""
        with self._lock:
            if self._holders == 0:
                self._acquire()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._release()

    def _acquire(self) -> None:
        ttl = lease_ttl()
        deadline = time.monotonic() + WRITER_WAIT
        while True:
            path = layout.writer_lease_path(uuid.uuid4().hex)
            self._backend.write(path, _holder())
            age = _age_between(self._backend, layout.GC_MARKER, self._backend.modified(path))
            if age is None or age >= ttl:
                self._path = path
                self._refresher = _Refresher(self._backend, path, ttl)
                return
            self._backend.delete(path)
            if time.monotonic() > deadline:
                raise StoreBusyError(
                    f"a gc is running on {self._backend.url}; retry when it has finished"
                )
            time.sleep(random.uniform(0.1, 0.5))  # jitter: writers must not march in step

    def _release(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self._path is not None:
            self._backend.delete(self._path)
            self._path = None

    def check(self) -> None:
        """Raise LeaseExpiredError if a gc could have judged this writer dead.

        Called right before anything that makes new data reachable is written. Writes
        made without holding the lease (internal tools, tests) are not checked.
        """
        refresher = self._refresher
        if refresher is None:
            return
        elapsed = time.monotonic() - refresher.last_sent
        if elapsed >= lease_ttl() * (1 - SAFETY_MARGIN):
            raise LeaseExpiredError(
                f"this writer could not refresh its lease for {elapsed:.0f}s (suspended or "
                "cut off); a gc may have removed data it relies on, so nothing was published. "
                "Retry the operation."
            )


class GcMarker:
    """gc's exclusive marker: taken only when no writer lease is fresh."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._refresher: _Refresher | None = None

    def __enter__(self) -> GcMarker:
        ttl = lease_ttl()
        try:
            self._backend.create(layout.GC_MARKER, _holder())
        except ObjectExistsError:
            probe = layout.writer_lease_path(f".probe-{uuid.uuid4().hex}")
            self._backend.write(probe, b"")
            now = self._backend.modified(probe)
            self._backend.delete(probe)
            age = _age_between(self._backend, layout.GC_MARKER, now)
            if age is not None and age < ttl:
                raise StoreBusyError(f"another gc is running on {self._backend.url}") from None
            self._backend.delete(layout.GC_MARKER)  # abandoned by a gc that died
            try:
                self._backend.create(layout.GC_MARKER, _holder())
            except ObjectExistsError:
                raise StoreBusyError(f"another gc started on {self._backend.url}") from None
        marker_time = self._backend.modified(layout.GC_MARKER)
        live = []
        for path in self._backend.list(layout.WRITER_LEASES):
            age = _age_between(self._backend, path, marker_time)
            if age is not None and age < ttl:
                live.append(path)
        if live:
            self._backend.delete(layout.GC_MARKER)
            raise StoreBusyError(
                f"{len(live)} writer(s) hold fresh leases on {self._backend.url}; "
                "gc runs only while nobody writes: retry later"
            )
        self._refresher = _Refresher(self._backend, layout.GC_MARKER, ttl)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        self._backend.delete(layout.GC_MARKER)
