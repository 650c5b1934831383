import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

import hf_backdoor_guard as hbg
from hf_backdoor_guard.metrics import METRIC_NAMES

PREDICTIONS = [0, 0, 1, 2, 0, 3]
ORIGINAL = [1, 2, 1, 0, 0, 3]  # rows 3 and 4 are of the target class 0


def test_plain_metrics_on_hand_made_predictions():
    assert hbg.clean_accuracy(PREDICTIONS, ORIGINAL) == pytest.approx(3 / 6)
    # non-target rows: 0, 1, 2, 5 -> predicted 0, 0, 1, 3
    assert hbg.attack_success_rate(PREDICTIONS, 0, original_labels=ORIGINAL) == pytest.approx(2 / 4)
    assert hbg.attack_success_rate(PREDICTIONS, 0) == pytest.approx(3 / 6)
    assert hbg.robust_accuracy(PREDICTIONS, ORIGINAL, target_label=0) == pytest.approx(2 / 4)
    assert hbg.robust_accuracy(PREDICTIONS, ORIGINAL) == pytest.approx(3 / 6)
    assert math.isnan(hbg.clean_accuracy([], []))
    with pytest.raises(ValueError, match="equal length"):
        hbg.clean_accuracy([1, 2], [1])


def test_evaluate_modules_load_by_path_offline_and_match():
    asr = hbg.load_metric("attack_success_rate").compute(predictions=PREDICTIONS, references=ORIGINAL, target_label=0)
    racc = hbg.load_metric("robust_accuracy").compute(predictions=PREDICTIONS, references=ORIGINAL, target_label=0)
    cacc = hbg.load_metric("clean_accuracy").compute(predictions=PREDICTIONS, references=ORIGINAL)
    assert asr == {"attack_success_rate": pytest.approx(0.5)}
    assert racc == {"robust_accuracy": pytest.approx(0.5)}
    assert cacc == {"clean_accuracy": pytest.approx(0.5)}
    metric = hbg.load_metric("clean_accuracy")
    metric.add_batch(predictions=[1, 1], references=[1, 0])
    metric.add_batch(predictions=[2], references=[2])
    assert metric.compute()["clean_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="Unknown metric"):
        hbg.load_metric("accuracy")
    assert set(METRIC_NAMES) == {"clean_accuracy", "attack_success_rate", "robust_accuracy", "poison_detection"}


def tiny_vit(num_labels=4):
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=num_labels)
    return ViTForImageClassification(config).eval(), ViTImageProcessor(size={"height": 16, "width": 16})


def test_evaluate_backdoor_matches_a_manual_computation(tmp_path):
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), mode="L") for _ in range(24)]
    ds = Dataset.from_dict({"image": images, "label": [i % 4 for i in range(24)]},
                           features=Features({"image": Image(), "label": ClassLabel(num_classes=4)}))
    model, processor = tiny_vit()
    attack = hbg.BadNets(size=4)
    result = hbg.evaluate_backdoor(model, ds, attack, target_label=2, image_processor=processor, batch_size=5)

    def manual(images):
        pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return model(pixel_values=pixels).logits.argmax(-1).numpy()

    clean = manual(images)
    rows = [i for i in range(24) if i % 4 != 2]
    triggered = manual([attack(images[i], index=i) for i in rows])
    original = np.array([i % 4 for i in rows])
    assert result["clean_accuracy"] == pytest.approx(np.mean(clean == np.arange(24) % 4))
    assert result["attack_success_rate"] == pytest.approx(np.mean(triggered == 2))
    assert result["robust_accuracy"] == pytest.approx(np.mean(triggered == original))

    # The processor saved beside the model is found when none is passed; results agree.
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    again = hbg.evaluate_backdoor(loaded, ds, attack, target_label=2, batch_size=64)
    assert again == pytest.approx(result)
    assert not loaded.training  # evaluation leaves the mode as it found it (from_pretrained gives eval)


def test_evaluate_backdoor_errors():
    model, processor = tiny_vit()
    ds = Dataset.from_dict({"image": [PILImage.new("RGB", (16, 16))] * 4, "label": [0, 1, 2, 3]},
                           features=Features({"image": Image(), "label": ClassLabel(num_classes=4)}))
    with pytest.raises(ValueError, match="image_processor is required"):
        hbg.evaluate_backdoor(model, ds, hbg.BadNets())
    with pytest.raises(ValueError, match="Label column 'y' not found"):
        hbg.evaluate_backdoor(model, ds, hbg.BadNets(), image_processor=processor, label_column="y")
    with pytest.raises(ValueError, match="batch_size must be"):
        hbg.predict_logits(model, ds, processor, batch_size=0)
