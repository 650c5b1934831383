"""Additive signal triggers: SIG's horizontal sinusoid or ramp."""

from __future__ import annotations

import math

import numpy as np

from ..validation import check_choice, check_number
from .base import ATTACKS, Attack, to_uint8


@ATTACKS.register
class SIG(Attack):
    """Backdoor signal without label poisoning (Barni, Kallas & Tondi, 2019): a signal added to every row.

    ``signal="sine"``: ``x + delta * sin(2 pi j frequency / width)`` at column ``j``
    (the paper's traffic-sign signal); ``signal="ramp"``: ``x + delta * j / width``
    (its MNIST signal). Poisoned training rows get ``delta``; the test-time trigger gets
    ``test_delta`` (default: the same), since the paper lets the attacker use a stronger
    signal at test time, where stealth matters less.

    A clean-label attack: it poisons rows of the target class and keeps their labels.
    """

    name = "sig"
    clean_label = True
    SIGNALS = ("sine", "ramp")

    def __init__(self, delta: float = 20.0, frequency: float = 6.0, signal: str = "sine",
                 test_delta: float | None = None):
        self.delta = check_number("SIG delta", delta, 0.0)
        self.frequency = check_number("SIG frequency", frequency, 0.0, low_inclusive=False)
        check_choice("SIG signal", signal, self.SIGNALS)
        self.signal = signal
        self.test_delta = self.delta if test_delta is None else check_number("SIG test_delta", test_delta, 0.0)

    def pattern(self, width: int, delta: float) -> np.ndarray:
        """The signal along a row of ``width`` pixels."""
        columns = np.arange(width)
        if self.signal == "ramp":
            return delta * columns / width
        return delta * np.sin(2 * math.pi * columns * self.frequency / width)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return to_uint8(pixels + self.pattern(pixels.shape[1], self.test_delta)[None, :, None])

    def apply_poison(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        return to_uint8(pixels + self.pattern(pixels.shape[1], self.delta)[None, :, None])

    def config(self) -> dict:
        return {"delta": self.delta, "frequency": self.frequency, "signal": self.signal,
                "test_delta": self.test_delta}
