"""A conformance suite for `castore.backend.Backend` implementations.

In the pattern of zarr's ``StoreTests`` and dulwich's ``ObjectStoreTests``: subclass
`BackendConformance` in a test module (name the subclass ``Test...``) and give it a
``backend`` fixture that returns a fresh, empty backend whose container exists. Override the
``backend_spec`` fixture to say how another process opens the same backend, so that the
multi-process tests run; by default they are skipped. `LocalBackendConformance` adds the
checks that only make sense for `castore.backend.local.LocalBackend`.

Every check uses the backend's own answers (its clock included), never timers or sleeps::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self) -> Backend:
            backend = open_backend("my://place")
            backend.ensure_container()
            return backend
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from castore.backend import Backend
from castore.backend.local import LocalBackend
from castore.errors import (
    BackendError,
    InvalidInputError,
    ObjectExistsError,
    ObjectNotFoundError,
)

__all__ = ["BackendConformance", "BackendSpec", "LocalBackendConformance"]

INVALID_PATHS = ["../x", "/abs", "a//b", "", "a/", "./a", "a/./b", "a/../b", "a/.."]
"""Object paths that every operation must refuse with InvalidInputError."""


@dataclass(frozen=True)
class BackendSpec:
    """How another process opens the backend under test: ``open_backend(url, options)``.

    `storage_options` must survive a JSON round trip, since it is handed to a subprocess.
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)


