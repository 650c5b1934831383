"""Spectral signatures (Tran et al., NeurIPS 2018): poison leaves a trace in the top singular direction.

Assumes: no clean data; the backdoored model (its penultimate features) and the right
to train a new model; no extra inference cost.

For every class, the penultimate features of its rows are centred and projected on
their top right-singular vector; a row's score is the squared projection. Poisoned
rows of a class form a separate sub-population, which dominates that direction, so
they score high. The top ``removal_factor * poison_rate`` share of every class is
removed (paper: 1.5 times an upper bound on the poisoned share; BackdoorBench removes
the top 15%), and a new model is trained on the rest.

Scores are per-class quantities; they are returned as they are (higher = more
suspicious), so an AUROC over all rows mixes classes as the removal does not. With
poison concentrated in one class (an all-to-one attack) and making up a large share of
it, both sub-populations sit far from the class mean and the scores separate them
less well: a known limit of the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..validation import check_fraction, check_number
from .base import DEFENSES, Assumptions
from .cleaning import DataCleaningDefense, rows_by_class


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """Squared projection of each centred row on the top right-singular vector of ``features``."""
    centred = features - features.mean(axis=0, keepdims=True)
    if len(centred) < 2:
        return np.zeros(len(centred))
    _, _, right = np.linalg.svd(centred, full_matrices=False)
    return (centred @ right[0]) ** 2


@DEFENSES.register
@dataclass
class SpectralSignatures(DataCleaningDefense):
    """Spectral signatures (Tran et al. 2018). Needs no clean data; retrains on the rows kept.

    Args:
        poison_rate: upper bound on the poisoned share the defender assumes (default 0.1).
        removal_factor: remove this multiple of ``poison_rate`` from every class (paper: 1.5).
    """

    name: ClassVar[str] = "spectral"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="none",
        training="scores rows with the backdoored model's penultimate features, trains a new model from "
                 "scratch on the rows kept",
        inference_cost="none",
        needs_backdoored_model=True,
    )

    poison_rate: float = 0.1
    removal_factor: float = 1.5

    def __post_init__(self):
        check_fraction("poison_rate", self.poison_rate, low_inclusive=False)
        check_number("removal_factor", self.removal_factor, 0.0, None, low_inclusive=False)
        if self.poison_rate * self.removal_factor >= 1:
            raise ValueError(f"poison_rate * removal_factor = {self.poison_rate * self.removal_factor:g} would remove "
                             "every row of every class; it must stay below 1.")

    def score(self, features, labels, seed):
        suspicion = np.zeros(len(labels))
        removed = np.zeros(len(labels), dtype=bool)
        share = self.poison_rate * self.removal_factor
        for _, rows in rows_by_class(labels):
            scores = spectral_scores(features[rows])
            suspicion[rows] = scores
            removed[rows[np.argsort(-scores, kind="mergesort")[: math.floor(share * len(rows))]]] = True
        return suspicion, removed, {"removed_share_per_class": share}
