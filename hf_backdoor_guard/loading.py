"""Safe loading of saved image classifiers: safetensors weights only, never remote code.

An image processor whose config asks for custom code (an ``auto_map``) is refused, and
the refusal says so: "no processor" and "a processor we will not run" are different
answers to the user. :func:`check_safetensors_weights` checks a local folder's weights
before any work: safetensors present, pickle-only refused, every header readable.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def load_classifier(name_or_path: str | os.PathLike, what: str = "model", **model_kwargs):
    """``AutoModelForImageClassification`` from a Hub id or folder: safetensors only, no remote code.

    ``model_kwargs`` go to ``from_pretrained`` (e.g. a new head).
    """
    from transformers import AutoModelForImageClassification

    logger.debug("Loading %s from %s", what, name_or_path)
    return AutoModelForImageClassification.from_pretrained(
        name_or_path, use_safetensors=True, trust_remote_code=False, **model_kwargs
    )


def load_image_processor(name_or_path: str | os.PathLike):
    """``(image_processor, None)``, or ``(None, why_not)`` when none is saved or it would need remote code."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False), None
    except (OSError, ValueError) as error:
        return None, _why_no_processor(name_or_path, error)


def load_image_classifier(name_or_path: str | os.PathLike, what: str = "model", **model_kwargs):
    """``(model, image_processor)`` from a Hub id or folder; the processor is ``None`` if none can be used.

    A processor refused because it needs remote code is logged as a warning with the reason.
    """
    model = load_classifier(name_or_path, what, **model_kwargs)
    processor, why_not = load_image_processor(name_or_path)
    if processor is None:
        refused = why_not.startswith("refused")
        logger.log(logging.WARNING if refused else logging.INFO, "%s at %s: image processor %s", what,
                   name_or_path, why_not)
    return model, processor


#: ``load_image_processor``'s reason when a folder simply has no processor saved
NO_PROCESSOR_FILE = "not loaded: there is no preprocessor_config.json"


def _why_no_processor(name_or_path: str | os.PathLike, error: Exception) -> str:
    """Why ``AutoImageProcessor`` gave nothing: no config, custom code refused, or its own error."""
    folder = Path(name_or_path)
    if folder.is_dir():
        config = folder / "preprocessor_config.json"
        if not config.is_file():
            return NO_PROCESSOR_FILE
        reference = _custom_code_reference(folder)
        if reference:
            return (
                f"refused: its preprocessor_config.json maps it to custom code ({reference}) in the folder, "
                "which would run on load; hf-backdoor-guard never runs code from a model (trust_remote_code=False)"
            )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "custom code" in str(error) or "trust_remote_code" in str(error):
        return f"refused: it needs custom code from the repo (trust_remote_code=False): {text}"
    return f"not loaded: {type(error).__name__}: {text}"


def _custom_code_reference(folder: Path) -> str | None:
    """The ``auto_map`` class an image processor config in ``folder`` points at, if any."""
    for name, keys in (("preprocessor_config.json", ("AutoImageProcessor", "AutoFeatureExtractor")),
                       ("config.json", ("AutoImageProcessor",))):
        try:
            auto_map = json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key in keys:
            if isinstance(auto_map, dict) and auto_map.get(key):
                return str(auto_map[key])
    return None


# Weight files that torch unpickles (code can run while loading them): never loaded here.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safetensors_weights(folder: str | os.PathLike, what: str, save_hint: str) -> list[Path]:
    """The ``*.safetensors`` files of ``folder``, each with a readable header; ``ValueError`` otherwise.

    Refuses a folder whose weights are pickle only (saying how to convert them with
    ``save_hint``), one without weights, and a file whose header does not parse or does not
    match the file's size (truncated, corrupt). Only headers are read, no tensor data.
    ``what`` names the folder in the messages (``"model 'path'"``).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{what} holds its weights only as pickle ({', '.join(pickles)}), and hf-backdoor-guard "
                "loads safetensors only (unpickling a file can run code). Convert it once, where you trust its "
                f"source: load it and save it again with {save_hint}, which writes safetensors."
            )
        raise ValueError(f"{what} holds no weights: there is no *.safetensors file in {folder}.")
    for path in files:
        try:
            # Parses the header and checks its offsets against the file's size; maps no tensor data.
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{what}: {path} is not a readable safetensors file ({error}); it is truncated or "
                             "corrupt: download or save it again.") from error
    return files
