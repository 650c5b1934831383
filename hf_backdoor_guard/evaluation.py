"""Measure a classifier's backdoor: clean accuracy, attack success rate, robust accuracy.

The numbers come from the plain functions of the metric registry
(``metrics.backdoor_metrics()``), so a newly registered backdoor metric appears in
``evaluate_backdoor``'s result without touching this module.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Value
from tqdm.auto import tqdm

from .attacks import Attack
from .images import to_rgb
from .loading import load_image_processor
from .metrics import BackdoorPredictions, backdoor_metrics, check_classes
from .poisoning import triggered_testset
from .validation import check_dataset, check_image_column, check_int, check_label_column

logger = logging.getLogger(__name__)


def resolve_image_processor(model, image_processor=None):
    """Return ``image_processor``, or the one saved beside ``model``'s weights (never one that needs remote code)."""
    if image_processor is not None:
        return image_processor
    source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not source:
        raise ValueError(
            "image_processor is required: the model was not loaded from a folder or repo that holds one."
        )
    processor, why_not = load_image_processor(source)
    if processor is None:
        raise ValueError(f"No image processor for the model at '{source}': {why_not}. Pass image_processor=... "
                         "(built from a processor class you trust).")
    return processor


def check_model_classes(model, num_classes: int | None, label_column: str = "label") -> int | None:
    """The model predicts at least ``num_classes`` classes; returns its ``num_labels`` (None if unknown).

    A model with fewer labels than the data has classes can never be right on the
    others (a 2-label model on a 4-class set would report ASR 0.0 for target 3).
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels is None or num_classes is None:
        return num_labels
    if num_classes > num_labels:
        raise ValueError(
            f"The model has {num_labels} labels (config.num_labels), but column '{label_column}' has "
            f"{num_classes} classes: it can never predict classes {num_labels}..{num_classes - 1}, so every "
            "number would be wrong. Evaluate a model trained on these classes."
        )
    return num_labels


def _labelled_classes(ds: Dataset, label_column: str | None) -> int | None:
    """The number of classes of an integer or ClassLabel ``label_column``; None if ``ds`` has no such column."""
    if label_column is None or label_column not in ds.column_names:
        return None
    feature = ds.features[label_column]
    if isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))):
        return check_label_column(ds, label_column)
    return None


@torch.no_grad()
def predict_logits(
    model,
    ds: Dataset,
    image_processor=None,
    batch_size: int = 64,
    image_column: str = "image",
    progress: bool = True,
    *,
    label_column: str | None = "label",
) -> np.ndarray:
    """Logits of ``model`` on every image of ``ds``, as a float32 ``[N, num_labels]`` array.

    Runs batched, in eval mode, under ``torch.no_grad``, on the model's device and dtype.
    If ``ds`` has an integer ``label_column``, the model must have a label for each of its
    classes (``check_model_classes``); pass ``label_column=None`` to skip that check.
    """
    check_image_column(ds, image_column)
    check_int("batch_size", batch_size)
    check_model_classes(model, _labelled_classes(ds, label_column), label_column or "label")
    processor = resolve_image_processor(model, image_processor)
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    outputs = []
    batches = ds.select_columns([image_column]).iter(batch_size=batch_size)
    total = -(-len(ds) // batch_size)
    try:
        for batch in tqdm(batches, total=total, desc="Predicting", unit="batch", disable=not progress, leave=False):
            images = [to_rgb(image) for image in batch[image_column]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            logits = model(pixel_values=pixels.to(parameter.device, parameter.dtype)).logits
            outputs.append(logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs)


def evaluate_backdoor(
    model,
    test_ds: Dataset,
    attack: Attack,
    target_label: int = 0,
    image_processor=None,
    batch_size: int = 64,
    *,
    image_column: str = "image",
    label_column: str = "label",
    triggered_ds: Dataset | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """C-Acc on ``test_ds``; ASR and R-Acc on its non-target rows with ``attack``'s trigger.

    Returns ``{"clean_accuracy", "attack_success_rate", "robust_accuracy"}`` plus any other
    registered backdoor metric. Pass a prebuilt ``triggered_ds`` (from
    :func:`triggered_testset`) to reuse it across calls. The model must have a label for
    every class of ``label_column`` (checked before any prediction).
    """
    num_classes = check_dataset(test_ds, image_column, label_column)
    num_labels = check_model_classes(model, num_classes, label_column)
    check_classes(num_labels, target_label)
    processor = resolve_image_processor(model, image_processor)
    if triggered_ds is None:
        triggered_ds = triggered_testset(test_ds, attack, target_label, image_column, label_column)
    elif "original_label" not in triggered_ds.column_names:
        raise ValueError("triggered_ds has no 'original_label' column; build it with triggered_testset().")

    def predictions(ds):
        logits = predict_logits(model, ds, processor, batch_size, image_column, progress, label_column=None)
        return logits.argmax(axis=1)

    measured = BackdoorPredictions(
        clean_predictions=predictions(test_ds),
        labels=np.asarray(test_ds[label_column]),
        triggered_predictions=predictions(triggered_ds),
        original_labels=np.asarray(triggered_ds["original_label"]),
        target_label=target_label,
        num_labels=num_labels,
    )
    result = {metric.name: metric.compute(measured) for metric in backdoor_metrics()}
    logger.debug("Backdoor evaluation (%r): %s", attack, {k: round(v, 4) for k, v in result.items()})
    return result
