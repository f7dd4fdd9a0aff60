"""Admission: which globals a stream may name, and what it may do with each.

The default policy admits classes whose instances are data (containers, numbers, dates,
numpy dtypes, arrays and random generators, scipy sparse matrices, scikit-learn's
classes) and checked reconstruction helpers. It admits no function, method or partial:
objects that carry code need the user's trust (`trusted=`, the ``trusted_globals`` file)
or a trusted signature. Nothing about the policy comes from the artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castore.errors import CastoreError, InvalidInputError
from castore.safety import audit
from castore.safety.names import (
    DOTTED,
    Pattern,
    Trustable,
    canonical_module,
    defined_in,
    import_module,
    lookup,
    refusal,
    resolve,
    under_any,
    within,
)
from castore.safety.reconstructors import ARGUMENT_CHECKS, CheckedReconstructors
from castore.trust.userconfig import config_dir, read_config_lines

TRUSTED_GLOBALS_FILE = "trusted_globals"


def trusted_globals_path() -> Path:
    """The user's trusted globals: one pattern a line (see `Allowlist`), # comments."""
    return config_dir() / TRUSTED_GLOBALS_FILE


@dataclass(frozen=True)
class Admission:
    """An admitted global: the object the stream gets, and what the stream may do with it."""

    obj: Any
    callable: bool
    """The stream may call it (REDUCE, NEWOBJ, INST, OBJ)."""
    value: bool = False
    """The loaded object may hold it (type tokens such as ``numpy.float64``, trusted globals)."""
    reconstructor: bool = False
    """A checked reconstruction helper: its arguments may name admitted classes."""
    trusted: bool = False
    """Admitted by the user's trust rather than by the built-in rules."""

    @property
    def use(self) -> str:
        """How the stream may use it: "called" if it may call it, else "held" (a value the
        loaded object may hold, or an argument of checked helpers)."""
        return "called" if self.callable else "held"

    @property
    def reason(self) -> str:
        """Why it is admitted, in words."""
        if self.trusted:
            return "you trust it (trusted= or trusted_globals): it may be called and held"
        if self.reconstructor:
            return "a checked reconstruction helper"
        if self.callable:
            return "a class whose instances are data"
        if self.value:
            return "a type token or constant the loaded object may hold"
        return "named only as an argument of checked helpers"

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse arguments this constructor's checks reject (builtin and stdlib classes)."""
        key = (getattr(self.obj, "__module__", None), getattr(self.obj, "__qualname__", None))
        check = ARGUMENT_CHECKS.get(key) if isinstance(self.obj, type) else None  # type: ignore[arg-type]
        if check is not None and not self.trusted:
            check(args, kwargs)


_BUILTIN_TYPES: tuple[str, ...] = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "str",
    "int",
    "float",
)
_BUILTIN_TYPES += ("complex", "bool", "slice", "object", "bytes", "bytearray")
_CONSTANTS = ("Ellipsis", "NotImplemented")
_COLLECTIONS = ("OrderedDict", "defaultdict", "deque", "Counter")
_DATETIME = ("datetime", "date", "time", "timedelta", "timezone")
SAFE_GLOBALS: dict[tuple[str, str], tuple[bool, bool]] = {
    **{("builtins", name): (True, True) for name in _BUILTIN_TYPES},
    **{("builtins", name): (False, True) for name in _CONSTANTS},
    **{("collections", n): (True, False) for n in _COLLECTIONS},
    **{("datetime", n): (True, False) for n in _DATETIME},
    ("decimal", "Decimal"): (True, False),
    ("fractions", "Fraction"): (True, False),
    ("uuid", "UUID"): (True, False),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): (True, False),
}  # fmt: skip
"""Globals admitted by exact name: (may be called, may be held). Builtin types are both:
they are the type tokens of data (``defaultdict(list)``, ``dtype=float``)."""

PARTIAL_FUNCTIONS = frozenset({("sklearn.utils.validation", "check_array")})
"""The only functions a stream may name: as the function of a checked functools.partial
(HistGradientBoosting's categorical preprocessing holds ``partial(check_array, ...)``)."""

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
    "sklearn.experimental", "sklearn.callback",
)  # fmt: skip
"""Modules (and their submodules) never admitted by a rule or a wildcard pattern (the
exact names in SAFE_GLOBALS and the checked reconstructors aside)."""

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

VETTED_LOOKUPS = (
    ("numpy.rec", "recarray"), ("numpy", "record"),
    ("sklearn.frozen._frozen", "FrozenEstimator"),
    ("sklearn.utils._metadata_requests", "MetadataRequest"),
)  # fmt: skip
"""Classes with their own ``__getattr__`` or ``__getattribute__`` that rules may admit:
each answers only from fields, a wrapped estimator or method names, never from keys the
stream chose freely (unlike sklearn's Bunch, whose keys, ``__array_interface__`` too,
become attributes that numpy reads)."""

