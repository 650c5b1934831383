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
        labels = [label for label in ds[label_column] if label is not None]  # missing ones: see check_labels
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


def _where(ds: Dataset, rows, image_column: str, split: str) -> list[str]:
    """How a user finds rows again: the image file an ``imagefolder`` row came from, else the row index."""
    from datasets import Image

    places = []
    paths = None
    if image_column in ds.column_names and isinstance(ds.features[image_column], Image):
        paths = ds.cast_column(image_column, Image(decode=False)).select(list(rows))[image_column]
    for position, row in enumerate(rows):
        path = (paths[position] or {}).get("path") if paths is not None else None
        places.append(f"{path} (row {row} of split '{split}')" if path else f"row {row} of split '{split}'")
    return places


_SHOWN = 5  # problems spelled out in one message; the rest are counted


def _refuse(count: int, problems: list[str], what: str, fix: str) -> None:
    """One ``ValueError`` for ``count`` problems, the first few spelled out (so all can be fixed in one go)."""
    if count:
        more = f"; and {count - len(problems)} more" if count > len(problems) else ""
        raise ValueError(f"{count} {what}: {'; '.join(problems)}{more}. {fix}")


def check_labels(ds: Dataset, split: str, num_classes: int | None = None, label_column: str = "label",
                 image_column: str = "image") -> None:
    """Every label is a class index in [0, ``num_classes``): ``ValueError`` naming the rows (files) that are not.

    A missing (None) or negative label would crash deep inside training, or in an
    evaluation split be counted silently as a miss; a label past the classes would
    fail only after all the work.
    """
    labels = ds[label_column]
    bad = [row for row, label in enumerate(labels) if label is None or label < 0
           or (num_classes is not None and label >= num_classes)]
    places = _where(ds, bad[:_SHOWN], image_column, split) if bad else []
    problems = [f"{place}: label {labels[row]!r}" for place, row in zip(places, bad)]
    allowed = ">= 0" if num_classes is None else f"0..{num_classes - 1}"
    _refuse(len(bad), problems, f"row(s) of split '{split}' have no valid label (a class index in {allowed} of column "
            f"'{label_column}')", "Fix or remove them and run again.")


def check_images_decode(ds: Dataset, split: str, rows=None, image_column: str = "image") -> None:
    """Decode every image of ``rows`` (default: all) once, with a progress bar; ``ValueError`` naming each file
    or row that is missing, empty, truncated or not an image, before any work is done on them."""
    import io

    from datasets import Image
    from PIL import Image as PILImage
    from tqdm.auto import tqdm

    rows = list(range(len(ds))) if rows is None else [int(row) for row in rows]
    raw = ds.cast_column(image_column, Image(decode=False)).select_columns([image_column]).select(rows)
    bad: list[tuple[int, str, str | None]] = []
    with tqdm(total=len(rows), desc=f"Checking the images of split '{split}'", unit="img") as progress:
        for start, batch in zip(range(0, len(rows), 256), raw.iter(batch_size=256)):
            for offset, cell in enumerate(batch[image_column]):
                why = _decode_problem(cell, PILImage, io)
                if why:
                    bad.append((rows[start + offset], why, (cell or {}).get("path")))
            progress.update(len(batch[image_column]))
    problems = [f"{path} (row {row} of split '{split}'): {why}" if path else f"row {row} of split '{split}': {why}"
                for row, why, path in bad[:_SHOWN]]
    _refuse(len(bad), problems, f"image(s) of split '{split}' cannot be read", "Replace or remove them and run again.")


def _decode_problem(cell, pil_image, io) -> str | None:
    """Why one stored image cell does not decode, or None."""
    if cell is None or (cell.get("bytes") is None and not cell.get("path")):
        return "no image (the cell is empty)"
    try:
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]
        with pil_image.open(source) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not in training
    except Exception as error:  # noqa: BLE001 - any decoder failure means the same thing: an unreadable image
        text = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return None
