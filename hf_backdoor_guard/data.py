"""Datasets: the user's image data (Hub id, ``imagefolder``, ``save_to_disk`` folder) and the digits.

:func:`load_image_splits` opens the training and evaluation splits of whatever a user
points ``--dataset`` at and checks the image and label columns before any work (an
error lists the columns and splits the dataset has).

The embedded benchmark uses a small real dataset that ships with scikit-learn: handwritten digits.

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

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage

from .validation import check_int

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

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


# --- a user's dataset ----------------------------------------------------------------------
def saved_dataset_kind(path: str | Path) -> str | None:
    """``"dict"`` or ``"dataset"`` for a ``save_to_disk`` folder, else None."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def _open_splits(dataset: str, data_dir: str | None, config_name: str | None, revision: str | None,
                 option: str) -> "DatasetDict":
    import datasets

    if not dataset:
        raise ValueError(f"{option} is required: a Hub dataset id, 'imagefolder' with a data folder, "
                         "or a folder written by save_to_disk.")
    path = Path(dataset).expanduser()
    kind = saved_dataset_kind(path) if path.is_dir() else None
    if kind == "dict":
        return datasets.load_from_disk(str(path))
    if kind == "dataset":  # a single saved Dataset has no split names: call it "train"
        return datasets.DatasetDict({"train": datasets.load_from_disk(str(path))})
    if dataset == "imagefolder" and not data_dir:
        raise ValueError(f"{option}=imagefolder needs a data folder (data_dir, --data-dir) holding "
                         "<split>/<class>/<image> files.")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ValueError(f"data_dir {data_dir} is not a folder.")
    try:
        loaded = datasets.load_dataset(dataset, config_name, data_dir=data_dir, revision=revision)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise ValueError(f"{option} '{dataset}' could not be loaded ({type(error).__name__}: {error}).") from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{option} '{dataset}' did not load as a dataset with splits.")
    return loaded


def _check_columns(ds: "Dataset", image_column: str, label_column: str, what: str) -> int | None:
    from .validation import check_dataset

    try:
        return check_dataset(ds, image_column, label_column)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from error


def class_names(ds: "Dataset", label_column: str = "label") -> list[str]:
    """Class names from a ``ClassLabel`` column, else "0", "1", ... up to the largest label."""
    from datasets import ClassLabel

    feature = ds.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    labels = ds[label_column]
    return [str(i) for i in range(max(labels) + 1)] if labels else []


def load_image_splits(
    dataset: str,
    split: str = "train",
    eval_split: str | None = None,
    *,
    data_dir: str | None = None,
    config_name: str | None = None,
    revision: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    option: str = "dataset",
) -> tuple["Dataset", "Dataset | None"]:
    """The training split and the evaluation split of a dataset, with checked columns.

    Args:
        dataset: a Hub id, ``"imagefolder"`` (with ``data_dir``: ``<split>/<class>/<image>``
            files) or a ``save_to_disk`` folder (a ``DatasetDict``, or a single ``Dataset``,
            which counts as split ``"train"``).
        split: the training split.
        eval_split: the evaluation split; ``None`` picks ``test`` or ``validation`` when the
            dataset has one (else no evaluation split: ``None`` is returned for it).
        image_column, label_column: the columns holding the images (``datasets.Image``) and
            the integer / ``ClassLabel`` labels.

    Raises ``ValueError`` naming the split or column at fault and listing what the dataset has.
    Both splits must share the classes (``ClassLabel`` names, when both have them).
    """
    splits = _open_splits(dataset, data_dir, config_name, revision, option)
    names = list(splits)
    if split not in splits:
        raise ValueError(f"{option} '{dataset}' has no split '{split}'; its splits are {names} (--split).")
    if eval_split is None:
        eval_split = next((name for name in ("test", "validation", "valid", "val") if name in splits), None)
    elif eval_split not in splits:
        raise ValueError(f"{option} '{dataset}' has no split '{eval_split}'; its splits are {names} (--eval-split).")
    if eval_split == split:
        raise ValueError(f"eval_split and split are both '{split}': evaluate on data the models were not trained on.")
    train = splits[split]
    _check_columns(train, image_column, label_column, f"split '{split}'")
    evaluation = None
    if eval_split is not None:
        evaluation = splits[eval_split]
        _check_columns(evaluation, image_column, label_column, f"split '{eval_split}'")
        from datasets import ClassLabel

        train_feature, eval_feature = train.features[label_column], evaluation.features[label_column]
        if isinstance(train_feature, ClassLabel) and isinstance(eval_feature, ClassLabel) \
                and train_feature.names != eval_feature.names:
            raise ValueError(f"splits '{split}' and '{eval_split}' name their classes differently "
                             f"({train_feature.names[:5]}... vs {eval_feature.names[:5]}...).")
    return train, evaluation


