#!/usr/bin/env python
"""Measure a classifier's backdoor: C-Acc on the clean evaluation split, ASR and R-Acc for each attack.

Writes a metrics JSON ``{"metrics": {attack: {clean_accuracy, attack_success_rate,
robust_accuracy}}, ...}`` (default RUN_DIR/<model folder>_metrics.json), the shape
``backdoor-guard publish --metrics`` reads. The main process measures (under a launcher the
others wait). Each model's metrics are their own stage of the run folder: a rerun reuses
them, and a rerun with other options (or after the model was trained again) is refused,
naming them (--overwrite measures again).

    python recipes/evaluate_backdoor.py --config recipes/configs/cifar10.yaml                # the student
    python recipes/evaluate_backdoor.py --config recipes/configs/cifar10.yaml --eval_model runs/cifar10/teacher
    python recipes/evaluate_backdoor.py --config CONFIG.yaml --eval_attacks badnets:trigger=white,size=3 blended
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from accelerate import PartialState
from recipe_arguments import (
    DataArguments,
    EvaluateArguments,
    PoisonArguments,
    RunArguments,
    load_splits,
    parse_arguments,
    run_folder,
    setup_logging,
    stage_settings,
)

from hf_backdoor_guard.attacks.specs import attack_from_spec, attack_keys
from hf_backdoor_guard.loading import load_image_classifier
from hf_backdoor_guard.pipeline import evaluation_stage, output_finished

logger = logging.getLogger("recipes.evaluate_backdoor")


def main(argv: list[str] | None = None) -> dict:
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    run_args, data_args, poison_args, eval_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, EvaluateArguments),
        argv, run_paths={"eval_model": "student"}, description=__doc__.split("\n\n")[0])
    state = PartialState()
    setup_logging(run_args, state.is_main_process)

    # The attacks to measure: --eval_attacks, else the config's attack.
    specs = eval_args.eval_attacks or ([poison_args.attack] if poison_args.attack is not None else [])
    if not specs:
        raise ValueError("No attack to measure: set --attack (or the config's attack) or --eval_attacks.")
    attacks = {key: attack_from_spec(spec) for key, spec in zip(attack_keys(specs), specs)}
    described = {key: {"name": attack.name, **attack.config()} for key, attack in attacks.items()}

    # The clean evaluation split and the model.
    with state.main_process_first():
        _, test_ds = load_splits(data_args, train=False)
    if test_ds is None:
        raise ValueError(f"dataset_name {data_args.dataset_name} has no evaluation split: set --eval_split.")
    model, processor = load_image_classifier(eval_args.eval_model, "eval_model")
    if processor is None:
        raise ValueError(f"eval_model {eval_args.eval_model} has no image processor.")
    model.to(state.device)

    # The evaluation stage of this model: its own name in the run folder (RUN_DIR/student_metrics.json beside
    # RUN_DIR/teacher_metrics.json), with the report's entries beside the metrics.
    model_name = Path(str(eval_args.eval_model).rstrip("/\\")).name or "model"
    metrics_file = eval_args.metrics_file or os.path.join(run_args.run_dir, f"{model_name}_metrics.json")
    run, name = run_folder(metrics_file, run_args, option="--metrics_file", stage=Path(metrics_file).stem)
    settings = stage_settings(data_args, eval_args, target_label=poison_args.target_label, attacks=described,
                              model_finished=output_finished(eval_args.eval_model))
    report = evaluation_stage(
        run, (model, processor), test_ds, settings=settings, attacks=attacks, target_label=poison_args.target_label,
        batch_size=eval_args.eval_batch_size, name=name, output=Path(metrics_file).name,
        describe={"model": eval_args.eval_model, "dataset": data_args.dataset_name,
                  "dataset_config": data_args.dataset_config_name, "split": data_args.eval_split,
                  "num_test_rows": len(test_ds), "target_label": poison_args.target_label, "attacks": described})
    for key, values in report["metrics"].items():
        logger.info("%s, %s: %s", eval_args.eval_model, key, values)
    logger.info("Metrics in %s", metrics_file)
    return report


if __name__ == "__main__":
    main()
