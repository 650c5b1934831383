"""One entry point for every peer defense: ``run_defense(name, poisoned_train, ...) -> DefenseResult``.

A defense is one class and one registration line::

    @DEFENSES.register
    @dataclass
    class MyDefense(Defense):
        name: ClassVar[str] = "my_defense"
        assumes: ClassVar[Assumptions] = Assumptions(
            clean_data="none", training="trains a new model on the kept rows", inference_cost="none")
        strength: float = 1.0           # options are dataclass fields, checked in __post_init__

        def defend(self, inputs: DefenseInputs) -> DefenseResult:
            ...

:func:`run_defense` checks every input once, before any work starts (columns, the
clean subset's size, the options, what the model must offer), trains the undefended
model on the poisoned data when the defense needs it and none was given, and times
the defense. Training always goes through the ``transformers.Trainer``
(:func:`~hf_backdoor_guard.training.classifier.train_classifier`, or :class:`DefenseTrainer` where a
defense changes the loss), with the caller's ``TrainingArguments``; a defense only
changes the number of epochs of its phases (and, where its paper says so, the
learning rate), and writes each phase under ``training_args.output_dir/<name>/<phase>``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..registry import Registry
from ..validation import check_dataset, check_int

logger = logging.getLogger(__name__)

DEFENSES = Registry("defense")


@dataclass(frozen=True)
class Assumptions:
    """What a defense needs beyond the poisoned data, stated in its docstring and in every result.

    Args:
        clean_data: how much trusted clean data it needs ("none", or a share of the training size).
        training: what it needs to do with training (train from scratch, fine-tune the
            backdoored model, nothing).
        inference_cost: extra work per test input ("none" for a plain model).
        needs_clean_subset: ``run_defense`` refuses to run it without a clean subset.
        needs_backdoored_model: it starts from the undefended model trained on the poisoned
            data (``run_defense`` trains one when none is given).
        needs_variation: it takes an image-variation diffusion model (its ``variation`` option);
            ``compare`` gives it the method's, so both use the same diffusion model and settings.
    """

    clean_data: str
    training: str
    inference_cost: str = "none"
    needs_clean_subset: bool = False
    needs_backdoored_model: bool = False
    needs_variation: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DefenseResult:
    """What a defense returns.

    Args:
        name: the defense's registered name.
        model: a ``transformers`` image classifier, or (test-time defenses) an object with
            ``predict_logits(ds)`` such as :class:`~hf_backdoor_guard.PurifiedClassifier`;
            :func:`~hf_backdoor_guard.defenses.evaluate_defense` measures either.
        assumes: the defense's :class:`Assumptions` as a dict.
        suspicion: one score per training row (higher = more suspicious), for defenses that
            score rows (ABL, spectral signatures, activation clustering); report its AUROC
            beside ``detect_poisoned``'s.
        kept: one bool per training row: the rows the defense trained on (data-cleaning
            defenses) or did not isolate (ABL).
        info: defense-specific facts (pruned channels, attention distances, ...), JSON-safe.
        seconds: wall time of the defense itself (``run_defense`` fills it in).
    """

    name: str
    model: Any
    assumes: dict
    suspicion: np.ndarray | None = None
    kept: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DefenseInputs:
    """The checked inputs every defense receives (built by :func:`run_defense`)."""

    train: Any
    model_factory: Callable[[], Any]
    training_args: Any
    image_processor: Any
    clean_subset: Any = None
    backdoored_model: Any = None
    augment: bool = True
    image_column: str = "image"
    label_column: str = "label"
    defense_name: str = "defense"

    @property
    def epochs(self) -> float:
        """The undefended training's epochs: defenses size their phases from it."""
        return float(self.training_args.num_train_epochs)

    @property
    def seed(self) -> int:
        return int(self.training_args.seed)

    def new_model(self):
        """A fresh model from ``model_factory``."""
        return _checked_model(self.model_factory(), "model_factory()")

    def phase_args(self, phase: str, epochs: float, **changes: Any):
        """The caller's ``TrainingArguments`` for one phase: ``epochs`` epochs, its own output folder."""
        output_dir = os.path.join(self.training_args.output_dir, self.defense_name, phase)
        return dataclasses.replace(
            self.training_args, output_dir=output_dir, num_train_epochs=float(epochs), max_steps=-1, **changes
        )

    def fit(self, model, dataset, phase: str, epochs: float, trainer_class=None, **trainer_options):
        """Train ``model`` on ``dataset`` for ``epochs`` epochs through the Trainer; returns the trained model.

        ``trainer_class`` (a :class:`DefenseTrainer` subclass) replaces the plain loss;
        ``trainer_options`` go to its constructor; ``learning_rate=...`` changes the phase's rate.
        """
        from ..training.classifier import build_classifier_trainer

        changes = {key: trainer_options.pop(key) for key in ("learning_rate",) if key in trainer_options}
        args = self.phase_args(phase, epochs, **changes)
        logger.info("[%s] %s: %d rows, %.3g epochs", self.defense_name, phase, len(dataset), epochs)
        trainer = build_classifier_trainer(
            model, dataset, args, self.image_processor, augment=self.augment, image_column=self.image_column,
            label_column=self.label_column, trainer_class=trainer_class, **trainer_options,
        )
        trainer.train()
        return trainer.model

    def sample_pixels(self, rows: int = 2) -> torch.Tensor:
        """A few preprocessed images of the data, to probe what a model's forward pass returns."""
        from ..images import to_rgb

        source = self.clean_subset if self.clean_subset is not None else self.train
        images = [to_rgb(image) for image in source.select(range(min(rows, len(source))))[self.image_column]]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


