"""``backdoor-guard redteam``: the attacks built against this defense, through the demo's defaults, with the
checks users ask for after a defense.

The red team is every registered attack marked ``adaptive`` (triggers the diffusion
variations keep as content, and one optimised to survive them). For a benchmark world and
a seed, :func:`run_redteam` writes to ``output_dir``:

1. ``attacks/``: the demo on each attack (one subfolder each, the demo's summary files),
   the shipped model being each one's ``model/``;
2. a clean reference: the demo's teacher trained the same way on the clean victim rows
   (cached in ``reference/``). Its ASR is the floor no defense can go below: a trigger as
   large as a frame turns some digits into the target by itself;
3. the diffusion canary (:func:`~hf_backdoor_guard.robustness_checks.trigger_survival`):
   the share of each trigger that survives the world's variation model;
4. the re-tuning check (:func:`~hf_backdoor_guard.robustness_checks.compare_retuning`): the
   shipped model and the clean reference, each fine-tuned on 8 triggered rows of the clean
   pretraining split labelled with the target; steps until ASR >= 0.5 for each;
5. ``redteam.json``, ``redteam.md`` (one row per attack against issue 21's goal: ASR <= 0.10
   at every seed and <= 0.05 on the mean) and ``redteam.png`` (ASR per attack: teacher,
   shipped model, clean reference).

Everything is cached: a rerun reuses the finished demo runs and the reference.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..runtime.outputs import (
    claim_output_dir,
    claim_sub_folder,
    locked,
    record_outputs,
    remove_outputs,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

OWNER = "redteam"
ATTACKS_DIR, REFERENCE_DIR = "attacks", "reference"
REPORT_FILES = ("redteam.json", "redteam.md", "redteam.png")
ASR_GOAL, ASR_GOAL_MEAN = 0.10, 0.05  # issue 21: at every seed, and on the mean over seeds
CANARY_IMAGES = 16
RETUNE_STEPS, RETUNE_SAMPLES = 10, 8


def adaptive_attacks() -> tuple[str, ...]:
    """The registered attacks built against this defense (``Attack.adaptive``), in registration order."""
    from ..attacks import ATTACKS

    return tuple(name for name in ATTACKS.names() if ATTACKS[name].adaptive)


def run_redteam(output_dir: str | os.PathLike = "backdoor-guard-redteam", seed: int = 0, *,
                attacks: list[str] | None = None, overwrite: bool = False, **settings: Any) -> dict:
    """Run the red team (see the module docstring) and return what ``redteam.json`` holds.

    Args:
        output_dir: new, empty, or an earlier red team's folder.
        seed: the run seed of every demo run, the reference, the canary and the re-tuning.
        attacks: registered attack names (default: :func:`adaptive_attacks`).
        overwrite: start over with other settings (only what the red team wrote is removed).
        settings: :class:`~hf_backdoor_guard.benchmark.demo.DemoSettings` fields, as for the demo.
    """
    from .demo import _check_args, demo_preset, run_demo

    output_dir = Path(output_dir)
    chosen = list(attacks) if attacks is not None else list(adaptive_attacks())
    preset = demo_preset(settings)
    from ..pipeline.defend import check_output_names

    _check_args(chosen, seed, preset, output_dir / ATTACKS_DIR, None, overwrite)  # every check before any work
    check_output_names(output_dir, (*REPORT_FILES, ATTACKS_DIR, REFERENCE_DIR), OWNER)
    claim_output_dir(output_dir, OWNER, "--output-dir")
    started = time.time()
    with locked(output_dir, OWNER):
        if overwrite:
            remove_outputs(output_dir)
        record_outputs(output_dir, (ATTACKS_DIR,))
        claim_sub_folder(output_dir, REFERENCE_DIR, OWNER, "--output-dir")  # a cache: a user's file there stays
        summary = run_demo(chosen, output_dir / ATTACKS_DIR, seed, overwrite=overwrite, **settings)
        checks = _checks(output_dir, chosen, seed, preset)
        result = {"seed": seed, "benchmark": preset.benchmark, "seconds": round(time.time() - started, 1),
                  "attacks": {name: _row(summary["attacks"][name], checks, name) for name in chosen},
                  "canary": checks["canary"]}
        record_outputs(output_dir, REPORT_FILES)
        write_json_atomic(output_dir / "redteam.json", result)
        write_text_atomic(output_dir / "redteam.md", redteam_report(result))
        from ..pipeline.figures import asr_chart

        asr_chart({name: {"teacher": row["teacher"]["attack_success_rate"],
                          "model/ (shipped)": row["model"]["attack_success_rate"],
                          "clean reference": row["clean_reference"]["attack_success_rate"]}
                   for name, row in result["attacks"].items()},
                  output_dir / "redteam.png", goals=(ASR_GOAL, ASR_GOAL_MEAN),
                  title=f"backdoor-guard redteam: {preset.benchmark}, seed {seed}")
    return result


def _row(metrics: dict, checks: dict, name: str) -> dict:
    models = metrics["models"]
    return {"teacher": models["teacher"], "model": models[metrics["shipped"]], "shipped": metrics["shipped"],
            "student": models["student"],
            "clean_reference": checks["reference"][name], "survival": checks["canary"]["results"][name]["survival"],
            "retuning": checks["retuning"][name], "detection": metrics["detection"]}


def _checks(output_dir: Path, chosen: list[str], seed: int, preset) -> dict:
    """The clean reference's metrics, the canary and the re-tuning comparison, per attack."""
    from ..data import stratified_subset
    from ..evaluation import evaluate_backdoor
    from ..loading import load_image_classifier
    from ..pipeline.defend import variation_factory
    from ..robustness_checks import compare_retuning, trigger_survival
    from .attack_settings import embedded_attack
    from .demo import TARGET_LABEL, demo_config
    from .worlds import world

    chosen_world = world(preset.benchmark)
    data = dict(chosen_world.load())
    for split, rows in (("train", preset.max_train_samples), ("test", preset.max_eval_samples)):
        data[split] = stratified_subset(data[split], rows, seed)  # the rows the demo runs used (defend's subsets)
    attacks = {name: embedded_attack(name, seed=seed, clean_data=data["pretrain"], table=chosen_world.attacks)[0]
               for name in chosen}
    config = demo_config(chosen[0], output_dir / ATTACKS_DIR / chosen[0], seed, preset)
    reference, processor = _clean_reference(output_dir / REFERENCE_DIR, config, data)
    canary = trigger_survival(variation_factory(config, "cpu")(), data["test"], attacks,
                              max_images=CANARY_IMAGES)
    logger.info("Canary: %s", canary.verdict)
    metrics, retuning = {}, {}
    for name, attack in attacks.items():
        metrics[name] = evaluate_backdoor(reference, data["test"], attack, TARGET_LABEL, processor, progress=False)
        shipped, shipped_processor = load_image_classifier(output_dir / ATTACKS_DIR / name / "model", "model/")
        comparison = compare_retuning(shipped, reference, shipped_processor, attack, data["pretrain"], data["test"],
                                      TARGET_LABEL, RETUNE_STEPS, RETUNE_SAMPLES, reference_processor=processor,
                                      seed=seed)
        logger.info("[%s] re-tuning: %s", name, comparison.verdict)
        retuning[name] = {"steps_model": comparison.steps_model, "steps_reference": comparison.steps_reference,
                          "reactivates_faster": comparison.reactivates_faster,
                          "asr_model": comparison.model.attack_success_rate,
                          "asr_reference": comparison.reference.attack_success_rate}
    return {"reference": metrics, "canary": canary.to_dict(), "retuning": retuning}


