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

:func:`load_fashion_mnist` gives the second benchmark world, Fashion-MNIST at 28 px, in the
same three splits (read from the IDX files of the Debian package or a folder, else the Hub).
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


# --- Fashion-MNIST: the second benchmark world ---------------------------------------------
FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files (gzipped).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_ROWS = {"train": 60_000, "test": 10_000}  # the published sizes
FASHION_MNIST_HOW_TO_GET = (
    "Get the data either way: offline, `apt-get install dataset-fashion-mnist` (it installs the four IDX "
    f"files under {FASHION_MNIST_DIR}) or pass path= a folder holding "
    f"{', '.join(FASHION_MNIST_FILES.values())} (plain or .gz); online, leave path=None and unset "
    f"HF_HUB_OFFLINE so that datasets.load_dataset('{FASHION_MNIST_HUB_ID}') downloads it from the Hub."
)
# IDX type codes (third byte of the magic number) -> numpy dtype; IDX stores big-endian.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in one IDX file (LeCun's MNIST format), plain or gzipped (``.gz``).

    The header is two zero bytes, a type code, the number of dimensions, then each
    dimension as a big-endian uint32. Raises ``ValueError`` naming the file when the
    header is not IDX or the data is shorter or longer than the header says.
    """
    import gzip
    import zlib

    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:  # a cut-off or corrupt .gz lands here
        raise ValueError(f"{path} is not a readable gzip file ({type(error).__name__}: {error}).") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'} "
                         "(expected 0000 then a type code and the number of dimensions).")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header names {ndim} dimensions but the file ends at "
                         f"byte {len(raw)}.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise ValueError(f"{path} is {problem}: shape {shape} needs {expected} bytes of data, "
                         f"it has {len(raw) - header}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # the plain file wins: it is what a user unpacked on purpose
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist_from_folder(folder: Path) -> dict[str, np.ndarray]:
    """The four arrays (images [N, 28, 28] uint8, labels [N]) from the IDX files in ``folder``."""
    arrays = {key: read_idx(_idx_file(folder, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"The {split} IDX files in {folder} do not match: images {images.shape}, "
                             f"labels {labels.shape} (expected [N, rows, cols] and [N]).")
        if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_NAMES)):
            raise ValueError(f"The {split} labels in {folder} are outside 0..{len(FASHION_MNIST_NAMES) - 1}.")
    return {key: array.astype(np.uint8 if key.endswith("images") else np.int64) for key, array in arrays.items()}


def _hub_offline() -> bool:
    import os

    flags = (os.environ.get(name, "").strip().upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _fashion_mnist_from_hub() -> dict[str, np.ndarray]:  # pragma: no cover - needs the network
    """The same four arrays from the Hub copy (``image``: 28x28 grey PIL images, ``label``: 0..9)."""
    import datasets

    try:
        hub = datasets.load_dataset(FASHION_MNIST_HUB_ID)
    except Exception as error:  # no network, Hub down, dataset moved: say how else to get it
        raise ValueError(f"Fashion-MNIST could not be loaded from the Hub ({type(error).__name__}: {error}). "
                         f"{FASHION_MNIST_HOW_TO_GET}") from error
    arrays = {}
    for split in ("train", "test"):
        arrays[f"{split}_images"] = np.stack([np.asarray(image.convert("L")) for image in hub[split]["image"]])
        arrays[f"{split}_labels"] = np.asarray(hub[split]["label"], dtype=np.int64)
    return arrays


def fashion_mnist_arrays(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four arrays: ``train_images`` / ``test_images`` ([N, 28, 28] uint8) and ``*_labels``.

    Sources in order: the folder ``path`` (only it, when given: a named folder must hold
    the data), else the Debian package's folder :data:`FASHION_MNIST_DIR`, else the Hub
    dataset when the Hub is not switched off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``).
    """
    if path is not None:
        folder = Path(path).expanduser()
        missing = [stem for stem in FASHION_MNIST_FILES.values() if _idx_file(folder, stem) is None]
        if missing:
            raise ValueError(f"No Fashion-MNIST data in {folder}: missing {', '.join(missing)} (plain or .gz). "
                             f"{FASHION_MNIST_HOW_TO_GET}")
        return _fashion_mnist_from_folder(folder)
    if all(_idx_file(FASHION_MNIST_DIR, stem) for stem in FASHION_MNIST_FILES.values()):
        return _fashion_mnist_from_folder(FASHION_MNIST_DIR)
    if _hub_offline():
        raise ValueError(f"No Fashion-MNIST data: {FASHION_MNIST_DIR} does not hold the IDX files and the Hub is "
                         f"switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). {FASHION_MNIST_HOW_TO_GET}")
    return _fashion_mnist_from_hub()  # pragma: no cover - needs the network


