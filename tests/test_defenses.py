"""Peer defenses: each does what its paper says on an easy synthetic case, and bad input is refused.

Tiny transformers ResNets trained in code on images built in code (color classes or
noise, a bright patch as the trigger); purification uses the shipped embedded
diffusion model on the shipped digits. Nothing is mocked.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value, concatenate_datasets
from PIL import Image as PILImage
from transformers import TrainingArguments

import hf_backdoor_guard as hbg
from hf_backdoor_guard.defenses import DEFENSES, run_defense, run_defenses
from hf_backdoor_guard.defenses.base import conv_stage_outputs
from hf_backdoor_guard.defenses.leaderboard import (
    check_leaderboard,
    defense_effectiveness_rating,
    leaderboard_entry,
    write_leaderboard,
)
from hf_backdoor_guard.defenses.nad import attention_distance
from hf_backdoor_guard.metrics import auroc

from tiny_classifiers import tiny_resnet, tiny_vit

PATCH = 12  # a bright 12x12 corner patch on 32x32 images: trivially learnable
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
FEATURES = Features({"image": Image(), "label": ClassLabel(num_classes=4), "poisoned": Value("bool")})


def _patched(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[-PATCH:, -PATCH:] = 255
    return array


def color_dataset(per_class: int, poisoned: int = 0, seed: int = 0) -> Dataset:
    """Four noisy color classes; ``poisoned`` rows of class 1 get the patch and label 0."""
    rng = np.random.default_rng(seed)
    arrays = [np.clip(COLORS[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
              for c in range(4) for _ in range(per_class)]
    labels = [c for c in range(4) for _ in range(per_class)]
    flags = [False] * len(labels)
    for row in rng.choice(np.flatnonzero(np.asarray(labels) == 1), poisoned, replace=False):
        arrays[row], labels[row], flags[row] = _patched(arrays[row]), 0, True
    images = [PILImage.fromarray(array) for array in arrays]
    return Dataset.from_dict({"image": images, "label": labels, "poisoned": flags}, features=FEATURES)


def noise_dataset(rows: int = 64, poisoned: int = 8, seed: int = 0) -> Dataset:
    """Noise images with random labels (hard to learn) and ``poisoned`` patched rows labelled 0 (easy)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 200, (32, 32, 3), dtype=np.uint8) for _ in range(rows)]
    labels = [int(label) for label in rng.integers(0, 4, rows)]
    flags = [False] * rows
    for row in rng.choice(rows, poisoned, replace=False):
        arrays[row], labels[row], flags[row] = _patched(arrays[row]), 0, True
    images = [PILImage.fromarray(array) for array in arrays]
    return Dataset.from_dict({"image": images, "label": labels, "poisoned": flags}, features=FEATURES)


def training_args(tmp_path, epochs: float = 15, **changes) -> TrainingArguments:
    return TrainingArguments(
        str(tmp_path / "runs"), num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3,
        report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no", disable_tqdm=True, seed=0,
        **changes,
    )


def new_resnet():
    return tiny_resnet()[0]


@pytest.fixture(scope="module")
def poisoned_setup(tmp_path_factory):
    """Color classes with 8 patched rows of class 1 relabelled 0, and a ResNet trained on them (backdoored)."""
    from hf_backdoor_guard.training.classifier import train_classifier

    tmp = tmp_path_factory.mktemp("backdoored")
    train = color_dataset(32, poisoned=8)
    clean = color_dataset(2, seed=1).remove_columns("poisoned")
    model, processor = tiny_resnet()
    train_classifier(model, train, training_args(tmp), processor, augment=False)
    model.eval()
    return {"train": train, "clean": clean, "model": model, "processor": processor, "tmp": tmp}


def common(setup, **changes):
    """run_defense keyword arguments for the backdoored setup (short retraining: the tests check mechanisms)."""
    return {"model_factory": new_resnet, "training_args": training_args(setup["tmp"], epochs=2),
            "image_processor": setup["processor"], "clean_subset": setup["clean"],
            "backdoored_model": setup["model"], "augment": False, **changes}


