#!/usr/bin/env python
"""Train the teacher: a classifier on the (possibly poisoned) training data, with transformers' Trainer.

For research the clean data can be poisoned first (--attack, --poison_rate, --target_label);
C-Acc, ASR and R-Acc on the test split are logged at every evaluation. The model and its
image processor are saved to OUTPUT_DIR (default RUN_DIR/teacher).

    accelerate launch recipes/train_teacher.py recipes/configs/cifar10_badnets.yaml
    accelerate launch recipes/train_teacher.py recipes/configs/cifar10_badnets.yaml --num_train_epochs 1
    python recipes/train_teacher.py --help
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
    from hf_backdoor_guard.training import BackdoorMetricsCallback, train_classifier

    all_args = ra.parse_recipe_args("train_teacher", argv, description=__doc__.split("\n\n")[0])
    run, data, poison, model_args, augment, schedule, training = all_args
    ra.setup_logging(run.verbosity, training.process_index == 0)

    train_ds = ra.load_train_dataset(data, poison, training.main_process_first)
    eval_ds = ra.load_eval_dataset(data, training.main_process_first)
    model, processor = ra.build_classifier(model_args, ra.label_names(train_ds), seed=training.seed)

    callbacks = ra.schedule_callbacks(schedule, training)
    attack = poison.build_attack()
    if attack is not None and eval_ds is not None:
        callbacks.append(BackdoorMetricsCallback(eval_ds, attack, poison.target_label, processor,
                                                 training.per_device_eval_batch_size))
    trainer = train_classifier(
        model, train_ds.with_transform(ra.train_transform(processor, augment)), training, processor,
        eval_dataset=eval_ds, callbacks=callbacks, train=False,
    )
    return ra.run_training(trainer, "train_teacher", run, training, all_args)


if __name__ == "__main__":
    main()
