"""Every defense on the same poisoned data, same seeds, same budget: the core of ``backdoor-guard compare``.

:func:`run_defenses` checks every defense's inputs and options first, trains the
undefended model once (``"none"``, the reference of every DER and the starting point
of the defenses that need a backdoored model), runs each defense, measures it with the
same C-Acc / ASR / R-Acc functions (:func:`measure_defense`, :func:`evaluate_defense`)
and reports one line per defense. The ``compare`` command
(:mod:`hf_backdoor_guard.benchmark.compare`) runs the project's own method through the
pipeline's stages and each row of :func:`defense_variants` through :func:`measure_defense`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch

from .base import DEFENSES, DefenseResult, resolve_defense, run_defense
from .leaderboard import defense_effectiveness_rating

logger = logging.getLogger(__name__)

TUNED_SUFFIX = "_tuned"

# Options for the embedded digits benchmark where the paper's settings, scaled to its 12-epoch
# budget, leave a baseline far below what it can do there (BadNets, seed 0, measured with
# benchmarks/defenses_smoke.py; BENCHMARKS.md, "defenses"). Chosen with the benchmark's ground
# truth, so they can only flatter the baselines: ``compare`` reports them as separate rows
# (``abl_tuned``, ``activation_clustering_tuned``) beside the papers' settings, never instead of them.
EMBEDDED_BENCHMARK_OPTIONS: dict[str, dict] = {
    # 2.4 isolation epochs at gamma 0.5 end before the batch loss reaches gamma: no poisoned row was
    # isolated (AUROC 0.07, ASR 0.67). 6 epochs at gamma 0.1 isolate 4 of 8 (ASR 0.19).
    "abl": {"gamma": 0.1, "isolation_share": 0.5, "retrain_share": 0.5},
    # The ResNet's 64 penultimate features reduced to ICA's 10 dimensions split the target class
    # wrongly (9 of 73 poisoned rows in its smaller cluster); 2 dimensions isolate 61 of them.
    "activation_clustering": {"num_dims": 2},
}


def evaluate_defense(model, test_ds, attack, target_label: int = 0, image_processor=None, *, triggered_ds=None,
                     batch_size: int = 128, image_column: str = "image", label_column: str = "label") -> dict:
    """C-Acc, ASR and R-Acc of a defended model or of a test-time predictor (``predict_logits(ds)``).

    Plain models go through :func:`~hf_backdoor_guard.evaluate_backdoor`; predictors such as
    :class:`~hf_backdoor_guard.PurifiedClassifier` are scored with the same metric functions.
    """
    from ..evaluation import evaluate_backdoor
    from ..metrics import BackdoorPredictions, backdoor_metrics
    from ..poisoning import triggered_testset
    from ..validation import check_dataset

    if isinstance(model, torch.nn.Module):
        return evaluate_backdoor(model, test_ds, attack, target_label, image_processor, batch_size,
                                 image_column=image_column, label_column=label_column, triggered_ds=triggered_ds,
                                 progress=False)
    if not callable(getattr(model, "predict_logits", None)):
        raise ValueError(f"Cannot evaluate {type(model).__name__}: expected a transformers model or an object "
                         "with predict_logits(ds) (e.g. PurifiedClassifier).")
    check_dataset(test_ds, image_column, label_column)
    if triggered_ds is None:
        triggered_ds = triggered_testset(test_ds, attack, target_label, image_column, label_column)
    clean_predictions = model.predict_logits(test_ds, progress=False).argmax(axis=1)
    triggered_predictions = model.predict_logits(triggered_ds, progress=False).argmax(axis=1)
    measured = BackdoorPredictions(clean_predictions, np.asarray(test_ds[label_column]), triggered_predictions,
                                   np.asarray(triggered_ds["original_label"]), target_label)
    return {metric.name: metric.compute(measured) for metric in backdoor_metrics()}


def detection_record(result: DefenseResult, train) -> dict | None:
    """AUROC of a defense's row scores, and precision/recall of the rows it removed or isolated (research data)."""
    from ..metrics import auroc, detection_metrics

    if result.suspicion is None or "poisoned" not in train.column_names:
        return None
    poisoned = np.asarray(train["poisoned"], dtype=bool)
    if result.kept is None:
        return {"auroc": round(auroc(result.suspicion, poisoned), 4)}
    flagged = ~np.asarray(result.kept, dtype=bool)
    metrics = detection_metrics(result.suspicion, poisoned, flagged=flagged)
    return {**{key: round(float(value), 4) for key, value in metrics.items()}, "flagged": int(flagged.sum())}


def defense_variants() -> dict[str, tuple[str, dict]]:
    """Every row ``compare`` can run: ``{row name: (registered defense, options)}``.

    Each registered defense but ``"none"`` at its class defaults (the papers' settings
    scaled to the budget: the primary rows), then ``<name>_tuned`` for each defense in
    :data:`EMBEDDED_BENCHMARK_OPTIONS` (settings chosen with the embedded benchmark's
    ground truth; separate, labelled rows, never the primary ones).
    """
    rows: dict[str, tuple[str, dict]] = {name: (name, {}) for name in DEFENSES.names() if name != "none"}
    for name, options in EMBEDDED_BENCHMARK_OPTIONS.items():
        if name in DEFENSES:
            rows[f"{name}{TUNED_SUFFIX}"] = (name, dict(options))
    return rows


