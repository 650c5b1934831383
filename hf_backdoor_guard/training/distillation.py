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

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from .checkpoints import CheckpointReloadMixin
from ..runtime.console import QuietTrainerMixin
from ..loading import load_image_classifier
from .teacher_logits import precompute_teacher_logits
from .classifier import (
    RawImageDatasetMixin,
    bind_backdoor_callbacks,
    check_num_labels,
    check_training_arguments,
    dataset_num_classes,
)
from .transforms import (
    TEACHER_LOGITS,
    TEACHER_PIXELS,
    ImageClassificationCollator,
    ImageClassificationTransform,
    dataset_transform,
    prepare_image_dataset,
    processors_match,
)
from ..validation import check_fraction, check_number

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
        self.alpha = check_fraction("alpha", self.alpha)
        # temperature=inf used to train to NaN weights (T^2 * KL = inf * 0) while the logged loss read 0.0
        self.temperature = check_number("temperature", self.temperature, 0.0, None, low_inclusive=False)
        for option in ("image_column", "label_column"):
            if not isinstance(getattr(self, option), str) or not getattr(self, option):
                raise ValueError(f"{option} must be a non-empty column name, got {getattr(self, option)!r}.")
        super().__post_init__()
        check_training_arguments(self)  # learning_rate, max_grad_norm, ...: no NaN or infinity either


def _has_cache(dataset: Any) -> bool:
    return dataset is not None and TEACHER_LOGITS in (getattr(dataset, "column_names", None) or [])


def _cache_width(dataset: Any) -> int | None:
    """Logits per row of a ``teacher_logits`` column, or None without one."""
    if not _has_cache(dataset):
        return None
    length = getattr(dataset.features[TEACHER_LOGITS], "length", -1)
    if isinstance(length, int) and length >= 0:
        return length
    first = dataset.with_format(None).select_columns([TEACHER_LOGITS])[0][TEACHER_LOGITS]
    return len(first)


def _check_label_sets(student, teacher, datasets: dict, label_column: str) -> None:
    """Student, teacher, label column and logit cache agree on the classes, before any training.

    A label beyond the student's outputs would stop training with an IndexError mid-epoch.
    """
    student_labels = getattr(getattr(student, "config", None), "num_labels", None)
    teacher_labels = getattr(getattr(teacher, "config", None), "num_labels", None)
    if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
        raise ValueError(
            f"teacher_model has num_labels={teacher_labels} but the student has num_labels={student_labels}: "
            "distillation compares their outputs class by class, so both need the same label set."
        )
    role = "student" if teacher is None else "student and the teacher"
    for name, dataset in datasets.items():
        named = dataset.items() if isinstance(dataset, dict) else [(None, dataset)]
        for key, part in named:
            where = name if key is None else f"{name}['{key}']"
            check_num_labels(student, dataset_num_classes(part, label_column), label_column, where, role)
            width = _cache_width(part)
            if width is not None and student_labels is not None and width != student_labels:
                raise ValueError(
                    f"Column '{TEACHER_LOGITS}' of {where} holds {width} logits per row but the student has "
                    f"num_labels={student_labels}: recompute it with precompute_teacher_logits() and a teacher "
                    "of the student's label set."
                )


