"""Adaptive-Patch (Qi et al., ICLR 2023): several patch triggers, one per poisoned row, plus conservatism rows."""

from __future__ import annotations

import numpy as np

from ..validation import check_fraction, check_int
from .base import ATTACKS, Attack, seed_for, to_uint8

#: where patch ``j`` goes, in this order (one patch per corner)
CORNERS = ("bottom_right", "top_left", "top_right", "bottom_left")
#: the paper's training opacities of its four triggers (phoenix, firefox, BadNets patch, Trojan square)
PAPER_ALPHAS = (0.5, 0.2, 0.5, 0.3)


@ATTACKS.register
class AdaptivePatch(Attack):
    """Adaptive-Patch (Qi et al., ICLR 2023): ``patches`` small patch triggers, only one on each training row.

    Patch ``j`` is a ``size x size`` pattern of seeded random colors (from ``seed`` and
    ``j``) at corner ``CORNERS[j]`` (bottom-right, top-left, top-right, bottom-left).
    Each poisoned row carries a single patch ``j`` (drawn from ``seed`` and the row
    index), blended with its opacity ``alphas[j]``: ``out = x + alphas[j] * (patch_j - x)``
    on the patch's square, the rest unchanged. Cover ("conservatism") rows are made the
    same way but keep their label, ``cover_ratio`` of them per poisoned row, so no single
    patch is a reliable shortcut and poisoned rows do not form one cluster in the
    model's latent space. At test time the patches listed in ``test_patches`` are all
    stamped at full opacity.

    Paper defaults (its CIFAR-10 code): four triggers with training opacities
    0.5 / 0.2 / 0.5 / 0.3, the two of opacity 0.5 at full opacity at test time (patches 0 and
    2; its first test trigger is the phoenix moved to another corner), poison rate 0.3%
    and cover rate 0.6% (``cover_ratio=2``). Its triggers are small pictures (a phoenix,
    a Firefox logo, a BadNets patch, a Trojan square) in different places; here they are
    seeded random patterns, one per corner.
    """

    name = "adaptive_patch"

    def __init__(self, patches: int = 4, size: int = 3, alphas: list[float] | tuple[float, ...] | None = None,
                 test_patches: list[int] | tuple[int, ...] = (0, 2), cover_ratio: float = 2.0, seed: int = 42):
        self.patches = check_int("AdaptivePatch patches", patches, maximum=len(CORNERS))
        self.size = check_int("AdaptivePatch size", size)
        if alphas is None:
            alphas = PAPER_ALPHAS[:patches]
        if not isinstance(alphas, (list, tuple)) or len(alphas) != patches:
            raise ValueError(f"AdaptivePatch alphas must be a list of {patches} opacities (one per patch), "
                             f"got {alphas!r}.")
        self.alphas = tuple(check_fraction("AdaptivePatch alphas entry", alpha, low_inclusive=False)
                            for alpha in alphas)
        if not isinstance(test_patches, (list, tuple)) or not test_patches:
            raise ValueError(f"AdaptivePatch test_patches must be a non-empty list of patch numbers, "
                             f"got {test_patches!r}.")
        self.test_patches = tuple(check_int("AdaptivePatch test_patches entry", patch, minimum=0,
                                            maximum=patches - 1) for patch in test_patches)
        if len(set(self.test_patches)) != len(self.test_patches):
            raise ValueError(f"AdaptivePatch test_patches must be distinct, got {list(test_patches)}.")
        self.seed = self._check_seed(seed)
        self._set_cover_ratio(cover_ratio)

    def check_size(self, width: int, height: int, where: str = "") -> None:
        if 2 * self.size > min(width, height) and self.patches > 1:
            raise ValueError(f"AdaptivePatch: {self.patches} patches of size {self.size} in the corners overlap in "
                             f"an image of {width}x{height}{where}; use a smaller size (at most "
                             f"{min(width, height) // 2}).")
        if self.size > min(width, height):
            raise ValueError(f"AdaptivePatch patch of size {self.size} does not fit an image of "
                             f"{width}x{height}{where}.")

    def pattern(self, patch: int) -> np.ndarray:
        """The ``size x size x 3`` uint8 pattern of patch ``patch``."""
        return np.random.default_rng(seed_for(self.seed, patch)).integers(0, 256, (self.size, self.size, 3),
                                                                          dtype=np.uint8)

    def square(self, patch: int, width: int, height: int) -> tuple[slice, slice]:
        """The (rows, columns) that patch ``patch`` covers."""
        corner = CORNERS[patch]
        top = height - self.size if corner.startswith("bottom") else 0
        left = width - self.size if corner.endswith("right") else 0
        return slice(top, top + self.size), slice(left, left + self.size)

    def patch_of_row(self, index: int) -> int:
        """Which single patch training row ``index`` carries."""
        return int(np.random.default_rng(seed_for(self.seed, index, 1)).integers(self.patches))

    def _stamp(self, pixels: np.ndarray, patch: int, alpha: float) -> np.ndarray:
        rows, cols = self.square(patch, pixels.shape[1], pixels.shape[0])
        out = pixels.astype(np.float64)
        out[rows, cols] += alpha * (self._cached(self.pattern, patch) - out[rows, cols])
        return to_uint8(out)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        for patch in self.test_patches:
            pixels = self._stamp(pixels, patch, 1.0)
        return pixels

    def apply_poison(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        patch = self.patch_of_row(index)
        return self._stamp(pixels, patch, self.alphas[patch])

    def apply_cover(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        return self.apply_poison(pixels, index, label)

    def config(self) -> dict:
        return {"patches": self.patches, "size": self.size, "alphas": list(self.alphas),
                "test_patches": list(self.test_patches), "cover_ratio": self.cover_ratio, "seed": self.seed}
