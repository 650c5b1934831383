"""Safe loading of saved image classifiers: safetensors weights only, never remote code."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def load_image_classifier(name_or_path: str | os.PathLike, what: str = "model", **model_kwargs):
    """``(model, image_processor)`` from a Hub id or folder; the processor is ``None`` if none is saved.

    ``model_kwargs`` go to ``AutoModelForImageClassification.from_pretrained`` (e.g. a new head).
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    logger.info("Loading %s from %s", what, name_or_path)
    model = AutoModelForImageClassification.from_pretrained(
        name_or_path, use_safetensors=True, trust_remote_code=False, **model_kwargs
    )
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError):
        processor = None
    return model, processor
