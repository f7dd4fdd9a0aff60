"""The second wall: a PEP 578 audit hook that refuses code execution during a restricted load.

The hook is installed once per process and acts only in a thread that is inside a
restricted load. It refuses exec, compile, process creation, sockets, opening files for
writing, blocking opens of pipes and devices, file attribute changes, signals to threads,
thread starts (where Python audits them) and importing modules outside the policy, by
raising UnsafeObjectError inside the operation (so that the operation does not happen) and
by recording the event so that the load fails even if some code swallowed the error.
Python's documentation is explicit that audit hooks are no sandbox: the allowlist and the
data rules are the first wall, this one only turns a gadget they missed into an error.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from castore.errors import UnsafeObjectError
from castore.safety.names import under_any

REFUSED_EVENTS = frozenset({
    "exec", "compile", "code.__new__", "function.__new__", "marshal.loads", "marshal.load",
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
    "os.chown", "os.truncate", "os.symlink", "os.link", "os.putenv", "os.unsetenv",
    "os.startfile", "os.chdir", "subprocess.Popen", "pty.spawn", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "urllib.Request",
    "webbrowser.open", "shutil.rmtree", "shutil.copyfile", "shutil.move", "builtins.input",
    "sys.settrace", "sys.setprofile", "sys.addaudithook", "cpython.run_command",
    "cpython.run_module", "cpython.run_file", "sqlite3.connect", "pickle.find_class",
    "object.__setattr__", "object.__delattr__", "setopencodehook", "os.utime",
    "os.setxattr", "os.removexattr", "os.chflags", "os.lockf", "signal.pthread_kill",
    "_thread.start_new_thread",
})  # fmt: skip
"""Events refused outright while a restricted load runs. (CPython 3.11 audits no thread
start, os.mkfifo, os.mknod, os.abort or signal.signal: only the first walls stop those.)"""

_PREFIXES = ("socket.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "_winapi.")
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND


class _Scope(threading.local):
    def __init__(self) -> None:
        self.roots: tuple[str, ...] | None = None
        self.importing = 0
        self.refused: list[str] = []


_scope = _Scope()
_installed = False
_install_lock = threading.Lock()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    scope = _scope
    if scope.roots is None or scope.importing:
        return
    if event == "import":
        if not under_any(str(args[0]), scope.roots):
            _refuse(scope, f"import of {args[0]}")
    elif event == "open":
        if _writes(args):
            _refuse(scope, f"opening {args[0]!r} for writing")
        if _special_file(args):
            _refuse(scope, f"opening {args[0]!r}, which is not a regular file")
    elif event in ("exec", "compile"):
        if not _module_code(args[0] if event == "exec" else args[1], scope.roots):
            _refuse(scope, event)
    elif event in REFUSED_EVENTS or event.startswith(_PREFIXES):
        if event == "object.__setattr__" and not isinstance(args[0], type):
            return
        _refuse(scope, event)


def _module_code(code_or_filename: Any, roots: tuple[str, ...]) -> bool:
    """Whether exec or compile runs the source file of a module in `roots` (a lazy import
    inside an admitted class), rather than code made by the stream."""
    filename = getattr(code_or_filename, "co_filename", code_or_filename)
    if getattr(code_or_filename, "co_name", "<module>") != "<module>":
        return False
    if not isinstance(filename, str) or not filename.endswith(".py"):
        return False
    for root in roots:
        package = sys.modules.get(root)
        for folder in getattr(package, "__path__", None) or ():
            if filename.startswith(os.path.join(folder, "")) and os.path.isfile(filename):
                return True
    return False


def _writes(args: tuple[Any, ...]) -> bool:
    mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _special_file(args: tuple[Any, ...]) -> bool:
    """Whether a blocking open names a pipe, socket or device (a named pipe hangs the load,
    /dev/zero never ends). Opens with O_NONBLOCK, as castore's own, do not block."""
    path, flags = args[0], args[2] if len(args) >= 3 else 0
    if isinstance(flags, int) and flags & os.O_NONBLOCK:
        return False
    if not isinstance(path, str | bytes | os.PathLike):
        return False  # a file descriptor: already open
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # nothing there: the open fails by itself
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _refuse(scope: _Scope, what: str) -> None:
    scope.refused.append(what)
    raise UnsafeObjectError(f"the stream tried {what} while loading, which a load never does")


def install() -> None:
    """Install the hook (once per process; audit hooks cannot be removed)."""
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextmanager
def guarding(import_roots: tuple[str, ...]) -> Iterator[None]:
    """Refuse audited side effects in this thread until the block ends; then raise
    UnsafeObjectError if any was attempted, even if the code that tried it caught the error."""
    install()
    outer = (_scope.roots, _scope.refused)
    _scope.roots, _scope.refused = import_roots, []
    try:
        yield
        if _scope.refused:
            raise UnsafeObjectError(
                f"the stream tried {_scope.refused[0]} while loading, which a load never does"
            )
    finally:
        _scope.roots, _scope.refused = outer


@contextmanager
def importing() -> Iterator[None]:
    """Let an admitted global's module import what it needs (the environment is trusted)."""
    _scope.importing += 1
    try:
        yield
    finally:
        _scope.importing -= 1
