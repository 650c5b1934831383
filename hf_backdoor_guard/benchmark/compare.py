"""``backdoor-guard compare``: the project's method beside every peer defense, on the same poisoned data.

On the embedded benchmark (the demo's data, classifier and training settings, and the
embedded setting of each attack, :func:`~hf_backdoor_guard.benchmark.attack_settings.embedded_attack`):

1. the method runs through the pipeline (:func:`~hf_backdoor_guard.pipeline.run_defend`,
   the demo's configuration): the teacher on the poisoned data is the undefended model
   ``"none"``; the distilled ``"student"``, ``"student_retaught"`` (the shipped ``model/``)
   and ``"student_cleaned"`` are ours;
2. every row of :func:`~hf_backdoor_guard.defenses.defense_variants` (each registered
   defense at its paper settings, then the ``*_tuned`` rows) runs on the run's own
   poisoned training split, starting from that teacher where it needs a backdoored model,
   with a clean subset of 5% of the training size (40 rows) drawn by the seed from the
   digits ``pretrain`` split, which the embedded diffusion model was trained on too;
3. every model is measured on the same test split and triggered test set, and the
   leaderboard (DER against ``"none"``) is written.

Output folder (one attack)::

    leaderboard.json / leaderboard.md / leaderboard.png
    method/     the method's run: run_defend's folder (stages/, model/, report.md, ...)
    defenses/   one cached record per peer-defense row (stages.json, <row>.json)

``--attack all`` writes one such folder per attack and ``leaderboard.*`` with every attack
at the top. Everything is cached: a rerun (or a run after a kill) reuses the method's
finished stages and the finished defense rows, and refuses changed settings by name.

Seconds, per row (a stage finished by an earlier run keeps the time it took then):

* ``none``: the teacher's training (the pipeline's ``teacher`` stage) and its evaluation;
* ``student`` / ``student_retaught`` / ``student_cleaned``: the method's own share of the
  pipeline: the variations, detection (the teacher's logits on the variations, which the
  student is distilled from), that student's training (for ``student_retaught`` also the
  second teacher and its logits), and its evaluation; not the teacher, which
  is counted in ``none``. Each student counts the shared variations in full: each
  number is what that student alone costs once the teacher exists;
* peer defenses: the defense's own work (its training phases, pruning, scoring) and its
  evaluation; the backdoored model the post-training defenses start from is the teacher,
  counted in ``none``. For ``purification`` the evaluation is the defense's work.
* not counted anywhere: loading and poisoning the data (and training an attack's surrogate).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..defenses.base import Assumptions
from ..runtime.outputs import claim_output_dir, claim_sub_folder, locked, record_outputs, remove_outputs

logger = logging.getLogger(__name__)

OWNER = "compare"
METHOD_DIR = "method"
DEFENSES_DIR = "defenses"
REFERENCE = "none"
METHOD_ROWS = ("student", "student_retaught", "student_cleaned")
# The stages each method row adds to the shared variations and detection (for its seconds).
METHOD_STAGES = {"student": ("student",), "student_retaught": ("teacher_kept", "teacher_kept_logits", "student_retaught"),
                 "student_cleaned": ("student_cleaned",)}
CLEAN_SHARE = 0.05  # BackdoorBench's clean subset: 5% of the training size
LEADERBOARD_FILES = ("leaderboard.json", "leaderboard.md", "leaderboard.png")
SINGLE_OUTPUTS = (*LEADERBOARD_FILES, METHOD_DIR, DEFENSES_DIR)

_DIFFUSION_CLEAN = "none (the diffusion model must not have seen the poisoned data; the embedded one was trained " \
                   "on the digits pretrain split)"
METHOD_ASSUMES: dict[str, Assumptions] = {
    "student": Assumptions(
        clean_data=_DIFFUSION_CLEAN,
        training="trains the teacher on the poisoned data (counted in 'none'), generates diffusion variations of "
                 "every training image, trains a new model distilled from the teacher on them",
        inference_cost="none",
    ),
    "student_retaught": Assumptions(
        clean_data=_DIFFUSION_CLEAN,
        training="as student, distilled from a second teacher trained on the rows detection did not flag (the "
                 "shipped model/)",
        inference_cost="none",
    ),
    "student_cleaned": Assumptions(
        clean_data=_DIFFUSION_CLEAN,
        training="as student, on the variations of the rows detection did not flag",
        inference_cost="none",
    ),
}
SECONDS_NOTES = (
    ("Seconds: `none` = the teacher's training and evaluation; `student`, `student_retaught`, `student_cleaned` = "
     "variations, detection (the teacher's logits on the variations), that student's training (for "
     "`student_retaught` also the second teacher and its logits) and evaluation (not the "
     "teacher); peer defenses = the defense's own work and its evaluation (not the backdoored model they start "
     "from, which is the teacher). A stage finished by an earlier run keeps the time it took then."),
    ("`*_tuned`: options chosen with the embedded benchmark's ground truth (BadNets, seed 0; "
     "`EMBEDDED_BENCHMARK_OPTIONS`), so they can only flatter that baseline; the row without the suffix runs "
     "the paper's settings."),
    ("Clean subset of the defenses that need one: 5% of the training size, drawn by the seed from the digits "
     "`pretrain` split, which the embedded diffusion model was trained on too."),
)


def row_names() -> list[str]:
    """Every row of the leaderboard, in order: ``none``, our two students, then the peer defenses (registry order)."""
    from ..defenses import defense_variants

    return [REFERENCE, *METHOD_ROWS, *defense_variants()]


def row_assumptions() -> dict[str, dict]:
    """What every row assumes (clean data, training, inference cost), from the registry and :data:`METHOD_ASSUMES`."""
    from ..defenses import DEFENSES, defense_variants

    rows = {REFERENCE: DEFENSES[REFERENCE].assumes.to_dict()}
    rows.update({name: assumes.to_dict() for name, assumes in METHOD_ASSUMES.items()})
    for name, (base, options) in defense_variants().items():
        rows[name] = {**DEFENSES[base].assumes.to_dict(), **({"tuned_options": options} if options else {})}
    return rows


def describe_rows() -> str:
    """One paragraph per row: its name, what it assumes and, for ``*_tuned`` rows, the options it changes."""
    lines = []
    for name, assumes in row_assumptions().items():
        lines.append(f"{name}: clean data: {assumes['clean_data']}; training: {assumes['training']}; "
                     f"inference cost: {assumes['inference_cost']}"
                     + (f"; options chosen with the benchmark's ground truth: {assumes['tuned_options']}"
                        if "tuned_options" in assumes else ""))
    return "\n".join(lines)


def chosen_defenses(defenses: str | Sequence[str] | None) -> list[str]:
    """The peer-defense rows to run (default: all); ``none`` and our students always run.

    Names may be given as a list or comma-separated; an unknown one raises ``ValueError``
    listing the valid names.
    """
    from ..defenses import defense_variants

    variants = list(defense_variants())
    if defenses is None:
        return variants
    if isinstance(defenses, str):
        defenses = [defenses]
    names = [part.strip() for item in defenses for part in str(item).split(",") if part.strip()]
    unknown = [name for name in names if name not in variants and name not in (REFERENCE, *METHOD_ROWS)]
    if unknown:
        raise ValueError(f"Unknown defense(s) {unknown}; choose from {row_names()} "
                         f"('{REFERENCE}' and {list(METHOD_ROWS)} always run).")
    return [name for name in variants if name in names]


def _settings(settings: dict):
    from .demo import demo_preset

    return demo_preset(settings)


def _method_config(attack: str, folder: Path, seed: int, settings, overwrite: bool = False):
    """The demo's ``DefendConfig`` for ``attack`` (checked on construction), without ``variations_ce``."""
    from .demo import demo_config

    config = demo_config(attack, folder / METHOD_DIR, seed, settings, overwrite=overwrite)
    config.baselines = False  # compare's baselines are the peer defenses
    return config


