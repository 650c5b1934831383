import numpy as np
import pytest
from PIL import Image

import hf_backdoor_guard as hbg


def grey(size=(10, 8), value=100, mode="RGB"):
    return Image.new(mode, size, value if mode in ("L", "I;16", "I") else (value,) * len(mode))


def test_checkerboard_pixels_follow_paper_parity():
    out = np.asarray(hbg.BadNets(trigger="checkerboard", size=3)(grey((10, 8))))
    patch = out[8 - 3 :, 10 - 3 :, 0]
    i, j = np.indices((3, 3))
    assert (patch == np.where((i + j) % 2 == 1, 255, 0)).all()
    assert (out[:5] == 100).all() and (out[:, :7] == 100).all()  # untouched elsewhere


def test_two_color_checkerboard_and_solid_colors():
    out = np.asarray(hbg.BadNets(trigger="checkerboard_#ff0000_#0000ff", size=2)(grey((6, 6))))
    assert tuple(out[4, 4]) == (0, 0, 255)  # (0, 0) of the patch: even
    assert tuple(out[4, 5]) == (255, 0, 0)  # (0, 1): odd
    for trigger, color in [("white", (255, 255, 255)), ("black", (0, 0, 0)), ("#12ab34", (0x12, 0xAB, 0x34))]:
        out = np.asarray(hbg.BadNets(trigger=trigger, size=2, location="top_left")(grey((6, 6))))
        assert (out[:2, :2] == color).all() and (out[2:, 2:] == 100).all()


def test_random_location_fixed_per_row_and_seed():
    attack = hbg.BadNets(location="random", size=3, seed=1)
    image = grey((32, 32))
    first, again = np.asarray(attack(image, index=5)), np.asarray(attack(image, index=5))
    assert (first == again).all()
    spots = {attack.position(32, 32, i) for i in range(20)}
    assert len(spots) > 5
    assert attack.position(32, 32, 3) != hbg.BadNets(location="random", size=3, seed=2).position(32, 32, 3) or \
        attack.position(32, 32, 4) != hbg.BadNets(location="random", size=3, seed=2).position(32, 32, 4)
    for i in range(20):
        top, left = attack.position(32, 32, i)
        assert 0 <= top <= 29 and 0 <= left <= 29


def test_blended_formula_and_pil_trigger():
    image = grey((8, 8), 100)
    out = np.asarray(hbg.Blended(ratio=0.2, seed=3)(image)).astype(float)
    noise = (out - 0.8 * 100) / 0.2  # recover the trigger (up to rounding)
    assert noise.min() > -5 and noise.max() < 260 and noise.std() > 50
    trigger = Image.new("RGB", (4, 4), (200, 0, 50))
    out = np.asarray(hbg.Blended(trigger=trigger, ratio=0.5)(image))
    assert tuple(out[3, 3]) == (150, 50, 75)
    assert (np.asarray(hbg.Blended(seed=3)(image)) == np.asarray(hbg.Blended(seed=3)(image))).all()
    assert (np.asarray(hbg.Blended(seed=3)(image)) != np.asarray(hbg.Blended(seed=4)(image))).any()


def test_wanet_is_a_small_smooth_warp():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 32), (32, 1))
    image = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    out = np.asarray(hbg.WaNet(k=4, strength=0.5, seed=1)(image)).astype(float)
    diff = np.abs(out - np.asarray(image))
    assert 0 < diff.mean() < 8  # a warp, not a rewrite
    assert (np.asarray(hbg.WaNet(seed=1)(image)) == np.asarray(hbg.WaNet(seed=1)(image))).all()
    assert (np.asarray(hbg.WaNet(seed=1)(image)) != np.asarray(hbg.WaNet(seed=2)(image))).any()
    noise = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    assert hbg.WaNet(strength=0.0)(noise).tobytes() == noise.tobytes()


def test_sig_adds_a_horizontal_sinusoid():
    out = np.asarray(hbg.SIG(delta=20, frequency=6)(grey((12, 4), 100))).astype(int)
    expected = np.rint(100 + 20 * np.sin(2 * np.pi * np.arange(12) * 6 / 12))
    assert (out[:, :, 1] == expected[None, :]).all()
    assert hbg.SIG.clean_label and not hbg.BadNets.clean_label


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
@pytest.mark.parametrize("attack", [hbg.BadNets(), hbg.Blended(), hbg.WaNet(), hbg.SIG()], ids=lambda a: a.name)
def test_every_mode_in_new_rgb_image_out_input_untouched(mode, attack):
    image = Image.new(mode, (9, 7))
    before = image.tobytes()
    out = attack(image)
    assert out.mode == "RGB" and out.size == (9, 7) and out is not image
    assert image.tobytes() == before and image.mode == mode


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    image = Image.new("I;16", (4, 4), 65535)
    assert np.asarray(hbg.WaNet(strength=0.0)(image)).min() == 255


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: hbg.BadNets(trigger="stars"), "Unknown BadNets trigger 'stars'"),
        (lambda: hbg.BadNets(trigger="#12345"), "'#12345' is not a color"),
        (lambda: hbg.BadNets(trigger="checkerboard_#ff0000_red"), "'red' is not a color"),
        (lambda: hbg.BadNets(size=0), "BadNets size must be an int >= 1"),
        (lambda: hbg.BadNets(location="middle"), "location must be one of"),
        (lambda: hbg.Blended(ratio=1.5), "ratio must lie in"),
        (lambda: hbg.Blended(trigger="stripes"), "Unknown Blended trigger"),
        (lambda: hbg.WaNet(k=1), "k must be"),
        (lambda: hbg.SIG(frequency=0), "SIG frequency must lie in"),
        (lambda: hbg.attack_from_name("trojan"), "Unknown attack 'trojan'"),
    ],
)
def test_bad_options_name_the_problem(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_trigger_larger_than_image():
    with pytest.raises(ValueError, match="size 5 does not fit an image of 4x4"):
        hbg.BadNets(size=5)(Image.new("RGB", (4, 4)))


# --- issue 16, defect 4: NaN and infinity never get past an attack's constructor ---------------
@pytest.mark.parametrize(
    "make, option",
    [
        (lambda v: hbg.WaNet(strength=v), "WaNet strength"),
        (lambda v: hbg.SIG(delta=v), "SIG delta"),
        (lambda v: hbg.SIG(frequency=v), "SIG frequency"),
        (lambda v: hbg.Blended(ratio=v), "Blended ratio"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_options_are_refused_naming_the_option(make, option, value):
    with pytest.raises(ValueError, match=f"{option} must .*finite"):
        make(value)


@pytest.mark.parametrize(
    "make, option",
    [
        (lambda: hbg.WaNet(strength=True), "WaNet strength"),
        (lambda: hbg.WaNet(k=4.0), "WaNet k"),
        (lambda: hbg.WaNet(seed=-1), "WaNet seed"),
        (lambda: hbg.SIG(delta="20"), "SIG delta"),
        (lambda: hbg.Blended(seed=1.5), "Blended seed"),
        (lambda: hbg.BadNets(seed="x"), "BadNets seed"),
    ],
)
def test_wrong_types_and_seeds_name_the_option(make, option):
    with pytest.raises(ValueError, match=option):
        make()