CODE_MODULES = ("cloudpickle", "dill", "types", "functools", "builtins", "copyreg")
"""Where the globals of functions and classes pickled by value come from."""


def denied_module(module: str) -> bool:
    """Whether no rule or wildcard may admit anything from `module`."""
    inner = set(module.split(".")[1:])  # test suites inside packages, e.g. numpy.tests
    return under_any(module, DENIED_MODULES) or bool(_TEST_COMPONENTS & inner)


def _denied_object(obj: Any) -> bool:
    """Whether `obj` is a listed dangerous callable or a subclass of a dangerous base."""
    if any(obj is lookup(module, name) for module, name in DENIED_OBJECTS):
        return True
    if isinstance(obj, type):
        for module, name in DANGEROUS_BASES:
            base = lookup(module, name)
            if isinstance(base, type) and issubclass(obj, base):
                return True
    return False


def _answers_lookups(obj: Any) -> bool:
    """Whether `obj` is a class whose own code answers attribute lookups, and is not vetted."""
    if not isinstance(obj, type) or any(obj is lookup(*key) for key in VETTED_LOOKUPS):
        return False
    return any(
        "__getattr__" in vars(base) or "__getattribute__" in vars(base)
        for base in obj.__mro__
        if base.__module__ not in ("builtins", "collections")
    )


def _is_cython_unpickler(obj: Any, name: str) -> bool:
    return callable(obj) and name.rsplit(".", 1)[-1].startswith("__pyx_unpickle_")


# A rule returns an Admission, or None to refuse; `checked` turns helpers into checked ones.
Rule = Callable[[Any, str, CheckedReconstructors], Admission | None]


def _numpy_rule(obj: Any, name: str, checked: CheckedReconstructors) -> Admission | None:
    """dtypes; scalar types as type tokens; array and random classes for reconstructors."""
    np = import_module("numpy")
    module = defined_in(obj) or ""
    if not within(module, "numpy") or not isinstance(obj, type):
        if within(module, "numpy.random") and _is_cython_unpickler(obj, name):
            return Admission(checked.cython_unpickler(obj), callable=True, reconstructor=True)
        return None
    if obj is np.dtype:
        return Admission(obj, callable=True)
    if issubclass(obj, np.generic):
        return Admission(obj, callable=False, value=True)
    if obj is lookup("numpy.ma.core", "MaskedConstant"):  # np.ma would import numpy.ma
        return Admission(obj, callable=True)
    if issubclass(obj, np.ndarray) or within(module, "numpy.random"):
        return Admission(obj, callable=False)  # named by _reconstruct and the random ctors
    return None


def _scipy_rule(obj: Any, name: str, checked: CheckedReconstructors) -> Admission | None:
    """scipy.sparse matrices and arrays."""
    base = lookup("scipy.sparse._base", "_spbase")
    if isinstance(obj, type) and isinstance(base, type) and issubclass(obj, base):
        return (
            Admission(obj, callable=True) if within(defined_in(obj) or "", "scipy.sparse") else None
        )
    return None


def _sklearn_rule(obj: Any, name: str, checked: CheckedReconstructors) -> Admission | None:
    """Classes defined in scikit-learn, and the Cython helpers they pickle with, checked."""
    module = defined_in(obj) or ""
    if not within(module, "sklearn") or denied_module(module):
        return None
    if isinstance(obj, type):
        return Admission(obj, callable=True)
    if _is_cython_unpickler(obj, name):
        return Admission(checked.cython_unpickler(obj), callable=True, reconstructor=True)
    if name.rsplit(".", 1)[-1] == "newObj":
        return Admission(checked.new_object, callable=True, reconstructor=True)
    return None


PACKAGE_RULES: dict[str, Rule] = {
    "numpy": _numpy_rule,
    "scipy": _scipy_rule,
    "sklearn": _sklearn_rule,
}
"""Packages whose globals are admitted by what they are, not by name."""

POLICY_PACKAGES: tuple[str, ...] = (
    "numpy",
    "scipy",
    "sklearn",
    "joblib",
    "collections",
    "datetime",
    "decimal",
)
POLICY_PACKAGES += ("fractions", "uuid", "copyreg", "_codecs", "threadpoolctl", "encodings")
"""Packages whose modules the default policy may import while loading."""


