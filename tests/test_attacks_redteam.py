"""The red-team attacks (issue 21): content-like triggers and the trigger optimised to survive the variations.

Formulas are checked on known pixels; the optimised trigger runs a tiny budget on a tiny
UNet built in code and on the embedded model.
"""

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hf_backdoor_guard.attacks import (ATTACKS, Border, LowFrequency, Stroke, SurvivingTrigger, Tint,
                                       attack_from_name)
from hf_backdoor_guard.attacks import surviving as surviving_module
from hf_backdoor_guard.attacks.surviving import optimise_surviving_pattern

from tiny_pipelines import build_ddim

NEW = ("lowfreq", "border", "tint", "stroke", "surviving")
#: options that keep each attack fast on small images (the optimised one: one step of two images)
SMALL = {"lowfreq": {}, "border": {"width": 1}, "tint": {}, "stroke": {},
         "surviving": {"iterations": 1, "batch_size": 2}}
NAN = float("nan")


def flat(value=128, size=(16, 16)):
    return Image.new("RGB", size, (value,) * 3)


def pixels(image):
    return np.asarray(image).astype(np.int64)


def noisy(size=(9, 7), seed=0, mode="RGB"):
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


# --- registration and the attack contract -----------------------------------------------------
def test_registered_after_the_zoo_in_order_and_exported():
    assert tuple(ATTACKS.names()[-len(NEW):]) == NEW
    assert ATTACKS.names()[:9] == ["badnets", "blended", "wanet", "sig", "label_consistent", "ftrojan", "bpp",
                                   "adaptive_blend", "adaptive_patch"]
    for cls, name in ((LowFrequency, "lowfreq"), (Border, "border"), (Tint, "tint"), (Stroke, "stroke"),
                      (SurvivingTrigger, "surviving")):
        assert ATTACKS[name] is cls and not cls.clean_label and cls.cover_ratio == 0


@pytest.mark.parametrize("name", NEW)
def test_contract_any_mode_deterministic_picklable_and_round_trips(name):
    attack, again = attack_from_name(name, **SMALL[name]), attack_from_name(name, **SMALL[name])
    for mode in ("L", "RGBA", "P", "I;16", "RGB"):
        image = noisy(mode=mode)
        before = image.tobytes()
        out = attack(image, index=3)
        assert out.mode == "RGB" and out.size == (9, 7) and image.tobytes() == before
    for size in ((9, 7), (16, 16), (33, 20)):
        image = noisy(size, seed=1)
        first = attack(image, 0)
        assert first.tobytes() == again(image, 7).tobytes() == attack.poison_image(image, 5, 0).tobytes()
        assert first.tobytes() != image.tobytes()
    clone = pickle.loads(pickle.dumps(attack))
    assert clone(noisy((16, 16)), 2).tobytes() == attack(noisy((16, 16)), 2).tobytes()
    rebuilt = attack_from_name(name, **attack.config())
    assert repr(rebuilt) == repr(attack) and rebuilt(noisy((16, 16))).tobytes() == attack(noisy((16, 16))).tobytes()


# --- formulas on known pixels --------------------------------------------------------------------
def test_lowfreq_adds_the_scaled_low_frequency_cosines_to_every_channel():
    attack = LowFrequency(amplitude=40.0, frequencies=3, seed=5)
    out = pixels(attack(flat(128)))
    weights = attack.weights()
    assert weights.shape == (3, 3) and weights[0, 0] == 0
    expected = np.zeros((16, 16))
    for i in range(16):
        for j in range(16):
            expected[i, j] = sum(weights[u, v] * math.cos(math.pi * u * (i + 0.5) / 16) *
                                 math.cos(math.pi * v * (j + 0.5) / 16) for u in range(3) for v in range(3))
    expected = np.rint(128 + 40.0 * expected / np.abs(expected).max())
    assert (out == expected[..., None]).all()
    assert np.abs(out - 128).max() == 40  # the peak is the amplitude
    # low-pass: the change has no energy above the chosen frequencies (up to rounding to integers)
    from scipy.fft import dctn

    spectrum = dctn(out[..., 0] - 128.0, norm="ortho")
    assert np.abs(spectrum[3:]).max() < 1.5 and np.abs(spectrum[:, 3:]).max() < 1.5


def test_lowfreq_pattern_is_the_same_shape_at_any_size_and_clips():
    attack = LowFrequency(amplitude=255.0)
    small, large = attack.pattern(16, 16), attack.pattern(48, 48)
    # pixel k of 16 and pixel 3k + 1 of 48 have the same centre: the same picture, sampled finer
    assert np.corrcoef(large[1::3, 1::3].ravel(), small.ravel())[0, 1] > 0.9999
    black, white = pixels(attack(flat(0))), pixels(attack(flat(255)))
    assert black.min() == 0 and white.max() == 255  # the half of the wrong sign is clipped
    assert max(black.max(), 255 - white.min()) == 255  # the peak is the amplitude


