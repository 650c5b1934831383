"""Clean accuracy (C-Acc) as an ``evaluate`` module: share of clean images classified correctly."""

import evaluate

from hf_backdoor_guard.metrics import clean_accuracy, metric_info

_DESCRIPTION = "Clean accuracy (C-Acc): the share of clean test images classified as their label."
_KWARGS = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
    num_labels (int, optional): the model's number of labels; classes outside it are an error.
Returns:
    clean_accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CleanAccuracy(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, num_labels=None):
        return {"clean_accuracy": clean_accuracy(predictions, references, num_labels=num_labels)}
