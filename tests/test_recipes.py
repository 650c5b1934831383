"""The recipes, run end to end as real subprocesses on tiny local data and models.

One module-scoped run chains the four scripts the way a user does: train_teacher ->
generate_variations (under two processes with torchrun) -> train_student ->
evaluate_backdoor, all reading one ``--config`` file, on a local imagefolder, a tiny saved
ResNet and a tiny saved Versatile Diffusion pipeline, on CPU and offline. Argument parsing,
data loading, the multi-machine parts and streaming input are checked in-process.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(RECIPES))  # what `python recipes/x.py` does for the scripts: they import recipe_arguments

import recipe_arguments as ra

NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 3, 6, 3, 32
SCRIPTS = ("train_teacher", "generate_variations", "train_student", "evaluate_backdoor")


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


def _start(*args: str) -> subprocess.Popen:
    """Start a recipe; its output goes to files, so a process left waiting never blocks on a full pipe."""
    import tempfile

    files = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in _finish)
    process = subprocess.Popen(list(args), cwd=ROOT, env=_env(), stdout=files[0], stderr=files[1], text=True)
    process.output_files = files
    return process


def _finish(process: subprocess.Popen, timeout: int = 240) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    outputs = []
    for stream in process.output_files:
        stream.seek(0)
        outputs.append(stream.read())
        stream.close()
    result = subprocess.CompletedProcess(process.args, process.returncode, *outputs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(process.args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def _script_main(name: str):
    return runpy.run_path(str(RECIPES / f"{name}.py"), run_name=f"recipe_{name}")["main"]


def _make_imagefolder(root: Path) -> Path:
    """3 classes, each with its own dominant color channel, so a tiny model can learn something."""
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
    """Tiny data, a saved tiny classifier and a saved tiny Versatile Diffusion pipeline, plus one config."""
    from tiny_classifiers import tiny_resnet
    from tiny_pipelines import save_family

    root = tmp_path_factory.mktemp("recipes")
    data = _make_imagefolder(root / "data")
    model, processor = tiny_resnet(num_labels=NUM_CLASSES, image_size=SIZE)
    model.save_pretrained(root / "classifier")
    processor.save_pretrained(root / "classifier")
    pipeline, _ = save_family("versatile", root / "diffusion")
    # One file for every script, like recipes/configs/*.yaml (each script takes the keys it knows).
    (root / "run.yaml").write_text(f"""
