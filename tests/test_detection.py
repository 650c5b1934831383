import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from sklearn.metrics import roc_auc_score
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

import hf_backdoor_guard as hbg
from hf_backdoor_guard.detection import flag, otsu_threshold

# Three rows, target class 0. Row 1 is poisoned: labelled 0, true class 2. The teacher
# predicts the label on the triggered original, but class 2 on its variations.
ORIGINAL = np.log(np.array([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]))
VARIATIONS = np.log(np.array([
    [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],      # row 0, agrees with itself
    [0.1, 0.1, 0.8], [0.3, 0.1, 0.6],      # row 1, the trigger is gone
    [0.1, 0.1, 0.8], [0.1, 0.2, 0.7],      # row 2
]))
SOURCE = [0, 0, 1, 1, 2, 2]
LABELS = [1, 0, 2]


def test_each_score_on_hand_made_teacher_outputs():
    p_var_row1 = np.array([0.2, 0.1, 0.7])
    kl, predicted = hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS, score="kl")
    p_orig_row1 = np.array([0.9, 0.05, 0.05])
    assert kl[1] == pytest.approx(np.sum(p_orig_row1 * np.log(p_orig_row1 / p_var_row1)))
    assert list(predicted) == [1, 2, 2]
    assert np.argmax(kl) == 1
    disagreement, _ = hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS, score="disagreement")
    assert disagreement == pytest.approx([1 - 0.75, 1 - 0.2, 1 - 0.75])
    drop, _ = hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS, score="label_drop")
    assert drop == pytest.approx([0.8 - 0.75, 0.9 - 0.2, 0.8 - 0.75])
    combined, _ = hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS, score="combined")
    assert combined == pytest.approx((disagreement + 1 - np.exp(-kl)) / 2)
    assert np.argmax(combined) == 1 and combined[1] > 0.5 > combined[0]


def test_thresholds_budget_and_otsu():
    scores = np.array([0.1, 0.12, 0.11, 0.9, 0.95, 0.13])
    assert list(flag(scores, threshold=0.5)) == [False, False, False, True, True, False]
    assert list(flag(scores, budget=1 / 6)) == [False, False, False, False, True, False]
    assert list(flag(scores)) == [False, False, False, True, True, False]
    assert 0.13 < otsu_threshold(scores) <= 0.9
    assert not flag(np.ones(4)).any()
    with pytest.raises(ValueError, match="not both"):
        flag(scores, threshold=0.5, budget=0.1)
    with pytest.raises(ValueError, match=r"budget must lie in \[0, 1\]"):
        flag(scores, budget=2)


def test_detection_metrics_plain_and_evaluate_module():
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.2
    scores = np.round(truth * 0.4 + rng.random(200), 1)  # rounded: plenty of ties
    result = hbg.detection_metrics(scores, truth, threshold=0.8)
    assert result["auroc"] == pytest.approx(roc_auc_score(truth, scores))
    flagged = scores >= 0.8
    assert result["precision"] == pytest.approx((flagged & truth).sum() / flagged.sum())
    assert result["recall"] == pytest.approx((flagged & truth).sum() / truth.sum())
    module = hbg.load_metric("poison_detection").compute(predictions=scores, references=truth.astype(int),
                                                         threshold=0.8)
    assert module == pytest.approx(result)
    with pytest.raises(ValueError, match="flagged=... or threshold"):
        hbg.detection_metrics(scores, truth)


def test_bad_score_inputs():
    with pytest.raises(ValueError, match="Unknown score"):
        hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS, score="entropy")
    with pytest.raises(ValueError, match="row 2"):
        hbg.suspicion_scores(ORIGINAL, VARIATIONS[:4], SOURCE[:4], LABELS)
    with pytest.raises(ValueError, match="outside 0..2"):
        hbg.suspicion_scores(ORIGINAL, VARIATIONS, [0, 0, 1, 1, 2, 3], LABELS)
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        hbg.suspicion_scores(ORIGINAL, VARIATIONS, SOURCE, LABELS[:2])


