"""Checks on network input: peer ids, object paths, tokens."""

from __future__ import annotations

import base64

import pytest

from tierfs.security import basic_matches, bearer_matches, check_path, check_peer_id


@pytest.mark.parametrize(
    "path", ["a", "a/b.bin", "datasets/train/part 0001.parquet", "ü/日本/x", "a" * 4096, "..a/b.."]
)
def test_good_paths(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "NUL"),
        ("a" * 4097, "4097 bytes"),
        ("é" * 2049, "4098 bytes"),
        ("a\ud800", "surrogate"),
    ],
)
def test_hostile_paths(path: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_path(path)


@pytest.mark.parametrize(
    "peer_id", ["a", "node-1", "host.example.com:8081", "A_b-c.d:e", "x" * 128]
)
def test_good_peer_ids(peer_id: str) -> None:
    assert check_peer_id(peer_id) == peer_id


@pytest.mark.parametrize("peer_id", ["", ".", "..", "a/b", "a b", "é", "x" * 129, "a\x00"])
def test_bad_peer_ids(peer_id: str) -> None:
    with pytest.raises(ValueError):
        check_peer_id(peer_id)


def test_bearer() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret")
    assert bearer_matches("bearer   s3cret ", "s3cret")
    assert not bearer_matches("Bearer s3cre", "s3cret")
    assert not bearer_matches("Bearer s3crets", "s3cret")
    assert not bearer_matches("Basic s3cret", "s3cret")
    assert not bearer_matches(None, "s3cret")
    assert not bearer_matches("Bearer", "s3cret")
    assert not bearer_matches("Bearer é", "s3cret")  # non-ASCII compares, never raises


def test_basic_takes_the_token_as_password() -> None:
    def header(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic_matches(header("anyone:s3cret"), "s3cret")
    assert basic_matches(header(":s3cret"), "s3cret")
    assert not basic_matches(header("s3cret:"), "s3cret")
    assert not basic_matches("Basic !!!", "s3cret")
    assert not basic_matches("Bearer s3cret", "s3cret")
