"""Finding versions by metadata: the condition language and store.find."""

from __future__ import annotations

import json
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import castore
from castore.versions.search import Condition, matches_all, parse_conditions

OPS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge}
OPS |= {"<": operator.lt, "<=": operator.le}
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False))
texts = st.text(alphabet="abcxyz_-", min_size=1, max_size=6)


@given(found=numbers, wanted=numbers, op=st.sampled_from(sorted(OPS)))
def test_numbers_compare_as_numbers(found: float, wanted: float, op: str) -> None:
    condition = Condition.parse(f"auc{op}{json.dumps(wanted)}")
    assert condition.matches({"auc": found}) == OPS[op](found, wanted)


@given(found=texts, wanted=texts, op=st.sampled_from(sorted(OPS)))
def test_text_compares_as_text_quoted_or_not(found: str, wanted: str, op: str) -> None:
    for written in (wanted, json.dumps(wanted)):
        assert Condition.parse(f"stage {op} {written}").matches({"stage": found}) == OPS[op](
            found, wanted
        )


@given(found=st.one_of(texts, st.booleans(), st.none()), wanted=numbers)
def test_values_of_another_kind_never_order(found: object, wanted: float) -> None:
    for op in (">", ">=", "<", "<="):
        assert not Condition.parse(f"k{op}{json.dumps(wanted)}").matches({"k": found})
    assert not Condition.parse("k==1").matches({"k": True})  # true is not the number 1
    assert Condition.parse("k!=1").matches({"k": "1"})


def test_missing_and_nested_keys() -> None:
    metadata = {"params": {"depth": 8, "lr": 0.1}, "stage": "prod"}
    assert matches_all(metadata, parse_conditions("params.depth<=8 and stage==prod"))
    assert not matches_all(metadata, parse_conditions(["params.depth<8"]))
    assert not matches_all(metadata, parse_conditions("params.width>0"))
    assert not matches_all(metadata, parse_conditions("stage.depth>0"))  # stage is no map
    assert not matches_all(metadata, parse_conditions("missing!=1"))  # absent: no match


@pytest.mark.parametrize("text", ["", "auc", "auc>", ">0.9", "auc=0.9", "auc ~ 1", "a and "])
def test_unreadable_conditions_are_refused(text: str) -> None:
    with pytest.raises(castore.InvalidInputError, match="KEY OP VALUE"):
        parse_conditions(text)


def test_store_find_returns_live_matching_versions_in_order(store: castore.Store) -> None:
    for number, auc in enumerate([0.7, 0.95, 0.91, 0.99], start=1):
        store.save(
            f"model {number}".encode(), "m", metadata={"auc": auc, "run": number}, serializer="raw"
        )
    store.delete("m:4")
    assert [v.version for v in store.find("m", "auc>0.9")] == [2, 3]
    assert [v.version for v in store.find("m", ["auc>0.9", "run>=3"])] == [3]
    assert store.find("m", "auc>1") == []
    with pytest.raises(castore.NotFoundError):
        store.find("nothing", "auc>0.9")
