"""A writer killed with SIGKILL at any point leaves a store that verifies, with nothing lost."""

from __future__ import annotations

import random
import signal

import pytest

from tests.conftest import SMALL_PACKS, Location
from tests.helpers import location_args, spawn


def _run_and_kill(location: Location, seed: int, commits: int) -> list[str]:
    """Start a writer, SIGKILL it as soon as it reports `commits` commits (it is then in the
    middle of its next put, at a point the scheduler picks), return what it committed."""
    process = spawn("crash_writer", *location_args(location), str(seed))
    assert process.stdout is not None
    committed = [process.stdout.readline().strip() for _ in range(commits)]
    process.send_signal(signal.SIGKILL)
    rest, _ = process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert all(committed), "the writer died before committing"
    return committed + rest.split()


@pytest.mark.slow
@pytest.mark.parametrize("new_location", ["local", "s3-moto", "s3-radosgw"], indirect=True)
def test_writers_killed_at_random_points_lose_nothing_committed(location: Location) -> None:
    rng = random.Random(1234)
    with location.init(config=SMALL_PACKS) as store:
        before = store.put(b"committed before any crash")
    committed: list[str] = []
    for round_number in range(4):
        committed += _run_and_kill(location, round_number, commits=rng.randint(1, 3))
    with location.open() as store:
        report = store.verify(read_data=True)
        assert report.ok, report.problems
        assert report.streams_checked >= len(set(committed)) + 1
        assert store.get(before) == b"committed before any crash"
        for digest in committed:
            with store.open_stream(digest) as stream:
                assert stream.read()
        # The store still takes writes after the crashes.
        assert store.get(store.put(b"after the crashes")) == b"after the crashes"
