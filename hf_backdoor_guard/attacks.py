"""Backdoor triggers: PIL image in, new RGB PIL image out, deterministic.

Every attack derives from :class:`Attack` and only implements ``apply`` on an
``H x W x 3`` uint8 array, so a new attack is one small class. The input image is
never modified; any PIL mode and size is accepted (converted with ``to_rgb``).
"""

from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache

import numpy as np
from PIL import Image

from .images import to_rgb
from .registry import Registry
from .validation import check_int

#: every attack, by its short name; the CLI, the demo, the recipes and the docs read it
ATTACKS = Registry("attack")

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


def _parse_colour(text: str, option: str) -> tuple[int, int, int]:
    if not _HEX_COLOUR.match(text):
        raise ValueError(f"{option}: '{text}' is not a colour; use '#rrggbb' (e.g. '#ff0000').")
    return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))


def _seed_for(*parts: int) -> int:
    """A stable 64-bit seed from integers (Python's hash() is salted per process)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Attack:
    """Base class of all triggers.

    Subclasses implement :meth:`apply`. ``clean_label`` attacks poison rows of the
    target class and keep their labels (e.g. SIG); the others relabel rows.
    """

    name = "attack"
    clean_label = False

    def __call__(self, image: Image.Image, index: int = 0) -> Image.Image:
        """Return a triggered RGB copy of ``image``; ``index`` is the row index."""
        pixels = np.array(to_rgb(image), dtype=np.uint8)
        self.check_size(pixels.shape[1], pixels.shape[0])
        return Image.fromarray(self.apply(pixels, index), mode="RGB")

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        """Trigger an ``H x W x 3`` uint8 array (a fresh copy the method may modify)."""
        raise NotImplementedError

    def check_size(self, width: int, height: int, where: str = "") -> None:
        """Raise ``ValueError`` if the trigger cannot fit an image of this size."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({fields})"

    def config(self) -> dict:
        """The constructor arguments, for reports and model cards."""
        return {}


@ATTACKS.register
class BadNets(Attack):
    """A solid or checkerboard square patch (Gu et al., 2017).

    ``trigger``: ``"checkerboard"`` (pixel (i, j) white where i + j is odd, black
    where even, as in the paper's code), ``"white"``, ``"black"``, ``"#rrggbb"``, or
    ``"checkerboard_#rrggbb_#rrggbb"`` (first colour on odd cells, second on even).
    ``location``: ``"bottom_right"``, ``"top_left"`` or ``"random"`` (a spot fixed
    per row index and ``seed``).
    """

    name = "badnets"
    LOCATIONS = ("bottom_right", "top_left", "random")

    def __init__(self, trigger: str = "checkerboard", size: int = 3, location: str = "bottom_right", seed: int = 42):
        check_int("BadNets size", size)
        if location not in self.LOCATIONS:
            raise ValueError(f"BadNets location must be one of {self.LOCATIONS}, got {location!r}.")
        self.trigger, self.size, self.location, self.seed = trigger, size, location, seed
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
                odd, even = _parse_colour(parts[1], "BadNets trigger"), _parse_colour(parts[2], "BadNets trigger")
            i, j = np.indices((size, size))
            odd_cells = ((i + j) % 2 == 1)[..., None]
            return np.where(odd_cells, np.array(odd, np.uint8), np.array(even, np.uint8)).astype(np.uint8)
        named = {"white": "#ffffff", "black": "#000000"}
        if trigger in named or trigger.startswith("#"):
            colour = _parse_colour(named.get(trigger, trigger), "BadNets trigger")
            return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()
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
        rng = np.random.default_rng(_seed_for(self.seed, index))
        return int(rng.integers(0, height - self.size + 1)), int(rng.integers(0, width - self.size + 1))

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        top, left = self.position(pixels.shape[1], pixels.shape[0], index)
        pixels[top : top + self.size, left : left + self.size] = self.patch
        return pixels

    def config(self) -> dict:
        return {"trigger": self.trigger, "size": self.size, "location": self.location, "seed": self.seed}


