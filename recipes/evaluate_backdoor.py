#!/usr/bin/env python
"""Measure a classifier's backdoor: C-Acc on the clean evaluation split, ASR and R-Acc for each attack.

Writes a metrics JSON ``{"metrics": {attack: {clean_accuracy, attack_success_rate,
robust_accuracy}}, ...}`` (default RUN_DIR/<model folder>_metrics.json), the shape
``backdoor-guard publish --metrics`` reads. One process measures (the others of a launch exit).

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
    setup_logging,
)

from hf_backdoor_guard.attacks.specs import attack_from_spec, attack_keys
from hf_backdoor_guard.evaluation import evaluate_backdoor
from hf_backdoor_guard.loading import load_image_classifier
from hf_backdoor_guard.outputs import write_json_atomic
from hf_backdoor_guard.pipeline import process_state

logger = logging.getLogger("recipes.evaluate_backdoor")


def main(argv: list[str] | None = None) -> dict | None:
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    run_args, data_args, poison_args, eval_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, EvaluateArguments),
        argv, run_paths={"eval_model": "student"}, description=__doc__.split("\n\n")[0])
    processes = process_state()
    setup_logging(run_args, processes.is_main)

    # The attacks to measure: --eval_attacks, else the config's attack.
    specs = eval_args.eval_attacks or ([poison_args.attack] if poison_args.attack is not None else [])
    if not specs:
        raise ValueError("No attack to measure: set --attack (or the config's attack) or --eval_attacks.")
    attacks = {key: attack_from_spec(spec) for key, spec in zip(attack_keys(specs), specs)}
    if not processes.is_main:
        return None  # the test split is small next to training: one process measures it

    # The clean evaluation split and the model.
    _, test_ds = load_splits(data_args, train=False)
    if test_ds is None:
        raise ValueError(f"dataset_name {data_args.dataset_name} has no evaluation split: set --eval_split.")
    model, processor = load_image_classifier(eval_args.eval_model, "eval_model")
    if processor is None:
        raise ValueError(f"eval_model {eval_args.eval_model} has no image processor.")
    model.to(PartialState().device)

    metrics = {}
    for key, attack in attacks.items():
        metrics[key] = evaluate_backdoor(model, test_ds, attack, poison_args.target_label, processor,
                                         eval_args.eval_batch_size)
        logger.info("%s, %s: %s", eval_args.eval_model, key, metrics[key])
    report = {
        "model": eval_args.eval_model,
        "dataset": data_args.dataset_name,
        "dataset_config": data_args.dataset_config_name,
        "split": data_args.eval_split,
        "num_test_rows": len(test_ds),
        "target_label": poison_args.target_label,
        "attacks": {key: {"name": attack.name, **attack.config()} for key, attack in attacks.items()},
        "metrics": metrics,
    }
    model_name = Path(str(eval_args.eval_model).rstrip("/\\")).name or "model"
    path = eval_args.metrics_file or os.path.join(run_args.run_dir, f"{model_name}_metrics.json")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report, sort_keys=True)
    logger.info("Metrics written to %s", path)
    return report


if __name__ == "__main__":
    main()
