"""The Trainer that defenses with their own loss subclass (ABL's LGA and unlearning, NAD's attention loss).

It is the project's :class:`~hf_backdoor_guard.training.classifier.ImageClassifierTrainer` with a
``defense_loss(model, inputs)`` hook instead of the model's own loss; it is built by
:func:`~hf_backdoor_guard.training.classifier.build_classifier_trainer` (``trainer_class=``), which
sets up the raw image datasets and the collator exactly as for every other model.
"""

from __future__ import annotations

from typing import Any

import torch

from ..training.classifier import ImageClassifierTrainer


class DefenseTrainer(ImageClassifierTrainer):
    """``ImageClassifierTrainer`` whose training loss is :meth:`defense_loss` (per-batch mean)."""

    # defense_loss returns a per-batch mean, so the Trainer must divide by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss ignores num_items_in_batch

    def defense_loss(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the plain cross-entropy
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.defense_loss(model, dict(inputs))
        if return_outputs:
            outputs["loss"] = loss
            return loss, outputs
        return loss