# --- registry and entry point --------------------------------------------------------------
def test_registry_holds_every_defense_and_unknown_names_list_them(poisoned_setup):
    assert DEFENSES.names() == ["none", "abl", "fine_pruning", "nad", "spectral", "activation_clustering",
                                "purification"]
    with pytest.raises(ValueError, match="Unknown defense 'nope'.*fine_pruning"):
        run_defense("nope", poisoned_setup["train"], **common(poisoned_setup))
    with pytest.raises(ValueError, match=r"Unknown defense\(s\) \['nope'\]"):
        run_defenses(poisoned_setup["train"], poisoned_setup["clean"], hbg.BadNets(), names=["nope"],
                     **common(poisoned_setup))
    for name in DEFENSES:
        assumes = DEFENSES[name].assumes.to_dict()
        assert {"clean_data", "training", "inference_cost"} <= set(assumes), name
        assert "Assumes:" in sys.modules[DEFENSES[name].__module__].__doc__, name


def test_clean_subset_must_be_non_empty_and_smaller_than_the_data(poisoned_setup):
    train = poisoned_setup["train"]
    with pytest.raises(ValueError, match="clean_subset is empty"):
        run_defense("fine_pruning", train, **common(poisoned_setup, clean_subset=train.select([])))
    larger = concatenate_datasets([train, train]).remove_columns("poisoned")
    with pytest.raises(ValueError, match=f"clean_subset has {2 * len(train)} rows, more than the {len(train)} rows"):
        run_defense("nad", train, **common(poisoned_setup, clean_subset=larger))
    with pytest.raises(ValueError, match="'fine_pruning' needs trusted clean data"):
        run_defense("fine_pruning", train, **common(poisoned_setup, clean_subset=None))
    with pytest.raises(ValueError, match="Label column 'label' not found"):
        run_defense("nad", train, **common(poisoned_setup, clean_subset=poisoned_setup["clean"].rename_column(
            "label", "y")))


def test_models_without_a_convolutional_stage_are_refused_by_fine_pruning_and_nad(tmp_path):
    train = color_dataset(4)
    vit, processor = tiny_vit()
    for name in ("fine_pruning", "nad"):
        with pytest.raises(ValueError, match=f"Defense '{name}' needs a model with a convolutional stage.*"
                                             "ViTForImageClassification gives none"):
            run_defense(name, train, model_factory=lambda: tiny_vit()[0], training_args=training_args(tmp_path),
                        image_processor=processor, clean_subset=color_dataset(1), backdoored_model=vit)


def test_options_are_checked_before_any_work(poisoned_setup):
    train = poisoned_setup["train"]
    with pytest.raises(ValueError, match="isolation_rate must lie in"):
        run_defense("abl", train, isolation_rate=0.0, **common(poisoned_setup))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['gama'\] for defense 'abl'"):
        run_defense("abl", train, gama=0.5, **common(poisoned_setup))
    with pytest.raises(ValueError, match="needs variation=hbg.ImageVariation"):
        run_defense("purification", train, **common(poisoned_setup))
    with pytest.raises(ValueError, match="cluster_analysis must be one of"):
        run_defense("activation_clustering", train, cluster_analysis="largest", **common(poisoned_setup))
    with pytest.raises(ValueError, match="training_args must be transformers.TrainingArguments"):
        run_defense("spectral", train, **common(poisoned_setup, training_args={"epochs": 1}))
    with pytest.raises(ValueError, match="model_factory\\(\\) must give a transformers image classifier"):
        run_defense("abl", train, **common(poisoned_setup, model_factory=lambda: "resnet"))


