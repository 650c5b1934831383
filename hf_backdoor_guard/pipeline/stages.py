"""The method's stages as plain functions over Hugging Face objects, each cached in a :class:`RunFolder`.

    data -> (research only: poison) -> teacher -> variations -> detection -> student
         -> (student on the kept rows, baselines) -> evaluation

Every function takes the run folder, its inputs (datasets, models, ``TrainingArguments``,
an ``ImageVariation`` factory) and ``settings``: the options that decide its output, as
the caller names them (``--num-train-epochs`` is ``num_train_epochs``). A finished stage
with the same settings is loaded instead of run; other settings are refused, naming the
option. ``defend``, the demo, ``compare`` and the recipes call these functions::

    run = RunFolder("runs/cifar10/stages")
    data = data_stage(run, train, test, settings={"dataset": "uoft-cs/cifar10"})
    teacher, processor = teacher_stage(run, data["train"], settings={...}, model="resnet-18",
                                       label_names=names, training_args=args)
    variations = variations_stage(run, data["train"], settings={...}, variation=lambda: ImageVariation(...))
    detection = detection_stage(run, teacher, processor, data["train"], variations, settings={})
    student, _ = student_stage(run, "student", variations, detection, settings={...}, model="resnet-18",
                               label_names=names, training_args=distillation_args)

All of them run in every process of an ``accelerate launch``: training goes through the
``Trainer`` (DDP), generation through ``generate_variations`` (shards per process), and
the main process writes the rest while the others wait.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .models import build_classifier
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

DETECTION_FILE = "detection.json"
LOGITS_FILE = "teacher_logits.safetensors"
EVALUATION_FILE = "evaluation.json"


def training_arguments(output_dir: str | Path, *, seed: int, epochs: float, batch_size: int = 32,
                       learning_rate: float = 2e-3, weight_decay: float = 1e-4, lr_scheduler_type: str = "cosine",
                       warmup: float = 0.05, use_cpu: bool = True, distill: bool = False, alpha: float = 1.0,
                       temperature: float = 4.0, augment: bool = False, save_strategy: str = "epoch"):
    """The ``TrainingArguments`` (``DistillationTrainingArguments`` with ``distill``) of the pipeline's models.

    Checkpoints are saved every epoch (only the newest kept), so a killed training stage
    resumes from its last epoch.
    """
    from transformers import TrainingArguments

    from ..distillation import DistillationTrainingArguments

    common = dict(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay, lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup, seed=seed, data_seed=seed, save_strategy=save_strategy, save_total_limit=1,
        report_to="none", logging_strategy="epoch", use_cpu=use_cpu, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=False,
    )
    if distill:
        return DistillationTrainingArguments(alpha=alpha, temperature=temperature, augment=augment, **common)
    return TrainingArguments(**common)


# --- data ----------------------------------------------------------------------------------
def data_stage(run: RunFolder, train, eval_ds=None, *, settings: dict, attack=None, target_label: int = 0,
               poison_kwargs: dict | None = None, seed: int = 0):
    """The run's training split (poisoned first when ``attack`` is given) and evaluation split.

    Saved once to ``data/`` (``save_to_disk``), so every later stage and every process
    reads the same rows, and a rerun gets the same dataset fingerprints (which
    ``generate_variations`` checks when it resumes). Returns a ``DatasetDict`` with
    ``train`` (and ``eval`` when given); research runs add ``poisoned`` and ``original_label``.
    """
    from datasets import DatasetDict, load_from_disk

    def make():
        if not run.is_main_process:
            return
        data = train
        if attack is not None:
            from ..poisoning import poison_dataset

            data = poison_dataset(train, attack, target_label=target_label, seed=seed, **(poison_kwargs or {}))
        splits = {"train": data.flatten_indices()}
        if eval_ds is not None:
            splits["eval"] = eval_ds.flatten_indices()
        run.write_dir("data", lambda tmp: DatasetDict(splits).save_to_disk(str(tmp)))

    return run.run_stage("data", settings, "data", make, lambda path: load_from_disk(str(path)))


# --- models --------------------------------------------------------------------------------
def _load_classifier(path: Path):
    from ..loading import load_image_classifier

    return load_image_classifier(path, f"the {path.name} of this run")


def _save_classifier(run: RunFolder, name: str, model, processor) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    run.write_dir(name, write)


def _with_output_dir(args, output_dir: Path):
    return dataclasses.replace(args, output_dir=str(output_dir))


def _resume_point(output_dir: Path) -> str | None:
    from ..checkpoints import last_complete_checkpoint

    return last_complete_checkpoint(output_dir) if output_dir.is_dir() else None


def _trained(trainer) -> dict:
    """What the stage record keeps about a training: the processes it ran on (DDP) and its steps."""
    return {"trainer_processes": trainer.accelerator.num_processes, "steps": trainer.state.global_step}


def _drop_checkpoints(run: RunFolder, output_dir: Path) -> None:
    if run.is_main_process and output_dir.is_dir():
        shutil.rmtree(output_dir)  # our own checkpoints of a stage that is now saved


def teacher_stage(run: RunFolder, train, *, settings: dict, model: str, label_names: Sequence[str],
                  training_args, seed: int = 0, augment: bool = False, eval_dataset=None,
                  callbacks: list | None = None, **classifier_options):
    """``(teacher, image_processor)``: ``model`` trained on ``train`` (the possibly poisoned data).

    ``model`` and ``classifier_options`` go to :func:`build_classifier`; ``training_args``
    are ``TrainingArguments`` (their ``output_dir`` is replaced by the run's checkpoint folder,
    from which a killed stage resumes). ``augment``, ``eval_dataset`` and ``callbacks`` go to
    :func:`~hf_backdoor_guard.train_classifier`. Saved to ``teacher/`` with its processor.
    """
    from ..training import train_classifier

    checkpoints = run.path / "teacher-checkpoints"

    def make():
        classifier, processor = build_classifier(model, label_names=label_names, seed=seed, **classifier_options)
        trainer = train_classifier(classifier, train, _with_output_dir(training_args, checkpoints), processor,
                                   eval_dataset=eval_dataset, augment=augment, callbacks=callbacks,
                                   resume_from_checkpoint=_resume_point(checkpoints))
        _save_classifier(run, "teacher", trainer.model, processor)
        _drop_checkpoints(run, checkpoints)
        return _trained(trainer)

    return run.run_stage("teacher", settings, "teacher", make, _load_classifier)


def variations_stage(run: RunFolder, train, *, settings: dict, variation: Callable[[], Any], batch_size: int = 8,
                     shard_size: int | None = None):
    """Diffusion variations of every row of ``train`` (``generate_variations`` into ``variations/``).

    ``variation`` builds the ``ImageVariation`` (called only when there is work left).
    Generation resumes from its last finished shard after a kill and splits shards across
    processes; the stage is finished when the dataset is complete.
    """
    from datasets import load_from_disk

    from ..variations import generate_variations

    def make():
        built = variation()
        generate_variations(train.select_columns(["image", "label"]), built, run.path / "variations",
                            batch_size=batch_size, shard_size=shard_size)
        return {"variation": built.settings()}

    return run.run_stage("variations", settings, "variations", make, lambda path: load_from_disk(str(path)))


# --- detection -----------------------------------------------------------------------------
def detection_stage(run: RunFolder, teacher, processor, train, variations, *, settings: dict,
                    score: str = "combined", threshold: float | None = None, budget: float | None = None,
                    batch_size: int = 128) -> dict:
    """Score every training row for poisoning from the teacher's outputs on it and on its variations.

    Writes ``teacher_logits.safetensors`` (``original`` [rows, classes], ``variations``
    [variations, classes]; the student stage distils from them) and ``detection.json``.
    Returns ``{"score", "threshold", "flagged": [row indices], "suspicion": [per row],
    "variation_prediction": [per row], "original_logits", "variation_logits"}``.
    """
    from safetensors.numpy import load_file, save_file

    from ..detection import detect_poisoned, otsu_threshold
    from ..evaluation import predict_logits
    from ..outputs import write_bytes_atomic

    def make():
        if not run.is_main_process:
            return
        original = predict_logits(teacher, train, processor, batch_size=batch_size, progress=False)
        varied = predict_logits(teacher, variations, processor, batch_size=batch_size, progress=False)
        tmp = run.path / f".{LOGITS_FILE}.partial"
        save_file({"original": original, "variations": varied}, str(tmp))
        write_bytes_atomic(run.path / LOGITS_FILE, tmp.read_bytes())
        tmp.unlink()
        detected = detect_poisoned(teacher, train.select_columns(["image", "label"]),
                                   variations.select_columns(["image", "source_index"]), score=score,
                                   threshold=threshold, budget=budget, logits=(original, varied))
        suspicion = np.asarray(detected["suspicion"], dtype=np.float64)
        if threshold is not None:
            cut = float(threshold)
        elif budget is not None:
            cut = float(suspicion[np.asarray(detected["flagged"])].min()) if any(detected["flagged"]) else None
        else:
            cut = otsu_threshold(suspicion)
        run.write_json(DETECTION_FILE, {
            "score": score,
            "threshold": cut if cut is None or np.isfinite(cut) else None,
            "flagged": np.flatnonzero(np.asarray(detected["flagged"])).tolist(),
            "suspicion": [round(float(value), 6) for value in suspicion],
            "variation_prediction": [int(value) for value in detected["variation_prediction"]],
        })

    def load(path: Path) -> dict:
        import json

        result = json.loads(path.read_text(encoding="utf-8"))
        logits = load_file(str(run.path / LOGITS_FILE))
        return {**result, "original_logits": logits["original"], "variation_logits": logits["variations"]}

    return run.run_stage("detection", settings, DETECTION_FILE, make, load)


# --- students ------------------------------------------------------------------------------
def distillation_dataset(variations, detection: dict, *, teacher_logits: str = "mean",
                         keep_flagged: bool = True):
    """``variations`` with the teacher's cached logits (``teacher_logits`` column) for distillation.

    ``teacher_logits="mean"`` gives every variation the teacher's mean logits over all
    variations of its source row; ``"own"`` its own logits. ``keep_flagged=False`` drops
    the variations of rows that detection flagged.
    """
    from datasets import List, Value

    from ..transforms import TEACHER_LOGITS

    logits = np.asarray(detection["variation_logits"], dtype=np.float32)
    sources = np.asarray(variations["source_index"])
    if teacher_logits == "mean":
        _, inverse = np.unique(sources, return_inverse=True)
        sums = np.zeros((inverse.max() + 1, logits.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, logits)
        logits = (sums / np.bincount(inverse)[:, None]).astype(np.float32)[inverse]
    elif teacher_logits != "own":
        raise ValueError(f"teacher_logits must be 'mean' or 'own', got {teacher_logits!r}.")
    feature = List(Value("float32"), length=logits.shape[1])
    cached = variations.add_column(TEACHER_LOGITS, list(logits), feature=feature)
    return cached if keep_flagged else kept_variations(cached, detection)


def kept_variations(variations, detection: dict):
    """The rows of ``variations`` whose source row detection did not flag."""
    flagged = np.zeros(len(detection["suspicion"]), dtype=bool)
    flagged[np.asarray(detection["flagged"], dtype=np.int64)] = True
    return variations.select(np.flatnonzero(~flagged[np.asarray(variations["source_index"])]))


def student_stage(run: RunFolder, name: str, variations, detection: dict | None, *, settings: dict, model: str,
                  label_names: Sequence[str], training_args, seed: int = 0, teacher_logits: str = "mean",
                  keep_flagged: bool = True, teacher=None, teacher_processor=None, eval_dataset=None,
                  callbacks: list | None = None, **classifier_options):
    """``(student, image_processor)`` distilled from the teacher on the variations.

    By default from the teacher's logits cached by :func:`detection_stage` (``training_args``
    are ``DistillationTrainingArguments`` with ``augment=False``); with ``teacher`` (and its
    ``teacher_processor`` if it differs) the teacher runs online instead, which random
    augmentation needs. With ``keep_flagged=False`` only the variations of rows detection
    kept are used (the cleaned student). ``eval_dataset`` and ``callbacks`` go to the
    trainer (e.g. a ``BackdoorMetricsCallback``). Saved to ``name/``.
    """
    from ..distillation import DistillationTrainer

    checkpoints = run.path / f"{name}-checkpoints"
    if detection is None and (teacher is None or not keep_flagged):
        raise ValueError(f"{name}: cached teacher logits and keep_flagged=False need detection_stage's result.")

    def make():
        if teacher is None:
            train = distillation_dataset(variations, detection, teacher_logits=teacher_logits,
                                         keep_flagged=keep_flagged)
        else:
            train = variations if keep_flagged else kept_variations(variations, detection)
        classifier, processor = build_classifier(model, label_names=label_names, seed=seed, **classifier_options)
        trainer = DistillationTrainer(model=classifier, teacher_model=teacher,
                                      args=_with_output_dir(training_args, checkpoints), train_dataset=train,
                                      eval_dataset=eval_dataset, processing_class=processor,
                                      teacher_processing_class=teacher_processor, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=_resume_point(checkpoints))
        _save_classifier(run, name, trainer.model, processor)
        _drop_checkpoints(run, checkpoints)
        return _trained(trainer)

    return run.run_stage(name, settings, name, make, _load_classifier)


def baseline_stage(run: RunFolder, name: str, train, *, settings: dict, model: str, label_names: Sequence[str],
                   training_args, seed: int = 0, augment: bool = False, **classifier_options):
    """``(model, image_processor)`` trained with plain cross-entropy on ``train`` (e.g. ``variations_ce``)."""
    from ..training import train_classifier

    checkpoints = run.path / f"{name}-checkpoints"

    def make():
        classifier, processor = build_classifier(model, label_names=label_names, seed=seed, **classifier_options)
        trainer = train_classifier(classifier, train, _with_output_dir(training_args, checkpoints), processor,
                                   augment=augment, resume_from_checkpoint=_resume_point(checkpoints))
        _save_classifier(run, name, trainer.model, processor)
        _drop_checkpoints(run, checkpoints)
        return _trained(trainer)

    return run.run_stage(name, settings, name, make, _load_classifier)


# --- evaluation ----------------------------------------------------------------------------
def evaluation_stage(run: RunFolder, models: dict, eval_ds, *, settings: dict, attack=None, target_label: int = 0,
                     batch_size: int = 128) -> dict:
    """C-Acc of each model on ``eval_ds``; with an ``attack`` also ASR and R-Acc on its triggered rows.

    ``models`` maps names to ``(model, image_processor)``. Writes ``evaluation.json``:
    ``{name: {"clean_accuracy", ...}}``, rounded to 4 digits.
    """
    from ..evaluation import evaluate_backdoor, predict_logits
    from ..metrics import clean_accuracy

    def make():
        if not run.is_main_process:
            return
        triggered = None
        if attack is not None:
            from ..poisoning import triggered_testset

            triggered = triggered_testset(eval_ds, attack, target_label=target_label)
        results = {}
        for name, (model, processor) in models.items():
            if attack is None:
                predictions = predict_logits(model, eval_ds, processor, batch_size, progress=False).argmax(axis=1)
                values = {"clean_accuracy": clean_accuracy(predictions, eval_ds["label"])}
            else:
                values = evaluate_backdoor(model, eval_ds, attack, target_label, image_processor=processor,
                                           batch_size=batch_size, triggered_ds=triggered, progress=False)
            results[name] = {key: round(float(value), 4) for key, value in values.items()}
        run.write_json(EVALUATION_FILE, results)

    def load(path: Path) -> dict:
        import json

        return json.loads(path.read_text(encoding="utf-8"))

    return run.run_stage("evaluation", settings, EVALUATION_FILE, make, load)


__all__ = ["training_arguments", "data_stage", "teacher_stage", "variations_stage", "detection_stage",
           "distillation_dataset", "kept_variations", "student_stage", "baseline_stage", "evaluation_stage"]