run_dir: {root / 'run'}
dataset_name: imagefolder
data_dir: {data}
train_split: train
eval_split: test
attack: {{name: badnets, trigger: checkerboard, size: 3}}
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
variation_shard_size: 6
alpha: 0.5
temperature: 10.0
eval_batch_size: 16
""")
    return root


@pytest.fixture(scope="module")
def pipeline_run(assets):
    """The four recipes as subprocesses; the variations under two processes, beside the teacher (which
    they do not need: both read the training split, poisoned with the same seed)."""
    config = ["--config", str(assets / "run.yaml")]
    teacher = _start(sys.executable, "recipes/train_teacher.py", *config)
    variations = _start(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "recipes/generate_variations.py", *config)
    outputs = {"teacher": _finish(teacher), "variations": _finish(variations)}
    outputs["student"] = _finish(_start(sys.executable, "recipes/train_student.py", *config, "--num_train_epochs", "1"))
    outputs["evaluate"] = _finish(_start(sys.executable, "recipes/evaluate_backdoor.py", *config, "--eval_attacks",
                                         "badnets:trigger=checkerboard,size=3", "blended:ratio=0.2"))
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
    assert "lr_milestones:\n- 1.0" in resolved and "poison_rate: 0.25" in resolved


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
    assert "Wrote 18 variations with 2 processes (part 1 of 1)" in outputs["variations"].stdout  # torchrun: 2 ranks
    data = ra.DataArguments(dataset_name="imagefolder", data_dir=str(assets / "data"), eval_split="test")
    poison = ra.PoisonArguments(attack={"name": "badnets", "trigger": "checkerboard", "size": 3}, poison_rate=0.25)
    train, _ = ra.load_splits(data, poison, evaluation=False)
    assert train["poisoned"] == varied["poisoned"]
    source = np.asarray(train[0]["image"].convert("RGB"), dtype=np.int16)
    variation = np.asarray(varied[0]["image"].convert("RGB"), dtype=np.int16)
    assert variation.shape == source.shape and np.abs(variation - source).mean() > 1.0
    assert "speed: null" in (run / "variations" / "recipe_config.yaml").read_text()


def test_student_distilled_on_variations(pipeline_run):
    run, _ = pipeline_run
    student = run / "student"
    assert (student / "model.safetensors").is_file()
    assert (student / "preprocessor_config.json").is_file()
    results = json.loads((student / "eval_results.json").read_text())
    assert results["epoch"] == pytest.approx(1.0)  # the flag overrides the config's 2 epochs
    assert {"eval_clean_accuracy", "eval_attack_success_rate", "eval_robust_accuracy"} <= set(results)
    resolved = (student / "recipe_config.yaml").read_text()
    assert "alpha: 0.5" in resolved and "temperature: 10.0" in resolved
    assert f"teacher_model_name_or_path: {run / 'teacher'}" in resolved


def test_evaluate_writes_metrics_for_each_attack(pipeline_run):
    from hf_backdoor_guard.hub.publish import read_metrics_file

    run, _ = pipeline_run
    path = run / "student_metrics.json"
    report = json.loads(path.read_text())
    assert set(report["metrics"]) == {"badnets", "blended"}
    assert report["num_test_rows"] == NUM_CLASSES * TEST_PER_CLASS
    assert report["attacks"]["blended"] == {"name": "blended", "trigger": "random", "ratio": 0.2, "seed": 42}
    for values in report["metrics"].values():
        assert set(values) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
    assert set(read_metrics_file(path)) == {"badnets", "blended"}  # the shape `backdoor-guard publish --metrics` reads


def test_every_script_is_a_stage_of_one_run_folder(pipeline_run, assets):
    """RUN_DIR/stages.json records all four, though the teacher and the variations ran at the same time in two
    launches; the student's settings say which teacher and variations it learnt from."""
    from hf_backdoor_guard.pipeline import output_finished

    run, _ = pipeline_run
    records = json.loads((run / "stages.json").read_text())
    assert {name: record["complete"] for name, record in records.items()} == {
        "teacher": True, "variations": True, "student": True, "student_metrics": True}
    assert records["teacher"]["settings"]["num_train_epochs"] == 2 and records["student"]["settings"]["alpha"] == 0.5
    assert records["student"]["settings"]["teacher_finished"] == records["teacher"]["finished"]
    assert records["student"]["settings"]["variations_finished"] == records["variations"]["finished"]
    assert output_finished(run / "teacher") == records["teacher"]["finished"]
    assert output_finished(assets / "classifier") is None  # not made by a recipe
    history = json.loads((run / "teacher" / "trainer_state.json").read_text())["log_history"]
    assert records["teacher"]["details"]["eval_metrics"]["eval_clean_accuracy"] == history[-1]["eval_clean_accuracy"]


def test_a_rerun_reuses_the_output_and_other_options_are_refused_by_name(pipeline_run, assets, tmp_path):
    run, _ = pipeline_run
    config = ["--config", str(assets / "run.yaml"), "--verbosity", "warning"]
    before = (run / "stages.json").read_text()
    metrics = _script_main("train_teacher")(config)  # reused: no training
    assert (run / "stages.json").read_text() == before
    assert metrics == json.loads(before)["teacher"]["details"]["eval_metrics"]
    with pytest.raises(ValueError, match=r"'teacher' stage was made with other settings \(num_train_epochs: was 2, "
                                         r"now 1.0\)\. Use another --output_dir, or pass --overwrite"):
        _script_main("train_teacher")([*config, "--num_train_epochs", "1"])
    # --overwrite measures again (and replaces only that output); evaluations are cheap enough to show it
    evaluate = _script_main("evaluate_backdoor")
    metrics_file = ["--metrics_file", str(tmp_path / "student_metrics.json")]
    assert set(evaluate([*config, *metrics_file])["metrics"]) == {"badnets"}
    with pytest.raises(ValueError, match=r"'student_metrics' stage was made with other settings \(attacks: .*"
                                         r"eval_attacks: was null, now \[\"blended\"\]"):
        evaluate([*config, *metrics_file, "--eval_attacks", "blended"])
    report = evaluate([*config, *metrics_file, "--eval_attacks", "blended", "--overwrite", "true"])
    assert set(report["metrics"]) == {"blended"}
    assert json.loads((tmp_path / "student_metrics.json").read_text()) == report
    assert (run / "stages.json").read_text() == before  # the other run folder: untouched


