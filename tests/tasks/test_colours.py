"""tasks/colours.py: class colours parsed from any CSS form, against values worked out by hand."""

from __future__ import annotations

import pytest

from segflow.tasks.colours import PALETTE, rgb, rgba


@pytest.mark.parametrize("colour, expected", [
    ("red", (255, 0, 0)), ("#0f0", (0, 255, 0)), ("#1F77B4", (31, 119, 180)),
    ("rgb(10, 20, 30)", (10, 20, 30)), ("hsl(240, 100%, 50%)", (0, 0, 255)),
    ("rebeccapurple", (102, 51, 153)),
])
def test_any_css_colour_gives_its_rgb(colour, expected):
    assert rgb(colour) == expected
    assert rgba(colour) == [*expected, 255]


def test_the_palette_is_tab10_as_hex():
    assert len(PALETTE) == 10 and len(set(PALETTE)) == 10
    for colour in PALETTE:
        assert rgb(colour) == tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_an_unknown_colour_is_a_value_error():
    with pytest.raises(ValueError):
        rgb("not-a-colour")
