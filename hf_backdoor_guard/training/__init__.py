"""Training classifiers: the plain trainer that fits the (possibly backdoored) teacher and the
baselines, with backdoor metrics and a step-decay schedule (``classifier``); the distillation
trainer that fits the student on the image variations with the teacher's soft labels
(``distillation``) and its cache of teacher logits (``teacher_logits``); resuming from complete
checkpoints only (``checkpoints``); and the image transforms and collators they share
(``transforms``). Names are imported on first use, so importing the package loads no torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# the public names (as the old single modules offered them) -> the module defining each; imported on first use
_EXPORTS = {
    "ImageClassifierTrainer": "classifier",
    "BackdoorMetricsCallback": "classifier",
    "MultiStepLRCallback": "classifier",
    "build_classifier_trainer": "classifier",
    "train_classifier": "classifier",
    "distillation_loss": "distillation",
    "DistillationTrainingArguments": "distillation",
    "DistillationTrainer": "distillation",
    "precompute_teacher_logits": "teacher_logits",
    "last_complete_checkpoint": "checkpoints",
    "ImageClassificationTransform": "transforms",
    "ImageClassificationCollator": "transforms",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


def __dir__():
    return sorted(set(globals()) | set(__all__))
