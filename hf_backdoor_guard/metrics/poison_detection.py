"""Poisoned-sample detection quality as an ``evaluate`` module: AUROC, precision and recall.

``predictions`` are suspicion scores (higher = more suspicious), ``references`` the
ground truth (1 = poisoned, e.g. the ``poisoned`` column of ``poison_dataset``).
"""

import evaluate

from hf_backdoor_guard.metrics import detection_metrics, metric_info

_DESCRIPTION = "AUROC of suspicion scores, and precision/recall of the rows scoring at or above a threshold."
_KWARGS = """
Args:
    predictions (list of float): suspicion scores.
    references (list of int): 1 for poisoned rows, 0 for clean ones.
    threshold (float): rows with a score >= threshold count as flagged.
Returns:
    auroc, precision, recall (float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class PoisonDetection(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS, "float64")

    def _compute(self, predictions, references, threshold=0.5):
        return detection_metrics(predictions, references, threshold=threshold)
