import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
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


def four_class_set(rows=8):
    return Dataset.from_dict({"image": [PILImage.new("RGB", (16, 16))] * rows, "label": [i % 4 for i in range(rows)]},
                             features=Features({"image": Image(), "label": ClassLabel(num_classes=4)}))


def test_a_model_with_fewer_labels_than_the_test_set_is_refused_before_work():
    """Regression (issue 16, defect 5): a 2-label model on a 4-class set reported ASR 0.0."""
    model, processor = tiny_vit(num_labels=2)
    ds = four_class_set()
    with pytest.raises(ValueError, match=r"2 labels.*4 classes"):
        hbg.evaluate_backdoor(model, ds, hbg.BadNets(size=4), target_label=3, image_processor=processor)
    with pytest.raises(ValueError, match=r"2 labels.*4 classes"):
        hbg.predict_logits(model, ds, processor)
    plain_ints = Dataset.from_dict({"image": [PILImage.new("RGB", (16, 16))] * 4, "label": [0, 1, 2, 3]},
                                   features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(ValueError, match=r"2 labels.*4 classes"):
        hbg.predict_logits(model, plain_ints, processor)
    # The metrics check the labels they are given against the model's number of labels too.
    with pytest.raises(ValueError, match=r"num_labels=2.*3"):
        hbg.attack_success_rate([0, 1], 3, original_labels=[0, 1], num_labels=2)
    with pytest.raises(ValueError, match=r"num_labels=2.*3"):
        hbg.clean_accuracy([0, 1], [3, 1], num_labels=2)
    with pytest.raises(ValueError, match=r"num_labels=2.*3"):
        hbg.load_metric("robust_accuracy").compute(predictions=[0, 1], references=[3, 1], num_labels=2)
    # Prediction without labels (or with labels of another kind) needs no check.
    assert hbg.predict_logits(model, ds.remove_columns("label"), processor).shape == (8, 2)


def test_evaluate_modules_give_the_numbers_of_the_plain_functions():
    """The library computes with the plain functions; the shipped evaluate modules are wrappers of them."""
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    expected = {
        "clean_accuracy": hbg.clean_accuracy(predictions, references),
        "attack_success_rate": hbg.attack_success_rate(predictions, 2, original_labels=references),
        "robust_accuracy": hbg.robust_accuracy(predictions, references, target_label=2),
    }
    assert expected["clean_accuracy"] == pytest.approx(np.mean(predictions == references))
    for name, value in expected.items():
        kwargs = {} if name == "clean_accuracy" else {"target_label": 2}
        got = hbg.load_metric(name).compute(predictions=predictions, references=references, **kwargs)
        assert got == {name: pytest.approx(value, abs=0)}, name
    scores, truth = rng.random(200), rng.random(200) < 0.2
    module = hbg.load_metric("poison_detection").compute(predictions=scores, references=truth.astype(int), threshold=0.7)
    assert module == pytest.approx(hbg.detection_metrics(scores, truth, threshold=0.7))


def test_auroc_is_sklearns_and_nan_without_one_class():
    from sklearn.metrics import roc_auc_score

    from hf_backdoor_guard.metrics import auroc

    scores, truth = [0.1, 0.4, 0.4, 0.8, 0.3], [False, True, False, True, False]
    assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores)) == pytest.approx(5.5 / 6)
    assert math.isnan(auroc([0.2, 0.3], [True, True])) and math.isnan(auroc([0.2, 0.3], [False, False]))


def test_a_registered_backdoor_metric_appears_in_results_and_cards():
    """A new backdoor metric is one function and one registration line (issue 14.1)."""
    from hf_backdoor_guard import metrics
    from hf_backdoor_guard.hub import cards
    from hf_backdoor_guard.hub import publish as hub
    from hf_backdoor_guard.metrics import BACKDOOR, METRICS, BackdoorPredictions, Metric

    def clean_target_rate(p: BackdoorPredictions) -> float:
        return float(np.mean(p.clean_predictions == p.target_label))

    METRICS.register(Metric("clean_target_rate", clean_target_rate, "Clean target rate (CTR)", "CTR", BACKDOOR,
                            description="share of clean test images classified as the target class.",
                            higher_is_better=False))
    try:
        model, processor = tiny_vit()
        ds = four_class_set(12)
        result = hbg.evaluate_backdoor(model, ds, hbg.BadNets(size=4), target_label=1, image_processor=processor)
        assert list(result) == ["clean_accuracy", "attack_success_rate", "robust_accuracy", "clean_target_rate"]
        clean = hbg.predict_logits(model, ds, processor).argmax(1)
        assert result["clean_target_rate"] == pytest.approx(np.mean(clean == 1))
        assert "clean_target_rate" in metrics.METRIC_NAMES and "clean_target_rate" in hub.METRIC_KEYS

        card = cards.build_model_card("hbg/x", {"badnets": result})
        assert "| Attack | C-Acc (higher is better) | ASR (lower is better) | R-Acc (higher is better) | " \
               "CTR (lower is better) |" in card.text
        assert "- **CTR**: share of clean test images classified as the target class." in card.text
        assert f"{100 * result['clean_target_rate']:.2f}% |" in card.text
        assert "Clean target rate (CTR)" in str(card.data.to_dict()["model-index"])
        assert cards.card_metrics(card) == {"badnets": pytest.approx(result, abs=1e-6)}
        with pytest.raises(ValueError, match=r"lacks \['clean_target_rate'\]"):  # every card states every metric
            cards.build_model_card("hbg/x", {"badnets": {k: v for k, v in result.items() if k != "clean_target_rate"}})
    finally:
        METRICS.unregister("clean_target_rate")
    assert "clean_target_rate" not in hub.METRIC_KEYS
    with pytest.raises(ValueError, match="Unknown metric 'clean_target_rate'"):
        hbg.load_metric("clean_target_rate")
