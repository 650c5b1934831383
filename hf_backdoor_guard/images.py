"""Image decoding and conversion shared by every stage.

Datasets hand us PIL images of any mode (L, LA, P, RGBA, CMYK, I;16, ...) and size,
or raw ``{"bytes", "path"}`` dicts when a column is read with ``Image(decode=False)``.
Everything downstream works on 8-bit RGB, so conversion happens here, explicitly.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of ``image`` whatever its mode.

    Alpha is composited onto black (the usual background of the datasets we see);
    16/32-bit grey is rescaled to 0..255 rather than clipped.
    """
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(value: Any, row: int | None = None, column: str = "image", load: bool = True) -> Image.Image:
    """Open a dataset cell (PIL image, ``{"bytes", "path"}`` dict, or path) as a PIL image.

    Unreadable data raises ``ValueError`` naming the column and row, so a broken
    file deep in a large dataset is easy to find. ``load=False`` reads only the
    header: a cheap check for rows we pass through untouched.
    """
    if isinstance(value, Image.Image):
        return value
    where = f"column '{column}'" + (f", row {row}" if row is not None else "")
    try:
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                raise ValueError("the cell holds neither bytes nor a path")
        elif isinstance(value, str):
            image = Image.open(value)
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        else:
            raise ValueError(f"unsupported cell type {type(value).__name__}")
        if load:
            image.load()
    except ValueError as error:
        raise ValueError(f"Unreadable image in {where}: {error}") from error
    except Exception as error:  # PIL raises several unrelated types for corrupt data
        raise ValueError(f"Unreadable image in {where}: {type(error).__name__}: {error}") from error
    return image


def load_rgb(value: Any, row: int | None = None, column: str = "image") -> Image.Image:
    """Decode a dataset cell and convert it to RGB."""
    return to_rgb(decode_image(value, row=row, column=column))


def encode_png(image: Image.Image) -> dict:
    """Encode a PIL image as a lossless PNG cell for an ``Image()`` column.

    Lossless matters: a JPEG round trip would blur the very triggers we study.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}
