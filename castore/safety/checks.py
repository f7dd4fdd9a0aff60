"""Structural checks of objects whose compiled code trusts their state.

numpy, scipy and scikit-learn classes that castore admits follow indices and links in
their state without bounds checks. The state checks here run before numpy's dtype and
array ``__setstate__``; the post-load checks (`POST_LOAD_CHECKS`) run once the whole
stream has been read, on the final objects, so that nothing the stream does after a
check can change what was checked.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from castore.errors import DeserializationError
from castore.safety.ensembles import TREE_CHECKS
from castore.safety.names import lookup


def check_array_state(array: Any, state: Any) -> None:
    """numpy's ndarray.__setstate__ trusts an object array's list to hold every element.

    The state must describe its data exactly: an object array needs one list item per
    element, any other array as many bytes as its shape and dtype say.
    """
    masked = lookup("numpy.ma", "MaskedArray")  # never np.ma: that would import it mid-load
    if isinstance(masked, type) and isinstance(array, masked):
        if not (isinstance(state, tuple) and len(state) == 7):
            raise DeserializationError("a numpy masked array has malformed state")
        _, shape, dtype, fortran, data, mask, _ = state
        _check_array_parts(shape, dtype, fortran, data)
        _check_array_parts(shape, lookup("numpy.ma", "make_mask_descr")(dtype), fortran, mask)
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
        return _grafted_on(dtype, state, sys.modules["numpy"].dtype(subarray)).__reduce__()[2]
    if names is not None:
        rebuilt = _grafted_on(dtype, state, _structured_dtype(state))
        return _with_metadata(rebuilt.__reduce__()[2], extra)
    rebuilt, metadata = _plain_dtype(dtype, state, extra)
    return _with_metadata(rebuilt.__reduce__()[2], metadata)


def _grafted_on(dtype: Any, state: tuple[Any, ...], rebuilt: Any) -> Any:
    """`rebuilt` (a structured or subarray dtype), if `dtype` is the plain void dtype of its
    size that numpy pickles it as (``dtype('V16')``).

    numpy's __setstate__ grafts fields onto whatever dtype it is given, keeping that
    dtype's type and size: on ``dtype('O')`` it makes an object dtype without the object
    flags (elements read as pointers from the stream's bytes), on ``dtype('f8')`` fields
    past the item's 8 bytes.
    """
    ok = (
        dtype.kind == "V"
        and dtype.names is None
        and dtype.subdtype is None
        and dtype.type is sys.modules["numpy"].void
        and state[1] == "|"
        and state[5] == dtype.itemsize == rebuilt.itemsize
        and rebuilt.kind == "V"
    )
    if not ok:
        raise DeserializationError(
            f"a numpy dtype's state describes {rebuilt} but is given to {dtype}"
        )
    return rebuilt


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
    flexible = dtype.kind in "SUV"  # numpy pickles their size; other types say -1
    if elsize != (dtype.itemsize if flexible else -1):
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
    check = _check_of(obj)
    if check is not None:
        check(obj)


def needs_check(obj: Any) -> bool:
    """Whether `check_loaded` has anything to check on `obj`."""
    return _check_of(obj) is not None


def _check_of(obj: Any) -> Callable[[Any], None] | None:
    """The check for `obj`: by its exact class, else by the first listed base it has."""
    check = POST_LOAD_CHECKS.get((type(obj).__module__, type(obj).__qualname__))
    if check is not None:
        return check
    for (module, name), by_base in CHECKS_BY_BASE:
        base = lookup(module, name)
        if isinstance(base, type) and isinstance(obj, base):
            return by_base
    return None


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
    found = lookup("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor")
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

CHECKS_BY_BASE: tuple[tuple[tuple[str, str], Callable[[Any], None]], ...] = (
    *TREE_CHECKS,
    (("scipy.sparse._base", "_spbase"), _check_scipy_sparse),
)
"""Checks run on instances of these classes and their subclasses, first match wins."""


_WORD = 2**64 - 1
_BIT_GENERATOR_STATES: dict[str, dict[str, tuple[int, int]]] = {
    # field: (number of words, largest word); 0 words is one integer
    "MT19937": {"key": (624, 2**32 - 1), "pos": (0, 624)},
    "PCG64": {"state": (0, 2**128 - 1), "inc": (0, 2**128 - 1)},
    "PCG64DXSM": {"state": (0, 2**128 - 1), "inc": (0, 2**128 - 1)},
    "Philox": {"counter": (4, _WORD), "key": (2, _WORD)},
    "SFC64": {"state": (4, _WORD)},
}
"""What numpy's bit generator state setters copy without checks: positions index buffers
(MT19937's ``pos`` its key, Philox's ``buffer_pos`` its buffer) on the next draw."""
_FLAGS = {"has_uint32": (0, 1), "uinteger": (0, 2**32 - 1), "has_gauss": (0, 1)}
_OUTER_FIELDS = {
    **{name: _FLAGS for name in _BIT_GENERATOR_STATES},
    "Philox": {**_FLAGS, "buffer": (4, _WORD), "buffer_pos": (0, 4)},
}


def check_random_state(target: Any, state: Any) -> None:
    """The state given to a numpy RandomState, Generator or bit generator is one numpy's
    own ``state`` getter could return for its bit generator."""
    generator, state = _bit_generator_state(target, state)
    name = type(generator).__name__
    ok = name in _BIT_GENERATOR_STATES and isinstance(state, dict)
    ok = ok and state.get("bit_generator") == name and isinstance(state.get("state"), dict)
    ok = ok and _fields_ok(state["state"], _BIT_GENERATOR_STATES[name], required=True)
    outer = {k: v for k, v in state.items() if k not in ("bit_generator", "state", "gauss")}
    ok = ok and type(state.get("gauss", 0.0)) is float
    if not (ok and _fields_ok(outer, _OUTER_FIELDS[name], required=False)):
        raise DeserializationError(f"a numpy {name} random state is malformed or out of range")


def _bit_generator_state(target: Any, state: Any) -> tuple[Any, Any]:
    """The bit generator whose state `state` sets, and that state in its dict form."""
    random = sys.modules["numpy"].random
    if isinstance(target, random.BitGenerator):
        pair = isinstance(state, tuple) and len(state) == 2  # (state, seed sequence)
        return target, state[0] if pair else state
    if isinstance(target, random.Generator):
        return target.bit_generator, state
    if isinstance(state, tuple) and len(state) == 5:  # RandomState's legacy tuple
        name, key, pos, has_gauss, gauss = state
        state = {"bit_generator": name, "state": {"key": key, "pos": pos},
                 "has_gauss": has_gauss, "gauss": gauss}  # fmt: skip
    return target._bit_generator, state


def _fields_ok(
    fields: dict[Any, Any], schema: dict[str, tuple[int, int]], *, required: bool
) -> bool:
    """Each field an integer (or `words` integers) in [0, largest]; all present if `required`."""
    np = sys.modules["numpy"]
    if not set(fields) <= set(schema) or (required and set(fields) != set(schema)):
        return False
    for key, value in fields.items():
        words, largest = schema[key]
        if words:
            ok = isinstance(value, np.ndarray) and value.shape == (words,)
            ok = ok and value.dtype.kind in "ui" and bool(((value >= 0) & (value <= largest)).all())
        else:
            ok = isinstance(value, int | np.integer) and 0 <= int(value) <= largest
        if not ok:
            return False
    return True