class Allowlist:
    """Which globals a pickle may use: built-in rules plus the user's trusted patterns.

    Patterns: ``"pkg.module.Name"`` or ``"pkg.module:Qualified.Name"`` trust one global
    (even one the built-in rules refuse); ``"pkg.*"`` trusts what is defined in ``pkg`` and
    its submodules, except the denied modules and dangerous callables listed here.
    """

    def __init__(self, trusted: Iterable[Trustable] = ()) -> None:
        self.patterns = tuple(Pattern.parse(item) for item in trusted)
        self._admitted: dict[tuple[str, str], Admission] = {}
        self.checked = CheckedReconstructors(self)

    @classmethod
    def from_config(cls, trusted: Iterable[Trustable] = (), path: Path | None = None) -> Allowlist:
        """The built-in rules, the user's config file (``trusted_globals``) and `trusted`."""
        path = path or trusted_globals_path()
        configured = []
        for number, line in read_config_lines(path):
            try:
                configured.append(Pattern.parse(line))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}, line {number}: {exc}") from exc
        allowlist = cls(trusted)
        allowlist.patterns = (*configured, *allowlist.patterns)
        return allowlist

    def import_roots(self) -> tuple[str, ...]:
        """Packages whose not-yet-imported modules a load may import (see castore.safety.audit)."""
        return (*POLICY_PACKAGES, *(pattern.root for pattern in self.patterns))

    def admit(self, module: str, name: str) -> Admission:
        """The global module.name if allowed, else UnsafeObjectError."""
        key = (module, name)
        if key not in self._admitted:
            self._admitted[key] = self._decide(module, name)
        return self._admitted[key]

    def admission_of(self, obj: Any) -> Admission | None:
        """How `obj` (a class or function) is admitted under its own name, if it is."""
        module, qualname = defined_in(obj), getattr(obj, "__qualname__", None)
        if module is None or not isinstance(qualname, str):
            return None
        try:
            admission = self.admit(module, qualname)
        except CastoreError:
            return None
        return admission if admission.obj is obj else None

    def _decide(self, module: str, name: str) -> Admission:
        full = f"{module}.{name}"
        if not DOTTED.fullmatch(module) or not DOTTED.fullmatch(name):
            raise refusal(full, "it is not a valid global name")
        module = canonical_module(module)
        if any(not p.wildcard and p.matches(module, name, None) for p in self.patterns):
            obj = self._resolve(module, name, full)
            return Admission(obj, callable=True, value=True, trusted=True)
        checked = self.checked.named(module, name)
        if checked is not None:
            return Admission(checked, callable=True, reconstructor=True)
        if (module, name) in PARTIAL_FUNCTIONS:
            return Admission(self._resolve(module, name, full), callable=False)
        if (module, name) in SAFE_GLOBALS:
            call, value = SAFE_GLOBALS[(module, name)]
            return Admission(self._resolve(module, name, full), callable=call, value=value)
        return self._by_rule(module, name, full)

    def _resolve(self, module: str, name: str, full: str) -> Any:
        with audit.importing():
            return resolve(module, name, full, import_module)

    def _by_rule(self, module: str, name: str, full: str) -> Admission:
        """Admit by what the object is (package rules), or by a wildcard pattern."""
        rule = PACKAGE_RULES.get(module.split(".", 1)[0])
        wildcards = [p for p in self.patterns if p.covers_module(module)]
        if (rule is None and not wildcards) or denied_module(module):
            raise refusal(full, _not_listed(module))
        if any(_private(part) for part in name.split(".")):
            raise refusal(full, "it reaches a private attribute")
        obj = self._resolve(module, name, full)
        admission = rule(obj, name, self.checked) if rule is not None else None
        if admission is not None and _answers_lookups(obj):
            raise refusal(
                full, "its class answers attribute lookups itself, so its data becomes attributes"
            )
        if admission is not None and not admission.callable:
            return admission  # named only as an argument of checked reconstructors
        if _denied_object(obj):
            raise refusal(full, "it is a dangerous callable")
        if admission is not None:
            return admission
        if any(p.matches(module, name, defined_in(obj)) for p in wildcards):
            return Admission(obj, callable=True, value=True, trusted=True)
        if wildcards:
            raise refusal(full, f"it is defined in {defined_in(obj)}, not in a trusted package")
        if callable(obj) and not isinstance(obj, type):
            raise refusal(
                full, "it is a function, and a loaded object holds no code unless trusted"
            )
        raise refusal(full, "the default policy admits only known data classes from its packages")


def _not_listed(module: str) -> str:
    if under_any(module, ("cloudpickle", "dill")):
        return "it rebuilds code pickled by value, which runs when loaded"
    return "it is not on the allowlist"


def _private(part: str) -> bool:
    return part.startswith("__") and not part.startswith("__pyx_unpickle_")
