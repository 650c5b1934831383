"""The method's stages as plain functions over Hugging Face objects, each cached in a :class:`RunFolder`.

    data -> (research only: poison) -> teacher -> variations -> detection -> student
         -> (teacher_kept -> its logits -> student_retaught) -> (student on the kept rows, baselines) -> evaluation

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

The recipes call them one per script, with the options of a full-size run: a stage
``name`` (the script's output folder), the augmentation of the configs (``flip_probability``,
``crop_padding``), checkpoints and the trainer's state and metrics kept beside the model
(``keep_checkpoints``, ``save_metrics``), variations in parts, pushed or streamed, and
evaluations of several attacks, one stage per evaluated model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .models import build_classifier
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

DETECTION_FILE = "detection.json"
LOGITS_FILE = "teacher_logits.safetensors"
EVALUATION_FILE = "evaluation.json"

# The TrainingArguments fields that decide a trained model: what a stage's settings should hold of them.
TRAINING_SETTINGS = (
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "optim_args",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "label_smoothing_factor", "seed",
    "data_seed", "bf16", "fp16", "alpha", "temperature", "augment",
)


def training_settings(args) -> dict:
    """The fields of ``args`` (of :data:`TRAINING_SETTINGS`) that decide the model: for a stage's ``settings``.

    Paths, logging, evaluation and saving options are left out, so changing them does not
    refuse a rerun; fields a ``transformers`` version lacks are skipped.
    """
    return {name: getattr(args, name) for name in TRAINING_SETTINGS if hasattr(args, name)}


def training_arguments(output_dir: str | Path, *, seed: int, epochs: float, batch_size: int = 32,
                       learning_rate: float = 2e-3, weight_decay: float = 1e-4, lr_scheduler_type: str = "cosine",
                       warmup: float = 0.05, use_cpu: bool = True, distill: bool = False, alpha: float = 1.0,
                       temperature: float = 4.0, augment: bool = False, save_strategy: str = "epoch"):
    """The ``TrainingArguments`` (``DistillationTrainingArguments`` with ``distill``) of the pipeline's models.

    Checkpoints are saved every epoch (only the newest kept), so a killed training stage
    resumes from its last epoch.
    """
    from transformers import TrainingArguments

    from ..training.distillation import DistillationTrainingArguments

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

            data = poison_dataset(train, attack, target_label=target_label, **{"seed": seed, **(poison_kwargs or {})})
        splits = {"train": data.flatten_indices()}
        if eval_ds is not None:
            splits["eval"] = eval_ds.flatten_indices()
        run.write_dir("data", lambda tmp: DatasetDict(splits).save_to_disk(str(tmp)))

    return run.run_stage("data", settings, "data", make, lambda path: load_from_disk(str(path)))


# --- models --------------------------------------------------------------------------------
def _load_classifier(path: Path):
    from ..loading import load_image_classifier

    return load_image_classifier(path, f"the {path.name} of this run")


def _with_output_dir(args, output_dir: Path):
    return dataclasses.replace(args, output_dir=str(output_dir))


def _resume_point(checkpoints: Path, resume_from_checkpoint: bool | str | os.PathLike) -> str | None:
    """A checkpoint folder given, the newest complete one in ``checkpoints`` for ``True``, none for ``False``."""
    from ..training.checkpoints import last_complete_checkpoint

    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        return str(resume_from_checkpoint)
    if not resume_from_checkpoint or not checkpoints.is_dir():
        return None
    return last_complete_checkpoint(checkpoints)


def _augmented(train, processor, augment: bool, flip_probability: float | None, crop_padding: float | None,
               teacher_processor=None):
    """``train`` with its training transform, when the flip or crop differ from the transform's defaults.

    Without them the trainer attaches the default transform itself (what ``defend`` uses).
    No flip and no crop count as no augmentation (a cache of teacher logits is then allowed).
    """
    from ..training.transforms import ImageClassificationTransform

    if flip_probability is None and crop_padding is None:
        return train
    options = {key: value for key, value in (("flip_probability", flip_probability), ("crop_padding", crop_padding))
               if value is not None}
    transform = ImageClassificationTransform(processor, teacher_image_processor=teacher_processor, **options)
    transform.augment = bool(augment) and (transform.flip_probability > 0 or transform.crop_padding > 0)
    return train.with_transform(transform)


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def _training_stage(run: RunFolder, name: str, settings: dict, trainer_for: Callable[[Path], Any], *,
                    resume_from_checkpoint, keep_checkpoints: bool, save_metrics: bool):
    """Train the trainer ``trainer_for(checkpoint_folder)`` builds, then save its model and image processor.

    ``NAME-checkpoints/`` holds the checkpoints (a killed stage resumes from the newest
    complete one); it is removed once the model is saved, unless ``keep_checkpoints``.
    With ``save_metrics`` the model is evaluated on the trainer's eval dataset (when it
    has one), and the model folder also gets what ``Trainer.save_state``/``save_metrics``
    write (``trainer_state.json``, ``train_results.json``, ``eval_results.json``,
    ``all_results.json``); the metrics also go to the stage record's ``details``.
    """
    checkpoints = run.path / f"{name}-checkpoints"

    def make():
        trainer = trainer_for(checkpoints)
        result = trainer.train(resume_from_checkpoint=_resume_point(checkpoints, resume_from_checkpoint))
        details = {"trainer_processes": trainer.accelerator.num_processes, "steps": trainer.state.global_step,
                   "rows": len(trainer.train_dataset)}
        if save_metrics:
            details["train_metrics"] = dict(result.metrics)
            if trainer.eval_dataset is not None:
                details["eval_metrics"] = trainer.evaluate()

        def write(tmp: Path) -> None:
            trainer.model.save_pretrained(tmp)
            trainer.processing_class.save_pretrained(tmp)
            if save_metrics:
                trainer.state.save_to_json(str(tmp / "trainer_state.json"))
                splits = {"train": details["train_metrics"], "eval": details.get("eval_metrics")}
                for split, values in splits.items():
                    if values is not None:
                        _write_json(tmp / f"{split}_results.json", values)
                _write_json(tmp / "all_results.json", {k: v for values in splits.values() for k, v in
                                                       (values or {}).items()})

        run.write_dir(name, write)
        if run.is_main_process and checkpoints.is_dir() and not (keep_checkpoints and any(checkpoints.iterdir())):
            shutil.rmtree(checkpoints)  # our own checkpoints of a stage that is now saved (or none were saved)
        return details

    return run.run_stage(name, settings, name, make, _load_classifier, partial=[checkpoints.name])


def teacher_stage(run: RunFolder, train, *, settings: dict, model: str, label_names: Sequence[str],
                  training_args, seed: int = 0, augment: bool = False, eval_dataset=None,
                  callbacks: list | None = None, name: str = "teacher", flip_probability: float | None = None,
                  crop_padding: float | None = None, resume_from_checkpoint: bool | str = True,
                  keep_checkpoints: bool = False, save_metrics: bool = False, **classifier_options):
    """``(teacher, image_processor)``: ``model`` trained on ``train`` (the possibly poisoned data).

    ``model`` and ``classifier_options`` go to :func:`build_classifier`; ``training_args``
    are ``TrainingArguments`` (their ``output_dir`` is replaced by the run's checkpoint folder,
    from which a killed stage resumes unless ``resume_from_checkpoint`` is False; a path
    names the checkpoint). ``augment`` turns on the random flip and crop, with
    ``flip_probability`` and ``crop_padding`` when given (else the transform's defaults,
    0.5 and 0.125). ``eval_dataset`` and ``callbacks`` (e.g. a ``BackdoorMetricsCallback``)
    go to the trainer. Saved to ``name/`` (default ``teacher/``) with its processor;
    ``keep_checkpoints`` and ``save_metrics``: see :func:`_training_stage`.
    """
    from ..training.classifier import build_classifier_trainer

    def trainer_for(checkpoints: Path):
        classifier, processor = build_classifier(model, label_names=label_names, seed=seed, **classifier_options)
        return build_classifier_trainer(
            classifier, _augmented(train, processor, augment, flip_probability, crop_padding),
            _with_output_dir(training_args, checkpoints), processor, eval_dataset=eval_dataset, augment=augment,
            callbacks=callbacks)

    return _training_stage(run, name, settings, trainer_for, resume_from_checkpoint=resume_from_checkpoint,
                           keep_checkpoints=keep_checkpoints, save_metrics=save_metrics)


def variations_stage(run: RunFolder, train, *, settings: dict, variation: Callable[[], Any], batch_size: int = 8,
                     shard_size: int | None = None, name: str = "variations",
                     columns: Sequence[str] | None = ("image", "label"), overlap: bool = True, part_index: int = 0,
                     num_parts: int = 1, push_to_hub: str | None = None, hub_private: bool | None = None,
                     reuse_runs: Sequence[str | Path] = ()):
    """Diffusion variations of every row of ``train`` (``generate_variations`` into ``name/``).

    ``variation`` builds the ``ImageVariation`` (called only when there is work left).
    Generation resumes from its last finished shard after a kill and splits shards across
    processes; the stage is finished when the dataset is complete. ``train`` may be an
    ``IterableDataset`` (streaming). ``columns`` are the columns varied and kept (None: all,
    e.g. the ``poisoned`` column of research data). ``overlap``, ``part_index``/``num_parts``
    (one part per machine; gather them with ``merge_variation_shards``), ``push_to_hub`` and
    ``hub_private`` go to :func:`~hf_backdoor_guard.generate_variations`; a part's stage
    returns the part's rows. ``reuse_runs``: stage folders of earlier runs (their ``data/``
    and ``name/``) whose variations the rows with unchanged images take (``reuse``).
    """
    from datasets import load_from_disk

    from ..variations import generate_variations

    def make():
        built = variation()
        def chosen(rows):
            return rows if columns is None else rows.select_columns(list(columns))

        reuse = [(chosen(load_from_disk(str(Path(folder) / "data"))["train"]), Path(folder) / name)
                 for folder in reuse_runs]
        generate_variations(chosen(train), built, run.path / name, batch_size=batch_size, shard_size=shard_size,
                            overlap=overlap, part_index=part_index, num_parts=num_parts, push_to_hub=push_to_hub,
                            hub_private=hub_private, reuse=reuse)
        return {"variation": built.settings()}

    return run.run_stage(name, settings, name, make, _load_variations)


def _load_variations(path: Path):
    """The finished variations: a ``load_from_disk`` folder, or a part's shards in order."""
    from datasets import Dataset, concatenate_datasets, load_from_disk

    if (path / "state.json").is_file():
        return load_from_disk(str(path))
    shards = [Dataset.from_file(str(shard)) for shard in sorted(path.glob("data-*.arrow"))]
    return concatenate_datasets(shards) if len(shards) > 1 else shards[0]


