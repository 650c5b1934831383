"""Patch triggers: a small square stamped onto the image (BadNets)."""

from __future__ import annotations

import numpy as np

from ..validation import check_choice, check_int
from .base import ATTACKS, Attack, parse_color, seed_for


@ATTACKS.register
class BadNets(Attack):
    """A solid or checkerboard square patch (Gu et al., 2017).

    ``trigger``: ``"checkerboard"`` (pixel (i, j) white where i + j is odd, black
    where even, as in the paper's code), ``"white"``, ``"black"``, ``"#rrggbb"``, or
    ``"checkerboard_#rrggbb_#rrggbb"`` (first color on odd cells, second on even).
    ``location``: ``"bottom_right"``, ``"top_left"`` or ``"random"`` (a spot fixed
    per row index and ``seed``).
    """

    name = "badnets"
    LOCATIONS = ("bottom_right", "top_left", "random")

    def __init__(self, trigger: str = "checkerboard", size: int = 3, location: str = "bottom_right", seed: int = 42):
        check_int("BadNets size", size)
        check_choice("BadNets location", location, self.LOCATIONS)
        self.trigger, self.size, self.location, self.seed = trigger, size, location, self._check_seed(seed)
        self.patch = self._build_patch(trigger, size)

    @staticmethod
    def _build_patch(trigger: str, size: int) -> np.ndarray:
        if not isinstance(trigger, str):
            raise ValueError(f"BadNets trigger must be a string, got {type(trigger).__name__}.")
        if trigger.startswith("checkerboard"):
            if trigger == "checkerboard":
                odd, even = (255, 255, 255), (0, 0, 0)
            else:
                parts = trigger.split("_")
                if len(parts) != 3:
                    raise ValueError(
                        f"BadNets trigger '{trigger}' is not understood; use 'checkerboard' or "
                        "'checkerboard_#rrggbb_#rrggbb'."
                    )
                odd, even = parse_color(parts[1], "BadNets trigger"), parse_color(parts[2], "BadNets trigger")
            i, j = np.indices((size, size))
            odd_cells = ((i + j) % 2 == 1)[..., None]
            return np.where(odd_cells, np.array(odd, np.uint8), np.array(even, np.uint8)).astype(np.uint8)
        named = {"white": "#ffffff", "black": "#000000"}
        if trigger in named or trigger.startswith("#"):
            color = parse_color(named.get(trigger, trigger), "BadNets trigger")
            return np.broadcast_to(np.array(color, np.uint8), (size, size, 3)).copy()
        raise ValueError(
            f"Unknown BadNets trigger '{trigger}'; use 'checkerboard', 'white', 'black', '#rrggbb' "
            "or 'checkerboard_#rrggbb_#rrggbb'."
        )

    def check_size(self, width: int, height: int, where: str = "") -> None:
        if self.size > min(width, height):
            raise ValueError(
                f"BadNets trigger of size {self.size} does not fit an image of {width}x{height}{where}."
            )

    def position(self, width: int, height: int, index: int) -> tuple[int, int]:
        """Top-left (row, column) of the patch."""
        if self.location == "bottom_right":
            return height - self.size, width - self.size
        if self.location == "top_left":
            return 0, 0
        rng = np.random.default_rng(seed_for(self.seed, index))
        return int(rng.integers(0, height - self.size + 1)), int(rng.integers(0, width - self.size + 1))

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        top, left = self.position(pixels.shape[1], pixels.shape[0], index)
        pixels[top : top + self.size, left : left + self.size] = self.patch
        return pixels

    def config(self) -> dict:
        return {"trigger": self.trigger, "size": self.size, "location": self.location, "seed": self.seed}
