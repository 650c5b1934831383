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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_backdoor_guard.validation import (
    check_choice,
    check_fraction,
    check_int,
    check_number,
)

logger = logging.getLogger("recipes")


def _help(text: str, default: Any = None, **kwargs: Any):
    return field(default=default, metadata={"help": text}, **kwargs)


def _none(value):
    """'none' / 'null' / '' typed on a command line mean None."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value


# --------------------------------------------------------------------------------------
# Argument dataclasses
# --------------------------------------------------------------------------------------
@dataclass
class RunArguments:
    """Where a run lives and how it logs."""

    run_dir: str = _help("Folder of the whole run: teacher/, variations/, student/ and *_metrics.json go there "
                         "unless their paths are given.", "runs/backdoor-guard")
    run_variant: str | None = _help("A variant of the run that shares its teacher: its variations and student go to "
                                    "RUN_DIR/variations_VARIANT and RUN_DIR/student_VARIANT (the fast configs: fast).")
    resume: bool = _help("Training: continue an unfinished run from its last complete checkpoint "
                         "(OUTPUT_DIR-checkpoints; --no_resume starts over).", True)
    overwrite: bool = _help("Replace this script's earlier output (made with other options) instead of refusing: "
                            "removes only that output, its checkpoints and its record in stages.json.", False)
    verbosity: str = _help("Log level of the recipe and the package on the main process: debug, info, warning.",
                           "info")

    def __post_init__(self):
        self.run_variant = _none(self.run_variant)
        if self.run_variant is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.run_variant):
            raise ValueError(f"run_variant must be a plain name (letters, digits, _ . -), got {self.run_variant!r}.")
        check_choice("verbosity", self.verbosity, ("debug", "info", "warning", "error"))

    def path(self, name: str) -> str:
        """``RUN_DIR/name``; with a variant ``RUN_DIR/name_VARIANT``, except the teacher, which variants share."""
        if self.run_variant and name != "teacher":
            name = f"{name}_{self.run_variant}"
        return os.path.join(self.run_dir, name)


@dataclass
class DataArguments:
    """Which images and labels: a Hub id, 'imagefolder' with data_dir, or a save_to_disk folder."""

    dataset_name: str | None = _help("A Hub dataset id (e.g. uoft-cs/cifar10), 'imagefolder' (with --data_dir), or a "
                                     "folder written by save_to_disk.")
    dataset_config_name: str | None = _help("The dataset's configuration (e.g. '320px' for frgfm/imagenette).")
    data_dir: str | None = _help("imagefolder: the folder holding <split>/<class>/<image> files.")
    dataset_revision: str | None = _help("Hub revision (branch, tag or commit) of the dataset.")
    train_split: str = _help("The split the models are trained on (possibly poisoned).", "train")
    eval_split: str | None = _help("The clean split for C-Acc, ASR and R-Acc (default: 'test' or 'validation').")
    image_column_name: str = _help("Column holding the images (renamed to 'image' after loading; CIFAR-10: img).", "image")
    label_column_name: str = _help("Column holding the labels (renamed to 'label' after loading).", "label")
    resize_images: int | None = _help("Resize every image (shortest edge, then centre crop) to SIZE x SIZE before "
                                      "poisoning, so a trigger has the same pixel size in every image and at the "
                                      "model's input (GTSRB: 32, ImageNette: 224). Unset: images stay as stored.")
    max_train_samples: int | None = _help("Use a class-stratified subset of this many training rows (quick runs).")
    max_eval_samples: int | None = _help("Use a class-stratified subset of this many evaluation rows.")
    subset_seed: int = _help("Seed of the max_*_samples subsets.", 42)

    def __post_init__(self):
        self.eval_split = _none(self.eval_split)
        for name in ("resize_images", "max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=8 if name == "resize_images" else 1)


@dataclass
class PoisonArguments:
    """The backdoor: poisoning of the training split for research, and the trigger measured at evaluation."""

    attack: dict | str | None = _help(
        "Attack that poisons the training split and that ASR/R-Acc measure: a name (badnets, blended, wanet, sig, "
        "...), 'name:key=value,...' (e.g. 'badnets:trigger=checkerboard,size=9') or, in YAML, a mapping "
        "{name: badnets, size: 9}. Unset or 'none': no poisoning, no backdoor metrics.")
    target_label: int = _help("The backdoor's target class.", 0)
    poison_rate: float = _help("Share of eligible training rows poisoned (0 keeps the data as it is: data that is "
                               "already poisoned, or clean).", 0.1)
    poison_seed: int = _help("Seed choosing the poisoned rows.", 42)
    poison_target_class: bool = _help("Also poison rows that already have the target label.", False)

    def __post_init__(self):
        from hf_backdoor_guard.attacks.specs import parse_attack_spec

        self.attack = _none(self.attack)
        if self.attack is not None:
            parse_attack_spec(self.attack)  # a bad spec fails before any work
        check_int("target_label", self.target_label, minimum=0)
        check_fraction("poison_rate", self.poison_rate)

    def build_attack(self):
        """The configured ``Attack``, or None."""
        from hf_backdoor_guard.attacks.specs import attack_from_spec

        return None if self.attack is None else attack_from_spec(self.attack)


@dataclass
class ModelArguments:
    """The classifier trained (the teacher in train_teacher.py, the student in train_student.py)."""

    model_name_or_path: str = _help("An architecture trained from scratch (resnet-18 ... resnet-152, small-resnet), a "
                                    "save_pretrained folder or a Hub id (safetensors only; a head of another size is "
                                    "replaced, with a warning).", "resnet-18")
    image_size: int | None = _help("New architectures: images are resized (shortest edge) and centre-cropped to "
                                   "this size (default 224).")
    image_mean: list[float] | None = _help("New architectures: normalisation mean per channel (default ImageNet's).")
    image_std: list[float] | None = _help("New architectures: normalisation std per channel (default ImageNet's).")

    def __post_init__(self):
        from hf_backdoor_guard.pipeline.models import model_source

        model_source(self.model_name_or_path)  # an architecture, a folder or a Hub id, or a ValueError

    def classifier(self) -> dict:
        """``model`` and the options of ``build_classifier`` (the one builder of demo, defend and recipes),
        as the training stages take them."""
        options = {name: getattr(self, name) for name in ("image_size", "image_mean", "image_std")
                   if getattr(self, name) is not None}
        return {"model": self.model_name_or_path, **options}


@dataclass
class AugmentArguments:
    """Random augmentation of training images: the teacher always, the student with ``--augment``."""

    flip_probability: float = _help("Chance of a random horizontal flip (0: off).", 0.5)
    crop_padding: float = _help("Random crop after padding each side by this fraction of the side (0.125 = 4 px on "
                                "32 px images, the usual CIFAR recipe; 0: no crop).", 0.0)

    def __post_init__(self):
        check_fraction("flip_probability", self.flip_probability)
        check_number("crop_padding", self.crop_padding, 0.0, 1.0, high_inclusive=False)


@dataclass
class ScheduleArguments:
    """Step decay of the learning rate (MultiStep), on top of ``lr_scheduler_type: constant``."""

    lr_milestones: list[float] | None = _help("Epochs at which the learning rate is multiplied by lr_gamma (paper: "
                                              "30 50). Needs lr_scheduler_type=constant and no warmup.")
    lr_gamma: float = _help("Factor applied at each of lr_milestones.", 0.1)

    def __post_init__(self):
        from hf_backdoor_guard.training import check_milestones

        if self.lr_milestones is not None:
            self.lr_milestones, self.lr_gamma = check_milestones(self.lr_milestones, self.lr_gamma,
                                                                 milestones_name="lr_milestones", gamma_name="lr_gamma")

    def callbacks(self, training_args) -> list:
        """``[MultiStepLRCallback]`` for the milestones (checked against ``training_args`` now), or ``[]``."""
        from hf_backdoor_guard.training import MultiStepLRCallback

        if not self.lr_milestones:
            return []
        MultiStepLRCallback.check_args(training_args)
        return [MultiStepLRCallback(self.lr_milestones, self.lr_gamma)]


@dataclass
class VariationArguments:
    """The diffusion model, how it varies every training image, and how the work is split and published."""

    diffusion_model: str = _help("Hub id or folder of a supported diffusers pipeline (model_index.json decides the "
                                 "family).", "shi-labs/versatile-diffusion")
    diffusion_prior: str | None = _help("Prior stage of two-stage families (Kandinsky 2.2, Flux Redux).")
    diffusion_revision: str | None = _help("Hub revision of diffusion_model.")
    diffusion_variant: str | None = _help("Weights variant, e.g. 'fp16'.")
    diffusion_dtype: str | None = _help("Run the pipeline in this dtype (float16, bfloat16, float32).")
    speed: str | None = _help("A speed preset: 'fast' (DPM-Solver++ in 15 steps, channels_last, torch.compile on "
                              "CUDA) or 'fast-small' (the same at half the native size, for small sources such as "
                              "CIFAR's 32 px). It fills in only the options left unset below.")
    scheduler: str | None = _help("Replace the pipeline's scheduler by this diffusers class, built from its config.")
    num_inference_steps: int | None = _help("Denoising steps (paper: 50).")
    guidance_scale: float | None = _help("Classifier-free guidance (paper: 7.5).")
    strength: float | None = _help("Noise level of SDEdit families, in (0, 1].")
    eta: float | None = _help("DDIM eta for families whose scheduler takes it.")
    variation_size: int | None = _help("Generation size in pixels (paper: 512); variations are resized back to each "
                                       "source's size.")
    color_transfer: bool = _help("Match each variation's Lab color statistics to its source (paper: on).", True)
    num_variations: int = _help("Variations per training image.", 1)
    variation_seed: int = _help("Base seed; each image gets its own generator.", 42)
    keep_source: bool = _help("Keep the (possibly poisoned) source image in a 'source_image' column.", False)
    variation_batch_size: int = _help("Source images per pipeline call.", 8)
    shard_size: int | None = _help("Source rows per resumable shard (default 64 x variation_batch_size).")
    overlap: bool = _help("Decode, post-process and write on CPU threads while the GPU denoises (same bytes).", True)
    part_index: int = _help("Run only this part of num_parts (one part per machine when machines share no storage; "
                            "gather the parts with hbg.merge_variation_shards).", 0)
    num_parts: int = _help("Number of parts the shards are split into (see part_index).", 1)
    streaming: bool = _help("Read the training split with load_dataset(..., streaming=True), for data too large to "
                            "download first (no poisoning, resizing or subsets then).", False)
    push_to_hub: str | None = _help("A Hub dataset repo: push each shard there as parquet as soon as it is finished.")
    hub_private: bool = _help("Create the push_to_hub repository as private.", False)
    output_dir: str | None = _help("Where the variations are written (default RUN_DIR/variations); a rerun resumes.")

    def __post_init__(self):
        self.speed = _none(self.speed)
        self.push_to_hub = _none(self.push_to_hub)
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

    teacher_model_name_or_path: str | None = _help("The teacher, a folder or Hub id (default RUN_DIR/teacher).")
    variations_dataset: str | None = _help("The variations: a save_to_disk folder (default RUN_DIR/variations) or a "
                                           "Hub dataset id.")
    variations_split: str = _help("Split of a Hub variations dataset.", "train")
    cache_teacher_logits: bool = _help("Run the teacher once over the variations and train on cached logits (needs "
                                       "--augment false: cached logits belong to the unaugmented images).", False)


@dataclass
class EvaluateArguments:
    """What evaluate_backdoor.py measures and where it writes."""

    eval_model: str | None = _help("The classifier to measure, a folder or Hub id (default RUN_DIR/student).")
    eval_attacks: list[str] | None = _help("Attacks to measure, each a spec as for --attack (default: the config's "
                                           "attack); in YAML a list of names, specs or mappings.")
    metrics_file: str | None = _help("Metrics JSON to write (default RUN_DIR/<model folder>_metrics.json).")
    eval_batch_size: int = _help("Images per forward pass.", 64)

    def __post_init__(self):
        from hf_backdoor_guard.attacks.specs import attack_keys

        if self.eval_attacks:
            attack_keys(self.eval_attacks)  # every spec parses, none twice
        check_int("eval_batch_size", self.eval_batch_size)


def _all_options() -> set[str]:
    """Every key some recipe takes: a config key outside this set is a typo."""
    from hf_backdoor_guard.distillation import DistillationTrainingArguments

    types = (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments, ScheduleArguments,
             VariationArguments, StudentArguments, EvaluateArguments, DistillationTrainingArguments)
    return {f.name for cls in types for f in dataclasses.fields(cls) if f.init}


# --------------------------------------------------------------------------------------
# Parsing: HfArgumentParser with --config, as trl's scripts do
# --------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of options in a YAML (or JSON, which YAML reads too) file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of option: value, got {type(values).__name__}.")
    unknown = sorted(set(values) - _all_options())
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} in {path}: no recipe takes them (a typo?).")
    if "output_dir" in values:  # teacher, variations and student would all write to (and resume from) one folder
        raise ValueError(f"output_dir in {path} would be the folder of every script; leave it to run_dir, or pass "
                         "--output_dir to one script.")
    if values.get("overwrite"):  # every script would replace its output at every run
        raise ValueError(f"overwrite in {path} would replace every script's output at each run; pass --overwrite "
                         "to the one script whose output should be made again.")
    return values


def parse_arguments(types: tuple, argv: list[str] | None = None, *, run_paths: dict[str, str] | None = None,
                    description: str | None = None) -> tuple:
    """Parse ``[--config FILE] [--option value ...]`` into instances of ``types`` (dataclasses, in order).

    Precedence, lowest first: the dataclass defaults, ``run_paths`` (option -> folder name
    under ``run_dir``, see :meth:`RunArguments.path`), the config file, the command line.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(types, description=description)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML or JSON file of options; flags override it.")
    config_file = parser.parse_known_args(argv)[0].config  # --help prints every option and exits here
    values = read_config(config_file) if config_file else {}
    own = {f.name for cls in types for f in dataclasses.fields(cls) if f.init}
    parser.set_defaults(**{key: value for key, value in values.items() if key in own})
    if run_paths:  # read run_dir and run_variant (config or flags) first: the default paths derive from them
        seen = vars(parser.parse_known_args(argv)[0])
        run = RunArguments(run_dir=seen["run_dir"], run_variant=seen["run_variant"])
        parser.set_defaults(**{key: run.path(name) for key, name in run_paths.items() if key not in values})
    *parsed, _config = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)  # + a Namespace(config)
    return tuple(parsed)


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

    from hf_backdoor_guard.outputs import write_text_atomic

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
    poisoned when ``poison`` has an attack and a rate > 0 (the same rows every time: seeded). A split
    not asked for, or an evaluation split the dataset does not have, is None."""
    from hf_backdoor_guard.data import (
        load_image_splits,
        resize_images,
        stratified_subset,
    )

    train_ds, eval_ds = load_image_splits(
        data.dataset_name, data.train_split, data.eval_split, data_dir=data.data_dir,
        config_name=data.dataset_config_name, revision=data.dataset_revision, image_column=data.image_column_name,
        label_column=data.label_column_name, option="dataset_name")
    splits = []
    for ds, rows in ((train_ds if train else None, data.max_train_samples),
                     (eval_ds if evaluation else None, data.max_eval_samples)):
        if ds is not None:
            ds = stratified_subset(_standard_columns(ds, data), rows, data.subset_seed)  # subset first: resize less
            if data.resize_images:
                ds = resize_images(ds, data.resize_images)
        splits.append(ds)
    attack = poison.build_attack() if poison is not None else None
    if splits[0] is not None and attack is not None and poison.poison_rate > 0:
        from hf_backdoor_guard.poisoning import poison_dataset

        splits[0] = poison_dataset(splits[0], attack, target_label=poison.target_label, rate=poison.poison_rate,
                                   seed=poison.poison_seed, poison_target_class=poison.poison_target_class)
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
