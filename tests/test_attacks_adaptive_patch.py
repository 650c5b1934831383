"""Adaptive-Patch (Qi et al., ICLR 2023): one patch per training row at its opacity, all chosen patches at test time."""

import numpy as np
import pytest
from PIL import Image

import hf_backdoor_guard as hbg
from hf_backdoor_guard.attacks import ATTACKS, AdaptivePatch, attack_from_name
from hf_backdoor_guard.attacks.adaptive_patch import PAPER_ALPHAS
from hf_backdoor_guard.poisoning import poison_dataset


def flat(value, size=(16, 16)):
    return Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8))


def as_float(image):
    return np.asarray(image, dtype=np.float64)


CORNER_SQUARES = {  # patch number -> (rows, columns) of a 3 px patch on a 16 x 12 image (width 16, height 12)
    0: (slice(9, 12), slice(13, 16)),  # bottom right
    1: (slice(0, 3), slice(0, 3)),  # top left
    2: (slice(0, 3), slice(13, 16)),  # top right
    3: (slice(9, 12), slice(0, 3)),  # bottom left
}


def test_registered_and_exported_with_the_paper_defaults():
    assert "adaptive_patch" in ATTACKS.names() and hbg.AdaptivePatch is AdaptivePatch
    attack = attack_from_name("adaptive_patch")
    assert attack.alphas == PAPER_ALPHAS == (0.5, 0.2, 0.5, 0.3)
    assert attack.test_patches == (0, 2) and attack.cover_ratio == 2.0 and not attack.clean_label


def test_poisoned_row_blends_one_patch_with_its_opacity_in_its_corner():
    attack = AdaptivePatch()
    image = flat(100, (16, 12))
    x = as_float(image)
    for index in range(12):
        patch = attack.patch_of_row(index)
        out = as_float(attack.poison_image(image, index=index, label=4))
        rows, cols = CORNER_SQUARES[patch]
        expected = np.clip(np.rint(100 + attack.alphas[patch] * (attack.pattern(patch) - 100.0)), 0, 255)
        assert (out[rows, cols] == expected).all()
        rest = np.ones(out.shape[:2], bool)
        rest[rows, cols] = False
        assert (out[rest] == x[rest]).all()  # every other pixel, the other corners included, is untouched
        assert attack.cover_image(image, index=index, label=4).tobytes() == out.astype(np.uint8).tobytes()
    assert {attack.patch_of_row(i) for i in range(40)} == {0, 1, 2, 3}  # rows spread over the patches


def test_test_time_stamps_the_chosen_patches_at_full_opacity():
    attack = AdaptivePatch(test_patches=[0, 2])
    out = as_float(attack(flat(100, (16, 12)), index=7))
    for patch in (0, 2):
        rows, cols = CORNER_SQUARES[patch]
        assert (out[rows, cols] == attack.pattern(patch)).all()
    for patch in (1, 3):
        rows, cols = CORNER_SQUARES[patch]
        assert (out[rows, cols] == 100).all()
    assert (out[3:9, 3:13] == 100).all()
    everything = as_float(AdaptivePatch(test_patches=[0, 1, 2, 3])(flat(100, (16, 12))))
    for patch, (rows, cols) in CORNER_SQUARES.items():
        assert (everything[rows, cols] == attack.pattern(patch)).all()


def test_patterns_differ_per_patch_and_follow_the_seed():
    attack = AdaptivePatch(size=4)
    patterns = [attack.pattern(j).tobytes() for j in range(4)]
    assert len(set(patterns)) == 4 and attack.pattern(0).shape == (4, 4, 3)
    assert AdaptivePatch(size=4, seed=1).pattern(0).tobytes() != patterns[0]
    assert AdaptivePatch(size=4).pattern(0).tobytes() == patterns[0]


def test_poison_dataset_adds_cover_rows_that_keep_their_labels():
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(40)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(40)]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(num_classes=4)}))
    out = poison_dataset(ds, AdaptivePatch(cover_ratio=1.0), target_label=0, rate=0.2, seed=0)
    poisoned, cover = np.asarray(out["poisoned"]), np.asarray(out["cover"])
    assert poisoned.sum() == 6 and cover.sum() == 6 and not (poisoned & cover).any()
    labels, original = np.asarray(out["label"]), np.asarray(out["original_label"])
    assert (labels[poisoned] == 0).all() and (labels[cover] == original[cover]).all()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"patches": 0}, r"AdaptivePatch patches must be an int in \[1, 4\]"),
        ({"patches": 5}, r"AdaptivePatch patches must be an int in \[1, 4\]"),
        ({"patches": 2.0}, "AdaptivePatch patches must be an int"),
        ({"size": 0}, "AdaptivePatch size must be an int >= 1"),
        ({"alphas": [0.5, 0.5]}, "AdaptivePatch alphas must be a list of 4 opacities"),
        ({"alphas": "0.5"}, "AdaptivePatch alphas must be a list"),
        ({"alphas": [0.5, 0.2, 0.0, 0.3]}, r"AdaptivePatch alphas entry must lie in \(0, 1\]"),
        ({"alphas": [0.5, 0.2, float("nan"), 0.3]}, "AdaptivePatch alphas entry must lie in"),
        ({"test_patches": []}, "AdaptivePatch test_patches must be a non-empty list"),
        ({"test_patches": 2}, "AdaptivePatch test_patches must be a non-empty list"),
        ({"test_patches": [0, 4]}, r"AdaptivePatch test_patches entry must be an int in \[0, 3\]"),
        ({"test_patches": [1, 1]}, "AdaptivePatch test_patches must be distinct"),
        ({"cover_ratio": -1}, r"AdaptivePatch cover_ratio must lie in \[0, inf\)"),
        ({"seed": -1}, "AdaptivePatch seed must be an int"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        AdaptivePatch(**options)


def test_patches_that_do_not_fit_the_image_are_refused_naming_the_size():
    with pytest.raises(ValueError, match="AdaptivePatch: 4 patches of size 5 in the corners overlap"):
        AdaptivePatch(size=5)(flat(100, (9, 9)))
    with pytest.raises(ValueError, match="AdaptivePatch patch of size 5 does not fit"):
        AdaptivePatch(patches=1, alphas=[0.5], test_patches=[0], size=5)(flat(100, (4, 4)))
    AdaptivePatch(patches=1, alphas=[0.5], test_patches=[0], size=4)(flat(100, (4, 4)))  # one patch may fill it
