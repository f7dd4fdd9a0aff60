"""Safe loading: hostile pickles are refused before they run; real models load by default."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from os.path import join as path_join  # a re-export that no wildcard may admit
from pathlib import Path
from typing import Any

import cloudpickle
import joblib
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import castore
import castore.errors
from castore import safety
from castore.errors import DeserializationError, UnsafeObjectError
from castore.safety import Allowlist
from castore.safety.joblib_arrays import ArrayHeader
from castore.trust import userconfig
from castore.versions import loading
from tests.helpers import ROOT, plant_version

SERIALIZERS = ["joblib", "pickle", "cloudpickle"]


@pytest.fixture(autouse=True)
def private_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own (empty) user configuration, never the user's."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv(userconfig.CONFIG_DIR_VARIABLE, str(folder))
    return folder


class Payload:
    """An object whose unpickling calls `func(*args)`: the classic pickle exploit."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


class Custom:
    """A user's own class, unknown to the built-in allowlist."""

    def __init__(self, value: int) -> None:
        self.value = value


def _payloads(marker: Path) -> dict[str, Callable[[], bytes]]:
    """Ways to make unpickling create `marker`, each as the bytes of one serializer."""
    touch = f"open({str(marker)!r}, 'w').close()"
    make = {
        "os.system": lambda: Payload(os.system, f"touch {marker}"),
        "eval": lambda: Payload(eval, touch),
        "exec": lambda: Payload(exec, touch),
        "subprocess": lambda: Payload(subprocess.call, ["touch", str(marker)]),
        "__import__": lambda: Payload(__import__, "castore_test_evil_module"),
        "nested in an object array": lambda: np.array(
            [Payload(os.system, f"touch {marker}")], dtype=object
        ),
    }
    return {name: factory for name, factory in make.items()}


def _serialize(obj: Any, serializer: str) -> bytes:
    buffer = io.BytesIO()
    if serializer == "joblib":
        joblib.dump(obj, buffer)
    elif serializer == "cloudpickle":
        cloudpickle.dump(obj, buffer, protocol=5)
    else:
        pickle.dump(obj, buffer, protocol=5)
    return buffer.getvalue()


def _commit(store: castore.Store, name: str, data: bytes, serializer: str) -> castore.Version:
    """A version holding exactly `data`, labelled with `serializer`."""
    return plant_version(store, name, data, serializer)


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable module that creates a marker file when it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "castore_test_evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("castore_test_evil_module", None)


def _default_loads(store: castore.Store, ref: str, serializer: str) -> list[Callable[[], Any]]:
    """Every way of loading a version without trusting it, for one serializer."""
    loads = [
        partial(store.load, ref),
        partial(loading.load, store.repository, ref),
        partial(loading.load, store.repository, ref, trusted=["numpy.*", "sklearn.*", "scipy.*"]),
        partial(castore.load, store.qualified(ref))
        if not store.repository.backend.is_remote
        else None,
    ]
    if serializer == "joblib":
        loads.append(partial(store.load, ref, mmap_mode="r"))
    return [load for load in loads if load is not None]


@pytest.mark.parametrize("payload", list(_payloads(Path("x"))))
def test_hostile_pickles_are_refused_on_every_path_and_never_run(
    store: castore.Store, tmp_path: Path, evil_module: Path, payload: str
) -> None:
    marker = evil_module if payload == "__import__" else tmp_path / "pwned"
    obj = _payloads(marker)[payload]()
    for serializer in SERIALIZERS:
        version = _commit(store, f"evil/{serializer}", _serialize(obj, serializer), serializer)
        for load in _default_loads(store, version.reference, serializer):
            with pytest.raises(UnsafeObjectError, match=r"version \d+ of evil/.*refused") as error:
                load()
            assert "nothing from it was run" in str(error.value)
            assert not marker.exists(), f"{payload} ran through {serializer}"
    # The payloads are real: the explicit escape hatch runs them.
    store.load(version.reference, allow_unsafe=True)
    assert marker.exists()


