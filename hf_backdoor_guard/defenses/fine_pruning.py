"""Fine-pruning (Liu et al., RAID 2018): prune dormant channels, then fine-tune on clean data.

Assumes: a small clean subset (BackdoorBench: 5% of the training size); the backdoored
model and the right to fine-tune it; a model with a convolutional stage; no extra
inference cost.

A backdoor often lives in channels that clean inputs leave dormant. Channels of the
last convolutional stage are ranked by their mean activation on the clean subset and
masked (their output set to zero), most dormant first, in steps of ``prune_step`` of
the channels, as long as the clean subset's accuracy stays within
``max_accuracy_drop`` (relative) of the unpruned model's (BackdoorBench: steps of 1%,
10%). The pruned model is then fine-tuned on the clean subset, mask in place.

The mask is a forward hook on the stage module, so it lives with the model object in
memory: ``save_pretrained`` does not store it. ``info["pruned_channels"]`` lists the
channels; :func:`mask_channels` puts the mask back on a reloaded model.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..validation import check_fraction, check_number
from .base import (
    DEFENSES,
    Assumptions,
    Defense,
    DefenseInputs,
    DefenseResult,
    accuracy_on,
    conv_stage_outputs,
    require_conv_stages,
)

logger = logging.getLogger(__name__)


def last_conv_stage(model, pixel_values: torch.Tensor) -> tuple[str, torch.nn.Module]:
    """The outermost module whose output is the last feature-map stage of ``output_hidden_states``.

    Found by running ``model`` once with a forward hook on every module and keeping those
    that return that very tensor (for a transformers ResNet: ``resnet.encoder.stages.N``).
    """
    outputs: dict[str, list] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out))
               for name, module in model.named_modules() if name]
    try:
        stages = conv_stage_outputs(model, pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    if not stages:
        raise ValueError(f"{type(model).__name__} has no convolutional stage.")
    last = stages[-1]
    matches = [name for name, values in outputs.items() if any(value is last for value in values)]
    if not matches:
        raise ValueError(f"No module of {type(model).__name__} returns its last feature-map stage directly, "
                         "so its channels cannot be masked.")
    name = min(matches, key=len)  # the outermost: a stage rather than its last layer
    return name, model.get_submodule(name)


class ChannelMask:
    """Forward hook that zeroes chosen output channels of a feature-map module."""

    def __init__(self, module: torch.nn.Module, num_channels: int):
        self.keep = torch.ones(num_channels)
        self.handle = module.register_forward_hook(self)

    def set_pruned(self, channels) -> None:
        self.keep = torch.ones_like(self.keep)
        self.keep[list(channels)] = 0.0

    def __call__(self, module, args, output):
        return output * self.keep.to(output.device, output.dtype)[None, :, None, None]

    def remove(self) -> None:
        self.handle.remove()


def mask_channels(model, channels, pixel_values: torch.Tensor) -> ChannelMask:
    """Zero ``channels`` of ``model``'s last convolutional stage (e.g. after reloading a fine-pruned model)."""
    _, module = last_conv_stage(model, pixel_values)
    width = conv_stage_outputs(model, pixel_values)[-1].shape[1]
    mask = ChannelMask(module, width)
    mask.set_pruned(channels)
    return mask


def mean_channel_activation(model, module, ds, image_processor, image_column: str) -> np.ndarray:
    """Mean activation of each output channel of ``module`` over ``ds`` (and over space)."""
    from ..evaluation import predict_logits

    sums: list[torch.Tensor] = []

    def keep(_module, _args, output):
        sums.append(output.detach().float().mean(dim=(2, 3)).sum(dim=0).cpu())

    handle = module.register_forward_hook(keep)
    try:
        predict_logits(model, ds, image_processor, batch_size=128, image_column=image_column, progress=False)
    finally:
        handle.remove()
    return (torch.stack(sums).sum(dim=0) / len(ds)).numpy()


@DEFENSES.register
@dataclass
class FinePruning(Defense):
    """Fine-pruning (Liu et al. 2018). Needs a clean subset, the backdoored model and a conv stage.

    Args:
        max_accuracy_drop: relative drop of clean-subset accuracy tolerated while pruning
            (BackdoorBench ``acc_ratio``: 0.1).
        prune_step: share of the stage's channels pruned per step (BackdoorBench: 0.01).
        finetune_share: fine-tuning epochs on the clean subset, as a share of the
            undefended training's epochs (BackdoorBench: as many as the training, 1.0).
    """

    name: ClassVar[str] = "fine_pruning"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="a clean subset (BackdoorBench: 5% of the training size)",
        training="prunes and fine-tunes the backdoored model on the clean subset; needs a convolutional stage",
        inference_cost="none",
        needs_clean_subset=True,
        needs_backdoored_model=True,
    )

    max_accuracy_drop: float = 0.1
    prune_step: float = 0.01
    finetune_share: float = 1.0

    def __post_init__(self):
        check_fraction("max_accuracy_drop", self.max_accuracy_drop)
        check_fraction("prune_step", self.prune_step, low_inclusive=False)
        check_number("finetune_share", self.finetune_share, 0.0, None)

    def check(self, inputs: DefenseInputs) -> None:
        model = inputs.backdoored_model if inputs.backdoored_model is not None else inputs.new_model()
        require_conv_stages(model, inputs.sample_pixels(), self.name)

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        clean, processor, column = inputs.clean_subset, inputs.image_processor, inputs.image_column
        model = copy.deepcopy(inputs.backdoored_model)
        model.eval()
        pixels = inputs.sample_pixels()
        stage_name, stage = last_conv_stage(model, pixels)
        activation = mean_channel_activation(model, stage, clean, processor, column)
        order = np.argsort(activation, kind="mergesort")  # most dormant first
        width = len(order)
        mask = ChannelMask(stage, width)

        def clean_accuracy() -> float:
            return accuracy_on(model, clean, processor, image_column=column, label_column=inputs.label_column)

        start_accuracy = clean_accuracy()
        step = max(1, math.ceil(self.prune_step * width))
        pruned = 0
        for count in range(step, width, step):  # never every channel
            mask.set_pruned(order[:count])
            accuracy = clean_accuracy()
            if start_accuracy - accuracy > self.max_accuracy_drop * start_accuracy:
                break
            pruned = count
        mask.set_pruned(order[:pruned])
        pruned_accuracy = clean_accuracy()
        logger.info("[fine_pruning] masked %d of %d channels of %s (clean-subset accuracy %.3f -> %.3f)",
                    pruned, width, stage_name, start_accuracy, pruned_accuracy)
        if self.finetune_share > 0:
            model = inputs.fit(model, clean, "finetune", self.finetune_share * inputs.epochs)
        model.eval()
        return self.result(model, info={
            "stage": stage_name,
            "channels": width,
            "pruned_channels": sorted(int(channel) for channel in order[:pruned]),
            "clean_subset_accuracy": {"before": start_accuracy, "pruned": pruned_accuracy},
        })
