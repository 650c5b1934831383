"""The recipes' argument dataclasses, their ``--config`` parser, the data loading and the run folder they share.

Every field is a command-line flag (``--num_train_epochs 1``) and a key of a YAML or JSON
config. One config describes a whole setup and every script reads it: each takes the keys
it knows and ignores the others' (a key that no script knows is an error, so a typo does
not pass silently). Flags override the config::

    python recipes/train_teacher.py --config recipes/configs/cifar10.yaml --num_train_epochs 1

Everything a run writes lives under ``run_dir`` unless a path is given: ``teacher/``,
``variations/``, ``student/`` and ``*_metrics.json``. ``run_variant: fast`` puts the
variations and the student in ``variations_fast/`` and ``student_fast/`` and keeps the
teacher shared. Each script runs one stage of :mod:`hf_backdoor_guard.pipeline.stages`
in the folder holding its output (:func:`run_folder`), whose ``stages.json`` records the
options that decided each output (:func:`stage_settings`).

The scripts import this module by name: Python puts a script's own folder first on
``sys.path``, so ``python recipes/x.py`` (or ``accelerate launch recipes/x.py``) finds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_backdoor_guard.arguments import (
    DataArguments,
    ModelArguments,
    PoisonArguments,
    check_option_names,
    none_if_blank,
    option,
    read_config_file,
)
from hf_backdoor_guard.arguments import parse_arguments as parse_option_groups
from hf_backdoor_guard.validation import check_choice, check_fraction, check_int, check_number

# The recipes' seed of subsets and poisoned rows when --subset_seed / --poison_seed are unset (defend uses its --seed).
RECIPE_SEED = 42

logger = logging.getLogger("recipes")


# --------------------------------------------------------------------------------------
# Argument dataclasses
# --------------------------------------------------------------------------------------
@dataclass
class RunArguments:
    """Where a run lives and how it logs."""

    run_dir: str = option("Folder of the whole run: teacher/, variations/, student/ and *_metrics.json go there "
                         "unless their paths are given.", "runs/backdoor-guard")
    run_variant: str | None = option("A variant of the run that shares its teacher: its variations and student go to "
                                    "RUN_DIR/variations_VARIANT and RUN_DIR/student_VARIANT (the fast configs: fast).")
    resume: bool = option("Training: continue an unfinished run from its last complete checkpoint "
                         "(OUTPUT_DIR-checkpoints; --no_resume starts over).", True)
    overwrite: bool = option("Replace this script's earlier output (made with other options) instead of refusing: "
                            "removes only that output, its checkpoints and its record in stages.json.", False)
    verbosity: str = option("Log level of the recipe and the package on the main process: debug, info, warning.",
                           "info")

    def __post_init__(self):
        self.run_variant = none_if_blank(self.run_variant)
        if self.run_variant is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.run_variant):
            raise ValueError(f"run_variant must be a plain name (letters, digits, _ . -), got {self.run_variant!r}.")
        check_choice("verbosity", self.verbosity, ("debug", "info", "warning", "error"))

    def path(self, name: str) -> str:
        """``RUN_DIR/name``; with a variant ``RUN_DIR/name_VARIANT``, except the teacher, which variants share."""
        if self.run_variant and name != "teacher":
            name = f"{name}_{self.run_variant}"
        return os.path.join(self.run_dir, name)


@dataclass
class AugmentArguments:
    """Random augmentation of training images: the teacher always, the student with ``--augment``."""

    flip_probability: float = option("Chance of a random horizontal flip (0: off).", 0.5)
    crop_padding: float = option("Random crop after padding each side by this fraction of the side (0.125 = 4 px on "
                                "32 px images, the usual CIFAR recipe; 0: no crop).", 0.0)

    def __post_init__(self):
        check_fraction("flip_probability", self.flip_probability)
        check_number("crop_padding", self.crop_padding, 0.0, 1.0, high_inclusive=False)


@dataclass
class ScheduleArguments:
    """Step decay of the learning rate (MultiStep), on top of ``lr_scheduler_type: constant``."""

    lr_milestones: list[float] | None = option("Epochs at which the learning rate is multiplied by lr_gamma (paper: "
                                              "30 50). Needs lr_scheduler_type=constant and no warmup.")
    lr_gamma: float = option("Factor applied at each of lr_milestones.", 0.1)

    def __post_init__(self):
        from hf_backdoor_guard.training.classifier import check_milestones

        if self.lr_milestones is not None:
            self.lr_milestones, self.lr_gamma = check_milestones(self.lr_milestones, self.lr_gamma,
                                                                 milestones_name="lr_milestones", gamma_name="lr_gamma")

    def callbacks(self, training_args) -> list:
        """``[MultiStepLRCallback]`` for the milestones (checked against ``training_args`` now), or ``[]``."""
        from hf_backdoor_guard.training.classifier import MultiStepLRCallback

        if not self.lr_milestones:
            return []
        MultiStepLRCallback.check_args(training_args)
        return [MultiStepLRCallback(self.lr_milestones, self.lr_gamma)]


@dataclass
class VariationArguments:
    """The diffusion model, how it varies every training image, and how the work is split and published."""

    diffusion_model: str = option("Hub id or folder of a supported diffusers pipeline (model_index.json decides the "
                                 "family).", "shi-labs/versatile-diffusion")
    diffusion_prior: str | None = option("Prior stage of two-stage families (Kandinsky 2.2, Flux Redux).")
    diffusion_revision: str | None = option("Hub revision of diffusion_model.")
    diffusion_variant: str | None = option("Weights variant, e.g. 'fp16'.")
    diffusion_dtype: str | None = option("Run the pipeline in this dtype (float16, bfloat16, float32).")
    speed: str | None = option("A speed preset: 'fast' (DPM-Solver++ in 15 steps, channels_last, torch.compile on "
                              "CUDA) or 'fast-small' (the same at half the native size, for small sources such as "
                              "CIFAR's 32 px). It fills in only the options left unset below.")
    scheduler: str | None = option("Replace the pipeline's scheduler by this diffusers class, built from its config.")
    num_inference_steps: int | None = option("Denoising steps (paper: 50).")
    guidance_scale: float | None = option("Classifier-free guidance (paper: 7.5).")
    strength: float | None = option("Noise level of SDEdit families, in (0, 1].")
    eta: float | None = option("DDIM eta for families whose scheduler takes it.")
    variation_size: int | None = option("Generation size in pixels (paper: 512); variations are resized back to each "
                                       "source's size.")
    color_transfer: bool = option("Match each variation's Lab color statistics to its source (paper: on).", True)
    num_variations: int = option("Variations per training image.", 1)
    variation_seed: int = option("Base seed; each image gets its own generator.", 42)
    keep_source: bool = option("Keep the (possibly poisoned) source image in a 'source_image' column.", False)
    variation_batch_size: int = option("Source images per pipeline call.", 8)
    variation_shard_size: int | None = option("Source rows per resumable shard (default 64 x variation_batch_size).")
    overlap: bool = option("Decode, post-process and write on CPU threads while the GPU denoises (same bytes).", True)
    part_index: int = option("Run only this part of num_parts (one part per machine when machines share no storage; "
                            "gather the parts with hbg.merge_variation_shards).", 0)
    num_parts: int = option("Number of parts the shards are split into (see part_index).", 1)
    streaming: bool = option("Read the training split with load_dataset(..., streaming=True), for data too large to "
                            "download first (no poisoning, resizing or subsets then).", False)
    push_to_hub: str | None = option("A Hub dataset repo: push each shard there as parquet as soon as it is finished.")
    hub_private: bool = option("Create the push_to_hub repository as private.", False)
    output_dir: str | None = option("Where the variations are written (default RUN_DIR/variations); a rerun resumes.")

    def __post_init__(self):
        self.speed = none_if_blank(self.speed)
        self.push_to_hub = none_if_blank(self.push_to_hub)
        for name in ("variation_batch_size", "num_variations", "num_parts"):
            check_int(name, getattr(self, name))
        check_int("part_index", self.part_index, minimum=0, maximum=self.num_parts - 1)

    def build(self, device=None):
        """The ``ImageVariation`` these options describe, on ``device``."""
        from hf_backdoor_guard.variations import ImageVariation

        options = {"dtype": self.diffusion_dtype, "prior": self.diffusion_prior, "revision": self.diffusion_revision,
                   "variant": self.diffusion_variant, "speed": self.speed, "scheduler": self.scheduler,
                   "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                   "strength": self.strength, "eta": self.eta, "size": self.variation_size}
        options = {key: value for key, value in options.items() if value is not None}  # unset: the family's or preset's
        return ImageVariation.from_pretrained(
            self.diffusion_model, device=device, color_transfer=self.color_transfer,
            num_variations=self.num_variations, seed=self.variation_seed, keep_source=self.keep_source, **options)


@dataclass
class StudentArguments:
    """What the student learns from."""

    teacher_model_name_or_path: str | None = option("The teacher, a folder or Hub id (default RUN_DIR/teacher).")
    variations_dataset: str | None = option("The variations: a save_to_disk folder (default RUN_DIR/variations) or a "
                                           "Hub dataset id.")
    variations_split: str = option("Split of a Hub variations dataset.", "train")
    cache_teacher_logits: bool = option("Run the teacher once over the variations and train on cached logits (needs "
                                       "--augment false: cached logits belong to the unaugmented images).", False)


@dataclass
class EvaluateArguments:
    """What evaluate_backdoor.py measures and where it writes."""

    eval_model: str | None = option("The classifier to measure, a folder or Hub id (default RUN_DIR/student).")
    eval_attacks: list[str] | None = option("Attacks to measure, each a spec as for --attack (default: the config's "
                                           "attack); in YAML a list of names, specs or mappings.")
    metrics_file: str | None = option("Metrics JSON to write (default RUN_DIR/<model folder>_metrics.json).")
    eval_batch_size: int = option("Images per forward pass.", 64)

    def __post_init__(self):
        from hf_backdoor_guard.attacks.specs import attack_keys

        if self.eval_attacks:
            attack_keys(self.eval_attacks)  # every spec parses, none twice
        check_int("eval_batch_size", self.eval_batch_size)


def _all_options() -> set[str]:
    """Every key some recipe takes: a config key outside this set is a typo."""
    from hf_backdoor_guard.training.distillation import DistillationTrainingArguments

    types = (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments, ScheduleArguments,
             VariationArguments, StudentArguments, EvaluateArguments, DistillationTrainingArguments)
    return {f.name for cls in types for f in dataclasses.fields(cls) if f.init}


# --------------------------------------------------------------------------------------
# Parsing: HfArgumentParser with --config, as trl's scripts do
# --------------------------------------------------------------------------------------
def check_recipe_config(values: dict[str, Any], path) -> None:
    """What a config shared by every script must not hold."""
    if "output_dir" in values:  # teacher, variations and student would all write to (and resume from) one folder
        raise ValueError(f"output_dir in {path} would be the folder of every script; leave it to run_dir, or pass "
                         "--output_dir to one script.")
    if values.get("overwrite"):  # every script would replace its output at every run
        raise ValueError(f"overwrite in {path} would replace every script's output at each run; pass --overwrite "
                         "to the one script whose output should be made again.")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of options in a YAML (or JSON) config file shared by every script."""
    values = read_config_file(path)
    check_option_names(values, _all_options(), f"config file {path} (no recipe takes them: a typo?)")
    check_recipe_config(values, path)
    return values


