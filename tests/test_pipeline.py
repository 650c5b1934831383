"""The pipeline's stages: the run folder's records, the classifier builder, and a real 2-process run
(torchrun on CPU) killed with SIGKILL in the middle and resumed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_backdoor_guard.pipeline import RunFolder, build_classifier  # noqa: E402
from hf_backdoor_guard.pipeline.run_folder import RECORD  # noqa: E402


# --- the run folder ------------------------------------------------------------------------
def _write(run: RunFolder, name: str, text: str):
    def make():
        run.write_dir(name, lambda tmp: (tmp.mkdir(), (tmp / "value.txt").write_text(text)))
        return {"wrote": text}

    return make


def _read(path: Path) -> str:
    return (path / "value.txt").read_text()


def test_a_finished_stage_is_reused_and_other_settings_are_refused_by_name(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.run_stage("one", {"epochs": 3, "lr": 0.1}, "one", _write(run, "one", "first"), _read) == "first"
    calls = []
    again = RunFolder(tmp_path / "run")
    assert again.run_stage("one", {"lr": 0.1, "epochs": 3}, "one", lambda: calls.append(1), _read) == "first"
    assert calls == []
    record = again.record("one")
    assert record["complete"] and record["details"] == {"wrote": "first"} and record["num_processes"] == 1
    with pytest.raises(ValueError, match=r"'one' stage was made with other settings \(epochs: was 3, now 4\)"):
        again.check({"one": {"epochs": 4, "lr": 0.1}, "two": {"anything": 1}})
    with pytest.raises(ValueError, match="epochs: was 3, now 4"):
        again.run_stage("one", {"epochs": 4, "lr": 0.1}, "one", lambda: calls.append(1), _read)
    assert calls == []


def test_a_stage_that_died_is_run_again_and_leaves_no_half_output(tmp_path):
    run = RunFolder(tmp_path / "run")

    def dies():
        def half(tmp: Path):
            tmp.mkdir()
            (tmp / "value.txt").write_text("half")
            raise KeyboardInterrupt  # Ctrl-C while the output is being written

        run.write_dir("one", half)

    with pytest.raises(KeyboardInterrupt):
        run.run_stage("one", {"epochs": 3}, "one", dies, _read)
    assert not (tmp_path / "run" / "one").exists()
    assert json.loads((tmp_path / "run" / RECORD).read_text())["one"]["complete"] is False
    rerun = RunFolder(tmp_path / "run")  # removes the half-written temporary folder
    assert [path.name for path in (tmp_path / "run").iterdir()] == [RECORD]
    assert rerun.run_stage("one", {"epochs": 3}, "one", _write(rerun, "one", "whole"), _read) == "whole"
    assert rerun.record("one")["complete"] is True


# --- the classifier builder ----------------------------------------------------------------
def test_one_builder_takes_architectures_folders_and_reheads_with_a_warning(tmp_path, caplog):
    from transformers import ResNetForImageClassification

    from hf_backdoor_guard.benchmark.demo import build_classifier as demo_builder

    model, processor = build_classifier("small-resnet", label_names=["cat", "dog", "emu"], seed=1)
    assert isinstance(model, ResNetForImageClassification) and model.config.id2label[2] == "emu"
    assert processor.size == {"shortest_edge": 32}
    same, _ = demo_builder(3, seed=1)  # the demo's name for the same builder
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    big, big_processor = build_classifier("resnet-18", 4)
    assert big.config.hidden_sizes == [64, 128, 256, 512] and big_processor.size == {"shortest_edge": 224}

    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    loaded, loaded_processor = build_classifier(tmp_path / "saved", 3)
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with caplog.at_level(logging.WARNING):
        reheaded, _ = build_classifier(tmp_path / "saved", 5, seed=2)
    assert reheaded.config.num_labels == 5 and reheaded.classifier[-1].out_features == 5
    assert "has num_labels=3 but the dataset has 5 classes" in caplog.text


@pytest.mark.parametrize("model, words", [
    ("resnet18", "neither an architecture"), ("../nowhere/x/y", "neither an architecture"),
    ("someone/missing-model", "could not read its config.json"),  # a Hub id, offline in tests
])
def test_builder_refuses_what_it_cannot_load(model, words):
    with pytest.raises(ValueError, match=words):
        build_classifier(model, 3)


def test_builder_refuses_a_folder_without_config_or_processor(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        build_classifier(tmp_path / "empty", 3)
    model, _ = build_classifier("small-resnet", 3)
    model.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(ValueError, match="no image processor"):
        build_classifier(tmp_path / "weights-only", 3)
    with pytest.raises(ValueError, match="width applies to small-resnet only"):
        build_classifier("resnet-18", 3, width=8)


# --- two processes, a SIGKILL, and the resume ----------------------------------------------
TINY = """\
max_train_samples: 40
max_eval_samples: 20
num_train_epochs: 1
variation_options: {num_variations: 1, num_inference_steps: 10}
variation_batch_size: 4
variation_shard_size: 8
"""


def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "hf_backdoor_guard.cli", "defend", *args]
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finished_shards(folder: Path) -> dict[str, int]:
    """Shards generate_variations has finished (the Arrow file and, written after it, its manifest)."""
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("data-*.arrow")
            if path.with_suffix(".json").is_file()}


def _kill_all(pid: int) -> None:
    """SIGKILL torchrun and its workers (which it starts in sessions of their own), workers first."""
    import psutil  # installed with accelerate

    parent = psutil.Process(pid)
    for process in parent.children(recursive=True) + [parent]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_two_processes_killed_mid_generation_resume_from_the_last_stage_and_shard(tmp_path):
    from digits_folder import write_digits_imagefolder

    data = write_digits_imagefolder(tmp_path / "data", train_rows=60, test_rows=40, poison_rate=0)
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "out"
    args = ["--dataset_name", "imagefolder", "--data-dir", str(data), "--model_name_or_path", "small-resnet", "--diffusion-model",
            "embedded", "--attack", "badnets", "--output-dir", str(out), "--config", str(tmp_path / "tiny.yaml")]
    shards = out / "stages" / "variations"
    first = _torchrun(args, tmp_path / "first.log")
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not _finished_shards(shards):
        time.sleep(0.02)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    _kill_all(first.pid)
    first.wait()
    records = json.loads((out / "stages" / RECORD).read_text())
    assert records["teacher"]["complete"] and records["teacher"]["num_processes"] == 2
    assert records["teacher"]["details"]["trainer_processes"] == 2  # the Trainer ran DDP over both
    assert not records["variations"].get("complete") and "student" not in records
    finished = _finished_shards(shards)
    assert finished

    second = _torchrun(args, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-4000:]
    log = (tmp_path / "second.log").read_text()
    assert "Stage teacher: finished earlier" in log and "Stage variations: running" in log
    after = json.loads((out / "stages" / RECORD).read_text())
    assert after["teacher"] == records["teacher"]  # not trained again
    for name, mtime in finished.items():  # shards finished before the kill were kept, not redone
        assert (shards / name).stat().st_mtime_ns == mtime
    assert all(after[stage]["complete"] and after[stage]["num_processes"] == 2
               for stage in ("variations", "detection", "student", "student_cleaned", "evaluation"))
    assert after["student"]["details"]["trainer_processes"] == 2
    from datasets import load_from_disk

    varied = load_from_disk(str(shards))
    assert sorted(varied["source_index"]) == list(range(40))
    assert {"model", "cleaned", "detection.json", "report.md"} <= {path.name for path in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]["student"]) >= {"clean_accuracy", "attack_success_rate", "robust_accuracy"}


# --- the stage functions one by one, as a recipe script calls them ---------------------------
def test_stage_functions_called_one_by_one_like_a_recipe(tmp_path):
    from hf_backdoor_guard.data import load_digits_dataset
    from hf_backdoor_guard.pipeline import stages
    from hf_backdoor_guard.variations import ImageVariation

    digits = load_digits_dataset()
    run = RunFolder(tmp_path / "run")
    data = stages.data_stage(run, digits["train"].select(range(40)), digits["test"].select(range(20)),
                             settings={"dataset": "digits[:40]"})
    names = digits["train"].features["label"].names
    teacher_args = stages.training_arguments(run.path, seed=0, epochs=1)
    teacher, processor = stages.teacher_stage(run, data["train"], settings={"epochs": 1}, model="small-resnet",
                                              label_names=names, training_args=teacher_args, augment=True)
    variations = stages.variations_stage(
        run, data["train"], settings={"steps": 4}, batch_size=8,
        variation=lambda: ImageVariation.embedded(num_inference_steps=4, num_variations=2, seed=0))
    assert len(variations) == 80 and sorted(set(variations["source_index"])) == list(range(40))
    detection = stages.detection_stage(run, teacher, processor, data["train"], variations, settings={})
    assert len(detection["suspicion"]) == 40 and detection["variation_logits"].shape == (80, 10)
    cached = stages.distillation_dataset(variations, detection)
    sources = np.asarray(cached["source_index"])
    means = np.asarray(cached["teacher_logits"])
    assert np.allclose(means[sources == 3], detection["variation_logits"][sources == 3].mean(axis=0), atol=1e-5)
    # an online teacher with augmentation (what the paper's recipes do), on the kept rows only
    online_args = stages.training_arguments(run.path, seed=0, epochs=1, distill=True, augment=True, alpha=0.5)
    student, _ = stages.student_stage(run, "student_online", variations, detection, settings={"online": True},
                                      model="small-resnet", label_names=names, training_args=online_args,
                                      teacher=teacher, keep_flagged=False)
    kept = 40 - len(detection["flagged"])
    assert run.record("student_online")["details"]["steps"] == -(-2 * kept // 32)  # one epoch over kept rows
    scores = stages.evaluation_stage(run, {"student": (student, processor)}, data["eval"], settings={})
    assert set(scores["student"]) == {"clean_accuracy"}
    assert set(run.timings()) == {"data", "teacher", "variations", "detection", "student_online", "evaluation"}


# --- what the recipes need of the run folder and the stages --------------------------------
def test_restart_rules_discard_and_outputs_that_are_not_ours(tmp_path):
    run = RunFolder(tmp_path / "run")

    def fails(left_checkpoints: bool):
        def make():
            if left_checkpoints:
                (run.path / "one-checkpoints").mkdir()
            raise ValueError("bad option")

        return make

    with pytest.raises(ValueError, match="bad option"):  # refused inside the stage, before writing anything
        run.run_stage("one", {"augment": True}, "one", fails(False), _read, partial=["one-checkpoints"])
    # nothing of it on disk: the corrected rerun may use other settings
    with pytest.raises(ValueError, match="bad option"):
        run.run_stage("one", {"augment": False}, "one", fails(True), _read, partial=["one-checkpoints"])
    with pytest.raises(ValueError, match=r"other settings \(augment: was false, now true\)"):
        run.check({"one": {"augment": True}})  # its checkpoints would be mixed with other settings
    (run.path / "yours.txt").write_text("the user's")
    assert run.discard("one") == ["one-checkpoints"] and run.record("one") is None
    assert run.run_stage("one", {"augment": True}, "one", _write(run, "one", "new"), _read) == "new"
    assert run.discard("one") == ["one"] and sorted(p.name for p in run.path.iterdir()) == [RECORD, "yours.txt"]

    (run.path / "two").mkdir()
    (run.path / "two" / "data.txt").write_text("the user's")
    with pytest.raises(ValueError, match=r"holds \['two'\], which stage two would write, but no run recorded them"):
        run.run_stage("two", {}, "two", _write(run, "two", "ours"), _read)
    assert (run.path / "two" / "data.txt").read_text() == "the user's" and run.record("two") is None


def _write_records(folder: str, prefix: str) -> None:
    run = RunFolder(folder)
    for i in range(100):
        run._write_record(f"{prefix}{i}", settings={}, output="x", complete=True)


def test_launches_running_different_stages_in_one_folder_keep_every_record(tmp_path):
    """Two real processes update stages.json at once: the folder lock keeps every record (no lost update)."""
    import multiprocessing

    (tmp_path / "run").mkdir()
    context = multiprocessing.get_context("fork")  # a second real process without a second start-up
    processes = [context.Process(target=_write_records, args=(str(tmp_path / "run"), prefix))
                 for prefix in ("teacher", "variations")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert len(json.loads((tmp_path / "run" / RECORD).read_text())) == 200


def test_evaluation_stage_measures_several_attacks_per_model_under_its_own_name(tmp_path):
    from hf_backdoor_guard import BadNets, Blended, evaluate_backdoor
    from hf_backdoor_guard.data import load_digits_dataset
    from hf_backdoor_guard.pipeline import evaluation_stage

    test = load_digits_dataset()["test"].select(range(30))
    names = test.features["label"].names
    run = RunFolder(tmp_path / "run")
    pair = build_classifier("small-resnet", label_names=names, seed=0)
    attacks = {"badnets": BadNets(), "blended": Blended(ratio=0.3)}
    report = evaluation_stage(run, pair, test, settings={"model": "a"}, attacks=attacks, name="a_metrics",
                              output="a_metrics.json", describe={"model": "a"})
    assert report == json.loads((run.path / "a_metrics.json").read_text())
    assert report["model"] == "a" and set(report["metrics"]) == {"badnets", "blended"}
    expected = evaluate_backdoor(pair[0], test, attacks["blended"], 0, image_processor=pair[1], progress=False)
    assert report["metrics"]["blended"] == {key: round(value, 4) for key, value in expected.items()}
    # a second model with other settings is its own stage; the default (one attack, a mapping) keeps its shape
    other = build_classifier("small-resnet", label_names=names, seed=1)
    both = evaluation_stage(run, {"b": other, "c": pair}, test, settings={"model": "b"}, attack=attacks["badnets"])
    assert set(both) == {"b", "c"} and both["c"] == report["metrics"]["badnets"]
    assert set(run.timings()) == {"a_metrics", "evaluation"}
    with pytest.raises(ValueError, match="attack or attacks, not both"):
        evaluation_stage(run, pair, test, settings={}, attack=attacks["badnets"], attacks=attacks, name="d")