FEATURES = Features({"image": Image(), "label": ClassLabel(num_classes=3)})


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(12)]
    ds = Dataset.from_dict({"image": images, "label": [i % 3 for i in range(12)]}, features=FEATURES)
    # two "variations" per row: the image mirrored and flipped, linked by source_index
    rows = [(i, v) for i in range(12) for v in range(2)]
    variations = Dataset.from_dict(
        {"image": [images[i].transpose(v) for i, v in rows], "label": [i % 3 for i, _ in rows],
         "source_index": [i for i, _ in rows], "variation_index": [v for _, v in rows]},
        features=Features({**FEATURES, "source_index": Value("int64"), "variation_index": Value("int64")}),
    )
    torch.manual_seed(0)
    teacher = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=37, num_labels=3)).eval()
    return ds, variations, teacher, ViTImageProcessor(size={"height": 16, "width": 16})


def test_detect_poisoned_adds_columns_consistent_with_the_scores(setup):
    ds, variations, teacher, processor = setup
    out = hbg.detect_poisoned(teacher, ds, variations, processor, score="kl", budget=0.25)
    assert out.column_names == ds.column_names + ["suspicion", "flagged", "variation_prediction"]
    assert sum(out["flagged"]) == 3 and ds.column_names == ["image", "label"]
    original = hbg.predict_logits(teacher, ds, processor)
    varied = hbg.predict_logits(teacher, variations, processor)
    expected, predicted = hbg.suspicion_scores(original, varied, variations["source_index"], ds["label"], "kl")
    assert out["suspicion"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert out["variation_prediction"] == predicted.tolist()
    assert out.features["variation_prediction"] == ds.features["label"]


def test_clean_dataset_modes(setup):
    ds, variations, teacher, processor = setup
    detected = hbg.detect_poisoned(teacher, ds, variations, processor, budget=0.25)
    flagged = np.asarray(detected["flagged"])
    dropped = hbg.clean_dataset(detected, "drop")
    assert len(dropped) == 9 and not any(dropped["flagged"])
    relabelled = hbg.clean_dataset(detected, "relabel")
    assert len(relabelled) == 12 and relabelled.column_names == detected.column_names
    expected = np.where(flagged, detected["variation_prediction"], detected["label"])
    assert relabelled["label"] == expected.tolist()
    cleaned_variations = hbg.clean_dataset(variations, "drop", source=detected)
    kept_sources = set(cleaned_variations["source_index"])
    assert kept_sources == set(np.flatnonzero(~flagged).tolist()) and len(cleaned_variations) == 18
    with pytest.raises(ValueError, match="mode must be"):
        hbg.clean_dataset(detected, "delete")
    with pytest.raises(ValueError, match="run detect_poisoned first"):
        hbg.clean_dataset(ds)


def test_detect_poisoned_bad_input(setup):
    ds, variations, teacher, processor = setup
    with pytest.raises(ValueError, match="no 'source_index' column"):
        hbg.detect_poisoned(teacher, ds, variations.remove_columns("source_index"), processor)
    with pytest.raises(ValueError, match="do not belong together"):
        hbg.detect_poisoned(teacher, ds.select(range(6)), variations, processor)
    with pytest.raises(ValueError, match="do not belong together"):
        hbg.detect_poisoned(teacher, ds, variations.select(range(10)), processor)
    with pytest.raises(ValueError, match="Unknown score"):
        hbg.detect_poisoned(teacher, ds, variations, processor, score="vibes")


def test_precomputed_logits_give_the_same_result_without_running_a_model(setup):
    ds, variations, teacher, processor = setup
    online = hbg.detect_poisoned(teacher, ds, variations, processor, budget=0.25)
    logits = (hbg.predict_logits(teacher, ds, processor), hbg.predict_logits(teacher, variations, processor))
    cached = hbg.detect_poisoned(None, ds, variations, budget=0.25, logits=logits)
    assert cached["suspicion"] == pytest.approx(online["suspicion"], rel=1e-5)
    assert cached["flagged"] == online["flagged"]
    assert cached["variation_prediction"] == online["variation_prediction"]
