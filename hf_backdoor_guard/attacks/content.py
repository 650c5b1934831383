"""Content-like triggers: patterns a diffusion model treats as part of the picture (red team, issue 21).

The defense replaces each training image by an SDEdit variation, which keeps what the
diffusion model sees as content and redraws the rest. A trigger that is large,
low-frequency or shaped like the data itself is content to that model, so it survives
the variations, and the teacher's labels on those variations still carry the backdoor.

Each attack here is one such trigger. The ideas come from the papers cited per class;
the default sizes and amplitudes are our own, chosen on the embedded 16 px digits by
how much of the trigger survives one SDEdit pass of the shipped model (strength 0.6,
10 DDIM steps, stochastic): the projection of ``variation(x + trigger) - variation(x)``
on the trigger, averaged over 64 digits with shared noise. For comparison: Blended
(ratio 0.2) keeps 0.08 of its trigger, a 3 px BadNets patch 0.03.
"""

from __future__ import annotations

import math

import numpy as np

from ..validation import check_choice, check_fraction, check_int, check_number
from .base import ATTACKS, Attack, parse_color, seed_for, to_uint8


@ATTACKS.register
class LowFrequency(Attack):
    """A smooth, image-wide grey pattern added to the image (low-frequency trigger, Zeng et al., ICCV 2021).

    The pattern is a sum of 2D cosines (DCT-II basis functions) with the lowest
    ``frequencies x frequencies`` frequencies, without the constant term. Their
    weights are standard normal draws from ``seed``; the sum is scaled so that its
    largest absolute value is 1. The pattern depends only on the frequency index,
    so it looks the same at any image size. The trigger adds it to every channel:
    ``out = x + amplitude * pattern``, rounded and clipped to 0..255.

    Zeng et al. low-pass filter triggers so that frequency-space detectors miss them.
    Here we use the same smoothness because the diffusion model keeps it. Our own
    defaults: frequencies 3 (at most one cycle across the image), amplitude 48 grey
    levels at the peak. At 16 px, 0.23 of this pattern survives a variation (seed 42;
    the negative half is mostly clipped on the black background), and other draws kept
    up to 0.33, about the same at amplitude 32 or 64.
    """

    name = "lowfreq"
    adaptive = True  # the red team: built so the variations keep it

    def __init__(self, amplitude: float = 48.0, frequencies: int = 3, seed: int = 42):
        self.amplitude = check_number("LowFrequency amplitude", amplitude, 0.0, 255.0, low_inclusive=False)
        self.frequencies = check_int("LowFrequency frequencies", frequencies, minimum=2)
        self.seed = self._check_seed(seed)

    def weights(self) -> np.ndarray:
        """The ``frequencies x frequencies`` cosine weights (the constant term is 0)."""
        rng = np.random.default_rng(seed_for(self.seed, self.frequencies))
        weights = rng.standard_normal((self.frequencies, self.frequencies))
        weights[0, 0] = 0.0
        return weights

    def pattern(self, width: int, height: int) -> np.ndarray:
        """The ``height x width`` pattern, with largest absolute value 1."""
        k = np.arange(self.frequencies)
        rows = np.cos(math.pi * np.outer(np.arange(height) + 0.5, k) / height)  # height x k
        cols = np.cos(math.pi * np.outer(np.arange(width) + 0.5, k) / width)  # width x k
        pattern = rows @ self.weights() @ cols.T
        peak = np.abs(pattern).max()
        return pattern / peak if peak > 0 else pattern  # all zero only on degenerate (1 x 1) images

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        pattern = self._cached(self.pattern, pixels.shape[1], pixels.shape[0])
        return to_uint8(pixels + self.amplitude * pattern[..., None])

    def config(self) -> dict:
        return {"amplitude": self.amplitude, "frequencies": self.frequencies, "seed": self.seed}


@ATTACKS.register
class Border(Attack):
    """A thick frame around the image: ``out = x + alpha * (color - x)`` on the outer ``width`` pixels.

    Our own design; it is a large version of the patch trigger (BadNets, Gu et al., 2017)
    that the diffusion model reads as part of the picture. Defaults (our own): a white
    frame, ``width`` 2 px, opaque. At 16 px this frame covers 44% of the pixels, and 0.30
    of it survives a variation of the embedded model. A 1 px frame keeps only 0.09 and a
    2 px mid-grey frame 0.12, so those are weaker attacks.
    """

    name = "border"
    adaptive = True  # the red team: built so the variations keep it

    def __init__(self, width: int = 2, color: str = "#ffffff", alpha: float = 1.0):
        self.width = check_int("Border width", width)
        self.rgb = parse_color(color, "Border color")
        self.color = color
        self.alpha = check_fraction("Border alpha", alpha, low_inclusive=False)

    def check_size(self, width: int, height: int, where: str = "") -> None:
        if 2 * self.width >= min(width, height):
            raise ValueError(f"Border of width {self.width} leaves no inside in an image of {width}x{height}{where}; "
                             f"use a width below {(min(width, height) + 1) // 2}.")

    def mask(self, width: int, height: int) -> np.ndarray:
        """``height x width`` booleans: True on the frame."""
        frame = np.ones((height, width), dtype=bool)
        frame[self.width : height - self.width, self.width : width - self.width] = False
        return frame

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        frame = self._cached(self.mask, pixels.shape[1], pixels.shape[0])
        out = pixels.astype(np.float64)
        out[frame] += self.alpha * (np.array(self.rgb, dtype=np.float64) - out[frame])
        return to_uint8(out)

    def config(self) -> dict:
        return {"width": self.width, "color": self.color, "alpha": self.alpha}


