"""The attack base class, the attack registry and helpers shared by several attacks.

An attack turns a PIL image into a new RGB image. It has up to three forms, because
several papers train with rows that differ from what the attacker shows at test time:

- ``attack(image, index)``: the trigger at test time (what ``triggered_testset`` uses);
- ``attack.poison_image(image, index, label)``: a poisoned training row (by default the
  same as the test-time trigger; Adaptive-Blend uses a partial, fainter trigger and
  Label-Consistent an adversarially perturbed image);
- ``attack.cover_image(image, index, label)``: a *cover* training row that keeps its
  label (WaNet's "noise mode", Adaptive-Blend's conservatism rows). ``cover_ratio``
  says how many cover rows the paper trains with per poisoned row.

Subclasses implement ``apply`` (and ``apply_poison`` / ``apply_cover`` where they
differ) on an ``H x W x 3`` uint8 array; conversion, size checks and copying happen here.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from PIL import Image

from ..images import to_rgb
from ..registry import Registry
from ..validation import check_number, check_seed

#: every attack, by its short name; the CLI, the demo, the recipes and the docs read it
ATTACKS = Registry("attack")

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def parse_color(text: str, option: str) -> tuple[int, int, int]:
    """``'#rrggbb'`` as an RGB tuple; a ``ValueError`` naming ``option`` otherwise."""
    if not isinstance(text, str) or not _HEX_COLOR.match(text):
        raise ValueError(f"{option}: {text!r} is not a color; use '#rrggbb' (e.g. '#ff0000').")
    return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))


def seed_for(*parts: int) -> int:
    """A stable 64-bit seed from integers (Python's hash() is salted per process)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clip to 0..255."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def check_trigger_image(name: str, trigger) -> None:
    """A full-image trigger: ``"random"`` (seeded noise) or a PIL image."""
    if isinstance(trigger, str) and trigger != "random":
        raise ValueError(f"Unknown {name} trigger '{trigger}'; use 'random' or a PIL image.")
    if not isinstance(trigger, (str, Image.Image)):
        raise ValueError(f"{name} trigger must be 'random' or a PIL image, got {type(trigger).__name__}.")


def trigger_pattern(trigger, seed: int, width: int, height: int) -> np.ndarray:
    """The ``height x width x 3`` float pattern of a full-image trigger (see ``check_trigger_image``)."""
    if isinstance(trigger, Image.Image):
        return np.asarray(to_rgb(trigger).resize((width, height), Image.BILINEAR), dtype=np.float64)
    rng = np.random.default_rng(seed_for(seed, width, height))
    return rng.integers(0, 256, size=(height, width, 3)).astype(np.float64)


class Attack:
    """Base class of all triggers.

    ``clean_label`` attacks poison rows of the target class and keep their labels
    (SIG, Label-Consistent); the others relabel the rows they poison. ``cover_ratio``
    is the number of cover rows (label kept, see :meth:`cover_image`) per poisoned row.
    ``adaptive`` attacks are built against this defense (triggers the diffusion variations
    keep): ``backdoor-guard redteam`` runs them.
    """

    name = "attack"
    clean_label = False
    cover_ratio = 0.0
    adaptive = False

    # --- the three forms ------------------------------------------------------------------
    def __call__(self, image: Image.Image, index: int = 0) -> Image.Image:
        """The test-time trigger: a triggered RGB copy of ``image``; ``index`` is the row index."""
        return self._run(image, lambda pixels: self.apply(pixels, index))

    def poison_image(self, image: Image.Image, index: int = 0, label: int | None = None) -> Image.Image:
        """A poisoned training row built from ``image`` (row ``index``, true class ``label``)."""
        return self._run(image, lambda pixels: self.apply_poison(pixels, index, label))

    def cover_image(self, image: Image.Image, index: int = 0, label: int | None = None) -> Image.Image:
        """A cover training row: it keeps its label ``label`` (only attacks with ``cover_ratio > 0``)."""
        return self._run(image, lambda pixels: self.apply_cover(pixels, index, label))

    # --- what subclasses implement ---------------------------------------------------------
    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        """Trigger an ``H x W x 3`` uint8 array (a fresh copy the method may modify)."""
        raise NotImplementedError

    def apply_poison(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        """A poisoned training row; by default the test-time trigger."""
        return self.apply(pixels, index)

    def apply_cover(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        """A cover row; attacks with ``cover_ratio > 0`` override this."""
        raise NotImplementedError(f"{type(self).__name__} trains with no cover rows (cover_ratio is 0).")

    def check_size(self, width: int, height: int, where: str = "") -> None:
        """Raise ``ValueError`` if the trigger cannot fit an image of this size."""

    def fingerprint(self) -> str | None:
        """A stable hash of everything the attack's output depends on, or ``None``.

        ``None`` (the default) lets ``datasets`` hash the attack object itself for its
        cache. Attacks that hold a model return a hash of its weights instead, which is
        fast and does not depend on how the model object pickles.
        """
        return None

    def config(self) -> dict:
        """The constructor arguments, for reports and model cards."""
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({fields})"

    def _cached(self, make, *key):
        """``make(*key)``, computed once per key (e.g. a pattern per image size).

        The cache is left out of pickles and fingerprints (``__getstate__``), so an attack
        that was used hashes like a fresh one and pickles with the standard library.
        """
        cache = self.__dict__.setdefault("_cache", {})
        entry = (make.__name__, *key)
        if entry not in cache:
            if len(cache) >= 64:
                cache.clear()
            cache[entry] = make(*key)
        return cache[entry]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    def _run(self, image: Image.Image, transform) -> Image.Image:
        pixels = np.array(to_rgb(image), dtype=np.uint8)
        self.check_size(pixels.shape[1], pixels.shape[0])
        return Image.fromarray(transform(pixels), mode="RGB")

    # --- option checks shared by subclasses --------------------------------------------------
    def _set_cover_ratio(self, value) -> float:
        self.cover_ratio = check_number(f"{type(self).__name__} cover_ratio", value, 0.0)
        return self.cover_ratio

    def _check_seed(self, value) -> int:
        return check_seed(f"{type(self).__name__} seed", value)
