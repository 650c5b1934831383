"""Sweep the demo's defence settings over attacks and seeds; print and record the results.

Each job is one whole ``run_demo`` (teacher, variations, student, baseline) in its own
process with one torch thread, so N workers use N cores without fighting. Results are
appended to a JSON-lines file as they finish (a killed sweep keeps what it had), and
``--summarize`` turns such a file into the markdown tables of BENCHMARKS.md.

    python benchmarks/demo_sweep.py --plan defaults --seeds 0 1 2 --workers 2
    python benchmarks/demo_sweep.py --plan full --workers 16 --time-budget 420 --out sweep.jsonl
    python benchmarks/demo_sweep.py --summarize sweep.jsonl

Only the defence changes between configurations; the attacks are the foundation's.
"default" is whatever ``run_demo`` and ``EMBEDDED_VARIATION_DEFAULTS`` say at the time of
the run (3 variations per image since 2026-11-25, the records of 2 variations are "nv2"; since
2026-11-29 6 variations of 10 steps, temperature 1 and 6 student epochs, the earlier defaults are "v1";
later on 2026-11-29 9 student epochs at learning rate 1e-3, the records of 6 epochs at 2e-3 are "v2").
``--plan zoo`` is the attack-zoo sweep of BENCHMARKS.md: every attack at seeds 0-2 (Blended 0-4),
with the defaults and with "v1" side by side. ``--plan sweeps`` is the red team's poisoning-rate (1%-30%) and
trigger-strength sweep of BadNets and Blended (:data:`ATTACK_VARIANTS`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_backdoor_guard.attacks import ATTACKS as ATTACK_REGISTRY  # noqa: E402  (numpy + PIL only)

ATTACKS = list(ATTACK_REGISTRY.names())  # every registered attack, as `demo --attack all` runs them

V2 = {"student_epochs": 6.0, "student_learning_rate": 2e-3}

# name -> run_demo overrides (DemoSettings fields; "variation_options" for ImageVariation)
CONFIGS: dict[str, dict] = {
    "default": {},
    # the defaults until 2026-11-29 (3 variations of 20 steps, temperature 4, 12 student epochs), spelled out
    "v1": {"temperature": 4.0, "student_epochs": 12.0, "student_learning_rate": 2e-3,
           "variation_options": {"num_inference_steps": 20, "num_variations": 3}},
    # the defaults of 2026-11-29 until the student-seed study (6 student epochs at the teacher's learning rate)
    "v2": V2,
    "fast": {"variation_options": {"speed": "fast"}},
    "smoke": {"train_rows": 60, "test_rows": 40, "teacher_epochs": 1, "student_epochs": 1,
              "variation_options": {"num_inference_steps": 4, "num_variations": 1}},
    "alpha0.5": {"alpha": 0.5},
    "alpha0.8": {"alpha": 0.8},
    "alpha1": {"alpha": 1.0},
    "T10": {"temperature": 10.0},
    "own_logits": {"teacher_logits": "own"},
    "s0.5": {"variation_options": {"strength": 0.5}},
    "s0.7": {"variation_options": {"strength": 0.7}},
    "s0.8": {"variation_options": {"strength": 0.8}},
    "nv1": {"variation_options": {"num_variations": 1}},
    "nv2": {"variation_options": {"num_variations": 2}},
    "nv3": {"variation_options": {"num_variations": 3}},
    "nv4": {"variation_options": {"num_variations": 4}},
    "color_transfer": {"variation_options": {"color_transfer": True}},
    "deterministic": {"variation_options": {"stochastic": False}},
    "steps10": {"variation_options": {"num_inference_steps": 10}},
    # the fast preset (half the steps) with twice the variations: the default's denoising cost
    "fast_nv6": {"variation_options": {"speed": "fast", "num_variations": 6}},
    "s0.65": {"variation_options": {"strength": 0.65}},
    "s0.7_fast_nv6": {"variation_options": {"strength": 0.7, "speed": "fast", "num_variations": 6}},
    "nv6": {"variation_options": {"num_variations": 6}},
    "T2": {"temperature": 2.0},
    "T1": {"temperature": 1.0},
    "T1_s0.7": {"temperature": 1.0, "variation_options": {"strength": 0.7}},
    "T1_fast_nv6": {"temperature": 1.0, "variation_options": {"speed": "fast", "num_variations": 6}},
    "T1_s0.7_fast_nv6": {"temperature": 1.0, "variation_options": {"strength": 0.7, "speed": "fast",
                                                                   "num_variations": 6}},
    "T1_nv6": {"temperature": 1.0, "variation_options": {"num_variations": 6}},
    "T1_own": {"temperature": 1.0, "teacher_logits": "own"},
    "T1_se6": {"temperature": 1.0, "student_epochs": 6.0},
    "T1_fast_nv6_se6": {"temperature": 1.0, "student_epochs": 6.0,
                        "variation_options": {"speed": "fast", "num_variations": 6}},
    "T1_nv6_se6": {"temperature": 1.0, "student_epochs": 6.0, "variation_options": {"num_variations": 6}},
    "T1_fast_nv12": {"temperature": 1.0, "variation_options": {"speed": "fast", "num_variations": 12}},
    "fast_nv6_se6": {"student_epochs": 6.0, "variation_options": {"speed": "fast", "num_variations": 6}},
    # SIG seed 1 (0.115 with "v2"): one knob of "v2" changed at a time, spelled out on "v2"
    "T4": {"temperature": 4.0, **V2},
    "se12": {**V2, "student_epochs": 12.0},
    "steps20": {"variation_options": {"num_inference_steps": 20}, **V2},
    # strength 0.7 / temperature 2 on "v2" ("s0.7", "T2" records before that are on "v1")
    "v2_s0.7": {"variation_options": {"strength": 0.7}, **V2},
    "v2_T2": {"temperature": 2.0, **V2},
    "se9": {**V2, "student_epochs": 9.0},
}


# config -> (attack, how the job plants it: poison rate and attack options changed from the world's setting). The
# red team's sweeps (issue 21): the poisoning rate from 1% to 30% and the trigger's strength (Blended's blend ratio,
# BadNets' patch side) for the two classic attacks; 10% / ratio 0.2 / 3 px are the zoo's own runs ("default").
ATTACK_VARIANTS: dict[str, tuple[str, dict]] = {
    **{f"rate{rate:g}_{attack}": (attack, {"rate": rate}) for rate in (0.01, 0.03, 0.2, 0.3)
       for attack in ("badnets", "blended")},
    **{f"ratio{ratio:g}": ("blended", {"options": {"ratio": ratio}}) for ratio in (0.05, 0.1, 0.3)},
    **{f"size{size}": ("badnets", {"options": {"size": size}}) for size in (2, 4, 5)},
}
CONFIGS.update({name: {} for name in ATTACK_VARIANTS})  # the defence's defaults: only the attack changes


def plan(name: str, seeds: list[int]) -> list[tuple[str, str, int]]:
    """Jobs (config, attack, seed), most important first (a time budget cuts the tail)."""
    jobs = []
    if name == "smoke":  # seconds: checks that the sweep machinery works
        jobs += [("smoke", a, s) for s in seeds[:1] for a in ATTACKS]
    if name == "blended":  # the hard case: strength, alpha, then one seed of each other knob
        jobs += [(c, "blended", s) for c in ("s0.7", "s0.8") for s in seeds[:3]]
        jobs += [("alpha0.5", "blended", s) for s in seeds[:3]]
        jobs += [(c, "blended", seeds[0]) for c in ("nv1", "color_transfer", "deterministic", "own_logits", "T10")]
    if name == "zoo":  # defaults and the earlier defaults side by side, every attack, Blended at 5 seeds
        for seed in seeds:
            for config in ("default", "v1"):
                jobs += [(config, a, seed) for a in ATTACKS if seed < 3 or a == "blended"]
        jobs += [("fast", a, 0) for a in ("wanet", "adaptive_blend", "adaptive_patch")] + [("fast", "blended", 4)]
    if name == "sweeps":
        jobs += [(config, attack, s) for s in seeds for config, (attack, _) in ATTACK_VARIANTS.items()]
    if name in ("defaults", "full"):
        jobs += [("default", a, s) for s in seeds for a in ATTACKS]
    if name == "full":
        few = seeds[:3]
        for config in ("alpha0.5", "s0.7", "alpha0.8"):
            jobs += [(config, a, s) for s in few for a in ATTACKS]
        for config in ("s0.5", "s0.8", "nv1", "own_logits", "T10", "color_transfer", "deterministic", "steps10",
                       "nv4"):
            jobs += [(config, a, s) for s in few for a in ("badnets", "blended")]
    return jobs


def quiet_worker() -> None:
    """A sweep worker's set-up: offline, one torch thread, no progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()


