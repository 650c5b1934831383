"""Plain classifier training (the teacher, or any baseline), backdoor metrics and a MultiStep LR schedule.

* :func:`build_classifier_trainer` / :func:`train_classifier`: the plain ``Trainer`` with
  this project's image transforms, checks and checkpoint handling;
* :class:`BackdoorMetricsCallback`: C-Acc, ASR and R-Acc at every evaluation;
* :class:`MultiStepLRCallback`: step decay of the learning rate at given epochs;
* :func:`check_training_arguments` and :func:`check_num_labels`: the checks every trainer
  here runs before training starts.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import logging
import math
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checkpoints import CheckpointReloadMixin
from ..runtime.console import QuietTrainerMixin
from .transforms import ImageClassificationCollator, prepare_image_dataset
from ..validation import check_dataset, check_int, check_label_column, check_number, check_target_label

logger = logging.getLogger(__name__)


def check_training_arguments(args: TrainingArguments) -> None:
    """Refuse NaN and infinity in every float option of ``args`` (learning_rate, max_grad_norm, ...).

    transformers accepts them, and training then runs to NaN weights without an error.
    """
    for option in dataclasses.fields(args):
        value = getattr(args, option.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            check_number(option.name, value)  # raises, naming the option


def dataset_num_classes(dataset: Any, label_column: str) -> int | None:
    """Classes of ``label_column`` (``ClassLabel`` size, else max + 1), or None when it cannot be told.

    Works on raw datasets and on views with a transform (read without the transform).
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or label_column not in dataset.column_names:
        return None
    if dataset.format["type"] is not None:
        dataset = dataset.with_format(None)
    return check_label_column(dataset, label_column)


def check_num_labels(model: Any, num_classes: int | None, label_column: str, dataset_name: str,
                     role: str = "model") -> None:
    """The model has an output for every class of the dataset's label column."""
    model_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_classes is None or model_labels is None or num_classes <= model_labels:
        return
    raise ValueError(
        f"Column '{label_column}' of {dataset_name} has {num_classes} classes but num_labels={model_labels} for "
        f"the {role}: build the {role} with num_labels={num_classes}, or map the labels of '{label_column}' to "
        f"0..{model_labels - 1}."
    )


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


class ImageClassifierTrainer(QuietTrainerMixin, CheckpointReloadMixin, RawImageDatasetMixin, Trainer):
    """The plain ``Trainer``, resuming only from complete checkpoints and reloading renamed
    weights (see :class:`~hf_backdoor_guard.training.checkpoints.CheckpointReloadMixin`), with
    ``evaluate``/``predict`` that accept raw image datasets."""


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
        from ..poisoning import triggered_testset

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
        from ..evaluation import evaluate_backdoor

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


# --------------------------------------------------------------------------------------
# MultiStep learning-rate schedule
# --------------------------------------------------------------------------------------
def check_milestones(milestones, gamma, *, milestones_name: str = "milestones",
                     gamma_name: str = "gamma") -> tuple[list[float], float]:
    """The MultiStep schedule's options, checked: positive, finite, non-decreasing epochs and a
    factor in (0, 1]. Returns them as floats. ``*_name`` is the option named in errors."""
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__len__") or len(milestones) == 0:
        raise ValueError(f"{milestones_name} must be a non-empty list of epochs, got {milestones!r}.")
    epochs = [check_number(f"{milestones_name}[{i}]", m, 0.0, None, low_inclusive=False)
              for i, m in enumerate(milestones)]
    if epochs != sorted(epochs):
        raise ValueError(f"{milestones_name} must be increasing epochs, got {list(milestones)!r}.")
    return epochs, check_number(gamma_name, gamma, 0.0, 1.0, low_inclusive=False)


class MultiStepFactor:
    """``gamma ** (number of milestones reached)`` at an optimizer step; a picklable LambdaLR function."""

    def __init__(self, milestone_steps: list[int], gamma: float):
        self.milestone_steps = list(milestone_steps)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestone_steps, step)


