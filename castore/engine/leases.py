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
from dataclasses import dataclass
from datetime import UTC, datetime

from castore.backend import Backend, read_bounded
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


MAX_HOLDER_OBJECT = 1024
"""A lease or marker object is a small map; anything larger is not castore's."""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a writer lease or the gc marker, as its object says, and how fresh it is."""

    path: str
    host: str
    pid: int | None
    age: float
    """Seconds since its last refresh, by the storage's clock."""
    ttl: float

    @property
    def fresh(self) -> bool:
        """Whether it still excludes gc (or, for a marker, writers)."""
        return self.age < self.ttl

    @property
    def on_this_host(self) -> bool:
        """Whether the holder names this machine."""
        return self.host == socket.gethostname()

    def process_gone(self) -> bool:
        """True only when the holder ran on this host and no process has its pid now."""
        if not self.on_this_host or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        """One line for messages: holder, age and when it expires."""
        who = f"{self.host} pid {self.pid}" if self.pid is not None else self.host
        state = (
            f"expires in {self.ttl - self.age:.0f}s"
            if self.fresh
            else f"stale for {self.age - self.ttl:.0f}s"
        )
        return f"{self.path} held by {who}, refreshed {self.age:.0f}s ago, {state}"


def storage_now(backend: Backend) -> float:
    """The storage's clock now: the modification time of a probe object written for it."""
    probe = layout.writer_lease_path(f".probe-{uuid.uuid4().hex}")
    backend.write(probe, b"")
    try:
        return backend.modified(probe)
    finally:
        backend.delete(probe)


def _holder_of(backend: Backend, path: str, now: float, ttl: float) -> LeaseHolder | None:
    """The holder recorded in `path` (None once it is gone); an unreadable holder is shown
    as such rather than hidden, since it still counts as a lease."""
    try:
        age = now - backend.modified(path)
    except ObjectNotFoundError:
        return None
    try:
        raw = wire.decode_map(read_bounded(backend, path, MAX_HOLDER_OBJECT), path)
    except ObjectNotFoundError:
        return None
    except CastoreError:
        return LeaseHolder(path, "(unreadable holder)", None, age, ttl)
    host, pid = raw.get("host"), raw.get("pid")
    return LeaseHolder(
        path,
        host if isinstance(host, str) else "(unknown host)",
        pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        age,
        ttl,
    )


def holders(backend: Backend) -> list[LeaseHolder]:
    """Every writer lease and the gc marker, with holder, age and freshness."""
    ttl, now = lease_ttl(), storage_now(backend)
    paths = [*backend.list(layout.WRITER_LEASES)]
    if backend.exists(layout.GC_MARKER):
        paths.append(layout.GC_MARKER)
    return [h for p in paths if (h := _holder_of(backend, p, now, ttl)) is not None]


def remove_leases(backend: Backend, *, remove_all: bool = False) -> list[LeaseHolder]:
    """Delete stale leases and those of processes gone from this host (restic's unlock);
    with `remove_all`, every lease and the gc marker. Return what was removed."""
    removed = []
    for holder in holders(backend):
        if remove_all or not holder.fresh or holder.process_gone():
            backend.delete(holder.path)
            removed.append(holder)
    return removed


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
            now = storage_now(self._backend)
            holder = _holder_of(self._backend, layout.GC_MARKER, now, ttl)
            if holder is not None and holder.fresh:
                raise StoreBusyError(
                    f"another gc is running on {self._backend.url}: {holder.describe()}"
                ) from None
            self._backend.delete(layout.GC_MARKER)  # abandoned by a gc that died
            try:
                self._backend.create(layout.GC_MARKER, _holder())
            except ObjectExistsError:
                raise StoreBusyError(f"another gc started on {self._backend.url}") from None
        try:
            self._check_no_fresh_writer(ttl)
        except BaseException:
            self._backend.delete(layout.GC_MARKER)
            raise
        self._refresher = _Refresher(self._backend, layout.GC_MARKER, ttl)
        return self

    def _check_no_fresh_writer(self, ttl: float) -> None:
        marker_time = self._backend.modified(layout.GC_MARKER)
        live = [
            holder
            for path in self._backend.list(layout.WRITER_LEASES)
            if (holder := _holder_of(self._backend, path, marker_time, ttl)) is not None
            and holder.fresh
        ]
        if live:
            shown = "; ".join(h.describe() for h in live[:5])
            more = f" and {len(live) - 5} more" if len(live) > 5 else ""
            raise StoreBusyError(
                f"{len(live)} writer(s) hold fresh leases on {self._backend.url}: {shown}{more}."
                " gc runs only while nobody writes: retry later, or run 'castore unlock' to"
                " remove the leases of writers that died on this host"
            )

    def __exit__(self, *exc_info: object) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        self._backend.delete(layout.GC_MARKER)
