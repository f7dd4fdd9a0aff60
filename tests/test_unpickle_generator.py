"""Generated opcode streams over the default policy's globals: only castore errors, no effects.

Each example is a random program in pickle's opcode language, drawn from the globals the
default policy admits (and a few it refuses), data opcodes, calls, BUILD, item opcodes
and memo opcodes with hostile indices. Loading it must return an object or raise a
castore error, scanning it (as pickle and as joblib) must return a report; neither may
crash, raise anything else, or cause an audited side effect.
``CASTORE_UNPICKLE_EXAMPLES=<n>`` sets the number of examples (default 300, quick for CI);
``CASTORE_UNPICKLE_REPORT=<file>`` appends the number run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import struct
import sys
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore import safety
from castore.errors import CastoreError

EXAMPLES = int(os.environ.get("CASTORE_UNPICKLE_EXAMPLES", "300"))

GLOBALS = [
    ("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "str", "bytes",
                              "bytearray", "object", "complex", "slice", "Ellipsis")
] + [
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    ("collections", "Counter"), ("datetime", "datetime"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("fractions", "Fraction"),
    ("uuid", "UUID"), ("copyreg", "_reconstructor"), ("_codecs", "encode"),
    ("functools", "partial"), ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy", "void"),
    ("numpy", "float64"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.ma.core", "_mareconstruct"), ("numpy.ma.core", "MaskedArray"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pcg64", "PCG64"), ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("scipy.sparse._csr", "csr_matrix"), ("sklearn.tree._tree", "Tree"),
    ("sklearn.linear_model._base", "LinearRegression"),
    ("sklearn.preprocessing._function_transformer", "FunctionTransformer"),
    ("sklearn.utils.validation", "check_array"), ("sklearn.utils.validation", "check_memory"),
    ("sklearn.metrics._scorer", "_cached_call"), ("os", "system"), ("builtins", "exec"),
]  # fmt: skip


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _long(value: int) -> bytes:
    return value.to_bytes(9, "little", signed=True)


for _module, _ in GLOBALS:  # imported now, so that loads import nothing the recorder sees
    importlib.import_module(_module)

_SIMPLE = [
    pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.EMPTY_TUPLE,
    pickle.LIST, pickle.EMPTY_LIST, pickle.DICT, pickle.EMPTY_DICT, pickle.EMPTY_SET,
    pickle.FROZENSET, pickle.ADDITEMS, pickle.APPEND, pickle.APPENDS, pickle.SETITEM,
    pickle.SETITEMS, pickle.REDUCE, pickle.BUILD, pickle.NEWOBJ, pickle.NEWOBJ_EX,
    pickle.STACK_GLOBAL, pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.POP,
    pickle.POP_MARK, pickle.DUP, pickle.MEMOIZE, pickle.OBJ, pickle.STOP,
]  # fmt: skip

_opcode = st.one_of(
    st.sampled_from(_SIMPLE),
    st.sampled_from(GLOBALS).map(lambda g: _text(g[0]) + _text(g[1]) + pickle.STACK_GLOBAL),
    st.sampled_from(["keys", "replace", "__array__", "f8", "V8", "predict", "1e999999", "O",
                     "latin1", "C", "MT19937", "_predictors", "x"]).map(_text),
    st.integers(-(2**70), 2**70).map(lambda n: pickle.LONG1 + b"\x09" + _long(n)),
    st.integers(0, 255).map(lambda n: pickle.BININT1 + bytes([n])),
    st.integers(0, 2**32 - 1).map(lambda n: pickle.LONG_BINPUT + struct.pack("<I", n)),
    st.integers(0, 40).map(lambda n: pickle.BINGET + bytes([n])),
    st.binary(max_size=16).map(lambda b: pickle.SHORT_BINBYTES + bytes([len(b)]) + b),
    st.floats(allow_nan=True).map(lambda f: pickle.BINFLOAT + struct.pack(">d", f)),
)  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A protocol 4 or 5 header and up to 60 opcodes."""
    body = b"".join(draw(st.lists(_opcode, max_size=60)))
    return pickle.PROTO + bytes([draw(st.sampled_from([2, 4, 5]))]) + body + pickle.STOP


_EFFECTS: list[str] = []
_WATCHING = threading.local()


def _recorder(event: str, args: tuple[Any, ...]) -> None:
    if event == "exec" and getattr(args[0], "co_filename", "").startswith(sys.prefix):
        return  # a module imported to look an admitted global up
    if getattr(_WATCHING, "on", False) and event in ("os.system", "exec", "compile",
                                                     "subprocess.Popen", "os.mkdir"):  # fmt: skip
        _EFFECTS.append(event)


sys.addaudithook(_recorder)
_RUN = [0]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams())
def test_generated_streams_only_raise_castore_errors(data: bytes) -> None:
    _RUN[0] += 1
    _WATCHING.on = True
    try:
        with contextlib.suppress(CastoreError):
            safety.load_pickle(io.BytesIO(data), safety.Allowlist(), size=len(data))
        for scan in (safety.scan_pickle, safety.scan_joblib):  # they report, never raise
            found = scan(io.BytesIO(data), safety.Allowlist(), size=len(data))
            assert isinstance(found, safety.Scan)
    finally:
        _WATCHING.on = False
    assert _EFFECTS == [], _EFFECTS
    report = os.environ.get("CASTORE_UNPICKLE_REPORT")
    if report and _RUN[0] % 1000 == 0:
        with open(report, "w") as file:
            file.write(f"{_RUN[0]}\n")
