#!/usr/bin/env python
"""Replace every training image by diffusion variations, across all processes; save, optionally push.

The training split is loaded (and, for research, poisoned) exactly as train_teacher.py
loads it, then ``generate_variations`` varies it shard by shard: each process takes
every N-th shard, and a rerun resumes where an interrupted one stopped. The result is a
``save_to_disk`` folder (default RUN_DIR/variations) that train_student.py reads.

    accelerate launch recipes/generate_variations.py recipes/configs/imagenette_badnets.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/generate_variations.py CONFIG.yaml
    python recipes/generate_variations.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a source checkout without installing the package; recipes/ itself stays off the
# import path, where recipes/evaluate.py would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def main(argv: list[str] | None = None):
    import logging


    from hf_backdoor_guard import recipe_args as ra
    from hf_backdoor_guard.variations import generate_variations

    all_args = ra.parse_recipe_args("generate_variations", argv, description=__doc__.split("\n\n")[0])
    run, data, poison, options = all_args
    state = ra.process_state()
    ra.setup_logging(run.verbosity, state.is_main_process)

    train_ds = ra.load_train_dataset(data, poison)
    variation = ra.load_variation(options, device=state.device)
    varied = generate_variations(train_ds, variation, options.output_dir, batch_size=options.variation_batch_size,
                                 shard_size=options.shard_size)
    if state.is_main_process:
        logging.getLogger("generate_variations").info(
            "Varied %d rows into %d images with %d processes in %s", len(train_ds), len(varied), state.num_processes,
            options.output_dir)
        ra.save_resolved_config(options.output_dir, "generate_variations", *all_args)
        if options.push_to_hub:
            from hf_backdoor_guard.hub import publish_dataset

            info = {"base_dataset": data.dataset_name, "diffusion_model": options.diffusion_model,
                    "diffusion_settings": variation.settings(), "seed": options.variation_seed}
            if poison.attack is not None and poison.poison_rate > 0:
                info.update(attack=ra.attack_label(poison.attack), poison_rate=poison.poison_rate,
                            target_label=poison.target_label)
            publish_dataset(varied, options.hub_dataset_id, private=options.hub_private or None, **info)
    state.wait_for_everyone()
    return varied


if __name__ == "__main__":
    main()
