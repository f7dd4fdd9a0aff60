"""XGBoost models in XGBoost's own JSON model format: no pickle either way.

XGBoost's loader trusts its input: a model whose tree points at a feature, a child or an
output group that is not there loads, and then crashes or corrupts the heap of the
process that predicts with it. So a reader checks the whole model in Python first, and
hands XGBoost not the stored bytes but the JSON re-encoded from what it checked, so that
the two parsers cannot read different models from one stream. Only what castore writes is
accepted: the gbtree booster with numerical splits and one value per leaf; other models
(dart, gblinear, categorical splits, vector leaves) are saved with joblib instead.

An XGBClassifier, XGBRegressor or XGBRanker is stored as XGBoost's ``save_model`` stores
it (the booster, and its estimator type in the ``scikit_learn`` attribute) and loads
through the same class's ``load_model``: hyperparameters that XGBoost does not save with
the booster come back unset, as with XGBoost's own files.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from castore.errors import DeserializationError, IncompatibleEnvironmentError, InvalidInputError
from castore.versions import strict_json

ESTIMATORS = {"classifier": "XGBClassifier", "regressor": "XGBRegressor", "ranker": "XGBRanker"}
"""The scikit-learn wrappers stored, by the estimator type XGBoost records for each."""
LEAF = -1
MAX_DEPTH = 256
"""Deeper trees make XGBoost's dumps and SHAP values take minutes for a 300 KB model."""
FEATURE_FLOOR = 4096
"""Features any model may declare; more cost a byte in every 8 of the model."""
CONTRIBUTIONS_FLOOR = 1 << 16
"""Output groups times features any model may declare; more cost a byte each: a victim's
predict(pred_contribs=True) allocates that many floats per row."""
NO_PARENT = 2**31 - 1
MAX_COUNT = 2**31 - 1
TREE_ARRAYS = (
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "split_type",
    "default_left",
    "base_weights",
    "loss_changes",
    "sum_hessian",
)
NO_CATEGORIES = ("categories", "categories_nodes", "categories_segments", "categories_sizes")


class _Damage(Exception):
    """What makes a model one castore does not accept (turned into the caller's error)."""


def _xgboost_types() -> tuple[Any, ...]:
    xgboost = sys.modules.get("xgboost")
    if xgboost is None:
        return ()
    return (xgboost.Booster, *(getattr(xgboost, name) for name in ESTIMATORS.values()))


@dataclass(frozen=True)
class CheckedModel:
    """A model that passed the checks: the JSON XGBoost wrote (what is stored), the JSON
    re-encoded from what was checked (what XGBoost reads back), and the estimator type
    (None for a Booster)."""

    written: bytes
    encoded: bytes
    kind: str | None


def checked_model(obj: object) -> CheckedModel | None:
    """`obj`'s checked model if it is an XGBoost Booster, XGBClassifier, XGBRegressor or
    XGBRanker whose model castore's reader accepts (such models save as xgboost by
    default), else None."""
    if type(obj) not in _xgboost_types():
        return None
    try:
        return checked(_model_json(obj))
    except (_Damage, InvalidInputError):
        return None


def _model_json(obj: Any) -> bytes:
    """XGBoost's JSON model file for a Booster or a scikit-learn wrapper."""
    try:
        with tempfile.TemporaryDirectory(prefix="castore-xgboost-") as folder:
            path = os.path.join(folder, "model.json")
            obj.save_model(path)
            with open(path, "rb") as file:
                return file.read()
    except Exception as exc:  # XGBoostError, or a wrapper that was never fitted
        raise InvalidInputError(f"XGBoost cannot save this {type(obj).__name__}: {exc}") from exc


def dump(obj: Any, file: io.RawIOBase) -> None:
    """Write an XGBoost model's JSON model file into `file` (`obj` may be the
    `CheckedModel` that `checked_model` gave for it)."""
    if not isinstance(obj, CheckedModel):
        if type(obj) not in _xgboost_types():
            raise InvalidInputError(
                "serializer 'xgboost' takes an xgboost Booster, XGBClassifier, XGBRegressor "
                f"or XGBRanker, not {type(obj).__name__}"
            )
        try:
            obj = checked(_model_json(obj))
        except _Damage as exc:
            raise InvalidInputError(
                f"serializer 'xgboost' cannot store this model: {exc}"
            ) from None
    file.write(obj.written)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Damage(f"{what} is not an object")
    return value