def _check(attack: str, seed: int, defenses, settings: dict, output_dir: Path,
           overwrite: bool = False) -> tuple[list[str], list[str], Any]:
    """Every check before any work: ``(attacks, defense rows, DemoSettings)``."""
    from ..defenses import DEFENSES, defense_variants
    from ..defenses.base import resolve_defense
    from .demo import attack_names
    from ..validation import check_seed
    from ..pipeline.config import check_diffusion_model, stage_settings
    from ..pipeline.defend import OUTPUT_NAMES, STAGES_DIR, check_output_names

    names = list(attack_names())
    if attack not in [*names, "all"]:
        raise ValueError(f"Unknown attack {attack!r}; choose from {[*names, 'all']}.")
    check_seed("seed", seed)
    rows = chosen_defenses(defenses)
    variants = defense_variants()
    for row in rows:  # options checked now; a variation model is built from the method's settings later
        base, options = variants[row]
        if not DEFENSES[base].assumes.needs_variation:
            resolve_defense(base, **options)
    demo_settings = _settings(settings)
    attacks = names if attack == "all" else [attack]
    folders = {name: output_dir / name for name in attacks} if attack == "all" else {attack: output_dir}
    if attack == "all":
        check_output_names(output_dir, (*LEADERBOARD_FILES, *attacks), OWNER)
    for name, folder in folders.items():
        config = _method_config(name, folder, seed, demo_settings)  # DefendConfig checks every option of the method
        check_output_names(folder, SINGLE_OUTPUTS, OWNER)
        check_output_names(folder / METHOD_DIR, OUTPUT_NAMES, OWNER)
        if overwrite:  # what an earlier run cached is removed first
            continue
        # What an earlier run cached there must match. The data stage's settings hold the attack's embedded
        # setting, which takes work to build: run_defend checks that one, once the digits are loaded.
        method_stages = [stage for row in METHOD_ROWS for stage in METHOD_STAGES[row]]
        _check_cached(folder / METHOD_DIR / STAGES_DIR, {stage: stage_settings(config, stage) for stage in
                                                         ("teacher", "variations", "detection", *method_stages)})
        variants = defense_variants()
        _check_cached(folder / DEFENSES_DIR, {row: {"defense": variants[row][0], "options": variants[row][1]}
                                              for row in rows})
    check_diffusion_model(config)  # the world's shipped model is here, before its data loads
    return attacks, rows, demo_settings