class Defense:
    """Base class of the peer defenses: a ``name``, what it ``assumes``, and ``defend``.

    Subclasses are dataclasses whose fields are the defense's options, checked in
    ``__post_init__``; :meth:`check` may inspect the inputs (e.g. the model's structure)
    before any work starts.
    """

    name: ClassVar[str] = ""
    assumes: ClassVar[Assumptions]

    def check(self, inputs: DefenseInputs) -> None:
        """Raise ``ValueError`` if the inputs cannot work for this defense (runs before any training)."""

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The defense's options (JSON-safe where possible), for reports."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def result(self, model, **fields: Any) -> DefenseResult:
        return DefenseResult(name=self.name, model=model, assumes=self.assumes.to_dict(), **fields)


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return repr(value)


def _checked_model(model, what: str):
    if isinstance(model, tuple) and model and isinstance(model[0], torch.nn.Module):
        model = model[0]  # builders such as demo.build_classifier return (model, processor)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise ValueError(
            f"{what} must give a transformers image classifier (e.g. AutoModelForImageClassification), "
            f"got {type(model).__name__}."
        )
    return model


def resolve_defense(defense: str | Defense, **options: Any) -> Defense:
    """A defense object from a registered name (with ``options``) or an instance (no options then)."""
    if isinstance(defense, Defense):
        if options:
            raise ValueError(f"Options {sorted(options)} were given with a {type(defense).__name__} instance; "
                             "set them on the instance instead.")
        return defense
    cls = DEFENSES[defense]
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for defense '{defense}'; it takes {sorted(known)}.")
    return cls(**options)


def check_clean_subset(clean_subset, train, image_column: str = "image", label_column: str = "label") -> None:
    """The clean subset is a non-empty dataset with the training data's columns, smaller than the data."""
    from datasets import Dataset

    if not isinstance(clean_subset, Dataset):
        raise ValueError(f"clean_subset must be a datasets.Dataset of trusted clean rows, got {type(clean_subset).__name__}.")
    if len(clean_subset) == 0:
        raise ValueError(
            "clean_subset is empty; defenses that need clean data get a small trusted subset "
            "(BackdoorBench: 5% of the training size)."
        )
    if len(clean_subset) > len(train):
        raise ValueError(
            f"clean_subset has {len(clean_subset)} rows, more than the {len(train)} rows of the training data; "
            "it stands for a small trusted share (BackdoorBench: 5% of the training size)."
        )
    check_dataset(clean_subset, image_column, label_column)