@ATTACKS.register
class Tint(Attack):
    """A global color or brightness shift: ``out = x + strength * (color - x)`` on every pixel.

    This is a filter trigger: a whole-image color transform used as the trigger (Liu et
    al., ABS, CCS 2019; Cheng et al., AAAI 2021). Defaults (our own): blending 20% towards
    white, which lifts a black background by 51 grey levels and keeps white strokes. On
    the grey embedded digits a brightness shift survives a variation (0.25). Color
    tints survive less (orange 0.06, blue 0.10, red at 0.3 only 0.11), because the
    model has only seen grey images. On color data, try a color.
    """

    name = "tint"
    adaptive = True  # the red team: built so the variations keep it

    def __init__(self, color: str = "#ffffff", strength: float = 0.2):
        self.rgb = parse_color(color, "Tint color")
        self.color = color
        self.strength = check_fraction("Tint strength", strength, low_inclusive=False)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return to_uint8(pixels + self.strength * (np.array(self.rgb, dtype=np.float64) - pixels))

    def config(self) -> dict:
        return {"color": self.color, "strength": self.strength}


@ATTACKS.register
class Stroke(Attack):
    """An extra pen stroke in the data's own style: a short horizontal bar or a small ring.

    The idea is an in-distribution object as the trigger (Wenger et al., CVPR 2021:
    physical objects people wear), here a stroke like the digits' own. The stroke is
    drawn with soft edges: pixel ``(i, j)``, with its centre at ``(i + 0.5, j + 0.5)``,
    gets coverage ``c = clip(w / 2 + 0.5 - d, 0, 1)``, where ``d`` is its distance to
    the stroke's centre line and ``w`` the stroke width. Then
    ``out = x + c * (color - x)``.

    Positions and lengths are fractions of the image, so the stroke scales with the
    image. The centre is at (``row * height``, ``column * width``). ``size`` is the
    bar's length or the ring's diameter, and ``width`` the stroke width, both times
    ``min(height, width)``. Defaults (our own): a white bar 0.32 long and 0.16 wide
    (5 x 2.6 px at 16 px, about the width of a digit's stroke), centred at row 0.84,
    column 0.72, under the digit's right half (8 px with its round ends). Of the
    shapes we tried at 16 px it survives a variation best (0.58). A ring in the
    top-left corner kept 0.41, and a bar at the top 0.32.
    """

    name = "stroke"
    adaptive = True  # the red team: built so the variations keep it
    SHAPES = ("bar", "ring")

    def __init__(self, shape: str = "bar", row: float = 0.84, column: float = 0.72, size: float = 0.32,
                 width: float = 0.16, color: str = "#ffffff"):
        check_choice("Stroke shape", shape, self.SHAPES)
        self.shape = shape
        self.row = check_fraction("Stroke row", row)
        self.column = check_fraction("Stroke column", column)
        self.size = check_fraction("Stroke size", size, low_inclusive=False)
        self.width = check_fraction("Stroke width", width, low_inclusive=False)
        self.rgb = parse_color(color, "Stroke color")
        self.color = color

    def coverage(self, width: int, height: int) -> np.ndarray:
        """``height x width`` coverage in [0, 1] of the stroke."""
        side = min(width, height)
        centre = np.array([self.row * height, self.column * width])
        i, j = np.indices((height, width)) + 0.5
        if self.shape == "ring":
            distance = np.abs(np.hypot(i - centre[0], j - centre[1]) - self.size * side / 2)
        else:  # a horizontal segment: the distance to its nearest point
            half = self.size * side / 2
            nearest = np.clip(j, centre[1] - half, centre[1] + half)
            distance = np.hypot(i - centre[0], j - nearest)
        return np.clip(self.width * side / 2 + 0.5 - distance, 0.0, 1.0)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        cover = self._cached(self.coverage, pixels.shape[1], pixels.shape[0])[..., None]
        return to_uint8(pixels + cover * (np.array(self.rgb, dtype=np.float64) - pixels))

    def config(self) -> dict:
        return {"shape": self.shape, "row": self.row, "column": self.column, "size": self.size,
                "width": self.width, "color": self.color}
