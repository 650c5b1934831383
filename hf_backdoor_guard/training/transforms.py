"""Training transforms for image classifiers, without torchvision.

torchvision does not import beside the CPU torch build this project targets, so the
few augmentations the method needs (random horizontal flip, random crop with padding)
are written here on numpy arrays, and everything model-specific (resize, centre crop,
rescale, normalisation) is left to the model's own image processor. That keeps the
pixels the model sees during training exactly those it sees at evaluation when
augmentation is off.

Use them the ``datasets`` way::

    transform = ImageClassificationTransform(image_processor, augment=True)
    train_ds = train_ds.with_transform(transform)
    trainer = Trainer(..., train_dataset=train_ds, data_collator=ImageClassificationCollator(),
                      args=TrainingArguments(..., remove_unused_columns=False))

When a distillation teacher uses another image processor than the student, pass it as
``teacher_image_processor``: each augmented image then goes through both processors,
so teacher and student see the same crop and flip, each at its own resolution and
normalisation (key ``teacher_pixel_values``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import load_rgb
from ..validation import check_choice, check_fraction, check_image_column, check_number, check_seed

logger = logging.getLogger(__name__)

# Keys the transform may emit besides pixel_values/labels; the collator stacks them too.
TEACHER_PIXELS = "teacher_pixel_values"
TEACHER_LOGITS = "teacher_logits"

# Processor settings that change the pixels a model receives; other keys (the class
# name, for instance) do not matter when deciding whether two processors agree.
_PIXEL_SETTINGS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_pad",
)


def _settings(processor: Any) -> dict:
    data = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    out = {}
    for key in _PIXEL_SETTINGS:
        value = data.get(key)
        if isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def processors_match(first: Any, second: Any) -> bool:
    """Whether two image processors turn the same image into the same pixel values."""
    if first is second:
        return True
    if first is None or second is None:
        return False
    return _settings(first) == _settings(second)


def _check_processor(processor: Any, name: str) -> None:
    if processor is None or not callable(processor):
        raise ValueError(
            f"{name} must be an image processor (e.g. AutoImageProcessor.from_pretrained(...)), got {processor!r}."
        )


class ImageClassificationTransform:
    """Batch transform for ``Dataset.with_transform``: images -> ``pixel_values``, labels -> ``labels``.

    Args:
        image_processor: the (student) model's image processor; it does the resize,
            centre crop, rescale and normalisation the model was built for.
        augment: apply a random horizontal flip and a random crop with padding before
            the processor. Turn it off for evaluation and for teacher-logit caching.
        teacher_image_processor: a second processor; when given and different from
            ``image_processor`` the output also holds ``teacher_pixel_values``
            made from the same augmented image.
        image_column, label_column: dataset columns to read. Rows without the label
            column (unlabelled data) give no ``labels``.
        flip_probability: chance of a horizontal flip.
        crop_padding: padding on each side before the random crop, as a fraction of
            the image side (0.125 is the usual 4 px on 32 px CIFAR images); 0 disables
            the crop.
        padding_mode: ``"constant"`` (black, as in the usual CIFAR recipe) or ``"reflect"``.
        seed: ``None`` draws from torch's global generator, which ``Trainer`` seeds from
            ``args.seed``, saves in checkpoints (so resumed runs continue the same
            stream) and splits across DataLoader workers. An int gives the transform
            its own generator, for use outside Trainer (each DataLoader worker would
            get a copy of it, hence the same stream: leave it None there).

    Columns named ``teacher_logits`` are passed through untouched (teacher-logit cache);
    rows that carry them get no ``teacher_pixel_values``.
    """

    def __init__(
        self,
        image_processor: Any,
        *,
        augment: bool = True,
        teacher_image_processor: Any = None,
        image_column: str = "image",
        label_column: str = "label",
        flip_probability: float = 0.5,
        crop_padding: float = 0.125,
        padding_mode: str = "constant",
        seed: int | None = None,
    ):
        _check_processor(image_processor, "image_processor")
        if teacher_image_processor is not None:
            _check_processor(teacher_image_processor, "teacher_image_processor")
        flip_probability = check_fraction("flip_probability", flip_probability)
        # a fraction of the image side: padding by the whole side or more would leave no image in the crop
        crop_padding = check_number("crop_padding", crop_padding, 0.0, 1.0, high_inclusive=False)
        check_choice("padding_mode", padding_mode, ("constant", "reflect"))
        if seed is not None:
            check_seed("seed", seed)
        for option, column in (("image_column", image_column), ("label_column", label_column)):
            if not isinstance(column, str) or not column:
                raise ValueError(f"{option} must be a non-empty column name, got {column!r}.")
        self.image_processor = image_processor
        self.teacher_image_processor = (
            None if processors_match(image_processor, teacher_image_processor) else teacher_image_processor
        )
        self.augment = bool(augment)
        self.image_column = image_column
        self.label_column = label_column
        self.flip_probability = flip_probability
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # -- randomness -------------------------------------------------------------------------
    def _uniform(self) -> float:
        return float(torch.rand((), generator=self._generator))

    def _randint(self, high: int) -> int:
        """An integer in [0, high]."""
        return int(torch.randint(0, high + 1, (), generator=self._generator))

    def augment_image(self, image: Image.Image) -> Image.Image:
        """Random horizontal flip, then a random crop of the original size from the padded image."""
        array = np.asarray(image)
        if self.flip_probability > 0 and self._uniform() < self.flip_probability:
            array = array[:, ::-1]
        height, width = array.shape[:2]
        pad_y, pad_x = int(round(self.crop_padding * height)), int(round(self.crop_padding * width))
        if pad_y or pad_x:
            pad = ((pad_y, pad_y), (pad_x, pad_x)) + ((0, 0),) * (array.ndim - 2)
            # reflect needs the padding to be smaller than the side
            mode = self.padding_mode if (pad_y < height and pad_x < width) else "constant"
            padded = np.pad(array, pad, mode=mode)
            top, left = self._randint(2 * pad_y), self._randint(2 * pad_x)
            array = padded[top : top + height, left : left + width]
        return Image.fromarray(np.ascontiguousarray(array))

    # -- the transform ----------------------------------------------------------------------
    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.image_column not in batch:
            raise ValueError(
                f"Image column '{self.image_column}' not in the batch (columns {sorted(batch)}); "
                "pass image_column=... to ImageClassificationTransform."
            )
        images = [load_rgb(cell, column=self.image_column) for cell in batch[self.image_column]]
        if self.augment:
            images = [self.augment_image(image) for image in images]
        out: dict[str, Any] = {
            "pixel_values": self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        }
        # With cached logits the teacher never runs, so its pixels would be wasted work.
        if self.teacher_image_processor is not None and TEACHER_LOGITS not in batch:
            out[TEACHER_PIXELS] = self.teacher_image_processor(images=images, return_tensors="pt")["pixel_values"]
        if self.label_column in batch:
            out["labels"] = list(batch[self.label_column])
        if TEACHER_LOGITS in batch:
            out[TEACHER_LOGITS] = list(batch[TEACHER_LOGITS])
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(augment={self.augment}, flip_probability={self.flip_probability}, "
            f"crop_padding={self.crop_padding}, padding_mode={self.padding_mode!r}, seed={self.seed}, "
            f"teacher_pixels={self.teacher_image_processor is not None})"
        )


class ImageClassificationCollator:
    """Stack rows from :class:`ImageClassificationTransform` into the batch the Trainer feeds the model.

    Gives ``pixel_values`` (and ``teacher_pixel_values``) as float tensors, ``labels``
    as a long tensor and ``teacher_logits`` as a float32 tensor; any other key is left out
    so that it never reaches the model's ``forward``.
    """

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("ImageClassificationCollator received an empty batch.")
        if "pixel_values" not in rows[0]:
            raise ValueError(
                f"Rows have no 'pixel_values' (keys {sorted(rows[0])}); apply "
                "dataset.with_transform(ImageClassificationTransform(image_processor)) first."
            )
        batch = {"pixel_values": torch.stack([torch.as_tensor(row["pixel_values"]) for row in rows])}
        if TEACHER_PIXELS in rows[0]:
            batch[TEACHER_PIXELS] = torch.stack([torch.as_tensor(row[TEACHER_PIXELS]) for row in rows])
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([int(row["labels"]) for row in rows], dtype=torch.long)
        if TEACHER_LOGITS in rows[0]:
            batch[TEACHER_LOGITS] = torch.stack(
                [torch.as_tensor(row[TEACHER_LOGITS], dtype=torch.float32) for row in rows]
            )
        return batch


def prepare_image_dataset(
    dataset: Any,
    image_processor: Any,
    *,
    augment: bool,
    teacher_image_processor: Any = None,
    image_column: str = "image",
    label_column: str = "label",
    name: str = "train_dataset",
):
    """Attach an :class:`ImageClassificationTransform` to a raw image dataset (a new view; input untouched).

    Datasets that already have a transform or format, or that have no image column
    (already preprocessed), are returned as they are. Dicts of datasets are handled
    key by key. Datasets with a ``teacher_logits`` cache get no teacher pixels.
    """
    from datasets import Dataset

    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {
            key: prepare_image_dataset(
                value, image_processor, augment=augment, teacher_image_processor=teacher_image_processor,
                image_column=image_column, label_column=label_column, name=f"{name}['{key}']",
            )
            for key, value in dataset.items()
        }
    if not isinstance(dataset, Dataset) or dataset.format["type"] is not None:
        return dataset
    if image_column not in dataset.column_names:
        if "pixel_values" in dataset.column_names:
            return dataset
        raise ValueError(
            f"{name} has no image column '{image_column}' (columns {dataset.column_names}); "
            "set image_column to the column holding the images."
        )
    check_image_column(dataset, image_column)
    if TEACHER_LOGITS in dataset.column_names:
        teacher_image_processor = None  # the teacher never runs on a cached dataset: skip its pixels
    if image_processor is None:
        raise ValueError(
            f"{name} holds raw images in column '{image_column}', so an image processor is needed to turn "
            "them into pixel_values: pass image_processor= (processing_class= for the trainers)."
        )
    transform = ImageClassificationTransform(
        image_processor, augment=augment, teacher_image_processor=teacher_image_processor,
        image_column=image_column, label_column=label_column,
    )
    return dataset.with_transform(transform)


def dataset_transform(dataset: Any) -> Any:
    """The transform attached with ``with_transform``, or None."""
    try:
        fmt = dataset.format
    except AttributeError:
        return None
    if fmt.get("type") != "custom":
        return None
    return (fmt.get("format_kwargs") or {}).get("transform")
