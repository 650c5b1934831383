"""Input checks that run before any work starts.

Each check raises ``ValueError`` with a message naming the column, option or row
at fault, so users fix their input instead of reading a stack trace from deep
inside ``Dataset.map``.
"""

from __future__ import annotations

from datasets import ClassLabel, Dataset, Image, Value


def check_image_column(ds: Dataset, image_column: str = "image") -> None:
    """The dataset is non-empty and has ``image_column``."""
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


def check_int(name: str, value, minimum: int = 1) -> None:
    """``value`` is an int >= ``minimum`` (bools, floats and strings rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def check_fraction(name: str, value: float, low_inclusive: bool = True) -> None:
    """``value`` lies in [0, 1] (or (0, 1] with ``low_inclusive=False``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = number and (value >= 0 if low_inclusive else value > 0)
    if not (low_ok and value <= 1):
        bounds = "[0, 1]" if low_inclusive else "(0, 1]"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}.")
