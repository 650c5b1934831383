"""Poison a ``datasets.Dataset`` and build triggered test sets.

Both go through ``Dataset.map`` on the raw image bytes (``Image(decode=False)``):
rows that are not triggered pass through without being decoded or re-encoded,
triggered rows are stored as lossless PNG. The result is fingerprinted and cached
like any other ``map`` and streams through large datasets.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from datasets import Dataset, Image, Value

from .attacks import Attack
from .images import decode_image, encode_png
from .validation import check_dataset, check_fraction, check_target_label

logger = logging.getLogger(__name__)

POISON_COLUMNS = ("poisoned", "original_label")


class _TriggerRows:
    """``Dataset.map`` function: trigger the masked rows and optionally relabel them.

    Built only from plain values and the attack, so it pickles and fingerprints.
    """

    def __init__(self, attack: Attack, mask: np.ndarray, target_label: int, relabel: bool,
                 image_column: str, label_column: str):
        self.attack, self.mask, self.target_label, self.relabel = attack, mask, target_label, relabel
        self.image_column, self.label_column = image_column, label_column

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        images, labels = list(batch[self.image_column]), list(batch[self.label_column])
        poisoned = [bool(self.mask[row]) for row in indices]
        for position, (row, hit) in enumerate(zip(indices, poisoned)):
            image = decode_image(images[position], row=row, column=self.image_column, load=hit)
            if not hit:
                continue  # header read only: broken bytes still fail here, naming the row
            self.attack.check_size(*image.size, where=f" (column '{self.image_column}', row {row})")
            images[position] = encode_png(self.attack(image, index=row))
            if self.relabel:
                labels[position] = self.target_label
        return {
            self.image_column: images,
            self.label_column: labels,
            "poisoned": poisoned,
            "original_label": list(batch[self.label_column]),
        }


def _validate(ds: Dataset, attack: Attack, target_label: int, image_column: str, label_column: str) -> np.ndarray:
    """Run every input check; return the labels as an array."""
    num_classes = check_dataset(ds, image_column, label_column)
    check_target_label(target_label, num_classes, label_column)
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be an hf_backdoor_guard Attack (BadNets, Blended, ...), got {attack!r}.")
    clashes = [c for c in POISON_COLUMNS if c in ds.column_names]
    if clashes:
        raise ValueError(f"The dataset already has column(s) {clashes}: was it poisoned already?")
    return np.asarray(ds[label_column])


def _check_first_fit(ds: Dataset, attack: Attack, rows: np.ndarray, image_column: str) -> None:
    """Fail fast on a trigger that cannot fit, before mapping the whole dataset."""
    if len(rows):
        row = int(rows[0])
        image = decode_image(ds[row][image_column], row=row, column=image_column, load=False)
        attack.check_size(*image.size, where=f" (column '{image_column}', row {row})")


def _trigger(ds: Dataset, attack: Attack, mask: np.ndarray, target_label: int, relabel: bool,
             image_column: str, label_column: str, description: str) -> Dataset:
    features = ds.features.copy()
    features[image_column] = Image(decode=False)
    features["poisoned"] = Value("bool")
    features["original_label"] = ds.features[label_column]
    raw = ds.cast_column(image_column, Image(decode=False))
    out = raw.map(
        _TriggerRows(attack, mask, target_label, relabel, image_column, label_column),
        batched=True,
        with_indices=True,
        features=features,
        desc=description,
    )
    return out.cast_column(image_column, ds.features[image_column])


def poison_dataset(
    ds: Dataset,
    attack: Attack,
    target_label: int = 0,
    rate: float = 0.1,
    seed: int = 42,
    poison_target_class: bool = False,
    image_column: str = "image",
    label_column: str = "label",
) -> Dataset:
    """Return a poisoned copy of ``ds`` with extra columns ``poisoned`` and ``original_label``.

    ``ceil(rate * eligible)`` rows, chosen by ``seed``, are triggered. Eligible rows
    are the non-target rows (all rows with ``poison_target_class``); for clean-label
    attacks (SIG) they are the target rows, which keep their label. Other attacks
    relabel triggered rows to ``target_label``. ``ds`` itself is not modified.
    """
    labels = _validate(ds, attack, target_label, image_column, label_column)
    check_fraction("rate", rate)
    if attack.clean_label:
        eligible = np.flatnonzero(labels == target_label)
    elif poison_target_class:
        eligible = np.arange(len(labels))
    else:
        eligible = np.flatnonzero(labels != target_label)
    count = math.ceil(rate * len(eligible))
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, size=count, replace=False))
    _check_first_fit(ds, attack, chosen, image_column)
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    logger.info("Poisoning %d of %d eligible rows with %r (target %d).", count, len(eligible), attack, target_label)
    return _trigger(ds, attack, mask, target_label, not attack.clean_label, image_column, label_column,
                    f"Poisoning with {attack.name}")


def triggered_testset(
    test_ds: Dataset,
    attack: Attack,
    target_label: int = 0,
    image_column: str = "image",
    label_column: str = "label",
) -> Dataset:
    """The non-target rows of ``test_ds``, all triggered, labelled ``target_label``.

    ``original_label`` keeps the true class (for robust accuracy). Random trigger
    locations use the row's index in ``test_ds``, so the set is reproducible.
    """
    labels = _validate(test_ds, attack, target_label, image_column, label_column)
    mask = labels != target_label
    rows = np.flatnonzero(mask)
    if not len(rows):
        raise ValueError(f"Every row of column '{label_column}' is the target class {target_label}: nothing to trigger.")
    _check_first_fit(test_ds, attack, rows, image_column)
    triggered = _trigger(test_ds, attack, mask, target_label, True, image_column, label_column,
                         f"Triggering test set with {attack.name}")
    return triggered.select(rows).flatten_indices().remove_columns("poisoned")
