"""Safe loading: unpickle only the globals an allowlist admits, refusing the rest unrun.

pickle, cloudpickle and joblib streams are programs: they name importable globals and
call them. The restricted unpickler here resolves every global through an `Allowlist`
(built-in rules plus the user's patterns, never anything from the artifact) and refuses
any other global with `UnsafeObjectError` before it is imported or called. Beyond the
allowlist it keeps the stream from calling anything but admitted constructors, from
setting state on classes or modules, and from making castore allocate more than the
stream holds. docs/SECURITY.md states what this does and does not guarantee.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import io
import math
import os
import pickle
import re
import struct
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

from castore.errors import CastoreError, DeserializationError, InvalidInputError, UnsafeObjectError
from castore.trust.userconfig import config_dir, read_config_lines

TRUSTED_GLOBALS_FILE = "trusted_globals"
READ_PIECE = 16 * 1024 * 1024
"""Largest single read when the remaining size of a stream is unknown."""


# -- patterns ----------------------------------------------------------------------------------

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_PATTERN = re.compile(rf"({_IDENTIFIER}(?:\.{_IDENTIFIER})*)(?:(:)({_DOTTED.pattern})|(\.\*))?")

Trustable = str | type | Callable[..., Any]
"""What `trusted=` accepts: a pattern, or a class or function to trust by its name."""


@dataclass(frozen=True)
class Pattern:
    """Trust in one global (``pkg.mod.Name``, ``pkg.mod:Name``) or a package (``pkg.*``)."""

    prefix: str
    wildcard: bool

    @classmethod
    def parse(cls, item: Trustable) -> Pattern:
        """A pattern from its text, or the exact name of a class or function."""
        if not isinstance(item, str):
            module, qualname = (
                getattr(item, "__module__", None),
                getattr(item, "__qualname__", None),
            )
            if not isinstance(module, str) or not isinstance(qualname, str):
                raise InvalidInputError(f"cannot trust {item!r}: it has no importable name")
            item = f"{module}:{qualname}"
        match = _PATTERN.fullmatch(item)
        if match is None:
            raise InvalidInputError(
                f"invalid trusted pattern {item!r}: expected 'package.module.Name', "
                "'package.module:Qualified.Name' or 'package.*'"
            )
        head, colon, tail, star = match.groups()
        return cls(f"{head}.{tail}" if colon else head, wildcard=bool(star))

    def covers_module(self, module: str) -> bool:
        """Whether this wildcard pattern allows importing `module` to look a global up."""
        return self.wildcard and _within(module, self.prefix)

    def matches(self, module: str, name: str, defined_in: str | None) -> bool:
        """Whether the global module.name (defined in `defined_in`) is trusted by this pattern."""
        if not self.wildcard:
            return f"{module}.{name}" == self.prefix
        return _within(module, self.prefix) and (
            defined_in is None or _within(defined_in, self.prefix)
        )


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _under_any(module: str, packages: Iterable[str]) -> bool:
    return any(_within(module, package) for package in packages)


# -- what the built-in policy allows ------------------------------------------------------------

CALL = "call"
"""The global may be called (constructed) while loading, and held by the loaded object."""
HOLD = "hold"
"""The global may only be held by the loaded object (e.g. a metric function), never called."""

_BUILTIN_TYPES: tuple[str, ...] = ("dict", "list", "tuple", "set", "frozenset", "str", "int")
_BUILTIN_TYPES += ("float", "complex", "bool", "slice", "object")
SAFE_GLOBALS: dict[tuple[str, str], str] = {
    **{("builtins", name): CALL for name in _BUILTIN_TYPES},
    ("builtins", "Ellipsis"): HOLD,
    ("builtins", "NotImplemented"): HOLD,
    **{("collections", n): CALL for n in ("OrderedDict", "defaultdict", "deque", "Counter")},
    **{("datetime", n): CALL for n in ("datetime", "date", "time", "timedelta", "timezone")},
    ("decimal", "Decimal"): CALL,
    ("fractions", "Fraction"): CALL,
    ("uuid", "UUID"): CALL,
    ("numpy._core.multiarray", "scalar"): CALL,
    ("numpy._core.numeric", "_frombuffer"): CALL,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): CALL,
}
"""Globals allowed by exact name, and what they may do."""

DENIED_MODULES = (
    # code execution, processes, files, network, interpreter internals
    "builtins", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "importlib",
    "runpy", "pty", "shutil", "socket", "ssl", "select", "ctypes", "_ctypes", "pickle",
    "_pickle", "pickletools", "copyreg", "marshal", "code", "codeop", "functools", "operator",
    "itertools", "types", "inspect", "gc", "signal", "multiprocessing", "_posixsubprocess",
    "threading", "_thread", "concurrent", "asyncio", "io", "_io", "tempfile", "pathlib",
    "glob", "fileinput", "webbrowser", "urllib", "http", "ftplib", "smtplib", "imaplib",
    "poplib", "telnetlib", "xmlrpc", "pdb", "bdb", "timeit", "trace", "profile", "cProfile",
    "pydoc", "zipimport", "zipfile", "tarfile", "pkgutil", "site", "sysconfig", "distutils",
    "setuptools", "pip", "codecs", "_codecs", "ensurepip", "venv", "logging", "atexit",
    "weakref", "cloudpickle", "dill", "joblib", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "numpy.ctypeslib", "numpy.lib._npyio_impl", "numpy.lib.npyio",
    "numpy.lib._datasource", "numpy.lib.format", "numpy.lib._utils_impl", "numpy._pytesttester",
    "scipy._lib", "scipy.io", "scipy.datasets", "scipy.misc", "scipy.stats", "scipy.weave",
    "sklearn.utils._testing", "sklearn.utils.estimator_checks", "sklearn.utils._mocking",
    "sklearn.utils.parallel", "sklearn.utils._joblib", "sklearn.utils._show_versions",
    "sklearn.externals", "sklearn.datasets", "sklearn._build_utils", "sklearn.__check_build",
    "sklearn.experimental",
)  # fmt: skip
"""Modules (and their submodules) never admitted by a rule or a wildcard pattern."""

_TEST_COMPONENTS = frozenset({"tests", "testing", "conftest", "_testing"})

DENIED_OBJECTS = (
    ("numpy", "load"), ("numpy", "save"), ("numpy", "savez"), ("numpy", "savez_compressed"),
    ("numpy", "savetxt"), ("numpy", "loadtxt"), ("numpy", "genfromtxt"), ("numpy", "fromfile"),
    ("numpy", "fromregex"), ("numpy", "memmap"), ("numpy", "frompyfunc"), ("numpy", "vectorize"),
    ("numpy", "fromfunction"), ("numpy", "apply_along_axis"), ("numpy", "apply_over_axes"),
    ("numpy", "piecewise"), ("numpy", "DataSource"), ("numpy", "ufunc"),
)  # fmt: skip
"""Callables refused to wildcard patterns although they are defined in an allowed package:
file I/O, and functions that call other callables."""

DANGEROUS_BASES = (
    ("threading", "Thread"), ("multiprocessing.process", "BaseProcess"),
    ("subprocess", "Popen"), ("io", "IOBase"), ("socket", "socket"), ("zipfile", "ZipFile"),
    ("concurrent.futures", "Executor"), ("joblib.parallel", "Parallel"),
    ("numpy.lib._datasource", "DataSource"), ("numpy.lib._npyio_impl", "NpzFile"),
    ("scipy.stats._distn_infrastructure", "rv_generic"),
    ("scipy.stats._distn_infrastructure", "rv_frozen"),
)  # fmt: skip
"""Classes whose instances act on construction or state (threads, files, scipy.stats
distributions, which exec their `shapes` text): no subclass is admitted by a rule."""

SKLEARN_FUNCTION_MODULES = (
    "sklearn.metrics",
    "sklearn.utils.validation",
    "sklearn.feature_selection._univariate_selection",
    "sklearn.feature_selection._mutual_info",
)
"""scikit-learn modules whose functions (scorers, score functions) models may hold."""


def _lookup(module: str, name: str) -> Any:
    """module.name if `module` is already imported (never imports anything), else None."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _denied_module(module: str) -> bool:
    inner = set(module.split(".")[1:])  # test suites inside packages, e.g. numpy.tests
    return _under_any(module, DENIED_MODULES) or bool(_TEST_COMPONENTS & inner)


