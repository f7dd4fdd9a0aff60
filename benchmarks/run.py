"""Run castore's benchmarks and write benchmarks/RESULTS.md.

Usage: ``.venv/bin/python benchmarks/run.py [--quick] [--size-mib N] [--runs N] [--skip-sequence]``
(``--help`` lists every option).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Make the repository importable (for ``benchmarks`` and ``tests``) and run the suite."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.suite import main as suite_main

    return suite_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
