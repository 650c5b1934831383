#!/usr/bin/env python
"""Train the student: knowledge distillation from the teacher on the diffusion variations.

The student never sees an original (possibly triggered) training image: it learns from the
variations (RUN_DIR/variations, or a Hub dataset) with the teacher's soft labels,
loss = alpha * T^2 * KL + (1 - alpha) * CE (paper: alpha 0.5, T 10); the teacher runs online on
the same augmented images, or once over the variations with --cache_teacher_logits. The student is
saved to OUTPUT_DIR (default RUN_DIR/student) with the trainer's state and metrics. A killed run
resumes from its last complete checkpoint; a finished one is reused, and a rerun with other options
(or after the teacher or the variations were made again) is refused, naming them (--overwrite
replaces it).

    accelerate launch recipes/train_student.py --config recipes/configs/cifar10.yaml
    accelerate launch recipes/train_student.py --config CONFIG.yaml --teacher_model_name_or_path user/teacher
    python recipes/train_student.py --help
"""

from __future__ import annotations

from recipe_arguments import (
    AugmentArguments,
    DataArguments,
    ModelArguments,
    PoisonArguments,
    RunArguments,
    ScheduleArguments,
    StudentArguments,
    load_splits,
    parse_arguments,
    run_folder,
    save_arguments,
    setup_logging,
    stage_settings,
)

from hf_backdoor_guard.data import load_image_splits
from hf_backdoor_guard.training.distillation import DistillationTrainingArguments
from hf_backdoor_guard.loading import load_image_classifier
from hf_backdoor_guard.pipeline import output_finished, student_stage
from hf_backdoor_guard.training.classifier import BackdoorMetricsCallback


def main(argv: list[str] | None = None) -> dict:
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    all_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments, ScheduleArguments,
         StudentArguments, DistillationTrainingArguments),
        argv, run_paths={"output_dir": "student", "teacher_model_name_or_path": "teacher",
                         "variations_dataset": "variations"},
        description=__doc__.split("\n\n")[0])
    run_args, data_args, poison_args, model_args, augment_args, schedule_args, student_args, training_args = all_args
    setup_logging(run_args, training_args.process_index == 0)

    # The teacher, the variations it labels, and the clean evaluation split.
    teacher_path, variations_path = student_args.teacher_model_name_or_path, student_args.variations_dataset
    teacher, teacher_processor = load_image_classifier(teacher_path, "teacher")
    if teacher_processor is None:
        raise ValueError(f"teacher {teacher_path} has no image processor.")
    variations, _ = load_image_splits(variations_path, student_args.variations_split, option="variations_dataset")
    with training_args.main_process_first(desc="loading the data"):
        _, eval_ds = load_splits(data_args, train=False)

    # The callbacks: the MultiStep schedule, backdoor metrics at every evaluation.
    callbacks = schedule_args.callbacks(training_args)
    attack = poison_args.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison_args.target_label,
                                                 batch_size=training_args.per_device_eval_batch_size))

    # The student stage, with the teacher's classes in the teacher's order: random flip/crop when --augment
    # (the online teacher sees the same augmented image), or the teacher's logits cached once. Its settings
    # hold when the teacher and the variations it reads were made, so a student of an older teacher is refused.
    run, name = run_folder(training_args.output_dir, run_args)
    settings = stage_settings(data_args, poison_args, model_args, augment_args, schedule_args, student_args,
                              training_args=training_args, teacher_finished=output_finished(teacher_path),
                              variations_finished=output_finished(variations_path))
    student_stage(
        run, name, variations, None, settings=settings,
        label_names=[teacher.config.id2label[i] for i in range(teacher.config.num_labels)],
        training_args=training_args, seed=training_args.seed, teacher=teacher, teacher_processor=teacher_processor,
        cache_teacher_logits=student_args.cache_teacher_logits, flip_probability=augment_args.flip_probability,
        crop_padding=augment_args.crop_padding, eval_dataset=eval_ds, callbacks=callbacks,
        resume_from_checkpoint=training_args.resume_from_checkpoint or run_args.resume, keep_checkpoints=True,
        save_metrics=True, **model_args.classifier())
    if run.is_main_process:
        save_arguments(training_args.output_dir, "train_student.py", *all_args)
    return run.record(name)["details"].get("eval_metrics", {})


if __name__ == "__main__":
    main()
