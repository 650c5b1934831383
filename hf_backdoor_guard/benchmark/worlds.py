"""Benchmark worlds: a dataset split into disjoint pretrain / train / test, the diffusion model pretrained on its
``pretrain`` split only, and the setting each attack is planted with there.

``demo --benchmark NAME`` and ``compare --benchmark NAME`` run in one; the method's
settings are the same in every world (``DemoSettings``), so a second world tests how
far settings chosen on the first one carry. A new world is one :class:`World` and one
registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..registry import Registry

if TYPE_CHECKING:
    from datasets import DatasetDict


@dataclass(frozen=True)
class World:
    """One benchmark world.

    Args:
        name: what ``--benchmark`` calls it.
        description: the data as reports name it (also what the data stage's cache is keyed by).
        load: returns the ``DatasetDict`` with ``pretrain``, ``train`` (the victim's) and ``test``.
        diffusion_model: the ``--diffusion-model`` of the shipped model pretrained on ``pretrain``.
        attacks: attack name -> its setting here (``attack_settings.BenchmarkAttack``); attacks
            not listed run with their defaults at a 10% rate.
        notes: how the attack settings were chosen for this world.
    """

    name: str
    description: str
    load: Callable[[], "DatasetDict"]
    diffusion_model: str
    attacks: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""


WORLDS = Registry("benchmark")


def world(name: str) -> World:
    """The registered world ``name`` (a ValueError lists the others)."""
    return WORLDS[name]


def world_of(config) -> World:
    """The world whose shipped diffusion model ``config`` (a ``DefendConfig``) uses."""
    for name in WORLDS:
        if WORLDS[name].diffusion_model == config.diffusion_model:
            return WORLDS[name]
    raise ValueError(f"--diffusion-model {config.diffusion_model} is not the model of a benchmark world; the worlds "
                     f"use {[WORLDS[name].diffusion_model for name in WORLDS]}.")


def _digits() -> "DatasetDict":
    from ..data import load_digits_dataset

    # The split seed stays 0: the shipped digits model was pretrained on that split's pretrain rows only.
    return load_digits_dataset(seed=0)


def _fashion_mnist() -> "DatasetDict":
    from ..data import load_fashion_mnist

    return load_fashion_mnist(seed=0)  # the split the shipped Fashion-MNIST model was pretrained on


def _attack_table():
    from .attack_settings import EMBEDDED_ATTACKS

    return EMBEDDED_ATTACKS


WORLDS.register(World(
    name="digits", description="scikit-learn digits 16x16 (split seed 0)", load=_digits,
    diffusion_model="embedded", attacks=_attack_table(),
    notes="each setting measured on this world (benchmarks/plant_attacks.py; BENCHMARKS.md, 'attacks planted')"))
WORLDS.register(World(
    name="fashion-mnist",
    description="Fashion-MNIST 28x28: 5,000 victim and 2,000 test images (split seed 0)",
    load=_fashion_mnist, diffusion_model="embedded-fashion-mnist", attacks=_attack_table(),
    notes="the digits' settings unchanged, frozen before any Fashion-MNIST run (issue 22): an attack that is not "
          "planted here is reported as such, not tuned first"))

__all__ = ["WORLDS", "World", "world", "world_of"]
