"""A writer process for the crash tests: puts blobs forever, printing each committed digest."""

from __future__ import annotations

import json
import sys

import castore
from tests.helpers import pattern


def main() -> None:
    """argv: store URL, storage options as JSON, seed."""
    url, options, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    with castore.open(url, **options) as store:
        number = 0
        while True:
            size = (number * 7919 + seed * 104729) % 1_000_000
            shared = pattern(100_000, seed=number % 3)  # some chunks dedup across blobs
            digest = store.put(shared + pattern(size, seed=seed * 1000 + number))
            print(digest, flush=True)
            number += 1


if __name__ == "__main__":
    main()
