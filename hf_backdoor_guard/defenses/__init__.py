"""Peer defenses beside the project's own method, behind one entry point and one registry.

``run_defense(name, poisoned_train, model_factory=..., training_args=..., image_processor=...,
clean_subset=..., backdoored_model=...)`` runs one defense; ``measure_defense`` runs and measures
one; ``run_defenses`` runs them all on the same data; ``write_leaderboard`` writes the
comparison. ``backdoor-guard compare`` (:mod:`hf_backdoor_guard.benchmark.compare`) puts them
beside the project's own method on the embedded benchmark. Each defense
states what it assumes (clean data, training access, inference cost) in its docstring and
in ``DefenseResult.assumes``.

Registered (in this order): ``none`` (the undefended model), ``abl``, ``fine_pruning``,
``nad``, ``spectral``, ``activation_clustering``, ``purification``. A new defense is one
:class:`Defense` subclass with ``@DEFENSES.register``.
"""

from .base import (
    DEFENSES,
    Assumptions,
    Defense,
    DefenseInputs,
    DefenseResult,
    draw_clean_subset,
    run_defense,
)
from .undefended import NoDefense  # noqa: I001  (registration order: the reference first)
from .abl import AntiBackdoorLearning
from .fine_pruning import FinePruning
from .nad import NeuralAttentionDistillation
from .spectral import SpectralSignatures
from .activation_clustering import ActivationClustering
from .purification import PurifiedClassifier, TestTimePurification
from .compare import EMBEDDED_BENCHMARK_OPTIONS, defense_variants, evaluate_defense, measure_defense, run_defenses
from .leaderboard import defense_effectiveness_rating, leaderboard_entry, leaderboard_table, write_leaderboard

__all__ = [
    "DEFENSES", "Assumptions", "Defense", "DefenseInputs", "DefenseResult", "draw_clean_subset", "run_defense",
    "NoDefense", "AntiBackdoorLearning", "FinePruning", "NeuralAttentionDistillation", "SpectralSignatures",
    "ActivationClustering", "PurifiedClassifier", "TestTimePurification", "EMBEDDED_BENCHMARK_OPTIONS",
    "defense_variants", "evaluate_defense", "measure_defense", "run_defenses", "defense_effectiveness_rating",
    "leaderboard_entry", "leaderboard_table", "write_leaderboard",
]
