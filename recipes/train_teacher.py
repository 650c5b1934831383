#!/usr/bin/env python
"""Train the teacher: a classifier on the (possibly poisoned) training split, with transformers' Trainer.

For research the clean data is poisoned first (--attack, --poison_rate, --target_label); C-Acc, ASR
and R-Acc on the evaluation split are logged at every evaluation. The model and its image processor
are saved to OUTPUT_DIR (default RUN_DIR/teacher); a rerun resumes from the last complete checkpoint.

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
    save_arguments,
    setup_logging,
    train_save_evaluate,
)
from transformers import TrainingArguments

from hf_backdoor_guard.data import class_names
from hf_backdoor_guard.training import BackdoorMetricsCallback, build_classifier_trainer


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

    # The classifier: an architecture from scratch, or a saved model with a head for these classes.
    model, processor = model_args.build(class_names(train_ds), seed=training_args.seed)

    # The trainer: random flip/crop, the MultiStep schedule, backdoor metrics at every evaluation.
    callbacks = schedule_args.callbacks(training_args)
    attack = poison_args.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison_args.target_label, processor,
                                                 training_args.per_device_eval_batch_size))
    trainer = build_classifier_trainer(model, train_ds.with_transform(augment_args.transform(processor)),
                                       training_args, processor, eval_dataset=eval_ds, callbacks=callbacks)

    # Train (resuming a killed run), save the model and its processor, evaluate.
    metrics = train_save_evaluate(trainer, run_args, training_args)
    if trainer.is_world_process_zero():
        save_arguments(training_args.output_dir, "train_teacher.py", *all_args)
    return metrics


if __name__ == "__main__":
    main()
