"""Diffusion image variations: the step that washes triggers out of the training images.

``ImageVariation`` turns a diffusers pipeline into a ``Dataset.map`` transform;
``generate_variations`` runs it over a whole dataset, resumably and across processes.
"""

from .adapters import SUPPORTED_CLASSES
from .color import lab_to_rgb, rgb_to_lab, transfer_color
from .core import ImageVariation, variation_seed
from .generate import generate_variations
from .merge import merge_variation_shards

__all__ = ["ImageVariation", "generate_variations", "merge_variation_shards", "transfer_color", "rgb_to_lab",
           "lab_to_rgb", "variation_seed", "SUPPORTED_CLASSES"]