def progress_line(number: int, total: int, name: str, record: dict, note: str = "") -> str:
    """``[3/9] fine_pruning  C-Acc 0.982  ASR 0.011  R-Acc 0.857  DER 0.992  3 s``: one line per defense."""
    detection = record.get("detection")
    return (f"[{number}/{total}] {name:<27} C-Acc {record['clean_accuracy']:.3f}  "
            f"ASR {record['attack_success_rate']:.3f}  R-Acc {record['robust_accuracy']:.3f}  "
            f"DER {record['der']:.3f}  {record['seconds']:.0f} s"
            + (f"  detection AUROC {detection['auroc']:.3f}" if detection and "auroc" in detection else "")
            + (f"  ({note})" if note else ""))


def measure_defense(defense, poisoned_train, test_ds, attack, *, reference: dict | None, target_label: int = 0,
                    triggered_ds=None, clean_subset=None, backdoored_model=None, image_processor,
                    image_column: str = "image", label_column: str = "label", **common: Any) -> tuple[dict, Any]:
    """Run one defense (a :class:`~.base.Defense` or a name) and measure it: ``(record, result.model)``.

    The record holds the three metrics, ``der`` against ``reference`` (the ``"none"``
    record; ``None`` for ``"none"`` itself), ``seconds`` (the defense plus its evaluation),
    ``assumes``, ``options``, ``info`` and, where the defense scores rows and the data has
    a ``poisoned`` column, ``detection``. ``common`` goes to :func:`run_defense`.
    """
    defense = resolve_defense(defense)
    result = run_defense(defense, poisoned_train, clean_subset=clean_subset if defense.assumes.needs_clean_subset
                         else None, backdoored_model=backdoored_model, image_processor=image_processor,
                         image_column=image_column, label_column=label_column, **common)
    started = time.perf_counter()
    metrics = evaluate_defense(result.model, test_ds, attack, target_label, image_processor,
                               triggered_ds=triggered_ds, image_column=image_column, label_column=label_column)
    seconds = result.seconds + (time.perf_counter() - started)
    record: dict[str, Any] = {key: round(float(value), 4) for key, value in metrics.items()}
    record["der"] = round(defense_effectiveness_rating(reference or record, record), 4)
    record["seconds"] = round(seconds, 1)
    record["assumes"] = result.assumes
    record["options"] = result.info.get("options", {})
    record["info"] = {key: value for key, value in result.info.items() if key != "options"}
    detection = detection_record(result, poisoned_train)
    if detection is not None:
        record["detection"] = detection
    return record, result.model


def run_defenses(
    poisoned_train,
    test_ds,
    attack,
    *,
    model_factory: Callable[[], Any],
    training_args,
    image_processor,
    target_label: int = 0,
    clean_subset=None,
    names: list[str] | None = None,
    options: dict[str, dict] | None = None,
    backdoored_model=None,
    augment: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    triggered_ds=None,
    report: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Run ``names`` (default: every registered defense) on the same data; return one record per defense.

    Each record is :func:`measure_defense`'s: ``clean_accuracy``, ``attack_success_rate``,
    ``robust_accuracy``, ``der`` (against ``"none"``), ``seconds`` (the defense plus its
    evaluation: for test-time purification the evaluation is the defense's work),
    ``assumes``, ``options``, ``info`` (the defense's own facts: pruned channels, isolated
    rows, ...) and, where the defense scores rows and the data has a ``poisoned`` column,
    ``detection`` (AUROC, precision, recall). ``"none"`` always runs first. ``options`` maps
    a defense name to its options (``{"purification": {"variation": hbg.ImageVariation.embedded()}}``).
    ``report`` receives one progress line per defense (default: the module's logger).
    """
    from ..poisoning import triggered_testset
    from ..validation import check_dataset, check_target_label

    report = report or logger.info
    options = dict(options or {})
    chosen = list(DEFENSES.names()) if names is None else list(names)
    unknown = [name for name in list(chosen) + list(options) if name not in DEFENSES]
    if unknown:
        raise ValueError(f"Unknown defense(s) {unknown}; choose from {DEFENSES.names()}.")
    chosen = ["none"] + [name for name in dict.fromkeys(chosen) if name != "none"]
    defenses = {name: resolve_defense(name, **options.get(name, {})) for name in chosen}  # options checked here
    check_target_label(target_label, check_dataset(test_ds, image_column, label_column), label_column)
    if triggered_ds is None:
        triggered_ds = triggered_testset(test_ds, attack, target_label, image_column, label_column)
    needs_clean = [name for name, defense in defenses.items() if defense.assumes.needs_clean_subset]
    if needs_clean and clean_subset is None:
        raise ValueError(f"Defenses {needs_clean} need trusted clean data: pass clean_subset= (BackdoorBench: 5% of "
                         "the training size) or leave them out of names.")

    records: dict[str, dict] = {}
    for number, (name, defense) in enumerate(defenses.items(), 1):
        logger.info("defense %d/%d: %s", number, len(defenses), name)
        record, model = measure_defense(
            defense, poisoned_train, test_ds, attack, reference=records.get("none"), target_label=target_label,
            triggered_ds=triggered_ds, clean_subset=clean_subset, backdoored_model=backdoored_model,
            model_factory=model_factory, training_args=training_args, image_processor=image_processor,
            augment=augment, image_column=image_column, label_column=label_column)
        if name == "none":
            backdoored_model = model  # every later defense starts from the same undefended model
        records[name] = record
        report(progress_line(number, len(defenses), name, record))
    return records
