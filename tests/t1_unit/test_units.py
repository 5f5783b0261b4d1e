"""Sizes and durations as users write them."""

from __future__ import annotations

import pytest

from tierfs.units import format_size, human_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10737418240", 10 * 2**30),
        ("10G", 10 * 2**30),
        ("10GiB", 10 * 2**30),
        ("10gib", 10 * 2**30),
        ("4MiB", 4 * 2**20),
        ("4M", 4 * 2**20),
        ("512KiB", 512 * 2**10),
        ("10GB", 10 * 10**9),
        ("1.5GiB", 3 * 2**29),
        (" 7 ", 7),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["ten", "10X", "", "10 G B", "5e3"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["-5", " -1MiB", "--2G"])
def test_negative_sizes_are_said_so(text: str) -> None:
    with pytest.raises(ValueError, match="is negative: a size cannot be"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30.0), ("1m", 60.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), ("12", 12.0)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text", ["soon", "1x", "s", "1s2", "", "nan", "NaN", "inf", "Infinity", "1e999"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1s", "-5", "-0.5", "-1m30s", "-inf"])
def test_negative_durations_are_said_so(text: str) -> None:
    with pytest.raises(ValueError, match="is negative: a duration cannot be"):
        parse_duration(text)


def test_format_size_round_trips() -> None:
    for size in (4 * 2**20, 10 * 2**30, 3 * 2**10, 1000):
        assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (10 * 2**30, "10.0 GiB"),
    ],
)
def test_sizes_for_people(size: int, shown: str) -> None:
    assert human_size(size) == shown