def test_student_with_cached_teacher_logits(pipeline_run, assets, tmp_path):
    """--cache_teacher_logits runs the teacher once over the variations (augmentation off), in-process."""
    assert (pipeline_run[0] / "teacher").is_dir() and (pipeline_run[0] / "variations").is_dir()  # what it reads
    output = tmp_path / "student_cached"
    metrics = _script_main("train_student")([
        "--config", str(assets / "run.yaml"), "--cache_teacher_logits", "true", "--augment", "false",
        "--num_train_epochs", "1", "--output_dir", str(output), "--verbosity", "warning",
    ])
    assert (output / "model.safetensors").is_file()
    assert 0.0 <= metrics["eval_clean_accuracy"] <= 1.0
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert all(np.isfinite(entry["loss"]) for entry in history if "loss" in entry)
    assert "cache_teacher_logits: true" in (output / "recipe_config.yaml").read_text()


def test_cached_logits_with_augmentation_refused_before_the_teachers_pass(pipeline_run, assets, tmp_path,
                                                                         monkeypatch):
    """The trainer's own check refuses it, after a one-row pass: never the pass over every variation."""
    from hf_backdoor_guard.training import teacher_logits

    real, rows = teacher_logits.precompute_teacher_logits, []

    def counting(teacher, ds, *args, **kwargs):
        rows.append(len(ds))
        return real(teacher, ds, *args, **kwargs)

    monkeypatch.setattr(teacher_logits, "precompute_teacher_logits", counting)
    with pytest.raises(ValueError, match="'teacher_logits' cache but its ImageClassificationTransform has augment"):
        _script_main("train_student")(["--config", str(assets / "run.yaml"), "--cache_teacher_logits", "true",
                                       "--output_dir", str(tmp_path / "student"), "--verbosity", "warning"])
    assert rows == [1]
    assert not (tmp_path / "student" / "model.safetensors").exists()


def test_parts_on_two_machines_merge_into_the_single_run(pipeline_run, assets, tmp_path):
    """Without shared storage: each machine runs one part into its own folder; the merge equals one run."""
    from datasets import load_from_disk

    import hf_backdoor_guard as hbg

    run, _ = pipeline_run
    generate = _script_main("generate_variations")
    folders = [tmp_path / f"part{i}" for i in range(2)]
    for index, folder in enumerate(folders):
        part = generate(["--config", str(assets / "run.yaml"), "--part_index", str(index), "--num_parts", "2",
                         "--output_dir", str(folder), "--verbosity", "warning"])
        assert len(part) == 12 if index == 0 else len(part) == 6  # shards 0, 2 and shard 1 of the 3
    merged = hbg.merge_variation_shards(folders, tmp_path / "merged")
    single = load_from_disk(str(run / "variations"))
    assert merged["source_index"] == single["source_index"]
    assert [image.tobytes() for image in merged["image"]] == [image.tobytes() for image in single["image"]]


