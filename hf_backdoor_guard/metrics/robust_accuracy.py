"""Robust accuracy (R-Acc) as an ``evaluate`` module.

``references`` are the true (original) labels of the triggered images; with
``target_label`` given, rows whose true class is the target are left out.
"""

import evaluate

from hf_backdoor_guard.metrics import robust_accuracy, metric_info

_DESCRIPTION = "Robust accuracy (R-Acc): the share of triggered test images still classified as their true class."
_KWARGS = """
Args:
    predictions (list of int): predicted class indices on triggered images.
    references (list of int): the images' true class indices.
    target_label (int, optional): the backdoor's target class; its rows are left out.
    num_labels (int, optional): the model's number of labels; classes outside it are an error.
Returns:
    robust_accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RobustAccuracy(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, target_label=None, num_labels=None):
        return {"robust_accuracy": robust_accuracy(predictions, references, target_label=target_label,
                                                   num_labels=num_labels)}
