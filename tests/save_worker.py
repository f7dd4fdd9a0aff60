"""A process that saves one object under a shared name (for the concurrency tests)."""

from __future__ import annotations

import json
import sys
import time

import castore


def main() -> None:
    """argv: store URL, storage options as JSON, name, worker number, start time."""
    url, options, name, number, start = sys.argv[1:6]
    with castore.open(url, **json.loads(options)) as store:
        time.sleep(max(0.0, float(start) - time.time()))  # start together
        version = store.save({"worker": int(number)}, name)
        print(version.version, version.digest, flush=True)


if __name__ == "__main__":
    main()