def test_streaming_input_and_its_limits(assets, tmp_path):
    generate = _script_main("generate_variations")
    config = ["--config", str(assets / "run.yaml"), "--streaming", "true", "--verbosity", "warning"]
    with pytest.raises(ValueError, match="streaming reads the training split as it is"):
        generate([*config, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    varied = generate([*config, "--poison_rate", "0", "--output_dir", str(tmp_path / "streamed")])
    assert len(varied) == NUM_CLASSES * TRAIN_PER_CLASS and varied["source_index"] == list(range(len(varied)))
    assert "poisoned" not in varied.column_names


# ------------------------------------------------------------------------------------------
# --help and bad input, in-process
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, options", [
    ("train_teacher", ["--attack", "--lr_milestones", "--model_name_or_path", "--num_train_epochs", "--resize_images"]),
    ("generate_variations", ["--diffusion_model", "--speed", "--part_index", "--num_parts", "--push_to_hub",
                             "--streaming", "--overlap"]),
    ("train_student", ["--teacher_model_name_or_path", "--variations_dataset", "--alpha", "--temperature"]),
    ("evaluate_backdoor", ["--eval_model", "--eval_attacks", "--metrics_file"]),
])
def test_every_recipe_answers_help(script, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script_main(script)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--config", *options]:
        assert option in text


def test_missing_column_fails_before_training_and_lists_the_columns(assets, tmp_path):
    with pytest.raises(ValueError, match=r"Image column 'img' not found.*image"):
        _script_main("train_teacher")(["--config", str(assets / "run.yaml"), "--image_column_name", "img",
                                       "--run_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_bad_hub_repo_refused_before_generation(assets, tmp_path):
    with pytest.raises(ValueError, match="push_to_hub must be a Hub dataset repo id"):
        _script_main("generate_variations")(["--config", str(assets / "run.yaml"), "--push_to_hub", "no-namespace",
                                             "--output_dir", str(tmp_path / "v"), "--verbosity", "warning"])
    assert not (tmp_path / "v").exists()


# ------------------------------------------------------------------------------------------
# Arguments and configs
# ------------------------------------------------------------------------------------------
TEACHER = (ra.RunArguments, ra.DataArguments, ra.PoisonArguments, ra.ModelArguments, ra.AugmentArguments,
           ra.ScheduleArguments)


def _student_types():
    from hf_backdoor_guard.training.distillation import DistillationTrainingArguments

    return (*TEACHER, ra.StudentArguments, DistillationTrainingArguments)


STUDENT_PATHS = {"output_dir": "student", "teacher_model_name_or_path": "teacher", "variations_dataset": "variations"}


def test_precedence_defaults_run_paths_config_flags(tmp_path):
    from transformers import TrainingArguments

    config = tmp_path / "setup.yaml"
    config.write_text("run_dir: runs/x\nlearning_rate: 1e-3\nnum_train_epochs: 3\ndataset_name: d\nattack: badnets\n"
                      "variations_dataset: user/variations\n")
    *_, poison, _, _, _, training = ra.parse_arguments((*TEACHER, TrainingArguments),
                                                       ["--config", str(config), "--poison_rate", "0.3"],
                                                       run_paths={"output_dir": "teacher"})
    assert training.learning_rate == pytest.approx(1e-3)  # YAML's '1e-3' is text; the parser reads it as a float
    assert training.num_train_epochs == 3 and poison.poison_rate == pytest.approx(0.3)
    assert training.output_dir == os.path.join("runs/x", "teacher")
    parsed = ra.parse_arguments(_student_types(), ["--config", str(config), "--run_dir", "elsewhere",
                                                   "--run_variant", "fast", "--num_train_epochs", "7"],
                                run_paths=STUDENT_PATHS)
    student, training = parsed[-2], parsed[-1]
    assert training.num_train_epochs == 7
    assert training.output_dir == os.path.join("elsewhere", "student_fast")
    assert student.teacher_model_name_or_path == os.path.join("elsewhere", "teacher")  # variants share the teacher
    assert student.variations_dataset == "user/variations"  # the config's path wins over the derived one


def test_a_json_config_works_too(tmp_path):
    config = tmp_path / "setup.json"
    config.write_text(json.dumps({"attack": {"name": "blended", "ratio": 0.3}, "dataset_name": "d"}))
    _, data, poison = ra.parse_arguments((ra.RunArguments, ra.DataArguments, ra.PoisonArguments),
                                         ["--config", str(config)])
    assert poison.build_attack().ratio == pytest.approx(0.3) and data.dataset_name == "d"


def _shipped_configs() -> dict[str, dict]:
    import yaml

    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted((RECIPES / "configs").glob("*.yaml"))}


def test_every_shipped_config_parses_for_every_recipe():
    from transformers import TrainingArguments

    configs = _shipped_configs()
    assert len(configs) == 12
    types = {"train_teacher": (*TEACHER, TrainingArguments),
             "generate_variations": (ra.RunArguments, ra.DataArguments, ra.PoisonArguments, ra.VariationArguments),
             "train_student": _student_types(),
             "evaluate_backdoor": (ra.RunArguments, ra.DataArguments, ra.PoisonArguments, ra.EvaluateArguments)}
    for name in configs:
        for script in SCRIPTS:
            ra.parse_arguments(types[script], ["--config", str(RECIPES / "configs" / f"{name}.yaml")])
    paper = ra.parse_arguments(_student_types(), ["--config", str(RECIPES / "configs" / "imagenette_badnets.yaml")],
                               run_paths=STUDENT_PATHS)
    _, data, _, model, augment, schedule, _, training = paper
    assert (model.model_name_or_path, schedule.lr_milestones, training.alpha, training.temperature) == \
        ("resnet-101", [30, 50], 0.5, 10.0)
    assert (data.resize_images, augment.flip_probability, augment.crop_padding) == (224, 0.5, 0.0)
    fast = ra.parse_arguments(types["generate_variations"],
                              ["--config", str(RECIPES / "configs" / "cifar10_badnets_fast.yaml")],
                              run_paths={"output_dir": "variations"})[-1]
    # The preset fills in scheduler, steps and size only where the config leaves them unset.
    assert (fast.speed, fast.scheduler, fast.num_inference_steps, fast.variation_size) == ("fast-small", None, None, None)
    assert fast.output_dir == os.path.join("runs/cifar10_badnets", "variations_fast")


def test_configs_of_one_dataset_stay_in_step():
    """Self-contained configs instead of `extends:`: they may differ only in what makes them a variant."""
    attack_keys, speed_keys = {"run_dir", "attack"}, {"speed", "run_variant", "scheduler", "num_inference_steps",
                                                      "variation_size"}
    configs = _shipped_configs()
    for name, values in configs.items():
        dataset, attack, *fast = name.split("_")
        base = configs[f"{dataset}_badnets"]
        allowed = (attack_keys if attack != "badnets" else set()) | (speed_keys if fast else set())
        differing = {key for key in base.keys() | values.keys() if base.get(key) != values.get(key)}
        assert differing <= allowed, (name, differing - allowed)
        if fast:
            assert values["run_dir"] == configs[f"{dataset}_{attack}"]["run_dir"]  # shares the teacher
            assert values["speed"] == ("fast" if dataset == "imagenette" else "fast-small")


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 0.1\n", r"unknown option\(s\) \['learning_rat'\] \(did you mean learning_rate\?\)"),
    ("extends: base.yaml\n", r"unknown option\(s\) \['extends'\]"),
    ("attack: badnet\n", "Unknown attack 'badnet'"),
    ("attack: 'badnets:size'\n", "options must be 'key=value'"),
    ("- a\n- b\n", "must hold a mapping"),
    ("lr_milestones: [50, 30]\n", "lr_milestones must be increasing"),
    ("model_name_or_path: resnet-7\n", "neither an architecture"),
    ("flip_probability: 2\n", "flip_probability must lie in"),
    ("part_index: 2\nnum_parts: 2\n", "part_index must be an int in"),
    ("output_dir: out\n", "output_dir in .* would be the folder of every script"),
])
def test_config_errors_name_the_option(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        ra.parse_arguments((*TEACHER, ra.VariationArguments), ["--config", str(config)])


def test_multistep_schedule_needs_the_constant_schedule():
    from transformers import TrainingArguments

    cosine = TrainingArguments(output_dir="unused", lr_scheduler_type="cosine", report_to="none")
    with pytest.raises(ValueError, match="lr_scheduler_type=constant"):
        ra.ScheduleArguments(lr_milestones=[1.0]).callbacks(cosine)
    assert ra.ScheduleArguments().callbacks(cosine) == []


# ------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------
def test_saved_dataset_with_renamed_column_resize_subset_and_poisoning(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(12)]
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    split = Dataset.from_dict({"img": images, "label": [i % 3 for i in range(12)]}, features=features)
    DatasetDict(train=split, test=split).save_to_disk(str(tmp_path / "saved"))
    before = {p: p.read_bytes() for p in (tmp_path / "saved").rglob("*") if p.is_file()}

    data = ra.DataArguments(dataset_name=str(tmp_path / "saved"), image_column_name="img", resize_images=16,
                            max_train_samples=9)
    poison = ra.PoisonArguments(attack="badnets:trigger=white,size=2", poison_rate=0.5, poison_seed=3)
    train, test = ra.load_splits(data, poison)
    assert len(train) == 9 and {"image", "label", "poisoned", "original_label"} <= set(train.column_names)
    assert sorted(train["original_label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # stratified
    assert all(image.size == (16, 16) for image in train["image"])
    hit = train["poisoned"].index(True)
    corner = np.asarray(train[hit]["image"])[-2:, -2:]
    assert (corner == 255).all() and train[hit]["label"] == 0
    assert len(test) == 12 and test.column_names == ["image", "label"]
    assert all(path.read_bytes() == content for path, content in before.items())  # the user's files untouched

    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['train', 'test'\]"):
        ra.load_splits(ra.DataArguments(dataset_name=str(tmp_path / "saved"), eval_split="validation",
                                        image_column_name="img"))
    with pytest.raises(ValueError, match="Image column 'image' not found"):
        ra.load_splits(ra.DataArguments(dataset_name=str(tmp_path / "saved")))
    with pytest.raises(ValueError, match="needs a data folder"):
        ra.load_splits(ra.DataArguments(dataset_name="imagefolder"))


def test_without_an_evaluation_split_the_same_rows_are_held_out_in_every_script(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(40)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    DatasetDict(train=Dataset.from_dict({"image": images, "label": [i % 2 for i in range(40)]}, features=features)
                ).save_to_disk(str(tmp_path / "only-train"))
    data = ra.DataArguments(dataset_name=str(tmp_path / "only-train"), train_val_split=0.25)
    train, held_out = ra.load_splits(data)
    assert (len(train), len(held_out)) == (30, 10) and sorted(held_out["label"]) == [0] * 5 + [1] * 5
    again, _ = ra.load_splits(data, evaluation=False)  # generate_variations reads the training rows only
    pixels = [np.asarray(image).tobytes() for image in train["image"]]
    assert [np.asarray(image).tobytes() for image in again["image"]] == pixels
    assert not set(pixels) & {np.asarray(image).tobytes() for image in held_out["image"]}


def test_new_resnet_from_scratch_through_the_shared_builder():
    from hf_backdoor_guard.pipeline import build_classifier

    options = ra.ModelArguments(model_name_or_path="resnet-18", image_size=32).classifier()
    assert options == {"model": "resnet-18", "image_size": 32}  # what the training stages take
    model, processor = build_classifier(label_names=["cat", "dog"], seed=0, **options)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "cat", 1: "dog"}
    assert model.config.depths == [2, 2, 2, 2] and model.config.layer_type == "basic"
    pixels = processor(images=[Image.new("RGB", (48, 40))], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)


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
    variation = options.build(device="cpu")
    assert type(variation.adapter.pipeline).__name__ == "VersatileDiffusionImageVariationPipeline"
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert variation.settings()["num_inference_steps"] == 2 and variation.settings()["size"] == [32, 32]
    fast = ra.VariationArguments(diffusion_model=str(folder), speed="fast").build(device="cpu").settings()
    assert (fast["num_inference_steps"], fast["speed"]) == (15, "fast")


# ------------------------------------------------------------------------------------------
# The cost table
# ------------------------------------------------------------------------------------------
def test_readme_cost_table_is_what_the_benchmark_computes():
    costs = runpy.run_path(str(ROOT / "benchmarks" / "recipe_costs.py"), run_name="recipe_costs")
    table = costs["cost_table"]()
    assert table in (RECIPES / "README.md").read_text()