def test_border_blends_the_frame_and_leaves_the_inside():
    out = pixels(Border(width=2, color="#ff0000", alpha=0.5)(flat(100, (8, 6))))
    frame = np.ones((6, 8), dtype=bool)
    frame[2:4, 2:6] = False
    assert (out[frame] == [178, 50, 50]).all()  # 100 + 0.5 * (255 - 100) = 177.5 -> 178; 100 + 0.5 * (0 - 100) = 50
    assert (out[~frame] == 100).all()
    assert (pixels(Border()(flat(0)))[[0, 1, 14, 15]] == 255).all()  # defaults: white, 2 px, opaque


def test_tint_moves_every_pixel_towards_the_color():
    assert (pixels(Tint()(flat(100))) == 131).all()  # 100 + 0.2 * (255 - 100)
    assert (pixels(Tint()(flat(0))) == 51).all() and (pixels(Tint()(flat(255))) == 255).all()
    out = pixels(Tint(color="#0080ff", strength=0.5)(flat(100)))
    assert (out == [50, 114, 178]).all()  # (100 + 0) / 2, (100 + 128) / 2, (100 + 255) / 2 = 177.5 -> 178


def test_stroke_bar_coverage_on_known_pixels():
    # Defaults at 16 px: centre (13.44, 11.52), half length 2.56, width 2.56 (coverage 1.78 - distance)
    out = pixels(Stroke()(flat(0)))[..., 0]
    assert out[13, 11] == 255 and out[13, 9] == 255 and out[13, 14] == 255  # on the centre line
    assert out[12, 11] == 214  # distance 0.94: 0.84 * 255 = 214.2
    assert out[13, 15] == 91  # past the end: distance hypot(0.06, 1.42) = 1.4213, 0.3587 * 255 = 91.5 -> 91
    assert out[11, 11] == 0 and out[13, 4] == 0 and out[:10].max() == 0
    grey = pixels(Stroke(color="#000000")(flat(200)))[..., 0]
    assert grey[12, 11] == 32  # 200 + 0.84 * (0 - 200) = 32.0


def test_stroke_ring_coverage_on_known_pixels():
    # centre (8, 8), radius 4, width 2: coverage 1.5 - |r - 4|
    out = pixels(Stroke(shape="ring", row=0.5, column=0.5, size=0.5, width=0.125)(flat(0)))[..., 0]
    assert out[7, 7] == 0 and out[8, 8] == 0  # the hole
    assert out[8, 12] == 248  # r = hypot(0.5, 4.5) = 4.528: 0.972 * 255 = 247.9
    assert out[4, 7] == 255  # r = hypot(3.5, 0.5) = 3.536: full
    assert out[0, 0] == 0


