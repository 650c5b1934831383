"""The contract every registered attack keeps: any PIL image in, a new RGB image out, deterministic."""

import pickle

import numpy as np
import pytest
from PIL import Image

from hf_backdoor_guard.attacks import ATTACKS, attack_from_name

# Options that fit small test images; every registered attack must be listed here, so a new
# attack cannot skip the contract.
SMALL = {
    "badnets": {"size": 3, "location": "random"},
    "blended": {},
    "wanet": {},
    "sig": {},
    "label_consistent": {},
    "ftrojan": {"window_size": 4, "positions": [[1, 1], [3, 3]], "magnitude": 60.0},
    "bpp": {"squeeze_num": 4},
    "adaptive_blend": {"pieces": 4},
    "adaptive_patch": {},
    "lowfreq": {},
    "border": {"width": 1},
    "tint": {},
    "stroke": {},
    "surviving": {"iterations": 1, "batch_size": 2},
}
MODES = ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1", "RGB"]


def test_every_registered_attack_is_covered_here():
    assert set(ATTACKS.names()) == set(SMALL)


def noisy(mode="RGB", size=(9, 7), seed=0):
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def forms(attack):
    yield "test", lambda image, index: attack(image, index=index)
    yield "poison", lambda image, index: attack.poison_image(image, index=index, label=0)
    if attack.cover_ratio > 0:
        yield "cover", lambda image, index: attack.cover_image(image, index=index, label=3)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("mode", MODES)
def test_any_mode_in_new_rgb_image_out_input_untouched(name, mode):
    attack = attack_from_name(name, **SMALL[name])
    image = noisy(mode)
    before = (image.mode, image.size, image.tobytes())
    for form, run in forms(attack):
        out = run(image, 5)
        assert out.mode == "RGB" and out.size == (9, 7) and out is not image, form
        assert (image.mode, image.size, image.tobytes()) == before, form


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [(9, 7), (16, 16), (33, 20)])
def test_deterministic_from_options_and_row_index(name, size):
    image = noisy(size=size, seed=1)
    first, again = attack_from_name(name, **SMALL[name]), attack_from_name(name, **SMALL[name])
    for (form, run), (_, run_again) in zip(forms(first), forms(again)):
        for index in (0, 7):
            assert run(image, index).tobytes() == run_again(image, index).tobytes(), form
    # an unpickled copy (as in Dataset.map with num_proc) gives the same images
    clone = pickle.loads(pickle.dumps(first))
    for (form, run), (_, run_clone) in zip(forms(first), forms(clone)):
        assert run(image, 3).tobytes() == run_clone(image, 3).tobytes(), form


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_trigger_changes_the_image(name):
    image = noisy(size=(16, 16), seed=2)
    attack = attack_from_name(name, **SMALL[name])
    for form, run in forms(attack):
        assert run(image, 1).tobytes() != image.tobytes(), form


@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_round_trips_through_the_registry(name):
    attack = attack_from_name(name, **SMALL[name])
    config = attack.config()
    if name == "label_consistent":
        assert config["surrogate"] is None
        config.pop("surrogate")
    rebuilt = attack_from_name(name, **config)
    image = noisy(size=(16, 16))
    assert rebuilt(image, 2).tobytes() == attack(image, 2).tobytes()
    assert repr(rebuilt) == repr(attack)
