"""Runs castore commands against one hostile store, in one bounded process.

argv: a JSON list of argument lists. Each command runs through the CLI's own entry point
with stdout and stderr captured; one JSON line per command reports its exit code, its
output and any exception that escaped the CLI (which castore must never let happen).
The process has a memory limit, and a watchdog ends it if one command hangs: both show up
in the test as a missing or failed report.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import io
import json
import resource
import sys
import traceback

MEMORY_LIMIT = 2 * 1024**3
COMMAND_TIMEOUT = 120


def _run(argv: list[str]) -> dict[str, object]:
    from castore.cli.main import main

    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    crash = None
    code: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # what the test reports as a crash
            crash = "".join(traceback.format_exception_only(exc)).strip()
    out.flush()
    return {
        "argv": argv,
        "code": code,
        "stdout": base64.b64encode(out.buffer.getvalue()).decode(),
        "stderr": err.getvalue(),
        "crash": crash,
    }


def main() -> None:
    """Run every command of argv[1]; print one JSON report per command."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for argv in json.loads(sys.argv[1]):
        faulthandler.dump_traceback_later(COMMAND_TIMEOUT, exit=True)
        report = _run(argv)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
