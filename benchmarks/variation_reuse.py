"""Benchmark: the variations of a second attack, made fresh and made reusing a first attack's folder.

A benchmark world's attacks at one seed poison the same victim set, each changing about a
tenth of its rows, so a run can take the other rows' variations from an earlier attack's
folder (``generate_variations(..., reuse=...)``). Both ways run here, one after the other,
on the world's real data, attack settings and shipped diffusion model:

1. ``donor``: the variations of the victim set poisoned by ``--donor`` (made fresh, the
   folder reused in 3);
2. ``fresh``: the variations of the victim set poisoned by ``--attack``, made from scratch;
3. ``reused``: the same as 2, reusing 1.

Printed: the rows reused, both times and their ratio, and whether 2 and 3 hold the same
bytes (pixels and every other column). Run: ``python benchmarks/variation_reuse.py``
(about two minutes on the digits; ``--benchmark fashion-mnist --rows 1000`` for the second world).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)

import datasets  # noqa: E402

import hf_backdoor_guard as hbg  # noqa: E402
from hf_backdoor_guard.benchmark.attack_settings import embedded_attack  # noqa: E402
from hf_backdoor_guard.benchmark.demo import TARGET_LABEL, DemoSettings  # noqa: E402
from hf_backdoor_guard.benchmark.worlds import world  # noqa: E402
from hf_backdoor_guard.embedded import EMBEDDED_MODEL_OPTIONS  # noqa: E402
from hf_backdoor_guard.poisoning import poison_dataset  # noqa: E402

datasets.disable_progress_bars()


def poisoned(data, attack_name: str, seed: int, rows: int | None, table):
    """The victim rows (the first ``rows``) poisoned as the demo poisons them, with the columns it varies."""
    attack, poison_kwargs = embedded_attack(attack_name, seed=seed, clean_data=data["pretrain"], table=table)
    train = data["train"] if rows is None else data["train"].select(range(rows))
    out = poison_dataset(train, attack, target_label=TARGET_LABEL, **{"seed": seed, **poison_kwargs})
    return out.flatten_indices().select_columns(["image", "label"])


def timed(ds, variation, folder: Path, batch_size: int, **options):
    started = time.perf_counter()
    result = hbg.generate_variations(ds, variation, folder, batch_size=batch_size, progress=False, **options)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="digits")
    parser.add_argument("--donor", default="badnets", help="The attack whose folder is reused.")
    parser.add_argument("--attack", default="blended", help="The attack whose variations are timed.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=None, help="Vary only the first ROWS victim rows.")
    args = parser.parse_args()

    chosen = world(args.benchmark)
    data = chosen.load()
    settings = DemoSettings()
    donor_rows = poisoned(data, args.donor, args.seed, args.rows, chosen.attacks)
    rows = poisoned(data, args.attack, args.seed, args.rows, chosen.attacks)

    def variation():
        return hbg.ImageVariation.embedded(model=EMBEDDED_MODEL_OPTIONS[chosen.diffusion_model], seed=args.seed)

    batch_size = max(1, settings.variation_batch_size // variation().num_variations)  # as defend batches
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, donor_seconds = timed(donor_rows, variation(), tmp / "donor", batch_size)
        fresh, fresh_seconds = timed(rows, variation(), tmp / "fresh", batch_size)
        reused, reused_seconds = timed(rows, variation(), tmp / "reused", batch_size,
                                       reuse=[(donor_rows, tmp / "donor")])
        same = fresh.with_format("arrow")[:].equals(reused.with_format("arrow")[:])
    unchanged = sum(a == b for a, b in zip(donor_rows.with_format("arrow")["image"].to_pylist(),
                                             rows.with_format("arrow")["image"].to_pylist()))
    print(f"{chosen.name}, seed {args.seed}: {args.attack} after {args.donor}, {len(rows)} rows x "
          f"{fresh.num_rows // len(rows)} variations; {unchanged} rows unchanged (reused)")
    print(f"donor {donor_seconds:.1f} s | fresh {fresh_seconds:.1f} s | reused {reused_seconds:.1f} s | "
          f"fresh / reused = {fresh_seconds / reused_seconds:.2f}x | same bytes: {same}")


if __name__ == "__main__":
    main()
