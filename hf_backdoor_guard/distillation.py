"""Knowledge distillation of a student from a (possibly backdoored) teacher.

The student is trained on diffusion variations of the training images with the
teacher's soft labels (Struppek et al., 2023; Hinton et al., 2015)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

KL is the batch mean, CE uses the student's raw logits, ``T^2`` keeps the gradient
scale of the soft term independent of the temperature.

Two ways to get the teacher's logits:

* **online** (default): the trainer runs the frozen teacher on every batch. Needed
  when training with random augmentation, since every epoch shows a new crop/flip.
* **cached**: :func:`precompute_teacher_logits` stores a ``teacher_logits`` column
  once; the trainer then never runs the teacher (it may even be ``None``). The cache
  is only valid when the student sees exactly the images the teacher saw, that is
  *without random augmentation* (``augment=False``); the trainer refuses the
  combination.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from .loading import load_image_classifier
from .training import CheckpointReloadMixin, RawImageDatasetMixin, bind_backdoor_callbacks

from .transforms import (
    TEACHER_LOGITS,
    TEACHER_PIXELS,
    ImageClassificationCollator,
    ImageClassificationTransform,
    dataset_transform,
    prepare_image_dataset,
    processors_match,
)

logger = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    alpha: float = 0.5,
    temperature: float = 10.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, labels)``, computed in float32.

    A term with weight 0 is skipped, so ``alpha=0`` needs no teacher logits and
    ``alpha=1`` needs no labels.
    """
    student = student_logits.float()
    loss = student.new_zeros(())
    if alpha > 0:
        if teacher_logits is None:
            raise ValueError("alpha > 0 needs teacher logits (a teacher model or a 'teacher_logits' column).")
        teacher = teacher_logits.float()
        if teacher.shape != student.shape:
            raise ValueError(
                f"Teacher logits have shape {tuple(teacher.shape)} but the student's have {tuple(student.shape)}: "
                "teacher and student must share the label set."
            )
        kl = F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        if labels is None:
            raise ValueError("alpha < 1 needs labels for the cross-entropy term (a label column in the dataset).")
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels)
    return loss


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for :class:`DistillationTrainer`.

    Args:
        alpha: weight of the distillation term; ``1 - alpha`` weighs the cross-entropy
            on the hard labels (paper: 0.5).
        temperature: softmax temperature for teacher and student (paper: 10).
        augment: random horizontal flip + random crop with padding on training images
            that the trainer prepares itself. Must be off when a ``teacher_logits``
            cache is used.
        image_column, label_column: dataset columns the trainer reads from raw datasets.
        remove_unused_columns: defaults to ``False`` here: image columns are turned into
            ``pixel_values`` lazily by ``with_transform`` and must survive until then.

    All other fields are those of ``transformers.TrainingArguments``.
    """

    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the distillation (KL) term; 1 - alpha weighs cross-entropy on the labels."},
    )
    temperature: float = field(
        default=10.0,
        metadata={"help": "Softmax temperature applied to teacher and student logits in the KL term (> 0)."},
    )
    augment: bool = field(
        default=True,
        metadata={
            "help": "Random horizontal flip and random crop with padding on training images. "
            "Turn off when using precomputed teacher logits."
        },
    )
    image_column: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Dataset column holding the integer labels."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Drop dataset columns the model's forward does not take. Keep False for image datasets "
            "prepared with with_transform."
        },
    )

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha!r}.")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not self.temperature > 0
        ):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}.")
        if not self.image_column:
            raise ValueError("image_column must be a non-empty column name.")
        if not self.label_column:
            raise ValueError("label_column must be a non-empty column name.")
        super().__post_init__()


def _has_cache(dataset: Any) -> bool:
    return dataset is not None and TEACHER_LOGITS in (getattr(dataset, "column_names", None) or [])


class DistillationTrainer(CheckpointReloadMixin, RawImageDatasetMixin, Trainer):
    """A ``Trainer`` that distils ``model`` (the student) from a frozen ``teacher_model``.

    Args:
        model: the student, a model object or a name/path loaded with
            ``AutoModelForImageClassification`` (safetensors only).
        teacher_model: the teacher, same forms. It is put in eval mode, frozen and moved
            to the student's device. May be ``None`` when every dataset carries a
            ``teacher_logits`` cache, or when ``alpha == 0``.
        args: :class:`DistillationTrainingArguments`.
        data_collator: defaults to :class:`ImageClassificationCollator`.
        train_dataset, eval_dataset: either raw datasets with an image and a label column
            (the trainer attaches an :class:`ImageClassificationTransform`, augmented for
            training when ``args.augment``), or datasets you already prepared with
            ``with_transform``.
        processing_class: the student's image processor (also saved with checkpoints).
        teacher_processing_class: the teacher's image processor when it differs from the
            student's (other resolution or normalisation); the teacher then gets its own
            ``teacher_pixel_values`` of the same augmented image. Loaded from the teacher's
            folder when the teacher is given as a path; else the student's is used.

    Everything else goes to ``transformers.Trainer``. Beyond ``compute_loss`` (and, for
    unlabelled evaluation, ``prediction_step``) it differs only in that ``evaluate`` and
    ``predict`` accept raw image datasets too, and that checkpoints are reloaded through
    ``from_pretrained`` (see :class:`~hf_backdoor_guard.training.CheckpointReloadMixin`).
    The teacher is not part of checkpoints: pass it again when resuming.
    """

    # compute_loss returns a per-batch mean, so the Trainer must divide it by the number
    # of accumulation steps. transformers 5 would otherwise assume that models taking
    # loss kwargs (ViT, ResNet, ...) already did, and gradients would be GA times too big.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: Any = None,
        teacher_model: Any = None,
        args: DistillationTrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        teacher_processing_class: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, DistillationTrainingArguments):
            raise ValueError(
                f"args must be DistillationTrainingArguments (alpha, temperature, ...), got {type(args).__name__}."
            )
        if model is None:
            raise ValueError("model (the student) is required.")
        if isinstance(model, str):
            model, saved_processor = load_image_classifier(model, "student")
            processing_class = processing_class or saved_processor
        if isinstance(teacher_model, str):
            teacher_model, saved_processor = load_image_classifier(teacher_model, "teacher")
            teacher_processing_class = teacher_processing_class or saved_processor

        needs_teacher = args.alpha > 0
        if needs_teacher and teacher_model is None:
            for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
                datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
                if any(d is not None and not _has_cache(d) for d in datasets):
                    raise ValueError(
                        f"teacher_model is None and {name} has no '{TEACHER_LOGITS}' column: pass teacher_model= "
                        "or add the cache with precompute_teacher_logits()."
                    )
        if teacher_model is not None:
            student_labels = getattr(model.config, "num_labels", None)
            teacher_labels = getattr(teacher_model.config, "num_labels", None)
            if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
                raise ValueError(
                    f"teacher_model has {teacher_labels} labels but the student has {student_labels}; "
                    "distillation needs the same label set."
                )
        if teacher_processing_class is not None and processors_match(processing_class, teacher_processing_class):
            teacher_processing_class = None

        self._check_cache_and_augmentation(train_dataset, args)
        train_dataset = prepare_image_dataset(
            train_dataset, processing_class, augment=args.augment, teacher_image_processor=teacher_processing_class,
            image_column=args.image_column, label_column=args.label_column, name="train_dataset",
        )
        eval_dataset = prepare_image_dataset(
            eval_dataset, processing_class, augment=False, teacher_image_processor=teacher_processing_class,
            image_column=args.image_column, label_column=args.label_column, name="eval_dataset",
        )
        if data_collator is None:
            data_collator = ImageClassificationCollator()

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # Our loss ignores num_items_in_batch; skip the Trainer counting (and all-gathering) labels for it.
        self.model_accepts_loss_kwargs = False

        self.teacher = teacher_model
        self.teacher_processing_class = teacher_processing_class
        self.image_column, self.label_column = args.image_column, args.label_column
        if self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)
            # The Trainer put the student on args.device, unless it is spread over devices itself.
            device = self.args.device if self.place_model_on_device else next(self.model.parameters()).device
            self.teacher.to(device)

        bind_backdoor_callbacks(self)

    @staticmethod
    def _check_cache_and_augmentation(train_dataset: Any, args: DistillationTrainingArguments) -> None:
        if not _has_cache(train_dataset):
            return
        transform = dataset_transform(train_dataset)
        if transform is None and args.augment:
            raise ValueError(
                f"train_dataset has a '{TEACHER_LOGITS}' cache but augment=True: cached logits belong to the "
                "unaugmented images, so a random crop/flip would pair them with other pixels. Set augment=False, "
                "or drop the column to run the teacher online."
            )
        if isinstance(transform, ImageClassificationTransform) and transform.augment:
            raise ValueError(
                f"train_dataset has a '{TEACHER_LOGITS}' cache but its ImageClassificationTransform has augment=True; "
                "cached logits are only valid without random augmentation."
            )
        if transform is not None and not isinstance(transform, ImageClassificationTransform):
            logger.warning(
                "train_dataset has a '%s' cache and a custom transform; the cache is only valid if that transform "
                "applies no random augmentation.", TEACHER_LOGITS,
            )

    @torch.no_grad()
    def _teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Under bf16/fp16 training the accelerator's autocast covers the teacher too.
        # A teacher kept in half precision needs its inputs in its own dtype.
        dtype = next(self.teacher.parameters()).dtype
        with self.accelerator.autocast():
            return self.teacher(pixel_values=pixel_values.to(dtype)).logits.float()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The distillation loss; uses the ``teacher_logits`` cache when the batch has one."""
        inputs = dict(inputs)  # never mutate the caller's batch
        labels = inputs.pop("labels", None)
        cached = inputs.pop(TEACHER_LOGITS, None)
        teacher_pixels = inputs.pop(TEACHER_PIXELS, None)
        outputs = model(**inputs)
        alpha, temperature = self.args.alpha, self.args.temperature

        teacher_logits = None
        if alpha > 0:
            if cached is not None:
                teacher_logits = cached
            elif self.teacher is not None:
                teacher_logits = self._teacher_logits(
                    teacher_pixels if teacher_pixels is not None else inputs["pixel_values"]
                )
            else:
                raise ValueError(f"The batch has no '{TEACHER_LOGITS}' and the trainer has no teacher_model.")
        loss = distillation_loss(outputs.logits, teacher_logits, labels, alpha, temperature)
        if return_outputs:
            outputs["loss"] = loss
            return loss, outputs
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Without labels the Trainer calls the student directly; the teacher's inputs must not reach it.
        if not all(inputs.get(name) is not None for name in self.label_names):
            inputs = {k: v for k, v in inputs.items() if k not in (TEACHER_LOGITS, TEACHER_PIXELS)}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


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
    from datasets.fingerprint import Hasher

    from .validation import check_image_column, check_int

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
    fingerprint = Hasher.hash(
        (ds._fingerprint, column, image_column, type(teacher).__name__, _weights_digest(teacher),
         sorted(image_processor.to_dict().items(), key=lambda kv: kv[0]).__repr__())
    )
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