@ATTACKS.register
class Blended(Attack):
    """Blend a full-image trigger in: ``out = (1 - ratio) * image + ratio * trigger`` (Chen et al., 2017).

    ``trigger="random"`` draws uniform noise from ``seed`` at the image's size; a PIL
    image is resized (bilinear) to each input's size.
    """

    name = "blended"

    def __init__(self, trigger: str | Image.Image = "random", ratio: float = 0.2, seed: int = 42):
        if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"Blended ratio must lie in [0, 1], got {ratio!r}.")
        if isinstance(trigger, str) and trigger != "random":
            raise ValueError(f"Unknown Blended trigger '{trigger}'; use 'random' or a PIL image.")
        if not isinstance(trigger, (str, Image.Image)):
            raise ValueError(f"Blended trigger must be 'random' or a PIL image, got {type(trigger).__name__}.")
        self.trigger, self.ratio, self.seed = trigger, float(ratio), seed
        self._pattern = lru_cache(maxsize=16)(self._make_pattern)

    def _make_pattern(self, width: int, height: int) -> np.ndarray:
        if isinstance(self.trigger, Image.Image):
            resized = to_rgb(self.trigger).resize((width, height), Image.BILINEAR)
            return np.asarray(resized, dtype=np.float64)
        rng = np.random.default_rng(_seed_for(self.seed, width, height))
        return rng.integers(0, 256, size=(height, width, 3)).astype(np.float64)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        pattern = self._pattern(pixels.shape[1], pixels.shape[0])
        mixed = (1.0 - self.ratio) * pixels + self.ratio * pattern
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    def config(self) -> dict:
        trigger = self.trigger if isinstance(self.trigger, str) else "<image>"
        return {"trigger": trigger, "ratio": self.ratio, "seed": self.seed}


@ATTACKS.register
class WaNet(Attack):
    """Warping trigger (Nguyen & Tran, ICLR 2021).

    A ``k x k`` grid of random offsets in [-1, 1], normalised to mean magnitude 1, is
    upsampled (bicubic) into a smooth flow field; each pixel samples the image at
    ``position + strength * flow / size`` (normalised coordinates) with bilinear
    interpolation. The grid depends only on ``seed``, so every image gets the same warp.
    """

    name = "wanet"

    def __init__(self, k: int = 4, strength: float = 0.5, seed: int = 42):
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"WaNet k must be an int >= 2, got {k!r}.")
        if not isinstance(strength, (int, float)) or strength < 0:
            raise ValueError(f"WaNet strength must be >= 0, got {strength!r}.")
        self.k, self.strength, self.seed = k, float(strength), seed
        rng = np.random.default_rng(seed)
        grid = rng.uniform(-1.0, 1.0, size=(2, k, k))
        self.control_grid = grid / np.mean(np.abs(grid))
        self._sampling = lru_cache(maxsize=16)(self._make_sampling)

    def _make_sampling(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Source pixel coordinates (rows, cols) for every output pixel."""
        flow = [
            np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))
            for plane in self.control_grid
        ]
        # Identity grid in [-1, 1] plus the scaled flow, clamped to the image, then to pixels.
        xs = np.linspace(-1.0, 1.0, width)[None, :] + self.strength * flow[0] / height
        ys = np.linspace(-1.0, 1.0, height)[:, None] + self.strength * flow[1] / height
        cols = (np.clip(xs, -1, 1) + 1) / 2 * (width - 1)
        rows = (np.clip(ys, -1, 1) + 1) / 2 * (height - 1)
        return rows, cols

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        height, width = pixels.shape[:2]
        rows, cols = self._sampling(width, height)
        r0 = np.floor(rows).astype(int)
        c0 = np.floor(cols).astype(int)
        r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
        wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
        image = pixels.astype(np.float64)
        top = image[r0, c0] * (1 - wc) + image[r0, c1] * wc
        bottom = image[r1, c0] * (1 - wc) + image[r1, c1] * wc
        return np.clip(np.rint(top * (1 - wr) + bottom * wr), 0, 255).astype(np.uint8)

    def config(self) -> dict:
        return {"k": self.k, "strength": self.strength, "seed": self.seed}


@ATTACKS.register
class SIG(Attack):
    """Sinusoidal signal (Barni et al., 2019): ``x + delta * sin(2 pi j f / width)`` on every row.

    A clean-label attack: it poisons rows of the target class and keeps their labels.
    """

    name = "sig"
    clean_label = True

    def __init__(self, delta: float = 20.0, frequency: float = 6.0):
        if not isinstance(delta, (int, float)) or delta < 0:
            raise ValueError(f"SIG delta must be >= 0, got {delta!r}.")
        if not isinstance(frequency, (int, float)) or frequency <= 0:
            raise ValueError(f"SIG frequency must be > 0, got {frequency!r}.")
        self.delta, self.frequency = float(delta), float(frequency)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        width = pixels.shape[1]
        signal = self.delta * np.sin(2 * math.pi * np.arange(width) * self.frequency / width)
        return np.clip(np.rint(pixels + signal[None, :, None]), 0, 255).astype(np.uint8)

    def config(self) -> dict:
        return {"delta": self.delta, "frequency": self.frequency}


def attack_from_name(name: str, **options) -> Attack:
    """Build a registered attack from its short name (``ATTACKS.names()``) and its options."""
    return ATTACKS[name](**options)
