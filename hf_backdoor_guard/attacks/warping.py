"""Warping triggers: a fixed smooth geometric distortion (WaNet)."""

from __future__ import annotations


import numpy as np
from PIL import Image

from ..validation import check_int, check_number
from .base import ATTACKS, Attack, seed_for, to_uint8


@ATTACKS.register
class WaNet(Attack):
    """Warping trigger (Nguyen & Tran, ICLR 2021).

    A ``k x k`` grid of random offsets in [-1, 1], normalised to mean magnitude 1, is
    upsampled (bicubic) into a smooth flow field; each pixel samples the image at
    ``position + strength * flow / size`` (normalised coordinates, clamped to the
    image) with bilinear interpolation. The grid depends only on ``seed``, so every
    image gets the same warp.

    Noise mode: cover rows get the same warp plus an independent uniform offset in
    ``[-1, 1] / size`` at every pixel (drawn from ``seed`` and the row index) and keep
    their label, so the model must learn the exact warp rather than any warp. The paper
    trains with ``cover_ratio=2`` noise rows per poisoned row (its "cross ratio").
    """

    name = "wanet"

    def __init__(self, k: int = 4, strength: float = 0.5, cover_ratio: float = 2.0, seed: int = 42):
        check_int("WaNet k", k, minimum=2)
        self.k, self.strength, self.seed = k, check_number("WaNet strength", strength, 0.0), self._check_seed(seed)
        self._set_cover_ratio(cover_ratio)
        rng = np.random.default_rng(seed)
        grid = rng.uniform(-1.0, 1.0, size=(2, k, k))
        self.control_grid = grid / np.mean(np.abs(grid))

    def _make_warp(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """The warped sampling grid in normalised [-1, 1] coordinates: (x, y), each ``height x width``."""
        flow = [
            np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))
            for plane in self.control_grid
        ]
        xs = np.linspace(-1.0, 1.0, width)[None, :] + self.strength * flow[0] / height
        ys = np.linspace(-1.0, 1.0, height)[:, None] + self.strength * flow[1] / height
        return np.clip(xs, -1, 1), np.clip(ys, -1, 1)

    @staticmethod
    def _sample(pixels: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Bilinear sampling of ``pixels`` at normalised coordinates (align-corners convention)."""
        height, width = pixels.shape[:2]
        cols = (xs + 1) / 2 * (width - 1)
        rows = (ys + 1) / 2 * (height - 1)
        r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
        r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
        wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
        image = pixels.astype(np.float64)
        top = image[r0, c0] * (1 - wc) + image[r0, c1] * wc
        bottom = image[r1, c0] * (1 - wc) + image[r1, c1] * wc
        return to_uint8(top * (1 - wr) + bottom * wr)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        xs, ys = self._cached(self._make_warp, pixels.shape[1], pixels.shape[0])
        return self._sample(pixels, xs, ys)

    def apply_cover(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        height, width = pixels.shape[:2]
        xs, ys = self._cached(self._make_warp, width, height)
        noise = np.random.default_rng(seed_for(self.seed, index)).uniform(-1.0, 1.0, size=(2, height, width))
        return self._sample(pixels, np.clip(xs + noise[0] / height, -1, 1), np.clip(ys + noise[1] / height, -1, 1))

    def config(self) -> dict:
        return {"k": self.k, "strength": self.strength, "cover_ratio": self.cover_ratio, "seed": self.seed}
