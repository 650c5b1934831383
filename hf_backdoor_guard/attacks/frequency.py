"""Frequency-domain triggers: a fixed perturbation of chosen DCT coefficients (FTrojan)."""

from __future__ import annotations


import numpy as np

from ..validation import check_int, check_number
from .base import ATTACKS, Attack, to_uint8

# RGB -> YUV (full-range BT.601 as in JPEG: Y, U = Cb, V = Cr); offsets of 128 on U and V
# cancel out below because the trigger is added and removed in the same space.
_RGB_TO_YUV = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)


def dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``coefficients = D @ block @ D.T``, ``block = D.T @ coefficients @ D``."""
    k, n = np.indices((size, size))
    matrix = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    matrix[0] /= np.sqrt(2.0)
    return matrix


@ATTACKS.register
class FTrojan(Attack):
    """FTrojan (Wang et al., ECCV 2022): ``magnitude`` added to chosen DCT coefficients of the UV channels.

    The image is converted to YUV (``yuv=True``; else the RGB channels are used as they
    are) and cut into ``window_size`` blocks; in every whole block, the orthonormal
    2-D DCT coefficient at each of ``positions`` of each of ``channels`` (0 = Y,
    1 = U, 2 = V) gets ``+ magnitude``, and the image is transformed back. The DCT and
    the color transform are linear, so this is one fixed additive pattern, computed in
    floating point and rounded once. Pixels of partial blocks at the right and bottom
    edges are left as they are. Defaults are the paper's for 32 px images: UV, window
    32, positions (15, 15) (mid frequency) and (31, 31) (high), magnitude 30.
    """

    name = "ftrojan"

    def __init__(self, magnitude: float = 30.0, window_size: int = 32,
                 positions=((15, 15), (31, 31)), channels=(1, 2), yuv: bool = True):
        self.magnitude = check_number("FTrojan magnitude", magnitude)
        self.window_size = check_int("FTrojan window_size", window_size)
        self.positions = self._check_positions(positions, window_size)
        self.channels = self._check_channels(channels)
        if not isinstance(yuv, bool):
            raise ValueError(f"FTrojan yuv must be True or False, got {yuv!r}.")
        self.yuv = yuv

    @staticmethod
    def _check_positions(positions, window_size: int) -> tuple[tuple[int, int], ...]:
        try:
            pairs = tuple((row, col) for row, col in positions)
        except (TypeError, ValueError):
            raise ValueError(f"FTrojan positions must be (row, column) pairs, got {positions!r}.") from None
        if not pairs:
            raise ValueError("FTrojan positions must name at least one (row, column) frequency.")
        for pair in pairs:
            for value in pair:
                check_int(f"FTrojan positions entry {pair!r}: each index", value, minimum=0, maximum=window_size - 1)
        return tuple((int(row), int(col)) for row, col in pairs)

    @staticmethod
    def _check_channels(channels) -> tuple[int, ...]:
        try:
            values = tuple(channels)
        except TypeError:
            raise ValueError(f"FTrojan channels must be a list of channel indices (0, 1, 2), got {channels!r}.") from None
        if not values or len(set(values)) != len(values):
            raise ValueError(f"FTrojan channels must be distinct channel indices (0, 1, 2), got {channels!r}.")
        for value in values:
            check_int("FTrojan channels entry", value, minimum=0, maximum=2)
        return values

    def check_size(self, width: int, height: int, where: str = "") -> None:
        if self.window_size > min(width, height):
            raise ValueError(f"FTrojan window_size {self.window_size} does not fit an image of {width}x{height}{where}; "
                             "choose a window (and positions) for the image size.")

    def _make_pattern(self, width: int, height: int) -> np.ndarray:
        """The additive RGB pattern for an image of this size."""
        size = self.window_size
        basis = dct_matrix(size)
        block = sum(np.outer(basis[row], basis[col]) for row, col in self.positions) * self.magnitude
        plane = np.zeros((height, width))
        whole_h, whole_w = height // size * size, width // size * size
        plane[:whole_h, :whole_w] = np.tile(block, (height // size, width // size))
        perturbation = np.zeros((height, width, 3))
        perturbation[..., list(self.channels)] = plane[..., None]
        return perturbation @ _YUV_TO_RGB.T if self.yuv else perturbation

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return to_uint8(pixels + self._cached(self._make_pattern, pixels.shape[1], pixels.shape[0]))

    def config(self) -> dict:
        return {"magnitude": self.magnitude, "window_size": self.window_size,
                "positions": [list(pair) for pair in self.positions], "channels": list(self.channels), "yuv": self.yuv}