# --- detection -----------------------------------------------------------------------------
def _save_arrays(path: Path, arrays: dict) -> None:
    """``arrays`` as a safetensors file at ``path``, written through ``.NAME.partial`` so it appears whole."""
    from safetensors.numpy import save_file

    from ..runtime.outputs import write_bytes_atomic

    tmp = path.with_name(f".{path.name}.partial")
    save_file(arrays, str(tmp))
    write_bytes_atomic(path, tmp.read_bytes())
    tmp.unlink()


def detection_stage(run: RunFolder, teacher, processor, train, variations, *, settings: dict,
                    score: str = "combined", threshold: float | None = None, budget: float | None = None,
                    batch_size: int = 128) -> dict:
    """Score every training row for poisoning from the teacher's outputs on it and on its variations.

    Writes ``teacher_logits.safetensors`` (``original`` [rows, classes], ``variations``
    [variations, classes]; the student stage distils from them) and ``detection.json``.
    Returns ``{"score", "threshold", "flagged": [row indices], "suspicion": [per row],
    "variation_prediction": [per row], "original_logits", "variation_logits"}``.
    """
    from safetensors.numpy import load_file

    from ..detection import detect_poisoned, otsu_threshold
    from ..evaluation import predict_logits

    def make():
        if not run.is_main_process:
            return
        original = predict_logits(teacher, train, processor, batch_size=batch_size, progress=False)
        varied = predict_logits(teacher, variations, processor, batch_size=batch_size, progress=False)
        _save_arrays(run.path / LOGITS_FILE, {"original": original, "variations": varied})
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
        result = json.loads(path.read_text(encoding="utf-8"))
        logits = load_file(str(run.path / LOGITS_FILE))
        return {**result, "original_logits": logits["original"], "variation_logits": logits["variations"]}

    # The logits file is the stage's too: recorded with it, so a discard or --overwrite removes it as well.
    return run.run_stage("detection", settings, DETECTION_FILE, make, load,
                         partial=(LOGITS_FILE, f".{LOGITS_FILE}.partial"))


