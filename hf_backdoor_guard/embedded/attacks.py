"""The embedded benchmark's attack settings: one table, one row per attack that departs from its defaults.

The library's attack defaults stay at each paper's published values. On the embedded
benchmark (16x16 digits, 800 victim rows) some of them are too weak for a teacher to
learn the backdoor at all, and then a defence proves nothing. Each row below says
which settings the demo, ``compare`` and the benchmarks use instead, and why.
Registered attacks that have no row run with their defaults and a 10% poison rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_RATE = 0.1


@dataclass(frozen=True)
class BenchmarkAttack:
    """How the embedded benchmark plants one attack.

    Args:
        options: attack constructor arguments that differ from the library defaults.
        rate: the ``poison_dataset`` rate.
        poison: other ``poison_dataset`` keyword arguments.
        why: why the setting departs from the attack's published defaults.
    """

    options: dict[str, Any] = field(default_factory=dict)
    rate: float = DEFAULT_RATE
    poison: dict[str, Any] = field(default_factory=dict)
    why: str = "the attack's published defaults"


#: attack name -> its embedded-benchmark setting (attacks not listed: defaults, rate 0.1)
EMBEDDED_ATTACKS: dict[str, BenchmarkAttack] = {}


def embedded_attack(name: str, *, seed: int = 0, clean_data=None):
    """``(attack, poison_kwargs)`` for attack ``name`` on the embedded benchmark.

    ``poison_kwargs`` go to :func:`~hf_backdoor_guard.poison_dataset` beside the data,
    the target label and the seed. ``clean_data`` is the clean pretraining split, for
    attacks that need a surrogate model; ``seed`` seeds anything the setting trains.
    """
    from ..attacks import attack_from_name

    setting = EMBEDDED_ATTACKS.get(name, BenchmarkAttack())
    attack = attack_from_name(name, **setting.options)
    return attack, {"rate": setting.rate, **setting.poison}
