"""The reference grammar: every form parses to what it says and prints back the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import castore
from castore.format.names import Reference, check_name, parse_reference

component = st.from_regex(r"[a-z0-9_][a-z0-9._-]{0,12}", fullmatch=True).filter(
    lambda c: c != "sha256"
)
names = st.lists(component, min_size=1, max_size=4).map("/".join)
tags = st.from_regex(r"[a-z_][a-z0-9._-]{0,20}", fullmatch=True).filter(lambda t: t != "latest")
digests = st.binary(min_size=32, max_size=32)


@given(name=names, version=st.integers(1, 10**12), tag=tags, digest=digests)
def test_every_form_round_trips(name: str, version: int, tag: str, digest: bytes) -> None:
    for ref in [
        Reference(name),
        Reference(name, version=version),
        Reference(name, tag=tag),
        Reference(name, digest=digest),
        Reference(None, digest=digest),
        Reference(name, version=version, store_url="s3://bucket/models"),
    ]:
        assert parse_reference(str(ref)) == ref


def test_latest_is_the_bare_name() -> None:
    assert parse_reference("a/b:latest") == parse_reference("a/b") == Reference("a/b")


@pytest.mark.parametrize(
    "text",
    [
        "Upper",
        "a//b",
        "/a",
        "a/",
        "a b",
        ".hidden",
        "a/.b",
        "a:0",
        "a:007",
        "a:\u0663",
        "a:\u00b2",
        "a@sha256:12",
        "sha256/x:1",
        "a:tag with space",
        "#a",
        "",
        "a" * 201,
    ],
)
def test_malformed_references_say_what_was_expected(text: str) -> None:
    with pytest.raises(castore.InvalidInputError, match=r"expected|invalid"):
        parse_reference(text)


def test_sha256_is_reserved_as_a_first_component() -> None:
    with pytest.raises(castore.InvalidInputError, match="reserved"):
        check_name("sha256")
    assert check_name("models/sha256") == "models/sha256"
