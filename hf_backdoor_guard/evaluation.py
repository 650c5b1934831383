"""Measure a classifier's backdoor: clean accuracy, attack success rate, robust accuracy."""

from __future__ import annotations

import logging

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from .attacks import Attack
from .images import to_rgb
from .metrics import load_metric
from .poisoning import triggered_testset
from .validation import check_dataset, check_image_column, check_int

logger = logging.getLogger(__name__)


def resolve_image_processor(model, image_processor=None):
    """Return ``image_processor``, or the one saved beside ``model``'s weights."""
    if image_processor is not None:
        return image_processor
    source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not source:
        raise ValueError(
            "image_processor is required: the model was not loaded from a folder or repo that holds one."
        )
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"No image processor found at '{source}'; pass image_processor=... ({error}).") from error


@torch.no_grad()
def predict_logits(
    model,
    ds: Dataset,
    image_processor=None,
    batch_size: int = 64,
    image_column: str = "image",
    progress: bool = True,
) -> np.ndarray:
    """Logits of ``model`` on every image of ``ds``, as a float32 ``[N, num_labels]`` array.

    Runs batched, in eval mode, under ``torch.no_grad``, on the model's device and dtype.
    """
    check_image_column(ds, image_column)
    check_int("batch_size", batch_size)
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

    Returns ``{"clean_accuracy", "attack_success_rate", "robust_accuracy"}``. Pass a
    prebuilt ``triggered_ds`` (from :func:`triggered_testset`) to reuse it across calls.
    Metrics are computed by the shipped ``evaluate`` modules.
    """
    check_dataset(test_ds, image_column, label_column)
    processor = resolve_image_processor(model, image_processor)
    if triggered_ds is None:
        triggered_ds = triggered_testset(test_ds, attack, target_label, image_column, label_column)
    elif "original_label" not in triggered_ds.column_names:
        raise ValueError("triggered_ds has no 'original_label' column; build it with triggered_testset().")

    def predictions(ds):
        return predict_logits(model, ds, processor, batch_size, image_column, progress).argmax(axis=1)

    clean = load_metric("clean_accuracy").compute(
        predictions=predictions(test_ds), references=test_ds[label_column]
    )
    triggered_predictions = predictions(triggered_ds)
    original = triggered_ds["original_label"]
    asr = load_metric("attack_success_rate").compute(
        predictions=triggered_predictions, references=original, target_label=target_label
    )
    robust = load_metric("robust_accuracy").compute(
        predictions=triggered_predictions, references=original, target_label=target_label
    )
    result = {**clean, **asr, **robust}
    logger.info("Backdoor evaluation (%r): %s", attack, {k: round(v, 4) for k, v in result.items()})
    return result
