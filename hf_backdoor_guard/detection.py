"""Find poisoned rows by comparing the teacher on originals and on their variations.

On a poisoned row the trigger makes the teacher predict the (target) label on the
original, while the trigger-free variation shows the true class. So the teacher's
outputs on the two disagree, and the variation's prediction disagrees with the
row's label. No ground truth is needed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from datasets import Dataset, Value

from .evaluation import predict_logits, resolve_image_processor
from .validation import check_dataset, check_fraction, check_image_column

logger = logging.getLogger(__name__)

SCORES = ("kl", "disagreement", "label_drop", "combined")
DETECTION_COLUMNS = ("suspicion", "flagged", "variation_prediction")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def suspicion_scores(
    original_logits: np.ndarray,
    variation_logits: np.ndarray,
    source_index,
    labels,
    score: str = "combined",
) -> tuple[np.ndarray, np.ndarray]:
    """Suspicion per source row and the class predicted on its variations.

    ``variation_logits[k]`` belongs to source row ``source_index[k]``; a row's
    variations are averaged in probability space. Scores (higher = more suspicious):

    - ``kl``: KL(p_original || p_variations) of the teacher;
    - ``disagreement``: 1 - p_variations[label], the doubt the variations cast on the label;
    - ``label_drop``: p_original[label] - p_variations[label], how much trust in the label
      the variation removes;
    - ``combined``: the mean of ``disagreement`` and ``1 - exp(-kl)``, both in [0, 1]; it stays
      two-humped (clean near 0, poisoned near 1), so a threshold can split it.
    """
    if score not in SCORES:
        raise ValueError(f"Unknown score '{score}'; choose one of {SCORES}.")
    original_logits = np.asarray(original_logits, dtype=np.float64)
    variation_logits = np.asarray(variation_logits, dtype=np.float64)
    source_index = np.asarray(source_index, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    rows, classes = original_logits.shape
    if len(labels) != rows:
        raise ValueError(f"Got {len(labels)} labels for {rows} rows of original logits.")
    if variation_logits.shape[1:] != (classes,) or len(source_index) != len(variation_logits):
        raise ValueError(
            f"Variation logits {variation_logits.shape} and source_index ({len(source_index)}) do not match "
            f"{classes} classes."
        )
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= rows):
        raise ValueError(f"source_index holds values outside 0..{rows - 1}: the variations belong to another dataset.")
    counts = np.bincount(source_index, minlength=rows)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(f"{len(missing)} rows have no variation (first: row {missing[0]}); generate them first.")
    p_original = _softmax(original_logits)
    p_variations = np.zeros((rows, classes))
    np.add.at(p_variations, source_index, _softmax(variation_logits))
    p_variations /= counts[:, None]
    eps = 1e-12
    kl = np.sum(p_original * (np.log(p_original + eps) - np.log(p_variations + eps)), axis=1)
    label_in_variations = p_variations[np.arange(rows), labels]
    values = {
        "kl": lambda: kl,
        "disagreement": lambda: 1.0 - label_in_variations,
        "label_drop": lambda: p_original[np.arange(rows), labels] - label_in_variations,
        "combined": lambda: ((1.0 - label_in_variations) + (1.0 - np.exp(-kl))) / 2,
    }[score]()
    return values, p_variations.argmax(axis=1)


def otsu_threshold(scores: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits ``scores`` into two groups (Otsu's method)."""
    scores = np.asarray(scores, dtype=np.float64)
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        return math.inf  # all equal: nothing stands out
    counts, edges = np.histogram(scores, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass = np.cumsum(counts * centres)
    mean_low = mass / np.maximum(weight_low, 1)
    mean_high = (mass[-1] - mass) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def flag(scores: np.ndarray, threshold: float | None = None, budget: float | None = None) -> np.ndarray:
    """Rows to flag: ``score >= threshold``, the top ``budget`` share, or (neither) Otsu's split."""
    if threshold is not None and budget is not None:
        raise ValueError("Pass threshold=... or budget=..., not both.")
    scores = np.asarray(scores, dtype=np.float64)
    if budget is not None:
        check_fraction("budget", budget)
        flagged = np.zeros(len(scores), dtype=bool)
        flagged[np.argsort(-scores, kind="mergesort")[: math.ceil(budget * len(scores))]] = True
        return flagged
    return scores >= (otsu_threshold(scores) if threshold is None else threshold)


def detect_poisoned(
    teacher,
    ds: Dataset,
    variations: Dataset,
    image_processor=None,
    *,
    variation_model=None,
    variation_image_processor=None,
    score: str = "combined",
    threshold: float | None = None,
    budget: float | None = None,
    batch_size: int = 64,
    image_column: str = "image",
    label_column: str = "label",
    variation_image_column: str = "image",
    logits: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Score every row of ``ds`` for poisoning; return a copy with ``suspicion``, ``flagged``
    and ``variation_prediction`` columns.

    ``variations`` holds one or more variations per row of ``ds`` (from
    ``generate_variations``; its ``source_index`` column links them). The teacher
    scores originals; ``variation_model`` (e.g. the distilled student; default the
    teacher) scores the variations. Rows are flagged at ``threshold``, at a ``budget``
    (share of rows), or by Otsu's split of the scores when neither is given.
    ``logits=(original_logits, variation_logits)`` reuses outputs computed already (e.g. a
    ``teacher_logits`` cache); no model is run then.
    """
    num_classes = check_dataset(ds, image_column, label_column)
    check_image_column(variations, variation_image_column)
    if "source_index" not in variations.column_names:
        raise ValueError("The variations dataset has no 'source_index' column linking rows to ds; "
                         "make it with ImageVariation / generate_variations.")
    source_index = np.asarray(variations["source_index"])
    if source_index.max() >= len(ds) or len(np.unique(source_index)) != len(ds):
        raise ValueError(
            f"The variations cover {len(np.unique(source_index))} source rows (largest index {source_index.max()}) "
            f"but ds has {len(ds)} rows: they do not belong together."
        )
    if score not in SCORES:
        raise ValueError(f"Unknown score '{score}'; choose one of {SCORES}.")
    clashes = [c for c in DETECTION_COLUMNS if c in ds.column_names]
    if clashes:
        raise ValueError(f"ds already has column(s) {clashes}; remove them first.")
    if logits is None:
        processor = resolve_image_processor(teacher, image_processor)
        variation_model = variation_model or teacher
        variation_processor = variation_image_processor or (processor if variation_model is teacher else None)
        variation_processor = resolve_image_processor(variation_model, variation_processor)
        original_logits = predict_logits(teacher, ds, processor, batch_size, image_column)
        variation_logits = predict_logits(variation_model, variations, variation_processor, batch_size,
                                          variation_image_column)
    else:
        original_logits, variation_logits = logits
    scores, predicted = suspicion_scores(original_logits, variation_logits, source_index, ds[label_column], score)
    flagged = flag(scores, threshold, budget)
    logger.info("Flagged %d of %d rows as suspicious (score %s).", int(flagged.sum()), len(ds), score)
    out = ds.add_column("suspicion", scores.tolist(), feature=Value("float64"))
    out = out.add_column("flagged", flagged.tolist(), feature=Value("bool"))
    prediction_feature = ds.features[label_column] if num_classes is not None else Value("int64")
    return out.add_column("variation_prediction", predicted.tolist(), feature=prediction_feature)


def clean_dataset(ds: Dataset, mode: str = "drop", *, source: Dataset | None = None,
                  label_column: str = "label") -> Dataset:
    """Remove (``drop``) or relabel (``relabel``) the flagged rows; return a new dataset.

    ``ds`` carries the ``flagged`` and ``variation_prediction`` columns of
    :func:`detect_poisoned`, or it is a variations dataset (with ``source_index``)
    and ``source`` is the detected dataset its rows came from. Relabelled rows take
    the class predicted on their variations.
    """
    if mode not in ("drop", "relabel"):
        raise ValueError(f"mode must be 'drop' or 'relabel', got {mode!r}.")
    if source is not None:
        if "source_index" not in ds.column_names:
            raise ValueError("With source=..., ds must have a 'source_index' column linking it to source.")
        missing = [c for c in ("flagged", "variation_prediction") if c not in source.column_names]
        if missing:
            raise ValueError(f"source has no column(s) {missing}; run detect_poisoned on it first.")
        index = np.asarray(ds["source_index"])
        if len(index) and index.max() >= len(source):
            raise ValueError(f"ds's source_index reaches {index.max()} but source has {len(source)} rows.")
        flagged = np.asarray(source["flagged"])[index]
        predicted = np.asarray(source["variation_prediction"])[index]
    else:
        missing = [c for c in ("flagged", "variation_prediction") if c not in ds.column_names]
        if missing:
            raise ValueError(f"ds has no column(s) {missing}; run detect_poisoned first or pass source=...")
        flagged, predicted = np.asarray(ds["flagged"]), np.asarray(ds["variation_prediction"])
    if label_column not in ds.column_names:
        raise ValueError(f"Label column '{label_column}' not found; the dataset has columns {ds.column_names}.")
    if mode == "drop":
        return ds.select(np.flatnonzero(~flagged)).flatten_indices()
    labels = np.where(flagged, predicted, np.asarray(ds[label_column]))
    return ds.remove_columns(label_column).add_column(label_column, labels.tolist(),
                                                      feature=ds.features[label_column]).select_columns(ds.column_names)