def logits_stage(run: RunFolder, name: str, model, processor, dataset, *, settings: dict,
                 batch_size: int = 128):
    """``model``'s logits on every row of ``dataset`` ([rows, classes] float32), saved as ``NAME.safetensors``.

    The retaught student is distilled from the second teacher's logits on the variations:
    cached like the first teacher's (:func:`detection_stage`), so a rerun does not redo them.
    """
    from safetensors.numpy import load_file

    from ..evaluation import predict_logits

    output = f"{name}.safetensors"

    def make():
        if run.is_main_process:
            logits = predict_logits(model, dataset, processor, batch_size=batch_size, progress=False)
            _save_arrays(run.path / output, {"logits": np.asarray(logits, dtype=np.float32)})

    return run.run_stage(name, settings, output, make, lambda path: load_file(str(path))["logits"],
                         partial=(f".{output}.partial",))


def flagged_mask(detection: dict) -> np.ndarray:
    """One bool per training row: whether detection flagged it."""
    flagged = np.zeros(len(detection["suspicion"]), dtype=bool)
    flagged[np.asarray(detection["flagged"], dtype=np.int64)] = True
    return flagged


def kept_rows(train, detection: dict):
    """The rows of ``train`` detection did not flag (what the second teacher learns from)."""
    rows = np.flatnonzero(~flagged_mask(detection))
    if not len(rows):
        raise ValueError("Detection flagged every training row, so no row is left to train the second teacher on: "
                         "pass --detection_threshold or --detection_budget to flag fewer, or --retrain_teacher "
                         "false.")
    return train.select(rows)


