"""Backdoor triggers: PIL image in, new RGB PIL image out, deterministic.

One small module per attack family; each attack is an :class:`Attack` subclass
registered in :data:`ATTACKS` (the CLI, the demo and the recipes read the registry).
Registration order is the order ``--attack all`` runs them in.
"""

from __future__ import annotations

# imported in registration order: the four original attacks first
from .base import ATTACKS, Attack  # noqa: I001
from .patches import BadNets
from .blending import Blended
from .warping import WaNet
from .signals import SIG
from .label_consistent import LabelConsistent
from .frequency import FTrojan
from .quantisation import BppAttack
from .adaptive import AdaptiveBlend
from .adaptive_patch import AdaptivePatch
# the red team (issue 21): triggers the diffusion variations keep, then one optimised to survive them
from .content import LowFrequency, Border, Tint, Stroke
from .surviving import SurvivingTrigger


def attack_from_name(name: str, **options) -> Attack:
    """Build a registered attack from its short name (``ATTACKS.names()``) and its options."""
    return ATTACKS[name](**options)


__all__ = ["ATTACKS", "Attack", "BadNets", "Blended", "WaNet", "SIG", "LabelConsistent", "FTrojan", "BppAttack",
           "AdaptiveBlend", "AdaptivePatch", "LowFrequency", "Border", "Tint", "Stroke", "SurvivingTrigger",
           "attack_from_name"]
