"""Tiny randomly initialised image classifiers and their processors, built in code.

Nothing is downloaded: every builder constructs a transformers config small enough
to train a few steps on CPU in well under a second, seeds the weights, and returns
``(model, image_processor)``. Other test modules import these builders, so keep
their signatures stable.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessorPil,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

# The Pil processors are what the Auto classes fall back to without torchvision;
# importing them directly avoids the fallback warning.


def tiny_vit(num_labels: int = 4, image_size: int = 32, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
             image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
    """A 2-layer ViT with 8x8 patches and a processor that resizes to ``image_size``."""
    config = ViTConfig(
        image_size=image_size, patch_size=8, num_channels=3, hidden_size=hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, intermediate_size=2 * hidden_size,
        num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_mean=list(image_mean), image_std=list(image_std))
    return model, processor


def tiny_resnet(num_labels: int = 4, image_size: int = 32, seed: int = 0,
                image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)):
    """A 2-stage ResNet with ImageNet normalisation (as microsoft/resnet-* ships)."""
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = ResNetForImageClassification(config)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": image_size}, crop_pct=1.0,
                                          image_mean=list(image_mean), image_std=list(image_std))
    return model, processor


def tiny_convnext(num_labels: int = 4, image_size: int = 32, seed: int = 0):
    """A 2-stage ConvNeXt whose processor resizes with crop_pct and centre-crops."""
    config = ConvNextConfig(
        num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels,
        drop_path_rate=0.0,
    )
    torch.manual_seed(seed)
    model = ConvNextForImageClassification(config)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": image_size})
    return model, processor


def random_image_dataset(num_rows: int = 16, num_labels: int = 4, size: int = 32, seed: int = 0,
                         modes: tuple[str, ...] = ("RGB",)) -> Dataset:
    """Random PIL images (of the given modes, cycled) with a ClassLabel column."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for row in range(num_rows):
        array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        images.append(PILImage.fromarray(array, "RGB").convert(modes[row % len(modes)]))
        labels.append(int(rng.integers(0, num_labels)))
    features = Features({"image": Image(), "label": ClassLabel(num_classes=num_labels)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


__all__ = ["tiny_vit", "tiny_resnet", "tiny_convnext", "random_image_dataset"]
