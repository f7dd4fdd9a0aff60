"""An adversarial corpus: attacks built as a store writer would build them, each refused.

Every case is a stream planted as a version (hand-assembled opcodes, or an ordinary
pickle edited after the fact) whose globals the previous allowlist admitted. Each check
shows, where that is cheap, that Python's plain unpickler runs the attack; then that
`store.load` refuses it with UnsafeObjectError before any side effect, which a marker
file and an audit-hook recorder confirm.
"""

from __future__ import annotations

import io
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import castore
from castore.errors import DeserializationError, UnsafeObjectError
from tests.helpers import plant_version

# -- an opcode assembler --------------------------------------------------------------------


def text(value: str) -> bytes:
    """Push a str."""
    encoded = value.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded


def glob(module: str, name: str) -> bytes:
    """Push a global."""
    return text(module) + text(name) + pickle.STACK_GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) through REDUCE."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def build(target: bytes, state: dict[str, bytes]) -> bytes:
    """`target` with its state set by BUILD."""
    items = b"".join(text(key) + value for key, value in state.items())
    return target + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.BUILD


def stream(body: bytes) -> bytes:
    """A protocol 4 pickle of one object."""
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def integer(value: int) -> bytes:
    """Push an int of any size (LONG4)."""
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG4 + struct.pack("<i", len(data)) + data


# -- side effects ---------------------------------------------------------------------------

WATCHED = ("os.system", "exec", "compile", "subprocess.Popen", "os.mkdir", "os.exec")
WATCHED += ("os.posix_spawn", "socket.connect", "os.remove", "code.__new__")