# --- each defense does what its paper says ---------------------------------------------------
def test_abl_isolates_mostly_poisoned_rows_when_the_trigger_is_the_easiest_feature(tmp_path):
    train = noise_dataset(64, poisoned=8)
    _, processor = tiny_resnet()
    result = run_defense("abl", train, model_factory=new_resnet, training_args=training_args(tmp_path, epochs=10),
                         image_processor=processor, augment=False, isolation_rate=8 / 64, isolation_share=1.0,
                         retrain_share=0.2, unlearning_epochs=2)
    truth = np.asarray(train["poisoned"])
    isolated = ~result.kept
    assert isolated.sum() == 8 and result.info["isolated_poisoned"] == int((isolated & truth).sum())
    assert (isolated & truth).sum() >= 6  # mostly poison, against 1 in 8 by chance
    assert auroc(result.suspicion, truth) > 0.9
    assert result.assumes["clean_data"] == "none" and isinstance(result.model, torch.nn.Module)


def test_fine_pruning_masks_dormant_channels_of_the_last_stage_to_zero(poisoned_setup):
    model = poisoned_setup["model"]
    reference = {key: value.clone() for key, value in model.state_dict().items()}
    result = run_defense("fine_pruning", poisoned_setup["train"], **common(poisoned_setup))
    pruned = result.info["pruned_channels"]
    assert result.info["stage"] == "resnet.encoder.stages.1" and result.info["channels"] == 16
    assert 0 < len(pruned) < 16
    pixels = poisoned_setup["processor"](images=poisoned_setup["train"][:6]["image"], return_tensors="pt")[
        "pixel_values"]
    last = conv_stage_outputs(result.model, pixels)[-1]
    assert torch.count_nonzero(last[:, pruned]) == 0
    assert torch.count_nonzero(last[:, [c for c in range(16) if c not in pruned]]) > 0
    # the backdoored model itself is untouched: no mask, same weights
    assert torch.count_nonzero(conv_stage_outputs(model, pixels)[-1][:, pruned]) > 0
    assert all(torch.equal(reference[key], value) for key, value in model.state_dict().items())


def test_nad_pulls_the_attention_maps_towards_its_teacher(poisoned_setup):
    # teacher 10 epochs, distillation 4: the student cannot just retrace the teacher's fine-tuning
    kwargs = common(poisoned_setup, training_args=training_args(poisoned_setup["tmp"], epochs=4))
    nad = run_defense("nad", poisoned_setup["train"], teacher_share=2.5, distill_share=1.0, **kwargs)
    plain = run_defense("nad", poisoned_setup["train"], teacher_share=2.5, distill_share=1.0, betas=(0.0,), **kwargs)
    distance, without_attention = nad.info["attention_distance"], plain.info["attention_distance"]
    assert distance["before"] == without_attention["before"] > 0  # same teacher, same start
    assert distance["after"] < 0.5 * distance["before"]
    assert distance["after"] < 0.5 * without_attention["after"]  # the attention loss did it, not fine-tuning
    assert nad.assumes["needs_clean_subset"] and nad.assumes["needs_backdoored_model"]


@pytest.mark.parametrize("name, options", [("spectral", {}), ("activation_clustering", {"num_dims": 2})])
def test_data_cleaning_scores_poisoned_rows_higher_and_retrains_on_the_rest(poisoned_setup, name, options):
    # The tiny ResNet has 16 features: AC's reduction to 10 dimensions (Chen et al., for 512+ features)
    # would not reduce anything, hence num_dims=2 here.
    train = poisoned_setup["train"]
    result = run_defense(name, train, **common(poisoned_setup, clean_subset=None), **options)
    truth = np.asarray(train["poisoned"])
    assert auroc(result.suspicion, truth) > 0.9
    assert result.kept.shape == (len(train),) and 0 < (~result.kept).sum() < len(train)
    assert result.info["removed_poisoned"] == int((~result.kept & truth).sum()) >= 4
    assert result.model is not poisoned_setup["model"]