def draw_clean_subset(pool, num_rows: int, seed: int = 0, label_column: str = "label"):
    """A class-stratified random subset of ``num_rows`` rows of ``pool`` (trusted clean data)."""
    from sklearn.model_selection import train_test_split

    check_int("num_rows", num_rows, maximum=len(pool))
    if num_rows == len(pool):
        return pool
    labels = np.asarray(pool[label_column])
    stratify = labels if num_rows >= len(np.unique(labels)) else None
    keep, _ = train_test_split(np.arange(len(pool)), train_size=num_rows, random_state=seed, stratify=stratify)
    return pool.select(np.sort(keep))


def run_defense(
    defense: str | Defense,
    poisoned_train,
    *,
    model_factory: Callable[[], Any],
    training_args,
    image_processor,
    clean_subset=None,
    backdoored_model=None,
    augment: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    **options: Any,
) -> DefenseResult:
    """Run one defense on possibly poisoned training data and return a :class:`DefenseResult`.

    Args:
        defense: a registered name (``DEFENSES.names()``) or a :class:`Defense` instance.
        poisoned_train: the training data, a ``datasets.Dataset`` with an image and a label
            column (any HF image dataset; name the columns with ``image_column``/``label_column``).
        model_factory: called with no arguments, returns a fresh
            ``AutoModelForImageClassification`` (randomly initialised or pretrained) whose
            ``num_labels`` covers the labels; ``(model, processor)`` tuples are accepted.
        training_args: ``transformers.TrainingArguments`` of the undefended training; each
            phase of a defense copies them and changes only its epochs and output folder
            (and, where the paper says so, the learning rate).
        image_processor: the model's image processor.
        clean_subset: trusted clean rows, for the defenses that need them (BackdoorBench: 5%
            of the training size); non-empty and no larger than the training data.
        backdoored_model: the undefended model already trained on ``poisoned_train`` (the
            pipeline's teacher). Defenses that start from it train one when it is None.
        augment: random flip and crop in every training phase (as ``train_classifier``).
        options: the defense's options (fields of its class).

    The input model and datasets are never modified: defenses that change the backdoored
    model work on a copy.
    """
    from transformers import TrainingArguments

    chosen = resolve_defense(defense, **options)
    num_classes = check_dataset(poisoned_train, image_column, label_column)
    if not isinstance(training_args, TrainingArguments):
        raise ValueError(f"training_args must be transformers.TrainingArguments, got {type(training_args).__name__}.")
    if not callable(model_factory):
        raise ValueError(f"model_factory must be a function returning a fresh model, got {model_factory!r}.")
    if image_processor is None or not callable(image_processor):
        raise ValueError(f"image_processor must be the model's image processor, got {image_processor!r}.")
    if clean_subset is not None:
        check_clean_subset(clean_subset, poisoned_train, image_column, label_column)
    elif chosen.assumes.needs_clean_subset:
        raise ValueError(
            f"Defense '{chosen.name}' needs trusted clean data: pass clean_subset= (BackdoorBench gives 5% of the "
            "training size)."
        )
    if backdoored_model is not None:
        backdoored_model = _checked_model(backdoored_model, "backdoored_model")
        labels = getattr(backdoored_model.config, "num_labels", None)
        if num_classes is not None and labels is not None and num_classes > labels:
            raise ValueError(f"backdoored_model has num_labels={labels} but column '{label_column}' has "
                             f"{num_classes} classes.")
    inputs = DefenseInputs(
        train=poisoned_train, model_factory=model_factory, training_args=training_args,
        image_processor=image_processor, clean_subset=clean_subset, backdoored_model=backdoored_model,
        augment=bool(augment), image_column=image_column, label_column=label_column, defense_name=chosen.name,
    )
    chosen.check(inputs)

    if chosen.assumes.needs_backdoored_model and inputs.backdoored_model is None:
        logger.info("[%s] training the undefended model on the poisoned data first", chosen.name)
        inputs.backdoored_model = inputs.fit(inputs.new_model(), poisoned_train, "backdoored", inputs.epochs)
    started = time.perf_counter()
    result = chosen.defend(inputs)
    result.seconds = round(time.perf_counter() - started, 2)
    result.info.setdefault("options", chosen.options())
    return result


