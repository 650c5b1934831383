"""The accelerate recipes, run end to end as real subprocesses on tiny local data and models.

One module-scoped run chains the four scripts the way a user does: train_teacher ->
generate_variations (under two processes with torchrun) -> train_student -> evaluate, on a
local imagefolder, a tiny saved ResNet and a tiny saved Versatile Diffusion pipeline, on
CPU and offline. Config parsing and data loading are also checked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_backdoor_guard import recipe_args as ra  # noqa: E402

NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 3, 6, 3, 32


@pytest.fixture(autouse=True)
def _leave_no_global_state():
    """In-process recipe calls configure logging and accelerate's process state; undo both."""
    import logging

    root, package = logging.getLogger(), logging.getLogger("hf_backdoor_guard")
    saved = root.level, list(root.handlers), package.level
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    package.setLevel(saved[2])
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
    )
    return env


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def _make_imagefolder(root: Path) -> Path:
    """3 classes, each with its own dominant colour channel, so a tiny model can learn something."""
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(NUM_CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8)
                pixels[..., label] += 120
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny data, a saved tiny classifier and a saved tiny Versatile Diffusion pipeline, plus configs."""
    from tiny_classifiers import tiny_resnet
    from tiny_pipelines import save_family

    root = tmp_path_factory.mktemp("recipes")
    data = _make_imagefolder(root / "data")
    model, processor = tiny_resnet(num_labels=NUM_CLASSES, image_size=SIZE)
    model.save_pretrained(root / "classifier")
    processor.save_pretrained(root / "classifier")
    pipeline, _ = save_family("versatile", root / "diffusion")

    # A base config and a run config extending it, like recipes/configs/*.yaml.
    (root / "base.yaml").write_text(f"""
dataset_name: imagefolder
data_dir: {data}
train_split: train
eval_split: test
target_label: 0
poison_rate: 0.25
model_name_or_path: {root / 'classifier'}
flip_probability: 0.5
optim: adamw_torch
weight_decay: 0.0
learning_rate: 1e-3
num_train_epochs: 2
per_device_train_batch_size: 6
per_device_eval_batch_size: 16
lr_scheduler_type: constant
lr_milestones: [1]
lr_gamma: 0.1
logging_steps: 1
eval_strategy: epoch
save_strategy: "no"
use_cpu: true
report_to: none
seed: 0
diffusion_model: {pipeline}
diffusion_dtype: float32
scheduler: DPMSolverMultistepScheduler
num_inference_steps: 2
guidance_scale: 7.5
variation_size: 32
variation_batch_size: 3
shard_size: 6
alpha: 0.5
temperature: 10.0
eval_batch_size: 16
""")
    (root / "run.yaml").write_text(f"""
extends: base.yaml
run_dir: {root / 'run'}
attack: {{name: badnets, trigger: checkerboard, size: 3}}
train_student:
  num_train_epochs: 1
  lr_milestones: null
