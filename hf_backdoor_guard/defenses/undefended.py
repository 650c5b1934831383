"""The undefended model ("none"): plain training on the poisoned data, the reference every defense is rated against.

Assumes: no clean data; plain training; no extra inference cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import DEFENSES, Assumptions, Defense, DefenseInputs, DefenseResult


@DEFENSES.register
@dataclass
class NoDefense(Defense):
    """No defense: the model trained on the poisoned data as it is (the pipeline's teacher)."""

    name: ClassVar[str] = "none"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="none", training="plain training on the poisoned data", inference_cost="none")

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        model = inputs.backdoored_model
        if model is None:  # trained here, so that its time is this entry's time
            model = inputs.fit(inputs.new_model(), inputs.train, "train", inputs.epochs)
        return self.result(model)
