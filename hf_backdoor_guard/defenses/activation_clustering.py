"""Activation clustering (Chen et al., SafeAI 2019): poison forms its own cluster inside its class.

Assumes: no clean data; the backdoored model (its penultimate features) and the right
to train a new model; no extra inference cost.

For every class, the penultimate features are reduced to ``num_dims`` dimensions with
independent component analysis and split into two clusters with k-means. With
``cluster_analysis="smaller"`` (BackdoorBench's and ART's default) the smaller cluster of
every class is removed; with ``"relative_size"`` only a smaller cluster holding at most
``size_threshold`` of its class (Chen et al.: 0.35). A new model is trained on the rest.

Per-row suspicion (for an AUROC; the removal uses the rule above): the class's
silhouette score (how clearly it splits in two, Chen et al.'s cluster-quality check)
times the row's soft membership of the smaller cluster,
``d_large / (d_small + d_large)`` in the reduced space.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..validation import check_choice, check_fraction, check_int
from .base import DEFENSES, Assumptions
from .cleaning import DataCleaningDefense, rows_by_class

CLUSTER_ANALYSES = ("smaller", "relative_size")


def two_clusters(features: np.ndarray, num_dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """ICA to ``num_dims`` dimensions, then 2-means: ``(in smaller cluster, soft membership of it, silhouette)``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    rows = len(features)
    features = features[:, features.std(axis=0) > 1e-6]  # channels dead in this class carry nothing
    rank = np.linalg.matrix_rank(features - features.mean(axis=0)) if features.size else 0
    if rows < 4 or rank == 0:  # too few rows or no variation: nothing stands out
        return np.zeros(rows, dtype=bool), np.zeros(rows), 0.0
    dims = min(num_dims, rank)  # ICA's whitening needs a full-rank covariance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reduced = FastICA(n_components=dims, whiten="unit-variance", random_state=seed, max_iter=500).fit_transform(
            features)
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    assignment = kmeans.labels_
    sizes = np.bincount(assignment, minlength=2)
    if sizes.min() == 0:
        return np.zeros(rows, dtype=bool), np.zeros(rows), 0.0
    small = int(np.argmin(sizes))
    distances = kmeans.transform(reduced)  # [rows, 2]
    membership = distances[:, 1 - small] / np.maximum(distances.sum(axis=1), 1e-12)
    silhouette = float(silhouette_score(reduced, assignment))
    return assignment == small, membership, silhouette


@DEFENSES.register
@dataclass
class ActivationClustering(DataCleaningDefense):
    """Activation clustering (Chen et al. 2019). Needs no clean data; retrains on the rows kept.

    Args:
        num_dims: ICA dimensions before clustering (paper, BackdoorBench: 10).
        cluster_analysis: ``"smaller"`` removes every class's smaller cluster (BackdoorBench);
            ``"relative_size"`` only one holding at most ``size_threshold`` of its class.
        size_threshold: for ``"relative_size"`` (Chen et al.: 0.35).
    """

    name: ClassVar[str] = "activation_clustering"
    assumes: ClassVar[Assumptions] = Assumptions(
        clean_data="none",
        training="clusters the backdoored model's penultimate features per class, trains a new model from "
                 "scratch on the rows kept",
        inference_cost="none",
        needs_backdoored_model=True,
    )

    num_dims: int = 10
    cluster_analysis: str = "smaller"
    size_threshold: float = 0.35

    def __post_init__(self):
        check_int("num_dims", self.num_dims)
        check_choice("cluster_analysis", self.cluster_analysis, CLUSTER_ANALYSES)
        check_fraction("size_threshold", self.size_threshold)

    def score(self, features, labels, seed):
        suspicion = np.zeros(len(labels))
        removed = np.zeros(len(labels), dtype=bool)
        silhouettes = {}
        for label, rows in rows_by_class(labels):
            smaller, membership, silhouette = two_clusters(features[rows], self.num_dims, seed)
            silhouettes[label] = round(silhouette, 4)
            suspicion[rows] = silhouette * membership
            if self.cluster_analysis == "smaller" or smaller.sum() <= self.size_threshold * len(rows):
                removed[rows[smaller]] = True
        return suspicion, removed, {"silhouette_per_class": silhouettes}