def _check_cached(folder: Path, plan: dict[str, dict]) -> None:
    """``ValueError`` naming the stage or row and the option when ``folder`` (a run folder, read without creating
    anything) recorded it with other values of the options in ``plan``."""
    from ..pipeline.run_folder import read_records, settings_differences

    records = read_records(folder)
    for stage, planned in plan.items():
        recorded = (records.get(stage) or {}).get("settings")
        if recorded is None:
            continue
        changed = settings_differences({key: recorded.get(key, "<unset>") for key in planned}, planned)
        if changed:
            raise ValueError(f"{folder} holds '{stage}' made with other settings ({'; '.join(changed)}). Use "
                             "another --output-dir, or pass --overwrite to start over (it removes only what compare "
                             "wrote there).")


def run_compare(attack: str = "badnets", seed: int = 0, output_dir: str | os.PathLike = "backdoor-guard-compare",
                defenses: str | Sequence[str] | None = None, *, overwrite: bool = False,
                report: Callable[[str], None] | None = None, **settings: Any) -> dict:
    """Run the method and the peer defenses for ``attack`` (or ``"all"``) and write the leaderboard.

    Args:
        attack: a registered attack, or ``all``.
        seed: seeds the poisoning, the models, the variations and the clean subset.
        output_dir: new, empty, or an earlier compare's folder.
        defenses: the peer-defense rows to run (default: every one, :func:`row_names`);
            ``none``, ``student``, ``student_retaught`` and ``student_cleaned`` always run.
        overwrite: start over in an earlier compare's folder (removes only what compare wrote).
        report: receives one progress line per row (default: the logger).
        settings: :class:`~hf_backdoor_guard.benchmark.demo.DemoSettings` fields (``max_train_samples``,
            ``num_train_epochs``, ``variation_options``, ...), as for the demo.

    Returns the leaderboard: ``{"attack", "seed", "defenses": {row: {...}}}``, or for
    ``all`` ``{"seed", "attacks": {attack: <that>}}``.
    """
    from ..defenses.leaderboard import write_leaderboard

    output_dir = Path(output_dir)
    report = report or logger.info
    attacks, rows, demo_settings = _check(attack, seed, defenses, settings, output_dir, overwrite)
    claim_output_dir(output_dir, OWNER, "--output-dir")
    with locked(output_dir, "compare run"):  # before --overwrite removes anything: a running compare keeps its files
        if overwrite:
            logger.info("--overwrite: removed %s from %s (only what compare wrote).", remove_outputs(output_dir),
                        output_dir)
        if attack != "all":
            _claim_single(output_dir)
            return compare_attack(attack, output_dir, seed, demo_settings, rows, report)
        record_outputs(output_dir, attacks)
        boards = {}
        for number, name in enumerate(attacks, 1):
            report(f"=== attack {number}/{len(attacks)}: {name} ===")
            folder = claim_output_dir(output_dir / name, OWNER, "--output-dir")
            _claim_single(folder)
            boards[name] = compare_attack(name, folder, seed, demo_settings, rows, report)
        board = {"seed": seed, "attacks": boards}
        record_outputs(output_dir, LEADERBOARD_FILES)
        write_leaderboard(output_dir, board, notes=SECONDS_NOTES)
    return board