def _denied_object(obj: Any) -> bool:
    """Whether `obj` is a listed dangerous callable or a subclass of a dangerous base."""
    if any(obj is _lookup(module, name) for module, name in DENIED_OBJECTS):
        return True
    if isinstance(obj, type):
        for module, name in DANGEROUS_BASES:
            base = _lookup(module, name)
            if isinstance(base, type) and issubclass(obj, base):
                return True
    return False


def _defined_in(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def _is_cython_unpickler(obj: Any, name: str) -> bool:
    return callable(obj) and name.rsplit(".", 1)[-1].startswith("__pyx_unpickle_")


def _numpy_rule(obj: Any, name: str) -> str | None:
    """dtype and scalar types, numpy.random generators; ufuncs and array classes held only."""
    np = sys.modules["numpy"]
    if isinstance(obj, np.ufunc):
        return HOLD
    defined = _defined_in(obj) or ""
    if not _within(defined, "numpy"):
        return None
    if _within(defined, "numpy.random") and _is_cython_unpickler(obj, name):
        return CALL
    if not isinstance(obj, type):
        return None
    if issubclass(obj, np.ndarray):  # built by _reconstruct; its constructor allocates at will
        return CALL if obj is np.ma.core.MaskedConstant else HOLD
    if issubclass(obj, np.generic | np.dtype) or _within(defined, "numpy.random"):
        return CALL
    return None


def _scipy_rule(obj: Any, name: str) -> str | None:
    """scipy.sparse matrices and arrays."""
    base = _lookup("scipy.sparse._base", "_spbase")
    if isinstance(obj, type) and isinstance(base, type) and issubclass(obj, base):
        return CALL if _within(_defined_in(obj) or "", "scipy.sparse") else None
    return None


def _sklearn_rule(obj: Any, name: str) -> str | None:
    """Classes defined in scikit-learn (incl. Cython ones), their unpicklers, metric functions."""
    defined = _defined_in(obj) or ""
    if not _within(defined, "sklearn") or _denied_module(defined):
        return None
    if isinstance(obj, type) or _is_cython_unpickler(obj, name) or name.endswith("newObj"):
        return CALL
    if isinstance(obj, types.FunctionType) and _under_any(defined, SKLEARN_FUNCTION_MODULES):
        return HOLD
    return None


PACKAGE_RULES: dict[str, Callable[[Any, str], str | None]] = {
    "numpy": _numpy_rule,
    "scipy": _scipy_rule,
    "sklearn": _sklearn_rule,
}
"""Packages whose globals are admitted by what they are, not by name."""


@dataclass(frozen=True)
class Admission:
    """An admitted global: the object to use, and whether the stream may call it."""

    obj: Any
    callable: bool


class Allowlist:
    """Which globals a pickle may use: built-in rules plus the user's trusted patterns.

    Patterns: ``"pkg.module.Name"`` or ``"pkg.module:Qualified.Name"`` trust one global
    (even one the built-in rules refuse); ``"pkg.*"`` trusts what is defined in ``pkg`` and
    its submodules, except the denied modules and dangerous callables listed here.
    """

    def __init__(self, trusted: Iterable[Trustable] = ()) -> None:
        self.patterns = tuple(Pattern.parse(item) for item in trusted)
        self._admitted: dict[tuple[str, str], Admission] = {}
        self._checked = _CheckedReconstructors(self)

    @classmethod
    def from_config(cls, trusted: Iterable[Trustable] = (), path: Path | None = None) -> Allowlist:
        """The built-in rules, the user's config file (``trusted_globals``) and `trusted`."""
        path = path or config_dir() / TRUSTED_GLOBALS_FILE
        configured = []
        for number, line in read_config_lines(path):
            try:
                configured.append(Pattern.parse(line))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}, line {number}: {exc}") from exc
        allowlist = cls(trusted)
        allowlist.patterns = (*configured, *allowlist.patterns)
        return allowlist

    def admit(self, module: str, name: str) -> Admission:
        """The global module.name if allowed, else UnsafeObjectError (nothing is imported)."""
        key = (module, name)
        if key not in self._admitted:
            self._admitted[key] = self._decide(module, name)
        return self._admitted[key]

    def may_call(self, obj: Any) -> bool:
        """Whether `obj` is a class or function that this allowlist admits as callable."""
        return self._admits(obj, require_call=True)

    def may_hold(self, obj: Any) -> bool:
        """Whether `obj` is a class or function that this allowlist admits at all."""
        return self._admits(obj, require_call=False)

    def may_wrap(self, func: Any) -> bool:
        """Whether functools.partial may wrap `func`: an admitted constructor or function.

        A partial is called by the model's own code later, with arguments the stream
        chose; classes admitted only to be held (numpy.memmap) must not be wrapped.
        """
        if isinstance(func, functools.partial):
            return self.may_wrap(func.func)
        return self.may_call(func) or (not isinstance(func, type) and self.may_hold(func))

    def _admits(self, obj: Any, *, require_call: bool) -> bool:
        module, qualname = _defined_in(obj), getattr(obj, "__qualname__", None)
        if module is None or not isinstance(qualname, str):
            return False
        try:
            admission = self.admit(module, qualname)
        except CastoreError:
            return False
        return admission.obj is obj and (admission.callable or not require_call)

    def _decide(self, module: str, name: str) -> Admission:
        full = f"{module}.{name}"
        if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(name):
            raise _refusal(full, "it is not a valid global name")
        module = canonical_module(module)
        checked = self._checked.named(module, name)
        if checked is not None:
            return Admission(checked, callable=True)
        if any(not p.wildcard and p.matches(module, name, None) for p in self.patterns):
            return Admission(_resolve(module, name, full), callable=True)
        if (module, name) in SAFE_GLOBALS:
            return Admission(_resolve(module, name, full), SAFE_GLOBALS[(module, name)] == CALL)
        return self._by_rule(module, name, full)

    def _by_rule(self, module: str, name: str, full: str) -> Admission:
        """Admit by what the object is (package rules), or by a wildcard pattern."""
        rule = PACKAGE_RULES.get(module.split(".", 1)[0])
        wildcards = [p for p in self.patterns if p.covers_module(module)]
        if (rule is None and not wildcards) or _denied_module(module):
            raise _refusal(full, "it is not on the allowlist")
        if any(_private(part) for part in name.split(".")):
            raise _refusal(full, "it reaches a private attribute")
        obj = _resolve(module, name, full)
        kind = rule(obj, name) if rule is not None else None
        if kind == HOLD:
            return Admission(obj, callable=False)
        if _denied_object(obj):
            raise _refusal(full, "it is a dangerous callable")
        if kind == CALL:
            return Admission(self._checked.substitute(obj, name), callable=True)
        if any(p.matches(module, name, _defined_in(obj)) for p in wildcards):
            return Admission(obj, callable=True)
        if wildcards:
            raise _refusal(full, f"it is defined in {_defined_in(obj)}, not in a trusted package")
        raise _refusal(full, "the allowlist admits only known safe classes from its packages")


