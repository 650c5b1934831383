"""The extension-point registries: one registration is all a new attack needs."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

import hf_backdoor_guard as hbg
from hf_backdoor_guard.attacks import ATTACKS, Attack
from hf_backdoor_guard.cli import build_parser
from hf_backdoor_guard.registry import Registry


def test_unknown_names_list_the_registered_ones():
    registry = Registry("widget")
    registry.register(int, name="one")
    with pytest.raises(ValueError, match=r"Unknown widget 'two'; choose one of \['one'\]"):
        registry["two"]


def test_two_entries_cannot_share_a_name():
    registry = Registry("widget")
    registry.register(int, name="x")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(float, name="x")


def test_a_toy_attack_reaches_the_cli_and_poison_dataset():
    class Invert(Attack):
        name = "toy_invert"

        def apply(self, pixels, index):
            return 255 - pixels

    ATTACKS.register(Invert)
    try:
        assert build_parser().parse_args(["demo", "--attack", "toy_invert"]).attack == "toy_invert"
        images = [PILImage.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(6)]
        ds = Dataset.from_dict({"image": images, "label": [0, 1, 1, 1, 1, 1]},
                               features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}))
        poisoned = hbg.poison_dataset(ds, hbg.attack_from_name("toy_invert"), target_label=0, rate=1.0)
        assert poisoned["poisoned"] == [False] + [True] * 5
        assert np.asarray(poisoned[1]["image"])[0, 0, 0] == 255 - 10
    finally:
        ATTACKS.unregister("toy_invert")
    assert "toy_invert" not in ATTACKS
    with pytest.raises(SystemExit):  # argparse rejects it again: the choices come from the registry
        build_parser().parse_args(["demo", "--attack", "toy_invert"])
