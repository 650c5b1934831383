"""Adaptive attacks (Qi et al., ICLR 2023): triggers that weaken latent separability (Adaptive-Blend)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..validation import check_fraction, check_int
from .base import ATTACKS, Attack, check_trigger_image, seed_for, to_uint8, trigger_pattern


@ATTACKS.register
class AdaptiveBlend(Attack):
    """Adaptive-Blend (Qi et al., ICLR 2023): a blended trigger cut into pieces, only some used per row.

    The trigger is split into a ``sqrt(pieces) x sqrt(pieces)`` grid. Each poisoned row
    blends in the trigger with ``alpha`` on a random half of the pieces (``mask_rate``
    of them masked out, drawn from ``seed`` and the row index):
    ``out = x + alpha * mask * (trigger - x)``. Cover ("conservatism") rows are made
    the same way but keep their label, ``cover_ratio`` of them per poisoned row, so the
    model cannot rely on any single piece. At test time the whole trigger is blended with
    ``test_alpha``. Paper defaults: 16 pieces, half masked, alpha 0.15, test alpha 0.2,
    poison and cover rates 0.3% each (``cover_ratio=1``); its trigger is a picture
    (Hello Kitty), here ``"random"`` seeded noise unless a PIL image is given.
    """

    name = "adaptive_blend"

    def __init__(self, trigger: str | Image.Image = "random", alpha: float = 0.15, test_alpha: float = 0.2,
                 pieces: int = 16, mask_rate: float = 0.5, cover_ratio: float = 1.0, seed: int = 42):
        check_trigger_image("AdaptiveBlend", trigger)
        self.alpha = check_fraction("AdaptiveBlend alpha", alpha)
        self.test_alpha = check_fraction("AdaptiveBlend test_alpha", test_alpha)
        check_int("AdaptiveBlend pieces", pieces)
        if math.isqrt(pieces) ** 2 != pieces:
            raise ValueError(f"AdaptiveBlend pieces must be a square number (4, 9, 16, ...), got {pieces}.")
        self.mask_rate = check_fraction("AdaptiveBlend mask_rate", mask_rate)
        self.trigger, self.pieces, self.seed = trigger, pieces, self._check_seed(seed)
        self.grid = math.isqrt(pieces)
        self.masked_pieces = round(self.mask_rate * pieces)
        self._set_cover_ratio(cover_ratio)

    def _make_pattern(self, width: int, height: int) -> np.ndarray:
        return trigger_pattern(self.trigger, self.seed, width, height)

    def check_size(self, width: int, height: int, where: str = "") -> None:
        if min(width, height) < self.grid:
            raise ValueError(f"AdaptiveBlend's {self.grid}x{self.grid} grid of pieces does not fit an image of "
                             f"{width}x{height}{where}.")

    def piece_mask(self, width: int, height: int, index: int) -> np.ndarray:
        """``height x width`` mask: 1 on the pieces row ``index`` keeps, 0 on the masked ones."""
        rng = np.random.default_rng(seed_for(self.seed, index))
        masked = rng.choice(self.pieces, size=self.masked_pieces, replace=False)
        rows = np.arange(self.grid + 1) * height // self.grid
        cols = np.arange(self.grid + 1) * width // self.grid
        mask = np.ones((height, width))
        for piece in masked:
            r, c = divmod(int(piece), self.grid)
            mask[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = 0.0
        return mask

    def _partial(self, pixels: np.ndarray, index: int) -> np.ndarray:
        height, width = pixels.shape[:2]
        weight = self.alpha * self.piece_mask(width, height, index)[..., None]
        return to_uint8(pixels + weight * (self._cached(self._make_pattern, width, height) - pixels))

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        pattern = self._cached(self._make_pattern, pixels.shape[1], pixels.shape[0])
        return to_uint8(pixels + self.test_alpha * (pattern - pixels))

    def apply_poison(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        return self._partial(pixels, index)

    def apply_cover(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        return self._partial(pixels, index)

    def config(self) -> dict:
        trigger = self.trigger if isinstance(self.trigger, str) else "<image>"
        return {"trigger": trigger, "alpha": self.alpha, "test_alpha": self.test_alpha, "pieces": self.pieces,
                "mask_rate": self.mask_rate, "cover_ratio": self.cover_ratio, "seed": self.seed}
