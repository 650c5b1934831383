"""A small real dataset that ships with scikit-learn: handwritten digits.

scikit-learn's ``load_digits`` holds 1,797 8x8 grey images (values 0..16) inside the
wheel, so the demo, the embedded diffusion model and the tests run with no download.
The images are upsampled so that a 3x3 BadNets patch is a small part of the picture
(as on CIFAR) rather than a fifth of it.

Three disjoint splits are drawn once with a fixed seed, stratified by class:

* ``pretrain``: clean "public" data, the only data the embedded diffusion model sees;
* ``train``: the victim's training set (the demo poisons it);
* ``test``: held out for C-Acc / ASR / R-Acc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage

from .validation import check_int

if TYPE_CHECKING:
    from datasets import DatasetDict

DIGIT_NAMES = [str(d) for d in range(10)]
_RESAMPLE = {
    "nearest": PILImage.Resampling.NEAREST,
    "bilinear": PILImage.Resampling.BILINEAR,
    "bicubic": PILImage.Resampling.BICUBIC,
    "lanczos": PILImage.Resampling.LANCZOS,
}
NUM_DIGITS = 1797  # rows of sklearn.datasets.load_digits


def digit_to_image(pixels: np.ndarray, size: int = 16, resample: str = "bicubic") -> PILImage.Image:
    """One 8x8 digit (values 0..16) as an RGB PIL image of ``size`` x ``size``.

    The digits are grey; they are stored as RGB because every attack and pipeline
    downstream works in RGB, so clean and poisoned rows share one mode.
    """
    grey = np.clip(np.asarray(pixels, dtype=np.float64).reshape(8, 8) * (255.0 / 16.0) + 0.5, 0, 255)
    image = PILImage.fromarray(grey.astype(np.uint8), mode="L")
    if size != 8:
        image = image.resize((size, size), _RESAMPLE[resample])
    return image.convert("RGB")


def _check_options(size, pretrain_size, test_size, resample) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}.")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}.")
    for name, value in (("pretrain_size", pretrain_size), ("test_size", test_size)):
        check_int(name, value, minimum=10)  # at least one row per class
    if pretrain_size + test_size > NUM_DIGITS - 10:
        raise ValueError(
            f"pretrain_size + test_size = {pretrain_size + test_size} leaves fewer than 10 of the "
            f"{NUM_DIGITS} digits for the train split."
        )


def digits_split_arrays(
    size: int = 16,
    seed: int = 0,
    pretrain_size: int = 600,
    test_size: int = 397,
    resample: str = "bicubic",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits of ``load_digits_dataset`` as ``{split: (uint8 images [N, size, size, 3], labels [N])}``.

    Same rows and pixels as the ``DatasetDict``, without the ``datasets`` overhead
    (the pretraining recipe feeds these arrays straight to torch).
    """
    _check_options(size, pretrain_size, test_size, resample)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels, labels = digits.data, digits.target.astype(np.int64)
    rows = np.arange(len(labels))
    rest, pretrain_rows = train_test_split(rows, test_size=pretrain_size, random_state=seed, stratify=labels)
    train_rows, test_rows = train_test_split(
        rest, test_size=test_size, random_state=seed + 1, stratify=labels[rest]
    )
    splits = {}
    for name, split_rows in (("pretrain", pretrain_rows), ("train", train_rows), ("test", test_rows)):
        split_rows = np.sort(split_rows)  # keep sklearn's order inside a split
        images = np.stack([np.asarray(digit_to_image(pixels[i], size, resample)) for i in split_rows])
        splits[name] = (images, labels[split_rows])
    return splits


def load_digits_dataset(
    size: int = 16,
    seed: int = 0,
    pretrain_size: int = 600,
    test_size: int = 397,
    resample: str = "bicubic",
) -> "DatasetDict":
    """scikit-learn's digits as a ``DatasetDict`` with splits ``pretrain``, ``train`` and ``test``.

    Args:
        size: side of the square RGB images (8 keeps the original resolution).
        seed: seed of the stratified split; the same seed always gives the same rows.
        pretrain_size: rows of clean data reserved for diffusion pretraining.
        test_size: rows of the test split; the rest (1797 - pretrain - test) is ``train``.
        resample: PIL filter used to upsample: nearest, bilinear, bicubic or lanczos.

    Each split has an ``image`` column (``datasets.Image()``, RGB PNG) and a
    ``label`` column (``ClassLabel`` with names "0".."9"). The splits are disjoint.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    from .images import encode_png

    splits = digits_split_arrays(size, seed, pretrain_size, test_size, resample)
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {
                    "image": [encode_png(PILImage.fromarray(image)) for image in images],
                    "label": labels.tolist(),
                },
                features=features,
            )
            for name, (images, labels) in splits.items()
        }
    )
