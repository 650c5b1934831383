"""Attack success rate (ASR) as an ``evaluate`` module.

``references`` are the true (original) labels of the triggered images; rows whose
true class is the target are left out.
"""

import datasets
import evaluate

from hf_backdoor_guard.metrics import attack_success_rate

_DESCRIPTION = (
    "Attack success rate (ASR): among triggered test images whose true class is not the target, "
    "the share classified as the target class."
)
_KWARGS = """
Args:
    predictions (list of int): predicted class indices on triggered images.
    references (list of int): the images' true class indices.
    target_label (int): the backdoor's target class.
Returns:
    attack_success_rate (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AttackSuccessRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, target_label=0):
        return {"attack_success_rate": attack_success_rate(predictions, target_label, original_labels=references)}