def _claim_single(folder: Path) -> None:
    """One attack's outputs; the peer defenses' cache is an output folder of its own, so a user's file there stays."""
    record_outputs(folder, SINGLE_OUTPUTS)
    claim_sub_folder(folder, DEFENSES_DIR, OWNER, "--output-dir")


def compare_attack(attack_name: str, folder: Path, seed: int, settings, rows: Sequence[str],
                   report: Callable[[str], None]) -> dict:
    """One attack: the method (``none``, our students), then every peer-defense row; writes ``folder/leaderboard.*``."""
    from ..defenses.compare import progress_line
    from ..defenses.leaderboard import defense_effectiveness_rating, leaderboard_entry, write_leaderboard
    from .demo import run_embedded

    total = 1 + len(METHOD_ROWS) + len(rows)
    config = _method_config(attack_name, folder, seed, settings)
    method, attack, pretrain = run_embedded(config, attack_name, seed, owner=OWNER,
                                            report_title=f"backdoor-guard compare, the method: {attack_name} (seed {seed})")
    records = method_records(method)
    for number, name in enumerate(records, 1):
        records[name]["der"] = round(defense_effectiveness_rating(records[REFERENCE], records[name]), 4)
        report(progress_line(number, total, name, records[name]))
    if rows:
        baselines = PeerDefenses(folder, config, attack, pretrain, records[REFERENCE])
        for number, name in enumerate(rows, 1 + len(records)):
            record, cached = baselines.run(name)
            records[name] = record
            report(progress_line(number, total, name, record, "finished earlier" if cached else ""))
    board = leaderboard_entry(attack_name, seed, records)
    write_leaderboard(folder, board, notes=SECONDS_NOTES)
    return board


def method_records(method: dict) -> dict[str, dict]:
    """``none`` and the method's rows (:data:`METHOD_ROWS`) from a ``run_defend`` result (its ``metrics.json``).

    Metrics are the pipeline's evaluation; seconds are the stage records' (see the module
    docstring), with an equal share of the evaluation stage per model it measured.
    """
    from ..defenses import DEFENSES

    timings, models = method["timings"], method["models"]
    evaluation = timings.get("evaluation", 0.0) / max(1, len(models))
    settings = method["settings"]
    options = {key: settings[key] for key in ("alpha", "temperature", "teacher_logits", "student_epochs",
                                              "student_learning_rate")}
    options["variation"] = method.get("variation") or {}
    records = {REFERENCE: _method_record(models["teacher"], timings["teacher"] + evaluation,
                                         DEFENSES[REFERENCE].assumes, {}, {"seconds": {"teacher": timings["teacher"]}})}
    shared = {stage: timings[stage] for stage in ("variations", "detection")}
    for name in METHOD_ROWS:
        own = {**shared, **{stage: timings[stage] for stage in METHOD_STAGES[name]}}
        records[name] = _method_record(models[name], sum(own.values()) + evaluation, METHOD_ASSUMES[name], options,
                                       {"seconds": own})
    detection = method["detection"]
    if "auroc" in detection:
        records["student_cleaned"]["detection"] = {
            **{key: detection[key] for key in ("auroc", "precision", "recall") if key in detection},
            "flagged": detection["flagged"]}
    return records


def _method_record(metrics: dict, seconds: float, assumes: Assumptions, options: dict, info: dict) -> dict:
    from ..metrics import backdoor_metrics

    return {**{m.name: metrics[m.name] for m in backdoor_metrics()}, "der": 0.5, "seconds": round(seconds, 1),
            "assumes": assumes.to_dict(), "options": options, "info": info}


