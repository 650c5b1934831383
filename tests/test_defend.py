"""`backdoor-guard defend` on a user's imagefolder: real digits, real embedded model, real training and files.

The done-when check of issue 13 at a shorter setting (400 rows, 8 teacher epochs, one
variation of 10 DDIM steps): a BadNets-poisoned imagefolder gets its poisoned rows
flagged (recall >= 0.9) and the robust model in ``model/`` has a low ASR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from digits_folder import poisoned_rows, write_digits_imagefolder  # noqa: E402

from hf_backdoor_guard.cli import main  # noqa: E402

# A short run: one variation of 400 rows gives the students so few steps that the defaults (3/4 of the teacher's
# epochs at half its rate, measured with 6 variations of 800 rows) underfit (C-Acc 0.82); here they train as
# long and as fast as the teacher.
QUICK_CONFIG = """\
num_train_epochs: 8
student_epochs: 8
student_learning_rate: 0.002
variation_options:
  num_variations: 1
  num_inference_steps: 10
"""


@pytest.fixture(scope="module")
def poisoned_folder(tmp_path_factory):
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits") / "data", train_rows=400)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """A saved small-resnet folder: --model as a local model folder, the starting point of teacher and student."""
    from hf_backdoor_guard.pipeline import build_classifier

    folder = tmp_path_factory.mktemp("model") / "small-resnet"
    model, processor = build_classifier("small-resnet", 10, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


UPLOADS: list = []


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: uploads cannot happen offline (tests/hub_server.py serves downloads
    only); it records what would have been uploaded."""

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        UPLOADS.append(("create_repo", repo_id, kwargs.get("repo_type")))

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
        UPLOADS.append(("upload_folder", repo_id, folder_path, repo_type))


