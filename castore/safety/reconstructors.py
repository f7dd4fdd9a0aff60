"""Constructors, checked: what each admitted class or helper may be called with.

Builtin and standard-library constructors take plain values only (a container passed to
``dict(x)`` must be a real dict, list or tuple, never an instance whose methods C code
would call). Reconstruction helpers that pickles name (``copyreg._reconstructor``,
numpy's ``_reconstruct``, ``scalar``, ``_frombuffer``, numpy.random's constructors,
Cython ``__pyx_unpickle_*`` functions, scikit-learn's ``newObj``) are re-implemented to
take only admitted classes, and sizes no larger than the bytes the stream holds.
"""

from __future__ import annotations

import copyreg
import datetime
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from castore.errors import UnsafeObjectError
from castore.safety.bounds import require_int, require_number_text
from castore.safety.data import ATOMS, ArgumentCheck
from castore.safety.names import import_module, lookup
from castore.safety.state import check_names

if TYPE_CHECKING:
    from castore.safety.policy import Allowlist


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UnsafeObjectError(f"refused a construction: {what}")


def _atoms(args: tuple[Any, ...], kwargs: dict[str, Any], what: str, most: int) -> None:
    _require(not kwargs and len(args) <= most, f"{what} with {len(args)} arguments")
    for arg in args:
        _require(type(arg) in ATOMS, f"{what} of a {type(arg).__qualname__}")
        if isinstance(arg, str) and what in _NUMBERS:
            require_number_text(arg, what)


_NUMBERS = frozenset({"int", "float", "complex", "Decimal", "Fraction"})
_PLAIN_CONTAINERS = (dict, list, tuple, set, frozenset)


def _container(args: tuple[Any, ...], kwargs: dict[str, Any], what: str, most: int = 1) -> None:
    """At most one positional argument, a builtin container (never an instance to iterate)."""
    _require(len(args) <= most and not kwargs, f"{what} with {len(args)} arguments")
    _require(
        not args
        or type(args[0]) in _PLAIN_CONTAINERS
        or (what == "Counter" and type(args[0]) is str),
        f"{what} of a {type(args[0]).__qualname__ if args else ''}",
    )


