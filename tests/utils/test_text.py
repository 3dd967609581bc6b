"""Plain text helpers: sizes read in the unit they reach."""

from __future__ import annotations

import pytest

from freezetune.utils import format_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (176_907 * 4, "691.0 KiB"),  # the tests' narrow resnet18 in fp32: not "0.7 MiB", not "0.0 MiB"
        (38_535_168, "36.8 MiB"),
        (2**30 + 2**29, "1.50 GiB"),
    ],
)
def test_format_bytes_uses_the_largest_unit_reached(n: int, text: str) -> None:
    assert format_bytes(n) == text
