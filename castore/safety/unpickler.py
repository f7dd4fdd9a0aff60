"""The restricted unpickler: Python's own opcode interpreter, with every global, call,
state and change of a container checked.

Only admitted globals resolve; only those admitted as callable may be called, with
arguments that are data; BUILD only sets data on objects the stream constructed, once;
items go only to builtin containers nobody has taken yet (a container given to a
constructor or a state is frozen, so no check can be undone later); when the stream ends
the result is checked as data and every structural check runs on the final objects.

A refused global does not end the load at once: the unpickler goes on reading without
calling anything (it is then *scanning*), so that the error names every refused global
of the stream. A scan (`scan`) reads a whole stream that way, to list its globals.
"""

from __future__ import annotations

import collections
import copyreg
import io
import itertools
import pickle
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from castore.errors import CastoreError, DeserializationError, UnsafeObjectError
from castore.safety.bounds import LimitedReader, Nesting, expansion_budget, require_shape
from castore.safety.checks import check_loaded, needs_check
from castore.safety.data import ATOMS, SEQUENCES, DataGuard, describe, is_code
from castore.safety.names import lookup, python2_name
from castore.safety.policy import Admission, Allowlist
from castore.safety.state import check_state

if TYPE_CHECKING:

    class _PurePythonUnpickler(pickle._Unpickler):
        """What pickle._Unpickler defines and typeshed leaves out: the opcode handlers
        RestrictedUnpickler overrides and calls through super()."""

        def load_build(self) -> None: ...
        def load_append(self) -> None: ...
        def load_appends(self) -> None: ...
        def load_setitem(self) -> None: ...
        def load_setitems(self) -> None: ...
        def load_additems(self) -> None: ...
        def pop_mark(self) -> list[Any]: ...

else:
    _PurePythonUnpickler = pickle._Unpickler


class _Unframer(Protocol):
    """pickle's (undeclared) _Unframer, as far as load_bytearray8 uses it."""

    current_frame: io.BytesIO | None

    def readinto(self, buffer: bytearray) -> int: ...


class Refused:
    """What the stream gets for a refused global, and, while scanning, for anything it
    would make."""


REFUSED = Refused()
_LISTS = (list, collections.deque)
_DICTS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)


def _then(load: Callable[[Any], None], after: Callable[[Any], None]) -> Callable[[Any], None]:
    """An opcode handler that runs `load`, then `after`."""

    def handler(unpickler: Any) -> None:
        load(unpickler)
        after(unpickler)

    return handler


