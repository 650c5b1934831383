"""Does the fast path keep the embedded demo's efficacy? Student ASR and C-Acc, default vs speed="fast".

Runs ``hf_backdoor_guard.benchmark.demo.run_demo`` for BadNets and Blended at seeds 0, 1, 2, once with the
embedded defaults and once with ``speed="fast"`` (``EMBEDDED_SPEED_PRESETS["fast"]``: the same
stochastic DDIM with half the steps), then prints the student's ASR and C-Acc side by side, mean
and worst over the seeds, and the seconds of each run. 12 demo runs of 1-2 min each on one CPU
thread; finished runs are kept in ``OUTPUT_DIR/results.jsonl`` and skipped on a rerun.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fast_path_quality.py --output-dir /tmp/fast_path_quality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODES = ("default", "fast")


def variation_options(mode: str) -> dict:
    from hf_backdoor_guard.embedded import EMBEDDED_SPEED_PRESETS

    if mode == "default":
        return {}
    # The preset's values are passed explicitly as well, in case a demo version merges the embedded
    # defaults into its options before calling ImageVariation.embedded (they would then override it).
    return {"speed": mode, **EMBEDDED_SPEED_PRESETS[mode]}


def student_metrics(result: dict) -> dict:
    models = result.get("models") or result.get("metrics", {}).get("models")
    if not models or "student" not in models:
        raise KeyError(f"no student metrics in the demo result (keys: {sorted(result)})")
    return models["student"]


def run_one(attack: str, seed: int, mode: str, output_dir: Path) -> dict:
    from hf_backdoor_guard.benchmark.demo import run_demo

    started = time.time()
    result = run_demo(attack, output_dir / f"{attack}-seed{seed}-{mode}", seed, variation_options=variation_options(mode))
    student = student_metrics(result)
    timings = result.get("timings") or {}
    return {"attack": attack, "seed": seed, "mode": mode, "asr": student["attack_success_rate"],
            "clean_accuracy": student["clean_accuracy"], "seconds": round(time.time() - started, 1),
            "variation_seconds": timings.get("variations")}


def summarize(records: list[dict], attacks, seeds) -> None:
    print(f"{'attack':9s} {'mode':8s} {'seeds':>5s} {'ASR mean':>8s} {'ASR worst':>9s} {'C-Acc mean':>10s} "
          f"{'C-Acc worst':>11s} {'s/run':>6s} {'variations s':>12s}  per seed ASR / C-Acc")
    for attack in attacks:
        for mode in MODES:
            rows = [r for r in records if r["attack"] == attack and r["mode"] == mode and r["seed"] in seeds]
            if not rows:
                continue
            rows.sort(key=lambda r: r["seed"])
            asr = [r["asr"] for r in rows]
            acc = [r["clean_accuracy"] for r in rows]
            seconds = sum(r["seconds"] for r in rows) / len(rows)
            varied = [r["variation_seconds"] for r in rows if r.get("variation_seconds") is not None]
            varied_text = f"{sum(varied) / len(varied):12.1f}" if varied else f"{'-':>12s}"
            per_seed = ", ".join(f"s{r['seed']} {r['asr']:.3f}/{r['clean_accuracy']:.3f}" for r in rows)
            print(f"{attack:9s} {mode:8s} {len(rows):5d} {sum(asr) / len(asr):8.3f} {max(asr):9.3f} "
                  f"{sum(acc) / len(acc):10.3f} {min(acc):11.3f} {seconds:6.0f} {varied_text}  {per_seed}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="fast_path_quality", help="demo folders and results.jsonl")
    parser.add_argument("--attacks", default="badnets,blended")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--summarize", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args(argv)
    attacks, seeds = args.attacks.split(","), [int(s) for s in args.seeds.split(",")]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = output_dir / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []

    if not args.summarize:
        import torch

        torch.set_num_threads(1)
        for seed in seeds:
            for attack in attacks:
                for mode in MODES:
                    if any(r["attack"] == attack and r["seed"] == seed and r["mode"] == mode for r in records):
                        continue
                    record = run_one(attack, seed, mode, output_dir)
                    records.append(record)
                    with results.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    summarize(records, attacks, seeds)


if __name__ == "__main__":
    main()