def run_job(job: tuple[str, str, int]) -> dict:
    quiet_worker()
    from hf_backdoor_guard.benchmark.demo import run_demo

    config, attack, seed = job
    overrides = json.loads(json.dumps(CONFIGS[config]))
    if config in ATTACK_VARIANTS:
        plant_variant(attack, ATTACK_VARIANTS[config])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # trainers' logs
            result = run_demo(attack, Path(out) / "demo", seed=seed, **overrides)
    return {"config": config, "attack": attack, "seed": seed, "seconds": result["seconds"],
            "timings": result["timings"], "models": result["models"], "detection": result.get("detection"),
            "shipped": result.get("shipped", "student"),
            # what produced the numbers: the attack as planted, the variation settings, the machine's load
            "overrides": overrides, "attack_config": result.get("attack_config"), "variation": result.get("variation"),
            "rows": result.get("rows"), "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def planted_setting(attack: str):
    """The digits world's ``BenchmarkAttack`` for ``attack`` (an attack not in its table: the defaults)."""
    from hf_backdoor_guard.benchmark.attack_settings import EMBEDDED_ATTACKS, BenchmarkAttack

    return EMBEDDED_ATTACKS.get(attack, BenchmarkAttack())


def plant_variant(attack: str, variant: tuple[str, dict]) -> None:
    """This job's process only (each job runs in a fresh one): the digits world plants ``attack`` as ``variant``
    says. The world's table is the one place the demo reads an attack's setting from; the demo takes no
    per-run attack options, on purpose (its settings are the documented ones)."""
    import dataclasses

    from hf_backdoor_guard.benchmark.attack_settings import EMBEDDED_ATTACKS

    name, change = variant
    if name != attack:
        raise ValueError(f"the variant is for {name}, not {attack}")
    base = planted_setting(attack)
    EMBEDDED_ATTACKS[attack] = dataclasses.replace(base, rate=change.get("rate", base.rate),
                                                   options={**base.options, **change.get("options", {})},
                                                   why="a red-team sweep point (benchmarks/demo_sweep.py)")


def read_records(path: Path) -> list[dict]:
    """The records of a sweep's JSON-lines file (failed jobs included: they have no ``models``)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep(jobs, workers: int, out: Path, time_budget: float, run=run_job) -> None:
    """Run ``run(job)`` for each job, ``workers`` at a time, each in a fresh process; append its record to ``out``.

    Resumable: a job ``(config, attack, seed)`` already recorded in ``out`` with its ``models`` is not run again.
    """
    recorded = read_records(out) if out.exists() else []
    done = {(r["config"], r["attack"], r["seed"]) for r in recorded if "models" in r}
    pending = [job for job in jobs if job not in done]
    print(f"{len(pending)} jobs on {workers} worker(s)", flush=True)
    started = time.time()
    import multiprocessing

    # a fresh process per job: nothing (imported modules, torch state) leaks from one run into the next
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool, \
            out.open("a") as sink:
        running = {}
        while pending or running:
            while pending and len(running) < workers and time.time() - started < time_budget:
                job = pending.pop(0)
                running[pool.submit(run, job)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    record = future.result()
                except Exception as error:  # keep the sweep going; record the failure
                    record = {"config": job[0], "attack": job[1], "seed": job[2], "error": repr(error)}
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                models = record.get("models", {})
                print(f"[{time.time() - started:5.0f} s] {job}: "
                      + ", ".join(f"{m} C-Acc {v['clean_accuracy']:.3f} ASR {v['attack_success_rate']:.3f}"
                                  for m, v in models.items()) + (record.get("error") or ""), flush=True)
    if pending:
        print(f"time budget reached: {len(pending)} job(s) not started", flush=True)


def summarize(path: Path) -> str:
    """Markdown: per config and attack, mean (min-max) of each model's C-Acc and ASR over seeds."""
    records = read_records(path)
    groups = defaultdict(list)
    for record in records:
        if "models" in record:
            groups[(record["config"], record["attack"])].append(record)
    lines = ["| config | attack | seeds | teacher C-Acc / ASR | student C-Acc / ASR | student R-Acc "
             "| variations_ce C-Acc / ASR | worst seed: student ASR, C-Acc gap | s / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (config, attack), runs in sorted(groups.items(), key=lambda kv: (list(CONFIGS).index(kv[0][0]),
                                                                        ATTACKS.index(kv[0][1]))):
        def mean(model, key):
            return sum(r["models"][model][key] for r in runs) / len(runs)

        worst_asr = max(r["models"]["student"]["attack_success_rate"] for r in runs)
        worst_gap = max(r["models"]["teacher"]["clean_accuracy"] - r["models"]["student"]["clean_accuracy"]
                        for r in runs)
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(
            f"| {config} | {attack} | {seeds} "
            f"| {mean('teacher', 'clean_accuracy'):.3f} / {mean('teacher', 'attack_success_rate'):.3f} "
            f"| {mean('student', 'clean_accuracy'):.3f} / {mean('student', 'attack_success_rate'):.3f} "
            f"| {mean('student', 'robust_accuracy'):.3f} "
            f"| {mean('variations_ce', 'clean_accuracy'):.3f} / {mean('variations_ce', 'attack_success_rate'):.3f} "
            f"| {worst_asr:.3f}, {worst_gap:+.3f} "
            f"| {sum(r['seconds'] for r in runs) / len(runs):.0f} |"
        )
    detection = [r for r in records if r.get("detection")]
    if detection:
        lines += ["", detection_table(detection)]
    return "\n".join(lines)


