"""The new attacks against their papers' formulas on known pixels, and one bad-option test per option."""

import numpy as np
import pytest
from PIL import Image
from scipy.fft import dctn

import hf_backdoor_guard as hbg
from hf_backdoor_guard.attacks import AdaptiveBlend, BppAttack, FTrojan, LabelConsistent, WaNet


def flat(value=100, size=(16, 16)):
    return Image.new("RGB", size, (value,) * 3)


def noise(size=(16, 16), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def as_float(image):
    return np.asarray(image).astype(np.float64)


# --- FTrojan --------------------------------------------------------------------------------
def jpeg_yuv(rgb):
    """Full-range BT.601 (JPEG) YCbCr, written out independently of the attack's matrix."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, 128 + 0.564 * (b - y), 128 + 0.713 * (r - y)], -1)


def test_ftrojan_adds_magnitude_at_the_chosen_uv_frequencies():
    image = flat(128, (32, 32))  # mid grey: no clipping, so only rounding to integers blurs the numbers
    out = FTrojan()(image)  # paper defaults: UV, window 32, (15, 15) and (31, 31), magnitude 30
    change = jpeg_yuv(as_float(out)) - jpeg_yuv(as_float(image))
    for channel, expected in ((0, 0.0), (1, 30.0), (2, 30.0)):
        coefficients = dctn(change[..., channel], norm="ortho")
        for u, v in ((15, 15), (31, 31)):
            assert coefficients[u, v] == pytest.approx(expected, abs=2.0), (channel, u, v)
        others = np.delete(coefficients.ravel(), [15 * 32 + 15, 31 * 32 + 31])
        assert np.abs(others).max() < 2.5, channel


def test_ftrojan_tiles_whole_windows_and_leaves_partial_ones():
    image = noise((20, 13), seed=3)
    attack = FTrojan(window_size=8, positions=[[2, 5]], channels=[0], yuv=False, magnitude=40.0)
    out, x = as_float(attack(image)), as_float(image)
    change = out - x
    assert (change[8:] == 0).all() and (change[:, 16:] == 0).all()  # row 8.. and column 16.. are partial blocks
    block = np.zeros((8, 8))
    block[2, 5] = 40.0
    from scipy.fft import idctn

    pattern = idctn(block, norm="ortho")
    for top, left in ((0, 0), (0, 8)):
        expected = np.clip(np.rint(x[top:top + 8, left:left + 8, 0] + pattern), 0, 255)
        assert (out[top:top + 8, left:left + 8, 0] == expected).all()
    assert (change[..., 1:] == 0).all()  # RGB mode, channel 0 only


# --- BppAttack ------------------------------------------------------------------------------
def test_bpp_dithering_diffuses_the_error_as_floyd_steinberg():
    # One channel worked by hand, 2 levels (0 or 255), 2 x 2 pixels of 100:
    # (0,0): 100 -> 0, error 100: right +43.75, down +31.25, down-right +6.25
    # (0,1): 143.75 -> 255, error -111.25: down-left -20.86, down -34.77
    # (1,0): 100 + 31.25 - 20.86 = 110.39 -> 0, error 110.39: right +48.30
    # (1,1): 100 + 6.25 - 34.77 + 48.30 = 119.78 -> 0
    out = np.asarray(BppAttack(squeeze_num=2)(flat(100, (2, 2))))
    assert (out[..., 0] == [[0, 255], [0, 0]]).all() and (out[..., 1] == out[..., 0]).all()


def test_bpp_without_dithering_rounds_each_value_to_its_level():
    image = noise(seed=4)
    out = as_float(BppAttack(squeeze_num=8, dithering=False)(image))
    expected = np.clip(np.rint(np.rint(as_float(image) / 255 * 7) / 7 * 255), 0, 255)
    assert (out == expected).all()
    levels = {int(round(k / 7 * 255)) for k in range(8)}
    assert set(np.unique(out).astype(int)) <= levels


def test_bpp_dithered_output_uses_only_the_levels_and_keeps_the_mean():
    image = noise((32, 32), seed=5)
    out = as_float(BppAttack(squeeze_num=8)(image))
    assert set(np.unique(out).astype(int)) <= {int(round(k / 7 * 255)) for k in range(8)}
    assert abs(out.mean() - as_float(image).mean()) < 3  # error diffusion keeps the local average


# --- Adaptive-Blend --------------------------------------------------------------------------
def test_adaptive_blend_poisons_half_the_pieces_and_tests_with_the_whole_trigger():
    trigger = noise(seed=9)
    attack = AdaptiveBlend(trigger=trigger, alpha=0.15, test_alpha=0.2, pieces=16, mask_rate=0.5)
    image, t = flat(100), as_float(trigger)
    x = as_float(image)
    poisoned = as_float(attack.poison_image(image, index=3))
    blended = np.clip(np.rint(x + 0.15 * (t - x)), 0, 255)
    kept = masked = 0
    for r in range(4):
        for c in range(4):
            piece = (slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
            if (poisoned[piece] == x[piece]).all():
                masked += 1
            else:
                assert (poisoned[piece] == blended[piece]).all()
                kept += 1
    assert (kept, masked) == (8, 8)
    assert (as_float(attack(image)) == np.clip(np.rint(x + 0.2 * (t - x)), 0, 255)).all()
    assert attack.cover_image(image, index=3).tobytes() == attack.poison_image(image, index=3).tobytes()
    masks = {attack.piece_mask(16, 16, i).tobytes() for i in range(10)}
    assert len(masks) > 5  # the pieces differ from row to row


# --- WaNet noise mode --------------------------------------------------------------------------
def test_wanet_noise_rows_move_each_pixel_by_at_most_half_a_pixel_more():
    ramp = np.tile(np.linspace(0, 255, 32), (32, 1))
    image = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    attack = WaNet(strength=0.0)  # identity warp: only the noise moves pixels
    covers = [as_float(attack.cover_image(image, index=i)) for i in range(3)]
    slope = 255 / 31  # grey levels per pixel
    for cover in covers:
        change = np.abs(cover - as_float(image))
        assert 0 < change.mean() and change.max() <= 0.5 * slope + 1  # offset in [-1, 1] / 32 of [-1, 1]
    assert covers[0].tobytes() != covers[1].tobytes()
    assert (as_float(attack.cover_image(image, index=1)) == covers[1]).all()
    assert attack(image).tobytes() == image.tobytes()


# --- SIG: the ramp signal and a stronger test-time signal ---------------------------------------
def test_sig_ramp_and_test_delta_follow_the_paper_formulas():
    attack = hbg.SIG(signal="ramp", delta=30, test_delta=60)
    poisoned = as_float(attack.poison_image(flat(100, (12, 4)), index=0, label=0))[..., 1]
    assert (poisoned == np.rint(100 + 30 * np.arange(12) / 12)[None, :]).all()
    test = as_float(attack(flat(100, (12, 4))))[..., 1]
    assert (test == np.rint(100 + 60 * np.arange(12) / 12)[None, :]).all()
    sine = hbg.SIG(delta=20, frequency=3, test_delta=40)
    expected = np.rint(100 + 40 * np.sin(2 * np.pi * np.arange(12) * 3 / 12))
    assert (as_float(sine(flat(100, (12, 4))))[..., 0] == expected[None, :]).all()
    assert hbg.SIG().test_delta == 20.0


# --- Label-Consistent trigger -------------------------------------------------------------------
def test_label_consistent_four_corner_trigger_follows_the_paper_pattern():
    base = np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]])  # bottom-right 3x3, +1 white, -1 black
    out = as_float(LabelConsistent()(flat(100, (8, 8))))[..., 0]
    expected = [((slice(5, 8), slice(5, 8)), base), ((slice(0, 3), slice(5, 8)), base),
                ((slice(0, 3), slice(0, 3)), base[:, ::-1]), ((slice(5, 8), slice(0, 3)), base[:, ::-1])]
    for corner, pattern in expected:
        assert (out[corner] == np.where(pattern > 0, 255, 0)).all()
    assert (out[3:5] == 100).all() and (out[:, 3:5] == 100).all()
    one = as_float(LabelConsistent(corners="bottom_right")(flat(100, (8, 8))))[..., 0]
    assert (one[5:, 5:] == np.where(base > 0, 255, 0)).all() and (one[:5] == 100).all()


def test_label_consistent_reduced_amplitude_on_poisoned_rows_full_at_test_time():
    attack = LabelConsistent(amplitude=0.25, corners="bottom_right")  # no surrogate: trigger only
    poisoned = as_float(attack.poison_image(flat(100, (6, 6)), index=0, label=0))[..., 2]
    base = np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]])
    assert (poisoned[3:, 3:] == np.rint(100 + 0.25 * 255 * base)).all()
    assert (as_float(attack(flat(100, (6, 6))))[3:, 3:, 2] == np.where(base > 0, 255, 0)).all()


# --- one bad-option test per option -----------------------------------------------------------
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FTrojan(magnitude=NAN), "FTrojan magnitude must be a finite number"),
        (lambda: FTrojan(window_size=0), "FTrojan window_size must be an int >= 1"),
        (lambda: FTrojan(window_size=16), r"FTrojan positions entry \(31, 31\): each index must be an int in \[0, 15\]"),
        (lambda: FTrojan(positions=[[1, 2, 3]]), "FTrojan positions must be \\(row, column\\) pairs"),
        (lambda: FTrojan(positions=[]), "at least one"),
        (lambda: FTrojan(channels=[3]), "FTrojan channels entry must be an int in \\[0, 2\\]"),
        (lambda: FTrojan(channels=[1, 1]), "FTrojan channels must be distinct"),
        (lambda: FTrojan(yuv="yes"), "FTrojan yuv must be True or False"),
        (lambda: BppAttack(squeeze_num=1), "BppAttack squeeze_num must be an int in \\[2, 256\\]"),
        (lambda: BppAttack(squeeze_num=8.0), "BppAttack squeeze_num must be an int"),
        (lambda: BppAttack(dithering=1), "BppAttack dithering must be True or False"),
        (lambda: AdaptiveBlend(trigger="kitty"), "Unknown AdaptiveBlend trigger 'kitty'"),
        (lambda: AdaptiveBlend(alpha=1.5), "AdaptiveBlend alpha must lie in \\[0, 1\\]"),
        (lambda: AdaptiveBlend(test_alpha=NAN), "AdaptiveBlend test_alpha must lie in"),
        (lambda: AdaptiveBlend(pieces=15), "AdaptiveBlend pieces must be a square number"),
        (lambda: AdaptiveBlend(pieces=0), "AdaptiveBlend pieces must be an int >= 1"),
        (lambda: AdaptiveBlend(mask_rate=-0.5), "AdaptiveBlend mask_rate must lie in"),
        (lambda: AdaptiveBlend(cover_ratio=INF), "AdaptiveBlend cover_ratio must lie in \\[0, inf\\)"),
        (lambda: AdaptiveBlend(seed=-1), "AdaptiveBlend seed must be an int"),
        (lambda: WaNet(cover_ratio=-1), "WaNet cover_ratio must lie in"),
        (lambda: hbg.SIG(signal="square"), "SIG signal must be one of"),
        (lambda: hbg.SIG(test_delta=INF), "SIG test_delta must lie in"),
        (lambda: LabelConsistent(surrogate=object()), "LabelConsistent surrogate must be a torch image classifier"),
        (lambda: LabelConsistent(epsilon=2.0), "LabelConsistent epsilon must lie in \\[0, 1\\]"),
        (lambda: LabelConsistent(steps=-1), "LabelConsistent steps must be an int >= 0"),
        (lambda: LabelConsistent(step_size=0), "LabelConsistent step_size must lie in \\(0, inf\\)"),
        (lambda: LabelConsistent(amplitude=0), "LabelConsistent amplitude must lie in \\(0, 1\\]"),
        (lambda: LabelConsistent(corners="left"), "LabelConsistent corners must be one of"),
        (lambda: LabelConsistent(seed=2**64), "LabelConsistent seed must be an int"),
    ],
)
def test_bad_options_name_the_option(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "make, size, message",
    [
        (lambda: FTrojan(), (16, 16), "FTrojan window_size 32 does not fit an image of 16x16"),
        (lambda: AdaptiveBlend(pieces=25), (4, 4), "5x5 grid of pieces does not fit an image of 4x4"),
        (lambda: LabelConsistent(), (2, 5), "3x3 trigger does not fit an image of 2x5"),
    ],
)
def test_triggers_that_do_not_fit_the_image(make, size, message):
    with pytest.raises(ValueError, match=message):
        make()(Image.new("RGB", size))


def test_every_new_attack_is_exported_at_the_top_level():
    for name in ("LabelConsistent", "FTrojan", "BppAttack", "AdaptiveBlend"):
        assert getattr(hbg, name).name in hbg.attacks.ATTACKS
