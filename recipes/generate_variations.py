#!/usr/bin/env python
"""Replace every training image by diffusion variations, across all processes and machines.

The training split is loaded (and, for research, poisoned) exactly as train_teacher.py loads
it, then the variations stage varies it shard by shard: each process takes every N-th shard,
and a rerun resumes where a killed one stopped. The result is a ``save_to_disk`` folder
(default RUN_DIR/variations) that train_student.py reads; a finished one is reused, and a
rerun with other options is refused, naming them (--overwrite replaces it).

    accelerate launch recipes/generate_variations.py --config recipes/configs/imagenette.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/generate_variations.py --config CONFIG.yaml
    # machine I of 4, without shared storage (then hbg.merge_variation_shards on the four folders):
    accelerate launch --multi_gpu --num_processes 8 recipes/generate_variations.py --config CONFIG.yaml \\
        --part_index I --num_parts 4 --output_dir /local/variations-part-I
    python recipes/generate_variations.py --help
"""

from __future__ import annotations

import logging

from accelerate import PartialState
from recipe_arguments import (
    DataArguments,
    PoisonArguments,
    RunArguments,
    VariationArguments,
    load_splits,
    parse_arguments,
    run_folder,
    save_arguments,
    setup_logging,
    stage_settings,
    stream_training_split,
)

from hf_backdoor_guard.runtime.outputs import record_outputs
from hf_backdoor_guard.pipeline import variations_stage

logger = logging.getLogger("recipes.generate_variations")


def main(argv: list[str] | None = None):
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    all_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, VariationArguments),
        argv, run_paths={"output_dir": "variations"}, description=__doc__.split("\n\n")[0])
    run_args, data_args, poison_args, variation_args = all_args
    state = PartialState()
    setup_logging(run_args, state.is_main_process)

    # The training split: poisoned for research with the teacher's seed (the same rows), or streamed.
    if variation_args.streaming:
        train_ds = stream_training_split(data_args, poison_args)
    else:
        with state.main_process_first():
            train_ds, _ = load_splits(data_args, poison_args, evaluation=False)

    # The variations stage: the diffusion model on this process's device (built only when there is work
    # left), every column kept (research data's "poisoned" column too), this part of the shards.
    run, name = run_folder(variation_args.output_dir, run_args)
    varied = variations_stage(
        run, train_ds, name=name, settings=stage_settings(data_args, poison_args, variation_args),
        variation=lambda: variation_args.build(device=state.device), columns=None,
        batch_size=variation_args.variation_batch_size, shard_size=variation_args.variation_shard_size,
        overlap=variation_args.overlap, part_index=variation_args.part_index, num_parts=variation_args.num_parts,
        push_to_hub=variation_args.push_to_hub, hub_private=variation_args.hub_private or None)
    if run.is_main_process:
        logger.info("Wrote %d variations with %d processes (part %d of %d) to %s", len(varied), run.num_processes,
                    variation_args.part_index + 1, variation_args.num_parts, variation_args.output_dir)
        save_arguments(variation_args.output_dir, "generate_variations.py", *all_args)
        record_outputs(variation_args.output_dir, ["recipe_config.yaml"])  # ours, in generate_variations' folder
    run.wait()
    return varied


if __name__ == "__main__":
    main()
