"""Plain classifier training (the teacher, or any baseline) and backdoor metrics during training."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .transforms import ImageClassificationCollator, prepare_image_dataset
from .validation import check_dataset, check_int, check_target_label

logger = logging.getLogger(__name__)


class CheckpointReloadMixin:
    """Reload checkpoints through ``from_pretrained`` so renamed weights are converted.

    transformers 5 renames some models' parameters in memory (ViT: ``vit.encoder.layer.N``
    became ``vit.layers.N``) and converts back to the old names in ``save_pretrained``,
    but ``Trainer`` reloads checkpoints (``resume_from_checkpoint``,
    ``load_best_model_at_end``) with a raw, non-strict ``load_state_dict``: every renamed
    weight is silently skipped and training resumes from the initial weights. Loading
    the checkpoint with ``from_pretrained`` applies the conversion; the weights are then
    copied strictly. DeepSpeed, FSDP, PEFT and SageMaker keep the Trainer's own path.
    """

    def _reload_plain_checkpoint(self, folder: str | None, model=None) -> bool:
        from transformers import PreTrainedModel

        if not folder or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        if not any(os.path.isfile(os.path.join(folder, name))
                   for name in ("model.safetensors", "model.safetensors.index.json")):
            return False
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(target, PreTrainedModel) or hasattr(target, "peft_config"):
            return False
        logger.info("Loading model weights from %s", folder)
        loaded = type(target).from_pretrained(
            folder, config=target.config, use_safetensors=True, trust_remote_code=False
        )
        target.load_state_dict(loaded.state_dict(), strict=True)
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._reload_plain_checkpoint(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._reload_plain_checkpoint(self.state.best_model_checkpoint):
            super()._load_best_model()


class RawImageDatasetMixin:
    """Let ``evaluate(ds)`` / ``predict(ds)`` take raw image datasets, as ``__init__`` does.

    Datasets passed later get the same unaugmented :class:`ImageClassificationTransform`
    (student processor, and the teacher's where it differs).
    """

    image_column: str = "image"
    label_column: str = "label"
    teacher_processing_class: Any = None

    def _prepare_later_dataset(self, dataset, name):
        from datasets import Dataset

        if not isinstance(dataset, Dataset):
            return dataset
        return prepare_image_dataset(
            dataset, self.processing_class, augment=False, teacher_image_processor=self.teacher_processing_class,
            image_column=self.image_column, label_column=self.label_column, name=name,
        )

    def get_eval_dataloader(self, eval_dataset=None):
        return super().get_eval_dataloader(self._prepare_later_dataset(eval_dataset, "eval_dataset"))

    def get_test_dataloader(self, test_dataset):
        return super().get_test_dataloader(self._prepare_later_dataset(test_dataset, "test_dataset"))


class ImageClassifierTrainer(CheckpointReloadMixin, RawImageDatasetMixin, Trainer):
    """The plain ``Trainer`` with checkpoint reloading that converts renamed weights,
    and ``evaluate``/``predict`` that accept raw image datasets."""


class BackdoorMetricsCallback(TrainerCallback):
    """Run :func:`~hf_backdoor_guard.evaluate_backdoor` at every evaluation and log C-Acc, ASR and R-Acc.

    The triggered test set is built once, here. At each ``on_evaluate`` the three
    numbers are added to the evaluation metrics as ``eval_clean_accuracy``,
    ``eval_attack_success_rate`` and ``eval_robust_accuracy`` (so
    ``metric_for_best_model`` may use them) and logged through the trainer, so every
    ``report_to`` integration (TensorBoard, ...) receives them.

    Logging needs the trainer: :class:`DistillationTrainer` and :func:`train_classifier`
    bind it themselves; with a plain ``Trainer`` call ``callback.bind(trainer)`` (without
    it the numbers still reach the metrics dict and ``trainer.state.log_history``).

    Args:
        test_ds: clean test set with image and label columns.
        attack: the attack whose trigger is measured (an ``hbg.Attack``).
        target_label: the backdoor's target class.
        image_processor: the evaluated model's processor.
        batch_size: images per forward pass.
        metric_key_prefix: prefix of the logged keys when the Trainer's own prefix cannot be
            read from the metrics (with a dict of eval sets the keys follow the Trainer:
            ``eval_<name>_attack_success_rate``; the test set is evaluated once per step).

    In multi-process runs every process evaluates the whole test set, so all processes
    hold the same metrics.
    """

    def __init__(
        self,
        test_ds,
        attack,
        target_label: int = 0,
        image_processor: Any = None,
        batch_size: int = 64,
        *,
        image_column: str = "image",
        label_column: str = "label",
        metric_key_prefix: str = "eval",
    ):
        from .poisoning import triggered_testset

        num_classes = check_dataset(test_ds, image_column, label_column)
        check_target_label(target_label, num_classes, label_column)
        check_int("batch_size", batch_size)
        self.test_ds = test_ds
        self.attack = attack
        self.target_label = target_label
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.image_column = image_column
        self.label_column = label_column
        self.metric_key_prefix = metric_key_prefix
        self.triggered_ds = triggered_testset(test_ds, attack, target_label, image_column, label_column)
        self.trainer = None
        self._last: tuple[tuple, dict] | None = None

    def bind(self, trainer: Trainer) -> BackdoorMetricsCallback:
        """Log through ``trainer`` (reaches its ``report_to`` integrations)."""
        self.trainer = trainer
        if self.image_processor is None:
            self.image_processor = getattr(trainer, "processing_class", None)
        return self

    def compute(self, model) -> dict[str, float]:
        """``clean_accuracy``, ``attack_success_rate`` and ``robust_accuracy`` of ``model`` now."""
        from .evaluation import evaluate_backdoor

        result = evaluate_backdoor(
            model, self.test_ds, self.attack, self.target_label, self.image_processor, self.batch_size,
            image_column=self.image_column, label_column=self.label_column, triggered_ds=self.triggered_ds,
            progress=False,
        )
        return {key: float(value) for key, value in result.items()}

    @staticmethod
    def _weights_key(model) -> tuple:
        # Cheap identity of the current weights (one sum per tensor), far cheaper than an evaluation.
        with torch.no_grad():
            return tuple(float(p.detach().double().sum()) for p in model.parameters())

    def _prefix(self, metrics: dict | None) -> str:
        # The Trainer's prefix for this evaluation ("eval", or "eval_<name>" for a dict of eval sets).
        for key in metrics or {}:
            if key.endswith("_runtime"):
                return key[: -len("_runtime")]
        return self.metric_key_prefix

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None:
            return
        # With several eval datasets on_evaluate fires once per dataset: evaluate the same
        # weights only once (a reloaded best model at the same step counts as new weights).
        key = (state.global_step, self._weights_key(model))
        if self._last is not None and self._last[0] == key:
            results = self._last[1]
        else:
            results = self.compute(model)
            self._last = (key, results)
        prefixed = {f"{self._prefix(metrics)}_{name}": value for name, value in results.items()}
        if metrics is not None:
            metrics.update(prefixed)
        if self.trainer is not None:
            self.trainer.log(dict(prefixed))
        else:
            state.log_history.append({**prefixed, "step": state.global_step})


def bind_backdoor_callbacks(trainer: Trainer) -> None:
    """Bind every :class:`BackdoorMetricsCallback` of ``trainer`` to it."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, BackdoorMetricsCallback):
            callback.bind(trainer)


def train_classifier(
    model,
    train_ds,
    args: TrainingArguments,
    image_processor: Any = None,
    eval_dataset=None,
    augment: bool = True,
    callbacks: list | None = None,
    *,
    compute_metrics=None,
    image_column: str = "image",
    label_column: str = "label",
    resume_from_checkpoint: str | bool | None = None,
    train: bool = True,
) -> Trainer:
    """Train ``model`` on ``train_ds`` with the plain ``transformers.Trainer`` and return the trainer.

    Used for the teacher (on the possibly poisoned data) and for baselines. Images go
    through :class:`ImageClassificationTransform` (random flip and crop with padding
    when ``augment``, then ``image_processor``); evaluation data is never augmented.

    Returns the trainer (an :class:`ImageClassifierTrainer`, i.e. a ``Trainer`` whose
    checkpoint reloading handles renamed weights) after training, not the model: it carries the trained
    model (``trainer.model``), the log history (``trainer.state.log_history``) and
    ``evaluate`` / ``save_model``. Pass ``train=False`` to get it set up but untrained.

    ``args`` is not modified; if it has ``remove_unused_columns=True`` (the
    ``TrainingArguments`` default) a copy with ``False`` is used, since the raw image
    column must reach the transform. ``callbacks`` may include a
    :class:`BackdoorMetricsCallback`, which is bound to the trainer.
    """
    if not isinstance(args, TrainingArguments):
        raise ValueError(f"args must be transformers.TrainingArguments, got {type(args).__name__}.")
    num_classes = check_dataset(train_ds, image_column, label_column)
    model_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_classes is not None and model_labels is not None and num_classes > model_labels:
        raise ValueError(
            f"Column '{label_column}' has {num_classes} classes but the model has num_labels={model_labels}."
        )
    datasets = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    for dataset in datasets:
        if dataset is not None:
            check_dataset(dataset, image_column, label_column)
    if args.remove_unused_columns:
        args = copy.copy(args)
        args.remove_unused_columns = False
    train_view = prepare_image_dataset(
        train_ds, image_processor, augment=augment, image_column=image_column, label_column=label_column,
        name="train_ds",
    )
    eval_view = prepare_image_dataset(
        eval_dataset, image_processor, augment=False, image_column=image_column, label_column=label_column,
        name="eval_dataset",
    )
    trainer = ImageClassifierTrainer(
        model=model,
        args=args,
        data_collator=ImageClassificationCollator(),
        train_dataset=train_view,
        eval_dataset=eval_view,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    trainer.image_column, trainer.label_column = image_column, label_column
    bind_backdoor_callbacks(trainer)
    if train:
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer
