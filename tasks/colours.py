"""Class colours: one parser (Pillow's ``ImageColor``: CSS names, #rgb, #rrggbb, rgb(), hsl())
for the config's validation, the OME-Zarr label colours and the quick-look picture, so a colour
the config accepts is one every output can draw."""

from __future__ import annotations

from PIL import ImageColor

# Colours for classes that do not name one (matplotlib's tab10), so quick-looks are stable.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def rgb(colour: str) -> tuple[int, int, int]:
    """(r, g, b) in 0..255 of any colour Pillow understands; ValueError otherwise."""
    value = ImageColor.getrgb(colour)
    return value[0], value[1], value[2]


def rgba(colour: str) -> list[int]:
    """[r, g, b, 255]: the opaque RGBA that OME-Zarr's ``image-label.colors`` wants."""
    return [*rgb(colour), 255]
