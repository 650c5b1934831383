#!/usr/bin/env python
"""Replace every training image by diffusion variations, across all processes and machines.

The training split is loaded (and, for research, poisoned) exactly as train_teacher.py loads
it, then ``generate_variations`` varies it shard by shard: each process takes every N-th
shard, and a rerun resumes where a killed one stopped. The result is a ``save_to_disk``
folder (default RUN_DIR/variations) that train_student.py reads.

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
    main_process_first,
    parse_arguments,
    save_arguments,
    setup_logging,
    stream_training_split,
)

from hf_backdoor_guard.outputs import record_outputs
from hf_backdoor_guard.pipeline import process_state
from hf_backdoor_guard.variations import generate_variations

logger = logging.getLogger("recipes.generate_variations")


def main(argv: list[str] | None = None):
    # Arguments: dataclass defaults < --config FILE < command-line flags.
    run_args, data_args, poison_args, variation_args = parse_arguments(
        (RunArguments, DataArguments, PoisonArguments, VariationArguments),
        argv, run_paths={"output_dir": "variations"}, description=__doc__.split("\n\n")[0])
    processes = process_state()
    setup_logging(run_args, processes.is_main)

    # The training split: poisoned for research with the teacher's seed (the same rows), or streamed.
    if variation_args.streaming:
        train_ds = stream_training_split(data_args, poison_args)
    else:
        with main_process_first():
            train_ds, _ = load_splits(data_args, poison_args, evaluation=False)

    # The diffusion model on this process's device, and the generation itself.
    variation = variation_args.build(device=PartialState().device)
    varied = generate_variations(
        train_ds, variation, variation_args.output_dir, batch_size=variation_args.variation_batch_size,
        shard_size=variation_args.shard_size, overlap=variation_args.overlap, part_index=variation_args.part_index,
        num_parts=variation_args.num_parts, push_to_hub=variation_args.push_to_hub,
        hub_private=variation_args.hub_private or None)
    if processes.is_main:
        logger.info("Wrote %d variations with %d processes (part %d of %d) to %s", len(varied), processes.world,
                    variation_args.part_index + 1, variation_args.num_parts, variation_args.output_dir)
        save_arguments(variation_args.output_dir, "generate_variations.py", run_args, data_args, poison_args,
                       variation_args)
        record_outputs(variation_args.output_dir, ["recipe_config.yaml"])
    processes.barrier()
    return varied


if __name__ == "__main__":
    main()
