"""hf-backdoor-guard: robust training on possibly poisoned image data.

Teacher on the poisoned data -> diffusion variations of every image -> student
distilled from the teacher on the variations (Struppek et al., 2023).

Names are imported lazily so that ``import hf_backdoor_guard`` and the CLI start
fast; the heavy libraries (torch, transformers, diffusers) load on first use.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Attack": "attacks",
    "BadNets": "attacks",
    "Blended": "attacks",
    "WaNet": "attacks",
    "SIG": "attacks",
    "LabelConsistent": "attacks",
    "FTrojan": "attacks",
    "BppAttack": "attacks",
    "AdaptiveBlend": "attacks",
    "AdaptivePatch": "attacks",
    "LowFrequency": "attacks",
    "Border": "attacks",
    "Tint": "attacks",
    "Stroke": "attacks",
    "SurvivingTrigger": "attacks",
    "poison_dataset": "poisoning",
    "triggered_testset": "poisoning",
    "evaluate_backdoor": "evaluation",
    "predict_logits": "evaluation",
    "load_metric": "metrics",
    "clean_accuracy": "metrics",
    "attack_success_rate": "metrics",
    "robust_accuracy": "metrics",
    "attack_from_name": "attacks",
    "detection_metrics": "metrics",
    "suspicion_scores": "detection",
    "ImageVariation": "variations",
    "generate_variations": "variations",
    "merge_variation_shards": "variations",
    "DistillationTrainingArguments": "training.distillation",
    "DistillationTrainer": "training.distillation",
    "precompute_teacher_logits": "training.distillation",
    "ImageClassificationTransform": "training.transforms",
    "ImageClassificationCollator": "training.transforms",
    "train_classifier": "training.classifier",
    "build_classifier_trainer": "training.classifier",
    "MultiStepLRCallback": "training.classifier",
    "last_complete_checkpoint": "training.checkpoints",
    "BackdoorMetricsCallback": "training.classifier",
    "load_digits_dataset": "data",
    "load_fashion_mnist": "data",
    "load_image_splits": "data",
    "run_defend": "pipeline",
    "DefendConfig": "pipeline",
    "build_classifier": "pipeline",
    "publish_model": "hub.publish",
    "CardInfo": "hub.cards",
    "publish_dataset": "hub.publish",
    "load_robust_model": "hub.publish",
    "detect_poisoned": "detection",
    "clean_dataset": "detection",
    "DEFENSES": "defenses",
    "run_defense": "defenses",
    "run_defenses": "defenses",
    "PurifiedClassifier": "defenses",
    "trigger_survival": "robustness_checks",
    "retuning_check": "robustness_checks",
    "compare_retuning": "robustness_checks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


def __dir__():
    return __all__
