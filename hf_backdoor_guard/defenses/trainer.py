"""The Trainer that defenses with their own loss subclass (ABL's LGA and unlearning, NAD's attention loss).

It is the project's :class:`~hf_backdoor_guard.training.ImageClassifierTrainer` (plain
``transformers.Trainer`` plus safe checkpoint reloads) set up the way
:func:`~hf_backdoor_guard.training.train_classifier` sets it up (raw image datasets through
:class:`~hf_backdoor_guard.ImageClassificationTransform`, the project's collator), with a
``defense_loss(model, inputs)`` hook instead of the model's own loss. ``train_classifier``
has no way to choose the trainer class, hence this small setup of its own.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..training import ImageClassifierTrainer
from ..transforms import ImageClassificationCollator, prepare_image_dataset


class DefenseTrainer(ImageClassifierTrainer):
    """``ImageClassifierTrainer`` whose training loss is :meth:`defense_loss` (per-batch mean)."""

    # defense_loss returns a per-batch mean, so the Trainer must divide by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(self, *, model, args, train_dataset, processing_class, augment: bool = True,
                 image_column: str = "image", label_column: str = "label", **kwargs: Any):
        if args.remove_unused_columns:  # the raw image column must reach the transform
            args = copy.copy(args)
            args.remove_unused_columns = False
        train_view = prepare_image_dataset(
            train_dataset, processing_class, augment=augment, image_column=image_column,
            label_column=label_column, name="train_dataset",
        )
        super().__init__(model=model, args=args, data_collator=ImageClassificationCollator(),
                         train_dataset=train_view, processing_class=processing_class, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss ignores num_items_in_batch
        self.image_column, self.label_column = image_column, label_column

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
