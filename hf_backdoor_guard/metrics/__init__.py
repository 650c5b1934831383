"""Backdoor metrics: plain functions and the ``evaluate`` modules that wrap them.

``evaluate.load("accuracy")`` needs the Hub, so the modules ship in this folder and
load by path: ``load_metric("attack_success_rate")``. Both forms share the
functions below, so they cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_NAMES = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


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


def metric_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` module for ``name``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric '{name}'; choose one of {METRIC_NAMES}.")
    return Path(__file__).with_name(f"{name}.py")


def load_metric(name: str, **kwargs):
    """``evaluate.load`` a shipped backdoor metric by path (works offline)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