class RestrictedUnpickler(_PurePythonUnpickler):
    """Python's pure unpickler with the checks this module describes."""

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
        self.guard = DataGuard()
        self.nesting = Nesting()
        self.guard.checked_partial = allowlist.checked.partial_function
        self.admissions: dict[int, Admission] = {}
        self.created: dict[int, Any] = {}
        self._built: set[int] = set()
        self.first_refusal: UnsafeObjectError | None = None
        self.decisions: dict[str, Admission | UnsafeObjectError] = {}
        """Every global the stream named (``module.name``), in order, and how the policy
        admitted it, or why it refused it."""
        self._scan_only = False

    # -- the whole stream -----------------------------------------------------------------

    def _read(self) -> Any:
        """Interpret the stream up to its STOP; every failure is a castore error."""
        try:
            return super().load()
        except CastoreError:
            raise
        except Exception as exc:  # the stream is untrusted: any failure is a malformed stream
            raise DeserializationError(f"{type(exc).__name__}: {exc}") from exc

    def load(self) -> Any:
        """Unpickle; then check the result as data and run every structural check."""
        try:
            obj = self._read()
        except CastoreError:
            if self.first_refusal is not None:  # scanning past a refusal hit a malformed part
                raise self._refusal() from None
            raise
        if self.first_refusal is not None:
            raise self._refusal()
        self.guard.require(obj, "the loaded object")
        require_shape(obj, self._held, expansion_budget(self.source.position), ATOMS)
        for created in self.created.values():
            check_loaded(created)
        return obj

    def scan(self) -> None:
        """Read the whole stream while scanning from its start, so that `decisions` lists
        every global it names; nothing is built (see `needed_to_read`) or returned.

        A stream the scan cannot read to its end raises a castore error; `decisions` then
        holds the globals named before that point.
        """
        self._scan_only = True
        self._read()

    @property
    def refused(self) -> list[str]:
        """The refused globals, in the order the stream names them."""
        return [name for name, d in self.decisions.items() if isinstance(d, UnsafeObjectError)]

    def _held(self, value: Any) -> Iterable[Any] | None:
        """What `value` holds, as repr and copies walk it: container items, the attributes
        of objects the stream constructed, the elements of object arrays."""
        kind = type(value)
        if kind in ATOMS:
            return None
        if isinstance(value, dict):
            return itertools.chain(dict.keys(value), dict.values(value))
        for base in SEQUENCES:
            if isinstance(value, base):
                return base.__iter__(value)  # type: ignore[arg-type]
        ndarray: Any = lookup("numpy", "ndarray")
        if ndarray is not None and isinstance(value, ndarray):
            return ndarray.tolist(ndarray.ravel(value)) if value.dtype == object else None
        if self.created.get(id(value)) is not value:
            return None
        try:
            attributes = object.__getattribute__(value, "__dict__")
        except AttributeError:
            return None
        return dict.values(attributes) if type(attributes) is dict else None

    def _refusal(self) -> UnsafeObjectError:
        first = self.first_refusal
        assert first is not None
        if len(self.refused) <= 1:  # none: the refusal named no global (an audited import)
            return first
        names = ", ".join(self.refused)
        return UnsafeObjectError(
            f"{first}; the stream needs {len(self.refused)} refused globals: {names}",
            first.global_name,
            refused=tuple(self.refused),
        )

    def _refuse(self, error: UnsafeObjectError) -> None:
        """Note a refusal; from now on nothing is called, only globals are collected."""
        if self.first_refusal is None:
            self.first_refusal = error

    @property
    def scanning(self) -> bool:
        """Whether the stream is only read: after a refusal, or in a scan. Nothing is then
        called, no state is set and what calls would return is REFUSED, except for objects
        the rest of the stream cannot be read without (`needed_to_read`)."""
        return self._scan_only or self.first_refusal is not None

    def needed_to_read(self, cls: type) -> bool:
        """Hook: whether instances of `cls` are still built while scanning, because the
        format needs them to read on (joblib's array headers)."""
        return False

    # -- globals --------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global, or REFUSED (the refusal is raised once the stream is read)."""
        if self.proto < 3 and self.fix_imports:
            module, name = python2_name(module, name)
        full = f"{module}.{name}"
        try:
            admission = self.allowlist.admit(module, name)
        except UnsafeObjectError as exc:
            return self._refused_global(full, exc)
        except DeserializationError as exc:
            return self._refused_global(full, UnsafeObjectError(str(exc), full))
        self.decisions.setdefault(full, admission)
        obj = admission.obj
        key = id(obj)
        self.admissions[key] = admission
        if admission.value:
            self.guard.tokens[key] = obj
        self.guard.classes[key] = obj
        return obj

    def _refused_global(self, full: str, error: UnsafeObjectError) -> Refused:
        self.decisions.setdefault(full, error)
        self._refuse(error)
        return REFUSED

    def get_extension(self, code: int) -> None:
        """EXT opcodes: always through find_class, never through copyreg's cache."""
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise DeserializationError(f"unregistered pickle extension code {code}")
        self.append(self.find_class(*key))

    # -- calls ----------------------------------------------------------------------------

    def _construct(self, func: Any, args: Any, kwargs: Any, *, new: bool) -> Any:
        """Call an admitted callable on data (``cls.__new__(cls, ...)`` if `new`)."""
        if self.scanning and not (isinstance(func, type) and self.needed_to_read(func)):
            return REFUSED
        admission = self.admissions.get(id(func))
        if admission is None or admission.obj is not func or not admission.callable:
            raise UnsafeObjectError(
                f"the stream calls {describe(func)}, which the policy does not admit as callable"
            )
        if type(args) is not tuple or type(kwargs) is not dict:
            raise DeserializationError("the stream calls with malformed arguments")
        if new and not isinstance(func, type):
            raise UnsafeObjectError(f"the stream constructs {describe(func)}, not a class")
        if not admission.trusted:
            what = f"the arguments of {describe(func)}"
            self.guard.require(args, what, classes=admission.reconstructor)
            self.guard.require(kwargs, what, classes=admission.reconstructor)
            admission.check_arguments(args, kwargs)
        obj = func.__new__(func, *args, **kwargs) if new else func(*args, **kwargs)
        if admission.reconstructor and is_code(obj):  # a checked functools.partial
            self.guard.tokens[id(obj)] = obj
        self.nesting.require(obj, f"the result of {describe(func)}")
        if needs_check(obj) or not isinstance(obj, _DATA_RESULTS):
            self.created[id(obj)] = obj
        return obj

    def load_reduce(self) -> None:
        """REDUCE: call an admitted callable."""
        args = self.stack.pop()
        self.stack[-1] = self._construct(self.stack[-1], args, {}, new=False)

    def load_newobj(self) -> None:
        """NEWOBJ: ``cls.__new__(cls, *args)`` for an admitted class."""
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._construct(cls, args, {}, new=True))

    def load_newobj_ex(self) -> None:
        """NEWOBJ_EX: ``cls.__new__(cls, *args, **kwargs)`` for an admitted class."""
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._construct(cls, args, kwargs, new=True))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        """INST and OBJ: as pickle does, ``klass(*args)`` or ``klass.__new__(klass)``."""
        new = not args and isinstance(klass, type) and not hasattr(klass, "__getinitargs__")
        self.append(self._construct(klass, tuple(args), {}, new=new))

    # -- state ----------------------------------------------------------------------------

    def load_build(self) -> None:
        """BUILD: data, once, on an object the stream constructed (see castore.safety.state)."""
        if self.scanning and not self.needed_to_read(type(self.stack[-2])):
            self.stack.pop()
            return
        target = self.stack[-2]
        if self.created.get(id(target)) is not target:
            raise UnsafeObjectError(
                f"the stream sets the state of {describe(target)}, which it did not construct"
            )
        if id(target) in self._built:
            raise UnsafeObjectError("the stream sets the state of an object twice")
        self._built.add(id(target))
        self.stack[-1] = check_state(target, self.stack[-1], self.guard)
        super().load_build()
        self.stack[-1] = self.built(self.stack[-1])

    def built(self, obj: Any) -> Any:
        """Hook: the object whose state was just set, or what replaces it."""
        return obj

    # -- items ----------------------------------------------------------------------------

    def _require_open(self, target: Any, kinds: tuple[type, ...], action: str) -> None:
        """Items go only to builtin containers (dict and set exactly, list or deque), never
        to one that a constructor or a state already took."""
        if type(target) not in kinds:
            raise UnsafeObjectError(f"the stream {action} {describe(target)}, which it may not")
        if self.guard.is_frozen(target):
            raise UnsafeObjectError(
                f"the stream {action} a {type(target).__qualname__} after an object took it"
            )
        if type(target) is not kinds[0] and self.created.get(id(target)) is not target:
            raise UnsafeObjectError(f"the stream {action} {describe(target)}, which it may not")

    def _marked_target(self) -> Any:
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def _dropped(self, target: Any) -> bool:
        """Whether items go nowhere: to a placeholder (there are only some while scanning)."""
        return target is REFUSED

    def load_append(self) -> None:
        """APPEND, to a list or deque."""
        if self._dropped(self.stack[-2]):
            self.stack.pop()
            return
        self._require_open(self.stack[-2], _LISTS, "appends to")
        super().load_append()

    def load_appends(self) -> None:
        """APPENDS, to a list or deque."""
        if self._dropped(self._marked_target()):
            self.pop_mark()
            return
        self._require_open(self._marked_target(), _LISTS, "appends to")
        super().load_appends()

    def load_setitem(self) -> None:
        """SETITEM, on a dict."""
        if self._dropped(self.stack[-3]):
            del self.stack[-2:]
            return
        self._require_open(self.stack[-3], _DICTS, "sets an item of")
        super().load_setitem()

    def load_setitems(self) -> None:
        """SETITEMS, on a dict."""
        if self._dropped(self._marked_target()):
            self.pop_mark()
            return
        self._require_open(self._marked_target(), _DICTS, "sets items of")
        super().load_setitems()

    def load_additems(self) -> None:
        """ADDITEMS, to a set."""
        if self._dropped(self._marked_target()):
            self.pop_mark()
            return
        self._require_open(self._marked_target(), (set,), "adds items to")
        super().load_additems()

    def built_tuple(self) -> None:
        """After TUPLE*, FROZENSET: the new tuple or frozenset nests at most MAX_DEPTH deep."""
        self.nesting.require(self.stack[-1], "a tuple or frozenset")

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
    for _opcode in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET):
        dispatch[_opcode[0]] = _then(dispatch[_opcode[0]], built_tuple)
    del _opcode, _method


_DATA_RESULTS = (str, bytes, int, float, complex, bool, tuple, frozenset, type(None))
"""Results of constructors that need no tracking: immutable data takes no state or items."""
