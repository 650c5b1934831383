"""Test-time purification with the project's diffusion variations, in the spirit of ZIP (Shi et al., NeurIPS 2023).

Assumes: no clean data; no training at all (the undefended model is used as it is);
an image-variation diffusion model that never saw the poisoned data; at inference,
``num_variations`` diffusion samples plus as many classifier passes per input.

Each *test* input is replaced by its diffusion variations (the same
:class:`~hf_backdoor_guard.ImageVariation` the training-time method uses), the
undefended model classifies every variation, and the prediction is the class of the
mean softmax over them. A small trigger does not survive the noising and denoising, so
the variations show the true class. On the embedded benchmark the diffusion model was
trained on the digits ``pretrain`` split, the same split the clean subsets of the
fine-tuning baselines are drawn from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..validation import check_image_column, check_int
from .base import DEFENSES, Assumptions, Defense, DefenseInputs, DefenseResult

logger = logging.getLogger(__name__)


def _check_variation(variation) -> None:
    if not callable(getattr(variation, "generate", None)) or not isinstance(getattr(variation, "num_variations", None),
                                                                          int):
        raise ValueError(f"variation must be an hbg.ImageVariation (e.g. ImageVariation.embedded()), got {variation!r}.")


class PurifiedClassifier:
    """A classifier that predicts each input from the diffusion variations of it.

    Args:
        model: any ``transformers`` image classifier (typically the undefended one).
        variation: an :class:`~hf_backdoor_guard.ImageVariation`; its ``num_variations``
            variations per input are classified and their softmax averaged. Row ``i`` of a
            dataset gets the variation seeds of row ``i`` (reproducible, batch-independent).
        image_processor: the model's image processor.
        batch_size: inputs per batch (each gives ``num_variations`` images).

    ``predict_logits(ds)`` returns the log of the mean probabilities (so ``argmax`` is the
    prediction), ``predict(ds)`` the classes; measure them with the same C-Acc / ASR /
    R-Acc functions as any model (:func:`~hf_backdoor_guard.defenses.evaluate_defense`).
    """

    def __init__(self, model, variation, image_processor, *, batch_size: int = 32, image_column: str = "image"):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a transformers image classifier, got {type(model).__name__}.")
        _check_variation(variation)
        if image_processor is None or not callable(image_processor):
            raise ValueError(f"image_processor must be the model's image processor, got {image_processor!r}.")
        self.model = model
        self.variation = variation
        self.image_processor = image_processor
        self.batch_size = check_int("batch_size", batch_size)
        self.image_column = image_column

    @torch.no_grad()
    def probabilities(self, images: list, indices: list[int]) -> np.ndarray:
        """Mean softmax of the model over the variations of each image: ``[len(images), num_labels]``."""
        from ..images import to_rgb

        sources = [to_rgb(image) for image in images]
        varied = self.variation.generate(sources, list(indices))
        parameter = next(self.model.parameters())
        pixels = self.image_processor(images=varied, return_tensors="pt")["pixel_values"]
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype)).logits.float()
        finally:
            self.model.train(was_training)
        probabilities = logits.softmax(dim=-1).reshape(len(sources), self.variation.num_variations, -1)
        return probabilities.mean(dim=1).cpu().numpy()

    def predict_logits(self, ds, progress: bool = True) -> np.ndarray:
        """Log of the mean softmax over each row's variations, ``[N, num_labels]`` float32."""
        check_image_column(ds, self.image_column)
        outputs, start = [], 0
        total = -(-len(ds) // self.batch_size)
        batches = ds.select_columns([self.image_column]).iter(batch_size=self.batch_size)
        for batch in tqdm(batches, total=total, desc="Purifying", unit="batch", disable=not progress, leave=False):
            images = batch[self.image_column]
            outputs.append(self.probabilities(images, range(start, start + len(images))))
            start += len(images)
        return np.log(np.clip(np.concatenate(outputs), 1e-12, None)).astype(np.float32)

    def predict(self, ds, progress: bool = True) -> np.ndarray:
        """Predicted class of every row of ``ds``."""
        return self.predict_logits(ds, progress).argmax(axis=1)

    def __repr__(self) -> str:
        return f"PurifiedClassifier({type(self.model).__name__}, {self.variation!r})"


@DEFENSES.register
@dataclass
class TestTimePurification(Defense):
    """ZIP-style purification of test inputs with ``variation``. No clean data, no training.

    Args:
        variation: the :class:`~hf_backdoor_guard.ImageVariation` to purify with (required).
        batch_size: test inputs per batch.
    """

    name: ClassVar[str] = "purification"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="none (the diffusion model must not have seen the poisoned data)",
        training="none: the undefended model is used as it is",
        inference_cost="num_variations diffusion samples and classifier passes per input",
        needs_backdoored_model=True,
        needs_variation=True,
    )

    variation: Any = None
    batch_size: int = 32

    def __post_init__(self):
        if self.variation is None:
            raise ValueError("Defense 'purification' needs variation=hbg.ImageVariation(...) "
                             "(e.g. ImageVariation.embedded()).")
        _check_variation(self.variation)
        check_int("batch_size", self.batch_size)

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        classifier = PurifiedClassifier(inputs.backdoored_model, self.variation, inputs.image_processor,
                                        batch_size=self.batch_size, image_column=inputs.image_column)
        return self.result(classifier, info={"num_variations": self.variation.num_variations})
