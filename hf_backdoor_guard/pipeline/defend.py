"""``backdoor-guard defend``: the whole method on a user's dataset, with every stage cached in the output folder.

:func:`run_defend` checks everything first (options, the output folder, the diffusion
model, the classifier, the dataset's splits and columns), then runs the stages of
:mod:`~hf_backdoor_guard.pipeline.stages` in ``OUTPUT_DIR/stages/`` and writes:

* ``model/``: the robust student (``config.shipped_model``: distilled from a second teacher trained
  on the rows detection kept, or from the first with ``retrain_teacher=False``), saved with
  ``save_pretrained``, its image processor and a card with its metrics
  (``hbg.load_robust_model(path)`` and ``AutoModelForImageClassification`` load it);
* ``cleaned/``: the training rows detection did not flag (``save_to_disk``, the user's columns);
* ``detection.json``: ``{"score", "threshold", "flagged": [row indices], "suspicion": [per row], ...}``;
* ``report.md`` with ``gallery.png`` (the most suspicious images), ``suspicion.png``,
  ``metrics.png`` and ``samples.png``; ``metrics.json`` with the same numbers.

With ``attack`` set (research mode) the training split is poisoned first, and ASR and
R-Acc are reported beside C-Acc. The demo is this function on the embedded default.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.outputs import (
    check_output_dir,
    claim_output_dir,
    claim_sub_folder,
    locked,
    record_outputs,
    recorded_outputs,
    remove_outputs,
)
from . import stages
from .config import DefendConfig, check_diffusion_model, stage_settings
from .models import check_model
from .report import write_outputs
from .run_folder import RunFolder, process_state, settings_differences

logger = logging.getLogger(__name__)

OWNER = "defend"
STAGES_DIR = "stages"
# What a run writes into --output-dir (recorded in its marker before writing, so that only these are ever
# replaced or removed). cleaned/ is recorded file by file (outputs.write_folder_files, through .cleaned.tmp);
# model/ (staged by publish_model) and stages/ carry markers of their own: a user's file in any of them stays.
RECORDED_WHOLE = (STAGES_DIR, "model", "detection.json", "metrics.json", "report.md", "gallery.png", "suspicion.png",
                  "metrics.png", "samples.png")
OUTPUT_NAMES = (*RECORDED_WHOLE, "cleaned", ".cleaned.tmp")


@dataclass
class Inputs:
    """What the checks before work found: the data, its classes, the research attack."""

    train: Any
    eval_ds: Any
    label_names: list[str]
    attack: Any = None
    poison_kwargs: dict | None = None
    data_settings: dict | None = None
    eval_name: str = "test"  # how the report names the evaluation split
    content: dict | None = None  # what the user's data holds (fingerprint, rows): decides the data stage
    source_rows: list[int] | None = None  # each training row's index in the input split, when they differ


def data_folder(config: DefendConfig) -> Path | None:
    """The local folder the data is read from (an imagefolder's --data-dir, a save_to_disk folder), if any."""
    if config.data_dir:
        return Path(config.data_dir).expanduser()
    if config.dataset_name and Path(config.dataset_name).expanduser().is_dir():
        return Path(config.dataset_name).expanduser()
    return None


def check_folders_apart(output_dir: Path, data_dir: Path | None) -> None:
    """The output folder and the data folder do not hold each other: a later run would read the report's images
    as training data (an imagefolder class named after the output folder), or a run would write into the data."""
    if data_dir is None:
        return
    out, data = output_dir.expanduser().resolve(), data_dir.resolve()
    if out == data or out.is_relative_to(data):
        raise ValueError(f"--output-dir {output_dir} is inside the data folder {data_dir}: a later run would read "
                         "its files as data. Choose an output folder outside it.")
    if data.is_relative_to(out):
        raise ValueError(f"The data folder {data_dir} is inside --output-dir {output_dir}; choose an output folder "
                         "that does not hold the data.")


def _num_variations(config: DefendConfig) -> int:
    if "num_variations" in config.variation_options:
        return int(config.variation_options["num_variations"])
    if config.embedded:
        from ..embedded import EMBEDDED_VARIATION_DEFAULTS

        return int(EMBEDDED_VARIATION_DEFAULTS.get("num_variations", 1))
    return 1


def check_output_names(output_dir: Path, names, owner: str, option: str = "--output-dir") -> None:
    """``output_dir`` is usable by ``owner`` and none of ``names`` there is a file it did not write."""
    check_output_dir(output_dir, owner, option)
    if not output_dir.is_dir():
        return
    ours = {entry.split("/")[0] for entry in recorded_outputs(output_dir)}  # cleaned/... makes cleaned/ ours
    theirs = [name for name in names if name not in ours and (output_dir / name).exists()]
    if theirs:
        raise ValueError(f"{option} {output_dir} holds {theirs}, which this run would write, but no earlier run "
                         "wrote them there, so they are yours; move them away or choose another folder.")


def prepare(config: DefendConfig, *, train=None, eval_ds=None, attack=None, poison_kwargs=None,
            data_settings: dict | None = None, owner: str = OWNER) -> Inputs:
    """Every check, before any work. ``train``/``eval_ds`` (with ``image``/``label`` columns) replace
    loading ``config.dataset_name``; ``attack``/``poison_kwargs`` replace building ``config.attack``.

    Every label is checked and every image the run uses is decoded once, so a bad row is
    named (its file, for an imagefolder) before any stage runs. Without an evaluation split,
    ``config.train_val_split`` of the training rows is held out (stratified, seeded).
    """
    from ..runtime.caching import dataset_fingerprint
    from ..data import class_names, held_out_rows, load_image_splits, resize_images, stratified_indices
    from ..validation import check_dataset, check_images_decode, check_labels, check_target_label

    output_dir = Path(config.output_dir)
    check_folders_apart(output_dir, data_folder(config))
    check_output_names(output_dir, OUTPUT_NAMES, owner)
    check_diffusion_model(config)
    config.resolved_device()
    if train is None:
        if config.dataset_name is None:
            raise ValueError("dataset_name is required (--dataset_name: a Hub id, 'imagefolder' with --data_dir, or "
                             "a save_to_disk folder).")
        train, eval_ds = load_image_splits(
            config.dataset_name, config.train_split, config.eval_split, data_dir=config.data_dir,
            config_name=config.dataset_config_name, revision=config.dataset_revision,
            image_column=config.image_column_name, label_column=config.label_column_name, option="dataset_name")
        renames = {old: new for old, new in ((config.image_column_name, "image"), (config.label_column_name, "label"))
                   if old != new}
        clashes = [new for new in renames.values() if new in train.column_names]
        if clashes:
            raise ValueError(f"The dataset has a column named {clashes[0]!r} besides --image_column_name/"
                             "--label_column_name; rename it first.")
        train, eval_ds = train.rename_columns(renames), eval_ds.rename_columns(renames) if eval_ds else None
    else:
        check_dataset(train)
    check_labels(train, config.train_split)
    label_names = class_names(train)
    check_model(config.model_name_or_path, len(label_names))  # before the images are decoded: it is the quicker check
    # Rows are chosen as indices of the input split, so every message and detection.json name rows as the user has them.
    input_rows = len(train)
    kept = np.arange(input_rows)
    subset_seed = config.seed if config.subset_seed is None else config.subset_seed
    if eval_ds is None:
        kept, held_out, stratified = held_out_rows(train, config.train_val_split, subset_seed)
        eval_name = (f"{len(held_out)} rows ({config.train_val_split:.0%}) held out of '{config.train_split}', "
                     f"{'stratified by class' if stratified else 'at random'}, seed {subset_seed}")
        logger.info("No evaluation split (test, validation or --eval-split): evaluating on %s (--train-val-split).",
                    eval_name)
        eval_rows = held_out[stratified_indices(train.select(held_out), config.max_eval_samples, subset_seed)]
        check_images_decode(train, config.train_split, eval_rows)
        eval_ds = train.select(eval_rows)
    else:
        check_dataset(eval_ds)
        eval_name = str(getattr(eval_ds, "split", None) or config.eval_split or "test")
        check_labels(eval_ds, eval_name, len(label_names))
        eval_rows = stratified_indices(eval_ds, config.max_eval_samples, subset_seed)
        check_images_decode(eval_ds, eval_name, eval_rows)
        eval_ds = _rows(eval_ds, eval_rows)
    train_rows = kept[stratified_indices(_rows(train, kept), config.max_train_samples, subset_seed)]
    check_images_decode(train, config.train_split, train_rows)
    train = _rows(train, train_rows)
    if config.resize_images:  # after the subsets: only the rows used are resized
        train, eval_ds = resize_images(train, config.resize_images), resize_images(eval_ds, config.resize_images)
    unlearnable = sorted(set(eval_ds["label"]) - set(train["label"]))
    if unlearnable:
        logger.warning("Evaluation classes %s have no training rows: no model can learn them, so their %d "
                       "evaluation rows all count as misses in C-Acc.", [label_names[c] for c in unlearnable],
                       sum(label in unlearnable for label in eval_ds["label"]))
    if config.research:
        check_target_label(config.target_label, len(label_names))
        if attack is None:
            attack = config.build_attack()
            poison_kwargs = {"rate": config.poison_rate, "poison_target_class": config.poison_target_class}
            if config.poison_seed is not None:
                poison_kwargs["seed"] = config.poison_seed
    if config.push_to_hub and config.research is False:
        logger.info("The model card will state clean accuracy only (no attack was measured).")
    content = None
    if data_settings is None:  # the user's data: its content, not its name, decides the cached data stage
        content = {split: {"fingerprint": dataset_fingerprint(ds), "rows": len(ds)}
                   for split, ds in (("train", train), ("eval", eval_ds))}
    source_rows = None if len(train_rows) == input_rows else train_rows.tolist()  # sorted: all rows is the identity
    return Inputs(train, eval_ds, label_names, attack, poison_kwargs, data_settings, eval_name, content, source_rows)


def _rows(ds, rows):
    return ds if len(rows) == len(ds) else ds.select(rows)


def restart_if_data_changed(run: RunFolder, plan: dict) -> None:
    """Discard every stage of ``run`` when the data it was made from is not the data of ``plan`` any more.

    A user who edits the data folder (removes images, moves a class, fixes a file) and
    reruns must get results for the new data, never the cached ones of the old.
    """
    record = run.record("data")
    run.wait()  # every process decides from the same record, read before the main one removes it
    planned = plan["data"].get("content")
    if not record or planned is None:
        return
    before = (record.get("settings") or {}).get("content")
    if not settings_differences({"content": before}, {"content": planned}):  # compared as every stage setting is
        return
    if before is None:
        why = "its record holds no fingerprint of the data (an older version made it)"
    else:
        changed = {split: ((before.get(split) or {}).get("rows"), now["rows"]) for split, now in planned.items()
                   if (before.get(split) or {}).get("fingerprint") != now["fingerprint"]}
        why = "; ".join(f"{split} split: {was} rows, now {rows}" if was != rows else f"{split} split: other content"
                        for split, (was, rows) in changed.items())
    logger.warning("The data changed since the run in %s was made (%s): every stage runs again.", run.path, why)
    for stage in list(run.records()):
        run.discard(stage)


@contextlib.contextmanager
def _claimed(output_dir: Path, owner: str, overwrite: bool, is_main: bool):
    """The main process claims and locks ``output_dir`` for the run; ``overwrite`` then removes our old outputs.

    The lock comes first: a second run must not remove the files of a run that is still
    using the folder. ``stages/`` gets a marker of its own, so a rerun or ``--overwrite``
    removes the stage outputs and leaves a user's file there alone.
    """
    if not is_main:
        yield
        return
    claim_output_dir(output_dir, owner, "--output-dir")
    with locked(output_dir, f"{owner} run"):
        if overwrite:
            removed = remove_outputs(output_dir)
            logger.info("--overwrite: removed %s from %s (only what an earlier run wrote).", removed, output_dir)
        claim_sub_folder(output_dir, STAGES_DIR, owner, "--output-dir")
        yield


def variation_factory(config: DefendConfig, device: str):
    def build():
        import torch

        from ..variations import ImageVariation

        options = {**config.variation_options, "seed": config.seed}
        if config.embedded:
            return ImageVariation.embedded(model=config.embedded_model, **options,
                                           **({"device": device} if device != "cpu" else {}))
        dtype = options.pop("dtype", torch.float16 if device.startswith("cuda") else None)
        return ImageVariation.from_pretrained(config.diffusion_model, prior=config.diffusion_prior, dtype=dtype,
                                              device=device, **options)

    return build


def _process_device(device: str) -> str:
    import os

    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def run_plan(config: DefendConfig, inputs: Inputs) -> dict[str, dict]:
    """Every stage's settings for ``config`` (what decides its cached output), by stage name."""
    names = ["data", "teacher", "variations", "detection", "student", "student_cleaned"]
    if config.retrain_teacher:
        names += ["teacher_kept", "teacher_kept_logits", "student_retaught"]
    if config.baselines:
        names.append("variations_ce")
    plan = {name: stage_settings(config, name) for name in names}
    plan["evaluation"] = stage_settings(config, "evaluation", models=evaluated_models(config))
    plan["data"].update(inputs.data_settings or {})
    if inputs.content is not None:
        plan["data"]["content"] = inputs.content
    if inputs.attack is not None:
        plan["data"].update(attack_config=inputs.attack.config(), poison_kwargs=inputs.poison_kwargs)
    return plan


def evaluated_models(config: DefendConfig) -> list[str]:
    """The models a run of ``config`` trains and measures, in the report's order."""
    names = ["teacher", "student", "student_cleaned"]
    if config.retrain_teacher:
        names[1:1] = ["teacher_kept"]
        names.insert(3, "student_retaught")
    if config.baselines:
        names.append("variations_ce")
    return names


def refresh_evaluation(run: RunFolder, plan: dict) -> None:
    """Discard a finished evaluation that measured other models (an older version's run, ``--retrain_teacher``
    switched): it is made again from the cached models in seconds, instead of refusing the folder."""
    record = run.record("evaluation")
    run.wait()  # every process decides from the same record, read before the main one removes it
    if record and settings_differences(record.get("settings", {}), plan["evaluation"]):
        run.discard("evaluation")


@dataclass
class Shared:
    """What every student is trained from: the data, the teacher, the variations, detection, and how to train."""

    data: dict
    teacher: Any
    processor: Any
    variations: Any
    detection: dict
    classifier: dict  # build_classifier's options
    training: dict  # training_arguments' options every model shares
    num_variations: int  # per source image
    teacher_args: Any  # the teacher's TrainingArguments (the second teacher trains with them too)


def shared_stages(run: RunFolder, config: DefendConfig, inputs: Inputs, plan: dict, device: str) -> Shared:
    """The stages before the students (data, teacher, variations, detection), run or reused from ``run``."""
    data = stages.data_stage(run, inputs.train, inputs.eval_ds, settings=plan["data"], attack=inputs.attack,
                             target_label=config.target_label, poison_kwargs=inputs.poison_kwargs, seed=config.seed)
    classifier = {**config.classifier(), "label_names": inputs.label_names}
    training = dict(batch_size=config.per_device_train_batch_size, learning_rate=config.learning_rate,
                    weight_decay=config.weight_decay, use_cpu=device == "cpu")
    teacher_args = stages.training_arguments(run.path, seed=config.seed, epochs=config.num_train_epochs, **training)
    teacher, processor = stages.teacher_stage(run, data["train"], settings=plan["teacher"], training_args=teacher_args,
                                              seed=config.seed, augment=config.augment, **classifier)
    nv = _num_variations(config)
    variations = stages.variations_stage(
        run, data["train"], settings=plan["variations"], variation=variation_factory(config, device),
        batch_size=max(1, config.variation_batch_size // nv), shard_size=config.variation_shard_size,
        reuse_runs=[Path(folder) / STAGES_DIR for folder in config.reuse_variations])
    teacher.to(device)
    detection = stages.detection_stage(
        run, teacher, processor, data["train"], variations, settings=plan["detection"], score=config.detection_score,
        threshold=config.detection_threshold, budget=config.detection_budget)
    return Shared(data, teacher, processor, variations, detection, classifier, training, nv, teacher_args)


def student_arguments(run: RunFolder, config: DefendConfig, shared: Shared, *, distill: bool = True,
                      seed: int | None = None, student_epochs: float | None = None, **training: Any):
    """The training arguments of ``config``'s models on the variations (distilled, or ``variations_ce``'s).

    ``student_epochs`` (default ``config``'s, 3/4 of the teacher's when unset) counts passes over
    the source images: the student takes as many optimiser steps per source image as that many
    teacher epochs; the learning rate is ``config.resolved_student_learning_rate`` (default half the teacher's).
    ``seed`` (default ``config.seed``) orders the data; ``training`` changes other options
    of :func:`~hf_backdoor_guard.pipeline.stages.training_arguments` (e.g. ``learning_rate``).
    """
    epochs = (student_epochs or config.resolved_student_epochs) / shared.num_variations
    distillation = dict(distill=True, alpha=config.alpha, temperature=config.temperature) if distill else {}
    training = {**shared.training, "learning_rate": config.resolved_student_learning_rate, **training}
    return stages.training_arguments(run.path, seed=config.seed if seed is None else seed, epochs=epochs,
                                     **distillation, **training)


def retaught_models(run: RunFolder, config: DefendConfig, shared: Shared, plan: dict, student_args) -> dict:
    """``teacher_kept`` (the teacher trained again on the rows detection kept) and ``student_retaught`` (distilled
    from it on the variations of every row, as the student is from the first teacher), run or reused.

    Why: a trigger the diffusion model keeps as content (a border, a global tint) is in the
    variations of the poisoned rows, and the first teacher still answers the target on it,
    so its soft labels teach the student the backdoor even when detection flagged every
    poisoned row. The second teacher never saw the flagged rows; the student still learns
    from every row's variations, so rows flagged wrongly cost no training data.
    """
    train = stages.kept_rows(shared.data["train"], shared.detection)
    missing = sorted(set(shared.data["train"]["label"]) - set(train["label"]))
    if missing:
        logger.warning("Detection flagged every row of classes %s: the second teacher never sees them, so "
                       "student_retaught will not learn them (--retrain_teacher false keeps the first teacher).",
                       [shared.classifier["label_names"][label] for label in missing])
    teacher, processor = stages.teacher_stage(run, train, settings=plan["teacher_kept"],
                                              training_args=shared.teacher_args, seed=config.seed,
                                              augment=config.augment, name="teacher_kept", **shared.classifier)
    teacher.to(shared.teacher.device)
    logits = stages.logits_stage(run, "teacher_kept_logits", teacher, processor, shared.variations,
                                 settings=plan["teacher_kept_logits"])
    student = stages.student_stage(
        run, "student_retaught", shared.variations, {**shared.detection, "variation_logits": logits},
        settings=plan["student_retaught"], training_args=student_args, seed=config.seed + 1,
        teacher_logits=config.teacher_logits, keep_flagged=True, **shared.classifier)
    return {"teacher_kept": (teacher, processor), "student_retaught": student}


def run_defend(config: DefendConfig, *, train=None, eval_ds=None, attack=None, poison_kwargs=None,
               data_settings: dict | None = None, owner: str = OWNER, report_title: str | None = None) -> dict:
    """Run the method as ``config`` says; return the numbers written to ``metrics.json``.

    See :func:`prepare` for ``train``, ``eval_ds``, ``attack`` and ``poison_kwargs`` (the
    demo passes the digits and the embedded benchmark's attack settings); ``data_settings``
    then describes that data for the stage cache. ``owner`` names the command in the
    output folder's marker (``defend``, ``demo``).
    """
    started = time.time()
    inputs = prepare(config, train=train, eval_ds=eval_ds, attack=attack, poison_kwargs=poison_kwargs,
                     data_settings=data_settings, owner=owner)
    output_dir = Path(config.output_dir)
    device = _process_device(config.resolved_device())
    state = process_state()
    with _claimed(output_dir, owner, config.overwrite, state.is_main):
        run = RunFolder(output_dir / STAGES_DIR, option="--output-dir",
                        restart_hint=", or pass --overwrite to start over (it removes only what backdoor-guard "
                                     "wrote there)")
        plan = run_plan(config, inputs)
        restart_if_data_changed(run, plan)
        run.check({stage: settings for stage, settings in plan.items() if stage != "evaluation"})
        refresh_evaluation(run, plan)  # only after the check: a refused run removes nothing
        shared = shared_stages(run, config, inputs, plan, device)
        student_args = student_arguments(run, config, shared)
        models = {"teacher": (shared.teacher, shared.processor)}
        for name, keep_flagged in (("student", True), ("student_cleaned", False)):
            models[name] = stages.student_stage(
                run, name, shared.variations, shared.detection, settings=plan[name], training_args=student_args,
                seed=config.seed + 1, teacher_logits=config.teacher_logits, keep_flagged=keep_flagged,
                **shared.classifier)
        if config.retrain_teacher:
            models.update(retaught_models(run, config, shared, plan, student_args))
        if config.baselines:
            baseline_args = student_arguments(run, config, shared, distill=False)
            models["variations_ce"] = stages.baseline_stage(run, "variations_ce", shared.variations,
                                                            settings=plan["variations_ce"], training_args=baseline_args,
                                                            seed=config.seed + 1, **shared.classifier)
        models = {name: models[name] for name in evaluated_models(config)}
        for model, _ in models.values():
            model.to(device)
        scores = stages.evaluation_stage(run, models, shared.data["eval"], settings=plan["evaluation"],
                                         attack=inputs.attack, target_label=config.target_label)
        result = None
        if run.is_main_process:
            # Recorded before they are written (the checks before work found none of them to be the user's),
            # so a run killed while writing them leaves names the next run may replace.
            record_outputs(output_dir, RECORDED_WHOLE)
            result = write_outputs(output_dir, run, config, inputs, shared.data, shared.variations, shared.detection,
                                   scores, shipped_model=models[config.shipped_model], started=started,
                                   report_title=report_title)
        run.wait()
    return result if result is not None else {}


def defend_main(config: DefendConfig) -> dict:
    """``run_defend`` with logging for the command line (warnings only on non-main processes)."""
    if not process_state().is_main:
        logging.getLogger("hf_backdoor_guard").setLevel(logging.WARNING)
    return run_defend(config)


__all__ = ["OUTPUT_NAMES", "Inputs", "Shared", "check_folders_apart", "check_output_names", "data_folder", "defend_main",
           "evaluated_models", "prepare", "restart_if_data_changed", "retaught_models", "run_defend", "run_plan", "shared_stages", "student_arguments"]