def _count(text: object, what: str) -> int:
    """A non-negative count XGBoost writes as a decimal string."""
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise _Damage(f"{what} is not a count")
    value = int(text)
    if value > MAX_COUNT:
        raise _Damage(f"{what} is too large")
    return value


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _ints(values: object, what: str) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise _Damage(f"{what} is not a list of integers")
    return values


def _floats(values: object, what: str) -> None:
    # Floats only: XGBoost refuses integers there, and math.isfinite overflows on 10**400.
    if not isinstance(values, list) or not all(
        type(v) is float and math.isfinite(v) for v in values
    ):
        raise _Damage(f"{what} is not a list of finite floats")


def _check_tree(tree: object, index: int, features: int) -> None:
    tree = _object(tree, f"tree {index}")
    where = f"tree {index}"
    if tree.get("id") != index:
        raise _Damage(f"{where} has id {tree.get('id')!r}")
    param = _object(tree.get("tree_param"), f"{where}'s tree_param")
    nodes = _count(param.get("num_nodes"), f"{where}'s num_nodes")
    if nodes < 1 or _count(param.get("num_deleted"), "num_deleted") != 0:
        raise _Damage(f"{where} has no nodes, or deleted ones")
    if _count(param.get("size_leaf_vector"), "size_leaf_vector") > 1:
        raise _Damage(f"{where} has vector leaves")
    if _count(param.get("num_feature"), "num_feature") != features:
        raise _Damage(f"{where}'s num_feature differs from the model's")
    for key in TREE_ARRAYS:
        if not isinstance(tree.get(key), list) or len(tree[key]) != nodes:
            raise _Damage(f"{where}'s {key} does not have one entry per node")
    if any(tree.get(key) != [] for key in NO_CATEGORIES):
        raise _Damage(f"{where} has categorical splits")
    left, right = _ints(tree["left_children"], "left_children"), _ints(tree["right_children"], "")
    parents, splits = _ints(tree["parents"], "parents"), _ints(tree["split_indices"], "")
    if any(t != 0 for t in _ints(tree["split_type"], "split_type")):
        raise _Damage(f"{where} has categorical splits")
    if any(d not in (0, 1) for d in _ints(tree["default_left"], "default_left")):
        raise _Damage(f"{where}'s default_left is not 0 or 1")
    for key in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
        _floats(tree[key], f"{where}'s {key}")
    if parents[0] != NO_PARENT:
        raise _Damage(f"{where}'s root has a parent")
    # Every node is reached exactly once from the root: a tree, no cycle, nothing stray.
    seen, pending = {0}, [(0, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _Damage(f"{where} is deeper than {MAX_DEPTH}")
        if (left[node] == LEAF) != (right[node] == LEAF):
            raise _Damage(f"{where}'s node {node} has one child")
        if left[node] == LEAF:
            continue
        if not 0 <= splits[node] < features:
            raise _Damage(f"{where}'s node {node} splits on a feature the model does not have")
        for child in (left[node], right[node]):
            if not 0 < child < nodes or child in seen or parents[child] != node:
                raise _Damage(f"{where}'s node {node} has an invalid child {child}")
            seen.add(child)
            pending.append((child, depth + 1))
    if len(seen) != nodes:
        raise _Damage(f"{where} has nodes its root does not reach")


def _check_base_score(text: object, groups: int) -> None:
    """base_score: one finite number, or a JSON list of one or one per output group."""
    try:
        values = strict_json.parse(text) if isinstance(text, str) and text[:1] == "[" else [text]
        scores = [float(v) for v in values if isinstance(v, str | float | int)]
    except (ValueError, OverflowError):  # float() of a 400-digit int overflows
        values, scores = [], []
    if len(scores) != len(values) or len(scores) not in (1, groups):
        raise _Damage("base_score is not one number or one per output group")
    if not all(math.isfinite(score) for score in scores):
        raise _Damage("base_score is not finite")


def _check_booster(learner: dict[str, Any], size: int) -> None:
    params = _object(learner.get("learner_model_param"), "learner_model_param")
    features = _count(params.get("num_feature"), "num_feature")
    # XGBoost's predict and dump cost ~80 bytes per declared feature: features cost bytes.
    if features > max(FEATURE_FLOOR, size // 8):
        raise _Damage(f"num_feature {features} is more than a {size}-byte model can use")
    groups = max(1, _count(params.get("num_class"), "num_class"))
    if groups * features > max(CONTRIBUTIONS_FLOOR, size):
        raise _Damage(
            f"{groups} output groups of {features} features are more than a {size}-byte "
            "model can use"
        )
    _check_base_score(params.get("base_score"), groups)
    if _count(params.get("num_target"), "num_target") != 1:
        raise _Damage("the model has several targets")
    objective = _object(learner.get("objective"), "objective")
    for value in objective.values():
        declared = value.get("num_class") if isinstance(value, dict) else None
        if declared is not None and _count(declared, "num_class") != groups * (groups > 1):
            raise _Damage("the objective's num_class differs from the model's")
    booster = _object(learner.get("gradient_booster"), "gradient_booster")
    if booster.get("name") != "gbtree":
        raise _Damage(f"booster {booster.get('name')!r} is not gbtree")
    model = _object(booster.get("model"), "the gbtree model")
    trees = model.get("trees")
    if not isinstance(trees, list):
        raise _Damage("the model has no list of trees")
    count = _count(_object(model.get("gbtree_model_param"), "").get("num_trees"), "num_trees")
    if count != len(trees):
        raise _Damage("num_trees differs from the trees stored")
    if groups > max(count, 1):
        raise _Damage("the model has more output groups than trees")
    info = _ints(model.get("tree_info"), "tree_info")
    if len(info) != count or not all(0 <= group < groups for group in info):
        raise _Damage("tree_info names output groups the model does not have")
    bounds = _ints(model.get("iteration_indptr"), "iteration_indptr")
    if not bounds or bounds[0] != 0 or bounds[-1] != count or bounds != sorted(bounds):
        raise _Damage("iteration_indptr does not split the trees into rounds")
    cats = model.get("cats", {"enc": []})
    if not isinstance(cats, dict) or any(value != [] for value in cats.values()):
        raise _Damage("the model holds categories")
    for index, tree in enumerate(trees):
        _check_tree(tree, index, features)
    names, types = learner.get("feature_names", []), learner.get("feature_types", [])
    for listed in (names, types):
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise _Damage("feature names or types are not strings")
        if listed and len(listed) != features:
            raise _Damage("feature names or types are not one per feature")
    attributes = _object(learner.get("attributes", {}), "attributes")
    if not all(isinstance(value, str) for value in attributes.values()):
        raise _Damage("attributes are not strings")


def _estimator_type(attributes: dict[str, Any]) -> str | None:
    meta = attributes.get("scikit_learn")
    if meta is None:
        return None
    try:
        kind = strict_json.parse(meta)["_estimator_type"]
    except (ValueError, TypeError, KeyError):
        raise _Damage("its scikit_learn attribute does not name an estimator type") from None
    if not isinstance(kind, str) or kind not in ESTIMATORS:
        raise _Damage(f"estimator type {kind!r} is not one castore stores")
    return str(kind)


def checked(data: bytes | bytearray) -> CheckedModel:
    """The model in `data`, checked (see the module), or _Damage."""
    try:
        model = strict_json.parse(data)
    except ValueError as exc:
        raise _Damage(f"it is not JSON: {exc}") from None
    model = _object(model, "the model")
    version = model.get("version")
    if not isinstance(version, list) or len(version) != 3 or not all(_is_count(v) for v in version):
        raise _Damage("its version is not three counts")
    learner = _object(model.get("learner"), "learner")
    _check_booster(learner, len(data))
    kind = _estimator_type(learner.get("attributes", {}))
    encoded = json.dumps(model, separators=(",", ":")).encode()
    return CheckedModel(bytes(data), encoded, kind)


def load(stream: bytearray, where: str) -> Any:
    """The Booster or scikit-learn wrapper an xgboost stream holds, checked before XGBoost
    reads any of it."""
    try:
        model = checked(stream)
    except _Damage as exc:
        raise DeserializationError(f"{where} is not a valid xgboost model: {exc}") from None
    try:
        import xgboost
    except ImportError:
        raise IncompatibleEnvironmentError(
            f"{where} is an XGBoost model: install xgboost"
        ) from None
    kind = model.kind
    target = xgboost.Booster() if kind is None else getattr(xgboost, ESTIMATORS[kind])()
    try:
        target.load_model(bytearray(model.encoded))
    except xgboost.core.XGBoostError as exc:
        raise DeserializationError(f"XGBoost refused {where}: {exc}") from None
    return target