def parse_arguments(types: tuple, argv: list[str] | None = None, *, run_paths: dict[str, str] | None = None,
                    description: str | None = None) -> tuple:
    """Parse ``[--config FILE] [--option value ...]`` into instances of ``types`` (dataclasses, in order), with
    the library's one front end (:func:`hf_backdoor_guard.arguments.parse_arguments`).

    Precedence, lowest first: the dataclass defaults, ``run_paths`` (option -> folder name
    under ``run_dir``, see :meth:`RunArguments.path`), the config file, the command line.
    A config key that no script takes is an error; one that another script takes is ignored.
    """
    def run_defaults(namespace, _values) -> dict[str, str]:  # the default paths derive from run_dir and run_variant
        run = RunArguments(run_dir=namespace.run_dir, run_variant=namespace.run_variant)
        return {key: run.path(name) for key, name in (run_paths or {}).items()}

    return parse_option_groups(types, argv, description=description, known=_all_options(),
                               check=check_recipe_config, defaults=run_defaults if run_paths else None)


def setup_logging(run: RunArguments, main_process: bool = True) -> None:
    """Log the recipe and the package at ``run.verbosity`` on the main process, warnings only on the others."""
    import datasets
    import transformers

    level = getattr(logging, run.verbosity.upper()) if main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=level)
    for name in ("recipes", "hf_backdoor_guard"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


def save_arguments(output_dir: str | os.PathLike, script: str, *args) -> Path:
    """Write the options a script ran with (defaults, config and flags resolved) to ``output_dir/recipe_config.yaml``."""
    import yaml

    from hf_backdoor_guard.runtime.outputs import write_text_atomic

    values: dict[str, Any] = {}
    for item in args:
        values.update(item.to_dict() if hasattr(item, "to_dict") else dataclasses.asdict(item))
    values = json.loads(json.dumps(values, default=str))  # enums and paths as plain text
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    text = f"# Options {script} ran with (defaults, config and flags resolved).\n" + yaml.safe_dump(values)
    return write_text_atomic(Path(output_dir) / "recipe_config.yaml", text)


# --------------------------------------------------------------------------------------
# The run folder: one stage per script
# --------------------------------------------------------------------------------------
# Options that do not change what a stage makes (paths, logging, resuming, speed): not in its recorded settings.
NOT_SETTINGS = {"run_dir", "run_variant", "resume", "overwrite", "verbosity", "output_dir", "overlap", "hub_private",
                "metrics_file", "eval_batch_size"}


def stage_settings(*args, training_args=None, **extra) -> dict[str, Any]:
    """The options of the dataclasses ``args`` that decide a stage's output, those of ``training_args``
    (:func:`~hf_backdoor_guard.pipeline.training_settings`) and ``extra``."""
    from hf_backdoor_guard.pipeline import training_settings

    values = {f.name: getattr(item, f.name) for item in args for f in dataclasses.fields(item)
              if f.init and f.name not in NOT_SETTINGS}
    return {**values, **(training_settings(training_args) if training_args is not None else {}), **extra}


def run_folder(output: str | os.PathLike, run: RunArguments, option: str = "--output_dir", stage: str | None = None):
    """``(RunFolder, stage name)`` of a script's ``output``: the folder holding it, and the output's name
    (or ``stage``). With ``run.overwrite`` the stage's earlier output, checkpoints and record go first."""
    from hf_backdoor_guard.pipeline import RunFolder

    output = Path(output)
    folder = RunFolder(output.parent, option=option,
                       restart_hint=", or pass --overwrite to replace it (only what the recipes wrote there)")
    stage = stage or output.name
    if run.overwrite:
        folder.discard(stage)
    return folder, stage


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def _standard_columns(ds, data: DataArguments):
    renames = {old: new for old, new in ((data.image_column_name, "image"), (data.label_column_name, "label"))
               if old != new}
    return ds.rename_columns(renames) if renames else ds


def load_splits(data: DataArguments, poison: PoisonArguments | None = None, *, train: bool = True,
                evaluation: bool = True):
    """``(train, eval)``: the splits with columns ``image`` and ``label``, subset and resized; ``train``
    poisoned when ``poison`` has an attack and a rate > 0 (the same rows every time: seeded). Without an
    evaluation split, ``data.train_val_split`` of the training rows is held out for it (stratified, seeded:
    every script holds out the same rows), as ``defend`` does. A split not asked for is None."""
    from hf_backdoor_guard.data import held_out_rows, load_image_splits, resize_images, stratified_subset

    seed = RECIPE_SEED if data.subset_seed is None else data.subset_seed
    train_ds, eval_ds = load_image_splits(
        data.dataset_name, data.train_split, data.eval_split, data_dir=data.data_dir,
        config_name=data.dataset_config_name, revision=data.dataset_revision, image_column=data.image_column_name,
        label_column=data.label_column_name, option="dataset_name")
    train_ds = _standard_columns(train_ds, data)
    if eval_ds is None:
        kept, held_out, _ = held_out_rows(train_ds, data.train_val_split, seed)
        logger.info("No evaluation split: %d of %d training rows held out for evaluation (--train_val_split %g).",
                    len(held_out), len(train_ds), data.train_val_split)
        train_ds, eval_ds = train_ds.select(kept), train_ds.select(held_out)
    else:
        eval_ds = _standard_columns(eval_ds, data)
    splits = []
    for ds, rows in ((train_ds if train else None, data.max_train_samples),
                     (eval_ds if evaluation else None, data.max_eval_samples)):
        if ds is not None:
            ds = stratified_subset(ds, rows, seed)  # subset first: resize less
            if data.resize_images:
                ds = resize_images(ds, data.resize_images)
        splits.append(ds)
    attack = poison.build_attack() if poison is not None else None
    if splits[0] is not None and attack is not None and poison.poison_rate > 0:
        from hf_backdoor_guard.poisoning import poison_dataset

        poison_seed = RECIPE_SEED if poison.poison_seed is None else poison.poison_seed
        splits[0] = poison_dataset(splits[0], attack, target_label=poison.target_label, rate=poison.poison_rate,
                                   seed=poison_seed, poison_target_class=poison.poison_target_class)
        logger.info("Poisoned %d of %d training rows with %r (target %d)", sum(splits[0]["poisoned"]),
                    len(splits[0]), attack, poison.target_label)
    return tuple(splits)


def stream_training_split(data: DataArguments, poison: PoisonArguments):
    """The training split as an ``IterableDataset`` (``load_dataset(..., streaming=True)``), read as it is."""
    from datasets import load_dataset

    if (poison.attack is not None and poison.poison_rate > 0) or data.resize_images or data.max_train_samples:
        raise ValueError("streaming reads the training split as it is: it takes no poisoning (set --poison_rate 0 "
                         "or --attack none), --resize_images or --max_train_samples.")
    if not data.dataset_name:
        raise ValueError("dataset_name is required: a Hub dataset id, or 'imagefolder' with data_dir.")
    ds = load_dataset(data.dataset_name, data.dataset_config_name, data_dir=data.data_dir,
                      revision=data.dataset_revision, split=data.train_split, streaming=True)
    return _standard_columns(ds, data)
