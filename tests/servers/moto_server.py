"""Run moto's S3 server as a separate process on 127.0.0.1 (as s3fs's own tests do)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tests.servers.radosgw import S3Server

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_moto(log_path: Path) -> Iterator[S3Server]:
    """Start moto's server (`moto_main.py`) on a free loopback port, logging to `log_path`;
    stop it on exit."""
    port = _free_port()
    # A pipe that nobody reads would fill up and stall the server: log to a file.
    with open(log_path, "wb") as log, _started(port, log) as url:
        yield S3Server(endpoint_url=url, key="testing", secret="testing")


@contextlib.contextmanager
def _started(port: int, log: BinaryIO) -> Iterator[str]:
    launcher = str(Path(__file__).with_name("moto_main.py"))
    process = subprocess.Popen(
        [sys.executable, launcher, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited; see {log.name}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not answer in time") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