def verdict(runs: list[dict], model: str = "student") -> str:
    """Issue 11's targets: teacher ASR >= 0.90 (planted); ``model``'s ASR <= 0.05 (0.10 floor) with C-Acc within
    0.02."""
    def value(run, name, key):
        return run["models"][name][key]

    planted = all(value(r, "teacher", "attack_success_rate") >= 0.90 for r in runs)
    worst = max(value(r, model, "attack_success_rate") for r in runs)
    kept = all(value(r, "teacher", "clean_accuracy") - value(r, model, "clean_accuracy") <= 0.02 for r in runs)
    removal = "removed" if worst <= 0.05 else "removed to the 0.10 floor" if worst <= 0.10 else "NOT removed"
    return (("planted" if planted else "NOT planted") + f", {removal}"
            + ("" if kept else ", C-Acc more than 0.02 below the teacher's"))


def zoo_table(records: list[dict], config: str = "default", model: str = "student") -> str:
    """Markdown: per attack, teacher / student / ``model`` (when another) / variations_ce C-Acc, ASR and R-Acc (means
    over seeds), ``model``'s worst seed (highest ASR), seconds per run and its verdict against issue 11's targets."""
    groups = defaultdict(dict)
    for record in records:
        if "models" in record and record["config"] == config:
            groups[record["attack"]][record["seed"]] = record  # newest run per seed
    metrics = ("clean_accuracy", "attack_success_rate", "robust_accuracy")
    shown = ["teacher", "student"] + ([model] if model != "student" else []) + ["variations_ce"]
    lines = ["| attack | seeds | " + " | ".join(f"{name} C-Acc / ASR / R-Acc" for name in shown)
             + f" | worst seed: {model} C-Acc / ASR (teacher C-Acc) | s / run | verdict ({model}) |",
             "|---|---|" + "---|" * len(shown) + "---|---|---|"]
    for attack in sorted(groups, key=lambda name: ATTACKS.index(name) if name in ATTACKS else len(ATTACKS)):
        runs = [groups[attack][seed] for seed in sorted(groups[attack])]

        def means(name):
            return " / ".join(f"{sum(r['models'][name][k] for r in runs) / len(runs):.3f}" for k in metrics)

        worst = max(runs, key=lambda r: (r["models"][model]["attack_success_rate"],
                                         r["models"]["teacher"]["clean_accuracy"]
                                         - r["models"][model]["clean_accuracy"]))
        lines.append(
            f"| {attack} | {','.join(str(r['seed']) for r in runs)} | " + " | ".join(means(name) for name in shown)
            + f" | seed {worst['seed']}: {worst['models'][model]['clean_accuracy']:.3f} / "
            f"{worst['models'][model]['attack_success_rate']:.3f} ({worst['models']['teacher']['clean_accuracy']:.3f}) "
            f"| {sum(r['seconds'] for r in runs) / len(runs):.0f} | {verdict(runs, model)} |")
    return "\n".join(lines)


