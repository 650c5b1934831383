"""A digits-like ``imagefolder`` on disk, clean or poisoned with BadNets, for the ``defend`` tests.

Files are named ``p*.png`` (poisoned) or ``c*.png`` (clean), so a test can read the
ground truth back from each row's path without the pipeline ever seeing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits_imagefolder(root: Path, train_rows: int = 400, test_rows: int | None = None,
                             poison_rate: float = 0.1, seed: int = 0) -> Path:
    """``root/train/<label>/*.png`` (``poison_rate`` of the non-target rows poisoned, target 0) and ``root/test``."""
    from hf_backdoor_guard import BadNets, poison_dataset
    from hf_backdoor_guard.data import load_digits_dataset

    digits = load_digits_dataset()
    train = digits["train"].select(range(train_rows))
    if poison_rate:
        train = poison_dataset(train, BadNets(), target_label=0, rate=poison_rate, seed=seed)
    test = digits["test"] if test_rows is None else digits["test"].select(range(test_rows))
    for split, rows in (("train", train), ("test", test)):
        for index, row in enumerate(rows):
            folder = root / split / str(row["label"])
            folder.mkdir(parents=True, exist_ok=True)
            prefix = "p" if row.get("poisoned") else "c"
            row["image"].save(folder / f"{prefix}{index:04d}.png")
    return root


def poisoned_rows(data_dir: Path, split: str = "train") -> np.ndarray:
    """Which rows of the imagefolder split, in the order ``load_dataset`` gives them, are poisoned."""
    from datasets import Image, load_dataset

    ds = load_dataset("imagefolder", data_dir=str(data_dir), split=split).cast_column("image", Image(decode=False))
    return np.array([Path(cell["path"]).name.startswith("p") for cell in ds["image"]])


__all__ = ["write_digits_imagefolder", "poisoned_rows"]
