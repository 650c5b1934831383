"""Attack success rate (ASR) as an ``evaluate`` module.

``references`` are the true (original) labels of the triggered images; rows whose
true class is the target are left out.
"""

import evaluate

from hf_backdoor_guard.metrics import attack_success_rate, metric_info

_DESCRIPTION = (
    "Attack success rate (ASR): among triggered test images whose true class is not the target, "
    "the share classified as the target class."
)
_KWARGS = """
Args:
    predictions (list of int): predicted class indices on triggered images.
    references (list of int): the images' true class indices.
    target_label (int): the backdoor's target class.
    num_labels (int, optional): the model's number of labels; classes outside it are an error.
Returns:
    attack_success_rate (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AttackSuccessRate(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, target_label=0, num_labels=None):
        return {"attack_success_rate": attack_success_rate(predictions, target_label, original_labels=references,
                                                           num_labels=num_labels)}