def test_the_refusal_names_the_global_and_comes_before_its_module_is_imported(
    store: castore.Store, evil_module: Path
) -> None:
    data = _global_pickle("castore_test_evil_module", "anything")
    version = _commit(store, "evil/import", data, "pickle")
    with pytest.raises(UnsafeObjectError) as error:
        store.load(version.reference)
    assert error.value.global_name == "castore_test_evil_module.anything"
    assert "castore_test_evil_module.anything" in str(error.value)
    assert "version 1 of evil/import" in str(error.value)
    assert not evil_module.exists() and "castore_test_evil_module" not in sys.modules


def test_a_cloudpickled_function_payload_is_refused(store: castore.Store, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    touch = str(marker)
    data = cloudpickle.dumps(Payload(lambda: open(touch, "w").close()), protocol=5)
    version = _commit(store, "evil/cloud", data, "cloudpickle")
    with pytest.raises(UnsafeObjectError, match="cloudpickle"):
        store.load(version.reference)
    assert not marker.exists()
    store.load(version.reference, allow_unsafe=True)
    assert marker.exists()


def _models() -> dict[str, Any]:
    features, labels = make_classification(n_samples=200, n_features=6, random_state=0)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)
    return {"features": features, "pipeline": pipeline, "forest": forest}


def test_real_models_arrays_and_sparse_matrices_load_with_the_default_policy(
    store: castore.Store,
) -> None:
    models = _models()
    features = models["features"]
    rng = np.random.default_rng(0)
    arrays = {
        "weights": rng.standard_normal((50, 20)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "counts": np.arange(10, dtype=">i8"),
        "names": np.array(["a", "bc"], dtype=object),
        "scalar": np.float64(2.5),
        "generator": rng,
    }
    sparse = scipy.sparse.random(30, 20, density=0.1, format="csr", random_state=0)
    for serializer in SERIALIZERS:
        for key in ("pipeline", "forest"):
            version = store.save(models[key], f"{serializer}/{key}", serializer=serializer)
            loaded = store.load(version.reference)
            np.testing.assert_array_equal(
                loaded.predict_proba(features), models[key].predict_proba(features)
            )
        loaded = store.load(
            store.save(arrays, f"{serializer}/arrays", serializer=serializer).reference
        )
        for key in ("weights", "fortran", "counts"):
            np.testing.assert_array_equal(loaded[key], arrays[key])
        assert list(loaded["names"]) == ["a", "bc"] and loaded["scalar"] == 2.5
        assert loaded["generator"].bit_generator.state == rng.bit_generator.state
        matrix = store.load(
            store.save(sparse, f"{serializer}/sparse", serializer=serializer).reference
        )
        assert (matrix != sparse).nnz == 0 and matrix.format == "csr"
    mapped = store.load("joblib/arrays", mmap_mode="r")
    assert isinstance(mapped["weights"], np.memmap)
    np.testing.assert_array_equal(mapped["weights"], arrays["weights"])


def test_a_fresh_process_loads_arrays_before_numpy_ma_is_imported(tmp_path: Path) -> None:
    # numpy imports numpy.ma on first access to np.ma: inside the audit guard, that import
    # (marshal.loads of its bytecode) failed the load.
    code = f"""if True:
        import sys
        import numpy as np
        import castore
        store = castore.init({str(tmp_path / "store")!r})
        store.save(np.arange(3), "array")
        store.save(np.array(["a", None], dtype=object), "objects", serializer="pickle")
        assert "numpy.ma" not in sys.modules
        assert store.load("array").tolist() == [0, 1, 2]
        assert store.load("objects").tolist() == ["a", None]
    """
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -- the allowlist ----------------------------------------------------------------------------


def _global_pickle(module: str, name: str, *, call: bool = False) -> bytes:
    """A protocol-4 pickle of one global (called with no arguments if `call`)."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded

    body = text(module) + text(name) + pickle.STACK_GLOBAL
    if call:
        body += pickle.EMPTY_TUPLE + pickle.REDUCE
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def _load(data: bytes, allowlist: Allowlist | None = None) -> Any:
    return safety.load_pickle(io.BytesIO(data), allowlist or Allowlist(), size=len(data))


REFUSED = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "Popen"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("builtins", "type"),
    ("builtins", "open"),
    ("functools", "reduce"),
    ("operator", "attrgetter"),
    ("operator", "methodcaller"),
    ("numpy", "load"),
    ("numpy", "frompyfunc"),
    ("numpy.testing", "assert_equal"),
    ("numpy.lib._datasource", "DataSource"),
    ("numpy.lib.format", "open_memmap"),
    ("scipy.stats._continuous_distns", "norm_gen"),  # rv_continuous execs its `shapes`
    ("scipy.io", "FortranFile"),
    ("sklearn.utils.parallel", "Parallel"),
    ("sklearn.utils._testing", "TempMemmap"),
    ("sklearn.datasets._base", "makedirs"),
    # re-exports: defined elsewhere, reachable through scikit-learn's namespaces
    ("sklearn.utils.discovery", "import_module"),
    ("sklearn.metrics._scorer", "partial"),
    ("sklearn.feature_selection._base", "attrgetter"),
    ("sklearn.utils._available_if", "MethodType"),
    # walking through modules, and private attributes
    ("sklearn.base", "functools.partial"),
    ("sklearn.base", "inspect"),
    ("sklearn.base", "BaseEstimator.__init__.__globals__"),
    ("sklearn.base", "BaseEstimator.__class__"),
    ("collections", "OrderedDict.__init__"),
]


@pytest.mark.parametrize(("module", "name"), REFUSED)
def test_dangerous_globals_are_refused_by_name(module: str, name: str) -> None:
    for allowlist in (Allowlist(), Allowlist(["sklearn.*", "numpy.*", "scipy.*"])):
        with pytest.raises(UnsafeObjectError) as error:
            _load(_global_pickle(module, name), allowlist)
        assert error.value.global_name == f"{module}.{name}"


def test_the_allowlist_never_comes_from_the_artifact_and_users_can_extend_it(
    private_config: Path,
) -> None:
    data = pickle.dumps(Custom(3), protocol=5)
    with pytest.raises(UnsafeObjectError, match=r"test_safety\.Custom"):
        _load(data)
    for trusted in (
        ["tests.test_safety.Custom"],
        ["tests.test_safety:Custom"],
        [Custom],
        ["tests.*"],
    ):
        assert _load(data, Allowlist(trusted)).value == 3
    (private_config / safety.TRUSTED_GLOBALS_FILE).write_text("# mine\ntests.test_safety.Custom\n")
    assert _load(data, Allowlist.from_config()).value == 3
    # A wildcard admits what its package defines, not what it imports from elsewhere.
    with pytest.raises(UnsafeObjectError, match="defined in posixpath, not in a trusted package"):
        _load(_global_pickle("tests.test_safety", "path_join"), Allowlist(["tests.*"]))
    with pytest.raises(UnsafeObjectError, match="module"):
        _load(_global_pickle("tests.test_safety", "os"), Allowlist(["tests.*"]))
    assert (
        _load(
            _global_pickle("tests.test_safety", "path_join"),
            Allowlist(["tests.test_safety.path_join"]),
        )
        is path_join
    )


@pytest.mark.parametrize("pattern", ["*", "os.", "a..b", "pkg.*.x", "", "1abc"])
def test_malformed_patterns_are_invalid_input(pattern: str, private_config: Path) -> None:
    with pytest.raises(castore.InvalidInputError):
        Allowlist([pattern])
    (private_config / safety.TRUSTED_GLOBALS_FILE).write_text(f"ok.Name\n{pattern or '!'}\n")
    with pytest.raises(castore.InvalidInputError, match="line 2"):
        Allowlist.from_config()


def _opcodes(*parts: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(parts) + pickle.STOP


def _short(value: str) -> bytes:
    return pickle.SHORT_BINUNICODE + bytes([len(value)]) + value.encode()


GLOBAL_ORDERED_DICT = _short("collections") + _short("OrderedDict") + pickle.STACK_GLOBAL
GLOBAL_ACCURACY = (
    _short("sklearn.metrics._classification") + _short("accuracy_score") + pickle.STACK_GLOBAL
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # a function: neither called nor held under the default policy
        (_opcodes(GLOBAL_ACCURACY, pickle.EMPTY_TUPLE, pickle.REDUCE), "accuracy_score is refused"),
        # calling an instance (its __call__), not an admitted constructor
        (
            _opcodes(GLOBAL_ORDERED_DICT, pickle.EMPTY_TUPLE, pickle.REDUCE, pickle.EMPTY_TUPLE,
                     pickle.REDUCE),
            "calls a OrderedDict",
        ),
        # state set on a class, not an instance
        (_opcodes(GLOBAL_ORDERED_DICT, pickle.EMPTY_DICT, pickle.BUILD), "sets the state of"),
        (
            _opcodes(GLOBAL_ORDERED_DICT, _short("k"), _short("v"), pickle.SETITEM),
            "sets an item of",
        ),
        # bytes(<size>) would allocate at will
        (
            _opcodes(_short("builtins"), _short("bytearray"), pickle.STACK_GLOBAL,
                     pickle.BININT + struct.pack("<i", 2**30), pickle.TUPLE1, pickle.REDUCE),
            r"bytearray\(<size or encoding>\)",
        ),
        # a partial would let the model call a class admitted only to be held
        (
            _opcodes(_short("functools"), _short("partial"), pickle.STACK_GLOBAL,
                     _short("numpy"), _short("memmap"), pickle.STACK_GLOBAL, pickle.TUPLE1,
                     pickle.REDUCE),
            "functools.partial of",
        ),
        (
            _opcodes(_short("functools"), _short("partial"), pickle.STACK_GLOBAL,
                     GLOBAL_ACCURACY, pickle.TUPLE1, pickle.REDUCE, pickle.MARK,
                     _short("numpy"), _short("memmap"), pickle.STACK_GLOBAL,
                     pickle.EMPTY_TUPLE, pickle.NONE, pickle.NONE, pickle.TUPLE, pickle.BUILD),
            "accuracy_score is refused",
        ),
        # numpy's Generator helper called with an arbitrary callable
        (
            _opcodes(_short("numpy.random._pickle"), _short("__generator_ctor"),
                     pickle.STACK_GLOBAL, _short("MT19937"), GLOBAL_ACCURACY, pickle.TUPLE2,
                     pickle.REDUCE),
            "accuracy_score is refused",
        ),
    ],
)  # fmt: skip
def test_calls_and_state_changes_are_checked_too(data: bytes, message: str) -> None:
    with pytest.raises(UnsafeObjectError, match=message):
        _load(data)


def test_functions_are_refused_even_as_held_values_unless_trusted() -> None:
    from sklearn.metrics import accuracy_score

    with pytest.raises(UnsafeObjectError, match="holds no code unless trusted"):
        _load(_opcodes(GLOBAL_ACCURACY))
    trusted = Allowlist(["sklearn.metrics._classification.accuracy_score"])
    assert _load(_opcodes(GLOBAL_ACCURACY), trusted) is accuracy_score


def test_declared_sizes_beyond_the_stream_allocate_nothing() -> None:
    huge = 2**40
    cases = [
        _opcodes(pickle.BYTEARRAY8 + struct.pack("<Q", huge)),
        _opcodes(pickle.BINBYTES8 + struct.pack("<Q", huge)),
        _opcodes(pickle.BINUNICODE8 + struct.pack("<Q", huge)),
        _opcodes(pickle.FRAME + struct.pack("<Q", huge)),
    ]
    tracemalloc.start()
    try:
        for data in cases:
            with pytest.raises(DeserializationError):
                _load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_a_joblib_array_larger_than_its_stream_is_refused_before_allocation(
    store: castore.Store,
) -> None:
    buffer = io.BytesIO()
    joblib.dump({"a": np.zeros(4)}, buffer, protocol=2)  # no frames: opcodes may change length
    shape = pickle.BININT1 + b"\x04" + pickle.TUPLE1  # the pickled shape (4,)
    assert buffer.getvalue().count(shape) == 1
    data = buffer.getvalue().replace(
        shape, pickle.LONG1 + b"\x06" + (2**40).to_bytes(6, "little") + pickle.TUPLE1
    )
    version = _commit(store, "bomb", data, "joblib")
    tracemalloc.start()
    try:
        with pytest.raises(DeserializationError, match="needs 8796093022208 bytes"):
            store.load(version.reference)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_old_protocols_and_python2_names_still_load() -> None:
    value = {"a": np.arange(3), "d": OrderedDict(x=1), "b": b"\x00\xff", "s": {1}}
    for protocol in (0, 1, 2, 3, 4, 5):
        loaded = _load(pickle.dumps(value, protocol=protocol))
        np.testing.assert_array_equal(loaded["a"], value["a"])
        assert (loaded["d"], loaded["b"], loaded["s"]) == (value["d"], value["b"], value["s"])


def test_malformed_streams_are_castore_errors() -> None:
    for data in (b"", b"\x80\x05", b"garbage", _opcodes(pickle.EXT1 + b"\x07"),
                 _opcodes(pickle.PERSID + b"x\n"), _opcodes(pickle.BINGET + b"\x09")):  # fmt: skip
        with pytest.raises(DeserializationError):
            _load(data)
    with pytest.raises(DeserializationError, match="bytes after its object"):
        _load(pickle.dumps([1]) + b"x")  # FORMAT.md 11.4: the stream ends with its object
    for data, message in [
        (b"PK\x03\x04 a zip file", "is not a joblib stream"),
        (b"\x04\x22\x4d\x18 lz4", "lz4 compressed joblib file"),
        (b"ZF0x10 old joblib", "zfile compressed joblib file"),
        (_compressed([1], "zlib")[:-8], "zlib stream is truncated"),
        (_compressed([1], "bz2")[:20] + bytes(30), "bz2 stream is damaged"),
        (_compressed([1], "xz")[:-12], "xz stream is truncated"),  # its checks come last
        (_compressed([1], "zlib")[:-1] + b"\x00", "zlib stream is damaged"),  # adler32
        (_compressed([1], "zlib") + b"more", "bytes after its zlib stream"),
        (b"\x5d\x00\x00\x00\xf0" + b"\xff" * 8 + bytes(20), "needs more memory"),  # 3.75 GiB
    ]:
        with pytest.raises(DeserializationError, match=message):
            safety.load_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist())


def _compressed(value: Any, method: str) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer, compress=(method, 3))
    return buffer.getvalue()


COMPRESSIONS = ["zlib", "gzip", "bz2", "xz", "lzma"]


def _load_joblib(data: bytes) -> Any:
    return safety.load_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist(), size=len(data))


def test_compressed_streams_are_held_to_the_bytes_they_really_hold() -> None:
    """Found by attacking the decompressing loader: each case once cost GiBs or seconds."""
    # 18 bytes of zlib declaring a 3 GiB bytearray: it allocated 3 GiB before failing.
    declared = zlib.compress(b"\x80\x05\x96" + struct.pack("<Q", 3 << 30) + b".")
    tracemalloc.start()
    try:
        with pytest.raises(DeserializationError, match="holds only 1 more"):
            _load_joblib(declared)
        assert tracemalloc.get_traced_memory()[1] < 32 * 1024 * 1024
    finally:
        tracemalloc.stop()
    # A few hundred bytes of bz2 standing for 128 MiB: refused past MAX_RATIO times its size.
    array = np.zeros(1 << 24)
    buffer = io.BytesIO()
    joblib.dump(array, buffer, compress=("bz2", 9))
    with pytest.raises(DeserializationError, match="decompresses to more than"):
        _load_joblib(buffer.getvalue())
    # A protocol 0 pickle is no joblib file, compressed or not.
    text = pickle.dumps({"a": 1}, protocol=0)
    for data in (text, zlib.compress(text)):
        with pytest.raises(DeserializationError, match="not a joblib stream"):
            _load_joblib(data)
    # What a load refuses as damage, a scan (inspect) reports as a problem.
    for data in (_compressed([1], "zlib") + b"tail", _compressed([1], "zlib")[:-4]):
        assert safety.scan_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist()).problem
    plain = io.BytesIO()
    joblib.dump([1], plain)
    tailed = plain.getvalue() + b"tail"
    assert "bytes after its object" in str(
        safety.scan_joblib(io.BufferedReader(io.BytesIO(tailed)), Allowlist()).problem
    )


def test_an_array_shape_of_huge_integers_is_refused_before_any_arithmetic() -> None:
    """A shape of a thousand 8000-bit integers made math.prod take 26 s (300 bytes of bz2)."""
    wrapper = joblib.numpy_pickle.NumpyArrayWrapper
    for shape, dtype, message in [
        ((1 << 7999,) * 1000, "f8", "malformed shape"),
        ((1,) * 65, "f8", "malformed shape"),
        ((1 << 63,), "f8", "malformed shape"),
        ((1 << 62,), "V0", "elements of no size"),  # nothing to read, len() of 2**62
    ]:
        with pytest.raises(DeserializationError, match=message):
            ArrayHeader.of(wrapper(np.ndarray, shape, "C", np.dtype(dtype)), Allowlist())


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(COMPRESSIONS),
    st.lists(st.integers() | st.text() | st.floats(allow_nan=False), max_size=20),
    st.integers(0, 3000),
)
def test_compressed_joblib_files_load_as_joblib_loads_them(
    method: str, values: list[Any], length: int
) -> None:
    """Files joblib compressed (``compress=3``, imported) go through the same walls."""
    value = {"values": values, "weights": np.arange(length, dtype=np.float32)}
    data = _compressed(value, method)
    loaded = safety.load_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist(), size=len(data))
    assert loaded["values"] == values
    np.testing.assert_array_equal(loaded["weights"], value["weights"])


@pytest.mark.parametrize("method", COMPRESSIONS)
def test_compressed_joblib_files_are_refused_as_the_uncompressed_ones(method: str) -> None:
    data = _compressed({"run": os.system}, method)
    with pytest.raises(UnsafeObjectError, match=r"(os|posix)\.system"):
        safety.load_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist())
    scan = safety.scan_joblib(io.BufferedReader(io.BytesIO(data)), Allowlist())
    assert set(scan.refused) & {"os.system", "posix.system"} and scan.problem is None


# -- state that compiled code would trust -------------------------------------------------------


class Forged:
    """Pickles as ``func(*args)`` with `state` set afterwards, like any reduced object."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any) -> None:
        self.reduced = (func, args, state)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def _forged_tree() -> Forged:
    tree = _models()["forest"].estimators_[0].tree_
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10**6  # a link far outside the node array
    return Forged(type(tree), tree.__reduce__()[1], state)


def _forged_kd_tree() -> Forged:
    from sklearn.neighbors import KDTree

    tree = KDTree(np.random.default_rng(0).standard_normal((30, 2)))
    state = list(tree.__getstate__())
    state[1] = state[1].copy()
    state[1][3] = 10**7  # a sample index outside the data
    func, args, _ = tree.__reduce__()  # sklearn's newObj(KDTree)
    return Forged(func, args, tuple(state))


def _forged_sparse() -> Any:
    matrix = scipy.sparse.random(5, 4, density=0.5, format="csr", random_state=0)
    matrix.indptr[-1] = -5  # scipy's own check skips everything when nnz < 0
    return matrix


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_forged_tree, "tree has node links"),
        (_forged_kd_tree, "KDTree or BallTree has indices out of range"),
        (_forged_sparse, "inconsistent index pointers"),
        (
            lambda: Forged(
                np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": ("x", 0)}, 8, 1, 16)
            ),
            "data type 'x' not understood",
        ),
        (
            lambda: Forged(np.dtype, ("m8", False, True), (3, "<", None, None, None, -1, -1, 0)),
            "datetime dtype lacks its unit",
        ),
        (
            lambda: Forged(
                np.ndarray.__reduce__(np.zeros(1))[0],
                (np.ndarray, (0,), b"b"),
                (1, (20,), np.dtype("O"), False, [1, 2]),
            ),
            "does not match its shape",
        ),
    ],
)
def test_state_that_crashes_compiled_code_is_refused(make: Callable[[], Any], message: str) -> None:
    # Each of these loads with plain pickle and crashes the interpreter once used (or at once).
    data = pickle.dumps(make(), protocol=5)
    with pytest.raises(DeserializationError, match=message):
        _load(data)