def _clean_reference(folder: Path, config, data):
    """The demo's teacher trained the same way on the clean victim rows (a cached stage of ``folder``)."""
    from ..data import class_names
    from ..pipeline import stages
    from ..pipeline.config import stage_settings
    from ..pipeline.run_folder import RunFolder

    run = RunFolder(folder, option="--output-dir",
                    restart_hint=", or pass --overwrite to start over (it removes only what redteam wrote)")
    args = stages.training_arguments(run.path, seed=config.seed, epochs=config.num_train_epochs,
                                     batch_size=config.per_device_train_batch_size,
                                     learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    options = config.classifier()
    return stages.teacher_stage(run, data["train"], settings={**stage_settings(config, "teacher"), "data": "clean"},
                                model=options.pop("model"), label_names=class_names(data["train"]),
                                training_args=args, seed=config.seed, augment=config.augment, **options)


def redteam_report(result: dict) -> str:
    """``redteam.md``: one row per attack, the goal, the canary and the re-tuning check."""
    lines = [f"# backdoor-guard redteam: {result['benchmark']}, seed {result['seed']}", "",
             "Every attack built against this defense, through the demo's defaults. `model/` is the shipped model "
             "(`student_retaught` by default: distilled from a second teacher trained on the rows detection kept); "
             "`student` is the paper's student, distilled from the first teacher; the clean reference is the demo's teacher trained on the clean rows: its ASR "
             "is what the trigger does to a model that never saw it. Survival: the share of the trigger the "
             "variation model keeps (the canary). Re-tuning: steps of fine-tuning on 8 triggered rows until "
             "ASR >= 0.5, for `model/` and for the clean reference.", "",
             "| attack | teacher C-Acc / ASR | model/ C-Acc / ASR | student ASR | clean reference ASR | "
             "survival | re-tuning steps (model/ / reference) | flagged / poisoned | ASR <= 0.10 |",
             "|---|---|---|---|---|---|---|---|---|"]

    def steps(value):
        return "-" if value is None else str(value)

    for name, row in result["attacks"].items():
        teacher, model = row["teacher"], row["model"]
        planted = teacher["attack_success_rate"] >= 0.9
        goal = ("not planted" if not planted else
                "yes" if model["attack_success_rate"] <= ASR_GOAL else "**no**")
        retune = row["retuning"]
        lines.append(
            f"| [{name}](attacks/{name}/report.md) | {teacher['clean_accuracy']:.3f} / "
            f"{teacher['attack_success_rate']:.3f} | {model['clean_accuracy']:.3f} / {model['attack_success_rate']:.3f} "
            f"| {row['student']['attack_success_rate']:.3f} | "
            f"{row['clean_reference']['attack_success_rate']:.3f} | {row['survival']:.2f} | "
            f"{steps(retune['steps_model'])} / {steps(retune['steps_reference'])} | "
            f"{row['detection']['flagged']} / {row['detection']['poisoned']} | {goal} |")
    lines += ["", f"Canary: {result['canary']['verdict']}", "",
              "(-: ASR stayed below 0.5 within the steps.) Issue 21's goal is over seeds: ASR <= 0.10 at every "
              "seed and <= 0.05 on the mean; run the seeds and compare.", "",
              f"Total time: {result['seconds']:.0f} s.", "", "![ASR per attack](redteam.png)", ""]
    return "\n".join(lines)


def redteam_cli(args) -> int:
    """Entry point of ``backdoor-guard redteam``."""
    result = run_redteam(args.output_dir, args.seed, attacks=args.attacks, overwrite=args.overwrite,
                         benchmark=args.benchmark)
    print(f"\nredteam: {result['benchmark']}, seed {result['seed']} ({result['seconds']:.0f} s)")
    print(f"{'attack':<12} {'teacher ASR':>11} {'model/ ASR':>10} {'clean ref':>9} {'survival':>8}")
    for name, row in result["attacks"].items():
        print(f"{name:<12} {row['teacher']['attack_success_rate']:>11.3f} {row['model']['attack_success_rate']:>10.3f} "
              f"{row['clean_reference']['attack_success_rate']:>9.3f} {row['survival']:>8.2f}")
    print(f"\nReport: {Path(args.output_dir) / 'redteam.md'}")
    return 0


__all__ = ["adaptive_attacks", "redteam_report", "run_redteam", "redteam_cli"]
