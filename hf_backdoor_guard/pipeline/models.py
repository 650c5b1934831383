"""One classifier builder for the demo, ``defend``, ``compare`` and the recipes.

:func:`build_classifier` takes what a user types after ``--model``:

* an **architecture name** (:data:`ARCHITECTURES`): a transformers ResNet initialised
  from ``seed``, with a processor that resizes to ``image_size``; ``small-resnet`` is the
  demo's 75k-parameter model for 16x16 digits, ``resnet-18`` ... ``resnet-152`` have
  ``microsoft/resnet-*`` shapes;
* a **local folder** written by ``save_pretrained`` (weights as safetensors, an image
  processor beside them), or
* a **Hub id** of an image classifier (safetensors only, never remote code).

A saved model is the starting point of teacher and student alike. When its
``num_labels`` differs from the dataset's classes it gets a new classification head
(logged as a warning: those weights start from scratch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..validation import check_int, check_seed

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """A transformers ``ResNetConfig`` shape and the processor that goes with it."""

    layer_type: str
    depths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    embedding_size: int
    image_size: int  # the processor's output side (shortest edge, then centre crop)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    downsample_in_bottleneck: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    # The demo's classifier: 16x16 digits upsampled to 32 px, since the ResNet stem divides the
    # side by 4 and 8x8 feature maps learn digits much better than 4x4 ones. width scales it.
    "small-resnet": Architecture("basic", (1, 1), (32, 64), 16, 32, (0.5,) * 3, (0.5,) * 3),
    "resnet-18": Architecture("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64, 224),
    "resnet-34": Architecture("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64, 224),
    "resnet-50": Architecture("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), 64, 224),
    "resnet-101": Architecture("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048), 64, 224),
    "resnet-152": Architecture("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048), 64, 224),
}


def resnet_processor(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Shortest edge to ``image_size``, centre crop, normalise (``microsoft/resnet-*`` style)."""
    try:
        import torchvision  # noqa: F401
        from transformers import ConvNextImageProcessor as Processor
    except ImportError:  # without torchvision transformers would fall back to the PIL one anyway, with a warning
        from transformers import ConvNextImageProcessorPil as Processor
    return Processor(size={"shortest_edge": int(image_size)}, crop_pct=1.0, image_mean=list(mean),
                     image_std=list(std))


def model_source(model: str | os.PathLike) -> str:
    """``"architecture"``, ``"folder"`` or ``"hub"``: what ``--model`` names (ValueError if none of them)."""
    text = str(model)
    if text in ARCHITECTURES:
        return "architecture"
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model '{text}' is a folder without config.json: not a saved classifier "
                             "(save one with model.save_pretrained(folder) and processor.save_pretrained(folder)).")
        return "folder"
    if path.exists():
        raise ValueError(f"model '{text}' is a file; pass a model folder, a Hub id or one of {list(ARCHITECTURES)}.")
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return "hub"
    raise ValueError(
        f"model '{text}' is neither an architecture ({', '.join(ARCHITECTURES)}), a local model folder, "
        "nor a Hub id (user/name)."
    )


def check_model(model: str | os.PathLike, num_labels: int | None = None) -> None:
    """Every check :func:`build_classifier` makes, without loading weights (run it before any work).

    For a folder or Hub id this reads ``config.json`` (offline: from the local cache), and
    the model must be an image classifier; its image processor must load without custom
    code. A folder's weights must be safetensors with readable headers.
    """
    from ..loading import check_safetensors_weights

    source = model_source(model)
    if source == "architecture":
        return
    config = _load_config(model)
    if source == "folder":  # a Hub id's weights are fetched when it loads; a folder's can be checked now
        check_safetensors_weights(Path(str(model)).expanduser(), f"model '{model}'",
                                  "model.save_pretrained(folder)")
    _load_processor(model)
    if num_labels is not None and config.num_labels != num_labels:
        logger.warning("model '%s' has num_labels=%d but the dataset has %d classes: it will get a new "
                       "classification head, trained from scratch.", model, config.num_labels, num_labels)


