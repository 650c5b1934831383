"""Color-depth triggers: BppAttack's squeezing with Floyd-Steinberg dithering."""

from __future__ import annotations

import numpy as np

from ..validation import check_int
from .base import ATTACKS, Attack, to_uint8


def floyd_steinberg(pixels: np.ndarray, levels: int) -> np.ndarray:
    """Quantise each channel to ``levels`` evenly spaced values, diffusing the error (Floyd & Steinberg, 1976).

    Pixels are visited row by row, left to right; each is rounded to the nearest level
    and its error goes 7/16 right, 3/16 down-left, 5/16 down and 1/16 down-right.
    Returns floats (the levels, not yet rounded to integers).
    """
    image = pixels.astype(np.float64)
    height, width = image.shape[:2]
    top = levels - 1
    for y in range(height):
        for x in range(width):
            old = image[y, x].copy()
            new = np.rint(old / 255.0 * top) / top * 255.0
            image[y, x] = new
            error = old - new
            if x + 1 < width:
                image[y, x + 1] += error * (7 / 16)
            if y + 1 < height:
                if x > 0:
                    image[y + 1, x - 1] += error * (3 / 16)
                image[y + 1, x] += error * (5 / 16)
                if x + 1 < width:
                    image[y + 1, x + 1] += error * (1 / 16)
    return image


@ATTACKS.register
class BppAttack(Attack):
    """BppAttack (Wang, Zhai & Ma, CVPR 2022): squeeze every channel to ``squeeze_num`` levels.

    With ``dithering`` (the paper's trigger) the rounding error is spread with
    Floyd-Steinberg dithering (:func:`floyd_steinberg`), so the image looks natural;
    without it each value becomes ``round(x / 255 * (n - 1)) / (n - 1) * 255``. Values
    are then rounded to integers and clipped to 0..255. Paper default: 8 levels
    (3 bits per channel) with dithering.

    Left out: the paper also trains with "negative" rows, a clean image plus another
    image's squeezing residual, keeping its label (contrastive adversarial training,
    ``neg_ratio`` 0.1-0.2). Those rows need a second image per row, which a per-row
    attack does not see; the trigger itself is implemented as published.
    """

    name = "bpp"

    def __init__(self, squeeze_num: int = 8, dithering: bool = True):
        self.squeeze_num = check_int("BppAttack squeeze_num", squeeze_num, minimum=2, maximum=256)
        if not isinstance(dithering, bool):
            raise ValueError(f"BppAttack dithering must be True or False, got {dithering!r}.")
        self.dithering = dithering

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        if self.dithering:
            return to_uint8(floyd_steinberg(pixels, self.squeeze_num))
        top = self.squeeze_num - 1
        return to_uint8(np.rint(pixels / 255.0 * top) / top * 255.0)

    def config(self) -> dict:
        return {"squeeze_num": self.squeeze_num, "dithering": self.dithering}
