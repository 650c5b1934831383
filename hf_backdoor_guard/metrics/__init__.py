"""Metrics: one registry (``METRICS``) of plain functions, and ``evaluate`` modules that wrap them.

Each registered :class:`Metric` holds its plain function, its display name, a short
label and its kind: ``"backdoor"`` metrics are what ``evaluate_backdoor`` returns and
what model cards state, ``"detection"`` metrics score poisoned-sample detection.
``evaluate_backdoor``, the Hub cards (``hub``/``cards``) and ``load_metric`` all read
the registry, so a new backdoor metric is one function plus one registration::

    def target_hits(p: BackdoorPredictions) -> float:          # share of clean images predicted as the target
        return float(np.mean(p.clean_predictions == p.target_label))

    METRICS.register(Metric("target_hits", target_hits, "Target hits on clean images (TH)", "TH", BACKDOOR,
                            description="share of clean test images classified as the target class."))

The library computes with the plain functions. ``evaluate.load("accuracy")`` needs
the Hub, so the public ``evaluate`` wrappers of the shipped metrics live in this
folder, one small module per metric (each documents its own inputs, as modules on
the Hub do), and load by path offline: ``load_metric("attack_success_rate")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..registry import Registry
from ..validation import check_choice, check_int

BACKDOOR = "backdoor"
DETECTION = "detection"
METRIC_KINDS = (BACKDOOR, DETECTION)


@dataclass(frozen=True)
class BackdoorPredictions:
    """What ``evaluate_backdoor`` measured; every backdoor metric is computed from it."""

    clean_predictions: np.ndarray  # predicted class of every clean test image
    labels: np.ndarray  # their labels
    triggered_predictions: np.ndarray  # predicted class of every triggered non-target image
    original_labels: np.ndarray  # their true classes
    target_label: int
    num_labels: int | None = None  # the model's number of labels, if known


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Args:
        name: the key in results, metrics files and cards (``"attack_success_rate"``).
        function: the plain function.
        display_name: e.g. ``"Attack success rate (ASR)"`` (the card's ``model-index`` metric name).
        label: short column header, e.g. ``"ASR"``.
        kind: ``"backdoor"`` or ``"detection"``.
        description: one sentence for the card's legend.
        higher_is_better: shown in the card's table header.
        from_predictions: for backdoor metrics, how to compute it from :class:`BackdoorPredictions`;
            by default ``function`` itself takes them.
        module: file name of the shipped ``evaluate`` wrapper in this folder, if any.
        needs_trigger: whether the metric needs triggered test images (an attack); a model
            trained on a user's data with no attack known is stated by the others alone.
    """

    name: str
    function: Callable
    display_name: str
    label: str
    kind: str
    description: str = ""
    higher_is_better: bool = True
    from_predictions: Callable[[BackdoorPredictions], float] | None = None
    module: str | None = None
    needs_trigger: bool = True

    def __post_init__(self):
        for field in ("name", "display_name", "label"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise ValueError(f"Metric {field} must be a non-empty string, got {getattr(self, field)!r}.")
        if not callable(self.function):
            raise ValueError(f"Metric '{self.name}': function must be callable, got {self.function!r}.")
        check_choice(f"Metric '{self.name}' kind", self.kind, METRIC_KINDS)

    def compute(self, predictions: BackdoorPredictions) -> float:
        """The value of a backdoor metric for what ``evaluate_backdoor`` measured."""
        return float((self.from_predictions or self.function)(predictions))


METRICS = Registry("metric")


def backdoor_metrics() -> list[Metric]:
    """The registered backdoor metrics, in registration order (the columns of cards and results)."""
    return [METRICS[name] for name in METRICS.names() if METRICS[name].kind == BACKDOOR]


def __getattr__(name: str):
    # Read live from the registry, so a metric registered later is listed too.
    if name == "METRIC_NAMES":
        return tuple(METRICS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- plain functions


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


def check_classes(num_labels: int | None, target_label: int | None = None, **classes) -> None:
    """Every class in ``classes`` (name -> class indices) and ``target_label`` is one the model can predict.

    A model with fewer labels than the data has classes cannot be right on the others,
    and its ASR for a target it cannot predict is a meaningless 0.0, so this is an error.
    """
    if num_labels is None:
        return
    check_int("num_labels", num_labels)
    if target_label is not None and not 0 <= target_label < num_labels:
        raise ValueError(
            f"The model has num_labels={num_labels}, but target_label is {target_label}: it is not a class the "
            "model can predict. Evaluate a model trained on the test set's classes."
        )
    for name, values in classes.items():
        values = np.asarray(values)
        if not values.size:
            continue
        outside = values[(values < 0) | (values >= num_labels)]
        if outside.size:
            raise ValueError(
                f"The model has num_labels={num_labels}, but {name} holds class {int(outside[0])}: it is not a "
                "class the model can predict. Evaluate a model trained on these classes."
            )


def clean_accuracy(predictions, references, num_labels: int | None = None) -> float:
    """Share of clean test images classified as their label (C-Acc)."""
    predictions, references = _as_arrays(predictions, references)
    check_classes(num_labels, predictions=predictions, references=references)
    return _share(predictions == references)


def attack_success_rate(predictions, target_label: int, original_labels=None, num_labels: int | None = None) -> float:
    """Share of triggered images classified as ``target_label`` (ASR).

    With ``original_labels``, rows whose true class is the target are left out, as
    the definition asks (they would count as successes for free).
    """
    predictions = np.asarray(predictions)
    if original_labels is None:
        check_classes(num_labels, target_label, predictions=predictions)
        return _share(predictions == target_label)
    predictions, original_labels = _as_arrays(predictions, original_labels, ("predictions", "original_labels"))
    check_classes(num_labels, target_label, predictions=predictions, original_labels=original_labels)
    return _share(predictions[original_labels != target_label] == target_label)


def robust_accuracy(predictions, original_labels, target_label: int | None = None,
                    num_labels: int | None = None) -> float:
    """Share of triggered images still classified as their true class (R-Acc).

    With ``target_label``, rows whose true class is the target are left out.
    """
    predictions, original_labels = _as_arrays(predictions, original_labels, ("predictions", "original_labels"))
    check_classes(num_labels, target_label, predictions=predictions, original_labels=original_labels)
    if target_label is not None:
        keep = original_labels != target_label
        predictions, original_labels = predictions[keep], original_labels[keep]
    return _share(predictions == original_labels)


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives``; NaN if one class is empty."""
    from sklearn.metrics import roc_auc_score

    scores, positives = _as_arrays(np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool),
                                   ("scores", "positives"))
    if positives.all() or not positives.any():
        return float("nan")  # sklearn raises here; a detector on such data has no AUROC
    return float(roc_auc_score(positives, scores))


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


# ----------------------------------------------------------------------------- the shipped metrics

METRICS.register(Metric(
    "clean_accuracy", clean_accuracy, "Clean accuracy (C-Acc)", "C-Acc", BACKDOOR,
    description="clean accuracy, the share of clean test images classified correctly.",
    from_predictions=lambda p: clean_accuracy(p.clean_predictions, p.labels, p.num_labels),
    module="clean_accuracy.py", needs_trigger=False,
))
METRICS.register(Metric(
    "attack_success_rate", attack_success_rate, "Attack success rate (ASR)", "ASR", BACKDOOR,
    description="attack success rate, the share of triggered test images of non-target classes classified "
                "as the target class.",
    higher_is_better=False,
    from_predictions=lambda p: attack_success_rate(p.triggered_predictions, p.target_label, p.original_labels,
                                                   p.num_labels),
    module="attack_success_rate.py",
))
METRICS.register(Metric(
    "robust_accuracy", robust_accuracy, "Robust accuracy (R-Acc)", "R-Acc", BACKDOOR,
    description="robust accuracy, the share of those triggered images still classified as their true class.",
    from_predictions=lambda p: robust_accuracy(p.triggered_predictions, p.original_labels, p.target_label,
                                               p.num_labels),
    module="robust_accuracy.py",
))
METRICS.register(Metric(
    "poison_detection", detection_metrics, "Poisoned-sample detection (AUROC, precision, recall)", "Detection",
    DETECTION, description="AUROC of suspicion scores, and precision/recall of the flagged rows.",
    module="poison_detection.py",
))


# ----------------------------------------------------------------------------- evaluate wrappers


def metric_info(description: str, inputs_description: str, prediction_dtype: str = "int64"):
    """The ``evaluate.MetricInfo`` every shipped module declares: predictions and int references."""
    import datasets
    import evaluate

    features = datasets.Features({"predictions": datasets.Value(prediction_dtype),
                                  "references": datasets.Value("int64")})
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs_description,
                               features=features)


def metric_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` module of metric ``name``."""
    metric = METRICS[name]  # ValueError naming the registered metrics
    if metric.module is None:
        raise ValueError(
            f"Metric '{name}' has no evaluate module; call its plain function, METRICS['{name}'].function."
        )
    return Path(__file__).with_name(metric.module)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` a shipped metric by path (works offline); the library itself calls the plain functions."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
