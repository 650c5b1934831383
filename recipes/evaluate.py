#!/usr/bin/env python
"""Measure a classifier's backdoor: C-Acc on the clean test split, ASR and R-Acc for each attack.

Writes a metrics JSON ``{"metrics": {attack: {clean_accuracy, attack_success_rate,
robust_accuracy}}, ...}`` (default RUN_DIR/<model folder>_metrics.json), the shape
``backdoor-guard publish --metrics`` reads.

    python recipes/evaluate.py recipes/configs/cifar10_badnets.yaml                  # the student
    python recipes/evaluate.py recipes/configs/cifar10_badnets.yaml --eval_model runs/cifar10_badnets/teacher
    python recipes/evaluate.py CONFIG.yaml --eval_attacks badnets:trigger=white,size=3 blended:ratio=0.2
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a source checkout without installing the package; recipes/ itself stays off the
# import path, where recipes/evaluate.py would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def main(argv: list[str] | None = None) -> dict | None:
    import logging

    from hf_backdoor_guard import recipe_args as ra
    from hf_backdoor_guard.evaluation import evaluate_backdoor

    all_args = ra.parse_recipe_args("evaluate", argv, description=__doc__.split("\n\n")[0])
    run, data, poison, options = all_args
    state = ra.process_state()
    ra.setup_logging(run.verbosity, state.is_main_process)
    specs = options.eval_attacks or ([poison.attack] if poison.attack is not None else None)
    if not specs:
        raise ValueError("No attack to measure: set attack (the config's) or eval_attacks.")
    if data.eval_split is None:
        raise ValueError("evaluate needs a test split: set eval_split.")
    attacks = {key: ra.attack_from_spec(spec) for key, spec in zip(ra.attack_keys(specs), specs)}
    if not state.is_main_process:
        return None  # one process measures; the test sets are small next to training

    test_ds = ra.load_eval_dataset(data)
    model, processor = ra.load_classifier(options.eval_model, "eval_model")
    model.to(state.device)
    metrics = {}
    for label, attack in attacks.items():
        metrics[label] = evaluate_backdoor(model, test_ds, attack, poison.target_label, processor,
                                           options.eval_batch_size)
        logging.getLogger("evaluate").info("%s on %s: %s", options.eval_model, label, metrics[label])
    report = {
        "model": options.eval_model,
        "dataset": data.dataset_name,
        "dataset_config": data.dataset_config_name,
        "split": data.eval_split,
        "num_test_rows": len(test_ds),
        "target_label": poison.target_label,
        "attacks": {label: {"name": attack.name, **attack.config()} for label, attack in attacks.items()},
        "metrics": metrics,
    }
    path = ra.write_json(options.metrics_file or ra.metrics_path(run, options.eval_model), report)
    logging.getLogger("evaluate").info("Metrics written to %s", path)
    return report


if __name__ == "__main__":
    main()