def sweep_points(records: list[dict], zoo: list[dict]) -> dict:
    """``{(attack, knob): {x: [records]}}`` for the red-team sweeps: knob "rate" (the poisoning rate) or
    "strength" (Blended's ratio, BadNets' patch side); the zoo's default runs give the default point."""
    swept = {attack for attack, _ in ATTACK_VARIANTS.values()}
    strength = {attack: next(iter(change["options"])) for attack, change in ATTACK_VARIANTS.values()
                if "options" in change}  # the option each attack's strength sweep changes
    newest = {}  # one run per (config, attack, seed): the newest, as zoo_table counts them
    for record in records + [r for r in zoo if r.get("config") == "default" and r["attack"] in swept]:
        if "models" in record:
            newest[(record["config"], record["attack"], record["seed"])] = record
    points: dict = defaultdict(lambda: defaultdict(list))
    for (config, attack, _), record in newest.items():
        if config == "default":  # the default point of both knobs, as the zoo planted it
            points[(attack, "rate")][planted_setting(attack).rate].append(record)
            points[(attack, "strength")][record["attack_config"][strength[attack]]].append(record)
            continue
        _, change = ATTACK_VARIANTS[config]
        if "rate" in change:
            points[(attack, "rate")][change["rate"]].append(record)
        else:
            points[(attack, "strength")][change["options"][strength[attack]]].append(record)
    return points