def _check_fashion_sizes(pretrain_size, train_size, test_size, train_rows: int, test_rows: int) -> None:
    for name, value in (("pretrain_size", pretrain_size), ("train_size", train_size), ("test_size", test_size)):
        check_int(name, value, minimum=10)  # at least one row per class
    if pretrain_size + train_size > train_rows:
        raise ValueError(f"pretrain_size + train_size = {pretrain_size + train_size} does not fit in the "
                         f"{train_rows} Fashion-MNIST training images (the two splits are disjoint).")
    if test_size > test_rows:
        raise ValueError(f"test_size = {test_size} does not fit in the {test_rows} Fashion-MNIST test images.")


def _take(rows: np.ndarray, size: int, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` of ``rows`` stratified by class, and the rest (all of them when ``size`` is every row)."""
    from sklearn.model_selection import train_test_split

    if size == len(rows):  # sklearn refuses an empty remainder
        return rows, rows[:0]
    taken, rest = train_test_split(rows, train_size=size, random_state=seed, stratify=labels[rows])
    return taken, rest


def fashion_mnist_split_arrays(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    pretrain_size: int = 10_000,
    train_size: int = 5_000,
    test_size: int = 2_000,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits of ``load_fashion_mnist`` as ``{split: (uint8 images [N, 28, 28, 3], labels [N])}``.

    Same rows and pixels as the ``DatasetDict`` without the PNG round trip (the diffusion
    pretraining recipe feeds these arrays straight to torch).
    """
    _check_fashion_sizes(pretrain_size, train_size, test_size, *FASHION_MNIST_ROWS.values())  # before any I/O
    arrays = fashion_mnist_arrays(path)
    train_labels, test_labels = arrays["train_labels"], arrays["test_labels"]
    _check_fashion_sizes(pretrain_size, train_size, test_size, len(train_labels), len(test_labels))
    # pretrain and train come from the same 60,000 images: draw pretrain, then train from what is left.
    pretrain_rows, rest = _take(np.arange(len(train_labels)), pretrain_size, train_labels, seed)
    train_rows, _ = _take(rest, train_size, train_labels, seed + 1)
    test_rows, _ = _take(np.arange(len(test_labels)), test_size, test_labels, seed + 2)
    splits = {}
    for name, rows, images, labels in (("pretrain", pretrain_rows, arrays["train_images"], train_labels),
                                       ("train", train_rows, arrays["train_images"], train_labels),
                                       ("test", test_rows, arrays["test_images"], test_labels)):
        rows = np.sort(rows)  # the files' order inside a split
        # grey stored as RGB, as for the digits: every attack and pipeline downstream works in RGB
        splits[name] = (np.repeat(images[rows][..., None], 3, axis=-1), labels[rows])
    return splits


def load_fashion_mnist(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    pretrain_size: int = 10_000,
    train_size: int = 5_000,
    test_size: int = 2_000,
) -> "DatasetDict":
    """Fashion-MNIST (Xiao et al. 2017) as a ``DatasetDict`` with splits ``pretrain``, ``train`` and ``test``.

    Args:
        path: a folder holding the four IDX files (plain or ``.gz``). ``None`` reads the
            Debian package's folder (``apt-get install dataset-fashion-mnist``), else
            downloads ``zalando-datasets/fashion_mnist`` from the Hub when online.
        seed: seed of the stratified splits; the same seed always gives the same rows.
        pretrain_size: training images reserved for diffusion pretraining (only these train it).
        train_size: the victim's training set, disjoint from ``pretrain``.
        test_size: a stratified subset of the 10,000 test images.

    Each split has an ``image`` column (``datasets.Image()``, 28x28 RGB PNG, grey in all
    three channels like the digits) and a ``label`` column (``ClassLabel`` with
    :data:`FASHION_MNIST_NAMES`). Raises ``ValueError`` when no data is found, naming
    both ways to get it.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    from .images import encode_png

    splits = fashion_mnist_split_arrays(path, seed=seed, pretrain_size=pretrain_size, train_size=train_size,
                                        test_size=test_size)
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_NAMES)})
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"image": [encode_png(PILImage.fromarray(image)) for image in images], "label": labels.tolist()},
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