def teacher_deepspeed_config(config: dict, teacher: Any) -> dict:
    """The DeepSpeed config for the frozen teacher, derived from the training run's.

    ZeRO-3 shards the teacher's weights like the student's (bucket sizes that depend on
    the model are set from the teacher's width, as ``"auto"`` is only resolved for the
    student). ZeRO-1/2 shard optimizer states and gradients, which a frozen teacher does
    not have: it then runs as a plain replica (stage 0). Optimizer and scheduler sections
    are dropped, since the teacher is never trained.
    """
    config = copy.deepcopy(config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        zero["stage"] = 0
        return config
    sizes = getattr(teacher.config, "hidden_sizes", None)
    width = max(sizes) if sizes else getattr(teacher.config, "hidden_size", None)
    if width:
        zero["reduce_bucket_size"] = width * width
        zero["stage3_param_persistence_threshold"] = 10 * width
        zero["stage3_prefetch_bucket_size"] = int(0.9 * width * width)
    return config


class DistillationTrainer(QuietTrainerMixin, CheckpointReloadMixin, RawImageDatasetMixin, Trainer):
    """A ``Trainer`` that distils ``model`` (the student) from a frozen ``teacher_model``.

    Args:
        model: the student, a model object or a name/path loaded with
            ``AutoModelForImageClassification`` (safetensors only).
        teacher_model: the teacher, same forms. It is put in eval mode, frozen and prepared
            by the accelerator for inference, as trl's distillation trainers do: on the
            student's device, sharded under DeepSpeed ZeRO-3 and FSDP, never wrapped in DDP.
            May be ``None`` when every dataset carries a ``teacher_logits`` cache, or when
            ``alpha == 0``.
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
    ``predict`` accept raw image datasets too, and that checkpoints are handled by
    :class:`~hf_backdoor_guard.training.checkpoints.CheckpointReloadMixin` (``resume_from_checkpoint=True``
    takes the newest *complete* checkpoint; weights reload through ``from_pretrained``).
    The teacher is not part of checkpoints: pass it again when resuming.

    Checked before any work: the arguments (no NaN or infinite option), that student,
    teacher, the label column of every dataset and any ``teacher_logits`` cache agree on
    the number of classes, and that a cache is not combined with random augmentation.
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
        _check_label_sets(model, teacher_model, {"train_dataset": train_dataset, "eval_dataset": eval_dataset},
                          args.label_column)
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

        self.teacher_processing_class = teacher_processing_class
        self.image_column, self.label_column = args.image_column, args.label_column
        self.teacher = None if teacher_model is None else self._prepare_teacher(teacher_model)

        bind_backdoor_callbacks(self)

    def _prepare_teacher(self, teacher):
        """The frozen teacher, prepared by the accelerator for inference, as trl's distillation trainers do.

        Under DeepSpeed ZeRO-3 and FSDP it is sharded like the student, so no device holds
        a full copy; otherwise it is placed on the student's device (and wrapped for mixed
        precision) without a DDP wrapper, since it is never trained.
        """
        # Frozen before any wrapping: DDP/FSDP then see no trainable weights, and FSDP does not
        # upcast them to float32 for an optimizer that never comes.
        teacher.eval()
        teacher.requires_grad_(False)
        if self.is_deepspeed_enabled:
            import deepspeed

            config = teacher_deepspeed_config(self.accelerator.state.deepspeed_plugin.deepspeed_config, teacher)
            engine, *_ = deepspeed.initialize(model=teacher, config=config)
            return engine.eval()
        if self.is_fsdp_enabled:
            from accelerate.utils import fsdp2_prepare_model

            if self.accelerator.is_fsdp2:
                return fsdp2_prepare_model(self.accelerator, teacher).eval()
            # FSDP1: prepare_model wraps in FullyShardedDataParallel only outside evaluation mode.
            return self.accelerator.prepare_model(teacher).eval()
        if not self.place_model_on_device:
            # The student is spread over devices by its own device_map: keep the teacher beside its first part.
            teacher.to(next(self.model.parameters()).device)
            return self.accelerator.prepare_model(teacher, device_placement=False, evaluation_mode=True)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    @staticmethod
    def _check_cache_and_augmentation(train_dataset: Any, args: DistillationTrainingArguments) -> None:
        """The one check of the rule "a teacher_logits cache needs training without random augmentation"."""
        if not _has_cache(train_dataset):
            return
        transform = dataset_transform(train_dataset)
        if transform is None and args.augment:
            augmenting = "DistillationTrainingArguments has augment=True"
        elif isinstance(transform, ImageClassificationTransform) and transform.augment:
            augmenting = "its ImageClassificationTransform has augment=True"
        else:
            augmenting = None
        if augmenting:
            raise ValueError(
                f"train_dataset has a '{TEACHER_LOGITS}' cache but {augmenting}: cached logits belong to the "
                "unaugmented images, so a random crop or flip would pair them with other pixels. Train with "
                f"augment=False, or drop the '{TEACHER_LOGITS}' column to run the teacher online."
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


# precompute_teacher_logits lives in teacher_logits.py; it is part of this module's API too.
__all__ = [
    "distillation_loss", "DistillationTrainingArguments", "DistillationTrainer", "precompute_teacher_logits",
    "teacher_deepspeed_config",
]
