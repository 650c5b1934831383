"""The teacher-logit cache: the teacher's logits on every training image, computed once.

:class:`~hf_backdoor_guard.DistillationTrainer` reads a ``teacher_logits`` column instead
of running the teacher on every batch; that is only valid when the student sees the
images exactly as the teacher did, i.e. without random augmentation (the trainer
refuses the combination).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..loading import load_image_classifier
from .transforms import TEACHER_LOGITS, ImageClassificationTransform
from ..validation import check_image_column, check_int


class _TeacherLogits:
    """Map function: teacher logits for a batch of images, preprocessed as in unaugmented training."""

    def __init__(self, teacher, image_processor, image_column: str, column: str):
        self.teacher = teacher
        self.column = column
        self.transform = ImageClassificationTransform(image_processor, augment=False, image_column=image_column)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        parameter = next(self.teacher.parameters())
        pixels = self.transform(batch)["pixel_values"].to(parameter.device, parameter.dtype)
        logits = self.teacher(pixel_values=pixels).logits.float().cpu()
        return {self.column: logits.numpy()}


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def precompute_teacher_logits(
    teacher: Any,
    ds,
    image_processor: Any = None,
    batch_size: int = 64,
    image_column: str = "image",
    *,
    column: str = TEACHER_LOGITS,
    device: str | torch.device | None = None,
    num_proc: int | None = None,
):
    """Return a copy of ``ds`` with a ``teacher_logits`` column (float32, one row per image).

    The images go through ``image_processor`` exactly as :class:`DistillationTrainer`
    feeds an online teacher with ``augment=False``, so cached and online training give
    the same loss. The cache is **only valid without random augmentation**: train with
    ``DistillationTrainingArguments(augment=False)``.

    Args:
        teacher: model object or name/path (safetensors). Run in eval mode, no gradients.
        ds: a ``datasets.Dataset`` with ``image_column``; it is not modified.
        image_processor: the teacher's processor; loaded from the teacher's folder when
            the teacher is given as a path.
        batch_size: images per teacher forward pass.
        column: name of the new column; an existing column is never overwritten.
        device: where to run the teacher (default: where it already is).
    """
    from datasets import Features, List, Value

    from ..runtime.caching import derived_fingerprint

    check_image_column(ds, image_column)
    if ds.format["type"] is not None:
        raise ValueError(
            f"The dataset has format {ds.format['type']!r} (e.g. a with_transform); compute the cache on the raw "
            "dataset and apply transforms afterwards (DistillationTrainer prepares raw datasets itself)."
        )
    if column in ds.column_names:
        raise ValueError(f"Column '{column}' already exists in the dataset; pass column=... or remove it first.")
    check_int("batch_size", batch_size)
    if isinstance(teacher, str):
        teacher, saved_processor = load_image_classifier(teacher, "teacher")
        image_processor = image_processor or saved_processor
    if image_processor is None:
        raise ValueError("image_processor is required: pass the teacher's image processor.")
    if device is not None:
        teacher = teacher.to(device)
    was_training = teacher.training
    teacher.eval()
    num_labels = int(teacher.config.num_labels)
    features = Features({**ds.features, column: List(Value("float32"), length=num_labels)})
    # The fingerprint names exactly what the logits depend on, so datasets' cache (for
    # file-backed datasets) is reused only for the same data, teacher weights and processor.
    fingerprint = derived_fingerprint(
        ds, column, image_column, type(teacher).__name__, _weights_digest(teacher),
        sorted(image_processor.to_dict().items(), key=lambda kv: kv[0]).__repr__())
    try:
        return ds.map(
            _TeacherLogits(teacher, image_processor, image_column, column),
            batched=True,
            batch_size=batch_size,
            features=features,
            new_fingerprint=fingerprint,
            num_proc=num_proc,
            desc="Teacher logits",
        )
    finally:
        teacher.train(was_training)


__all__ = ["precompute_teacher_logits"]
