"""Post-defense checks (issue 21, point 3): the diffusion-model canary and the re-tuning check.

Real objects throughout: registered attacks, the shipped digits diffusion model, digits data and a small
classifier trained here in a couple of seconds. The canary's known answers come from "variations" built
in this file: one that returns its input (keeps every trigger, survival 1), one that returns the clean
image of the row (removes every trigger, survival 0), one that halves every contrast (survival 0.5) and a
blur.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import hf_backdoor_guard as hbg
from hf_backdoor_guard.pipeline import build_classifier
from hf_backdoor_guard.robustness_checks import (
    DEFAULT_CANARY_ATTACKS,
    SURVIVAL_THRESHOLD,
    compare_retuning,
    retuning_check,
    survival_score,
    trigger_survival,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return hbg.load_digits_dataset()


@pytest.fixture(scope="module")
def clean_images(digits):
    return [image.convert("RGB") for image in digits["test"].select(range(8))["image"]]


class Identity:
    """A "variation" that copies its input: every trigger survives."""

    def generate(self, images, indices):
        return [image.copy() for image in images]


class Purifier:
    """A perfect "variation": it returns the clean image of each row, whatever it is given."""

    def __init__(self, clean):
        self.clean = clean

    def generate(self, images, indices):
        return [self.clean[row].copy() for row in indices]


class SeededNoise:
    """A stochastic "variation" that ignores its input: seeded noise from the row index, plus a tenth of the input.

    Shared noise for the clean and triggered copies leaves exactly the tenth: survival 0.1 (up to rounding).
    With noise drawn independently per call, the score would be buried in noise.
    """

    def generate(self, images, indices):
        out = []
        for image, row in zip(images, indices):
            noise = np.random.default_rng(row).integers(0, 200, size=(image.height, image.width, 3))
            out.append(Image.fromarray(np.rint(noise + 0.1 * np.asarray(image, dtype=np.float64)).astype(np.uint8)))
        return out


def half_contrast(images, indices):
    """A plain callable "variation": every pixel halfway to mid-grey (128 + (x - 128) / 2)."""
    return [Image.fromarray(np.rint(128 + (np.asarray(image, dtype=np.float64) - 128) / 2).astype(np.uint8))
            for image in images]


class Blur:
    """Gaussian blurs: one output per radius and image (two radii exercise k > 1 variations per input)."""

    def __init__(self, *radii):
        self.radii = radii

    def generate(self, images, indices):
        return [image.filter(ImageFilter.GaussianBlur(radius)) for image in images for radius in self.radii]


def _weights(model) -> dict[str, bytes]:
    return {name: tensor.detach().cpu().numpy().tobytes() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(digits):
    """A small ResNet trained on clean digits for three epochs (about 2 s): it has no backdoor."""
    model, processor = build_classifier("small-resnet", 10, width=8, image_size=16, seed=0)
    train = digits["train"]
    pixels = processor(images=[image.convert("RGB") for image in train["image"]], return_tensors="pt")["pixel_values"]
    labels = torch.tensor(train["label"])
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), 32):
            batch = permutation[start : start + 32]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels[batch]).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return model, processor


@pytest.fixture(scope="module")
def eval_ds(digits):
    return digits["test"].select(range(80))


# --------------------------------------------------------------------------------------------------------
# (a) the canary: the formula
# --------------------------------------------------------------------------------------------------------
def test_survival_score_on_known_pixels():
    clean = np.zeros((1, 2))
    triggered = np.array([[10.0, 0.0]])  # r = (10, 0), |r|^2 = 100
    zero = np.zeros((1, 2))
    assert survival_score(clean, triggered, zero, np.array([[5.0, 7.0]])) == pytest.approx(0.5)  # 50 / 100
    assert survival_score(clean, triggered, zero, triggered) == pytest.approx(1.0)
    assert survival_score(clean, triggered, zero, np.array([[0.0, 9.0]])) == 0.0  # at right angles: not counted
    assert survival_score(clean, triggered, zero, np.array([[-10.0, 3.0]])) == pytest.approx(-1.0)
    # only the difference of the two variations counts, not where they are
    assert survival_score(clean, triggered, np.full((1, 2), 40.0), np.array([[60.0, 40.0]])) == pytest.approx(2.0)
    # PIL images, three channels: r = 30 on one pixel of one channel, d = 12 there -> 0.4
    base = np.full((2, 2, 3), 100, dtype=np.uint8)
    stamped = base.copy()
    stamped[0, 0, 1] = 130
    moved = base.copy()
    moved[0, 0, 1] = 112
    assert survival_score(Image.fromarray(base), Image.fromarray(stamped), Image.fromarray(base),
                          Image.fromarray(moved)) == pytest.approx(0.4)


def test_survival_score_refuses_no_trigger_and_shape_mismatch():
    with pytest.raises(ValueError, match="triggered equals clean"):
        survival_score(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="one shape"):
        survival_score(np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="varied_clean"):
        survival_score(np.zeros((2, 2)), np.ones((2, 2)), "image", np.ones((2, 2)))


# --------------------------------------------------------------------------------------------------------
# (a) the canary: variations with known answers
# --------------------------------------------------------------------------------------------------------
def test_identity_variation_keeps_every_trigger_and_fails(clean_images):
    report = trigger_survival(Identity(), clean_images)
    assert list(report.results) == list(DEFAULT_CANARY_ATTACKS)
    for result in report.results.values():
        assert result.survival == pytest.approx(1.0)
        assert result.images == len(clean_images) and result.survived
    assert not report.passed
    assert report.verdict.startswith("FAILED") and "badnets" in report.verdict
    assert report.to_dict()["results"]["border"]["survival"] == pytest.approx(1.0)


def test_purifier_removes_every_trigger_and_passes(clean_images):
    report = trigger_survival(Purifier(clean_images), clean_images)
    assert report.survival == {name: 0.0 for name in DEFAULT_CANARY_ATTACKS}
    assert report.passed and report.verdict.startswith("passed")
    assert report.threshold == SURVIVAL_THRESHOLD


def test_both_copies_get_the_same_noise(clean_images):
    report = trigger_survival(SeededNoise(), clean_images)
    for name, result in report.results.items():
        assert result.survival == pytest.approx(0.1, abs=0.02), name
        assert np.std(result.per_image) < 0.03, name


def test_half_contrast_callable_keeps_half(clean_images):
    # the whole path (triggering, both variations, projection) on a variation whose answer is known: 0.5
    report = trigger_survival(half_contrast, clean_images, ["badnets", "blended", "border", "tint"])
    for name, value in report.survival.items():
        assert value == pytest.approx(0.5, abs=0.02), name
    assert trigger_survival(half_contrast, clean_images, ["border"], threshold=0.6).passed
    assert not trigger_survival(half_contrast, clean_images, ["border"], threshold=0.4).passed


def test_blur_removes_fine_triggers_and_keeps_smooth_ones(clean_images):
    # A blur is a low-pass filter: it removes a trigger's fine detail and keeps its smooth part. SIG's stripes
    # are fine; Tint's brightness shift and LowFrequency's pattern are smooth. (Blended's residual,
    # 0.2 * (pattern - x), has a smooth part too: its mean shift and the darkened digit. A blur keeps about
    # half of it, while the embedded diffusion model keeps under 0.1.)
    names = ["sig", "badnets", "blended", "tint", "lowfreq"]
    report = trigger_survival(Blur(1.5, 2.0), clean_images, names)
    assert report["sig"].survival < 0.15
    assert report["badnets"].survival < 0.35
    assert report["tint"].survival > 0.8 and report["lowfreq"].survival > 0.7
    assert not report.passed and "tint" in report.verdict and "sig" not in report.verdict
    # a stronger blur keeps less of every trigger
    weaker = trigger_survival(Blur(1.0), clean_images, names)
    assert all(report[name].survival < weaker[name].survival for name in names)


def test_embedded_diffusion_model_drops_small_triggers(digits):
    variation = hbg.ImageVariation.embedded(num_variations=1)
    test = digits["test"]
    report = trigger_survival(variation, test, max_images=8)
    assert report["badnets"].survival < 0.15 and report["blended"].survival < 0.15
    assert 0.15 < report["border"].survival < SURVIVAL_THRESHOLD  # the content-like frame keeps about 0.3
    assert report.passed
    # same noise for both copies: without a trigger the two variations would be identical, so the score is
    # deterministic; a second run gives the same numbers
    again = trigger_survival(variation, test, ["badnets"], max_images=8)
    assert again["badnets"].per_image == report["badnets"].per_image


def test_canary_attack_forms_and_skips_unchanged_images(clean_images):
    white = Image.new("RGB", (16, 16), "white")
    images = [white] + clean_images[:3]
    # a white patch on a white image changes nothing: that image is skipped, the others are averaged
    report = trigger_survival(Identity(), images, {"white patch": hbg.BadNets(trigger="white")})
    assert report["white patch"].images == 3
    report = trigger_survival(Identity(), clean_images[:2], [hbg.Blended(ratio=0.1), "border"])
    assert list(report.results) == ["blended", "border"]


def test_canary_refuses_bad_inputs_naming_the_option(clean_images):
    cases = [
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(max_images=0), "max_images"),
        (dict(batch_size=0), "batch_size"),
        (dict(attacks=["no-such-attack"]), "attacks: unknown attack 'no-such-attack'"),
        (dict(attacks=[]), "attacks is empty"),
        (dict(attacks=["badnets", hbg.BadNets(size=2)]), "'badnets' is given twice"),
        (dict(attacks=[42]), "attacks"),
        (dict(attacks=3), "attacks must be"),
        (dict(attacks=[hbg.Border(width=8)]), "attacks: 'border' cannot trigger"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            trigger_survival(Identity(), clean_images, **options)
    with pytest.raises(ValueError, match="variation must be"):
        trigger_survival(42, clean_images)
    with pytest.raises(ValueError, match="images is empty"):
        trigger_survival(Identity(), [])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        trigger_survival(Identity(), [clean_images[0], "not an image"])
    with pytest.raises(ValueError, match="images must be"):
        trigger_survival(Identity(), clean_images[0])
    with pytest.raises(ValueError, match="leaves every canary image unchanged"):
        trigger_survival(Identity(), [Image.new("RGB", (16, 16), "white")], [hbg.BadNets(trigger="white")])
    with pytest.raises(ValueError, match="returned 3 images for 2 inputs"):
        trigger_survival(lambda images, indices: images + images[:1], clean_images[:2])


# --------------------------------------------------------------------------------------------------------
# (b) the re-tuning check
# --------------------------------------------------------------------------------------------------------
def test_retuning_changes_a_copy_and_never_the_model(trained, digits, eval_ds):
    model, processor = trained
    before = _weights(model)
    flags = [parameter.requires_grad for parameter in model.parameters()]
    result = retuning_check(model, processor, hbg.BadNets(), digits["train"], eval_ds, target_label=0, steps=3)
    assert _weights(model) == before  # byte-identical
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not model.training
    assert result.model is not model and _weights(result.model) != before  # the copy learnt
    assert len(result.attack_success_rate) == len(result.clean_accuracy) == 4 and len(result.loss) == 3
    assert len(result.samples) == 8 and all(digits["train"][row]["label"] != 0 for row in result.samples)
    assert retuning_check(model, processor, hbg.BadNets(), digits["train"], eval_ds, 0, steps=1,
                          keep_model=False).model is None


def test_retuning_brings_the_trigger_in_and_is_deterministic(trained, digits, eval_ds):
    model, processor = trained
    result = retuning_check(model, processor, hbg.BadNets(), digits["train"], eval_ds, target_label=0, steps=10,
                            samples=8)
    asr = result.attack_success_rate
    assert asr[0] < 0.2  # trained on clean digits: no backdoor to start with
    assert asr[-1] >= 0.5 and asr[-1] > asr[0] + 0.4  # eight triggered samples and a few steps plant it
    assert result.loss[-1] < result.loss[0]
    assert result.steps_to(0.5) is not None and 0 < result.steps_to(0.5) <= 10
    assert result.clean_accuracy[0] > 0.7
    again = retuning_check(model, processor, hbg.BadNets(), digits["train"], eval_ds, target_label=0, steps=10,
                           samples=8)
    assert again.attack_success_rate == asr and again.loss == result.loss and again.samples == result.samples
    mixed = retuning_check(model, processor, hbg.BadNets(), digits["train"], eval_ds, 0, steps=2, clean_samples=4)
    assert len(mixed.clean_samples) == 4 and not set(mixed.clean_samples) & set(mixed.samples)


def test_compare_retuning_reports_steps_for_both(trained, digits, eval_ds):
    model, processor = trained
    train = digits["train"]
    # the same model twice: the same curve, and no verdict against it
    same = compare_retuning(model, copy.deepcopy(model), processor, hbg.BadNets(), train, eval_ds, 0, steps=10)
    assert same.model.attack_success_rate == same.reference.attack_success_rate
    assert same.steps_model == same.steps_reference is not None and not same.reactivates_faster
    # a backdoored model (the re-tuned copy) against the clean one: it is there from step 0
    backdoored = same.model.model
    before = _weights(backdoored), _weights(model)
    compared = compare_retuning(backdoored, model, processor, hbg.BadNets(), train, eval_ds, 0, steps=10)
    assert compared.steps_model == 0 and compared.steps_reference > 0 and compared.reactivates_faster
    assert "comes back faster" in compared.verdict
    assert (_weights(backdoored), _weights(model)) == before
    assert compared.to_dict()["steps_model"] == 0


def test_retuning_refuses_bad_inputs_naming_the_option(trained, digits, eval_ds):
    model, processor = trained
    train = digits["train"]
    attack = hbg.BadNets()
    cases = [
        (dict(steps=0), "steps"),
        (dict(samples=0), "samples"),
        (dict(samples=10_000), "samples=10000"),
        (dict(clean_samples=-1), "clean_samples"),
        (dict(clean_samples=10_000), "clean_samples"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(seed=-1), "seed"),
        (dict(batch_size=0), "batch_size"),
        (dict(train_mode="yes"), "train_mode"),
        (dict(keep_model=1), "keep_model"),
        (dict(target_label=10), "target_label"),
        (dict(target_label="0"), "target_label"),
        (dict(attack="badnets"), "attack must be"),
        (dict(model="resnet"), "model must be"),
        (dict(train_rows=train.remove_columns("label")), "train_rows: Label column 'label' not found"),
        (dict(eval_ds=[1, 2]), "eval_ds"),
    ]
    before = _weights(model)
    for options, message in cases:
        arguments = dict(model=model, processor=processor, attack=attack, train_rows=train, eval_ds=eval_ds,
                         target_label=0)
        arguments.update(options)
        with pytest.raises(ValueError, match=message):
            retuning_check(**arguments)
    assert _weights(model) == before
    with pytest.raises(ValueError, match="threshold"):
        compare_retuning(model, model, processor, attack, train, eval_ds, 0, threshold=0)
    with pytest.raises(ValueError, match="Unknown option"):
        compare_retuning(model, model, processor, attack, train, eval_ds, 0, lr=0.1)
    with pytest.raises(ValueError, match="reference_model"):
        compare_retuning(model, None, processor, attack, train, eval_ds, 0)
