"""The shared flow of the data-cleaning baselines (spectral signatures, activation clustering).

Penultimate features of the backdoored model for every training row -> per-class
suspicion scores and removed rows (the subclass's :meth:`DataCleaningDefense.score`) ->
a new model trained on the rows kept, for as many epochs as the undefended training.
"""

from __future__ import annotations

import logging

import numpy as np

from .base import Defense, DefenseInputs, DefenseResult, penultimate_features

logger = logging.getLogger(__name__)


class DataCleaningDefense(Defense):
    """Score rows from the backdoored model's penultimate features, drop the flagged ones, retrain."""

    def score(self, features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Return ``(suspicion per row, removed per row, info)``; scores and decisions are made per class."""
        raise NotImplementedError

    def defend(self, inputs: DefenseInputs) -> DefenseResult:
        train = inputs.train
        features = penultimate_features(inputs.backdoored_model, train, inputs.image_processor,
                                        image_column=inputs.image_column)
        labels = np.asarray(train[inputs.label_column])
        suspicion, removed, info = self.score(features, labels, inputs.seed)
        kept = ~removed
        logger.info("[%s] removing %d of %d rows, training a new model on the rest", self.name, removed.sum(), len(train))
        model = inputs.fit(inputs.new_model(), train.select(np.flatnonzero(kept)), "retrain", inputs.epochs)
        info["removed"] = int(removed.sum())
        if "poisoned" in train.column_names:  # research data: how many removed rows were poison
            info["removed_poisoned"] = int(np.asarray(train["poisoned"], dtype=bool)[removed].sum())
        return self.result(model, suspicion=suspicion, kept=kept, info=info)


def rows_by_class(labels: np.ndarray):
    """``(class, row indices)`` for every class present in ``labels``."""
    for label in np.unique(labels):
        yield int(label), np.flatnonzero(labels == label)
