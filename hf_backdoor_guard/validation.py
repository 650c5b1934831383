"""Input checks that run before any work starts.

Each check raises ``ValueError`` with a message naming the column, option or row
at fault, so users fix their input instead of reading a stack trace from deep
inside ``Dataset.map``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # datasets is imported where it is used: attack and option checks stay light
    from datasets import Dataset


def check_image_column(ds: Dataset, image_column: str = "image") -> None:
    """The dataset is non-empty and has ``image_column``."""
    from datasets import Dataset, Image

    if not isinstance(ds, Dataset):
        raise ValueError(f"Expected a datasets.Dataset, got {type(ds).__name__}.")
    if image_column not in ds.column_names:
        raise ValueError(
            f"Image column '{image_column}' not found; the dataset has columns {ds.column_names}. "
            "Pass image_column=... to name it."
        )
    if len(ds) == 0:
        raise ValueError("The dataset is empty: there is nothing to process.")
    feature = ds.features[image_column]
    if not isinstance(feature, Image):
        raise ValueError(
            f"Column '{image_column}' has feature {feature!r}; expected datasets.Image() "
            "(cast it with ds.cast_column(column, datasets.Image()))."
        )


def check_label_column(ds: Dataset, label_column: str = "label") -> int | None:
    """The label column exists and holds integers; returns the number of classes if known.

    A ``ClassLabel`` gives the number of classes; plain integer columns give
    ``max + 1`` as a lower bound that callers may use for range checks.
    """
    from datasets import ClassLabel, Value

    if label_column not in ds.column_names:
        raise ValueError(
            f"Label column '{label_column}' not found; the dataset has columns {ds.column_names}. "
            "Pass label_column=... to name it."
        )
    feature = ds.features[label_column]
    if isinstance(feature, ClassLabel):
        return feature.num_classes
    if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        labels = ds[label_column]
        return (max(labels) + 1) if labels else None
    raise ValueError(
        f"Label column '{label_column}' has feature {feature!r}; labels must be integers or a "
        "datasets.ClassLabel (use ds.class_encode_column(column) for string labels)."
    )


def check_dataset(ds: Dataset, image_column: str = "image", label_column: str = "label") -> int | None:
    """Both columns are valid; returns the number of classes (see ``check_label_column``)."""
    check_image_column(ds, image_column)
    return check_label_column(ds, label_column)


def check_target_label(target_label: int, num_classes: int | None, label_column: str = "label") -> None:
    """The backdoor target is a valid class index."""
    if isinstance(target_label, bool) or not isinstance(target_label, int):
        raise ValueError(f"target_label must be an int class index, got {target_label!r}.")
    if target_label < 0 or (num_classes is not None and target_label >= num_classes):
        raise ValueError(
            f"target_label={target_label} is outside the classes of column '{label_column}' "
            f"(0..{(num_classes or 1) - 1})."
        )


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` is an int in [``minimum``, ``maximum``] (bools, floats and strings rejected); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}.")
    return value


def check_seed(name: str, value) -> int:
    """A seed: an int in [0, 2**63) (numpy and torch generators take no negative seeds)."""
    return check_int(name, value, minimum=0, maximum=2**63 - 1)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """``value`` is a finite real number (not a bool) within the bounds; returns it as a float.

    NaN and infinity are always refused: a NaN option trains silently to NaN weights or
    compares False with every bound, so it must never get past the constructor.
    """
    import math
    import numbers

    if low is None and high is None:
        interval = None
    else:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        opening = "[" if low is not None and low_inclusive else "("
        closing = "]" if high is not None and high_inclusive else ")"
        interval = f"{opening}{left}, {right}{closing}"
    wanted = f"must lie in {interval} (a finite number)" if interval else "must be a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} {wanted}, got {value!r}.")
    number = float(value)
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        raise ValueError(f"{name} {wanted}, got {value!r}.")
    return number


def check_fraction(name: str, value: float, low_inclusive: bool = True) -> float:
    """``value`` lies in [0, 1] (or (0, 1] with ``low_inclusive=False``); returns it as a float."""
    return check_number(name, value, 0.0, 1.0, low_inclusive=low_inclusive)


def check_choice(name: str, value, choices) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