def test_checked_models_still_round_trip() -> None:
    from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    features, labels = make_classification(n_samples=120, n_features=5, random_state=1)
    features[:, 0] = np.round(np.abs(features[:, 0]) * 3)  # a categorical column
    models = [
        HistGradientBoostingClassifier(max_iter=5, categorical_features=[0]),
        GradientBoostingRegressor(n_estimators=5),
        KNeighborsClassifier(algorithm="kd_tree"),
        KNeighborsClassifier(algorithm="ball_tree"),
        SVC(),
    ]
    for model in models:
        model.fit(features, labels)
        for serializer in ("pickle", "joblib"):
            data = _serialize(model, serializer)
            load = safety.load_joblib if serializer == "joblib" else safety.load_pickle
            loaded = load(io.BufferedReader(io.BytesIO(data)), Allowlist(), size=len(data))
            np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    matrices = scipy.sparse.random(6, 5, density=0.4, format="csr", random_state=0)
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "lil", "dok"):
        loaded = _load(pickle.dumps(matrices.asformat(fmt), protocol=5))
        assert loaded.format == fmt and (loaded != matrices).nnz == 0


def test_a_lambda_saved_with_joblib_suggests_cloudpickle(store: castore.Store) -> None:
    for serializer in ("joblib", "pickle"):
        with pytest.raises(castore.InvalidInputError, match="serializer='cloudpickle'"):
            store.save({"f": lambda x: x}, "fn", serializer=serializer)


