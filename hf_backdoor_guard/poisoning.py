"""Poison a ``datasets.Dataset`` and build triggered test sets.

Both go through one ``Dataset.map`` on the raw image bytes (``Image(decode=False)``):
rows that are not triggered keep their bytes (they are decoded to check them, not
re-encoded), triggered rows are stored as lossless PNG. The result is fingerprinted
and cached like any other ``map`` and streams through large datasets.

What is checked, and when (each failure is a ``ValueError`` naming the option, column
or row, raised before any result is returned; the input dataset is never modified):

- before any image is read: the columns, the label values (no negative or missing
  labels), ``target_label``, ``rate``, ``seed``, the attack, and that the attack has
  rows to poison (a clean-label attack needs rows of the target class);
- then the first chosen row is decoded and the trigger's fit checked, so a wrong
  trigger size or a broken first row fails at once;
- during the map pass, every row is fully decoded (``verify_images=True``, the
  default): corrupt or truncated bytes anywhere fail with the row, even in rows that
  pass through untouched. ``verify_images=False`` reads only the headers of rows
  that are not triggered, for very large sets (broken pixel data then goes unseen).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from datasets import Dataset, Image, Value

from .attacks import Attack
from .images import decode_image, encode_png
from .validation import check_dataset, check_fraction, check_seed, check_target_label

logger = logging.getLogger(__name__)

#: columns ``poison_dataset`` adds: the backdoor rows, the cover rows, and the label before poisoning
POISON_COLUMNS = ("poisoned", "cover", "original_label")
_VERSION = "poison-2"  # part of explicit fingerprints: bump when the map function changes what it writes


class _TriggerRows:
    """``Dataset.map`` function: trigger the chosen rows and relabel the poisoned ones.

    ``mode`` is ``"train"`` (``attack.poison_image`` on poisoned rows, ``attack.cover_image``
    on cover rows) or ``"test"`` (the test-time trigger ``attack(image)``). Built only from
    plain values and the attack, so it pickles and fingerprints.
    """

    def __init__(self, attack: Attack, poisoned: np.ndarray, cover: np.ndarray, target_label: int, relabel: bool,
                 mode: str, image_column: str, label_column: str, verify_images: bool):
        self.attack, self.poisoned, self.cover = attack, poisoned, cover
        self.target_label, self.relabel, self.mode = target_label, relabel, mode
        self.image_column, self.label_column, self.verify_images = image_column, label_column, verify_images

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        images, originals = list(batch[self.image_column]), list(batch[self.label_column])
        labels = list(originals)
        poisoned = [bool(self.poisoned[row]) for row in indices]
        cover = [bool(self.cover[row]) for row in indices]
        for position, row in enumerate(indices):
            hit = poisoned[position] or cover[position]
            # every row is decoded when verifying; otherwise untouched rows get a header read only
            image = decode_image(images[position], row=row, column=self.image_column, load=hit or self.verify_images)
            if not hit:
                continue
            self.attack.check_size(*image.size, where=f" (column '{self.image_column}', row {row})")
            label = originals[position]
            if self.mode == "test":
                triggered = self.attack(image, index=row)
            elif poisoned[position]:
                triggered = self.attack.poison_image(image, index=row, label=label)
            else:
                triggered = self.attack.cover_image(image, index=row, label=label)
            images[position] = encode_png(triggered)
            if poisoned[position] and self.relabel:
                labels[position] = self.target_label
        return {self.image_column: images, self.label_column: labels, "poisoned": poisoned, "cover": cover,
                "original_label": originals}


def _plain(ds: Dataset) -> Dataset:
    """``ds`` without a format or transform (torch/numpy/custom formats hide the raw cells)."""
    fmt = ds.format
    if fmt["type"] is None and set(fmt["columns"]) == set(ds.column_names) and not fmt["output_all_columns"]:
        return ds
    return ds.with_format(None)


def _with_format_of(out: Dataset, source: Dataset) -> Dataset:
    """Give ``out`` the format ``source`` had (its type, kwargs and column selection)."""
    fmt = source.format
    selected_all = set(fmt["columns"]) == set(source.column_names)
    if fmt["type"] is None and selected_all:
        return out
    columns = None
    if not selected_all:
        added = [c for c in POISON_COLUMNS if c in out.column_names and c not in fmt["columns"]]
        columns = [c for c in fmt["columns"] if c in out.column_names] + added
    return out.with_format(fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"],
                           **fmt["format_kwargs"])


def _validate(ds: Dataset, attack: Attack, target_label: int, image_column: str, label_column: str) -> np.ndarray:
    """Run the checks that need no image; return the labels as an int array."""
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be an hf_backdoor_guard Attack (BadNets, Blended, ...), got {attack!r}.")
    num_classes = check_dataset(ds, image_column, label_column)
    check_target_label(target_label, num_classes, label_column)
    clashes = [c for c in POISON_COLUMNS if c in ds.column_names]
    if clashes:
        raise ValueError(f"The dataset already has column(s) {clashes}: was it poisoned already?")
    labels = np.asarray(ds[label_column])
    if labels.dtype.kind not in "iu":
        missing = [row for row, label in enumerate(labels) if label is None]
        if missing:
            raise ValueError(f"Column '{label_column}' has no label in row {missing[0]} ({len(missing)} rows in all); "
                             "drop or label those rows before poisoning.")
        labels = labels.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        row = int(negative[0])
        raise ValueError(
            f"Column '{label_column}' has the negative label {int(labels[row])} in row {row} ({len(negative)} rows "
            "in all); labels must be class indices 0..K-1 (a ClassLabel's -1 means 'no label': drop those rows).")
    return labels


def _count(rate: float, available: int) -> int:
    """``ceil(rate * available)``, ignoring float noise (0.3 * 10 is 3, not 4); at least 1 when rate > 0."""
    if rate <= 0 or available == 0:
        return 0
    return min(available, max(1, math.ceil(rate * available - 1e-9)))


def _check_first_fit(raw: Dataset, attack: Attack, rows: np.ndarray, image_column: str) -> None:
    """Fail fast on a broken first row or a trigger that cannot fit, before mapping the whole dataset."""
    if len(rows):
        row = int(rows[0])
        image = decode_image(raw[row][image_column], row=row, column=image_column)
        attack.check_size(*image.size, where=f" (column '{image_column}', row {row})")


def _trigger(ds: Dataset, attack: Attack, poisoned: np.ndarray, cover: np.ndarray, target_label: int,
             relabel: bool, mode: str, image_column: str, label_column: str, verify_images: bool,
             description: str) -> Dataset:
    """The map pass over ``ds`` (already without a format); returns a dataset with the poison columns."""
    from .runtime.caching import derived_fingerprint

    features = ds.features.copy()
    features[image_column] = Image(decode=False)
    features["poisoned"] = Value("bool")
    features["cover"] = Value("bool")
    features["original_label"] = ds.features[label_column]
    raw = ds.cast_column(image_column, Image(decode=False))
    _check_first_fit(raw, attack, np.flatnonzero(poisoned | cover), image_column)
    function = _TriggerRows(attack, poisoned, cover, target_label, relabel, mode, image_column, label_column,
                            verify_images)
    own = attack.fingerprint()
    fingerprint = None if own is None else derived_fingerprint(
        raw, _VERSION, type(attack).__qualname__, own, poisoned.tobytes(), cover.tobytes(),
        target_label, relabel, mode, image_column, label_column, verify_images)
    out = raw.map(function, batched=True, with_indices=True, features=features, desc=description,
                  new_fingerprint=fingerprint)
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
    verify_images: bool = True,
) -> Dataset:
    """Return a poisoned copy of ``ds`` with extra columns ``poisoned``, ``cover`` and ``original_label``.

    What ``rate`` means depends on the attack:

    - dirty-label attacks (BadNets, Blended, WaNet, ...): ``ceil(rate * n)`` of the
      ``n`` non-target rows (all rows with ``poison_target_class=True``) get the
      poisoned image and the label ``target_label``;
    - clean-label attacks (``attack.clean_label``: SIG, Label-Consistent): ``ceil(rate * n)``
      of the ``n`` rows *of the target class* get the poisoned image and keep their
      label, so ``rate=1.0`` poisons the whole target class. A target class with no
      rows is an error.

    Cover rows: attacks with ``attack.cover_ratio > 0`` (WaNet's noise mode,
    Adaptive-Blend's conservatism rows) also get ``ceil(cover_ratio * poisoned)`` cover
    rows, drawn from the remaining rows of every class: they get
    ``attack.cover_image`` and keep their label. Set the attack's ``cover_ratio=0``
    to train without them.

    Columns: ``poisoned`` is True exactly on rows that carry the backdoor with the
    target label (the ground truth for detection metrics); ``cover`` is True on cover
    rows (never poisoned); ``original_label`` is the label before poisoning.

    Rows are chosen by ``seed`` (cover rows from a generator derived from it, so the
    poisoned rows do not depend on ``cover_ratio``). A dataset with a format
    (``with_format("torch")``, a transform) is read without it and the result gets the
    same format back. ``verify_images``: see the module docstring for what is checked.
    ``ds`` itself is not modified.
    """
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be an hf_backdoor_guard Attack (BadNets, Blended, ...), got {attack!r}.")
    check_fraction("rate", rate)
    check_seed("seed", seed)
    if not isinstance(verify_images, bool):
        raise ValueError(f"verify_images must be True or False, got {verify_images!r}.")
    if not isinstance(poison_target_class, bool):
        raise ValueError(f"poison_target_class must be True or False, got {poison_target_class!r}.")
    plain = _plain(ds)
    labels = _validate(plain, attack, target_label, image_column, label_column)
    if attack.clean_label:
        eligible = np.flatnonzero(labels == target_label)
        if rate > 0 and not len(eligible):
            raise ValueError(
                f"Column '{label_column}' has no rows of the target class {target_label}: {type(attack).__name__} is "
                "a clean-label attack that poisons target-class rows (keeping their labels), so it has nothing to "
                "poison. Choose a target class that has rows, or rate=0.")
    elif poison_target_class:
        eligible = np.arange(len(labels))
    else:
        eligible = np.flatnonzero(labels != target_label)
        if rate > 0 and not len(eligible):
            raise ValueError(
                f"Column '{label_column}' has no rows outside the target class {target_label}, so "
                f"{type(attack).__name__} has no rows to relabel; pass poison_target_class=True to poison "
                "target-class rows too.")
    count = _count(rate, len(eligible))
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, size=count, replace=False))
    poisoned = np.zeros(len(labels), dtype=bool)
    poisoned[chosen] = True

    cover = np.zeros(len(labels), dtype=bool)
    wanted = math.ceil(attack.cover_ratio * count - 1e-9) if attack.cover_ratio > 0 and count else 0
    if wanted:
        pool = np.flatnonzero(~poisoned)
        if wanted > len(pool):
            logger.warning("%r asks for %d cover rows but only %d rows are not poisoned; using them all.",
                           attack, wanted, len(pool))
            wanted = len(pool)
        cover[np.random.default_rng([seed, 1]).choice(pool, size=wanted, replace=False)] = True

    logger.info("Poisoning %d of %d eligible rows with %r (target %d)%s.", count, len(eligible), attack, target_label,
                f", plus {int(cover.sum())} cover rows" if cover.any() else "")
    out = _trigger(plain, attack, poisoned, cover, target_label, not attack.clean_label, "train", image_column,
                   label_column, verify_images, f"Poisoning with {attack.name}")
    return _with_format_of(out, ds)


def triggered_testset(
    test_ds: Dataset,
    attack: Attack,
    target_label: int = 0,
    image_column: str = "image",
    label_column: str = "label",
    verify_images: bool = True,
) -> Dataset:
    """The non-target rows of ``test_ds``, all with the test-time trigger, labelled ``target_label``.

    ``original_label`` keeps the true class (for robust accuracy). Random trigger
    locations use the row's index in ``test_ds``, so the set is reproducible. The checks
    (and ``verify_images``) are those of :func:`poison_dataset`; the result keeps the
    format of ``test_ds``.
    """
    if not isinstance(verify_images, bool):
        raise ValueError(f"verify_images must be True or False, got {verify_images!r}.")
    plain = _plain(test_ds)
    labels = _validate(plain, attack, target_label, image_column, label_column)
    mask = labels != target_label
    rows = np.flatnonzero(mask)
    if not len(rows):
        raise ValueError(f"Every row of column '{label_column}' is the target class {target_label}: nothing to trigger.")
    triggered = _trigger(plain, attack, mask, np.zeros_like(mask), target_label, True, "test", image_column,
                         label_column, verify_images, f"Triggering test set with {attack.name}")
    out = triggered.select(rows).flatten_indices().remove_columns(["poisoned", "cover"])
    return _with_format_of(out, test_ds)
