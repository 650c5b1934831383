"""Blended triggers: a full-image pattern mixed into the image (Blended)."""

from __future__ import annotations


import numpy as np
from PIL import Image

from ..validation import check_fraction
from .base import ATTACKS, Attack, check_trigger_image, to_uint8, trigger_pattern


@ATTACKS.register
class Blended(Attack):
    """Blend a full-image trigger in: ``out = (1 - ratio) * image + ratio * trigger`` (Chen et al., 2017).

    ``trigger="random"`` draws uniform noise from ``seed`` at the image's size; a PIL
    image is resized (bilinear) to each input's size.
    """

    name = "blended"

    def __init__(self, trigger: str | Image.Image = "random", ratio: float = 0.2, seed: int = 42):
        self.ratio = check_fraction("Blended ratio", ratio)
        check_trigger_image("Blended", trigger)
        self.trigger, self.seed = trigger, self._check_seed(seed)

    def _make_pattern(self, width: int, height: int) -> np.ndarray:
        return trigger_pattern(self.trigger, self.seed, width, height)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        pattern = self._cached(self._make_pattern, pixels.shape[1], pixels.shape[0])
        return to_uint8((1.0 - self.ratio) * pixels + self.ratio * pattern)

    def config(self) -> dict:
        trigger = self.trigger if isinstance(self.trigger, str) else "<image>"
        return {"trigger": trigger, "ratio": self.ratio, "seed": self.seed}