def test_purification_classifies_variations_that_drop_the_trigger():
    from hf_backdoor_guard.evaluation import predict_logits
    from hf_backdoor_guard.training.classifier import train_classifier

    attack = hbg.BadNets()  # 3x3 checkerboard
    digits = hbg.load_digits_dataset(seed=0)

    def labelled(ds, patched: bool):
        ds = ds.map(lambda row: {"image": attack(row["image"]) if patched else row["image"]})
        ds = ds.remove_columns("label").add_column("label", [int(patched)] * len(ds))
        return ds.cast_column("label", ClassLabel(num_classes=2))

    pool = digits["pretrain"]
    train = concatenate_datasets([labelled(pool.select(range(60)), False), labelled(pool.select(range(60, 120)), True)])
    model, processor = tiny_resnet(num_labels=2)
    args = TrainingArguments("unused", num_train_epochs=6, per_device_train_batch_size=16, learning_rate=3e-3,
                             report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no",
                             disable_tqdm=True, seed=0)
    train_classifier(model, train, args, processor, augment=False)  # a detector of the trigger
    clean, triggered = labelled(digits["test"].select(range(10)), False), labelled(digits["test"].select(range(10)), True)
    assert predict_logits(model, triggered, processor, progress=False).argmax(1).mean() == 1.0

    variation = hbg.ImageVariation.embedded(num_variations=1, seed=0)
    purified = hbg.PurifiedClassifier(model, variation, processor, batch_size=10)
    assert purified.predict(triggered, progress=False).mean() <= 0.2  # the variations lost the patch
    assert purified.predict(clean, progress=False).mean() <= 0.2
    logits = purified.predict_logits(clean, progress=False)
    assert logits.shape == (10, 2) and np.allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="variation must be an hbg.ImageVariation"):
        hbg.PurifiedClassifier(model, "embedded", processor)


# --- run_defenses and the leaderboard --------------------------------------------------------
def test_run_defenses_reports_one_line_per_defense_with_der_and_detection(poisoned_setup):
    lines = []
    test = color_dataset(4, seed=2).remove_columns("poisoned")
    kwargs = common(poisoned_setup)
    records = run_defenses(poisoned_setup["train"], test, hbg.BadNets(trigger="white", size=PATCH),
                           names=["spectral"], report=lines.append, **kwargs)
    assert list(records) == ["none", "spectral"] and len(lines) == 2
    assert lines[0].startswith("[1/2] none") and "detection AUROC" in lines[1]
    assert records["none"]["der"] == 0.5
    spectral = records["spectral"]
    assert {"clean_accuracy", "attack_success_rate", "robust_accuracy", "der", "seconds", "assumes",
            "detection"} <= set(spectral)
    assert spectral["der"] == round(defense_effectiveness_rating(records["none"], spectral), 4)
    assert spectral["detection"]["auroc"] > 0.9
    json.dumps(records)  # JSON-safe


def test_der_follows_backdoorbench():
    none = {"clean_accuracy": 0.9182, "attack_success_rate": 0.9379}
    # BackdoorBench / FT-SAM paper, CIFAR-10 BadNets: FT 90.29 / 1.70 -> DER 95.28
    assert defense_effectiveness_rating(none, {"clean_accuracy": 0.9029, "attack_success_rate": 0.0170}) == \
        pytest.approx(0.9528, abs=1e-4)
    assert defense_effectiveness_rating(none, none) == 0.5
    # a gain in accuracy or a rise in ASR is not rewarded or punished beyond zero
    assert defense_effectiveness_rating(none, {"clean_accuracy": 0.99, "attack_success_rate": 0.0}) == \
        pytest.approx((0.9379 + 1) / 2)
    assert defense_effectiveness_rating(none, {"clean_accuracy": 0.5, "attack_success_rate": 1.0}) == \
        pytest.approx((1 - 0.4182) / 2)
    with pytest.raises(ValueError, match="finite 'attack_success_rate'"):
        defense_effectiveness_rating(none, {"clean_accuracy": 0.9, "attack_success_rate": float("nan")})


