"""How much of a student's ASR is the draw of its own seed: the same teacher, variations and
detection, students distilled at several student seeds and lengths.

Each job is one attack at one seed: the demo run with the defaults (teacher, variations,
detection: the expensive part, kept in ``--runs-dir``), then, from that run's stages, a
student per student seed and per student setting (``EPOCHS[,lr=X][,wd=Y]``: student epochs,
learning rate, weight decay). Student seed ``k`` initialises the student with seed
``seed + 1 + k`` and orders its data with ``seed + k``; student seed 0 with the demo's settings
is the demo's own student (each record says whether it gave the same numbers).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/student_seeds.py --seeds 0 1 2 --student-seeds 0 1 2 3 4 \\
        --students 6 9 12 --workers 2 --runs-dir /tmp/student-seeds --out benchmarks/student_seeds_results.jsonl
    python benchmarks/student_seeds.py --jobs sig:1 adaptive_patch:0 --students 8 6,lr=0.001 6,wd=0.01 \\
        --runs-dir /tmp/student-seeds --out benchmarks/student_seeds_explore.jsonl   # chosen hard cases
    python benchmarks/student_seeds.py --summarize benchmarks/student_seeds_results.jsonl   # one or more files

Resumable: jobs already in ``--out`` are skipped, and a job's finished stages in ``--runs-dir``
are reused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.demo_sweep import ATTACKS, quiet_worker, read_records, sweep  # noqa: E402

CONFIG = "student_seeds"
EVALUATION = "evaluation_student_seeds"  # the stage that measures every student of a job


TRAINING_OPTIONS = {"lr": "learning_rate", "wd": "weight_decay"}


def parse_student(text: str) -> dict:
    """``"9,lr=0.001"`` -> ``{"epochs": 9.0, "learning_rate": 0.001}`` (a student setting)."""
    epochs, *options = text.split(",")
    student = {"epochs": float(epochs)}
    for option in options:
        key, _, value = option.partition("=")
        if key not in TRAINING_OPTIONS:
            raise argparse.ArgumentTypeError(f"unknown student option {key!r} in {text!r}; "
                                             f"known: {sorted(TRAINING_OPTIONS)}")
        student[TRAINING_OPTIONS[key]] = float(value)
    return student


def label(student: dict) -> str:
    """A student setting's name: its epochs, then any option that differs from the demo's (``9 lr 0.001``)."""
    short = {name: key for key, name in TRAINING_OPTIONS.items()}
    return " ".join([f"{student['epochs']:g}"] + [f"{short[k]} {v:g}" for k, v in student.items() if k != "epochs"])


def student_name(student: dict, student_seed: int) -> str:
    return f"student_e{label(student).replace(' ', '_')}_s{student_seed}"


def record_students(record: dict) -> list[tuple[dict, dict]]:
    """``(as run, spelled out)`` per student setting of a record: as run names its models; spelled out adds
    the learning rate the demo gave students then (the first records list epochs only, all at 2e-3)."""
    students = record.get("students") or [{"epochs": epochs} for epochs in record["epochs"]]
    demo_rate = record.get("demo_student_learning_rate", 2e-3)
    return [(student, {"epochs": student["epochs"], "learning_rate": demo_rate, **student}) for student in students]


def run_job(job: tuple[str, str, int], runs_dir: Path, students: list[dict], student_seeds: list[int]) -> dict:
    quiet_worker()
    import contextlib
    import io

    from hf_backdoor_guard.benchmark.demo import DemoSettings, demo_config, embedded_inputs, run_single
    from hf_backdoor_guard.pipeline import stages
    from hf_backdoor_guard.pipeline.defend import STAGES_DIR, prepare, run_plan, shared_stages, student_arguments
    from hf_backdoor_guard.pipeline.run_folder import RunFolder

    _, attack_name, seed = job
    started = time.time()
    out = runs_dir / f"{attack_name}_{seed}"
    settings = DemoSettings()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # trainers' logs
        demo = run_single(attack_name, out, seed, settings)  # reuses a finished run's stages
        config = demo_config(attack_name, out, seed, settings)
        inputs = prepare(config, **embedded_inputs(config, attack_name, seed)[0], owner="demo")
        run = RunFolder(out / STAGES_DIR)
        plan = run_plan(config, inputs)
        shared = shared_stages(run, config, inputs, plan, "cpu")
        models = {}
        for student in students:
            training = {key: value for key, value in student.items() if key != "epochs"}
            for student_seed in student_seeds:
                name = student_name(student, student_seed)
                args = student_arguments(run, config, shared, seed=seed + student_seed,
                                         student_epochs=student["epochs"], **training)
                models[name] = stages.student_stage(
                    run, name, shared.variations, shared.detection, training_args=args, seed=seed + 1 + student_seed,
                    settings={**plan["student"], **training, "student_epochs": student["epochs"],
                              "student_seed": student_seed},
                    teacher_logits=config.teacher_logits, **shared.classifier)
        run.discard(EVALUATION)  # cheap, and an earlier job in this folder may have measured other students
        scores = stages.evaluation_stage(run, models, shared.data["eval"], attack=inputs.attack,
                                         settings={**plan["evaluation"], "models": sorted(models)},
                                         target_label=config.target_label, name=EVALUATION,
                                         output=f"{EVALUATION}.json")
    own = scores.get(student_name({"epochs": settings.student_epochs}, 0)) if 0 in student_seeds else None
    return {"config": CONFIG, "attack": attack_name, "seed": seed, "seconds": round(time.time() - started, 1),
            "demo": demo["models"], "models": scores, "students": students, "student_seeds": student_seeds,
            "demo_student_epochs": settings.student_epochs,
            "demo_student_learning_rate": settings.student_learning_rate,
            "reproduces_demo": None if own is None else own == demo["models"]["student"]}


def summarize(records: list[dict]) -> str:
    """Markdown: per student setting, ASR over every (attack, seed, student seed) draw, then per attack."""
    draws = defaultdict(list)  # label -> [(attack, seed, student seed, ASR, C-Acc drop from the teacher)]
    for record in records:
        teacher = record["demo"]["teacher"]["clean_accuracy"]
        for student, spelled_out in record_students(record):
            for student_seed in record["student_seeds"]:
                scores = record["models"][student_name(student, student_seed)]
                draws[label(spelled_out)].append((record["attack"], record["seed"], student_seed,
                                              scores["attack_success_rate"], teacher - scores["clean_accuracy"]))
    lines = ["| student (epochs, options) | draws | mean ASR | worst ASR | ASR > 0.05 | ASR > 0.10 "
             "| C-Acc drop > 0.02 | mean C-Acc drop | meet both targets |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in draws.items():
        asr = [row[3] for row in rows]
        drop = [row[4] for row in rows]
        met = sum(row[3] <= 0.05 and row[4] <= 0.02 + 1e-9 for row in rows)  # issue 11: ASR <= 0.05, C-Acc within 0.02
        lines.append(f"| {name} | {len(rows)} | {statistics.mean(asr):.3f} | {max(asr):.3f} "
                     f"| {sum(a > 0.05 for a in asr)} | {sum(a > 0.10 for a in asr)} "
                     f"| {sum(d > 0.02 + 1e-9 for d in drop)} | {statistics.mean(drop):+.3f} | {met} |")
    lines += ["", "Per attack: mean / worst ASR over every seed and student seed (where the worst was), worst C-Acc "
              "drop from the teacher.", "",
              "| attack | seeds | " + " | ".join(draws) + " |", "|---|---|" + "---|" * len(draws)]
    for attack in ATTACKS:
        cells, seeds = [], set()
        for rows in draws.values():
            rows = [row for row in rows if row[0] == attack]
            seeds |= {row[1] for row in rows}
            worst = max(rows, key=lambda row: row[3]) if rows else None
            cells.append("-" if worst is None else
                         f"{statistics.mean(row[3] for row in rows):.3f} / {worst[3]:.3f} (seed {worst[1]}, "
                         f"student seed {worst[2]}), {max(row[4] for row in rows):+.3f}")
        if seeds:
            lines.append(f"| {attack} | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    mismatched = [f"{r['attack']} seed {r['seed']}" for r in records if r.get("reproduces_demo") is False]
    if mismatched:
        lines += ["", f"Student seed 0 did NOT reproduce the demo's student for: {', '.join(mismatched)}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--blended-seeds", nargs="*", type=int, default=[3, 4],
                        help="Extra seeds for Blended (issue 11 asks for seeds 0-4 there).")
    parser.add_argument("--student-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--students", nargs="+", type=parse_student,
                        default=[parse_student(text) for text in ("6", "9", "12")],
                        help="Student settings to compare: EPOCHS[,lr=X][,wd=Y] (epochs over the source images, "
                             "learning rate, weight decay; the demo's: 9, lr 0.001, wd 0.0001, which an option "
                             "left out keeps).")
    parser.add_argument("--jobs", nargs="+", metavar="ATTACK:SEED",
                        help="Only these attack/seed pairs (instead of --attacks x --seeds).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=Path("student_seeds_runs"),
                        help="Where the demo runs are kept (reused by a rerun).")
    parser.add_argument("--out", type=Path, default=Path("student_seeds.jsonl"))
    parser.add_argument("--summarize", type=Path, nargs="+", help="Only print the tables of earlier runs' files.")
    args = parser.parse_args()
    if args.summarize:
        records = [record for path in args.summarize for record in read_records(path)]
        print(summarize([r for r in records if "models" in r]))
        return
    if args.jobs:
        pairs = [item.partition(":") for item in args.jobs]
        unknown = [attack for attack, _, _ in pairs if attack not in ATTACKS]
        if unknown:
            parser.error(f"--jobs: unknown attack(s) {unknown}; known: {ATTACKS}")
        jobs = [(CONFIG, attack, int(seed)) for attack, _, seed in pairs]
    else:
        jobs = [(CONFIG, attack, seed) for seed in args.seeds for attack in args.attacks]
        if "blended" in args.attacks:
            jobs += [(CONFIG, "blended", seed) for seed in args.blended_seeds if seed not in args.seeds]
    run = partial(run_job, runs_dir=args.runs_dir.resolve(), students=args.students, student_seeds=args.student_seeds)
    sweep(jobs, args.workers, args.out, float("inf"), run=run)
    print(summarize([r for r in read_records(args.out) if "models" in r]))


if __name__ == "__main__":
    main()