def _private(part: str) -> bool:
    return part.startswith("__") and not part.startswith("__pyx_unpickle_")


_NUMPY_CORE = ("numpy._core", "numpy.core")
"""numpy 2 moved numpy.core to numpy._core; pickles name either."""


def canonical_module(module: str) -> str:
    """The spelling the allowlist uses for a module that older libraries named differently."""
    if _within(module, _NUMPY_CORE[1]):
        return _NUMPY_CORE[0] + module[len(_NUMPY_CORE[1]) :]
    return module


def import_module(module: str) -> types.ModuleType:
    """Import a module by its canonical name (numpy._core falls back to numpy.core)."""
    try:
        __import__(module, level=0)
    except ModuleNotFoundError:
        if not _within(module, _NUMPY_CORE[0]):
            raise
        module = _NUMPY_CORE[1] + module[len(_NUMPY_CORE[0]) :]
        __import__(module, level=0)
    return sys.modules[module]


def _refusal(full: str, reason: str) -> UnsafeObjectError:
    return UnsafeObjectError(f"the global {full} is refused: {reason}", full)


def _resolve(module: str, name: str, full: str) -> Any:
    """Import `module` and walk `name`; only classes may be walked through (no re-exports)."""
    try:
        obj: Any = import_module(module)
    except Exception as exc:
        raise DeserializationError(f"the global {full} cannot be imported: {exc}") from exc
    for depth, part in enumerate(name.split(".")):
        if depth and not isinstance(obj, type):
            raise _refusal(full, "only classes may be walked through to reach a global")
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise DeserializationError(f"the global {full} does not exist") from exc
    if isinstance(obj, types.ModuleType):
        raise _refusal(full, "it is a module")
    return obj


# -- reconstruction functions, checked ----------------------------------------------------------


def _empty(shape: Any) -> bool:
    """numpy pickles arrays as an empty array of shape (0,) whose state then fills it."""
    return shape in ((0,), [0], 0)


_BIT_GENERATOR_CTOR = ("numpy.random._pickle", "__bit_generator_ctor")


