#!/usr/bin/env python
"""Train the student: knowledge distillation from the teacher on the diffusion variations.

The student never sees an original (possibly triggered) training image: it learns from the
variations (RUN_DIR/variations, or a Hub dataset) with the teacher's soft labels,
loss = alpha * T^2 * KL + (1 - alpha) * CE (paper: alpha 0.5, T 10). It is saved to
OUTPUT_DIR (default RUN_DIR/student); a rerun resumes from the last complete checkpoint.

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
    save_arguments,
    setup_logging,
    train_save_evaluate,
)

from hf_backdoor_guard.data import load_image_splits
from hf_backdoor_guard.distillation import (
    DistillationTrainer,
    DistillationTrainingArguments,
)
from hf_backdoor_guard.loading import load_image_classifier
from hf_backdoor_guard.teacher_logits import precompute_teacher_logits
from hf_backdoor_guard.training import BackdoorMetricsCallback


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
    teacher, teacher_processor = load_image_classifier(student_args.teacher_model_name_or_path, "teacher")
    if teacher_processor is None:
        raise ValueError(f"teacher {student_args.teacher_model_name_or_path} has no image processor.")
    variations, _ = load_image_splits(student_args.variations_dataset, student_args.variations_split,
                                      option="variations_dataset")
    with training_args.main_process_first(desc="loading the data"):
        _, eval_ds = load_splits(data_args, train=False)

    # The student, with the teacher's classes in the teacher's order.
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    model, processor = model_args.build(names, seed=training_args.seed)

    # The trainer: the MultiStep schedule, backdoor metrics at every evaluation, random flip/crop when
    # --augment (the teacher then sees the same augmented image; with cached logits it needs no pixels).
    callbacks = schedule_args.callbacks(training_args)
    attack = poison_args.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison_args.target_label, processor,
                                                 training_args.per_device_eval_batch_size))
    cached = student_args.cache_teacher_logits
    transform = augment_args.transform(processor, enabled=training_args.augment,
                                       teacher_image_processor=None if cached else teacher_processor)

    def distillation_trainer(train_ds):
        return DistillationTrainer(
            model=model, teacher_model=teacher, args=training_args, train_dataset=train_ds.with_transform(transform),
            eval_dataset=eval_ds, processing_class=processor, teacher_processing_class=teacher_processor,
            callbacks=callbacks)

    if cached:
        def with_teacher_logits(ds):
            return precompute_teacher_logits(teacher, ds, teacher_processor, device=training_args.device,
                                             batch_size=training_args.per_device_eval_batch_size)

        # The trainer's checks (a logits cache needs augmentation off, ...) run first, on one row: a refusal
        # comes before the teacher's pass over every variation.
        distillation_trainer(with_teacher_logits(variations.select(range(1))))
        with training_args.main_process_first(desc="teacher logits"):
            variations = with_teacher_logits(variations)
    trainer = distillation_trainer(variations)

    # Train (resuming a killed run), save the model and its processor, evaluate.
    metrics = train_save_evaluate(trainer, run_args, training_args)
    if trainer.is_world_process_zero():
        save_arguments(training_args.output_dir, "train_student.py", *all_args)
    return metrics


if __name__ == "__main__":
    main()
