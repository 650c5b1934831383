"""load_digits_dataset: real scikit-learn digits, three disjoint seed-fixed splits."""

import hashlib
import re
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, DatasetDict, Image

from hf_backdoor_guard.data import digit_to_image, digits_split_arrays, load_digits_dataset


def _fingerprints(images, labels):
    return Counter((hashlib.md5(np.asarray(image).tobytes()).hexdigest(), int(label))
                   for image, label in zip(images, labels))


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_splits_features_and_sizes(digits):
    assert isinstance(digits, DatasetDict)
    assert list(digits) == ["pretrain", "train", "test"]
    assert {name: len(split) for name, split in digits.items()} == {"pretrain": 600, "train": 800, "test": 397}
    for split in digits.values():
        assert isinstance(split.features["image"], Image)
        assert isinstance(split.features["label"], ClassLabel)
        assert split.features["label"].names == [str(d) for d in range(10)]
        image = split[0]["image"]
        assert image.mode == "RGB" and image.size == (16, 16)
        # stratified: every digit in every split, in roughly equal shares
        counts = np.bincount(split["label"], minlength=10)
        assert counts.min() >= 0.8 * len(split) / 10


def test_splits_partition_the_digits(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    everything = _fingerprints([digit_to_image(p) for p in raw.data], raw.target)
    parts = [_fingerprints(split["image"], split["label"]) for split in digits.values()]
    # together the splits are exactly the 1,797 digits, each once
    assert sum(parts, Counter()) == everything
    # and no image of one split appears in another (a leak into pretraining would be a bug)
    pretrain, train, test = (set(part) for part in parts)
    assert not (pretrain & train) and not (pretrain & test) and not (train & test)


def test_seed_fixes_the_split(digits):
    again = load_digits_dataset(seed=0)
    other = load_digits_dataset(seed=1)
    for name in digits:
        same = _fingerprints(again[name]["image"], again[name]["label"])
        assert same == _fingerprints(digits[name]["image"], digits[name]["label"])
    assert _fingerprints(other["train"]["image"], other["train"]["label"]) != \
        _fingerprints(digits["train"]["image"], digits["train"]["label"])


def test_arrays_match_the_dataset(digits):
    arrays = digits_split_arrays()
    for name, (images, labels) in arrays.items():
        assert images.dtype == np.uint8 and images.shape == (len(digits[name]), 16, 16, 3)
        np.testing.assert_array_equal(labels, digits[name]["label"])
        np.testing.assert_array_equal(images[3], np.asarray(digits[name][3]["image"]))


def test_native_size_keeps_the_pixels():
    from sklearn.datasets import load_digits

    pixels = load_digits().data[0]
    image = np.asarray(digit_to_image(pixels, size=8))
    np.testing.assert_array_equal(image[..., 0], np.rint(pixels.reshape(8, 8) * 255 / 16).astype(np.uint8))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    bigger = load_digits_dataset(size=24, pretrain_size=100, test_size=100)
    assert bigger["train"][0]["image"].size == (24, 24) and len(bigger["train"]) == 1597


@pytest.mark.parametrize(
    "options, word",
    [({"size": 4}, "size"), ({"size": 16.0}, "size"), ({"resample": "box"}, "resample"),
     ({"pretrain_size": 5}, "pretrain_size"), ({"test_size": True}, "test_size"),
     ({"pretrain_size": 1000, "test_size": 790}, "train split")],
)
def test_bad_options_raise_before_work(options, word):
    with pytest.raises(ValueError, match=word):
        load_digits_dataset(**options)


# --- a user's dataset: load_image_splits -------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny imagefolder (train/test, two classes) written from the digits."""
    root = tmp_path_factory.mktemp("imagefolder")
    small = load_digits_dataset()
    for split, rows in (("train", range(12)), ("test", range(6))):
        for i in rows:
            row = small[split][i]
            path = root / split / f"digit{row['label']}"
            path.mkdir(parents=True, exist_ok=True)
            row["image"].save(path / f"{i}.png")
    return root


def test_imagefolder_gives_train_and_test_with_checked_columns(folder):
    from hf_backdoor_guard.data import class_names, load_image_splits

    train, test = load_image_splits("imagefolder", data_dir=str(folder))
    assert (len(train), len(test)) == (12, 6)
    assert class_names(train) == class_names(test) and class_names(train)[0].startswith("digit")
    only_train, none = load_image_splits("imagefolder", "test", "train", data_dir=str(folder))
    assert (len(only_train), len(none)) == (6, 12)


def test_saved_folders_load_and_a_single_dataset_is_its_train_split(folder, tmp_path):
    from datasets import DatasetDict

    from hf_backdoor_guard.data import load_image_splits

    train, test = load_image_splits("imagefolder", data_dir=str(folder))
    DatasetDict({"train": train, "validation": test}).save_to_disk(str(tmp_path / "dict"))
    loaded_train, loaded_eval = load_image_splits(str(tmp_path / "dict"))
    assert (len(loaded_train), len(loaded_eval)) == (12, 6)  # "validation" is found without --eval-split
    train.save_to_disk(str(tmp_path / "single"))
    alone, missing = load_image_splits(str(tmp_path / "single"))
    assert len(alone) == 12 and missing is None


@pytest.mark.parametrize("kwargs, words", [
    ({"split": "training"}, "has no split 'training'; its splits are ['train', 'test']"),
    ({"eval_split": "dev"}, "has no split 'dev'"),
    ({"image_column": "img"}, "Image column 'img' not found; the dataset has columns ['image', 'label']"),
    ({"label_column": "digit"}, "Label column 'digit' not found; the dataset has columns ['image', 'label']"),
    ({"eval_split": "train"}, "both 'train'"),
])
def test_bad_splits_and_columns_name_what_the_dataset_has(folder, kwargs, words):
    from hf_backdoor_guard.data import load_image_splits

    with pytest.raises(ValueError, match=re.escape(words)):
        load_image_splits("imagefolder", data_dir=str(folder), **kwargs)


def test_imagefolder_without_a_folder_and_a_missing_folder(tmp_path):
    from hf_backdoor_guard.data import load_image_splits

    with pytest.raises(ValueError, match="needs a data folder"):
        load_image_splits("imagefolder")
    with pytest.raises(ValueError, match="is not a folder"):
        load_image_splits("imagefolder", data_dir=str(tmp_path / "nowhere"))


def test_stratified_subset_keeps_order_and_class_shares(digits):
    from hf_backdoor_guard.data import stratified_subset

    subset = stratified_subset(digits["train"], 100, seed=0)
    assert len(subset) == 100 and np.bincount(subset["label"], minlength=10).min() >= 9
    assert stratified_subset(digits["train"], None, seed=0) is digits["train"]


def test_a_subset_that_cannot_be_stratified_is_a_random_one(digits, caplog):
    from hf_backdoor_guard.data import stratified_subset

    labels = np.asarray(digits["train"]["label"])
    rows = [*np.flatnonzero(labels == 0)[:25], *np.flatnonzero(labels == 2)[:25], *np.flatnonzero(labels == 1)[:1]]
    lonely = digits["train"].select(sorted(rows))
    assert np.bincount(lonely["label"])[1] == 1  # a class with a single row: sklearn cannot stratify
    subset = stratified_subset(lonely, 30, seed=0)
    assert len(subset) == 30 and "cannot keep the class shares" in caplog.text
    assert stratified_subset(lonely, 30, seed=0)["label"] == subset["label"]  # still seeded