class _CheckedReconstructors:
    """Reconstruction helpers that pickles name, re-implemented to refuse abusive arguments.

    Each takes types from the stream as arguments; they are checked against the allowlist
    so that a helper cannot call (or create instances of) something the stream could not.
    """

    def __init__(self, allowlist: Allowlist) -> None:
        self._allow = allowlist
        self._named: dict[tuple[str, str], Callable[..., Any]] = {
            ("copyreg", "_reconstructor"): self.reconstructor,
            ("_codecs", "encode"): self.latin1_encode,
            ("builtins", "bytes"): self.make_bytes,
            ("builtins", "bytearray"): self.make_bytearray,
            ("functools", "partial"): self.partial,
            ("numpy._core.multiarray", "_reconstruct"): self.ndarray_reconstruct,
            ("numpy.ma.core", "_mareconstruct"): self.masked_reconstruct,
            _BIT_GENERATOR_CTOR: self.bit_generator,
            ("numpy.random._pickle", "__generator_ctor"): self.generator,
            ("numpy.random._pickle", "__randomstate_ctor"): self.random_state,
        }

    def named(self, module: str, name: str) -> Callable[..., Any] | None:
        """The checked replacement for module.name, if there is one."""
        return self._named.get((module, name))

    def substitute(self, obj: Any, name: str) -> Any:
        """`obj`, or its checked replacement when it is a helper found by rule (``newObj``)."""
        return self.new_object if name.rsplit(".", 1)[-1] == "newObj" else obj

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            raise UnsafeObjectError(f"refused a reconstruction: {what}")

    def _constructible(self, cls: object) -> bool:
        return isinstance(cls, type) and self._allow.may_call(cls)

    def partial(self, func: Any, *args: Any, **kwargs: Any) -> functools.partial[Any]:
        """functools.partial of an admitted callable (a held function, not a held class)."""
        self._require(self._allow.may_wrap(func), f"functools.partial of {func!r:.80}")
        return functools.partial(func, *args, **kwargs)

    def _array_class(self, cls: object, base: type) -> bool:
        return isinstance(cls, type) and issubclass(cls, base) and self._allow.may_hold(cls)

    def reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """copyreg._reconstructor, for admitted classes only."""
        self._require(self._constructible(cls), f"copyreg._reconstructor of {cls!r}")
        self._require(
            base is object or (self._constructible(base) and issubclass(cls, base)),
            f"copyreg._reconstructor with base {base!r}",
        )
        return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]

    def latin1_encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        """_codecs.encode as Python 2-era pickles use it: latin-1 text to bytes."""
        self._require(
            isinstance(text, str) and encoding in ("latin1", "latin-1"),
            f"_codecs.encode with encoding {encoding!r}",
        )
        return text.encode("latin-1")

    def _bytes_arguments(self, args: tuple[Any, ...], kind: str) -> None:
        """What pickles pass to bytes and bytearray: bytes, or latin-1 text; never a size."""
        self._require(
            len(args) == 0
            or (len(args) == 1 and isinstance(args[0], bytes | bytearray))
            or (len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1")),
            f"{kind}(<size or encoding>)",
        )

    def make_bytes(self, *args: Any) -> bytes:
        """bytes(...) as pickles build it (never a size, which would allocate at will)."""
        self._bytes_arguments(args, "bytes")
        return bytes(*args)

    def make_bytearray(self, *args: Any) -> bytearray:
        """bytearray(...) as pickles build it."""
        self._bytes_arguments(args, "bytearray")
        return bytearray(*args)

    def ndarray_reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        """numpy's _reconstruct, for admitted ndarray subclasses."""
        import numpy as np

        self._require(
            self._array_class(subtype, np.ndarray) and _empty(shape),
            f"numpy _reconstruct of {subtype!r} with shape {shape!r}",
        )
        return import_module("numpy._core.multiarray")._reconstruct(subtype, shape, dtype)

    def masked_reconstruct(
        self, subtype: Any, baseclass: Any, baseshape: Any, basetype: Any
    ) -> Any:
        """numpy.ma's _mareconstruct, for admitted masked-array and ndarray classes."""
        import numpy as np

        self._require(
            self._array_class(subtype, np.ma.MaskedArray)
            and self._array_class(baseclass, np.ndarray)
            and _empty(baseshape),
            f"numpy.ma _mareconstruct of {subtype!r}",
        )
        return import_module("numpy.ma.core")._mareconstruct(
            subtype, baseclass, baseshape, basetype
        )

    def new_object(self, cls: Any) -> Any:
        """scikit-learn's newObj: ``cls.__new__(cls)`` for admitted classes."""
        self._require(self._constructible(cls), f"newObj of {cls!r}")
        return cls.__new__(cls)

    def bit_generator(self, bit_generator: Any = "MT19937") -> Any:
        """numpy.random's bit generator constructor, by name or admitted class."""
        from numpy.random import BitGenerator, _pickle

        self._require(
            isinstance(bit_generator, str)
            or (self._constructible(bit_generator) and issubclass(bit_generator, BitGenerator)),
            f"numpy.random bit generator {bit_generator!r}",
        )
        return getattr(_pickle, _BIT_GENERATOR_CTOR[1])(bit_generator)

    def _from_bit_generator(self, make: Any, source: Any, ctor: Any) -> Any:
        from numpy.random import BitGenerator, _pickle

        known = (None, self._named[_BIT_GENERATOR_CTOR], getattr(_pickle, _BIT_GENERATOR_CTOR[1]))
        self._require(any(ctor is k for k in known), f"numpy.random constructor {ctor!r}")
        return make(source if isinstance(source, BitGenerator) else self.bit_generator(source))

    def generator(self, bit_generator_name: Any = "MT19937", bit_generator_ctor: Any = None) -> Any:
        """numpy.random's Generator constructor, without its callable argument."""
        from numpy.random import Generator

        return self._from_bit_generator(Generator, bit_generator_name, bit_generator_ctor)

    def random_state(
        self, bit_generator_name: Any = "MT19937", bit_generator_ctor: Any = None
    ) -> Any:
        """numpy.random's RandomState constructor, without its callable argument."""
        from numpy.random import RandomState

        return self._from_bit_generator(RandomState, bit_generator_name, bit_generator_ctor)


# -- bounded reading ---------------------------------------------------------------------------


class LimitedReader:
    """A read-only view of a binary file that counts what it reads and never reads past `size`.

    Large reads are capped by what is left, so that no length field in the stream makes
    castore allocate more than the stream holds.
    """

    def __init__(self, file: IO[bytes], size: int | None) -> None:
        self._file = file
        self.size = size
        self.position = 0

    @property
    def remaining(self) -> int | None:
        """Bytes left before `size`, or None when the size is unknown."""
        return None if self.size is None else max(self.size - self.position, 0)

    def read(self, count: int = -1) -> bytes:
        """Up to `count` bytes (all that is left if negative)."""
        left = self.remaining
        if count < 0:
            count = left if left is not None else sys.maxsize
        if left is not None:
            count = min(count, left)
        if count <= READ_PIECE:
            return self._counted(self._file.read(count))
        pieces = []
        while count > 0:
            piece = self._counted(self._file.read(min(count, READ_PIECE)))
            if not piece:
                break
            pieces.append(piece)
            count -= len(piece)
        return b"".join(pieces)

    def readline(self) -> bytes:
        """One line, including its newline."""
        left = self.remaining
        return self._counted(self._file.readline(-1 if left is None else left))

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` (straight from the file) as far as the stream allows; bytes read."""
        view = memoryview(buffer).cast("B")
        if self.remaining is not None:
            view = view[: self.remaining]
        filled = 0
        while filled < len(view):
            count = self._file.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                break
            filled += count
        self.position += filled
        return filled

    def skip(self, count: int) -> None:
        """Move `count` bytes ahead (a seek on real files)."""
        self._file.seek(count, os.SEEK_CUR)
        self.position += count

    def _counted(self, data: bytes) -> bytes:
        self.position += len(data)
        return data


# -- checks of what allowlisted classes trust ---------------------------------------------------


def check_array_state(array: Any, state: Any) -> None:
    """numpy's ndarray.__setstate__ trusts an object array's list to hold every element.

    The state must describe its data exactly: an object array needs one list item per
    element, any other array as many bytes as its shape and dtype say.
    """
    np = sys.modules["numpy"]
    if isinstance(array, np.ma.MaskedArray):
        if not (isinstance(state, tuple) and len(state) == 7):
            raise DeserializationError("a numpy masked array has malformed state")
        _, shape, dtype, fortran, data, mask, _ = state
        _check_array_parts(shape, dtype, fortran, data)
        _check_array_parts(shape, np.ma.make_mask_descr(dtype), fortran, mask)
    elif isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
        _check_array_parts(*state[1:])
    elif isinstance(state, tuple) and len(state) == 4:
        _check_array_parts(*state)
    else:
        raise DeserializationError("a numpy array has malformed state")


def _check_array_parts(shape: Any, dtype: Any, fortran: Any, data: Any) -> None:
    np = sys.modules["numpy"]
    ok = (
        isinstance(shape, tuple)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        and isinstance(dtype, np.dtype)
        and isinstance(fortran, bool)
    )
    if ok and dtype.hasobject:
        ok = isinstance(data, list) and len(data) == math.prod(shape)
    elif ok:
        ok = isinstance(data, bytes | bytearray) and len(data) == math.prod(shape) * dtype.itemsize
    if not ok:
        raise DeserializationError("a numpy array's state does not match its shape and dtype")


def _check_sklearn_tree(tree: Any) -> None:
    """scikit-learn's Cython Tree follows node links without bounds checks: check them.

    Every internal node must link to two later nodes (so walks end) and test a feature the
    tree has; every leaf must link to none. Out-of-range links would read (and could
    corrupt) memory outside the node array when the model predicts.
    """
    import numpy as np

    count = tree.node_count
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    if count < 1 or not len(left) == len(right) == len(feature) == count == len(tree.value):
        raise DeserializationError(f"a scikit-learn tree has inconsistent sizes ({count} nodes)")
    internal = left != -1
    ids = np.arange(count)[internal]
    links_ok = (
        (right[~internal] == -1).all()
        and (left[internal] > ids).all()
        and (right[internal] > ids).all()
        and (left[internal] < count).all()
        and (right[internal] < count).all()
        and (feature[internal] >= 0).all()
        and (feature[internal] < tree.n_features).all()
    )
    if not links_ok:
        raise DeserializationError("a scikit-learn tree has node links or features out of range")


ALIGNED_STRUCT = 0x80
"""numpy's NPY_ALIGNED_STRUCT dtype flag."""


def checked_dtype_state(dtype: Any, state: Any) -> tuple[Any, ...]:
    """The state to give ``dtype.__setstate__``: numpy's own state for the dtype described.

    numpy's dtype.__setstate__ trusts its input: a structured dtype whose field is not a
    dtype, a datetime without its unit, or object flags on plain bytes crash the process
    once the dtype is used. So the dtype is rebuilt from the state's parts with numpy's
    checked constructors, and only the rebuilt dtype's own state reaches __setstate__.
    """
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
        raise DeserializationError(f"a numpy dtype has malformed state {state!r:.200}")
    subarray, names, extra = state[2], state[3], state[8] if len(state) == 9 else None
    if subarray is not None:
        return sys.modules["numpy"].dtype(subarray).__reduce__()[2]
    if names is not None:
        return _with_metadata(_structured_dtype(state).__reduce__()[2], extra)
    rebuilt, metadata = _plain_dtype(dtype, state, extra)
    return _with_metadata(rebuilt.__reduce__()[2], metadata)


def _structured_dtype(state: tuple[Any, ...]) -> Any:
    """A structured dtype from pickled names and fields, through numpy.dtype(spec)."""
    names, fields, elsize, flags = state[3], state[4], state[5], state[7]
    if not (isinstance(names, tuple) and isinstance(fields, dict) and isinstance(flags, int)):
        raise DeserializationError("a numpy structured dtype has malformed fields")
    parts: list[tuple[Any, ...]] = []
    for part in [fields.get(name) for name in names]:
        if not (isinstance(part, tuple) and len(part) in (2, 3)):
            raise DeserializationError("a numpy structured dtype has malformed fields")
        parts.append(part)
    spec = {
        "names": list(names),
        "formats": [part[0] for part in parts],
        "offsets": [part[1] for part in parts],
        "titles": [part[2] if len(part) == 3 else None for part in parts],
        "itemsize": elsize,
    }
    return sys.modules["numpy"].dtype(spec, align=bool(flags & ALIGNED_STRUCT))


def _plain_dtype(dtype: Any, state: tuple[Any, ...], extra: Any) -> tuple[Any, Any]:
    """A scalar dtype: the one the stream constructed, with the state's byte order and unit.

    Returns the dtype and the user metadata to keep.
    """
    byteorder, fields, elsize = state[1], state[4], state[5]
    if byteorder not in ("<", ">", "|", "=") or fields is not None:
        raise DeserializationError(f"a numpy dtype has inconsistent state {state!r:.200}")
    if elsize not in (-1, dtype.itemsize):
        raise DeserializationError(f"a numpy dtype has inconsistent size {elsize!r:.50}")
    rebuilt = dtype if byteorder in ("|", "=") else dtype.newbyteorder(byteorder)
    if dtype.kind not in "mM":
        return rebuilt, extra
    metadata, unit = extra if isinstance(extra, tuple) and len(extra) == 2 else (None, None)
    if not (isinstance(unit, tuple) and len(unit) == 4 and isinstance(unit[0], bytes)):
        raise DeserializationError("a numpy datetime dtype lacks its unit")
    name, count = unit[0].decode("ascii"), unit[1]
    if name != "generic":
        rebuilt = sys.modules["numpy"].dtype(f"{rebuilt.str}[{int(count)}{name}]")
    return rebuilt, metadata


def _with_metadata(state: tuple[Any, ...], metadata: Any) -> tuple[Any, ...]:
    """A dtype state carrying the user's metadata dict (numpy's version 4)."""
    if metadata is None:
        return state
    if len(state) == 9 and isinstance(state[8], tuple):  # datetime: (metadata, unit)
        return (*state[:8], (dict(metadata), state[8][1]))
    return (4, *state[1:8], dict(metadata))


def _check_sklearn_binary_tree(tree: Any) -> None:
    """scikit-learn's KDTree and BallTree index their data and nodes without bounds checks.

    Sample indices must lie within the data, node ranges within the samples, and every
    inner node must have its two children (2i+1, 2i+2) in the node array.
    """
    import numpy as np

    state = tree.__getstate__()
    n_levels, n_nodes = state[5], state[6]  # indexed first: a short state fails here
    data, indices, nodes, bounds = state[:4]
    samples = len(data)
    weights = state[12] if len(state) > 12 else None
    ok = (
        data.ndim == 2
        and indices.ndim == 1
        and len(indices) == samples
        and bool(((indices >= 0) & (indices < samples)).all())
        and 0 < n_levels <= 64
        and len(nodes) == n_nodes == 2**n_levels - 1
        and bounds.ndim == 3
        and bounds.shape[1:] == (n_nodes, data.shape[1])
        and (weights is None or len(weights) == samples)
    )
    if ok:
        start, end = nodes["idx_start"], nodes["idx_end"]
        inner = np.flatnonzero(nodes["is_leaf"] == 0)
        ok = bool(((start >= 0) & (start <= end) & (end <= samples)).all()) and bool(
            (2 * inner + 2 < n_nodes).all()
        )
    if not ok:
        raise DeserializationError("a scikit-learn KDTree or BallTree has indices out of range")


def _check_scipy_sparse(matrix: Any) -> None:
    """scipy's compiled sparse routines trust index arrays: check them with scipy itself."""
    fmt = getattr(matrix, "format", None)
    if hasattr(matrix, "check_format"):  # csr, csc, bsr
        _check_index_pointers(matrix)
        matrix.check_format(full_check=True)
    elif fmt == "coo":
        matrix._check()
    elif fmt == "dia":
        data, offsets = matrix.data, matrix.offsets
        if not (data.ndim == 2 and offsets.ndim == 1 and len(offsets) == len(data)):
            raise DeserializationError("a scipy dia matrix has inconsistent diagonals")
    elif fmt == "lil":
        _check_lil(matrix)


def _check_index_pointers(matrix: Any) -> None:
    """What scipy's check_format skips when the pointers claim no entries (a negative nnz)."""
    import numpy as np

    pointers, indices = np.asarray(matrix.indptr), np.asarray(matrix.indices)
    ok = (
        pointers.ndim == 1
        and len(pointers) > 0
        and pointers[0] == 0
        and pointers[-1] == len(indices)
        and bool((np.diff(pointers) >= 0).all())
        and len(matrix.data) == len(indices)
    )
    if not ok:
        raise DeserializationError("a scipy sparse matrix has inconsistent index pointers")


def _check_lil(matrix: Any) -> None:
    rows, values = matrix.rows, matrix.data
    columns = matrix.shape[1]
    ok = len(rows) == len(values) == matrix.shape[0] and all(
        isinstance(row, list)
        and isinstance(value, list)
        and len(row) == len(value)
        and all(isinstance(c, int) and 0 <= c < columns for c in row)
        for row, value in zip(rows, values, strict=True)
    )
    if not ok:
        raise DeserializationError("a scipy lil matrix has inconsistent rows")


def check_loaded(obj: Any) -> None:
    """Check an object of a class whose compiled code trusts its state (see POST_LOAD_CHECKS)."""
    check = POST_LOAD_CHECKS.get((type(obj).__module__, type(obj).__qualname__))
    if check is not None:
        check(obj)
    elif _is_sparse(obj):
        _check_scipy_sparse(obj)


def needs_check(obj: Any) -> bool:
    """Whether `check_loaded` has anything to check on `obj`."""
    return (type(obj).__module__, type(obj).__qualname__) in POST_LOAD_CHECKS or _is_sparse(obj)


def _is_sparse(obj: Any) -> bool:
    base = _lookup("scipy.sparse._base", "_spbase")
    return isinstance(base, type) and isinstance(obj, base)


def _check_hgb_predictor(predictor: Any) -> None:
    """HistGradientBoosting's TreePredictor follows node links and bitset indices unchecked."""
    import numpy as np

    nodes = predictor.nodes
    inner = ~nodes["is_leaf"].astype(bool)
    ids = np.flatnonzero(inner)
    left, right = nodes["left"][inner], nodes["right"][inner]
    categorical = nodes["bitset_idx"][inner][nodes["is_categorical"][inner].astype(bool)]
    bitsets = min(len(predictor.raw_left_cat_bitsets), len(predictor.binned_left_cat_bitsets))
    ok = (
        len(nodes) >= 1
        and bool(((left > ids) & (left < len(nodes)) & (right > ids) & (right < len(nodes))).all())
        and bool((nodes["feature_idx"][inner] >= 0).all())
        and bool(((categorical >= 0) & (categorical < bitsets)).all())
    )
    if not ok:
        raise DeserializationError(
            "a scikit-learn HistGradientBoosting tree has links out of range"
        )


def _check_hist_gradient_boosting(estimator: Any) -> None:
    """Every tree of a HistGradientBoosting model tests only features the model has."""
    features = getattr(estimator, "n_features_in_", None)
    found = _lookup("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor")
    predictor: type[Any] | None = found if isinstance(found, type) else None
    for trees in getattr(estimator, "_predictors", None) or []:
        for tree in trees if isinstance(trees, list) else []:
            if predictor is not None and isinstance(tree, predictor):
                nodes = tree.nodes
                tested = nodes["feature_idx"][~nodes["is_leaf"].astype(bool)]
                if not isinstance(features, int) or bool((tested >= features).any()):
                    raise DeserializationError(
                        "a scikit-learn HistGradientBoosting tree tests a feature out of range"
                    )


_HGB = "sklearn.ensemble._hist_gradient_boosting"
_BINARY_TREES = [
    (f"sklearn.neighbors._{module}", f"{name}{bits}")
    for module, name in (("kd_tree", "KDTree"), ("ball_tree", "BallTree"))
    for bits in ("", "32", "64")
]
POST_LOAD_CHECKS: dict[tuple[str, str], Callable[[Any], None]] = {
    ("sklearn.tree._tree", "Tree"): _check_sklearn_tree,
    **{key: _check_sklearn_binary_tree for key in _BINARY_TREES},
    (f"{_HGB}.predictor", "TreePredictor"): _check_hgb_predictor,
    **{
        (f"{_HGB}.gradient_boosting", f"HistGradientBoosting{kind}"): _check_hist_gradient_boosting
        for kind in ("Classifier", "Regressor")
    },
}
"""Checks run on objects of these classes once their state is set: allowlisted classes whose
compiled code trusts that state. Other such classes are listed in docs/SECURITY.md."""


# -- the restricted unpickler ------------------------------------------------------------------

_SEQUENCES = (list, collections.deque)
_NOT_INSTANCES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


if TYPE_CHECKING:

    class _PurePythonUnpickler(pickle._Unpickler):
        """What pickle._Unpickler defines and typeshed leaves out: the opcode handlers
        RestrictedUnpickler overrides and calls through super()."""

        def _instantiate(self, klass: Any, args: list[Any]) -> None: ...
        def load_build(self) -> None: ...
        def load_append(self) -> None: ...
        def load_appends(self) -> None: ...
        def load_setitem(self) -> None: ...
        def load_setitems(self) -> None: ...
        def load_additems(self) -> None: ...

else:
    _PurePythonUnpickler = pickle._Unpickler


class _Unframer(Protocol):
    """pickle's (undeclared) _Unframer, as far as load_bytearray8 uses it."""

    current_frame: io.BytesIO | None

    def readinto(self, buffer: bytearray) -> int: ...


class RestrictedUnpickler(_PurePythonUnpickler):
    """Python's own unpickler, with every global, call and state change checked.

    Only admitted globals resolve; only globals admitted as callable may be called or
    instantiated; state goes only to instances, once (items only to dicts, lists and
    sets), never to classes, modules or functions; objects whose compiled code trusts
    their state are checked; no length field allocates beyond the stream.
    """

    # State pickle._Unpickler sets in __init__ and load() that typeshed does not declare.
    proto: int
    fix_imports: bool
    stack: list[Any]
    metastack: list[list[Any]]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    _unframer: _Unframer

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = pickle._Unpickler.dispatch.copy()

    def __init__(self, source: LimitedReader, allowlist: Allowlist) -> None:
        super().__init__(source)
        self.source = source
        self.allowlist = allowlist
        self._callables: dict[int, Any] = {}
        self._built: dict[int, Any] = {}
        self._unchecked: dict[int, Any] = {}

    def load(self) -> Any:
        """Unpickle, then check what compiled code will trust (see POST_LOAD_CHECKS)."""
        obj = super().load()
        for created in self._unchecked.values():
            check_loaded(created)
        return obj

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global, or UnsafeObjectError before anything is imported."""
        if self.proto < 3 and self.fix_imports:
            module, name = _python2_name(module, name)
        admission = self.allowlist.admit(module, name)
        if admission.callable:
            self._callables[id(admission.obj)] = admission.obj
        return admission.obj

    def get_extension(self, code: int) -> None:
        """EXT opcodes: always through find_class, never through copyreg's cache."""
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise DeserializationError(f"unregistered pickle extension code {code}")
        self.append(self.find_class(*key))

    def _require_callable(self, func: Any) -> None:
        if self._callables.get(id(func)) is not func:
            what = getattr(func, "__qualname__", type(func).__qualname__)
            raise UnsafeObjectError(
                f"the stream calls {what}, which the allowlist does not admit as callable"
            )

    def _require_target(self, target: Any, kinds: type | tuple[type, ...], action: str) -> None:
        """State may only go to instances (to dicts, lists or sets for items)."""
        if not isinstance(target, kinds) or isinstance(target, _NOT_INSTANCES):
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafeObjectError(f"the stream {action} {what}, which it may not")

    def _created(self, obj: Any) -> Any:
        """Remember new objects of checked classes, to check them once their state is set."""
        if needs_check(obj):
            self._unchecked[id(obj)] = obj
        return obj

    def load_reduce(self) -> None:
        """REDUCE: call an admitted callable."""
        args = self.stack.pop()
        self._require_callable(self.stack[-1])
        self.stack[-1] = self._created(self.stack[-1](*args))

    def load_newobj(self) -> None:
        """NEWOBJ: ``cls.__new__(cls, *args)`` for an admitted class."""
        args = self.stack.pop()
        cls = self.stack.pop()
        self._require_callable(cls)
        self.append(self._created(cls.__new__(cls, *args)))

    def load_newobj_ex(self) -> None:
        """NEWOBJ_EX: ``cls.__new__(cls, *args, **kwargs)`` for an admitted class."""
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._require_callable(cls)
        self.append(self._created(cls.__new__(cls, *args, **kwargs)))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        self._require_callable(klass)
        super()._instantiate(klass, args)
        self._created(self.stack[-1])

    def load_build(self) -> None:
        """BUILD: set the state of an instance, once (never of a class or module)."""
        target = self.stack[-2]
        self._require_target(target, object, "sets the state of")
        if id(target) in self._built:
            raise UnsafeObjectError("the stream sets the state of an object twice")
        self._built[id(target)] = target
        dtype, ndarray = _lookup("numpy", "dtype"), _lookup("numpy", "ndarray")
        if dtype is not None and isinstance(target, dtype):
            self.stack[-1] = checked_dtype_state(target, self.stack[-1])
        elif ndarray is not None and isinstance(target, ndarray):
            check_array_state(target, self.stack[-1])
        elif isinstance(target, functools.partial):
            self._check_partial_state(self.stack[-1])
        super().load_build()
        self.stack[-1] = self.built(self.stack[-1])

    def _check_partial_state(self, state: Any) -> None:
        """A partial's state replaces its function: the same rule as for constructing one."""
        ok = (
            isinstance(state, tuple)
            and len(state) == 4
            and self.allowlist.may_wrap(state[0])
            and isinstance(state[1], tuple)
            and isinstance(state[2], dict | None)
            and isinstance(state[3], dict | None)
        )
        if not ok:
            raise UnsafeObjectError("the stream gives a functools.partial a refused function")

    def built(self, obj: Any) -> Any:
        """Hook: check (and possibly replace) an object once its state is set."""
        check_loaded(obj)
        self._unchecked.pop(id(obj), None)
        return obj

    def _marked_target(self) -> Any:
        """The object below the topmost MARK: what APPENDS, SETITEMS and ADDITEMS change."""
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def load_append(self) -> None:
        """APPEND, to a list or deque only."""
        self._require_target(self.stack[-2], _SEQUENCES, "appends to")
        super().load_append()

    def load_appends(self) -> None:
        """APPENDS, to a list or deque only."""
        self._require_target(self._marked_target(), _SEQUENCES, "appends to")
        super().load_appends()

    def load_setitem(self) -> None:
        """SETITEM, on a dict only (never an array another object trusts)."""
        self._require_target(self.stack[-3], dict, "sets an item of")
        super().load_setitem()

    def load_setitems(self) -> None:
        """SETITEMS, on a dict only."""
        self._require_target(self._marked_target(), dict, "sets items of")
        super().load_setitems()

    def load_additems(self) -> None:
        """ADDITEMS, to a set only."""
        self._require_target(self._marked_target(), set, "adds items to")
        super().load_additems()

    def load_bytearray8(self) -> None:
        """BYTEARRAY8, allocated only once the stream is known to hold that many bytes.

        Outside pickle's frames (where large buffers are written) it is read straight
        into the new bytearray.
        """
        (length,) = struct.unpack("<Q", self.read(8))
        frame = self._unframer.current_frame
        buffered = 0 if frame is None else len(frame.getbuffer()) - frame.tell()
        left = self.source.remaining
        if left is not None and length > left + buffered:
            raise DeserializationError(
                f"the stream declares a bytearray of {length} bytes but holds only "
                f"{left + buffered} more"
            )
        data = bytearray(length)
        if buffered:
            self._unframer.readinto(data)
        else:
            self._unframer.current_frame = None
            if self.source.readinto(data) != length:
                data = data[:0]
        if len(data) != length:
            raise DeserializationError("the stream ends inside a bytearray")
        self.append(data)

    for _opcode, _method in (
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.BUILD, load_build),
        (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends),
        (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems),
        (pickle.ADDITEMS, load_additems),
        (pickle.BYTEARRAY8, load_bytearray8),
    ):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


def _python2_name(module: str, name: str) -> tuple[str, str]:
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# -- joblib ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayHeader:
    """What a joblib NumpyArrayWrapper says about the array bytes that follow it, checked."""

    subclass: type
    shape: tuple[int, ...]
    fortran: bool
    dtype: Any
    aligned: bool
    allow_mmap: bool

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of array data in the stream."""
        return self.count * self.dtype.itemsize

    @classmethod
    def of(cls, wrapper: Any) -> ArrayHeader:
        """Validate a wrapper's state: every field comes from the untrusted stream."""
        import numpy as np

        state = vars(wrapper)
        shape, dtype, subclass = state.get("shape"), state.get("dtype"), state.get("subclass")
        alignment = state.get("numpy_array_alignment_bytes")
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise DeserializationError(f"a joblib array has a malformed shape {shape!r}")
        if not isinstance(dtype, np.dtype):
            raise DeserializationError(f"a joblib array has a malformed dtype {dtype!r}")
        if not (isinstance(subclass, type) and issubclass(subclass, np.ndarray)):
            raise DeserializationError(f"a joblib array has a malformed class {subclass!r}")
        if state.get("order") not in ("C", "F") or not isinstance(alignment, int | None):
            raise DeserializationError("a joblib array has a malformed order or alignment")
        return cls(
            subclass=subclass,
            shape=tuple(int(n) for n in shape),
            fortran=state["order"] == "F",
            dtype=dtype,
            aligned=alignment is not None,
            allow_mmap=state.get("allow_mmap") is True,
        )


class JoblibUnpickler(RestrictedUnpickler):
    """joblib's format: a pickle in which each NumpyArrayWrapper is followed by array bytes.

    Arrays are read here rather than by joblib, so that their sizes are checked against
    the stream before anything is allocated, and object arrays (a nested pickle) go
    through the same restrictions.
    """

    def __init__(
        self,
        source: LimitedReader,
        allowlist: Allowlist,
        *,
        path: str | None = None,
        mmap_mode: str | None = None,
    ) -> None:
        super().__init__(source, allowlist)
        self._path = path
        self._mmap_mode = mmap_mode if path is not None else None

    def built(self, obj: Any) -> Any:
        """Replace a NumpyArrayWrapper by the array that follows it in the stream."""
        wrapper = _lookup("joblib.numpy_pickle", "NumpyArrayWrapper")
        if wrapper is None or type(obj) is not wrapper:
            return super().built(obj)
        import numpy as np

        header = ArrayHeader.of(obj)
        if header.dtype.hasobject:
            array = self._object_array()
        elif self._mmap_mode is not None and header.allow_mmap:
            array = self._mapped_array(header)
        else:
            array = self._read_array(header)
        if header.subclass not in (np.ndarray, np.memmap):
            array = array.view(header.subclass)
        return array

    def _object_array(self) -> Any:
        import numpy as np

        array = RestrictedUnpickler(self.source, self.allowlist).load()
        if not isinstance(array, np.ndarray):
            raise DeserializationError("a joblib object array holds no array")
        return array

    def _skip_padding(self, header: ArrayHeader) -> None:
        if header.aligned:
            padding = self.source.read(1)
            if len(padding) != 1 or len(self.source.read(padding[0])) != padding[0]:
                raise DeserializationError("the stream ends inside an array's padding")

    def _check_size(self, header: ArrayHeader) -> None:
        left = self.source.remaining
        if left is not None and header.nbytes > left:
            raise DeserializationError(
                f"an array of shape {header.shape} needs {header.nbytes} bytes but the stream "
                f"holds only {left} more"
            )

    def _read_array(self, header: ArrayHeader) -> Any:
        import numpy as np

        self._skip_padding(header)
        self._check_size(header)
        data: bytes | bytearray | np.ndarray[Any, Any]
        if self.source.remaining is None:
            data = bytearray(self.source.read(header.nbytes))
            flat = np.frombuffer(data, dtype=header.dtype, count=len(data) // header.dtype.itemsize)
        else:
            flat = np.empty(header.count, dtype=header.dtype)
            data = flat.view(np.uint8) if header.nbytes else b""
            self.source.readinto(data)
        if flat.size * header.dtype.itemsize != header.nbytes or len(data) != header.nbytes:
            raise DeserializationError("the stream ends inside an array")
        array = (
            flat.reshape(header.shape[::-1]).transpose()
            if header.fortran
            else flat.reshape(header.shape)
        )
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def _mapped_array(self, header: ArrayHeader) -> Any:
        from joblib.backports import make_memmap

        self._skip_padding(header)
        self._check_size(header)
        offset = self.source.position
        array = make_memmap(
            self._path,
            dtype=header.dtype,
            shape=header.shape,
            order="F" if header.fortran else "C",
            mode="r+" if self._mmap_mode == "w+" else self._mmap_mode,
            offset=offset,
        )
        self.source.skip(header.nbytes)
        return array


# -- entry points ------------------------------------------------------------------------------

PROTO = pickle.PROTO[0]


def _stream_size(file: IO[bytes], size: int | None) -> int | None:
    """Bytes left in `file`: `size` if given, else from the file system when it is a file."""
    if size is not None:
        return size
    try:
        return os.fstat(file.fileno()).st_size - file.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _hint(global_name: str | None) -> str:
    """What a user who trusts the author of a refused stream can do."""
    allow = (
        f"allow the global with trusted=[{global_name!r}] (or a line in "
        f"{config_dir() / TRUSTED_GLOBALS_FILE}), "
        if global_name
        else ""
    )
    return (
        f"nothing from it was run. If you trust whoever saved it, {allow}have the version "
        "signed by a key you trust, or load it with allow_unsafe=True"
    )


def _run(unpickler: RestrictedUnpickler, where: str) -> Any:
    """Unpickle; refusals name `where`, and every other failure becomes a castore error."""
    try:
        return unpickler.load()
    except UnsafeObjectError as exc:
        message = f"{where}: {exc}; {_hint(exc.global_name)}"
        raise UnsafeObjectError(message, exc.global_name) from None
    except DeserializationError as exc:
        raise DeserializationError(f"{where}: {exc}") from exc
    except CastoreError:
        raise
    except Exception as exc:  # the stream is untrusted: any failure is a malformed object
        raise DeserializationError(
            f"{where} could not be unpickled: {type(exc).__name__}: {exc}"
        ) from exc


def load_pickle(
    file: IO[bytes], allowlist: Allowlist, *, size: int | None = None, where: str = "the stream"
) -> Any:
    """Unpickle a pickle or cloudpickle stream, admitting only what `allowlist` allows."""
    source = LimitedReader(file, _stream_size(file, size))
    return _run(RestrictedUnpickler(source, allowlist), where)


def load_joblib(
    file: IO[bytes],
    allowlist: Allowlist,
    *,
    size: int | None = None,
    path: str | None = None,
    mmap_mode: str | None = None,
    where: str = "the stream",
) -> Any:
    """Load an uncompressed joblib stream, admitting only what `allowlist` allows.

    With `path` (a local file holding the stream) and `mmap_mode`, arrays are memory-mapped.
    """
    peek = getattr(file, "peek", None)
    if peek is not None and peek(1)[:1] not in (bytes([PROTO]), b""):
        raise DeserializationError(
            f"{where} is not an uncompressed joblib stream (castore never writes compressed "
            "ones): the safe loader refuses it; load it with allow_unsafe=True if you trust it"
        )
    source = LimitedReader(file, _stream_size(file, size))
    return _run(JoblibUnpickler(source, allowlist, path=path, mmap_mode=mmap_mode), where)