def _defaultdict(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(len(args) <= 2 and not kwargs, "defaultdict with extra arguments")
    factory = args[0] if args else None
    _require(factory is None or factory in DEFAULT_FACTORIES, f"defaultdict of {factory!r:.60}")
    _container(args[1:], {}, "defaultdict")


def _deque(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _container(args[:1], kwargs, "deque")
    _require(len(args) <= 2 and (len(args) < 2 or type(args[1]) in (int, type(None))), "deque")


def _date_part(args: tuple[Any, ...], kwargs: dict[str, Any], what: str, tz: int) -> None:
    """datetime, date and time: their pickled bytes (and a timezone), or plain numbers."""
    _require(not kwargs and len(args) <= 8, what)
    for position, arg in enumerate(args):
        zone = position == tz and (arg is None or type(arg) is datetime.timezone)
        _require(zone or type(arg) in (bytes, str, int), f"{what} of a {type(arg).__qualname__}")
        _require(not isinstance(arg, bytes | str) or len(arg) <= 16, f"{what} of long text")


def _timezone(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(not kwargs and 1 <= len(args) <= 2 and type(args[0]) is datetime.timedelta, "timezone")
    _require(len(args) < 2 or type(args[1]) is str, "timezone name")


def _decimal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(not kwargs and len(args) == 1, "Decimal with extra arguments")
    (value,) = args
    if type(value) is tuple:
        ok = len(value) == 3 and type(value[1]) is tuple and len(value[1]) <= 4300
        _require(ok and all(type(d) is int for d in value[1]), "Decimal of a malformed tuple")
        _require(type(value[2]) is int and abs(value[2]) <= 10**6, "Decimal exponent")
        return
    _atoms(args, kwargs, "Decimal", 1)


def _fraction(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(not kwargs and 1 <= len(args) <= 2, "Fraction with extra arguments")
    if len(args) == 1 and type(args[0]) is str:
        require_number_text(args[0], "Fraction")
        return
    _require(all(type(arg) is int for arg in args), "Fraction of non-integers")
    for arg in args:
        require_int(arg, "Fraction")


def _uuid(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(not kwargs and len(args) <= 1, "UUID with extra arguments")
    _require(not args or (type(args[0]) is str and len(args[0]) <= 64), "UUID of a non-string")


def _dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _require(not kwargs and 1 <= len(args) <= 3, "numpy.dtype with extra arguments")
    _require(type(args[0]) is str and len(args[0]) <= 64, f"numpy.dtype of {args[0]!r:.60}")
    _require(all(type(flag) is bool for flag in args[1:]), "numpy.dtype flags")


def _no_arguments(what: str) -> ArgumentCheck:
    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _require(not args and not kwargs, f"{what} with arguments")

    return check


def _sklearn_tree(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Tree(n_features, n_classes, n_outputs): Cython copies n_outputs entries of n_classes."""
    np = import_module("numpy")
    _require(not kwargs and len(args) == 3, "a scikit-learn Tree with other arguments")
    features, classes, outputs = args
    ok = type(features) is int and type(outputs) is int and isinstance(classes, np.ndarray)
    ok = ok and classes.ndim == 1 and classes.dtype.kind == "i"
    ok = ok and 0 <= features < 2**31 and 1 <= outputs == len(classes)
    _require(ok and bool(((classes >= 1) & (classes < 2**31)).all()), "a scikit-learn Tree")


def _bytes_like(what: str) -> ArgumentCheck:
    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """bytes/bytearray as pickles build them: bytes or latin-1 text, never a size."""
        ok = not kwargs and (
            len(args) == 0
            or (len(args) == 1 and type(args[0]) in (bytes, bytearray))
            or (len(args) == 2 and type(args[0]) is str and args[1] in ("latin-1", "latin1"))
        )
        _require(ok, f"{what}(<size or encoding>)")

    return check


_CODECS = frozenset({"utf-8", "utf8", "latin-1", "latin1", "ascii"})
"""Encodings str(bytes, encoding) may decode with: the linear ones pickles use (others,
such as punycode, cost quadratic time or import modules mid-load)."""


def _str(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """str(x), or str(bytes, encoding[, 'strict']) in an encoding of `_CODECS`."""
    _atoms(args, kwargs, "str", 3)
    if len(args) > 1:
        ok = type(args[0]) in (bytes, bytearray) and type(args[1]) is str
        ok = ok and args[1].lower() in _CODECS and args[2:] in ((), ("strict",))
        _require(ok, f"str() decoding with {args[1:]!r:.60}")


def _of_atoms(what: str, most: int) -> ArgumentCheck:
    return lambda args, kwargs: _atoms(args, kwargs, what, most)


def _of_container(what: str) -> ArgumentCheck:
    return lambda args, kwargs: _container(args, kwargs, what)


ARGUMENT_CHECKS: dict[tuple[str, str], ArgumentCheck] = {
    **{("builtins", n): _of_container(n) for n in ("dict", "list", "tuple", "set", "frozenset")},
    ("builtins", "str"): _str,
    ("builtins", "int"): _of_atoms("int", 2),
    ("builtins", "float"): _of_atoms("float", 1),
    ("builtins", "complex"): _of_atoms("complex", 2),
    ("builtins", "bool"): _of_atoms("bool", 1),
    ("builtins", "slice"): _of_atoms("slice", 3),
    ("builtins", "object"): _no_arguments("object"),
    ("builtins", "bytes"): _bytes_like("bytes"),
    ("builtins", "bytearray"): _bytes_like("bytearray"),
    ("collections", "OrderedDict"): _of_container("OrderedDict"),
    ("collections", "Counter"): _of_container("Counter"),
    ("collections", "defaultdict"): _defaultdict,
    ("collections", "deque"): _deque,
    ("datetime", "datetime"): lambda a, k: _date_part(a, k, "datetime", 1 if len(a) == 2 else 7),
    ("datetime", "date"): lambda a, k: _date_part(a, k, "date", -1),
    ("datetime", "time"): lambda a, k: _date_part(a, k, "time", 1 if len(a) == 2 else 4),
    ("datetime", "timedelta"): lambda a, k: _atoms(a, k, "timedelta", 3),
    ("datetime", "timezone"): _timezone,
    ("decimal", "Decimal"): _decimal,
    ("fractions", "Fraction"): _fraction,
    ("uuid", "UUID"): _uuid,
    ("numpy", "dtype"): _dtype,
    ("numpy.ma.core", "MaskedConstant"): _no_arguments("numpy.ma.masked"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _no_arguments("NumpyArrayWrapper"),
    ("sklearn.tree._tree", "Tree"): _sklearn_tree,
}
"""Argument checks by class (module, qualified name); classes without one (scikit-learn's,
scipy's) take data, checked by castore.safety.data."""

RECONSTRUCTOR_BASES = (object, dict, list, tuple, set, frozenset, int, float, str, bytes)
"""The bases copyreg._reconstructor is admitted with: the builtin types whose subclasses
protocols 0 and 1 pickle that way."""

DEFAULT_FACTORIES = (list, dict, set, frozenset, tuple, int, float, str, bytes, bool, complex)
"""Types a defaultdict may hold as its factory: calling one builds empty data."""


def _empty(shape: Any) -> bool:
    """numpy pickles arrays as an empty array of shape (0,) whose state then fills it."""
    return shape in ((0,), [0], 0)


_BIT_GENERATOR_CTOR = ("numpy.random._pickle", "__bit_generator_ctor")


class CheckedReconstructors:
    """Reconstruction helpers that pickles name, re-implemented to refuse abusive arguments.

    Each takes classes from the stream as arguments; they are checked against the allowlist
    so that a helper cannot create instances of anything the stream could not.
    """

    def __init__(self, allowlist: Allowlist) -> None:
        self._allow = allowlist
        self._named: dict[tuple[str, str], Callable[..., Any]] = {
            ("copyreg", "_reconstructor"): self.reconstructor,
            ("functools", "partial"): self.partial,
            ("_codecs", "encode"): self.latin1_encode,
            ("numpy._core.multiarray", "_reconstruct"): self.ndarray_reconstruct,
            ("numpy._core.multiarray", "scalar"): self.scalar,
            ("numpy._core.numeric", "_frombuffer"): self.frombuffer,
            ("numpy.ma.core", "_mareconstruct"): self.masked_reconstruct,
            _BIT_GENERATOR_CTOR: self.bit_generator,
            ("numpy.random._pickle", "__generator_ctor"): self.generator,
            ("numpy.random._pickle", "__randomstate_ctor"): self.random_state,
        }

    def named(self, module: str, name: str) -> Callable[..., Any] | None:
        """The checked replacement for module.name, if there is one."""
        return self._named.get((module, name))

    def _class(self, cls: object, *, call: bool) -> bool:
        """Whether `cls` is a class the policy admits (as a constructor, if `call`)."""
        if not isinstance(cls, type):
            return False
        admission = self._allow.admission_of(cls)
        return admission is not None and (admission.callable or not call)

    def reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """copyreg._reconstructor, for admitted classes only, with checked state.

        The base is one of the builtin types protocols 0 and 1 name. A dict base fills the
        instance with `state`: text keys follow the BUILD rules, in case the class turns
        items into attributes (other keys, such as a dok_matrix's (row, column), cannot be).
        """
        _require(self._class(cls, call=True), f"copyreg._reconstructor of {cls!r:.80}")
        _require(
            base in RECONSTRUCTOR_BASES and isinstance(cls, type) and issubclass(cls, base),
            f"copyreg._reconstructor with base {base!r:.80}",
        )
        if base is object:
            _require(state is None, "copyreg._reconstructor of object with a state")
        elif base is dict:
            _require(type(state) is dict, "copyreg._reconstructor of a dict from a non-dict")
            check_names(cls, {k: v for k, v in state.items() if type(k) is str}, as_attributes=True)
        else:
            ARGUMENT_CHECKS[("builtins", base.__qualname__)]((state,), {})
        return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]

    def partial_function(self, func: Any) -> bool:
        """Whether a functools.partial may wrap `func` (see policy.PARTIAL_FUNCTIONS)."""
        from castore.safety.policy import PARTIAL_FUNCTIONS

        admission = self._allow.admission_of(func)
        key = (getattr(func, "__module__", None), getattr(func, "__qualname__", None))
        return admission is not None and key in PARTIAL_FUNCTIONS

    def partial(self, func: Any, *args: Any, **kwargs: Any) -> functools.partial[Any]:
        """functools.partial of one of the few functions the policy lets objects hold."""
        _require(self.partial_function(func), f"functools.partial of {func!r:.80}")
        return functools.partial(func, *args, **kwargs)

    def latin1_encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        """_codecs.encode as Python 2-era pickles use it: latin-1 text to bytes."""
        _require(
            isinstance(text, str) and encoding in ("latin1", "latin-1"),
            f"_codecs.encode with encoding {encoding!r:.40}",
        )
        return text.encode("latin-1")

    def _array_class(self, cls: object, base: type) -> bool:
        return isinstance(cls, type) and issubclass(cls, base) and self._class(cls, call=False)

    def ndarray_reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        """numpy's _reconstruct, for admitted ndarray subclasses, empty (the state fills it)."""
        np = import_module("numpy")
        _require(
            self._array_class(subtype, np.ndarray)
            and _empty(shape)
            and isinstance(dtype, bytes | str)
            and len(dtype) <= 8,
            f"numpy _reconstruct of {subtype!r:.80} with shape {shape!r:.40}",
        )
        return import_module("numpy._core.multiarray")._reconstruct(subtype, shape, dtype)

    def masked_reconstruct(
        self, subtype: Any, baseclass: Any, baseshape: Any, basetype: Any
    ) -> Any:
        """numpy.ma's _mareconstruct, for admitted masked-array and ndarray classes.

        numpy.ma is imported when the stream names the masked-array class: looked up here,
        never imported (outside audit.importing() the import would be refused)."""
        np = import_module("numpy")
        masked = lookup("numpy.ma.core", "MaskedArray")
        _require(
            isinstance(masked, type)
            and self._array_class(subtype, masked)
            and self._array_class(baseclass, np.ndarray)
            and _empty(baseshape)
            and isinstance(basetype, bytes | str)
            and len(basetype) <= 8,
            f"numpy.ma _mareconstruct of {subtype!r:.80}",
        )
        return lookup("numpy.ma.core", "_mareconstruct")(subtype, baseclass, baseshape, basetype)

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        """numpy's scalar(dtype, bytes): exactly the item's bytes, which the stream holds."""
        np = import_module("numpy")
        _require(isinstance(dtype, np.dtype), "numpy scalar of a non-dtype")
        if dtype.hasobject:
            return import_module("numpy._core.multiarray").scalar(dtype, data)
        if isinstance(data, str):  # Python 2-era pickles: latin-1 text
            data = data.encode("latin-1")
        _require(
            isinstance(data, bytes) and len(data) == dtype.itemsize,
            f"numpy scalar of {dtype} from {len(data) if isinstance(data, bytes) else '?'} bytes",
        )
        return import_module("numpy._core.multiarray").scalar(dtype, data)

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> Any:
        """numpy's _frombuffer (protocol 5): a buffer holding exactly the array's bytes."""
        np = import_module("numpy")
        ok = (
            isinstance(buffer, bytes | bytearray | memoryview)
            and isinstance(dtype, np.dtype)
            and not dtype.hasobject
            and type(shape) is tuple
            and all(type(n) is int and n >= 0 for n in shape)
            and order in ("C", "F")
        )
        _require(ok, "numpy _frombuffer with malformed arguments")
        size = memoryview(buffer).nbytes
        _require(math.prod(shape) * dtype.itemsize == size, "numpy _frombuffer size mismatch")
        return import_module("numpy._core.numeric")._frombuffer(buffer, dtype, shape, order)

    def cython_unpickler(self, unpickle: Callable[..., Any]) -> Callable[..., Any]:
        """A Cython ``__pyx_unpickle_X(cls, checksum, state)``, for admitted classes only."""

        def checked(cls: Any, checksum: Any, state: Any = None) -> Any:
            _require(self._class(cls, call=False), f"{unpickle.__name__} of {cls!r:.80}")
            _require((type(checksum) is int and state is None) or type(state) is tuple, "state")
            return unpickle(cls, checksum, state)

        checked.__qualname__ = checked.__name__ = unpickle.__name__
        return checked

    def new_object(self, cls: Any) -> Any:
        """scikit-learn's newObj: ``cls.__new__(cls)`` for admitted classes."""
        _require(self._class(cls, call=True), f"newObj of {cls!r:.80}")
        return cls.__new__(cls)

    def bit_generator(self, bit_generator: Any = "MT19937") -> Any:
        """numpy.random's bit generator constructor, by name or admitted class."""
        from numpy.random import BitGenerator, _pickle

        _require(
            (isinstance(bit_generator, str) and len(bit_generator) <= 32)
            or (self._class(bit_generator, call=False) and issubclass(bit_generator, BitGenerator)),
            f"numpy.random bit generator {bit_generator!r:.80}",
        )
        return getattr(_pickle, _BIT_GENERATOR_CTOR[1])(bit_generator)

    def _from_bit_generator(self, make: Any, source: Any, ctor: Any) -> Any:
        from numpy.random import BitGenerator

        known = self._named[_BIT_GENERATOR_CTOR]
        _require(ctor is None or ctor is known, f"numpy.random constructor {ctor!r:.80}")
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
