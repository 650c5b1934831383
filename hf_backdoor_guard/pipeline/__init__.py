"""The method as one pipeline of cached stages; ``defend``, the recipes and the benchmark layer
(:mod:`hf_backdoor_guard.benchmark`: the demo and ``compare``) call it.

* :mod:`.stages`: the stage functions (data, teacher, variations, detection, students,
  evaluation), each cached in a :class:`~.run_folder.RunFolder`;
* :mod:`.models`: :func:`build_classifier`, the one classifier builder (architecture
  name, local folder or Hub id);
* :mod:`.config`: :class:`DefendConfig`, the options of ``backdoor-guard defend``;
* :mod:`.defend`: :func:`run_defend`, the whole method on a user's dataset;
* :mod:`.report` and :mod:`.figures`: what a run leaves in its output folder.

Submodules are imported on first use, so ``import hf_backdoor_guard.pipeline`` stays light.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "RunFolder": "run_folder",
    "process_state": "run_folder",
    "output_finished": "run_folder",
    "build_classifier": "models",
    "ARCHITECTURES": "models",
    "DefendConfig": "config",
    "run_defend": "defend",
    "training_arguments": "stages",
    "training_settings": "stages",
    "data_stage": "stages",
    "teacher_stage": "stages",
    "variations_stage": "stages",
    "detection_stage": "stages",
    "distillation_dataset": "stages",
    "student_stage": "stages",
    "baseline_stage": "stages",
    "evaluation_stage": "stages",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)