class Recorder:
    """An audit hook recording side-effect events while a test loads an attack."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.thread: int | None = None
        self.listening = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.listening or self.thread != threading.get_ident():
            return
        writes = event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+")
        if event == "exec" and getattr(args[0], "co_filename", "").startswith(sys.prefix):
            return  # a module imported to look an admitted global up
        if event in WATCHED or event.startswith(("os.exec", "socket.")) or writes:
            self.events.append((event, repr(args)[:200]))


_RECORDER = Recorder()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """The recorder, listening to this thread for the test."""
    _RECORDER.events.clear()
    _RECORDER.thread = threading.get_ident()
    yield _RECORDER
    _RECORDER.thread = None
    _RECORDER.listening = False


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    """A store on local disk."""
    with castore.init(tmp_path / "store") as store:
        yield store


def plant(store: castore.Store, data: bytes, serializer: str = "pickle") -> str:
    """Commit `data` as a version, as a store writer without a key can."""
    return plant_version(store, "victim/model", data, serializer).reference


def refused(store: castore.Store, data: bytes, recorder: Recorder, marker: Path | None) -> str:
    """Load the planted `data` by default: UnsafeObjectError, no side effect. The message."""
    ref = plant(store, data)
    store.info(ref)  # the store's own cache is filled before listening
    recorder.listening = True
    try:
        with pytest.raises(UnsafeObjectError) as error:
            store.load(ref)
    finally:
        recorder.listening = False
    assert recorder.events == [], recorder.events
    assert marker is None or not marker.exists()
    return str(error.value)


def naive_runs(data: bytes, function: str) -> bool:
    """Whether plain pickle.loads gets as far as running `function` (seen in the traceback)."""
    try:
        pickle.loads(data)
    except Exception as exc:
        return any(frame.name == function for frame in traceback.extract_tb(exc.__traceback__))
    return True


# -- code execution through admitted globals ---------------------------------------------------

PARTIAL = glob("functools", "partial")
ORDERED_DICT = glob("collections", "OrderedDict")


def shadowing(method: str, helper: tuple[str, str], *bound: bytes) -> bytes:
    """An OrderedDict whose instance attribute `method` is a partial of a scikit-learn helper."""
    gadget = call(PARTIAL, glob(*helper), *bound)
    return build(call(ORDERED_DICT), {method: gadget})


CHECK_MEMORY = ("sklearn.utils.validation", "check_memory")
CHECK_RESPONSE = ("sklearn.utils.validation", "_check_response_method")


def test_dict_of_a_shadowed_keys_calling_a_held_helper(
    local_store: castore.Store, tmp_path: Path, recorder: Recorder
) -> None:
    # dict(x) calls x.keys() from C; keys is partial(check_memory, path), which makes
    # joblib create a folder: the first step of the reported chain to exec.
    marker = tmp_path / "pwned"
    data = stream(
        call(glob("builtins", "dict"), shadowing("keys", CHECK_MEMORY, text(str(marker))))
    )
    with pytest.raises(TypeError):
        pickle.loads(data)
    assert marker.is_dir(), "plain pickle runs the helper"
    shutil.rmtree(marker)
    message = refused(local_store, data, recorder, marker)
    assert "sklearn.utils.validation.check_memory is refused" in message


@pytest.mark.parametrize(
    ("outer", "method"),
    [
        (glob("collections", "OrderedDict"), "keys"),  # OrderedDict(x) calls x.keys()
        (glob("uuid", "UUID"), "replace"),  # UUID(x) calls x.replace("urn:", "")
    ],
)
def test_other_c_level_lookups_of_a_shadowed_method(
    local_store: castore.Store, recorder: Recorder, outer: bytes, method: str
) -> None:
    bound = (text("obj"), text("x")) if method == "keys" else ()
    data = stream(call(outer, shadowing(method, CHECK_RESPONSE, *bound)))
    assert naive_runs(data, "_check_response_method")
    refused(local_store, data, recorder, None)


def test_shadowing_without_a_partial_is_refused_too(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # The second wall of data: even a harmless value may not shadow a method, nor be
    # set on a builtin container, nor be a dunder such as numpy's __array__.
    import sklearn.linear_model  # imported now, so that only the load is recorded

    assert sklearn.linear_model.LinearRegression
    for state in ({"keys": text("x")}, {"__array__": text("x")}):
        target = build(call(ORDERED_DICT), state)
        assert "sets state on a OrderedDict" in refused(local_store, stream(target), recorder, None)
    estimator = build(call(glob("sklearn.linear_model._base", "LinearRegression")),
                      {"predict": text("x")})  # fmt: skip
    assert "shadow behaviour" in refused(local_store, stream(estimator), recorder, None)
    dunder = build(call(glob("sklearn.linear_model._base", "LinearRegression")),
                   {"__array__": text("x")})  # fmt: skip
    assert "never dunders" in refused(local_store, stream(dunder), recorder, None)


@pytest.mark.filterwarnings("ignore::castore.UnloadableVersionWarning")  # saved on purpose
def test_a_saved_model_holding_a_partial_of_a_private_helper(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # An ordinary store.save: the attacker's object pickles with admitted globals only.
    from functools import partial

    from sklearn.metrics._scorer import _cached_call
    from sklearn.preprocessing import FunctionTransformer

    model = FunctionTransformer(func=partial(_cached_call, None))
    data = pickle.dumps(model, protocol=5)
    ref = local_store.save(model, "victim/model", serializer="pickle").reference
    assert local_store.open_version(ref).read() == data
    message = refused(local_store, data, recorder, None)
    assert "_cached_call" in message and "trusted=" in message
    assert ref


# -- check, then mutate -----------------------------------------------------------------------


def test_an_append_after_a_checked_hist_gradient_boosting_model(
    local_store: castore.Store, recorder: Recorder
) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    features = rng.standard_normal((200, 3))
    model = HistGradientBoostingRegressor(max_iter=2).fit(features, features[:, 0])
    predictors = model._predictors[0]
    forged = pickle.loads(pickle.dumps(predictors[0]))
    inner = np.flatnonzero(~forged.nodes["is_leaf"].astype(bool))
    forged.nodes["feature_idx"][inner[0]] = 2**40  # predict() reads far outside X
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.dump((model, forged))
    memo = pickler.memo.copy()
    late_append = b"".join(
        pickle.LONG_BINGET + struct.pack("<I", memo[id(obj)][0]) for obj in (predictors, forged)
    )
    data = buffer.getvalue()[:-1] + late_append + pickle.APPEND + pickle.POP + pickle.STOP
    loaded, _ = pickle.loads(data)
    assert loaded._predictors[0][-1].nodes["feature_idx"].max() == 2**40  # plain pickle takes it
    message = refused(local_store, data, recorder, None)
    assert "after an object took it" in message


# -- tiny streams, huge costs -----------------------------------------------------------------


def _quick(store: castore.Store, data: bytes, recorder: Recorder) -> str:
    started = time.perf_counter()
    tracemalloc.start()
    try:
        message = refused(store, data, recorder, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 32 * 1024 * 1024
    return message


def test_fraction_text_with_a_huge_exponent(local_store: castore.Store, recorder: Recorder) -> None:
    data = stream(call(glob("fractions", "Fraction"), text("1e10000000")))
    assert len(data) < 64
    assert "exponent" in _quick(local_store, data, recorder)


def test_numpy_void_scalars_of_two_gigabytes(
    local_store: castore.Store, recorder: Recorder
) -> None:
    void = call(glob("numpy", "void"), pickle.BININT + struct.pack("<i", 2**31 - 1))
    data = stream(pickle.MARK + void * 3 + pickle.TUPLE)
    assert "numpy.void" in _quick(local_store, data, recorder)


def test_scalars_and_arrays_need_the_bytes_they_claim(
    local_store: castore.Store, recorder: Recorder
) -> None:
    dtype = call(glob("numpy", "dtype"), text("V2147483647"))
    scalar = call(glob("numpy._core.multiarray", "scalar"), dtype, pickle.SHORT_BINBYTES + b"\x01x")
    assert "numpy scalar" in _quick(local_store, stream(scalar), recorder)
    frombuffer = call(glob("numpy._core.numeric", "_frombuffer"), pickle.SHORT_BINBYTES + b"\x00",
                      call(glob("numpy", "dtype"), text("f8")),
                      integer(2**40) + pickle.TUPLE1, text("C"))  # fmt: skip
    assert "size mismatch" in _quick(local_store, stream(frombuffer), recorder)


def test_big_integers_given_to_constructors(local_store: castore.Store, recorder: Recorder) -> None:
    big = integer(1 << 100_000)
    for func in (glob("fractions", "Fraction"), glob("datetime", "timedelta")):
        assert "integer" in _quick(local_store, stream(call(func, big)), recorder)


def test_a_memo_index_of_a_billion_allocates_nothing(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # C's unpickler sizes its memo by the index: this 9-byte stream costs it 16 GiB.
    bomb = pickle.PROTO + b"\x02" + pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 2**30)
    data = bomb + pickle.POP + glob("os", "system") + pickle.STOP
    assert "os.system" in _quick(local_store, data, recorder)


# -- the second wall ---------------------------------------------------------------------------


def test_the_audit_hook_turns_a_missed_gadget_into_an_error(tmp_path: Path) -> None:
    # A user who trusts a function that turns out to run code still gets no side effect.
    marker = tmp_path / "pwned"
    data = stream(call(glob("os", "system"), text(f"touch {marker}")))
    allowlist = castore.safety.Allowlist(["os.system"])
    with pytest.raises(UnsafeObjectError, match=r"os\.system while loading"):
        castore.safety.load_pickle(io.BytesIO(data), allowlist, size=len(data))
    assert not marker.exists()
    exec_data = stream(call(glob("builtins", "exec"), text(f"open({str(marker)!r}, 'w')")))
    with pytest.raises(UnsafeObjectError, match=r"(exec|compile) while loading"):
        castore.safety.load_pickle(
            io.BytesIO(exec_data), castore.safety.Allowlist(["builtins.exec"]), size=len(exec_data)
        )
    assert not marker.exists()


class Waiter:
    """A trusted class whose construction holds a load open until the test releases it."""

    started = threading.Event()
    release = threading.Event()

    def __init__(self) -> None:
        Waiter.started.set()
        Waiter.release.wait(10)


def test_the_hook_is_active_only_in_the_loading_thread() -> None:
    data = stream(call(glob(__name__, "Waiter")))
    loaded: list[Any] = []
    thread = threading.Thread(
        target=lambda: loaded.append(
            castore.safety.load_pickle(io.BytesIO(data), castore.safety.Allowlist([Waiter]))
        )
    )
    thread.start()
    try:
        assert Waiter.started.wait(10)
        assert eval(compile("6 * 7", "<other thread>", "eval")) == 42  # not refused here
    finally:
        Waiter.release.set()
        thread.join()
    assert isinstance(loaded[0], Waiter)


# -- red-team round 2: attacks whose failure mode is a crash, run in a victim process -------

ROOT = Path(__file__).resolve().parent.parent


def in_a_victim(store: castore.Store, ref: str, use: str = "", timeout: float = 60) -> str:
    """What a separate process prints when it loads `ref` and runs `use` on it (`obj`).

    A segfault, an abort or a hang fails the test here, where the in-process tests would die.
    """
    where = store.url  # a local store: its URL is its folder
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.victim_load", str(where), ref, use],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the victim was still running after {timeout} s")
    assert proc.returncode == 0, (
        f"the victim died (exit status {proc.returncode}): {proc.stdout[-600:]}"
        f"{proc.stderr[-1500:]}"
    )
    return proc.stdout


def refused_in_a_victim(
    store: castore.Store, data: bytes, use: str = "", serializer: str = "pickle"
) -> str:
    """Plant `data`; a victim process loading it gets a castore error. The message."""
    out = in_a_victim(store, plant(store, data, serializer), use)
    assert out.startswith("REFUSED "), out[-2000:]
    return out


def test_a_benign_object_array_loads_before_numpy_ma_is_imported(
    local_store: castore.Store,
) -> None:
    # Finding 00: castore's own checks touched np.ma, whose lazy import the audit hook refused.
    ref = local_store.save(np.array(["a", None], dtype=object), "arr", serializer="pickle")
    out = in_a_victim(local_store, ref.reference, "assert list(obj) == ['a', None]")
    assert out.splitlines() == ["LOADED", "USED"], out


class Reduced:
    """Pickles as `reduction` (what a ``__reduce__`` returns): a stream built by hand."""

    def __init__(self, *reduction: Any) -> None:
        self.reduction = reduction

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduction


def grafted_array(target: str, spec: Any, count: int, data: bytes) -> bytes:
    """An array whose dtype is built as ``dtype(target)`` and given the state of `spec`."""
    from numpy._core.multiarray import _reconstruct

    state = np.dtype(spec).__reduce__()[2]
    dtype = Reduced(np.dtype, (target, False, True), state)
    array = Reduced(_reconstruct, (np.ndarray, (0,), b"b"), (1, (count,), dtype, False, data))
    return pickle.dumps({"array": array}, protocol=5)


def test_a_structured_dtype_state_grafted_on_an_object_dtype(local_store: castore.Store) -> None:
    # Finding 09: an object array without hasobject, its elements pointers from the stream.
    pointers = struct.pack("<QQ", 0x4141414141414141, 0x4242424242424240)
    data = grafted_array("O", [("a", "f8")], 2, pointers)
    for serializer in ("pickle", "joblib"):
        out = refused_in_a_victim(local_store, data, "print(obj)", serializer)
        assert "DeserializationError" in out and "dtype" in out


def test_fields_grafted_past_the_items_of_a_float64(local_store: castore.Store) -> None:
    # Finding 04: fields at offsets past the 8-byte items read and write out of bounds.
    spec = {"names": ["a", "b"], "formats": ["f8", "f8"], "offsets": [0, 2_000_000_000],
            "itemsize": 2_000_000_008}  # fmt: skip
    data = grafted_array("f8", spec, 4, b"\x00" * 32)
    out = refused_in_a_victim(local_store, data, "print(obj['array']['b'].tobytes())")
    assert "given to float64" in out
    subarray = grafted_array("V8", ("f8", (4,)), 1, b"\x00" * 8)  # 32 bytes on an 8-byte item
    assert "DeserializationError" in refused_in_a_victim(local_store, subarray, "print(obj)")


def test_a_bunch_whose_keys_become_a_wild_array_interface(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # Finding 08: copyreg._reconstructor(Bunch, dict, items) filled a Bunch with any keys;
    # Bunch.__getattr__ made __array_interface__ an attribute numpy reads: any address.
    import copyreg

    from sklearn.linear_model import LinearRegression
    from sklearn.utils import Bunch

    interface = {"data": (0x414141414000, False), "shape": (3,), "typestr": "<f8", "version": 3}
    features = np.random.default_rng(0).random((20, 3))
    model = LinearRegression().fit(features, features @ [1.0, 2.0, 3.0])
    model.coef_ = Reduced(copyreg._reconstructor, (Bunch, dict, {"__array_interface__": interface,
                                                                "ndim": 1}))  # fmt: skip
    data = pickle.dumps(model, protocol=5)
    out = refused_in_a_victim(local_store, data, "obj.predict(np.ones((2, 3)))")
    assert "sklearn.utils._bunch.Bunch is refused" in out
    items = pickle.EMPTY_DICT + text("__array_interface__") + pickle.NONE + pickle.SETITEM
    ordered = call(glob("copyreg", "_reconstructor"), ORDERED_DICT, glob("builtins", "dict"), items)
    assert "never dunders" in refused(local_store, stream(ordered), recorder, None)


def test_str_decoding_punycode_costs_quadratic_time(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # Finding 06: str(b, 'punycode') is quadratic (1 MB: ~16 s); only pickle's codecs remain.
    b"xn--caf-dma".decode("idna")  # the codec imported, as in a process that used IDNA
    payload = ("\u00e9" * 200_000).encode("punycode")
    encoded = pickle.BINBYTES + struct.pack("<I", len(payload)) + payload
    data = stream(call(glob("builtins", "str"), encoded, text("punycode")))
    assert "str() decoding" in _quick(local_store, data, recorder)
    latin = stream(
        call(glob("builtins", "str"), pickle.SHORT_BINBYTES + b"\x01\xe9", text("latin-1"))
    )
    assert castore.safety.load_pickle(io.BytesIO(latin), castore.safety.Allowlist()) == "\u00e9"


def test_a_scoring_monitor_connecting_in_its_setstate(
    local_store: castore.Store, recorder: Recorder
) -> None:
    # Finding 10: ScoringMonitor.__setstate__ connects to the address in its state; only
    # the audit hook stopped it. sklearn.callback is now refused by admission.
    import copyreg
    import socket

    from sklearn.callback._scoring_monitor import ScoringMonitor
    from sklearn.callback._transport import ListenerHandle

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        handle = ListenerHandle(server.getsockname(), b"k" * 32)
        state = {"_scoring": ["accuracy"], "_log": [], "_estimator_scorers": {},
                 "_listener_handle": handle}  # fmt: skip
        monitor = Reduced(copyreg._reconstructor, (ScoringMonitor, object, None), state)
        message = refused(local_store, pickle.dumps(monitor, protocol=5), recorder, None)
        assert "sklearn.callback._scoring_monitor.ScoringMonitor is refused" in message
        with pytest.raises(TimeoutError):
            server.accept()


def test_random_states_whose_position_is_outside_their_buffer(local_store: castore.Store) -> None:
    # Finding 05: numpy stores MT19937's pos and Philox's buffer_pos unchecked; the first
    # draw reads 16 GiB before the state.
    legacy = np.random.RandomState(0)
    state = legacy.get_state(legacy=False)
    state["state"]["pos"] = -(2**31)
    legacy.set_state(state)
    philox = np.random.Generator(np.random.Philox(1))
    state = philox.bit_generator.state
    state["buffer_pos"] = -(2**31)
    philox.bit_generator.state = state
    for rng, draw in ((legacy, "rand()"), (philox, "random()")):
        data = pickle.dumps({"seeded": rng}, protocol=5)
        out = refused_in_a_victim(local_store, data, f"print(obj['seeded'].{draw})")
        assert "random state is malformed or out of range" in out


def wide_tree(features: int, feature: int) -> Any:
    """A fitted two-feature tree classifier whose Tree claims `features` and tests `feature`."""
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    model = DecisionTreeClassifier(max_depth=1).fit(points, [0, 1, 0, 1])
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["feature"][0] = feature
    forged = Tree(features, np.array(model.tree_.n_classes, dtype=np.intp), model.tree_.n_outputs)
    forged.__setstate__({**state, "nodes": nodes})
    model.tree_ = forged
    return model


def test_a_tree_wider_than_its_estimator(local_store: castore.Store) -> None:
    # Finding 01: predict validates X against n_features_in_ (2), the Tree reads X[i, 2**31-2].
    from sklearn.ensemble import RandomForestClassifier

    model = wide_tree(2**31 - 1, 2**31 - 2)
    use = "print(obj.predict(np.zeros((3, 2))))"
    out = refused_in_a_victim(local_store, pickle.dumps(model, protocol=5), use)
    assert "tree does not match its 2 features" in out
    # A forest passes X to its trees unvalidated: each tree must be as wide as the forest.
    forest = RandomForestClassifier(n_estimators=2).fit(np.zeros((4, 3)), [0, 1, 0, 1])
    forest.estimators_[1] = wide_tree(2, 1)
    ref = plant(local_store, pickle.dumps(forest, protocol=5))
    with pytest.raises(DeserializationError, match="holds a tree of another width"):
        local_store.load(ref)


def test_gradient_boosting_stages_wider_than_its_predictions(local_store: castore.Store) -> None:
    # Finding 03: estimators_ of shape (1, K) with n_trees_per_iteration_ = 1 make
    # predict_stages write K columns of leaf values into a one-column array.
    from sklearn.ensemble import GradientBoostingRegressor

    points = np.random.default_rng(0).random((40, 2))
    model = GradientBoostingRegressor(n_estimators=1, max_depth=1).fit(points, points[:, 0])
    tree = model.estimators_[0, 0]
    tree.tree_.value[:] = 1e300
    model.estimators_ = np.empty((1, 200_000), dtype=object)
    model.estimators_[0, :] = tree
    use = "print(obj.predict(np.zeros((3, 2)))); junk = [bytearray(100) for _ in range(10000)]"
    out = refused_in_a_victim(local_store, pickle.dumps(model, protocol=5), use)
    assert "estimators_ of the wrong shape" in out


def test_a_dict_key_nested_300000_deep(local_store: castore.Store) -> None:
    # Finding 02: SETITEM hashes the key; C's tuple hash recursed until the stack overflowed.
    depth = 300_000
    data = (pickle.PROTO + b"\x05" + pickle.EMPTY_DICT + pickle.EMPTY_TUPLE
            + pickle.TUPLE1 * depth + pickle.NONE + pickle.SETITEM + pickle.STOP)  # fmt: skip
    assert "nests more than 1000 deep" in refused_in_a_victim(local_store, data)
    members = pickle.EMPTY_SET + pickle.MARK + pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth
    assert "nests more" in refused_in_a_victim(local_store, stream(members + pickle.ADDITEMS))


def test_lists_nested_deeper_than_a_thousand(
    local_store: castore.Store, recorder: Recorder
) -> None:
    nested = pickle.EMPTY_LIST + (pickle.MARK + pickle.EMPTY_LIST) * 1200
    data = stream(nested + pickle.LIST * 1200 + pickle.APPEND)
    assert "nests more than 1000 deep" in refused(local_store, data, recorder, None)


def test_a_memo_billion_laughs(local_store: castore.Store) -> None:
    # Finding 07: 40 lists each holding the previous twice: 325 bytes, 2**40 on print().
    parts = [pickle.PROTO + b"\x04", pickle.EMPTY_LIST, pickle.MEMOIZE]
    for level in range(1, 41):
        previous = pickle.BINGET + bytes([level - 1])
        parts += [
            pickle.EMPTY_LIST,
            pickle.MEMOIZE,
            pickle.MARK,
            previous,
            previous,
            pickle.APPENDS,
        ]
    data = b"".join(parts) + pickle.STOP
    assert len(data) < 400
    assert "expands to more than" in refused_in_a_victim(local_store, data, "print(obj)")


def test_the_audit_hook_refuses_attribute_changes_and_blocking_opens(tmp_path: Path) -> None:
    # Noted by the red team: os.utime, os.setxattr and reading a named pipe got through.
    import os

    marker = tmp_path / "marker"
    marker.write_bytes(b"")
    os.utime(marker, (1, 1))
    for function, extra in (
        ("utime", pickle.NONE),
        ("setxattr", text("user.x") + pickle.SHORT_BINBYTES + b"\x011"),
    ):
        data = stream(call(glob("os", function), text(str(marker)), extra))
        with pytest.raises(UnsafeObjectError, match=rf"os\.{function} while loading"):
            castore.safety.load_pickle(
                io.BytesIO(data), castore.safety.Allowlist([f"os.{function}"])
            )
    assert marker.stat().st_mtime == 1 and not os.listxattr(marker)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    data = stream(call(glob("builtins", "open"), text(str(pipe))))
    errors: list[BaseException] = []

    def load() -> None:
        try:
            castore.safety.load_pickle(
                io.BytesIO(data), castore.safety.Allowlist(["builtins.open"])
            )
        except UnsafeObjectError as exc:
            errors.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open end
        pytest.fail("the load hung opening a named pipe")
    assert errors and "not a regular file" in str(errors[0])
