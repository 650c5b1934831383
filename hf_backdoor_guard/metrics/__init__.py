"""Backdoor metrics: plain functions and the ``evaluate`` modules that wrap them.

``evaluate.load("accuracy")`` needs the Hub, so the modules ship in this folder and
load by path: ``load_metric("attack_success_rate")``. Both forms share the
functions below, so they cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_NAMES = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "poison_detection")


def _as_arrays(predictions, references, names=("predictions", "references")):
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.ndim != 1:
        raise ValueError(
            f"{names[0]} and {names[1]} must be 1-D and of equal length, got shapes "
            f"{predictions.shape} and {references.shape}."
        )
    return predictions, references


def _share(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


def clean_accuracy(predictions, references) -> float:
    """Share of clean test images classified as their label (C-Acc)."""
    predictions, references = _as_arrays(predictions, references)
    return _share(predictions == references)


def attack_success_rate(predictions, target_label: int, original_labels=None) -> float:
    """Share of triggered images classified as ``target_label`` (ASR).

    With ``original_labels``, rows whose true class is the target are left out, as
    the definition asks (they would count as successes for free).
    """
    predictions = np.asarray(predictions)
    if original_labels is not None:
        predictions, original_labels = _as_arrays(predictions, original_labels, ("predictions", "original_labels"))
        predictions = predictions[original_labels != target_label]
    return _share(predictions == target_label)


def robust_accuracy(predictions, original_labels, target_label: int | None = None) -> float:
    """Share of triggered images still classified as their true class (R-Acc).

    With ``target_label``, rows whose true class is the target are left out.
    """
    predictions, original_labels = _as_arrays(predictions, original_labels, ("predictions", "original_labels"))
    if target_label is not None:
        keep = original_labels != target_label
        predictions, original_labels = predictions[keep], original_labels[keep]
    return _share(predictions == original_labels)


def metric_info(description: str, inputs_description: str, prediction_dtype: str = "int64"):
    """The ``evaluate.MetricInfo`` every shipped module declares: predictions and int references."""
    import datasets
    import evaluate

    features = datasets.Features({"predictions": datasets.Value(prediction_dtype),
                                  "references": datasets.Value("int64")})
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs_description,
                               features=features)


def metric_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` module for ``name``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric '{name}'; choose one of {METRIC_NAMES}.")
    return Path(__file__).with_name(f"{name}.py")


def load_metric(name: str, **kwargs):
    """``evaluate.load`` a shipped backdoor metric by path (works offline)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values``; tied values share their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(values[order])) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count half).

    Computed from ranks (Mann-Whitney U), so it needs no extra dependency.
    """
    scores, positives = _as_arrays(np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool),
                                   ("scores", "positives"))
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_metrics(scores, poisoned, flagged=None, threshold: float | None = None) -> dict[str, float]:
    """AUROC of ``scores`` and precision/recall of the flagged rows against ground truth ``poisoned``.

    ``flagged`` are the rows a detector flagged; without it, rows with ``score >= threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    poisoned = np.asarray(poisoned, dtype=bool)
    if flagged is None:
        if threshold is None:
            raise ValueError("Pass flagged=... or threshold=... to measure precision and recall.")
        flagged = scores >= threshold
    flagged, poisoned = _as_arrays(np.asarray(flagged, dtype=bool), poisoned, ("flagged", "poisoned"))
    true_positives = int((flagged & poisoned).sum())
    return {
        "auroc": auroc(scores, poisoned),
        "precision": true_positives / int(flagged.sum()) if flagged.any() else float("nan"),
        "recall": true_positives / int(poisoned.sum()) if poisoned.any() else float("nan"),
    }