class _SquareResize:
    """``Dataset.map`` function: shortest edge to ``size``, centre crop to ``size x size``, RGB, lossless PNG."""

    def __init__(self, size: int, column: str):
        self.size = size
        self.column = column

    def __call__(self, batch: dict) -> dict:
        from .images import encode_png, load_rgb

        out = []
        for image in batch[self.column]:
            image = load_rgb(image, column=self.column)
            scale = self.size / min(image.size)
            width, height = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
            image = image.resize((width, height), PILImage.Resampling.BICUBIC)
            left, top = (width - self.size) // 2, (height - self.size) // 2
            out.append(encode_png(image.crop((left, top, left + self.size, top + self.size))))
        return {self.column: out}


def resize_images(ds: "Dataset", size: int, image_column: str = "image") -> "Dataset":
    """Every image resized (shortest edge, then centre crop) to ``size`` x ``size``, stored as lossless PNG.

    For data whose images differ in size (GTSRB) or are larger than the model's input
    (ImageNette at 320 px): resized before poisoning, a trigger of k pixels is k pixels in
    every image and at the model's input, as BackdoorBench does.
    """
    check_int("size", size, minimum=8)
    return ds.map(_SquareResize(size, image_column), batched=True, batch_size=256, features=ds.features.copy(),
                  desc=f"Resizing images to {size}px")


def stratified_indices(ds: "Dataset", rows: int | None, seed: int, label_column: str = "label") -> np.ndarray:
    """The sorted row indices of a class-stratified subset of ``rows`` rows (every row when ``rows`` is None).

    Classes too small to stratify (a class with one row, or more classes than ``rows``)
    fall back to a plain random subset of the same seed, with a warning.
    """
    if rows is None or rows >= len(ds):
        return np.arange(len(ds))
    keep, _, _ = _stratified_split(ds[label_column], rows, seed, f"A subset of {rows} rows")
    return keep


def _stratified_split(labels, first: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """``first`` row indices and the others, each sorted, and whether they keep the class shares (where sklearn
    cannot stratify, a random split of the same seed)."""
    from sklearn.model_selection import train_test_split

    order = np.arange(len(labels))
    try:
        one, other = train_test_split(order, train_size=first, random_state=seed, stratify=labels)
        stratified = True
    except ValueError as error:  # sklearn cannot stratify these class counts
        logging.getLogger(__name__).warning("%s cannot keep the class shares (%s); taking a random one.", what, error)
        one = np.random.default_rng(seed).choice(len(labels), size=first, replace=False)
        other = np.setdiff1d(order, one)
        stratified = False
    return np.sort(one), np.sort(other), stratified


def stratified_subset(ds: "Dataset", rows: int | None, seed: int, label_column: str = "label") -> "Dataset":
    """A class-stratified subset of ``rows`` rows, in the original order (all rows when ``rows`` is None)."""
    if rows is None or rows >= len(ds):
        return ds
    return ds.select(stratified_indices(ds, rows, seed, label_column))


def held_out_rows(ds: "Dataset", share: float, seed: int,
                  label_column: str = "label") -> tuple[np.ndarray, np.ndarray, bool]:
    """``(kept, held_out, stratified)``: the row indices of ``ds`` to train on and the ``share`` held out for
    evaluation (each sorted), seeded, stratified by class where the class counts allow it.

    For data with no evaluation split, as transformers' image-classification example does
    with its ``train_val_split``.
    """
    held_out = max(1, round(len(ds) * share))
    if held_out >= len(ds):
        raise ValueError(f"train_val_split={share} of {len(ds)} rows leaves no training rows.")
    return _stratified_split(ds[label_column], len(ds) - held_out, seed, f"Holding out {held_out} evaluation rows")
