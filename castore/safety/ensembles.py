"""Structural checks of scikit-learn's tree estimators and ensembles of trees.

A Tree's compiled code reads ``X[i, node.feature]`` for features below its own
``n_features``, but scikit-learn validates X only against the estimator's
``n_features_in_``, and ensembles hand X to their trees unvalidated (GradientBoosting's
``predict_stages`` also writes one column per tree of a stage into an array as wide as
``n_trees_per_iteration_``). So every reachable Tree must have the width its estimator
says, and every tree of an ensemble the width the ensemble says.
"""

from __future__ import annotations

from typing import Any

from castore.errors import DeserializationError
from castore.safety.names import lookup


def _refuse(what: str) -> DeserializationError:
    return DeserializationError(f"a scikit-learn {what}")


def _count(value: Any) -> int | None:
    """A count as scikit-learn stores it (int or numpy integer), else None."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def _fitted(estimator: Any, name: str) -> Any:
    """An attribute the stream set on `estimator` (None if it did not)."""
    return vars(estimator).get(name)


def check_decision_tree(estimator: Any) -> None:
    """A fitted tree estimator's Tree has the estimator's features, outputs and classes."""
    import numpy as np

    tree = _fitted(estimator, "tree_")
    if tree is None:
        return
    features = _count(_fitted(estimator, "n_features_in_"))
    outputs = _fitted(estimator, "n_outputs_")
    classes = _fitted(estimator, "n_classes_")
    ok = isinstance(tree, lookup("sklearn.tree._tree", "Tree")) and features == tree.n_features
    ok = ok and (outputs is None or _count(outputs) == tree.n_outputs)
    if ok and classes is not None:
        ok = np.array_equal(np.atleast_1d(np.asarray(classes)), tree.n_classes)
    if not ok:
        raise _refuse(
            f"{type(estimator).__name__}'s tree does not match its {features} features, "
            "outputs or classes"
        )


def _members(ensemble: Any) -> list[Any]:
    """The fitted sub-estimators of an ensemble, flattened (GradientBoosting's are 2-D)."""
    import numpy as np

    members = _fitted(ensemble, "estimators_")
    if members is None:
        return []
    if isinstance(members, np.ndarray):
        return list(members.ravel()) if members.dtype.hasobject else [members]
    return list(members) if isinstance(members, list | tuple) else [members]


def check_tree_ensemble(ensemble: Any) -> None:
    """Every tree of an ensemble is as wide as the ensemble's input (or its feature subset)."""
    tree_class = lookup("sklearn.tree._classes", "BaseDecisionTree")
    members = _members(ensemble)
    if not isinstance(tree_class, type) or not any(isinstance(m, tree_class) for m in members):
        return
    for member, width in zip(members, _widths(ensemble, len(members)), strict=True):
        if isinstance(member, tree_class) and (
            width is None or _count(_fitted(member, "n_features_in_")) != width
        ):
            raise _refuse(f"{type(ensemble).__name__} holds a tree of another width")


def _widths(ensemble: Any, count: int) -> list[int | None]:
    """The input width of each of an ensemble's `count` members (bagging: its subset's)."""
    features = _count(_fitted(ensemble, "n_features_in_"))
    subsets = _fitted(ensemble, "estimators_features_")
    if subsets is None:
        return [features] * count
    if not (isinstance(subsets, list) and len(subsets) == count) or features is None:
        raise _refuse(f"{type(ensemble).__name__} has feature subsets not one per estimator")
    return [_count(len(subset)) if hasattr(subset, "__len__") else None for subset in subsets]


def check_gradient_boosting(ensemble: Any) -> None:
    """GradientBoosting: a 2-D object array of regression trees, one column per raw output."""
    import numpy as np

    check_tree_ensemble(ensemble)
    members = _fitted(ensemble, "estimators_")
    if members is None:
        return
    regressor = lookup("sklearn.tree._classes", "DecisionTreeRegressor")
    width = _count(_fitted(ensemble, "n_trees_per_iteration_"))
    ok = isinstance(members, np.ndarray) and members.dtype.hasobject and members.ndim == 2
    ok = ok and width is not None and members.shape[1] == width == _outputs(ensemble)
    ok = ok and all(
        isinstance(tree, regressor) and _fitted(tree, "tree_") is not None
        and _fitted(tree, "tree_").n_outputs == 1
        for tree in members.ravel()
    )  # fmt: skip
    if not ok:
        raise _refuse(f"{type(ensemble).__name__} has estimators_ of the wrong shape or kind")


def _outputs(ensemble: Any) -> int | None:
    """Columns of a GradientBoosting model's initial raw predictions, which its trees add to."""
    init = _fitted(ensemble, "init_")
    dummy_regressor = lookup("sklearn.dummy", "DummyRegressor")
    dummy_classifier = lookup("sklearn.dummy", "DummyClassifier")
    classifier = lookup("sklearn.ensemble._gb", "GradientBoostingClassifier")
    if not isinstance(ensemble, classifier):  # init_ predicts one column
        one = init == "zero" or (isinstance(init, dummy_regressor) and _outputs_of(init) == 1)
        return 1 if one else None
    classes = _count(_fitted(ensemble, "n_classes_"))
    if classes is None:
        return None
    width = 1 if classes <= 2 else classes
    loss = _fitted(ensemble, "_loss")
    if getattr(loss, "is_multiclass", None) is not (width > 1):
        return None
    if init == "zero":
        return width
    ok = isinstance(init, dummy_classifier) and _outputs_of(init) == 1
    ok = ok and _count(_fitted(init, "n_classes_")) == classes
    prior = _fitted(init, "class_prior_")
    return width if ok and getattr(prior, "shape", None) == (classes,) else None


def _outputs_of(estimator: Any) -> int | None:
    return _count(_fitted(estimator, "n_outputs_"))


TREE_CHECKS = (
    (("sklearn.tree._classes", "BaseDecisionTree"), check_decision_tree),
    (("sklearn.ensemble._gb", "BaseGradientBoosting"), check_gradient_boosting),
    (("sklearn.ensemble._base", "BaseEnsemble"), check_tree_ensemble),
)
"""Checks by base class, first match wins: every tree estimator and every ensemble."""