class PeerDefenses:
    """The peer-defense rows of one attack, each run once and cached in ``folder/defenses`` (a RunFolder).

    Every row starts from the method's teacher and data (read from its finished stages),
    with the teacher's ``TrainingArguments`` (no checkpoints: a killed row runs again).
    A row's cache is keyed by its defense, options, clean-subset size and the method's
    data / teacher / variations settings, so a changed setup is refused by name.
    """

    def __init__(self, folder: Path, config, attack, pretrain, reference: dict):
        from datasets import load_from_disk

        from ..data import class_names
        from ..defenses.base import draw_clean_subset
        from ..loading import load_image_classifier
        from ..poisoning import triggered_testset
        from ..pipeline.defend import STAGES_DIR
        from ..pipeline.run_folder import RunFolder
        from ..pipeline.stages import training_arguments

        method = RunFolder(folder / METHOD_DIR / STAGES_DIR)
        records = method.records()
        data = load_from_disk(str(method.path / records["data"]["output"]))
        self.train, self.test = data["train"], data["eval"]
        self.teacher, self.processor = load_image_classifier(method.path / records["teacher"]["output"],
                                                             "the teacher of this compare run")
        self.teacher.eval()
        self.config, self.attack, self.reference = config, attack, reference
        self.triggered = triggered_testset(self.test, attack, config.target_label)
        self.clean_rows = max(1, round(CLEAN_SHARE * len(self.train)))
        self.clean_subset = draw_clean_subset(pretrain, self.clean_rows, seed=config.seed)
        self.label_names = class_names(self.train)
        self.method_settings = {stage: records[stage]["settings"] for stage in ("data", "teacher", "variations")}
        self.run_folder = RunFolder(folder / DEFENSES_DIR, option="--output-dir",
                                    restart_hint=", or pass --overwrite to start over (it removes only what compare "
                                                 "wrote there)")
        self.training_args = training_arguments(
            self.run_folder.path / "scratch", seed=config.seed, epochs=config.num_train_epochs,
            batch_size=config.per_device_train_batch_size, learning_rate=config.learning_rate,
            weight_decay=config.weight_decay, save_strategy="no")
        self.training_args = dataclasses.replace(self.training_args, logging_strategy="no")  # one line per row

    def new_model(self):
        from ..pipeline.models import build_classifier

        options = self.config.classifier()
        return build_classifier(options.pop("model"), label_names=self.label_names, seed=self.config.seed,
                                **options)[0]

    def _variation(self):
        from ..pipeline.defend import variation_factory

        return variation_factory(self.config, "cpu")()

    def run(self, name: str) -> tuple[dict, bool]:
        """``(record, finished earlier)`` of row ``name`` of :func:`~hf_backdoor_guard.defenses.defense_variants`."""
        from ..defenses import DEFENSES, defense_variants
        from ..defenses.base import resolve_defense
        from ..defenses.compare import measure_defense

        base, options = defense_variants()[name]
        settings = {"defense": base, "options": options, "clean_rows": self.clean_rows,
                    "method": self.method_settings}
        output = f"{name}.json"
        cached = self.run_folder.is_complete(name, settings)

        def make():
            chosen = dict(options)
            if DEFENSES[base].assumes.needs_variation:
                chosen.setdefault("variation", self._variation())  # the method's diffusion model and settings
            defense = resolve_defense(base, **chosen)
            scratch = self.run_folder.path / "scratch" / name
            args = dataclasses.replace(self.training_args, output_dir=str(scratch))
            record, _ = measure_defense(
                defense, self.train, self.test, self.attack, reference=self.reference,
                target_label=self.config.target_label, triggered_ds=self.triggered, clean_subset=self.clean_subset,
                backdoored_model=self.teacher, model_factory=self.new_model, training_args=args,
                image_processor=self.processor, augment=self.config.augment)
            self.run_folder.write_json(output, record)
            shutil.rmtree(scratch, ignore_errors=True)  # the phases' Trainer folders (no checkpoints are saved)

        # scratch/NAME is the row's work in progress: recorded with it, so a kill's leftovers are ours to remove
        record = self.run_folder.run_stage(name, settings, output, make,
                                           lambda path: json.loads(path.read_text(encoding="utf-8")),
                                           partial=(f"scratch/{name}",))
        return record, cached


# --- command line ------------------------------------------------------------------------
def compare_cli(args) -> int:
    """Entry point of ``backdoor-guard compare``: progress lines, then the table; 2 on bad input."""
    from ..defenses.leaderboard import leaderboard_table

    if getattr(args, "list_defenses", False):
        print(describe_rows())
        return 0
    started = time.time()
    # Errors reach cli.main, which prints one line: exit 2 for bad input, 1 for a folder in use.
    board = run_compare(attack=args.attack, seed=args.seed, output_dir=args.output_dir,
                        defenses=getattr(args, "defenses", None), overwrite=getattr(args, "overwrite", False),
                        report=lambda line: print(line, flush=True), benchmark=getattr(args, "benchmark", "digits"),
                        reuse_variations=getattr(args, "reuse_variations", None))
    singles = board["attacks"].values() if "attacks" in board else [board]
    for single in singles:
        print(f"\n{single['attack']} (seed {single['seed']})")
        print(leaderboard_table(single, markdown=False, assumptions=False))
    print(f"\nLeaderboard: {Path(args.output_dir) / 'leaderboard.md'} ({time.time() - started:.0f} s)")
    return 0


__all__ = ["METHOD_ASSUMES", "METHOD_ROWS", "OWNER", "PeerDefenses", "chosen_defenses", "compare_attack",
           "compare_cli", "describe_rows", "method_records", "row_assumptions", "row_names", "run_compare"]
