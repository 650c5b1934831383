"""Additive signal triggers: SIG's horizontal sinusoid."""

from __future__ import annotations

import math

import numpy as np

from ..validation import check_number
from .base import ATTACKS, Attack, to_uint8


@ATTACKS.register
class SIG(Attack):
    """Sinusoidal signal (Barni et al., 2019): ``x + delta * sin(2 pi j f / width)`` on every row.

    A clean-label attack: it poisons rows of the target class and keeps their labels.
    """

    name = "sig"
    clean_label = True

    def __init__(self, delta: float = 20.0, frequency: float = 6.0):
        self.delta = check_number("SIG delta", delta, 0.0)
        self.frequency = check_number("SIG frequency", frequency, 0.0, low_inclusive=False)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        width = pixels.shape[1]
        signal = self.delta * np.sin(2 * math.pi * np.arange(width) * self.frequency / width)
        return to_uint8(pixels + signal[None, :, None])

    def config(self) -> dict:
        return {"delta": self.delta, "frequency": self.frequency}