# --- what defenses read from a model ---------------------------------------------------------
def conv_stage_outputs(model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The stage outputs of ``model`` that are feature maps ``[batch, channels, height, width]``.

    Read from ``output_hidden_states`` (the embedding output, index 0, is left out).
    """
    was_training = model.training
    model.eval()  # in training mode batch norm would update its running statistics
    try:
        with torch.no_grad():
            outputs = model(pixel_values=pixel_values.to(next(model.parameters()).device), output_hidden_states=True)
    finally:
        model.train(was_training)
    hidden = getattr(outputs, "hidden_states", None) or ()
    return [state for state in hidden[1:] if state.ndim == 4]


def require_conv_stages(model, pixel_values: torch.Tensor, defense: str) -> None:
    """``ValueError`` naming the requirement when ``model`` has no convolutional stage."""
    if not conv_stage_outputs(model, pixel_values):
        raise ValueError(
            f"Defense '{defense}' needs a model with a convolutional stage: output_hidden_states must give "
            f"feature maps [batch, channels, height, width] (ResNet, ConvNeXt, ...); "
            f"{type(model).__name__} gives none. Choose a convolutional model or another defense."
        )


def classification_head(model) -> torch.nn.Linear:
    """The last ``nn.Linear`` with ``num_labels`` outputs: its input is the penultimate representation."""
    num_labels = model.config.num_labels
    heads = [module for module in model.modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == num_labels]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear classification head with {num_labels} outputs, "
                         "so its penultimate features cannot be read.")
    return heads[-1]


def penultimate_features(model, ds, image_processor, *, batch_size: int = 128, image_column: str = "image") -> np.ndarray:
    """The input of ``model``'s classification head for every row of ``ds``, ``[N, features]`` float32."""
    from ..evaluation import predict_logits

    captured: list[np.ndarray] = []

    def keep_input(module, args):
        captured.append(args[0].detach().flatten(1).float().cpu().numpy())

    handle = classification_head(model).register_forward_pre_hook(keep_input)
    try:
        predict_logits(model, ds, image_processor, batch_size=batch_size, image_column=image_column, progress=False)
    finally:
        handle.remove()
    return np.concatenate(captured)


def per_row_cross_entropy(model, ds, image_processor, *, image_column: str = "image",
                          label_column: str = "label") -> np.ndarray:
    """Cross-entropy of ``model`` on every row of ``ds`` (unaugmented), float64."""
    from ..evaluation import predict_logits

    logits = predict_logits(model, ds, image_processor, batch_size=128, image_column=image_column,
                            progress=False).astype(np.float64)
    labels = np.asarray(ds[label_column])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def accuracy_on(model, ds, image_processor, *, image_column: str = "image", label_column: str = "label") -> float:
    """Share of ``ds`` that ``model`` classifies as labelled."""
    from ..evaluation import predict_logits
    from ..metrics import clean_accuracy

    logits = predict_logits(model, ds, image_processor, batch_size=128, image_column=image_column, progress=False)
    return clean_accuracy(logits.argmax(axis=1), ds[label_column])


def frozen_copy(model):
    """A deep copy of ``model`` in eval mode with no gradients (a teacher inside a trainer)."""
    twin = copy.deepcopy(model)
    twin.eval()
    twin.requires_grad_(False)
    return twin