# --- students ------------------------------------------------------------------------------
def distillation_dataset(variations, detection: dict, *, teacher_logits: str = "mean",
                         keep_flagged: bool = True):
    """``variations`` with the teacher's cached logits (``teacher_logits`` column) for distillation.

    ``teacher_logits="mean"`` gives every variation the teacher's mean logits over all
    variations of its source row; ``"own"`` its own logits. ``keep_flagged=False`` drops
    the variations of rows that detection flagged.
    """
    from datasets import List, Value

    from ..training.transforms import TEACHER_LOGITS

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
    flagged = flagged_mask(detection)
    return variations.select(np.flatnonzero(~flagged[np.asarray(variations["source_index"])]))


def student_stage(run: RunFolder, name: str, variations, detection: dict | None, *, settings: dict, model: str,
                  label_names: Sequence[str], training_args, seed: int = 0, teacher_logits: str = "mean",
                  keep_flagged: bool = True, teacher=None, teacher_processor=None, cache_teacher_logits: bool = False,
                  eval_dataset=None, callbacks: list | None = None, flip_probability: float | None = None,
                  crop_padding: float | None = None, resume_from_checkpoint: bool | str = True,
                  keep_checkpoints: bool = False, save_metrics: bool = False, **classifier_options):
    """``(student, image_processor)`` distilled from the teacher on the variations.

    By default from cached teacher logits in ``detection["variation_logits"]`` (:func:`detection_stage`'s for
    the first teacher, :func:`logits_stage`'s for the second; ``training_args``
    are ``DistillationTrainingArguments`` with ``augment=False``); with ``teacher`` (and its
    ``teacher_processor`` if it differs) the teacher runs online instead, which random
    augmentation needs, or, with ``cache_teacher_logits``, once over the variations
    (``precompute_teacher_logits``; the trainer's checks, a cache needs no augmentation
    among them, run on one row before that pass). With ``keep_flagged=False`` only the
    variations of rows detection kept are used (the cleaned student). ``flip_probability``
    and ``crop_padding`` set the augmentation ``training_args.augment`` turns on;
    ``eval_dataset`` and ``callbacks`` go to the trainer (e.g. a ``BackdoorMetricsCallback``).
    Saved to ``name/``; ``resume_from_checkpoint``, ``keep_checkpoints`` and ``save_metrics``
    as in :func:`teacher_stage`.
    """
    from ..training.distillation import DistillationTrainer
    from ..training.teacher_logits import precompute_teacher_logits

    if detection is None and (teacher is None or not keep_flagged):
        raise ValueError(f"{name}: cached teacher logits and keep_flagged=False need detection_stage's result.")
    if cache_teacher_logits and teacher is None:
        raise ValueError(f"{name}: cache_teacher_logits needs the teacher (teacher=...).")

    def trainer_for(checkpoints: Path):
        if teacher is None:
            train = distillation_dataset(variations, detection, teacher_logits=teacher_logits,
                                         keep_flagged=keep_flagged)
        else:
            train = variations if keep_flagged else kept_variations(variations, detection)
        classifier, processor = build_classifier(model, label_names=label_names, seed=seed, **classifier_options)
        args = _with_output_dir(training_args, checkpoints)

        def distillation_trainer(dataset):
            dataset = _augmented(dataset, processor, args.augment, flip_probability, crop_padding, teacher_processor)
            return DistillationTrainer(model=classifier, teacher_model=teacher, args=args, train_dataset=dataset,
                                       eval_dataset=eval_dataset, processing_class=processor,
                                       teacher_processing_class=teacher_processor, callbacks=callbacks)

        if cache_teacher_logits:
            def with_logits(dataset):
                return precompute_teacher_logits(teacher, dataset, teacher_processor or processor, device=args.device,
                                                 batch_size=args.per_device_eval_batch_size)

            distillation_trainer(with_logits(train.select(range(1))))  # refusals before the pass over every row
            with args.main_process_first(desc="teacher logits"):
                train = with_logits(train)
        return distillation_trainer(train)

    return _training_stage(run, name, settings, trainer_for, resume_from_checkpoint=resume_from_checkpoint,
                           keep_checkpoints=keep_checkpoints, save_metrics=save_metrics)


def baseline_stage(run: RunFolder, name: str, train, *, settings: dict, model: str, label_names: Sequence[str],
                   training_args, seed: int = 0, augment: bool = False, **options):
    """``(model, image_processor)`` trained with plain cross-entropy on ``train`` (e.g. ``variations_ce``).

    The same as :func:`teacher_stage` (which takes the same ``options``) under another name.
    """
    return teacher_stage(run, train, settings=settings, model=model, label_names=label_names,
                         training_args=training_args, seed=seed, augment=augment, name=name, **options)


# --- evaluation ----------------------------------------------------------------------------
def evaluation_stage(run: RunFolder, models: Mapping[str, tuple] | tuple, eval_ds, *, settings: dict, attack=None,
                     target_label: int = 0, batch_size: int = 128, attacks: Mapping[str, Any] | None = None,
                     name: str = "evaluation", output: str = EVALUATION_FILE, describe: dict | None = None) -> dict:
    """C-Acc of each model on ``eval_ds``; with an ``attack`` also ASR and R-Acc on its triggered rows.

    ``models`` maps names to ``(model, image_processor)``. Writes ``output`` (default
    ``evaluation.json``): ``{name: {"clean_accuracy", ...}}``, rounded to 4 digits.

    ``attacks`` (a key per attack, instead of ``attack``) measures each of them: a model's
    entry is then ``{key: {"clean_accuracy", ...}}``. One ``(model, image_processor)`` pair
    instead of a mapping puts its entry at the top level. With ``describe``, the file is
    ``{**describe, "metrics": ...}`` (the shape ``backdoor-guard publish --metrics`` reads).
    ``name`` and ``output`` let several evaluations share a run folder (one per model
    measured by separate calls, e.g. ``teacher_metrics`` and ``student_metrics``).
    """
    from ..evaluation import evaluate_backdoor, predict_logits
    from ..metrics import clean_accuracy

    if attack is not None and attacks is not None:
        raise ValueError("Pass attack or attacks, not both.")
    single = isinstance(models, tuple)
    named = {"model": models} if single else models

    def make():
        if not run.is_main_process:
            return
        from ..poisoning import triggered_testset

        chosen = {None: attack} if attacks is None else dict(attacks)
        triggered = {key: triggered_testset(eval_ds, value, target_label=target_label)
                     for key, value in chosen.items() if value is not None}
        results = {}
        for model_name, (model, processor) in named.items():
            measured = {}
            for key, value in chosen.items():
                if value is None:
                    predictions = predict_logits(model, eval_ds, processor, batch_size, progress=False).argmax(axis=1)
                    values = {"clean_accuracy": clean_accuracy(predictions, eval_ds["label"])}
                else:
                    values = evaluate_backdoor(model, eval_ds, value, target_label, image_processor=processor,
                                               batch_size=batch_size, triggered_ds=triggered[key], progress=False)
                measured[key] = {metric: round(float(number), 4) for metric, number in values.items()}
            results[model_name] = measured[None] if attacks is None else measured
        content = results["model"] if single else results
        run.write_json(output, content if describe is None else {**describe, "metrics": content})

    def load(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8"))

    return run.run_stage(name, settings, output, make, load)


__all__ = ["TRAINING_SETTINGS", "training_settings", "training_arguments", "data_stage", "teacher_stage",
           "variations_stage", "detection_stage", "logits_stage", "kept_rows", "distillation_dataset", "kept_variations", "student_stage", "baseline_stage", "evaluation_stage"]
