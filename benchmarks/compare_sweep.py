"""Every attack the demo has x seeds 0-2 through ``backdoor-guard compare``: the BENCHMARKS.md "defenses" table.

    nice -n 10 python benchmarks/compare_sweep.py --output-dir /tmp/compare-sweep              # run (resumable)
    python benchmarks/compare_sweep.py --output-dir /tmp/compare-sweep --summarize \\
        --record benchmarks/compare_sweep_results.jsonl                                         # the table

Each run is ``backdoor-guard compare --attack A --seed S --output-dir ROOT/A/seed-S`` in its own
process with ``OMP_NUM_THREADS=1``, ``--workers`` (default 2) at a time, seeds in the outer loop
(so a partial sweep covers every attack at seed 0 first). A run whose ``leaderboard.json`` exists
is skipped; a killed run resumes from its own cache (compare reuses the finished pipeline stages
and defense rows). Each run's output goes to ``ROOT/logs/A-seed-S.log``. After a change of the
method's or an attack's settings, start in a new ROOT: finished runs are not redone.

``--summarize`` prints, per attack and row: the means over the seeds of C-Acc, ASR, R-Acc and
DER, the worst seed (lowest C-Acc, highest ASR) and the mean seconds; then the goal of issue 12
(point 4): our ``student``'s ASR is no higher than the lowest ASR among the peer defenses whose
C-Acc drop (against ``none``) is at most ours + 0.02. It is checked on the means, and seed by
seed, against the papers' settings (the primary rows), and again with the ``*_tuned`` rows
(settings chosen with the benchmark's ground truth). Every baseline that beats the student is
named with the margin. ``--readme`` also prints the README's "compared with" table (markdown:
one row per defense, one column per attack, "C-Acc / ASR" means, what it needs, seconds per run);
``--record FILE`` writes one JSON line per run (metrics, DER, seconds, detection, options).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHOD = ("none", "student", "student_cleaned")
OURS = "student"
TOLERANCE = 0.02  # the goal's C-Acc margin
METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "der", "seconds")


def run_folder(root: Path, attack: str, seed: int) -> Path:
    return root / attack / f"seed-{seed}"


def run_one(root: Path, attack: str, seed: int, defenses: list[str] | None) -> tuple[str, int, float]:
    """One ``backdoor-guard compare`` in its own process (1 torch thread); returns (attack, exit status, seconds)."""
    folder = run_folder(root, attack, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = root / "logs" / f"{attack}-seed-{seed}.log"
    command = [sys.executable, "-m", "hf_backdoor_guard.cli", "compare", "--attack", attack, "--seed", str(seed),
               "--output-dir", str(folder)]
    if defenses:
        command += ["--defenses", *defenses]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.time()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False).returncode
    return attack, status, time.time() - started


def sweep(root: Path, attacks: list[str], seeds: list[int], workers: int, defenses: list[str] | None) -> int:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    plan = [(attack, seed) for seed in seeds for attack in attacks]
    todo = [(attack, seed) for attack, seed in plan
            if not (run_folder(root, attack, seed) / "leaderboard.json").is_file()]
    print(f"{len(plan)} runs, {len(plan) - len(todo)} finished earlier, {len(todo)} to run, {workers} at a time, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, root, attack, seed, defenses): (attack, seed) for attack, seed in todo}
        for number, future in enumerate(concurrent.futures.as_completed(futures), 1):
            attack, seed = futures[future]
            _, status, seconds = future.result()
            if status != 0:
                failed.append((attack, seed))
            print(f"[{number}/{len(todo)}] {attack} seed {seed}: {'done' if status == 0 else f'FAILED ({status})'} "
                  f"in {seconds:.0f} s, load average {os.getloadavg()[0]:.2f}", flush=True)
    for attack, seed in failed:
        print(f"failed: {attack} seed {seed}, see {root / 'logs' / f'{attack}-seed-{seed}.log'}")
    return 1 if failed else 0


# --- summary ---------------------------------------------------------------------------------
def load_boards(root: Path, attacks: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    boards: dict[str, dict[int, dict]] = {}
    for attack in attacks:
        for seed in seeds:
            path = run_folder(root, attack, seed) / "leaderboard.json"
            if path.is_file():
                boards.setdefault(attack, {})[seed] = json.loads(path.read_text())["defenses"]
    return boards


def goal_check(per_seed: dict[int, dict], tuned: bool) -> dict:
    """Issue 12 point 4 for one attack, on the means over seeds and seed by seed.

    A peer defense is comparable when its C-Acc drop against ``none`` is at most ours + 0.02;
    the goal holds when our student's ASR is no higher than the lowest ASR among them.
    """
    def eligible_rows(rows):
        return [name for name in rows if name not in METHOD and (tuned or not name.endswith("_tuned"))]

    def check(rows: dict) -> dict:
        none, ours = rows["none"], rows[OURS]
        our_drop = none["clean_accuracy"] - ours["clean_accuracy"]
        comparable = {name: rows[name] for name in eligible_rows(rows)
                      if none["clean_accuracy"] - rows[name]["clean_accuracy"] <= our_drop + TOLERANCE + 1e-9}
        best = min(comparable, key=lambda name: comparable[name]["attack_success_rate"], default=None)
        beaten_by = {name: round(ours["attack_success_rate"] - row["attack_success_rate"], 4)
                     for name, row in comparable.items()
                     if row["attack_success_rate"] < ours["attack_success_rate"] - 1e-9}
        return {"met": not beaten_by, "best": best,
                "best_asr": None if best is None else comparable[best]["attack_success_rate"],
                "our_asr": ours["attack_success_rate"], "our_drop": round(our_drop, 4), "beaten_by": beaten_by}

    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]])
    means = {name: {key: statistics.mean(per_seed[seed][name][key] for seed in seeds)
                    for key in ("clean_accuracy", "attack_success_rate")}
             for name in names if all(name in per_seed[seed] for seed in seeds)}
    return {"means": check(means), "seeds_met": sum(check(per_seed[seed])["met"] for seed in seeds),
            "seeds": len(seeds)}


def summarize(boards: dict[str, dict[int, dict]]) -> str:
    lines = []
    header = ("attack", "defense", "seeds", "C-Acc", "C-Acc worst", "ASR", "ASR worst", "R-Acc", "DER", "s")
    table = [header]
    for attack, per_seed in boards.items():
        names = list(dict.fromkeys(name for rows in per_seed.values() for name in rows))
        for name in names:
            seeds = [seed for seed in sorted(per_seed) if name in per_seed[seed]]
            values = {key: [per_seed[seed][name][key] for seed in seeds] for key in METRICS}
            mean = {key: statistics.mean(found) for key, found in values.items()}
            table.append((attack, name, str(len(seeds)), f"{mean['clean_accuracy']:.3f}",
                          f"{min(values['clean_accuracy']):.3f}", f"{mean['attack_success_rate']:.3f}",
                          f"{max(values['attack_success_rate']):.3f}", f"{mean['robust_accuracy']:.3f}",
                          f"{mean['der']:.3f}", f"{mean['seconds']:.0f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines += ["", (f"Goal (issue 12.4): student ASR <= the lowest ASR of the peer defenses whose C-Acc drop is at "
                   f"most the student's + {TOLERANCE} (means over seeds; seeds where it holds):")]
    for attack, per_seed in boards.items():
        if not all(OURS in rows and "none" in rows for rows in per_seed.values()):
            continue
        for tuned in (False, True):
            result = goal_check(per_seed, tuned)
            means = result["means"]
            label = "with *_tuned rows" if tuned else "papers' settings"
            best = "no comparable peer defense" if means["best"] is None else \
                f"best comparable {means['best']} ASR {means['best_asr']:.3f}"
            beaten = "; ".join(f"{name} ASR lower by {margin:.3f}" for name, margin in means["beaten_by"].items())
            lines.append(f"- {attack} ({label}): {'met' if means['met'] else 'NOT met'}: student ASR "
                         f"{means['our_asr']:.3f} (C-Acc drop {means['our_drop']:.3f}), {best}; seeds "
                         f"{result['seeds_met']}/{result['seeds']}" + (f"; beaten by: {beaten}" if beaten else ""))
    return "\n".join(lines)


def _needs(name: str, assumes: dict) -> str:
    """A few words on what a row needs beyond the poisoned data, from its recorded ``assumes``."""
    parts = []
    if assumes.get("needs_clean_subset"):
        parts.append("5% clean data")
    if "diffusion model" in str(assumes.get("clean_data", "")):
        parts.append("a diffusion model that never saw the data")
    if assumes.get("inference_cost", "none") != "none":
        parts.append("diffusion at test time")
    if name.endswith("_tuned"):
        parts.append("options tuned with the ground truth")
    return ", ".join(parts) or "-"


def readme_table(boards: dict[str, dict[int, dict]]) -> str:
    """The README's "compared with" table: one row per defense, one column per attack, cells "C-Acc / ASR"
    (means over seeds), then what the defense needs and its mean seconds per run."""
    attacks = list(boards)
    names = list(dict.fromkeys(name for per_seed in boards.values() for rows in per_seed.values() for name in rows))
    header = ["defense", *attacks, "needs", "s / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells, seconds, needs = [], [], ""
        for attack in attacks:
            rows = [rows[name] for rows in boards[attack].values() if name in rows]
            if not rows:
                cells.append("")
                continue
            cells.append(f"{statistics.mean(r['clean_accuracy'] for r in rows):.3f} / "
                         f"{statistics.mean(r['attack_success_rate'] for r in rows):.3f}")
            seconds += [r["seconds"] for r in rows]
            needs = _needs(name, rows[0]["assumes"])
        label = f"**{name}** (ours)" if name in ("student", "student_cleaned") else name
        lines.append("| " + " | ".join([label, *cells, needs, f"{statistics.mean(seconds):.0f}"]) + " |")
    return "\n".join(lines)


def write_record(path: Path, boards: dict[str, dict[int, dict]]) -> None:
    """One JSON line per run: the rows' metrics, DER, seconds, detection and options (not the bulky info)."""
    import torch

    keep = (*METRICS, "detection", "options", "assumes")
    with open(path, "w", encoding="utf-8") as handle:
        for attack, per_seed in boards.items():
            for seed, rows in per_seed.items():
                compact = {name: {key: row[key] for key in keep if key in row} for name, row in rows.items()}
                handle.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(),
                                         "torch_threads_per_run": 1, "torch": torch.__version__, "attack": attack,
                                         "seed": seed, "defenses": compact}, default=str) + "\n")


def main() -> int:
    from hf_backdoor_guard.benchmark.demo import attack_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="ROOT: one compare folder per run, ROOT/ATTACK/seed-S")
    parser.add_argument("--attacks", nargs="+", default=list(attack_names()), choices=list(attack_names()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (each with one torch thread)")
    parser.add_argument("--defenses", nargs="+", default=None, help="passed to compare (default: every row)")
    parser.add_argument("--summarize", action="store_true", help="print the table of the finished runs; run nothing")
    parser.add_argument("--record", default=None, help="with --summarize: write one JSON line per run to this file")
    parser.add_argument("--readme", action="store_true",
                        help="with --summarize: also print the README's 'compared with' table (markdown)")
    args = parser.parse_args()
    root = Path(args.output_dir)
    if not args.summarize:
        return sweep(root, args.attacks, args.seeds, args.workers, args.defenses)
    boards = load_boards(root, args.attacks, args.seeds)
    if not boards:
        print(f"No finished run under {root}.")
        return 1
    print(summarize(boards))
    if args.readme:
        print("\n" + readme_table(boards))
    if args.record:
        write_record(Path(args.record), boards)
        print(f"\nrecorded {sum(len(runs) for runs in boards.values())} runs in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