def sweep_table(points: dict, models=("teacher", "student", "student_retaught")) -> str:
    """Markdown: per attack, knob and value, each model's C-Acc and ASR mean / worst over seeds."""
    lines = ["| attack | knob | value | seeds | " + " | ".join(f"{m} C-Acc / ASR mean / ASR worst" for m in models)
             + " | flagged / poisoned (mean) |", "|---|---|---|---|" + "---|" * len(models) + "---|"]
    for (attack, knob) in sorted(points):
        for x in sorted(points[(attack, knob)]):
            runs = points[(attack, knob)][x]

            def cell(model):
                asr = [r["models"][model]["attack_success_rate"] for r in runs]
                cacc = sum(r["models"][model]["clean_accuracy"] for r in runs) / len(runs)
                return f"{cacc:.3f} / {sum(asr) / len(asr):.3f} / {max(asr):.3f}"

            flagged = sum(r["detection"]["flagged"] for r in runs) / len(runs)
            poisoned = sum(r["detection"]["poisoned"] for r in runs) / len(runs)
            lines.append(f"| {attack} | {knob} | {x:g} | {','.join(str(r['seed']) for r in runs)} | "
                         + " | ".join(cell(m) for m in models) + f" | {flagged:.0f} / {poisoned:.0f} |")
    return "\n".join(lines)