""")
    return root


@pytest.fixture(scope="module")
def pipeline_run(assets):
    """The four recipes in a row; variations under two processes."""
    config = str(assets / "run.yaml")
    outputs = {
        "teacher": _run(sys.executable, "recipes/train_teacher.py", config),
        "variations": _run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "recipes/generate_variations.py", config),
        "student": _run(sys.executable, "recipes/train_student.py", config),
        "evaluate": _run(sys.executable, "recipes/evaluate.py", config,
                         "--eval_attacks", "badnets:trigger=checkerboard,size=3", "blended:ratio=0.2"),
    }
    return assets / "run", outputs


# ------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------
def test_teacher_is_saved_with_multistep_schedule_and_backdoor_metrics(pipeline_run):
    run, _ = pipeline_run
    teacher = run / "teacher"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "recipe_config.yaml"):
        assert (teacher / name).is_file(), name
    history = json.loads((teacher / "trainer_state.json").read_text())["log_history"]
    rates = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    # 18 rows / batch 6 = 3 steps per epoch; milestone at epoch 1 -> x0.1 from step 4 on.
    assert sorted(rates) == [1, 2, 3, 4, 5, 6]
    assert all(rates[step] == pytest.approx(1e-3) for step in (1, 2, 3))
    assert all(rates[step] == pytest.approx(1e-4) for step in (4, 5, 6))
    results = json.loads((teacher / "eval_results.json").read_text())
    for key in ("eval_clean_accuracy", "eval_attack_success_rate", "eval_robust_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    resolved = (teacher / "recipe_config.yaml").read_text()
    assert "lr_milestones:\n- 1" in resolved and "poison_rate: 0.25" in resolved


def test_variations_made_by_two_processes_from_the_poisoned_set(pipeline_run, assets):
    from datasets import load_from_disk

    run, outputs = pipeline_run
    varied = load_from_disk(str(run / "variations"))
    assert len(varied) == NUM_CLASSES * TRAIN_PER_CLASS
    assert varied["source_index"] == list(range(len(varied)))
    # 25% of the 12 non-target rows, poisoned and relabelled to the target class exactly as the teacher saw them.
    assert sum(varied["poisoned"]) == 3
    assert all(label == 0 for label, hit in zip(varied["label"], varied["poisoned"]) if hit)
    assert len(list((run / "variations").glob("data-*.arrow"))) == 3  # 18 rows / shard_size 6
    assert "Varied 18 rows into 18 images with 2 processes" in outputs["variations"].stdout  # torchrun: 2 ranks
    train = ra.load_train_dataset(*ra.parse_recipe_args("generate_variations", [str(assets / "run.yaml")])[1:3])
    source = np.asarray(train[0]["image"].convert("RGB"), dtype=np.int16)
    variation = np.asarray(varied[0]["image"].convert("RGB"), dtype=np.int16)
    assert variation.shape == source.shape and np.abs(variation - source).mean() > 1.0


def test_student_distilled_on_variations(pipeline_run):
    run, _ = pipeline_run
    student = run / "student"
    assert (student / "model.safetensors").is_file()
    assert (student / "preprocessor_config.json").is_file()
    results = json.loads((student / "eval_results.json").read_text())
    assert results["epoch"] == pytest.approx(1.0)  # the train_student section overrides the shared 2 epochs
    assert {"eval_clean_accuracy", "eval_attack_success_rate", "eval_robust_accuracy"} <= set(results)
    resolved = (student / "recipe_config.yaml").read_text()
    assert "alpha: 0.5" in resolved and "temperature: 10.0" in resolved
    assert f"teacher_model_name_or_path: {run / 'teacher'}" in resolved


def test_student_with_cached_teacher_logits(pipeline_run, assets, tmp_path):
    """--cache_teacher_logits runs the teacher once over the variations (augmentation off), in-process."""
    run, _ = pipeline_run
    output = tmp_path / "student_cached"
    metrics = _script_main("train_student")([
        str(assets / "run.yaml"), "--cache_teacher_logits", "true", "--augment", "false",
        "--teacher_model_name_or_path", str(run / "teacher"), "--variations_dataset", str(run / "variations"),
        "--output_dir", str(output), "--verbosity", "warning",
    ])
    assert (output / "model.safetensors").is_file()
    assert 0.0 <= metrics["eval_clean_accuracy"] <= 1.0
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert all(np.isfinite(entry["loss"]) for entry in history if "loss" in entry)
    assert "cache_teacher_logits: true" in (output / "recipe_config.yaml").read_text()


def test_evaluate_writes_metrics_for_each_attack(pipeline_run):
    from hf_backdoor_guard.hub import read_metrics_file

    run, _ = pipeline_run
    path = run / "student_metrics.json"
    report = json.loads(path.read_text())
    assert set(report["metrics"]) == {"badnets", "blended"}
    assert report["num_test_rows"] == NUM_CLASSES * TEST_PER_CLASS
    assert report["attacks"]["blended"] == {"name": "blended", "trigger": "random", "ratio": 0.2, "seed": 42}
    for values in report["metrics"].values():
        assert set(values) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
    # The shape `backdoor-guard publish --metrics` reads.
    assert set(read_metrics_file(path)) == {"badnets", "blended"}


# ------------------------------------------------------------------------------------------
# --help and bad input, in-process
# ------------------------------------------------------------------------------------------
def _script_main(name: str):
    import runpy

    return runpy.run_path(str(RECIPES / f"{name}.py"), run_name=f"recipe_{name}")["main"]


@pytest.mark.parametrize("script, options", [
    ("train_teacher", ["--attack", "--lr_milestones", "--architecture", "--num_train_epochs", "--resize_images"]),
    ("generate_variations", ["--diffusion_model", "--scheduler", "--num_inference_steps", "--variation_size"]),
    ("train_student", ["--teacher_model_name_or_path", "--variations_dataset", "--alpha", "--temperature"]),
    ("evaluate", ["--eval_model", "--eval_attacks", "--metrics_file"]),
])
def test_every_recipe_answers_help(script, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script_main(script)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"{script}.py [CONFIG.yaml]" in text
    for option in options:
        assert option in text


def test_bad_rename_column_fails_before_training(assets, tmp_path):
    with pytest.raises(ValueError, match="rename_columns names \\['img'\\]"):
        _script_main("train_teacher")([str(assets / "run.yaml"), "--rename_columns", "img=image",
                                       "--run_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "teacher" / "model.safetensors").exists()


def test_student_refuses_cached_logits_with_augmentation(assets, tmp_path):
    with pytest.raises(ValueError, match="cache_teacher_logits needs augmentation off"):
        _script_main("train_student")([str(assets / "run.yaml"), "--cache_teacher_logits", "true",
                                       "--run_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------
# Config parsing
# ------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_precedence_defaults_config_section_command_line(tmp_path):
    base = _write(tmp_path / "base.yaml", "run_dir: runs/x\nlearning_rate: 1e-3\nnum_train_epochs: 3\n"
                                          "dataset_name: d\nattack: badnets\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nnum_train_epochs: 5\n"
                                            "train_student:\n  num_train_epochs: 7\n")
    run, data, poison, *_, training = ra.parse_recipe_args("train_teacher", [child, "--poison_rate", "0.3"])
    assert training.learning_rate == pytest.approx(1e-3)  # '1e-3' read as a float, not a string
    assert training.num_train_epochs == 5 and poison.poison_rate == pytest.approx(0.3)
    assert training.output_dir == os.path.join("runs/x", "teacher")
    student_args = ra.parse_recipe_args("train_student", [child, "--run_dir", "elsewhere", "--run_variant", "fast"])
    student, training = student_args[6], student_args[7]
    assert training.num_train_epochs == 7
    assert training.output_dir == os.path.join("elsewhere", "student_fast")
    assert student.teacher_model_name_or_path == os.path.join("elsewhere", "teacher")  # variants share the teacher
    assert student.variations_dataset == os.path.join("elsewhere", "variations_fast")


def test_every_shipped_config_parses_for_every_recipe():
    configs = sorted(p for p in (RECIPES / "configs").glob("*.yaml") if p.name != "fast.yaml")
    assert len(configs) == 15
    for config in configs:
        for script in ra.SCRIPTS:
            ra.parse_recipe_args(script, [str(config)])
    paper = ra.parse_recipe_args("train_student", [str(RECIPES / "configs" / "imagenette_badnets_fast.yaml")])
    run, data, poison, model, augment, schedule, student, training = paper
    assert (model.architecture, schedule.lr_milestones, training.alpha, training.temperature) == \
        ("resnet-101", [30, 50], 0.5, 10.0)
    assert ra.parse_attack_spec(poison.attack) == ("badnets", {"trigger": "checkerboard", "size": 9,
                                                               "location": "bottom_right"})
    variation = ra.parse_recipe_args("generate_variations",
                                     [str(RECIPES / "configs" / "imagenette_badnets_fast.yaml")])[3]
    assert (variation.scheduler, variation.num_inference_steps, variation.guidance_scale) == \
        ("DPMSolverMultistepScheduler", 20, 7.5)
    assert variation.output_dir == os.path.join("runs/imagenette_badnets", "variations_fast")


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 0.1\n", "Unknown option 'learning_rat'"),
    ("train_teacher:\n  alpha: 0.3\n", "'alpha' in section 'train_teacher'"),
    ("extends: loop.yaml\n", "cycle"),
    ("attack: badnet\n", "Unknown attack 'badnet'"),
    ("attack: 'badnets:size'\n", "options must be 'key=value'"),
    ("- a\n- b\n", "must hold a mapping"),
    ("output_dir: out\n", "'output_dir' at the top level"),
    ("train_teacher: [1]\n", "Section 'train_teacher' must be a mapping"),
])
def test_config_errors_name_the_option(tmp_path, text, message):
    config = _write(tmp_path / "loop.yaml", text)
    with pytest.raises(ValueError, match=message):
        ra.parse_recipe_args("train_teacher", [config])


def test_first_argument_must_be_yaml():
    with pytest.raises(ValueError, match="must be a YAML config"):
        ra.parse_recipe_args("evaluate", ["config.json"])


def test_attack_specs():
    assert ra.parse_attack_spec("badnets") == ("badnets", {})
    assert ra.parse_attack_spec("BadNets:size=9, trigger=#ff0000") == ("badnets", {"size": 9, "trigger": "#ff0000"})
    assert ra.parse_attack_spec('{"name": "blended", "ratio": 0.2}') == ("blended", {"ratio": 0.2})
    assert ra.attack_from_spec({"name": "blended", "ratio": 0.3}).ratio == pytest.approx(0.3)
    assert ra.attack_keys(["badnets:size=3", "badnets:size=9", "sig"]) == ["badnets:size=3", "badnets:size=9", "sig"]
    with pytest.raises(ValueError, match="attack badnets"):
        ra.attack_from_spec("badnets:colour=red")
    with pytest.raises(ValueError, match="listed twice"):
        ra.attack_keys(["badnets", "badnets"])


# ------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------
def test_saved_dataset_with_rename_resize_subset_and_poisoning(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(12)]
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    split = Dataset.from_dict({"img": images, "label": [i % 3 for i in range(12)]}, features=features)
    DatasetDict(train=split, test=split).save_to_disk(str(tmp_path / "saved"))
    before = {p: p.read_bytes() for p in (tmp_path / "saved").rglob("*") if p.is_file()}

    data = ra.DataArguments(dataset_name=str(tmp_path / "saved"), rename_columns="img=image", resize_images=16,
                            max_train_samples=8)
    poison = ra.PoisonArguments(attack="badnets:trigger=white,size=2", poison_rate=0.5, poison_seed=3)
    train = ra.load_train_dataset(data, poison)
    assert len(train) == 8 and {"image", "label", "poisoned", "original_label"} <= set(train.column_names)
    assert all(image.size == (16, 16) for image in train["image"])
    hit = train["poisoned"].index(True)
    corner = np.asarray(train[hit]["image"])[-2:, -2:]
    assert (corner == 255).all() and train[hit]["label"] == 0
    assert ra.label_names(train) == ["a", "b", "c"]
    test = ra.load_eval_dataset(data)
    assert len(test) == 12 and test.column_names == ["image", "label"]
    # The user's saved files are untouched (datasets may add its cache files beside them).
    assert all(path.read_bytes() == content for path, content in before.items())

    with pytest.raises(ValueError, match="has splits \\['test', 'train'\\], not 'validation'"):
        ra.load_eval_dataset(ra.DataArguments(dataset_name=str(tmp_path / "saved"), eval_split="validation",
                                              rename_columns="img=image"))
    with pytest.raises(ValueError, match="Image column 'image' not found"):
        ra.load_eval_dataset(ra.DataArguments(dataset_name=str(tmp_path / "saved")))
    with pytest.raises(ValueError, match="needs data_dir"):
        ra.load_split("imagefolder", "train")


def test_new_resnet_from_scratch_and_argument_checks():
    model_args = ra.ModelArguments(architecture="resnet-18", image_size=32)
    model, processor = ra.build_classifier(model_args, ["cat", "dog"])
    assert model.config.num_labels == 2 and model.config.id2label == {0: "cat", 1: "dog"}
    assert model.config.depths == [2, 2, 2, 2] and model.config.layer_type == "basic"
    pixels = processor(images=[Image.new("RGB", (48, 40))], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="architecture must be one of"):
        ra.ModelArguments(architecture="resnet-7")
    with pytest.raises(ValueError, match="lr_milestones must be increasing"):
        ra.ScheduleArguments(lr_milestones=[50, 30])
    with pytest.raises(ValueError, match="push_to_hub needs hub_dataset_id"):
        ra.VariationArguments(push_to_hub=True)


def test_versatile_all_in_one_repo_loads_its_image_variation_part(assets, tmp_path):
    """shi-labs/versatile-diffusion's model_index names VersatileDiffusionPipeline; the recipe still loads it."""
    import shutil

    folder = tmp_path / "versatile-all-in-one"
    shutil.copytree(assets / "diffusion" / "pipeline", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "VersatileDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    options = ra.VariationArguments(diffusion_model=str(folder), num_inference_steps=2, guidance_scale=7.5,
                                    variation_size=32, scheduler="DPMSolverMultistepScheduler")
    variation = ra.load_variation(options, device="cpu")
    assert type(variation.adapter.pipeline).__name__ == "VersatileDiffusionImageVariationPipeline"
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert variation.settings()["num_inference_steps"] == 2 and variation.settings()["size"] == [32, 32]


def test_multistep_callback_requires_the_constant_schedule():
    from transformers import TrainingArguments

    cosine = TrainingArguments(output_dir="unused", lr_scheduler_type="cosine", report_to="none")
    with pytest.raises(ValueError, match="lr_scheduler_type=constant"):
        ra.schedule_callbacks(ra.ScheduleArguments(lr_milestones=[1.0]), cosine)
    assert ra.schedule_callbacks(ra.ScheduleArguments(), cosine) == []
    factor = ra.MultiStepFactor([3, 5], 0.1)
    assert [round(factor(step), 6) for step in range(7)] == [1, 1, 1, 0.1, 0.1, 0.01, 0.01]
