"""Processes for the gc concurrency tests: a writer that saves and deletes, a gc loop."""

from __future__ import annotations

import json
import random
import sys
import time

import castore
from castore.errors import StoreBusyError
from tests.helpers import pattern


def writer(store: castore.Store, seed: int) -> None:
    """Save versions of a name forever; sometimes delete an old one. Print what committed."""
    rng = random.Random(seed)
    name = f"writer/{seed}"
    number = 0
    while True:
        data = pattern(100_000, seed=number % 4) + pattern(
            rng.randrange(50_000, 400_000), seed=seed * 10**6 + number
        )
        try:
            version = store.save(data, name, serializer="raw")
            print("saved", f"{name}:{version.version}", version.reference, flush=True)
            if number % 3 == 2:
                victim = f"{name}:{version.version - 1}"
                store.delete(victim)
                print("deleted", victim, flush=True)
        except StoreBusyError:
            pass
        number += 1
        time.sleep(rng.uniform(0.2, 1.0))


def collector(store: castore.Store, seed: int) -> None:
    """Run gc in a loop; print each outcome."""
    rng = random.Random(seed)
    while True:
        try:
            report = store.gc(repack_threshold=0.1)
            print("gc", report.packs_deleted, report.packs_repacked, flush=True)
        except StoreBusyError:
            print("busy", flush=True)
        time.sleep(rng.uniform(0.5, 1.0))


def main() -> None:
    """argv: role (writer|gc), store URL, storage options as JSON, seed."""
    role, url, options, seed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    with castore.open(url, **options) as store:
        (writer if role == "writer" else collector)(store, seed)


if __name__ == "__main__":
    main()
