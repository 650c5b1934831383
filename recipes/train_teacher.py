#!/usr/bin/env python
"""Train the teacher: a classifier on the (possibly poisoned) training split, with transformers' Trainer.

For research the clean data is poisoned first (--attack, --poison_rate, --target_label); C-Acc, ASR
and R-Acc on the evaluation split are logged at every evaluation. The model and its image processor
are saved to OUTPUT_DIR (default RUN_DIR/teacher) with the trainer's state and metrics. A killed run
resumes from its last complete checkpoint (OUTPUT_DIR-checkpoints); a finished one is reused, and a
rerun with other options is refused, naming them (--overwrite replaces it).

    accelerate launch recipes/train_teacher.py --config recipes/configs/cifar10.yaml
    accelerate launch recipes/train_teacher.py --config recipes/configs/cifar10.yaml --num_train_epochs 1
    python recipes/train_teacher.py --help
"""

from __future__ import annotations

from recipe_arguments import (
    AugmentArguments,
    DataArguments,
    ModelArguments,
    PoisonArguments,
    RunArguments,
    ScheduleArguments,
    load_splits,
    parse_arguments,
    run_folder,
    save_arguments,
    setup_logging,
    stage_settings,
)
from transformers import TrainingArguments

from hf_backdoor_guard.data import class_names
from hf_backdoor_guard.pipeline import teacher_stage
from hf_backdoor_guard.training.classifier import BackdoorMetricsCallback


def main(argv: list[str] | None = None) -> dict:
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    all_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments, ScheduleArguments,
         TrainingArguments),
        argv, run_paths={"output_dir": "teacher"}, description=__doc__.split("\n\n")[0])
    run_args, data_args, poison_args, model_args, augment_args, schedule_args, training_args = all_args
    setup_logging(run_args, training_args.process_index == 0)

    # Data: the training split (poisoned for research) and the clean evaluation split.
    with training_args.main_process_first(desc="loading the data"):
        train_ds, eval_ds = load_splits(data_args, poison_args)

    # The callbacks: the MultiStep schedule, backdoor metrics at every evaluation.
    callbacks = schedule_args.callbacks(training_args)
    attack = poison_args.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison_args.target_label,
                                                 batch_size=training_args.per_device_eval_batch_size))

    # The teacher stage: an architecture from scratch or a saved model with a head for these classes, trained
    # with random flip/crop, evaluated and saved; skipped when the run folder holds it with these options.
    run, name = run_folder(training_args.output_dir, run_args)
    teacher_stage(
        run, train_ds, name=name,
        settings=stage_settings(data_args, poison_args, model_args, augment_args, schedule_args,
                                training_args=training_args),
        label_names=class_names(train_ds), training_args=training_args, seed=training_args.seed, augment=True,
        flip_probability=augment_args.flip_probability, crop_padding=augment_args.crop_padding, eval_dataset=eval_ds,
        callbacks=callbacks, resume_from_checkpoint=training_args.resume_from_checkpoint or run_args.resume,
        keep_checkpoints=True, save_metrics=True, **model_args.classifier())
    if run.is_main_process:
        save_arguments(training_args.output_dir, "train_teacher.py", *all_args)
    return run.record(name)["details"].get("eval_metrics", {})


if __name__ == "__main__":
    main()
