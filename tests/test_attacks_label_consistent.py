"""Label-Consistent with a real (tiny, random) transformers surrogate: PGD, determinism, caching, loading."""

import pickle

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from tiny_classifiers import tiny_resnet, tiny_vit

import hf_backdoor_guard as hbg
from hf_backdoor_guard.attacks import LabelConsistent


def digits_like(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict({"image": images, "label": [i % 4 for i in range(n)]},
                             features=Features({"image": Image(), "label": ClassLabel(num_classes=4)}))


def surrogate_loss(model, processor, image, label):
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    return torch.nn.functional.cross_entropy(logits, torch.tensor([label])).item()


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_labels=4, image_size=32)


def test_pgd_stays_in_the_budget_and_raises_the_surrogate_loss(vit):
    model, processor = vit
    attack = LabelConsistent(model, processor, epsilon=8 / 255, steps=10, seed=1)
    image = digits_like(1)[0]["image"]
    pixels = np.asarray(image)
    for label in range(4):
        adversarial = attack.perturb(pixels.copy(), label, index=0)
        assert np.abs(adversarial.astype(int) - pixels).max() <= 8 + 1  # 8/255 budget, plus rounding
        before = surrogate_loss(model, processor, image, label)
        after = surrogate_loss(model, processor, PILImage.fromarray(adversarial), label)
        assert after > before, label


def test_poisoned_rows_are_perturbed_then_stamped_test_rows_only_stamped(vit):
    model, processor = vit
    attack = LabelConsistent(model, processor, epsilon=16 / 255, steps=3)
    image = digits_like(1, seed=2)[0]["image"]
    poisoned = np.asarray(attack.poison_image(image, index=4, label=1)).astype(int)
    test = np.asarray(attack(image, index=4)).astype(int)
    x = np.asarray(image).astype(int)
    inner = (slice(3, -3), slice(3, -3))  # away from the corner patches
    assert (test[inner] == x[inner]).all() and 0 < np.abs(poisoned[inner] - x[inner]).max() <= 17
    assert (poisoned[-3:, -3:] == test[-3:, -3:]).all()  # full-amplitude trigger on both
    assert attack.poison_image(image, index=4, label=1).tobytes() == attack.poison_image(image, 4, 1).tobytes()
    assert attack.poison_image(image, index=5, label=1).tobytes() != attack.poison_image(image, 4, 1).tobytes()
    with pytest.raises(ValueError, match="needs the row's label"):
        attack.poison_image(image, index=4)


def test_the_differentiable_processor_matches_the_real_one(vit):
    model, processor = vit
    attack = LabelConsistent(model, processor)
    image = digits_like(1, seed=3)[0]["image"]
    prepare, size = attack._cached(attack._make_inputs, 16, 16)
    mine = prepare(torch.from_numpy(np.asarray(image).astype(np.float32) / 255).permute(2, 0, 1)[None])
    real = processor(images=image, return_tensors="pt")["pixel_values"]
    assert size == (32, 32) and mine.shape == real.shape
    assert (mine - real).abs().mean() < 0.05  # same resize family and normalisation; PIL vs torch kernels differ


def test_inside_poison_dataset_clean_label_cached_and_picklable(vit, tmp_path):
    model, processor = vit
    ds = digits_like(12)
    attack = LabelConsistent(model, processor, steps=2)
    out = hbg.poison_dataset(ds, attack, target_label=2, rate=1.0)
    hit = np.flatnonzero(out["poisoned"])
    assert list(hit) == [2, 6, 10] and out["label"] == ds["label"] and not any(out["cover"])
    expected = attack.poison_image(ds[6]["image"], index=6, label=2)
    assert np.array_equal(np.asarray(out[6]["image"]), np.asarray(expected))
    again = hbg.poison_dataset(ds, LabelConsistent(model, processor, steps=2), target_label=2, rate=1.0)
    assert again._fingerprint == out._fingerprint  # fingerprint from the weights, not from pickling the model
    clone = pickle.loads(pickle.dumps(attack))
    assert clone.fingerprint() == attack.fingerprint()
    assert clone.poison_image(ds[6]["image"], 6, 2).tobytes() == expected.tobytes()


def test_the_fingerprint_follows_the_weights_and_options(vit):
    model, processor = vit
    other, _ = tiny_vit(num_labels=4, image_size=32, seed=1)
    first = LabelConsistent(model, processor).fingerprint()
    assert first == LabelConsistent(model, processor).fingerprint()
    assert first != LabelConsistent(other, processor).fingerprint()
    assert first != LabelConsistent(model, processor, epsilon=8 / 255).fingerprint()
    assert LabelConsistent().fingerprint() is None  # no model: datasets hashes the attack as usual


def test_a_surrogate_folder_is_loaded_safely(tmp_path):
    model, processor = tiny_resnet(num_labels=4)
    model.save_pretrained(tmp_path / "with")
    processor.save_pretrained(tmp_path / "with")
    attack = LabelConsistent(surrogate=str(tmp_path / "with"), steps=1)
    assert attack.config()["surrogate"] == str(tmp_path / "with")
    out = attack.poison_image(digits_like(1)[0]["image"], index=0, label=0)
    assert out.mode == "RGB" and out.size == (16, 16)
    model.save_pretrained(tmp_path / "without")
    with pytest.raises(ValueError, match="needs the surrogate's image processor"):
        LabelConsistent(surrogate=str(tmp_path / "without"))