def sweep_plot(points: dict, path: Path, models=("teacher", "student", "student_retaught")) -> None:
    """ASR (mean over seeds, bars to the worst seed) against the rate and the trigger strength, per attack."""
    from matplotlib.figure import Figure

    panels = sorted(points)
    figure = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100, layout="constrained")
    labels = {"rate": "poisoning rate", "strength": {"blended": "blend ratio", "badnets": "patch side (px)"}}
    for axis, (attack, knob) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        xs = sorted(points[(attack, knob)])
        for model in models:
            asr = [[r["models"][model]["attack_success_rate"] for r in points[(attack, knob)][x]] for x in xs]
            means = [sum(a) / len(a) for a in asr]
            axis.errorbar(xs, means, yerr=[[0] * len(xs), [max(a) - m for a, m in zip(asr, means)]], marker="o",
                          capsize=3, label=model)
        for goal, style in ((0.10, ":"), (0.05, "--")):
            axis.axhline(goal, color="grey", linestyle=style, linewidth=1)
        axis.set_xscale("log" if knob == "rate" else "linear")
        axis.set_ylim(-0.02, 1.02)
        axis.set_xlabel(labels[knob] if knob == "rate" else labels[knob][attack])
        axis.set_ylabel("ASR (mean; bar: worst seed)")
        axis.set_title(f"{attack}: {knob}")
    figure.axes[0].legend(fontsize=8)
    figure.savefig(path)


def detection_table(records: list[dict]) -> str:
    """Markdown: per attack and seed, detection AUROC of every score, precision/recall at Otsu's
    threshold, and the cleaned student beside the plain one."""
    scores = list(records[0]["detection"]["auroc_by_score"])
    lines = ["| attack | seed | " + " | ".join(f"AUROC {s}" for s in scores)
             + " | flagged / poisoned | precision | recall | student ASR | student_cleaned C-Acc / ASR |",
             "|---|---|" + "---|" * len(scores) + "---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (ATTACKS.index(r["attack"]), r["seed"])):
        d, models = r["detection"], r["models"]
        cleaned = models.get("student_cleaned", {})
        lines.append(
            f"| {r['attack']} | {r['seed']} | " + " | ".join(f"{d['auroc_by_score'][s]:.3f}" for s in scores)
            + f" | {d['flagged']} / {d['poisoned']} | {d['precision']:.3f} | {d['recall']:.3f} "
            f"| {models['student']['attack_success_rate']:.3f} "
            f"| {cleaned.get('clean_accuracy', float('nan')):.3f} / {cleaned.get('attack_success_rate', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=["smoke", "defaults", "blended", "full", "zoo", "sweeps"], default="defaults")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", nargs="+", metavar="CONFIG:ATTACK:SEED",
                        help="Run exactly these jobs instead of a --plan (e.g. s0.7:badnets:0).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=float("inf"),
                        help="Seconds after which no new job starts (running ones finish).")
    parser.add_argument("--out", type=Path, default=Path("demo_sweep.jsonl"))
    parser.add_argument("--summarize", type=Path, help="Only print the tables of an earlier sweep's file.")
    parser.add_argument("--zoo", metavar="CONFIG",
                        help="With --summarize: the attack-zoo table (every model's C-Acc, ASR, R-Acc and the "
                             "verdict per attack) of this config instead.")
    parser.add_argument("--sweeps", nargs=2, type=Path, metavar=("ZOO_RESULTS", "PLOT"),
                        help="With --summarize (the --plan sweeps file): the sweep table, with the default points "
                             "from the zoo's file, and the plot written to PLOT.")
    parser.add_argument("--model", default="student",
                        help="With --zoo: the model the verdict judges (e.g. student_retaught, the shipped one).")
    args = parser.parse_args()
    if args.summarize:
        if args.sweeps:
            points = sweep_points(read_records(args.summarize), read_records(args.sweeps[0]))
            print(sweep_table(points))
            sweep_plot(points, args.sweeps[1])
        elif args.zoo:
            print(zoo_table(read_records(args.summarize), args.zoo, args.model))
        else:
            print(summarize(args.summarize))
        return
    if args.jobs:
        jobs = []
        for item in args.jobs:
            config, attack, seed = item.split(":")
            if config not in CONFIGS or attack not in ATTACKS:
                parser.error(f"unknown config or attack in {item!r}; configs: {sorted(CONFIGS)}")
            jobs.append((config, attack, int(seed)))
    else:
        jobs = plan(args.plan, args.seeds)
    sweep(jobs, args.workers, args.out, args.time_budget)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
