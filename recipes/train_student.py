#!/usr/bin/env python
"""Train the student: knowledge distillation from the teacher on the diffusion variations.

The student never sees an original (possibly triggered) training image: it learns from
the variations (RUN_DIR/variations, or a Hub dataset) with the teacher's soft labels,
loss = alpha * T^2 * KL + (1 - alpha) * CE (paper: alpha 0.5, T 10). It is saved to
OUTPUT_DIR (default RUN_DIR/student).

    accelerate launch recipes/train_student.py recipes/configs/cifar10_badnets.yaml
    accelerate launch recipes/train_student.py CONFIG.yaml --teacher_model_name_or_path user/teacher
    python recipes/train_student.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a source checkout without installing the package; recipes/ itself stays off the
# import path, where recipes/evaluate.py would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def main(argv: list[str] | None = None) -> dict:
    from hf_backdoor_guard import recipe_args as ra
    from hf_backdoor_guard.distillation import DistillationTrainer, precompute_teacher_logits
    from hf_backdoor_guard.training import BackdoorMetricsCallback
    from hf_backdoor_guard.validation import check_dataset

    all_args = ra.parse_recipe_args("train_student", argv, description=__doc__.split("\n\n")[0])
    run, data, poison, model_args, augment, schedule, student, training = all_args
    ra.setup_logging(run.verbosity, training.process_index == 0)
    if student.cache_teacher_logits and training.augment and augment.active:
        raise ValueError("cache_teacher_logits needs augmentation off (--augment false): cached logits belong to "
                         "the unaugmented variations.")

    teacher, teacher_processor = ra.load_classifier(student.teacher_model_name_or_path, "teacher")
    variations = ra.load_split(student.variations_dataset, student.variations_split, option="variations_dataset")
    check_dataset(variations, training.image_column, training.label_column)
    eval_ds = ra.load_eval_dataset(data, training.main_process_first)
    # The student shares the teacher's label set, in the teacher's order.
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    model, processor = ra.build_classifier(model_args, names, seed=training.seed)

    if student.cache_teacher_logits:
        with training.main_process_first(desc="teacher logits"):
            variations = precompute_teacher_logits(
                teacher, variations, teacher_processor, batch_size=training.per_device_eval_batch_size,
                image_column=training.image_column, device=training.device,
            )

    callbacks = ra.schedule_callbacks(schedule, training)
    attack = poison.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison.target_label, processor,
                                                 training.per_device_eval_batch_size))
    # With cached logits the teacher never sees the training images, so they need no teacher pixels.
    transform = ra.train_transform(processor, augment, enabled=training.augment,
                                   teacher_image_processor=None if student.cache_teacher_logits else teacher_processor)
    trainer = DistillationTrainer(
        model=model, teacher_model=teacher, args=training, train_dataset=variations.with_transform(transform),
        eval_dataset=eval_ds, processing_class=processor, teacher_processing_class=teacher_processor,
        callbacks=callbacks,
    )
    return ra.run_training(trainer, "train_student", run, training, all_args)


if __name__ == "__main__":
    main()
