"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021): train a clean model on poisoned data.

Assumes: no clean data; full control of training (a new model is trained from scratch
in three phases); no extra inference cost.

1. **Isolation.** A new model trains on all rows with the local gradient ascent (LGA)
   loss ``sign(L - gamma) * L`` on each batch's mean cross-entropy ``L``: once the loss
   falls below ``gamma`` it is pushed back up, so clean rows hover around ``gamma``
   while backdoor rows, learned much faster, sink below it. The ``isolation_rate``
   share of rows with the lowest loss is isolated.
2. **Training on the rest.** The same model keeps training on the other rows.
3. **Unlearning.** Gradient ascent on the isolated rows (loss ``-L``) at a small
   learning rate breaks the link between trigger and target.

Paper settings (CIFAR-10, 100 training epochs): 20 isolation epochs, 60 on the rest,
20 unlearning epochs, gamma 0.5, isolation rate 0.01, unlearning learning rate
``5e-4`` against the initial ``0.1`` (1/200; BackdoorBench: ``1e-4`` against ``0.01``).
Here the phases take the same shares of the undefended training's epochs (20% / 60%),
and unlearning keeps the paper's 20 epochs of the (small) isolated set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import check_fraction, check_number
from .base import DEFENSES, Assumptions, Defense, DefenseInputs, DefenseResult, per_row_cross_entropy
from .trainer import DefenseTrainer

logger = logging.getLogger(__name__)


class LocalGradientAscentTrainer(DefenseTrainer):
    """Trains with ABL's LGA loss ``sign(L - gamma) * L`` (``gamma=None``: plain gradient ascent ``-L``)."""

    def __init__(self, *, gamma: float | None, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma

    def defense_loss(self, model, inputs):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels)
        if self.gamma is None:
            return -loss, outputs
        return torch.sign(loss - self.gamma) * loss, outputs


@DEFENSES.register
@dataclass
class AntiBackdoorLearning(Defense):
    """ABL (Li et al. 2021). Needs no clean data; trains a new model from scratch; no inference cost.

    Args:
        isolation_rate: share of rows isolated as suspected poison (paper: 0.01).
        gamma: LGA loss floor (paper: 0.5).
        isolation_share, retrain_share: shares of the undefended training's epochs spent
            isolating and training on the remaining rows (paper: 20 and 60 of 100).
        unlearning_epochs: epochs of gradient ascent over the isolated rows (paper: 20).
        unlearning_rate_factor: unlearning learning rate as a share of the training rate
            (paper: 5e-4 / 0.1; BackdoorBench: 1e-4 / 1e-2).
    """

    name: ClassVar[str] = "abl"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="none",
        training="trains a new model from scratch: isolation with the LGA loss, training on the rest, "
                 "gradient-ascent unlearning of the isolated rows",
        inference_cost="none",
    )

    isolation_rate: float = 0.01
    gamma: float = 0.5
    isolation_share: float = 0.2
    retrain_share: float = 0.6
    unlearning_epochs: float = 20.0
    unlearning_rate_factor: float = 0.01

    def __post_init__(self):
        check_fraction("isolation_rate", self.isolation_rate, low_inclusive=False)
        check_number("gamma", self.gamma, 0.0, None, low_inclusive=False)
        check_fraction("isolation_share", self.isolation_share, low_inclusive=False)
        check_fraction("retrain_share", self.retrain_share)
        check_number("unlearning_epochs", self.unlearning_epochs, 0.0, None)
        check_number("unlearning_rate_factor", self.unlearning_rate_factor, 0.0, None, low_inclusive=False)

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        train = inputs.train
        model = inputs.new_model()
        model = inputs.fit(model, train, "isolation", self.isolation_share * inputs.epochs,
                             trainer_class=LocalGradientAscentTrainer, gamma=self.gamma)
        losses = per_row_cross_entropy(model, train, inputs.image_processor, image_column=inputs.image_column,
                                       label_column=inputs.label_column)
        count = max(1, math.ceil(self.isolation_rate * len(train)))
        isolated = np.zeros(len(train), dtype=bool)
        isolated[np.argsort(losses, kind="mergesort")[:count]] = True
        logger.info("[abl] isolated %d of %d rows (loss <= %.4g)", count, len(train), losses[isolated].max())

        if self.retrain_share > 0:
            rest = train.select(np.flatnonzero(~isolated))
            model = inputs.fit(model, rest, "retrain", self.retrain_share * inputs.epochs)
        if self.unlearning_epochs > 0:
            model = inputs.fit(
                model, train.select(np.flatnonzero(isolated)), "unlearning", self.unlearning_epochs,
                trainer_class=LocalGradientAscentTrainer, gamma=None,
                learning_rate=inputs.training_args.learning_rate * self.unlearning_rate_factor,
            )
        info = {"isolated_rows": np.flatnonzero(isolated).tolist(), "isolation_loss_max": float(losses[isolated].max())}
        if "poisoned" in train.column_names:  # research data: how many isolated rows were poison
            info["isolated_poisoned"] = int(np.asarray(train["poisoned"], dtype=bool)[isolated].sum())
        return self.result(model, suspicion=-losses, kept=~isolated, info=info)