def _made_up_records():
    assumes = DEFENSES["nad"].assumes.to_dict()
    return {
        "none": {"clean_accuracy": 0.99, "attack_success_rate": 1.0, "robust_accuracy": 0.0, "der": 0.5,
                 "seconds": 12.0, "assumes": DEFENSES["none"].assumes.to_dict()},
        "nad": {"clean_accuracy": 0.95, "attack_success_rate": 0.1, "robust_accuracy": 0.85, "der": 0.0,
                "seconds": 20.0, "assumes": assumes},
        "spectral": {"clean_accuracy": 0.97, "attack_success_rate": 0.9, "robust_accuracy": 0.1, "der": 0.0,
                     "seconds": 15.0, "assumes": DEFENSES["spectral"].assumes.to_dict(),
                     "detection": {"auroc": 0.71, "precision": 0.2, "recall": 0.3}},
    }


def test_leaderboard_files_for_one_attack_and_for_all(tmp_path):
    board = leaderboard_entry("badnets", 0, _made_up_records())
    assert board["defenses"]["nad"]["der"] == pytest.approx((0.9 - 0.04 + 1) / 2)  # recomputed against "none"
    single = tmp_path / "single"
    single.mkdir()
    paths = write_leaderboard(single, board)
    assert [path.name for path in paths] == ["leaderboard.json", "leaderboard.md", "leaderboard.png"]
    assert json.loads((single / "leaderboard.json").read_text()) == board
    markdown = (single / "leaderboard.md").read_text()
    assert "| nad | 0.950 | 0.100 | 0.850 | 0.930 | 20 |" in markdown
    assert "| spectral | 0.710 | 0.200 | 0.300 |" in markdown and "![C-Acc vs. ASR" in markdown
    with PILImage.open(single / "leaderboard.png") as figure:
        assert figure.format == "PNG" and figure.width > 300

    every = {"seed": 0, "attacks": {"badnets": board, "blended": leaderboard_entry("blended", 0, _made_up_records())}}
    write_leaderboard(tmp_path, every)
    assert "## blended (seed 0)" in (tmp_path / "leaderboard.md").read_text()
    with PILImage.open(tmp_path / "leaderboard.png") as wide, PILImage.open(single / "leaderboard.png") as narrow:
        assert wide.width > 1.5 * narrow.width  # one panel per attack


def test_leaderboard_format_errors_name_what_is_missing(tmp_path):
    records = _made_up_records()
    with pytest.raises(ValueError, match="needs the undefended model 'none'"):
        leaderboard_entry("badnets", 0, {"nad": records["nad"]})
    del records["nad"]["seconds"]
    with pytest.raises(ValueError, match=r"\['defenses'\]\['nad'\] lacks \['seconds'\]"):
        leaderboard_entry("badnets", 0, records)
    with pytest.raises(ValueError, match=r"leaderboard\['attacks'\]\['x'\] has no 'seed'"):
        check_leaderboard({"attacks": {"x": {"attack": "x", "defenses": {}}}})
    with pytest.raises(ValueError, match="is not an existing folder"):
        write_leaderboard(tmp_path / "missing", leaderboard_entry("badnets", 0, _made_up_records()))


def test_nad_attention_distance_is_zero_against_itself(poisoned_setup):
    model, processor = poisoned_setup["model"], poisoned_setup["processor"]
    assert attention_distance(model, model, poisoned_setup["clean"], processor) == 0.0


def test_column_names_are_configurable(poisoned_setup):
    renamed = poisoned_setup["train"].rename_columns({"image": "img", "label": "y"})
    clean = poisoned_setup["clean"].rename_columns({"image": "img", "label": "y"})
    kwargs = common(poisoned_setup, clean_subset=clean, image_column="img", label_column="y")
    spectral = run_defense("spectral", renamed, **kwargs)
    assert auroc(spectral.suspicion, renamed["poisoned"]) > 0.9
    pruned = run_defense("fine_pruning", renamed, **kwargs)
    assert pruned.info["pruned_channels"]