def _load_processor(model):
    """The image processor saved with ``model``; ValueError saying why when there is none it may use."""
    from ..loading import NO_PROCESSOR_FILE, load_image_processor

    processor, why_not = load_image_processor(str(model))
    if processor is not None:
        return processor
    if why_not == NO_PROCESSOR_FILE:
        raise ValueError(f"model '{model}' has no image processor (there is no preprocessor_config.json); save one "
                         "beside the weights with processor.save_pretrained(folder).")
    if why_not.startswith("refused"):
        raise ValueError(f"model '{model}': its image processor is {why_not}. Save a transformers image processor "
                         "beside the weights instead (processor.save_pretrained(folder)).")
    raise ValueError(f"model '{model}': its image processor could not be loaded ({why_not}).")


def _load_config(model):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"model '{model}': could not read its config.json ({type(error).__name__}: {error}).") \
            from error
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(f"model '{model}' is a '{config.model_type}' model, which transformers cannot load as an "
                         "image classifier (AutoModelForImageClassification).")
    return config


def build_classifier(
    model: str | os.PathLike = "small-resnet",
    num_labels: int | None = None,
    *,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
    image_size: int | None = None,
    width: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
):
    """``(model, image_processor)`` for ``num_labels`` classes (or one per name in ``label_names``).

    Args:
        model: an architecture name (:data:`ARCHITECTURES`), a ``save_pretrained`` folder or a Hub id.
        num_labels: classes of the dataset (default: ``len(label_names)``).
        label_names: class names for ``id2label`` (default "0", "1", ...).
        seed: seeds the initial weights of a new architecture (and of a new head).
        image_size: new architectures: the side the processor resizes to (default: the architecture's).
        width: ``small-resnet`` only: its channels are ``width`` and ``2 * width`` (default 32).
        image_mean, image_std: new architectures: normalisation per RGB channel.
    """
    import torch

    if num_labels is None:
        if label_names is None:
            raise ValueError("Pass num_labels or label_names.")
        num_labels = len(label_names)
    check_int("num_labels", num_labels, minimum=2)
    check_seed("seed", seed)
    names = [str(name) for name in label_names] if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"label_names has {len(names)} names for num_labels={num_labels}.")
    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    source = model_source(model)
    if source != "architecture":
        for option, value in (("image_size", image_size), ("width", width), ("image_mean", image_mean),
                              ("image_std", image_std)):
            if value is not None:
                raise ValueError(f"{option} applies to a new architecture only; model '{model}' brings its own.")
        return _load_pretrained(model, num_labels, id2label, label2id, seed)

    from transformers import ResNetConfig, ResNetForImageClassification

    shape = ARCHITECTURES[str(model)]
    hidden_sizes, embedding_size = list(shape.hidden_sizes), shape.embedding_size
    if width is not None:
        if model != "small-resnet":
            raise ValueError(f"width applies to small-resnet only, not to {model}.")
        check_int("width", width, minimum=2)
        hidden_sizes, embedding_size = [width, 2 * width], width // 2
    for option, value in (("image_mean", image_mean), ("image_std", image_std)):
        if value is not None and len(value) != 3:
            raise ValueError(f"{option} needs one value per RGB channel, got {value!r}.")
    image_size = shape.image_size if image_size is None else check_int("image_size", image_size, minimum=8)
    config = ResNetConfig(
        num_channels=3, embedding_size=embedding_size, hidden_sizes=hidden_sizes, depths=list(shape.depths),
        layer_type=shape.layer_type, downsample_in_bottleneck=shape.downsample_in_bottleneck,
        num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    torch.manual_seed(seed)
    classifier = ResNetForImageClassification(config)
    logger.debug("New %s (%.2fM parameters) for %d classes", model,
                sum(p.numel() for p in classifier.parameters()) / 1e6, num_labels)
    processor = resnet_processor(image_size, image_mean or shape.mean, image_std or shape.std)
    return classifier, processor


def _load_pretrained(model, num_labels: int, id2label: dict, label2id: dict, seed: int):
    import torch

    from ..loading import load_classifier

    config = _load_config(model)
    processor = _load_processor(model)  # first: it says why it cannot be used before the weights load
    options = {"id2label": id2label, "label2id": label2id, "num_labels": num_labels}
    if config.num_labels != num_labels:
        logger.warning("model '%s' has num_labels=%d but the dataset has %d classes: it gets a new classification "
                       "head, trained from scratch.", model, config.num_labels, num_labels)
        options["ignore_mismatched_sizes"] = True
        torch.manual_seed(seed)  # the new head's initial weights
    classifier = load_classifier(model, "the classifier to start from", **options)
    return classifier, processor


__all__ = ["ARCHITECTURES", "Architecture", "build_classifier", "check_model", "model_source", "resnet_processor"]