@pytest.mark.filterwarnings("ignore::castore.UnloadableVersionWarning")  # saved on purpose
def test_castore_load_takes_load_options(tmp_path: Path) -> None:
    with castore.init(tmp_path / "store") as store:
        ref = store.qualified(store.save(Custom(5), "custom", serializer="pickle").reference)
    with pytest.raises(UnsafeObjectError, match=r"trusted=\['tests\.test_safety\.Custom'\]"):
        castore.load(ref)
    assert castore.load(ref, trusted=[Custom]).value == 5
    with pytest.raises(castore.errors.UntrustedVersionError):
        castore.load(ref, trusted=[Custom], require_signature=True)


def test_a_joblib_refusal_names_every_refused_global_past_arrays_and_inside_object_arrays(
    tmp_path: Path,
) -> None:
    obj = {
        "first": Custom(1),
        "weights": np.arange(1000.0),  # bytes that are no opcodes follow each array header
        "objects": np.array([Payload(os.system, "true"), None], dtype=object),
        "fortran": np.asfortranarray(np.ones((3, 2))),
        "last": OrderedDict(f=partial(print)),
    }
    expected = ("tests.test_safety.Custom", f"{os.system.__module__}.system", "builtins.print")
    path = tmp_path / "obj.joblib"
    joblib.dump(obj, path)
    for mmap_mode in (None, "r"):
        with open(path, "rb") as file, pytest.raises(UnsafeObjectError) as error:
            safety.load_joblib(file, Allowlist(), path=str(path), mmap_mode=mmap_mode)
        assert error.value.refused == expected
    with open(path, "rb") as file:
        scan = safety.scan_joblib(io.BufferedReader(file), Allowlist())  # seeks past arrays
    data = path.read_bytes()
    unseekable = io.BufferedReader(io.BytesIO(data))
    unseekable.seekable = lambda: False  # type: ignore[method-assign]  # a verified stream
    for found in (scan, safety.scan_joblib(unseekable, Allowlist(), size=len(data))):
        assert found.refused == expected and found.problem is None
        uses = {g.name: g.use for g in found.globals}
        assert uses["joblib.numpy_pickle.NumpyArrayWrapper"] == "called"
        assert uses["numpy.ndarray"] == "held"


def test_a_refusal_names_every_refused_global_at_once() -> None:
    data = _opcodes(
        pickle.MARK,
        _global_pickle("pandas.core.frame", "DataFrame")[2:-1],
        _global_pickle("pyarrow.lib", "Table")[2:-1],
        _global_pickle("os", "system")[2:-1],
        pickle.TUPLE,
    )
    with pytest.raises(UnsafeObjectError) as error:
        _load(data)
    assert error.value.refused == ("pandas.core.frame.DataFrame", "pyarrow.lib.Table", "os.system")
    assert "trusted=['pandas.core.frame.DataFrame', 'pyarrow.lib.Table', 'os.system']" in str(
        error.value
    )