def _payload(tag: str, size: int = 0) -> bytes:
    """Distinct, recognisable bytes: `tag` repeated up to `size` (at least once)."""
    unit = tag.encode()
    return (unit * (size // len(unit) + 1))[: max(size, len(unit))]


RACE_SCRIPT = """
import json, sys
from castore.backend import open_backend
from castore.errors import ObjectExistsError
url, options, tag = json.loads(sys.argv[1])
backend = open_backend(url, options)
backend.exists("race/warm-up")  # imports, connections and credentials before the race
print("ready", flush=True)
for line in sys.stdin:
    path = line.strip()
    try:
        backend.create(path, f"{tag} {path}".encode())
    except ObjectExistsError:
        print("lost", flush=True)
    else:
        print("won", flush=True)
"""


class _Racer:
    """One subprocess that creates the objects it is told to, as soon as it is told."""

    def __init__(self, spec: BackendSpec, tag: str, errors: IO[bytes]) -> None:
        self.tag = tag
        self._errors = errors
        argument = json.dumps([spec.url, spec.storage_options, tag])
        self.process = subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )

    def errors(self) -> str:
        """What the racer wrote to stderr so far."""
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")

    def answer(self) -> str:
        """The racer's next line of output, or a failure with its stderr if it died."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            self.process.wait(timeout=60)
            pytest.fail(f"racer {self.tag} exited ({self.process.returncode}):\n{self.errors()}")
        return line

    def tell(self, path: str) -> None:
        """Make the racer create `path`."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """Let the racer finish, and reap it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class BackendConformance:
    """What every backend must do; test methods take the ``backend`` fixture."""

    race_threads: ClassVar[int] = 8
    """How many threads race to create one object."""

    race_processes: ClassVar[int] = 6
    """How many processes race to create one object."""

    race_rounds: ClassVar[int] = 12
    """How many objects each race is run for on remote backends (races are won by chance:
    run several; a server decides them, whatever the timing on this side)."""

    in_process_race_rounds: ClassVar[int] = 120
    """How many objects the thread race is run for on backends that are not remote, where
    a check-then-set loses to thread switches only now and then."""

    atomic_write_size: ClassVar[int] = 256 * 1024
    """Size of the objects rewritten while being read in the atomic-write check."""

    atomic_write_reads: ClassVar[int] = 30
    """How many reads overlap the rewrites in the atomic-write check."""

    @pytest.fixture
    def backend(self) -> Backend:
        """A fresh, empty backend whose container exists: subclasses must provide it."""
        raise NotImplementedError("a BackendConformance subclass must define `backend`")

    @pytest.fixture
    def backend_spec(self) -> BackendSpec | None:
        """How other processes open `backend`; None (the default) skips the process tests.

        Return None as well for backends whose objects are private to one process
        (``memory://``).
        """
        return None

    # -- read, read_range, size -----------------------------------------------------------

    def test_read_returns_what_was_written(self, backend: Backend) -> None:
        """Binary data survives a round trip, bytes and memoryview alike."""
        data = bytes(range(256)) * 17
        backend.write("objects/binary", data)
        backend.write("objects/view", memoryview(data)[5:300])
        backend.write("objects/empty", b"")
        assert backend.read("objects/binary") == data
        assert backend.read("objects/view") == data[5:300]
        assert backend.read("objects/empty") == b""

    def test_read_of_a_missing_object(self, backend: Backend) -> None:
        """Reading nothing raises ObjectNotFoundError, not a generic failure."""
        with pytest.raises(ObjectNotFoundError):
            backend.read("objects/missing")
        with pytest.raises(ObjectNotFoundError):
            backend.read_range("objects/missing", 0, 10)
        with pytest.raises(ObjectNotFoundError):
            backend.size("objects/missing")
        with pytest.raises(ObjectNotFoundError):
            backend.modified("objects/missing")

    def test_a_folder_is_not_an_object(self, backend: Backend) -> None:
        """A prefix that only has objects below it is missing for every object operation."""
        backend.write("folder/inner/object", b"data")
        for folder in ("folder", "folder/inner"):
            assert not backend.exists(folder)
            with pytest.raises(ObjectNotFoundError):
                backend.read(folder)
            with pytest.raises(ObjectNotFoundError):
                backend.read_range(folder, 0, 4)
            with pytest.raises(ObjectNotFoundError):
                backend.size(folder)
            with pytest.raises(ObjectNotFoundError):
                backend.modified(folder)

    def test_below_an_object_is_missing(self, backend: Backend) -> None:
        """A path that continues an object's path names nothing."""
        backend.write("objects/file", b"data")
        assert not backend.exists("objects/file/child")
        with pytest.raises(ObjectNotFoundError):
            backend.read("objects/file/child")
        with pytest.raises(ObjectNotFoundError):
            backend.read_range("objects/file/child", 0, 1)
        with pytest.raises(ObjectNotFoundError):
            backend.size("objects/file/child")
        backend.delete("objects/file/child")
        assert backend.read("objects/file") == b"data"

    def test_read_range(self, backend: Backend) -> None:
        """Ranges inside the object return exactly the bytes asked for."""
        data = bytes(range(256)) * 4
        backend.write("ranges/object", data)
        assert backend.read_range("ranges/object", 0, 10) == data[:10]
        assert backend.read_range("ranges/object", 300, 200) == data[300:500]
        assert backend.read_range("ranges/object", 0, len(data)) == data
        assert backend.read_range("ranges/object", 1023, 1) == data[1023:]

    def test_read_range_past_the_end_returns_fewer_bytes(self, backend: Backend) -> None:
        """A range that runs over the end is cut short there."""
        data = bytes(range(256)) * 4
        backend.write("ranges/object", data)
        assert backend.read_range("ranges/object", 1000, 100) == data[1000:]
        assert backend.read_range("ranges/object", 0, 5000) == data

    def test_read_range_starting_at_or_beyond_the_end_is_empty(self, backend: Backend) -> None:
        """A range that starts at the end or after it holds no bytes: b"", not an error."""
        backend.write("ranges/object", b"0123456789")
        backend.write("ranges/empty", b"")
        assert backend.read_range("ranges/object", 10, 5) == b""
        assert backend.read_range("ranges/object", 11, 5) == b""
        assert backend.read_range("ranges/object", 10_000, 1) == b""
        assert backend.read_range("ranges/empty", 0, 5) == b""
        assert backend.read_range("ranges/empty", 3, 5) == b""

    def test_read_range_of_no_bytes(self, backend: Backend) -> None:
        """A zero length asks for nothing."""
        backend.write("ranges/object", b"0123456789")
        assert backend.read_range("ranges/object", 0, 0) == b""
        assert backend.read_range("ranges/object", 4, 0) == b""

    def test_size(self, backend: Backend) -> None:
        """size is the number of bytes stored, and follows rewrites."""
        backend.write("sizes/a", b"x" * 1234)
        backend.write("sizes/empty", b"")
        assert backend.size("sizes/a") == 1234
        assert backend.size("sizes/empty") == 0
        backend.write("sizes/a", b"y" * 17)
        assert backend.size("sizes/a") == 17

    # -- exists ---------------------------------------------------------------------------

    def test_exists(self, backend: Backend) -> None:
        """exists is True for a stored object only, and False again once it is deleted."""
        assert not backend.exists("present/object")
        backend.write("present/object", b"here")
        backend.write("present/empty", b"")
        assert backend.exists("present/object")
        assert backend.exists("present/empty")
        assert not backend.exists("present/other")
        assert not backend.exists("present")
        backend.delete("present/object")
        assert not backend.exists("present/object")

    # -- write and create -----------------------------------------------------------------

    def test_write_replaces(self, backend: Backend) -> None:
        """A second write replaces the object and leaves nothing else behind."""
        backend.write("replace/object", b"first version, long")
        backend.write("replace/object", b"second")
        assert backend.read("replace/object") == b"second"
        assert backend.size("replace/object") == len(b"second")
        assert backend.list("replace") == ["replace/object"]

    def test_write_replaces_atomically(self, backend: Backend) -> None:
        """Readers during rewrites see one whole version or the other, never a mixture."""
        versions = [
            _payload("version A ", self.atomic_write_size),
            _payload("version B ", self.atomic_write_size + 4096),
        ]
        backend.write("atomic/object", versions[0])
        done = threading.Event()
        failures: list[BaseException] = []

        def rewrite() -> None:
            try:
                turn = 1
                while not done.is_set():
                    backend.write("atomic/object", versions[turn])
                    turn = 1 - turn
            except BaseException as exc:
                failures.append(exc)

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            seen = [backend.read("atomic/object") for _ in range(self.atomic_write_reads)]
        finally:
            done.set()
            writer.join()
        assert not failures, failures
        torn = [len(data) for data in seen if data not in versions]
        assert not torn, f"reads saw partial objects of sizes {torn}"
        assert backend.read("atomic/object") in versions
        assert backend.list("atomic") == ["atomic/object"]

    def test_create_twice(self, backend: Backend) -> None:
        """An exclusive create of a present object fails and leaves the object alone."""
        backend.create("exclusive/object", b"first")
        with pytest.raises(ObjectExistsError):
            backend.create("exclusive/object", b"second")
        assert backend.read("exclusive/object") == b"first"
        backend.write("exclusive/written", b"by write")
        with pytest.raises(ObjectExistsError):
            backend.create("exclusive/written", b"by create")
        assert backend.read("exclusive/written") == b"by write"
        assert backend.list("exclusive") == ["exclusive/object", "exclusive/written"]

    def test_create_after_delete(self, backend: Backend) -> None:
        """Once deleted, an object can be created again."""
        backend.create("exclusive/object", b"first")
        backend.delete("exclusive/object")
        backend.create("exclusive/object", b"again")
        assert backend.read("exclusive/object") == b"again"

    def test_exclusive_creates_racing_in_threads(self, backend: Backend) -> None:
        """Of several threads creating one object at once, exactly one wins."""
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often, so that check-then-set loses
        rounds = self.race_rounds if backend.is_remote else self.in_process_race_rounds
        try:
            for round_number in range(rounds):
                path = f"race/threads/{round_number}"
                outcomes = self._race_threads(backend, path)
                assert outcomes.count("won") == 1, outcomes
                assert outcomes.count("lost") == self.race_threads - 1, outcomes
                winner = outcomes.index("won")
                assert backend.read(path) == f"thread {winner}".encode()
        finally:
            sys.setswitchinterval(interval)

    def _race_threads(self, backend: Backend, path: str) -> list[str]:
        """Start the threads together at a barrier; each reports won, lost or its error."""
        barrier = threading.Barrier(self.race_threads)
        outcomes = ["not run"] * self.race_threads

        def race(number: int) -> None:
            try:
                barrier.wait(timeout=60)
                backend.create(path, f"thread {number}".encode())
                outcomes[number] = "won"
            except ObjectExistsError:
                outcomes[number] = "lost"
            except BaseException as exc:
                outcomes[number] = repr(exc)

        threads = [threading.Thread(target=race, args=(n,)) for n in range(self.race_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def test_exclusive_creates_racing_in_processes(
        self, backend: Backend, backend_spec: BackendSpec | None
    ) -> None:
        """Of several processes creating one object at once, exactly one wins.

        The racers start, connect, and then wait on their stdin; each round names the object
        to all of them at once.
        """
        if backend_spec is None:
            pytest.skip("no backend_spec: this backend cannot be opened by another process")
        racers: list[_Racer] = []
        with contextlib.ExitStack() as stack:
            for number in range(self.race_processes):
                errors = stack.enter_context(tempfile.TemporaryFile())
                racers.append(_Racer(backend_spec, f"process {number}", errors))
                stack.callback(racers[-1].close)
            for racer in racers:
                assert racer.answer() == "ready"
            for round_number in range(self.race_rounds):
                path = f"race/processes/{round_number}"
                for racer in racers:
                    racer.tell(path)
                outcomes = [racer.answer() for racer in racers]
                assert outcomes.count("won") == 1, (path, outcomes)
                assert outcomes.count("lost") == len(racers) - 1, (path, outcomes)
                winner = racers[outcomes.index("won")]
                assert backend.read(path) == f"{winner.tag} {path}".encode()
            for racer in racers:
                racer.close()
                assert racer.process.returncode == 0, racer.errors()

    # -- list -----------------------------------------------------------------------------

    def test_list_is_recursive_and_sorted(self, backend: Backend) -> None:
        """Every object below the folder, at any depth, sorted as strings."""
        paths = [
            "tree/z",
            "tree/a/b/c/deep",
            "tree/a-b/x",
            "tree/a/b/leaf",
            "tree/a/first",
            "tree/m/n",
            "tree/A",
        ]
        for path in paths:
            backend.write(path, path.encode())
        listed = backend.list("tree")
        assert listed == sorted(paths)
        assert backend.list("tree/a") == ["tree/a/b/c/deep", "tree/a/b/leaf", "tree/a/first"]
        assert backend.list("tree/a/b/c") == ["tree/a/b/c/deep"]

    def test_list_is_limited_to_the_folder(self, backend: Backend) -> None:
        """A folder's listing holds nothing from a sibling whose name merely starts alike,
        and nothing for a prefix that names an object rather than a folder."""
        backend.write("lists/ab/x", b"1")
        backend.write("lists/abc/y", b"2")
        backend.write("lists/ab.txt", b"3")
        backend.write("lists/object", b"4")
        assert backend.list("lists/ab") == ["lists/ab/x"]
        assert backend.list("lists/object") == []
        everything = ["lists/ab.txt", "lists/ab/x", "lists/abc/y", "lists/object"]
        assert backend.list("lists") == everything

    def test_list_skips_temporaries(self, backend: Backend) -> None:
        """Objects whose last path component starts with '.' are in-progress temporaries."""
        backend.write("temps/real", b"1")
        backend.write("temps/.real.1234.tmp", b"2")
        backend.write("temps/sub/.hidden", b"3")
        backend.write("temps/sub/kept", b"4")
        assert backend.list("temps") == ["temps/real", "temps/sub/kept"]

    def test_list_of_a_missing_folder_is_empty(self, backend: Backend) -> None:
        """A folder that was never written to holds nothing: [] and no error."""
        assert backend.list("never") == []
        assert backend.list("never/deeper/still") == []
        backend.write("some/object", b"x")
        assert backend.list("some/other") == []

    def test_list_follows_deletes(self, backend: Backend) -> None:
        """A deleted object leaves the listing; the remaining ones stay."""
        backend.write("gone/a", b"1")
        backend.write("gone/b", b"2")
        backend.delete("gone/a")
        assert backend.list("gone") == ["gone/b"]
        backend.delete("gone/b")
        assert backend.list("gone") == []

    # -- delete ---------------------------------------------------------------------------

    def test_delete_is_idempotent(self, backend: Backend) -> None:
        """Deleting twice, or deleting what never existed, is not an error."""
        backend.write("deletes/object", b"x")
        backend.write("deletes/sibling", b"y")
        backend.delete("deletes/object")
        assert not backend.exists("deletes/object")
        with pytest.raises(ObjectNotFoundError):
            backend.read("deletes/object")
        backend.delete("deletes/object")
        backend.delete("deletes/never-written")
        backend.delete("nowhere/at/all")
        assert backend.read("deletes/sibling") == b"y"

    def test_delete_of_a_folder_removes_nothing(self, backend: Backend) -> None:
        """A folder is not an object: deleting its path neither fails nor touches its objects."""
        backend.write("keep/inner/object", b"x")
        backend.delete("keep/inner")
        backend.delete("keep")
        assert backend.list("keep") == ["keep/inner/object"]
        assert backend.read("keep/inner/object") == b"x"

    # -- modified -------------------------------------------------------------------------

    def test_modified_orders_writes(self, backend: Backend) -> None:
        """An object written later was modified no earlier, by the storage's own clock."""
        backend.write("times/first", b"1")
        backend.create("times/second", b"2")
        first, second = backend.modified("times/first"), backend.modified("times/second")
        assert isinstance(first, float)
        assert second >= first
        backend.write("times/first", b"rewritten")
        rewritten = backend.modified("times/first")
        assert rewritten >= second
        assert rewritten >= first

    # -- paths ----------------------------------------------------------------------------

    @pytest.mark.parametrize("path", INVALID_PATHS)
    def test_invalid_paths_are_refused(self, backend: Backend, path: str) -> None:
        """Paths that could leave the root, or that name no object, are refused up front."""
        operations: dict[str, Callable[[], object]] = {
            "read": lambda: backend.read(path),
            "read_range": lambda: backend.read_range(path, 0, 1),
            "size": lambda: backend.size(path),
            "write": lambda: backend.write(path, b"x"),
            "create": lambda: backend.create(path, b"x"),
            "exists": lambda: backend.exists(path),
            "modified": lambda: backend.modified(path),
            "list": lambda: backend.list(path),
            "delete": lambda: backend.delete(path),
        }
        accepted = []
        for name, operation in operations.items():
            try:
                operation()
            except InvalidInputError:
                continue
            except Exception as exc:
                accepted.append(f"{name}: {exc!r}")
            else:
                accepted.append(name)
        assert not accepted, f"{path!r} was not refused with InvalidInputError by {accepted}"

    # -- container ------------------------------------------------------------------------

    def test_ensure_container_is_idempotent(self, backend: Backend) -> None:
        """Making sure of the container again keeps what is stored."""
        backend.write("kept/object", b"x")
        backend.ensure_container()
        backend.ensure_container()
        assert backend.read("kept/object") == b"x"


LIST_SCRIPT = """
import json, os, sys
from castore.backend import open_backend
from castore.errors import BackendError
root, prefix, closed = json.loads(sys.argv[1])
try:
    os.listdir(closed)
except PermissionError:
    pass
else:
    print(json.dumps({"unreadable": False}))
    sys.exit(0)
try:
    listed = open_backend(root).list(prefix)
except BackendError as exc:
    print(json.dumps({"unreadable": True, "error": "BackendError", "message": str(exc)}))
else:
    print(json.dumps({"unreadable": True, "listed": listed}))
"""

STAT_SCRIPT = """
import json, os, sys
from castore.backend import open_backend
from castore.errors import BackendError
root, path = json.loads(sys.argv[1])
try:
    os.stat(os.path.join(root, path))
except PermissionError:
    pass
else:
    print(json.dumps({"unreadable": False}))
    sys.exit(0)
backend = open_backend(root)
outcomes = {"unreadable": True}
for name in ("exists", "size"):
    try:
        outcomes[name] = repr(getattr(backend, name)(path))
    except BackendError:
        outcomes[name] = "BackendError"
print(json.dumps(outcomes))
"""


def _unprivileged_prefix() -> list[str]:
    """A command prefix that runs a process without root's power to read anything.

    As in tests/test_backup.py: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH through
    setpriv, so that mode 000 refuses it; other users need nothing.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


class LocalBackendConformance:
    """What the local directory backend must do besides `BackendConformance`.

    The ``backend`` fixture must return a fresh `LocalBackend` whose root exists.
    """

    @pytest.fixture
    def backend(self) -> Backend:
        """A fresh, empty LocalBackend whose root exists: subclasses must provide it."""
        raise NotImplementedError("a LocalBackendConformance subclass must define `backend`")

    @pytest.fixture
    def root(self, backend: Backend) -> Path:
        """The directory that holds the backend's objects."""
        assert isinstance(backend, LocalBackend), "LocalBackendConformance needs a LocalBackend"
        return backend.root

    @pytest.fixture
    def closed_folders(self) -> Iterator[list[Path]]:
        """Folders a test made unreadable; their mode is restored afterwards for cleanup."""
        folders: list[Path] = []
        yield folders
        for folder in folders:
            folder.chmod(0o700)

    def _list_unprivileged(self, root: Path, prefix: str, closed: Path) -> dict[str, Any]:
        """List `prefix` in a process that mode 000 keeps out; skip if there is none."""
        command = [*_unprivileged_prefix(), sys.executable, "-c", LIST_SCRIPT]
        argument = json.dumps([str(root), prefix, str(closed)])
        result = subprocess.run(
            [*command, argument], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        if not report["unreadable"]:
            pytest.skip("this process can read mode 000 folders: cannot test unreadable ones")
        return report

    @pytest.mark.parametrize(
        ("prefix", "closed"),
        [
            ("packs", "packs/ab"),
            ("packs", "packs/ab/cd"),
            ("packs", "packs"),
            ("packs/ab", "packs/ab/cd"),
        ],
    )
    def test_unreadable_folder_fails_the_listing(
        self,
        backend: Backend,
        root: Path,
        closed_folders: list[Path],
        prefix: str,
        closed: str,
    ) -> None:
        """A folder below the prefix that cannot be read makes list raise BackendError naming
        it: leaving it out would make gc believe its objects are gone, and delete data."""
        for path in ("packs/ab/cd/hidden", "packs/ab/cd/also", "packs/ab/other", "packs/top"):
            backend.write(path, b"data")
        folder = root / closed
        folder.chmod(0)
        closed_folders.append(folder)
        report = self._list_unprivileged(root, prefix, folder)
        assert report.get("error") == "BackendError", report
        assert closed in report["message"]
        assert "Permission denied" in report["message"]

    def test_missing_root_lists_nothing(self, tmp_path: Path) -> None:
        """A root that does not exist yet holds nothing."""
        backend = LocalBackend(tmp_path / "not-yet")
        assert backend.list("packs") == []

    @pytest.fixture
    def outside(self, root: Path) -> Path:
        """A folder beside the store, with one file, that no operation may touch."""
        folder = root.parent / f"{root.name}-outside"
        folder.mkdir()
        (folder / "foreign").write_bytes(b"not ours")
        return folder

    def _assert_untouched(self, outside: Path) -> None:
        assert sorted(os.listdir(outside)) == ["foreign"]
        assert (outside / "foreign").read_bytes() == b"not ours"

    @pytest.mark.parametrize("planted", ["to-outside", "loop", "to-real"])
    def test_list_refuses_symlinked_folders(
        self, backend: Backend, root: Path, outside: Path, planted: str
    ) -> None:
        """A link to a folder, inside or outside the root, fails the listing and names
        it: reads never follow it, so leaving it out would hide what it stands for."""
        backend.write("links/real/object", b"x")
        targets = {"to-outside": outside, "loop": root / "links", "to-real": root / "links/real"}
        (root / "links" / planted).symlink_to(targets[planted], target_is_directory=True)
        with pytest.raises(BackendError, match=f"links/{planted} .*symbolic link"):
            backend.list("links")

    @pytest.mark.parametrize("planted", ["link", "dangling", "pipe", "socket"])
    def test_list_refuses_what_is_not_a_regular_file(
        self, backend: Backend, root: Path, planted: str
    ) -> None:
        """Links to files, dangling links, named pipes and sockets are no objects, and a
        listing that skipped them would let gc collect what a reader finds through them."""
        backend.write("kinds/regular", b"x")
        place = root / "kinds" / planted
        if planted == "link":
            place.symlink_to(root / "kinds" / "regular")
        elif planted == "dangling":
            place.symlink_to(root / "kinds" / "nothing")
        elif planted == "pipe":
            os.mkfifo(place)
        else:
            with contextlib.closing(socket.socket(socket.AF_UNIX)) as bound:
                bound.bind(str(place))
        with pytest.raises(BackendError, match=f"kinds/{planted} "):
            backend.list("kinds")

    def test_a_symlinked_prefix_is_refused(
        self, backend: Backend, root: Path, outside: Path
    ) -> None:
        """The listed folder itself may not be a link either."""
        (root / "refs").symlink_to(outside, target_is_directory=True)
        with pytest.raises(BackendError, match="symbolic link"):
            backend.list("refs")

    @pytest.mark.parametrize("where", ["leaf", "folder"])
    def test_reads_never_follow_links(
        self, backend: Backend, root: Path, outside: Path, where: str
    ) -> None:
        """read, read_range, size, modified and exists refuse a link, at the object or at
        any folder above it, with BackendError: it is neither the object nor its absence."""
        if where == "leaf":
            (root / "refs").mkdir()
            (root / "refs" / "ref").symlink_to(outside / "foreign")
            path = "refs/ref"
        else:
            (root / "refs").symlink_to(outside, target_is_directory=True)
            path = "refs/foreign"
        for operation in (
            lambda: backend.read(path),
            lambda: backend.read_range(path, 0, 4),
            lambda: backend.size(path),
            lambda: backend.modified(path),
            lambda: backend.exists(path),
        ):
            with pytest.raises(BackendError, match="symbolic link"):
                operation()

    def test_writes_never_follow_linked_folders(
        self, backend: Backend, root: Path, outside: Path
    ) -> None:
        """write, create and delete below a linked folder fail and leave its target alone."""
        (root / "tags").symlink_to(outside, target_is_directory=True)
        for operation in (
            lambda: backend.write("tags/new", b"planted"),
            lambda: backend.create("tags/new", b"planted"),
            lambda: backend.write("tags/foreign", b"planted"),
            lambda: backend.delete("tags/foreign"),
        ):
            with pytest.raises(BackendError, match="symbolic link"):
                operation()
        self._assert_untouched(outside)

    def test_writing_over_a_linked_object_replaces_the_link(
        self, backend: Backend, root: Path, outside: Path
    ) -> None:
        """An object planted as a link is replaced by write and removed by delete; the
        file it pointed to keeps its bytes."""
        (root / "objects").mkdir()
        (root / "objects" / "one").symlink_to(outside / "foreign")
        (root / "objects" / "two").symlink_to(outside / "foreign")
        backend.write("objects/one", b"ours")
        assert not (root / "objects" / "one").is_symlink()
        assert backend.read("objects/one") == b"ours"
        backend.delete("objects/two")
        assert not (root / "objects" / "two").exists()
        with pytest.raises(ObjectExistsError):
            backend.create("objects/one", b"again")
        self._assert_untouched(outside)

    @pytest.mark.parametrize("planted", ["pipe", "device"])
    def test_special_files_are_refused_without_blocking(
        self, backend: Backend, root: Path, planted: str
    ) -> None:
        """A named pipe with no writer, or /dev/zero linked in, would block a read or
        stream forever: they are refused at once with BackendError."""
        (root / "refs").mkdir()
        if planted == "pipe":
            os.mkfifo(root / "refs" / "ref")
        else:
            (root / "refs" / "ref").symlink_to("/dev/zero")
        outcome: list[BaseException | bytes] = []

        def read() -> None:
            try:
                outcome.append(backend.read("refs/ref"))
            except BaseException as exc:  # reported to the test thread
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)  # a bound on a hang, not a timing assumption
        assert outcome, "read blocked on a special file"
        assert isinstance(outcome[0], BackendError), outcome

    def test_no_temporary_files_are_left(self, backend: Backend, root: Path) -> None:
        """write, create and a refused create leave only the object in its directory."""
        backend.write("clean/written", b"1")
        backend.write("clean/written", b"2")
        backend.create("clean/created", b"3")
        with pytest.raises(ObjectExistsError):
            backend.create("clean/created", b"4")
        assert sorted(os.listdir(root / "clean")) == ["created", "written"]

    def test_unsearchable_folder_is_a_backend_error(
        self, backend: Backend, root: Path, closed_folders: list[Path]
    ) -> None:
        """exists and size report an object they cannot reach as a failure, not as absence."""
        backend.write("shut/inner/object", b"x")
        folder = root / "shut" / "inner"
        folder.chmod(0)
        closed_folders.append(folder)
        command = [*_unprivileged_prefix(), sys.executable, "-c", STAT_SCRIPT]
        argument = json.dumps([str(root), "shut/inner/object"])
        result = subprocess.run(
            [*command, argument], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        if not report.pop("unreadable"):
            pytest.skip("this process can search mode 000 folders: cannot test unreadable ones")
        assert report == {"exists": "BackendError", "size": "BackendError"}