@pytest.fixture(scope="module")
def defended(poisoned_folder, start_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("defend")
    config = root / "quick.yaml"
    config.write_text(QUICK_CONFIG)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        from hf_backdoor_guard.hub import publish as hub

        patch.setattr(hub, "HfApi", RecordingHfApi)  # where the upload looks it up, whatever was imported first
        code = main(["defend", "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder), "--model_name_or_path",
                     str(start_model), "--diffusion-model", "embedded", "--output-dir", str(out), "--config",
                     str(config), "--seed", "0", "--push-to-hub", "me/digits-robust"])
    assert code == 0
    return out


def test_defend_writes_model_cleaned_detection_and_report(defended, poisoned_folder):
    from datasets import load_from_disk
    from transformers import AutoModelForImageClassification

    import hf_backdoor_guard as hbg

    names = {path.name for path in defended.iterdir()}
    assert {"model", "cleaned", "detection.json", "report.md", "gallery.png", "metrics.json", "stages"} <= names
    detection = json.loads((defended / "detection.json").read_text())
    assert set(detection) >= {"score", "threshold", "flagged", "suspicion"}
    truth = poisoned_rows(poisoned_folder)
    assert len(detection["suspicion"]) == len(truth) == 400
    flagged = np.zeros(len(truth), dtype=bool)
    flagged[detection["flagged"]] = True
    assert flagged.sum() == len(detection["flagged"])
    recall = (flagged & truth).sum() / truth.sum()
    assert recall >= 0.9, f"recall {recall:.3f}: {int((flagged & truth).sum())} of {int(truth.sum())} poisoned rows"
    threshold = detection["threshold"]
    assert all((s >= threshold) == f for s, f in zip(detection["suspicion"], flagged))

    cleaned = load_from_disk(str(defended / "cleaned"))
    assert len(cleaned) == 400 - flagged.sum() and cleaned.column_names == ["image", "label"]

    model, processor, metrics = hbg.load_robust_model(str(defended / "model"))
    summary = json.loads((defended / "metrics.json").read_text())
    assert summary["shipped"] == "student_retaught"
    assert list(metrics.values())[0]["clean_accuracy"] == pytest.approx(
        summary["models"]["student_retaught"]["clean_accuracy"])
    plain = AutoModelForImageClassification.from_pretrained(defended / "model", use_safetensors=True)
    assert plain.config.num_labels == 10
    from datasets import load_dataset

    test = load_dataset("imagefolder", data_dir=str(poisoned_folder), split="test")
    measured = hbg.evaluate_backdoor(model, test, hbg.BadNets(), target_label=0, image_processor=processor,
                                     progress=False)
    assert measured["clean_accuracy"] > 0.85 and measured["attack_success_rate"] <= 0.1, measured

    # --push-to-hub uploaded exactly the model folder, after everything was written
    assert UPLOADS == [("create_repo", "me/digits-robust", "model"),
                       ("upload_folder", "me/digits-robust", str(defended / "model"), "model")]
    assert summary["hub"]["repo_id"] == "me/digits-robust"

    report = (defended / "report.md").read_text()
    assert "![the most suspicious training images](gallery.png)" in report
    assert f"**{flagged.sum()} of 400**" in report and "| teacher |" in report and "| student |" in report
    for stage in ("data", "teacher", "variations", "detection", "student", "teacher_kept", "teacher_kept_logits",
                  "student_retaught", "evaluation"):
        assert f"| {stage} |" in report  # every stage's time


def test_rerun_skips_finished_stages_and_refuses_other_settings(defended, poisoned_folder, start_model, caplog):
    import logging

    args = ["defend", "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder), "--model_name_or_path", str(start_model),
            "--diffusion-model", "embedded", "--output-dir", str(defended), "--config",
            str(defended.parent / "quick.yaml"), "--seed", "0"]  # no --push-to-hub: it decides no stage
    before = json.loads((defended / "stages" / "stages.json").read_text())
    with caplog.at_level(logging.INFO, logger="hf_backdoor_guard"):
        assert main(args) == 0
    after = json.loads((defended / "stages" / "stages.json").read_text())
    assert after == before  # nothing ran again
    assert "Stage teacher: finished earlier" in caplog.text
    caplog.clear()
    assert main(args + ["--num-train-epochs", "3"]) == 2
    assert "'teacher' stage was made with other settings (num_train_epochs: was 8.0, now 3.0)" in caplog.text


def _defend(tmp_path, *extra: str) -> int:
    return main(["defend", "--diffusion-model", "embedded", "--model_name_or_path", "small-resnet",
                 "--output-dir", str(tmp_path / "out"), *extra])


def test_missing_columns_list_what_the_dataset_has(tmp_path, poisoned_folder, caplog):
    assert _defend(tmp_path, "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder),
                   "--label_column_name", "digit") == 2
    assert "Label column 'digit' not found; the dataset has columns ['image', 'label']" in caplog.text
    assert _defend(tmp_path, "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder),
                   "--train_split", "training") == 2
    assert "has no split 'training'; its splits are ['train', 'test']" in caplog.text
    assert not (tmp_path / "out").exists()


def test_unsupported_diffusion_pipeline_names_the_supported_families(tmp_path, poisoned_folder, caplog):
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert main(["defend", "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder), "--model_name_or_path", "small-resnet",
                 "--diffusion-model", str(folder), "--output-dir", str(tmp_path / "out")]) == 2
    assert "Unsupported pipeline class StableDiffusionXLPipeline" in caplog.text
    assert "supported families" in caplog.text and "sd-image-variation" in caplog.text.lower().replace(" ", "-")
    assert not (tmp_path / "out").exists()


def test_default_diffusion_model_without_a_gpu_says_what_it_needs(tmp_path, poisoned_folder, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["defend", "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder), "--model_name_or_path", "small-resnet",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "lambdalabs/sd-image-variations-diffusers" in caplog.text and "needs a CUDA GPU" in caplog.text
    assert "--diffusion-model embedded" in caplog.text
    assert not (tmp_path / "out").exists()


def test_output_dir_with_user_files_is_refused_and_untouched(tmp_path, poisoned_folder, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _defend(tmp_path, "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder)) == 2
    assert "not empty" in caplog.text
    assert [path.name for path in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags, words", [
    (["--dataset_name", "imagefolder"], "needs a data folder"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--seed", "-1"], "seed must be an int"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--model_name_or_path", "resnet18"], "neither an architecture"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--alpha", "nan"], "alpha must lie in"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--student-learning-rate", "nan"],
     "student_learning_rate must lie in (0, inf)"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--student-learning-rate", "0"],
     "student_learning_rate must lie in (0, inf)"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--eval-split", "train"], "both 'train'"),
    (["--dataset_name", "imagefolder", "--data-dir", "DATA", "--push-to-hub", "not a repo!"], "not a valid Hub"),
])
def test_bad_options_fail_before_work(tmp_path, poisoned_folder, caplog, flags, words):
    flags = [str(poisoned_folder) if flag == "DATA" else flag for flag in flags]
    assert _defend(tmp_path, *flags) == 2
    assert words in caplog.text
    assert not (tmp_path / "out").exists()


def test_config_file_with_unknown_keys_is_refused(tmp_path, caplog):
    config = tmp_path / "c.yaml"
    config.write_text("dataset_name: imagefolder\nepochs: 3\n")
    assert main(["defend", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert "unknown option(s) ['epochs']" in caplog.text


def test_students_train_at_their_own_learning_rate(tmp_path):
    """student_arguments: the students' (and variations_ce's) rate, epochs over the source images, the seed."""
    from hf_backdoor_guard.pipeline.config import DefendConfig
    from hf_backdoor_guard.pipeline.defend import Shared, student_arguments
    from hf_backdoor_guard.pipeline.run_folder import RunFolder

    shared = Shared(data={}, teacher=None, processor=None, variations=None, detection={}, classifier={},
                    training=dict(batch_size=8, learning_rate=2e-3, weight_decay=1e-4, use_cpu=True), num_variations=3,
                    teacher_args=None)
    run = RunFolder(tmp_path / "stages")
    config = DefendConfig(dataset_name="x", learning_rate=2e-3, student_learning_rate=5e-4, student_epochs=9, seed=4,
                          temperature=2.0)
    student = student_arguments(run, config, shared)
    assert (student.learning_rate, student.num_train_epochs, student.seed, student.temperature) == (5e-4, 3.0, 4, 2.0)
    baseline = student_arguments(run, config, shared, distill=False)
    assert baseline.learning_rate == 5e-4 and not hasattr(baseline, "temperature")
    changed = student_arguments(run, config, shared, seed=7, student_epochs=6, learning_rate=1e-3, weight_decay=0.0)
    assert (changed.learning_rate, changed.num_train_epochs, changed.seed, changed.weight_decay) == (1e-3, 2.0, 7, 0.0)
    unset = student_arguments(run, DefendConfig(dataset_name="x", learning_rate=3e-3, num_train_epochs=8), shared)
    assert (unset.learning_rate, unset.num_train_epochs) == (1.5e-3, 2.0)  # half the teacher's rate, 3/4 its epochs
    assert unset.temperature == 1.0


def test_switching_the_second_teacher_reuses_every_trained_stage(defended, poisoned_folder, start_model):
    """--retrain_teacher false ships the first teacher's student; switching either way trains nothing again (the
    cached models are measured anew: an evaluation of other models is made again, not refused)."""
    from hf_backdoor_guard import load_robust_model

    args = _rerun_args(defended, poisoned_folder, start_model)
    before = json.loads((defended / "stages" / "stages.json").read_text())
    try:
        assert main(args + ["--retrain_teacher", "false"]) == 0
        summary = json.loads((defended / "metrics.json").read_text())
        assert summary["shipped"] == "student" and "student_retaught" not in summary["models"]
        assert list(load_robust_model(str(defended / "model")).metrics.values())[0] == \
            pytest.approx(summary["models"]["student"])
    finally:
        assert main(args) == 0  # back to the default for the other tests
    after = json.loads((defended / "stages" / "stages.json").read_text())
    trained = [stage for stage in before if stage != "evaluation"]
    assert {stage: after[stage] for stage in trained} == {stage: before[stage] for stage in trained}
    assert after["evaluation"]["settings"] == before["evaluation"]["settings"]
    assert json.loads((defended / "metrics.json").read_text())["shipped"] == "student_retaught"


def _rerun_args(defended, poisoned_folder, start_model) -> list[str]:
    """The command line that made the ``defended`` fixture's folder."""
    return ["defend", "--dataset_name", "imagefolder", "--data-dir", str(poisoned_folder), "--model_name_or_path",
            str(start_model), "--diffusion-model", "embedded", "--output-dir", str(defended), "--config",
            str(defended.parent / "quick.yaml"), "--seed", "0"]


def test_a_refused_rerun_removes_nothing(defended, poisoned_folder, start_model):
    """A rerun refused for a changed student leaves the folder as it was, its evaluation of other models too (that
    one is only made again once the run is accepted)."""
    stages_dir = defended / "stages"
    records, files = (stages_dir / "stages.json").read_text(), sorted(p.name for p in stages_dir.iterdir())
    assert main(_rerun_args(defended, poisoned_folder, start_model)
                + ["--retrain_teacher", "false", "--student_epochs", "3"]) == 2
    assert (stages_dir / "stages.json").read_text() == records
    assert sorted(p.name for p in stages_dir.iterdir()) == files and "evaluation.json" in files


def test_second_teacher_needs_a_kept_row():
    from datasets import Dataset

    from hf_backdoor_guard.pipeline.stages import kept_rows

    train = Dataset.from_dict({"label": [0, 1, 2]})
    assert kept_rows(train, {"flagged": [1], "suspicion": [0.1, 0.9, 0.2]})["label"] == [0, 2]
    with pytest.raises(ValueError, match="flagged every training row.*--detection_threshold.*--retrain_teacher false"):
        kept_rows(train, {"flagged": [0, 1, 2], "suspicion": [0.9, 0.9, 0.9]})


def test_a_student_stage_records_what_its_unset_options_stood_for():
    """An unset student option follows the teacher's; the value it stood for decides the cached student, so a
    folder made when "unset" meant another value (the students once trained at the teacher's rate) is refused."""
    from hf_backdoor_guard.pipeline.config import DefendConfig, stage_settings

    unset = stage_settings(DefendConfig(dataset_name="x", num_train_epochs=8, learning_rate=3e-3), "student")
    assert (unset["epochs_used"], unset["learning_rate_used"]) == (6.0, 1.5e-3)
    given = stage_settings(DefendConfig(dataset_name="x", student_epochs=9, student_learning_rate=1e-3), "student")
    assert "epochs_used" not in given and "learning_rate_used" not in given  # the demo's folders keep their records
