"""NAD, Neural Attention Distillation (Li et al., ICLR 2021): erase a backdoor with a clean subset.

Assumes: a small clean subset (BackdoorBench: 5% of the training size); the backdoored
model and the right to fine-tune it; a model with convolutional stages; no extra
inference cost.

1. **Teacher.** A copy of the backdoored model is fine-tuned on the clean subset.
2. **Distillation.** The backdoored model is trained on the clean subset with
   ``CE + sum_k beta_k * AT_k``, where ``AT_k`` is the mean squared difference of the
   student's and teacher's attention maps at stage ``k``. An attention map is the sum
   over channels of the squared activations (``power`` 2), L2-normalised over space; the
   stages are the feature-map ``hidden_states`` of the model (``output_hidden_states``).

Paper / BackdoorBench settings: teacher 10 epochs, NAD 20 (paper) or 100 (BackdoorBench,
as many as the training) epochs, betas 500 / 1000 / 1000 on the last three stages of a
ResNet, power 2. Here ``betas`` are listed from the last stage backwards, and the phases
keep the paper's 1:2 ratio: the teacher gets as many epochs as the undefended training
(``teacher_share`` 1.0) and distillation twice as many (``distill_share`` 2.0); a clean
subset of a few dozen rows gives only a couple of steps per epoch.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..validation import check_number
from .base import (
    DEFENSES,
    Assumptions,
    Defense,
    DefenseInputs,
    DefenseResult,
    conv_stage_outputs,
    frozen_copy,
    require_conv_stages,
)
from .trainer import DefenseTrainer

logger = logging.getLogger(__name__)


def attention_map(features: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """``sum_c |f_c|^power`` over channels, flattened and L2-normalised per image: ``[batch, H*W]``."""
    attention = features.abs().pow(power).sum(dim=1).flatten(1)
    return F.normalize(attention, dim=1, eps=1e-12)


def attention_losses(student_stages, teacher_stages, power: float) -> list[torch.Tensor]:
    """Mean squared attention-map difference per stage, in stage order."""
    return [F.mse_loss(attention_map(s, power), attention_map(t, power)) for s, t in zip(student_stages, teacher_stages)]


def _stages(outputs) -> list[torch.Tensor]:
    return [state for state in outputs.hidden_states[1:] if state.ndim == 4]


class AttentionDistillationTrainer(DefenseTrainer):
    """Trains with ``CE + sum_k beta_k * AT_k`` against a frozen attention teacher."""

    def __init__(self, *, attention_teacher, betas: tuple[float, ...], power: float, **kwargs):
        super().__init__(**kwargs)
        self.attention_teacher = attention_teacher.to(self.args.device)
        self.betas = tuple(betas)
        self.power = power

    def defense_loss(self, model, inputs):
        labels = inputs.pop("labels")
        outputs = model(**inputs, output_hidden_states=True)
        with torch.no_grad():
            teacher_outputs = self.attention_teacher(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        losses = attention_losses(_stages(outputs), _stages(teacher_outputs), self.power)
        # betas run from the last stage backwards; stages without a beta get none
        attention = sum(beta * loss for beta, loss in zip(self.betas, reversed(losses)))
        return F.cross_entropy(outputs.logits, labels) + attention, outputs


@torch.no_grad()
def attention_distance(student, teacher, ds, image_processor, *, power: float = 2.0, image_column: str = "image",
                       batch_size: int = 128) -> float:
    """Mean over ``ds`` of the summed per-stage attention losses between ``student`` and ``teacher``."""
    from ..images import to_rgb

    total, rows = 0.0, 0
    device = next(student.parameters()).device
    for batch in ds.select_columns([image_column]).iter(batch_size=batch_size):
        pixels = image_processor(images=[to_rgb(image) for image in batch[image_column]],
                                 return_tensors="pt")["pixel_values"].to(device)
        student_stages = conv_stage_outputs(student, pixels)
        teacher_stages = conv_stage_outputs(teacher, pixels)
        total += float(sum(attention_losses(student_stages, teacher_stages, power))) * len(pixels)
        rows += len(pixels)
    return total / rows


@DEFENSES.register
@dataclass
class NeuralAttentionDistillation(Defense):
    """NAD (Li et al. 2021). Needs a clean subset, the backdoored model and convolutional stages.

    Args:
        betas: attention-loss weights from the last stage backwards (BackdoorBench: 1000,
            1000, 500 on a ResNet's last three stages).
        power: exponent of the activations in the attention map (paper: 2).
        teacher_share, distill_share: epochs of teacher fine-tuning and of distillation on
            the clean subset, as multiples of the undefended training's epochs (paper: 10 and
            20 epochs, a 1:2 ratio; default 1.0 and 2.0).
    """

    name: ClassVar[str] = "nad"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="a clean subset (BackdoorBench: 5% of the training size)",
        training="fine-tunes a copy of the backdoored model on the clean subset (teacher), then fine-tunes "
                 "the backdoored model with its attention maps; needs convolutional stages",
        inference_cost="none",
        needs_clean_subset=True,
        needs_backdoored_model=True,
    )

    betas: tuple = (1000.0, 1000.0, 500.0)
    power: float = 2.0
    teacher_share: float = 1.0
    distill_share: float = 2.0

    def __post_init__(self):
        if not isinstance(self.betas, (tuple, list)) or not self.betas:
            raise ValueError(f"betas must be a non-empty list of attention-loss weights, got {self.betas!r}.")
        self.betas = tuple(check_number(f"betas[{i}]", beta, 0.0, None) for i, beta in enumerate(self.betas))
        check_number("power", self.power, 0.0, None, low_inclusive=False)
        check_number("teacher_share", self.teacher_share, 0.0, None, low_inclusive=False)
        check_number("distill_share", self.distill_share, 0.0, None, low_inclusive=False)

    def check(self, inputs: DefenseInputs) -> None:
        model = inputs.backdoored_model if inputs.backdoored_model is not None else inputs.new_model()
        require_conv_stages(model, inputs.sample_pixels(), self.name)

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        clean, processor = inputs.clean_subset, inputs.image_processor
        teacher = inputs.fit(copy.deepcopy(inputs.backdoored_model), clean, "teacher",
                               self.teacher_share * inputs.epochs)
        teacher = frozen_copy(teacher)
        student = copy.deepcopy(inputs.backdoored_model)
        before = attention_distance(student, teacher, clean, processor, power=self.power,
                                    image_column=inputs.image_column)
        student = inputs.fit(student, clean, "distillation", self.distill_share * inputs.epochs,
                               trainer_class=AttentionDistillationTrainer, attention_teacher=teacher,
                               betas=self.betas, power=self.power)
        student.eval()
        after = attention_distance(student, teacher, clean, processor, power=self.power,
                                   image_column=inputs.image_column)
        logger.info("[nad] attention distance to the teacher on the clean subset: %.4g -> %.4g", before, after)
        return self.result(student, info={"attention_distance": {"before": before, "after": after}})
