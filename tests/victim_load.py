"""A victim process: loads one planted version by default, then uses it as its owner would.

argv: the store's path, the version's reference, and Python statements that use the
loaded object (bound to ``obj``). Prints ``REFUSED <error class>: <message>`` if castore
refuses the load, else ``LOADED`` and ``USED`` around the use. A crash (a signal), a hang
(the parent's timeout) or a memory blow-up (the address-space limit) shows up in the
parent as a missing line or a bad exit status: the failure modes the in-process tests
cannot observe.
"""

from __future__ import annotations

import resource
import sys

MEMORY_LIMIT = 4 * 1024**3


def main() -> None:
    """Load argv[2] from the store at argv[1], then run argv[3] on it."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import castore

    store_dir, ref, use = sys.argv[1:4]
    try:
        obj = castore.open(store_dir).load(ref)
    except castore.CastoreError as exc:
        print(f"REFUSED {type(exc).__name__}: {exc}", flush=True)
        return
    print("LOADED", flush=True)
    exec(use, {"obj": obj, "np": sys.modules.get("numpy")})
    print("USED", flush=True)


if __name__ == "__main__":
    main()