@pytest.mark.parametrize("make, message", [
    (lambda: LowFrequency(amplitude=0), "LowFrequency amplitude must lie in"),
    (lambda: LowFrequency(amplitude=NAN), "LowFrequency amplitude must lie in \\(0, 255\\]"),
    (lambda: LowFrequency(frequencies=1), "LowFrequency frequencies must be an int >= 2"),
    (lambda: LowFrequency(seed=-1), "LowFrequency seed must be an int"),
    (lambda: Border(width=0), "Border width must be an int >= 1"),
    (lambda: Border(color="white"), "Border color: 'white' is not a color"),
    (lambda: Border(alpha=0), "Border alpha must lie in \\(0, 1\\]"),
    (lambda: Tint(color="#12345"), "Tint color"),
    (lambda: Tint(strength=1.5), "Tint strength must lie in \\(0, 1\\]"),
    (lambda: Stroke(shape="star"), "Stroke shape must be one of"),
    (lambda: Stroke(row=1.2), "Stroke row must lie in \\[0, 1\\]"),
    (lambda: Stroke(column=-0.1), "Stroke column must lie in"),
    (lambda: Stroke(size=0), "Stroke size must lie in \\(0, 1\\]"),
    (lambda: Stroke(width=NAN), "Stroke width must lie in \\(0, 1\\]"),
    (lambda: Stroke(color=3), "Stroke color"),
    (lambda: SurvivingTrigger(epsilon=0), "SurvivingTrigger epsilon must lie in \\(0, 1\\]"),
    (lambda: SurvivingTrigger(iterations=-1), "SurvivingTrigger iterations must be an int >= 0"),
    (lambda: SurvivingTrigger(batch_size=0), "SurvivingTrigger batch_size must be an int >= 1"),
    (lambda: SurvivingTrigger(step_size=0), "SurvivingTrigger step_size must lie in \\(0, inf\\)"),
    (lambda: SurvivingTrigger(strength=1.5), "SurvivingTrigger strength must lie in \\(0, 1\\]"),
    (lambda: SurvivingTrigger(num_inference_steps=0), "SurvivingTrigger num_inference_steps must be an int >= 1"),
    (lambda: SurvivingTrigger(num_inference_steps=1, strength=0.5), "no denoising step would run"),
    (lambda: SurvivingTrigger(eta=-1), "SurvivingTrigger eta must lie in \\[0, inf\\)"),
    (lambda: SurvivingTrigger(diffusion=object()), "SurvivingTrigger diffusion must be None"),
    (lambda: SurvivingTrigger(clean_images=[]), "SurvivingTrigger clean_images must be None"),
    (lambda: SurvivingTrigger(clean_images=np.zeros((2, 4, 4, 3))), "SurvivingTrigger clean_images as an array"),
    (lambda: SurvivingTrigger(seed=2**64), "SurvivingTrigger seed must be an int"),
])
def test_bad_options_name_the_option(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_border_with_no_inside_is_refused():
    with pytest.raises(ValueError, match="Border of width 4 leaves no inside in an image of 8x10"):
        Border(width=4)(flat(0, (8, 10)))


# --- the optimised trigger -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    pipeline, _ = build_ddim()  # 32 px, random weights
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    return pipeline, images


def test_optimisation_is_deterministic_within_budget_and_leaves_the_model_as_it_was(tiny):
    pipeline, images = tiny
    options = dict(epsilon=8 / 255, iterations=2, batch_size=2, step_size=2 / 255, strength=0.6,
                   num_inference_steps=5, eta=1.0)
    torch.set_num_threads(2)
    try:
        first = optimise_surviving_pattern(pipeline.unet, pipeline.scheduler, images, seed=3, **options)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(1)
    again = optimise_surviving_pattern(pipeline.unet, pipeline.scheduler, images, seed=3, **options)
    other = optimise_surviving_pattern(pipeline.unet, pipeline.scheduler, images, seed=4, **options)
    assert first.shape == (32, 32, 3) and (first == again).all() and (first != other).any()
    assert np.abs(first).max() <= 8 and (first == np.rint(first)).all() and np.abs(first).max() > 0
    assert all(parameter.requires_grad for parameter in pipeline.unet.parameters())
    # the gradient steps moved the random start
    start = optimise_surviving_pattern(pipeline.unet, pipeline.scheduler, images, seed=3,
                                       **{**options, "iterations": 0})
    assert (start != first).any()


def test_the_attack_adds_its_pattern_caches_it_and_pickles_it(tiny, monkeypatch):
    pipeline, images = tiny
    surviving_module._PATTERNS.clear()
    calls = []
    real = surviving_module.optimise_surviving_pattern
    monkeypatch.setattr(surviving_module, "optimise_surviving_pattern",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    options = dict(diffusion=pipeline, clean_images=images, epsilon=16 / 255, iterations=1, batch_size=2, seed=1)
    attack = SurvivingTrigger(**options)
    assert attack.config()["diffusion"] == "<DDIMPipeline>" and attack.config()["clean_images"] == "<6 images>"
    assert (attack.strength, attack.num_inference_steps, attack.eta) == (0.6, 10, 1.0)  # the embedded defaults
    pattern = attack.pattern()
    assert pattern.shape == (32, 32, 3) and np.abs(pattern).max() <= 16
    out = pixels(attack(flat(128, (32, 32))))
    assert (out == 128 + pattern).all()  # out = x + delta, no clipping at mid grey
    black = pixels(attack(flat(0, (32, 32))))
    assert (black == np.clip(pattern, 0, None)).all()
    resized = pixels(attack(flat(128, (8, 8))))
    assert np.abs(resized - 128).max() <= 16
    fingerprint = attack.fingerprint()
    assert SurvivingTrigger(**options).fingerprint() == fingerprint and len(calls) == 1  # optimised once
    assert SurvivingTrigger(**{**options, "seed": 2}).fingerprint() != fingerprint
    clone = pickle.loads(pickle.dumps(attack))
    assert clone._pattern is not None and clone(flat(128, (32, 32))).tobytes() == attack(flat(128, (32, 32))).tobytes()
    assert len(calls) == 2


def test_it_reads_the_settings_of_the_variation_it_attacks(tiny):
    from hf_backdoor_guard.variations import ImageVariation

    pipeline, _ = tiny
    variation = ImageVariation(pipeline, strength=0.4, num_inference_steps=5, eta=0.5, color_transfer=False)
    attack = SurvivingTrigger(diffusion=variation)
    assert (attack.strength, attack.num_inference_steps, attack.eta) == (0.4, 5, 0.5)
    assert SurvivingTrigger(diffusion=variation, strength=0.8).strength == 0.8  # explicit options win


def test_on_the_embedded_model_with_a_tiny_budget():
    surviving_module._PATTERNS.clear()
    attack = SurvivingTrigger(iterations=2, batch_size=2, seed=7)
    pattern = attack.pattern()
    assert pattern.shape == (16, 16, 3) and np.abs(pattern).max() <= 32
    surviving_module._PATTERNS.clear()
    assert (SurvivingTrigger(iterations=2, batch_size=2, seed=7).pattern() == pattern).all()  # recomputed, equal
    digit = Image.fromarray(np.asarray(flat(0)))
    assert (pixels(attack(digit)) == np.clip(pattern, 0, 255)).all()