class MultiStepLRCallback(TrainerCallback):
    """Multiply the learning rate by ``gamma`` at each of ``milestones`` (in epochs).

    ``transformers`` has no MultiStep scheduler name, so this turns the trainer's
    ``constant`` schedule (a ``LambdaLR`` with factor 1) into step decay when training
    starts: the schedule's factor function is replaced, nothing else. Milestones become
    optimizer steps with the real number of update steps per epoch (after sharding
    across processes and gradient accumulation). Resumed runs keep the step count, so
    the decay continues where it stopped. Works with any ``Trainer``
    (``train_classifier``, ``DistillationTrainer``) through ``callbacks=``.

    Args:
        milestones: epochs (may be fractional) at which the rate is multiplied by ``gamma``;
            positive and non-decreasing.
        gamma: the factor, in (0, 1].
    """

    def __init__(self, milestones: list[float], gamma: float = 0.1):
        self.milestones, self.gamma = check_milestones(milestones, gamma)
        self.milestone_steps: list[int] | None = None

    @staticmethod
    def check_args(args) -> None:
        """The schedule it modifies must be the plain constant one, without warmup."""
        kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if kind != "constant":
            raise ValueError(
                f"lr_milestones needs lr_scheduler_type=constant (got {kind!r}): the milestones replace the schedule."
            )
        if args.warmup_steps or getattr(args, "warmup_ratio", 0):
            raise ValueError("lr_milestones does not combine with warmup; set warmup_steps to 0.")

    def on_train_begin(self, args, state, control, lr_scheduler=None, train_dataloader=None, **kwargs):
        from torch.optim.lr_scheduler import LambdaLR

        self.check_args(args)
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
        if not isinstance(lr_scheduler, LambdaLR):
            raise ValueError(f"MultiStepLRCallback needs the trainer's LambdaLR schedule, got {type(lr_scheduler)}.")
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
        else:  # max_steps training on an iterable dataset: fall back to the trainer's estimate
            steps_per_epoch = max(1, round(state.max_steps / max(state.num_train_epochs, 1)))
        self.milestone_steps = [int(round(m * steps_per_epoch)) for m in self.milestones]
        factor = MultiStepFactor(self.milestone_steps, self.gamma)
        lr_scheduler.lr_lambdas = [factor] * len(lr_scheduler.optimizer.param_groups)
        logger.info("MultiStep learning rate: x%g at epochs %s (optimizer steps %s, %d per epoch)", self.gamma,
                    self.milestones, self.milestone_steps, steps_per_epoch)


# --------------------------------------------------------------------------------------
# Plain classifier training
# --------------------------------------------------------------------------------------
def build_classifier_trainer(
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
    trainer_class: type | None = None,
    **trainer_options: Any,
) -> ImageClassifierTrainer:
    """The :class:`ImageClassifierTrainer` that :func:`train_classifier` trains, set up but not trained.

    Use it to add callbacks or call ``trainer.train(...)`` yourself. Everything is checked
    here, before any work: the columns, the model's ``num_labels`` against the classes,
    and the float options of ``args``. See :func:`train_classifier` for the arguments.

    ``trainer_class`` (a subclass of :class:`ImageClassifierTrainer`, e.g. one with its own
    ``compute_loss``) is built instead, with ``trainer_options`` as extra constructor arguments.
    """
    trainer_class = ImageClassifierTrainer if trainer_class is None else trainer_class
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, ImageClassifierTrainer)):
        raise ValueError(f"trainer_class must be a subclass of ImageClassifierTrainer, got {trainer_class!r}.")
    if not isinstance(args, TrainingArguments):
        raise ValueError(f"args must be transformers.TrainingArguments, got {type(args).__name__}.")
    check_training_arguments(args)
    num_classes = check_dataset(train_ds, image_column, label_column)
    check_num_labels(model, num_classes, label_column, "train_ds")
    datasets = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
    for name, dataset in datasets:
        if dataset is not None:
            check_num_labels(model, check_dataset(dataset, image_column, label_column), label_column, name)
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
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=ImageClassificationCollator(),
        train_dataset=train_view,
        eval_dataset=eval_view,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        **trainer_options,
    )
    trainer.image_column, trainer.label_column = image_column, label_column
    bind_backdoor_callbacks(trainer)
    return trainer


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
) -> ImageClassifierTrainer:
    """Train ``model`` on ``train_ds`` with the plain ``transformers.Trainer`` and return the trainer.

    Used for the teacher (on the possibly poisoned data) and for baselines. Images go
    through :class:`ImageClassificationTransform` (random flip and crop with padding
    when ``augment``, then ``image_processor``); evaluation data is never augmented.

    Returns the trainer (an :class:`ImageClassifierTrainer`) after training, not the
    model: it carries the trained model (``trainer.model``), the log history
    (``trainer.state.log_history``) and ``evaluate`` / ``save_model``. For the trainer
    set up but untrained, call :func:`build_classifier_trainer` instead.

    ``resume_from_checkpoint``: a checkpoint folder, or ``True`` for the newest complete
    checkpoint in ``args.output_dir`` (half-written ones, from a kill while saving, are
    skipped with a warning).

    ``args`` is not modified; if it has ``remove_unused_columns=True`` (the
    ``TrainingArguments`` default) a copy with ``False`` is used, since the raw image
    column must reach the transform. ``callbacks`` may include a
    :class:`BackdoorMetricsCallback`, which is bound to the trainer.
    """
    trainer = build_classifier_trainer(
        model, train_ds, args, image_processor, eval_dataset, augment, callbacks, compute_metrics=compute_metrics,
        image_column=image_column, label_column=label_column,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer
