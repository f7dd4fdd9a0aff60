"""Start a throw-away single-node Ceph cluster with a radosgw S3 gateway.

Everything lives inside one working directory: ``ceph.conf``, monitor data,
OSD data (the OSD uses the in-memory ``memstore`` object store), admin
sockets, pid files and logs. Nothing is read from or written to ``/etc/ceph``
or ``/var/lib/ceph``. All daemons bind to 127.0.0.1 only, on ports picked at
run time, so several instances (in different working directories) can run at
the same time.

The Debian packages are installed by ``tests/servers/install-ceph.sh``.

Usage::

    with running_radosgw(tmp_path) as server:
        boto3.client("s3", endpoint_url=server.endpoint_url,
                     aws_access_key_id=server.key,
                     aws_secret_access_key=server.secret)

Run ``python3 tests/servers/radosgw.py [WORKDIR]`` to start one by hand; it
stays up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["REQUIRED_BINARIES", "S3Server", "radosgw_available", "running_radosgw"]

REQUIRED_BINARIES: tuple[str, ...] = (
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "ceph",
    "radosgw-admin",
    "monmaptool",
    "ceph-authtool",
)

#: Fixed credentials of the S3 user created in every instance.
ACCESS_KEY = "CASTORETESTACCESSKEY"
SECRET_KEY = "castore-test-secret-key-0123456789abcdef"

#: Upper bound for the whole start-up, in seconds.
STARTUP_TIMEOUT = 120.0

_HOST = "127.0.0.1"
_MON_ID = "a"
_RGW_NAME = "client.rgw.castore"
_LOG_TAIL_LINES = 40
_MAX_UNIX_PATH = 107


@dataclass(frozen=True)
class S3Server:
    """Where and how to reach a running S3 server."""

    endpoint_url: str
    key: str
    secret: str


def radosgw_available() -> bool:
    """Return True when every binary needed to run radosgw is on PATH."""
    return all(shutil.which(name) is not None for name in REQUIRED_BINARIES)


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _with_pdeathsig(args: Sequence[str]) -> list[str]:
    """Prefix ``args`` so the kernel SIGKILLs the process when we die.

    A safety net (Linux, util-linux ``setpriv``) so that daemons do not
    outlive a test run that was itself killed with SIGKILL. The signal is tied
    to the thread that started the child, so start the cluster from a thread
    that lives as long as the cluster (e.g. the main thread).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(args)
    return [setpriv, "--pdeathsig", "KILL", "--", *args]


def _tail(path: pathlib.Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or a note if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data[-64 * 1024 :].decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate ``proc`` and its process group; SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace if grace > 0 else 10)
    # Even when the leader has exited, children may still be in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class _Daemon:
    """A daemon process started by :class:`_Cluster`."""

    name: str
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    output: pathlib.Path


@dataclass
class _Cluster:
    """A single-node Ceph cluster (1 mon, 1 memstore OSD, 1 radosgw)."""

    workdir: pathlib.Path
    deadline: float
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    mon_v2_port: int = field(default_factory=_free_port)
    mon_v1_port: int = field(default_factory=_free_port)
    rgw_port: int = field(default_factory=_free_port)
    daemons: list[_Daemon] = field(default_factory=list)

    @property
    def conf(self) -> pathlib.Path:
        """Path of this cluster's ceph.conf."""
        return self.workdir / "ceph.conf"

    @property
    def log_dir(self) -> pathlib.Path:
        """Directory of all daemon and command logs."""
        return self.workdir / "log"

    @property
    def endpoint_url(self) -> str:
        """URL of the radosgw S3 endpoint."""
        return f"http://{_HOST}:{self.rgw_port}"

    # -- helpers -----------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the start-up deadline (at least a little)."""
        return max(self.deadline - time.monotonic(), 0.1)

    def env(self) -> dict[str, str]:
        """Environment for every ceph process: our config, never /etc/ceph."""
        env = dict(os.environ)
        env["CEPH_CONF"] = str(self.conf)
        env.pop("CEPH_ARGS", None)
        env.pop("CEPH_KEYRING", None)
        return env

    def fail(self, message: str, logs: Sequence[pathlib.Path] = ()) -> RuntimeError:
        """Build a RuntimeError with the tails of the given and daemon logs."""
        parts = [f"radosgw test cluster in {self.workdir}: {message}"]
        for daemon in self.daemons:
            if daemon.proc.poll() is not None:
                parts.append(f"{daemon.name} exited with status {daemon.proc.returncode}")
        # The logs named by the caller in full, then short tails of the rest.
        wanted = [(path, _LOG_TAIL_LINES) for path in logs]
        for daemon in self.daemons:
            wanted += [(daemon.output, 10), (daemon.log, 10)]
        seen: set[pathlib.Path] = set()
        for path, lines in wanted:
            if path in seen or not path.exists() or path.stat().st_size == 0:
                continue
            seen.add(path)
            parts.append(f"--- tail of {path} ---\n{_tail(path, lines)}")
        return RuntimeError("\n".join(parts))

    def check_daemons(self) -> None:
        """Raise if any daemon started so far has exited."""
        for daemon in self.daemons:
            if daemon.proc.poll() is not None:
                raise self.fail(f"{daemon.name} died during start-up", [daemon.output, daemon.log])

    def run(self, name: str, args: Sequence[str], timeout: float | None = None) -> str:
        """Run a command to completion (bounded); return its stdout."""
        out_path = self.log_dir / f"cmd-{name}.out"
        err_path = self.log_dir / f"cmd-{name}.err"
        limit = min(timeout or self.remaining(), self.remaining())
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                _with_pdeathsig(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,
            )
            end = time.monotonic() + limit
            while proc.poll() is None:
                if time.monotonic() > end:
                    _kill_group(proc, grace=0)
                    raise self.fail(f"`{' '.join(args)}` timed out after {limit:.0f}s", [err_path])
                try:
                    self.check_daemons()
                except RuntimeError:
                    _kill_group(proc, grace=0)
                    raise
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
        if proc.returncode != 0:
            raise self.fail(
                f"`{' '.join(args)}` failed with status {proc.returncode}", [err_path, out_path]
            )
        return out_path.read_text(errors="replace")

    def spawn(self, name: str, args: Sequence[str]) -> _Daemon:
        """Start a long-running daemon in its own process group."""
        output = self.log_dir / f"{name}.out"
        with output.open("wb") as out:
            proc = subprocess.Popen(
                _with_pdeathsig(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        daemon = _Daemon(name=name, proc=proc, log=self.log_dir / f"{name}.log", output=output)
        self.daemons.append(daemon)
        return daemon

    # -- start-up steps ----------------------------------------------------

    def write_config(self) -> None:
        """Write ceph.conf and create the directories it names."""
        w = self.workdir
        for sub in ("log", "run", "mon", "osd", "rgw", "crash"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 107 bytes; without a socket there is
        # just no admin socket (not needed here) instead of an error per process.
        asok = f"{w}/run/$name.asok"
        if len(os.fsencode(asok.replace("$name", _RGW_NAME))) > _MAX_UNIX_PATH:
            asok = ""
        mon_addr = f"[v2:{_HOST}:{self.mon_v2_port},v1:{_HOST}:{self.mon_v1_port}]"
        self.conf.write_text(
            f"""\
# Generated by tests/servers/radosgw.py: throw-away single-node test cluster.
[global]
fsid = {self.fsid}
mon_host = {mon_addr}
public_addr = {_HOST}
cluster_addr = {_HOST}
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# radosgw defaults to ms_mon_client_mode = secure, impossible without cephx.
ms_mon_client_mode = crc secure
keyring = {w}/keyring
run_dir = {w}/run
admin_socket = {asok}
pid_file = {w}/run/$name.pid
log_file = {w}/log/$name.log
log_to_syslog = false
err_to_syslog = false
crash_dir = {w}/crash
mon_cluster_log_file = {w}/log/cluster.log
mon_cluster_log_to_syslog = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
# One host, one OSD: place replicas per OSD (start-up is ~5 s slower without).
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mon_data_avail_warn = 1
mon_data_avail_crit = 0
# Commit monitor changes (pool creations by radosgw) fast instead of once a second.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[mon]
mon_data = {w}/mon/$cluster-$id
mon_allow_pool_delete = true

[osd]
osd_data = {w}/osd/$cluster-$id
osd_objectstore = memstore
memstore_device_bytes = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[{_RGW_NAME}]
rgw_frontends = beast endpoint={_HOST}:{self.rgw_port}
rgw_data = {w}/rgw
rgw_thread_pool_size = 32
rgw_rados_pool_pg_num_min = 8
rgw_enable_lc_threads = false
"""
        )

    def start_mon(self) -> None:
        """Create the monitor's store from a fresh monmap and start it."""
        monmap = self.workdir / "monmap"
        self.run(
            "monmaptool",
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                self.fsid,
                "--addv",
                _MON_ID,
                f"[v2:{_HOST}:{self.mon_v2_port},v1:{_HOST}:{self.mon_v1_port}]",
                str(monmap),
            ],
        )
        self.run(
            "mon-mkfs",
            ["ceph-mon", "-c", str(self.conf), "-i", _MON_ID, "--mkfs", "--monmap", str(monmap)],
        )
        self.spawn(f"mon.{_MON_ID}", ["ceph-mon", "-c", str(self.conf), "-i", _MON_ID, "-f"])

    def start_osd(self) -> None:
        """Register one memstore OSD with the monitor, mkfs it and start it."""
        osd_uuid = str(uuid.uuid4())
        connect = str(max(int(self.remaining()), 1))
        osd_id = self.run(
            "osd-new",
            ["ceph", "-c", str(self.conf), "--connect-timeout", connect, "osd", "new", osd_uuid],
        ).strip()
        if not osd_id.isdigit():
            raise self.fail(f"unexpected output of `ceph osd new`: {osd_id!r}")
        (self.workdir / "osd" / f"ceph-{osd_id}").mkdir(parents=True, exist_ok=True)
        self.run(
            "osd-mkfs",
            ["ceph-osd", "-c", str(self.conf), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid],
        )
        self.spawn(f"osd.{osd_id}", ["ceph-osd", "-c", str(self.conf), "-i", osd_id, "-f"])

    def create_user(self) -> None:
        """Create the S3 user with the fixed test keys."""
        timeout = str(max(int(self.remaining()), 1))
        self.run(
            "user-create",
            [
                "radosgw-admin",
                "-c",
                str(self.conf),
                "-n",
                "client.admin",
                f"--rados-osd-op-timeout={timeout}",
                f"--rados-mon-op-timeout={timeout}",
                "user",
                "create",
                "--uid=castore",
                "--display-name=castore tests",
                f"--access-key={ACCESS_KEY}",
                f"--secret-key={SECRET_KEY}",
            ],
        )

    def start_rgw(self) -> None:
        """Start radosgw with the beast frontend."""
        self.spawn(_RGW_NAME, ["radosgw", "-c", str(self.conf), "-n", _RGW_NAME, "-f"])

    def wait_for_s3(self) -> None:
        """Poll until a signed ListBuckets request succeeds."""
        last_error = "no attempt made"
        rgw_logs = [d.log for d in self.daemons if d.name == _RGW_NAME]
        while time.monotonic() < self.deadline:
            self.check_daemons()
            try:
                status, body = _list_buckets(self.endpoint_url, ACCESS_KEY, SECRET_KEY)
            except OSError as exc:
                last_error = repr(exc)
            else:
                if status == HTTPStatus.OK and b"ListAllMyBucketsResult" in body:
                    return
                last_error = f"HTTP {status}: {body[:500]!r}"
            time.sleep(0.1)
        raise self.fail(f"S3 endpoint not ready in time; last error: {last_error}", rgw_logs)

    def start(self) -> None:
        """Run all start-up steps; raise RuntimeError on failure or timeout."""
        self.write_config()
        self.start_mon()
        self.start_osd()
        self.create_user()
        self.start_rgw()
        self.wait_for_s3()

    def stop(self) -> None:
        """Kill every daemon (newest first) and wait for them to be gone."""
        for daemon in reversed(self.daemons):
            _kill_group(daemon.proc, grace=0)


def _list_buckets(endpoint_url: str, key: str, secret: str) -> tuple[int, bytes]:
    """Send a SigV4-signed S3 ListBuckets request; return (status, body)."""
    host = endpoint_url.split("://", 1)[1].rstrip("/")
    now = datetime.now(UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    region, service = "us-east-1", "s3"
    payload_hash = hashlib.sha256(b"").hexdigest()
    signed_headers = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join(
        [
            "GET",
            "/",
            "",
            f"host:{host}",
            f"x-amz-content-sha256:{payload_hash}",
            f"x-amz-date:{amz_date}",
            "",
            signed_headers,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signing_key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        endpoint_url.rstrip("/") + "/",
        headers={
            "Host": host,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                f"SignedHeaders={signed_headers}, Signature={signature}"
            ),
        },
    )
    # No proxies from the environment: this must only ever talk to 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@contextlib.contextmanager
def running_radosgw(
    workdir: pathlib.Path, *, timeout: float = STARTUP_TIMEOUT
) -> Iterator[S3Server]:
    """Start a throw-away Ceph cluster with radosgw inside ``workdir``.

    Yields the S3 endpoint and credentials once a signed S3 request succeeds.
    Start-up is bounded by ``timeout`` seconds and raises RuntimeError (with
    the tail of the relevant log) on failure. On exit every daemon is killed,
    even when the body raised. ``workdir`` (logs, data) is left in place.
    """
    if not radosgw_available():
        missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
        msg = f"Ceph binaries missing: {', '.join(missing)} (run tests/servers/install-ceph.sh)"
        raise RuntimeError(msg)
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = _Cluster(workdir=workdir, deadline=time.monotonic() + timeout)
    try:
        cluster.start()
        yield S3Server(endpoint_url=cluster.endpoint_url, key=ACCESS_KEY, secret=SECRET_KEY)
    finally:
        cluster.stop()


def _main(argv: Sequence[str]) -> int:
    """Start one instance and keep it up until Ctrl-C or SIGTERM."""

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.ExitStack() as stack:
        if argv:
            workdir = pathlib.Path(argv[0])
        else:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rgw-")))
        started = time.monotonic()
        try:
            server = stack.enter_context(running_radosgw(workdir))
        except KeyboardInterrupt:
            return 130
        print(f"radosgw up in {time.monotonic() - started:.1f}s (workdir {workdir})")
        print(f"endpoint_url: {server.endpoint_url}")
        print(f"key:          {server.key}")
        print(f"secret:       {server.secret}")
        print("Ctrl-C or SIGTERM to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
