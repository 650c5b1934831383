"""load_digits_dataset: real scikit-learn digits, three disjoint seed-fixed splits."""

import hashlib
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
