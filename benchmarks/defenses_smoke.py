"""Every registered peer defense once on the embedded benchmark: C-Acc, ASR, R-Acc, DER and seconds.

BadNets (the attack's defaults: 3x3 checkerboard, bottom right) poisons 10% of the
800-row digits train split (target 0, seed 0); every defense then runs through
``hf_backdoor_guard.defenses.run_defenses`` with the demo's classifier and training
settings (12 epochs, no augmentation), at the papers' settings scaled to the budget
(``--tuned``: with ``EMBEDDED_BENCHMARK_OPTIONS`` instead, ABL and activation clustering
tuned up for this benchmark with its ground truth). ``backdoor-guard compare`` runs the same
defenses beside the method (both settings, as separate rows). Defenses that need clean data get 40 rows
(5% of the training size, as in BackdoorBench) of the digits ``pretrain`` split, which
the embedded diffusion model was trained on too. Purification uses
``ImageVariation.embedded()`` at its defaults.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/defenses_smoke.py --output-dir /tmp/defenses-smoke

Prints one line per defense, then the table; writes ``leaderboard.json/.md/.png`` to
``--output-dir`` and appends one JSON record to ``--record`` when given. The runs recorded in
``benchmarks/defenses_smoke_results.jsonl`` are discussed in BENCHMARKS.md ("peer defenses").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defenses", default=None, help="comma-separated names (default: every registered one)")
    parser.add_argument("--options", default="{}", help='JSON {defense: {option: value}} overrides')
    parser.add_argument("--tuned", action="store_true",
                        help="EMBEDDED_BENCHMARK_OPTIONS (chosen with the benchmark's ground truth) instead of every "
                             "defense's class defaults (the papers' settings scaled to the budget)")
    parser.add_argument("--clean-rows", type=int, default=40)
    parser.add_argument("--output-dir", default=None, help="where the leaderboard files go (default: a temp folder)")
    parser.add_argument("--record", default=None, help="append the results as one JSON line to this file")
    args = parser.parse_args()

    import torch
    from transformers import TrainingArguments

    import hf_backdoor_guard as hbg
    from hf_backdoor_guard.defenses import draw_clean_subset, leaderboard_entry, run_defenses, write_leaderboard
    from hf_backdoor_guard.defenses.compare import EMBEDDED_BENCHMARK_OPTIONS
    from hf_backdoor_guard.benchmark.demo import DemoSettings, build_classifier

    seed = args.seed
    settings = DemoSettings()
    data = hbg.load_digits_dataset(seed=0)  # the split the embedded diffusion model was trained on
    attack = hbg.BadNets()
    poisoned = hbg.poison_dataset(data["train"], attack, target_label=0, rate=0.1, seed=seed)
    clean_subset = draw_clean_subset(data["pretrain"], args.clean_rows, seed=seed)
    _, processor = build_classifier(10, seed=seed, width=settings.width)
    scratch = tempfile.mkdtemp(prefix="hbg-defenses-smoke-")
    training_args = TrainingArguments(  # the demo's teacher settings (demo._training_args)
        output_dir=scratch, num_train_epochs=settings.teacher_epochs, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, weight_decay=1e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
        seed=seed, data_seed=seed, save_strategy="no", report_to="none", logging_strategy="no", use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    options = copy.deepcopy(EMBEDDED_BENCHMARK_OPTIONS) if args.tuned else {}
    for name, overrides in json.loads(args.options).items():
        options.setdefault(name, {}).update(overrides)
    names = args.defenses.split(",") if args.defenses else None
    if names is None or "purification" in names:
        options.setdefault("purification", {}).setdefault("variation", hbg.ImageVariation.embedded(seed=seed))

    print(f"torch threads {torch.get_num_threads()}, {len(poisoned)} rows ({sum(poisoned['poisoned'])} poisoned), "
          f"clean subset {len(clean_subset)} rows, {len(data['test'])} test rows", flush=True)
    started = time.time()
    records = run_defenses(
        poisoned, data["test"], attack, target_label=0, model_factory=lambda: build_classifier(
            10, seed=seed, width=settings.width)[0], training_args=training_args, image_processor=processor,
        clean_subset=clean_subset, names=names, options=options, augment=False,
        report=lambda line: print(line, flush=True),
    )
    board = leaderboard_entry("badnets", seed, records)
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="hbg-defenses-board-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_leaderboard(output_dir, board)
    print(f"\ntotal {time.time() - started:.0f} s; leaderboard in {output_dir}\n")
    print((output_dir / "leaderboard.md").read_text())
    if args.record:
        with open(args.record, "a") as file:
            file.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(),
                                   "torch_threads": torch.get_num_threads(), "paper_defaults": not args.tuned,
                                   **board}) + "\n")


if __name__ == "__main__":
    main()
