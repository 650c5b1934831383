"""Shared arguments, config parsing, data and model loading for the ``recipes/`` scripts.

Every recipe is a thin script over the package API; everything the four of them share
lives here, so nothing is written twice:

* **argument dataclasses** (each field has ``metadata={"help": ...}``, so every script
  answers ``--help``) and the table :data:`RECIPES` of which script takes which;
* **one YAML config per setup**, parsed by :func:`parse_recipe_args`::

      accelerate launch recipes/train_teacher.py recipes/configs/cifar10_badnets.yaml --num_train_epochs 1

  The config is the first positional argument; ``--field value`` flags override it.
  Top-level keys are shared by all scripts (each takes the fields it knows). A section
  named after a script (``train_teacher:``, ``generate_variations:``, ``train_student:``,
  ``evaluate:``) overrides them for that script only; this is how the teacher and the
  student get different ``output_dir`` or epochs from one file. ``extends:`` (a path or
  a list of paths, relative to the file) inherits other configs, later ones winning and
  the file itself winning over all. A key no recipe knows is an error, not ignored.
* **paths of a run**: everything a run writes lives under ``run_dir``
  (``teacher/``, ``variations/``, ``student/``, ``*_metrics.json``) unless a path is given;
* **dataset loading** (Hub id, ``imagefolder`` + ``data_dir``, or a ``save_to_disk``
  folder), column renames, subsampling and optional poisoning for research;
* **models**: from scratch by architecture name (ResNet-18 ... ResNet-152 via
  ``transformers.ResNetConfig``) or from a pretrained name/path (safetensors only);
* :class:`MultiStepLRCallback`: step decay at given epochs (the paper's MultiStep
  schedule), which ``transformers`` has no scheduler name for.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .loading import load_image_classifier
from .validation import check_int

logger = logging.getLogger(__name__)

SCRIPTS = ("train_teacher", "generate_variations", "train_student", "evaluate")
CONFIG_SUFFIXES = (".yaml", ".yml")
RESOLVED_CONFIG_NAME = "recipe_config.yaml"


# --------------------------------------------------------------------------------------
# Argument dataclasses
# --------------------------------------------------------------------------------------
@dataclass
class RunArguments:
    """Where a run lives."""

    run_dir: str = field(
        default="runs/backdoor-guard",
        metadata={
            "help": "Folder of the whole run. Unless given explicitly, the teacher is written to RUN_DIR/teacher, "
            "the variations to RUN_DIR/variations, the student to RUN_DIR/student and metrics to "
            "RUN_DIR/<model>_metrics.json."
        },
    )
    run_variant: str | None = field(
        default=None,
        metadata={
            "help": "Name of a variant of the run that shares its teacher: the variations and the student then go "
            "to RUN_DIR/variations_<variant> and RUN_DIR/student_<variant> (the fast configs use 'fast')."
        },
    )
    verbosity: str = field(
        default="info", metadata={"help": "Logging level of the recipe and the package (debug, info, warning)."}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Training: continue from the last checkpoint in output_dir when there is one "
                          "(--no_resume starts over; delete the folder to discard it)."},
    )

    def __post_init__(self):
        if isinstance(self.run_variant, str) and self.run_variant.lower() in ("", "none", "null"):
            self.run_variant = None
        if self.run_variant is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.run_variant):
            raise ValueError(f"run_variant must be a plain name (letters, digits, _ . -), got {self.run_variant!r}.")


@dataclass
class DataArguments:
    """Which images and labels to use."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id (e.g. uoft-cs/cifar10), a local dataset repo, 'imagefolder' (with "
            "--data_dir), or a folder written by Dataset(Dict).save_to_disk."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The dataset's configuration (e.g. '320px' for frgfm/imagenette)."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Data folder for load_dataset; with dataset_name=imagefolder, the root "
                                        "folder holding <split>/<class>/<image> files."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    train_split: str = field(default="train", metadata={"help": "Split the models are trained on."})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "Clean test split for C-Acc, ASR and R-Acc ('none' or null: no evaluation data)."},
    )
    rename_columns: str | None = field(
        default=None,
        metadata={
            "help": "Columns to rename so that the images are in 'image' and the labels in 'label': "
            "'old=new,old2=new2' on the command line or a mapping in YAML (CIFAR-10: img=image)."
        },
    )
    resize_images: int | None = field(
        default=None,
        metadata={
            "help": "Resize every image (shortest edge, then centre crop) to SIZE x SIZE before poisoning, as "
            "BackdoorBench does for GTSRB: a trigger then has the same pixel size in every image and at the model's "
            "input. Unset: images stay as stored."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many training rows (quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many test rows (quick runs)."}
    )
    subset_seed: int = field(default=42, metadata={"help": "Seed of the max_*_samples subsets."})

    def __post_init__(self):
        if isinstance(self.eval_split, str) and self.eval_split.lower() in ("", "none", "null"):
            self.eval_split = None
        self.rename_columns = parse_mapping(self.rename_columns, "rename_columns")
        for name in ("max_train_samples", "max_eval_samples", "resize_images"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value)


@dataclass
class PoisonArguments:
    """The backdoor: poisoning for research, and the trigger measured at evaluation."""

    attack: str | None = field(
        default=None,
        metadata={
            "help": "Attack used to poison the training set and measured by ASR/R-Acc: a name "
            "(badnets, blended, wanet, sig), 'name:key=value,...' (e.g. 'badnets:trigger=checkerboard,size=9') "
            "or, in YAML, a mapping {name: badnets, size: 9}. Unset: no poisoning, no backdoor metrics."
        },
    )
    target_label: int = field(default=0, metadata={"help": "The backdoor's target class."})
    poison_rate: float = field(
        default=0.1,
        metadata={"help": "Share of eligible training rows to poison (0 keeps the data as it is, for data that "
                          "is already poisoned or clean)."},
    )
    poison_seed: int = field(default=42, metadata={"help": "Seed choosing the poisoned rows."})
    poison_target_class: bool = field(
        default=False, metadata={"help": "Also poison rows that already have the target label."}
    )

    def __post_init__(self):
        if self.attack is not None:
            parse_attack_spec(self.attack)  # fail on a bad spec before any work
        if isinstance(self.poison_rate, bool) or not isinstance(self.poison_rate, (int, float)) or \
                not 0.0 <= self.poison_rate <= 1.0:
            raise ValueError(f"poison_rate must lie in [0, 1], got {self.poison_rate!r}.")
        if isinstance(self.target_label, bool) or not isinstance(self.target_label, int) or self.target_label < 0:
            raise ValueError(f"target_label must be a class index >= 0, got {self.target_label!r}.")

    def build_attack(self):
        """The configured ``Attack``, or None."""
        return None if self.attack is None else attack_from_spec(self.attack)


ARCHITECTURES = {
    # name: (layer_type, depths, hidden_sizes), as in microsoft/resnet-*
    "resnet-18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet-34": ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet-50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    "resnet-101": ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
    "resnet-152": ("bottleneck", [3, 8, 36, 3], [256, 512, 1024, 2048]),
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelArguments:
    """The classifier being trained (the teacher in train_teacher.py, the student in train_student.py)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from this pretrained classifier (Hub id or folder; safetensors only, its head is "
            "resized to the dataset's classes). Unset: a randomly initialised --architecture."
        },
    )
    architecture: str = field(
        default="resnet-18",
        metadata={"help": f"Architecture trained from scratch: one of {', '.join(ARCHITECTURES)} "
                          "(transformers ResNet, as microsoft/resnet-*)."},
    )
    image_size: int = field(
        default=224,
        metadata={"help": "From scratch: images are resized (shortest edge) and centre-cropped to this size."},
    )
    image_mean: list[float] | None = field(
        default=None, metadata={"help": "From scratch: normalisation mean per channel (default: ImageNet's)."}
    )
    image_std: list[float] | None = field(
        default=None, metadata={"help": "From scratch: normalisation std per channel (default: ImageNet's)."}
    )

    def __post_init__(self):
        if self.model_name_or_path is None and self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}.")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {self.image_size!r}.")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {value!r}.")


@dataclass
class AugmentArguments:
    """Random augmentation of training images (the teacher always; the student when ``augment``)."""

    flip_probability: float = field(default=0.5, metadata={"help": "Chance of a random horizontal flip (0: off)."})
    crop_padding: float = field(
        default=0.0,
        metadata={"help": "Random crop after padding each side by this fraction of the image side "
                          "(0.125 = 4 px on 32 px images, the usual CIFAR recipe; 0: no crop)."},
    )

    def __post_init__(self):
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must lie in [0, 1], got {self.flip_probability!r}.")
        if not 0.0 <= self.crop_padding < 1.0:
            raise ValueError(f"crop_padding must lie in [0, 1), got {self.crop_padding!r}.")

    @property
    def active(self) -> bool:
        return self.flip_probability > 0 or self.crop_padding > 0


@dataclass
class ScheduleArguments:
    """Step decay of the learning rate (MultiStep), on top of ``lr_scheduler_type: constant``."""

    lr_milestones: list[float] | None = field(
        default=None,
        metadata={"help": "Epochs at which the learning rate is multiplied by lr_gamma (paper: 30 50). Needs "
                          "lr_scheduler_type=constant (and no warmup); unset: the TrainingArguments schedule."},
    )
    lr_gamma: float = field(default=0.1, metadata={"help": "Factor applied at each of lr_milestones."})

    def __post_init__(self):
        if self.lr_milestones is not None:
            if not self.lr_milestones or any(m <= 0 for m in self.lr_milestones):
                raise ValueError(f"lr_milestones must be positive epochs, got {self.lr_milestones!r}.")
            if list(self.lr_milestones) != sorted(self.lr_milestones):
                raise ValueError(f"lr_milestones must be increasing, got {self.lr_milestones!r}.")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ValueError(f"lr_gamma must lie in (0, 1], got {self.lr_gamma!r}.")


@dataclass
class VariationArguments:
    """The diffusion model and how it varies every training image."""

    diffusion_model: str = field(
        default="shi-labs/versatile-diffusion",
        metadata={"help": "Hub id or folder of a supported diffusers pipeline (model_index.json decides the family)."},
    )
    diffusion_prior: str | None = field(
        default=None, metadata={"help": "Prior stage for two-stage families (Kandinsky 2.2, Flux Redux)."}
    )
    diffusion_revision: str | None = field(default=None, metadata={"help": "Hub revision of diffusion_model."})
    diffusion_variant: str | None = field(default=None, metadata={"help": "Weights variant, e.g. 'fp16'."})
    diffusion_dtype: str | None = field(
        default=None, metadata={"help": "Run the pipeline in this dtype (float16, bfloat16, float32)."}
    )
    scheduler: str | None = field(
        default=None,
        metadata={"help": "Replace the pipeline's scheduler by this diffusers class, built from its config "
                          "(e.g. DPMSolverMultistepScheduler for the fast variants)."},
    )
    num_inference_steps: int | None = field(default=None, metadata={"help": "Denoising steps (paper: 50)."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Classifier-free guidance (paper: 7.5)."})
    strength: float | None = field(default=None, metadata={"help": "Noise level of SDEdit families, in (0, 1]."})
    eta: float | None = field(default=None, metadata={"help": "DDIM eta for families whose scheduler takes it."})
    variation_size: int | None = field(
        default=None, metadata={"help": "Generation size in pixels (paper: 512); variations are resized back to "
                                        "each source's size."}
    )
    color_transfer: bool = field(
        default=True, metadata={"help": "Match each variation's Lab colour statistics to its source (paper: on)."}
    )
    num_variations: int = field(default=1, metadata={"help": "Variations per training image."})
    variation_seed: int = field(default=42, metadata={"help": "Base seed; each image gets its own generator."})
    keep_source: bool = field(
        default=False, metadata={"help": "Keep the (possibly poisoned) source image in a 'source_image' column."}
    )
    variation_batch_size: int = field(default=8, metadata={"help": "Source images per pipeline call."})
    shard_size: int | None = field(
        default=None, metadata={"help": "Source rows per resumable shard (default 64 x variation_batch_size)."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the variations dataset is written (default RUN_DIR/variations). "
                                        "Rerunning resumes it."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Publish the variations with a card after saving."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Repository of the pushed dataset."})
    hub_private: bool = field(default=False, metadata={"help": "Create the pushed repository as private."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("push_to_hub needs hub_dataset_id (user/name).")
        for name in ("variation_batch_size", "num_variations"):
            value = getattr(self, name)
            check_int(name, value)

    def variation_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ImageVariation.from_pretrained``."""
        options = {
            "dtype": self.diffusion_dtype,
            "prior": self.diffusion_prior,
            "revision": self.diffusion_revision,
            "variant": self.diffusion_variant,
            "scheduler": self.scheduler,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "strength": self.strength,
            "eta": self.eta,
            "size": self.variation_size,
        }
        options = {key: value for key, value in options.items() if value is not None}
        options.update(
            color_transfer=self.color_transfer, num_variations=self.num_variations, seed=self.variation_seed,
            keep_source=self.keep_source,
        )
        return options


@dataclass
class StudentArguments:
    """What the student learns from."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher checkpoint, a folder or Hub id (default RUN_DIR/teacher)."}
    )
    variations_dataset: str | None = field(
        default=None,
        metadata={"help": "The variations: a save_to_disk folder (default RUN_DIR/variations) or a Hub dataset id."},
    )
    variations_split: str = field(default="train", metadata={"help": "Split of a Hub variations dataset."})
    cache_teacher_logits: bool = field(
        default=False,
        metadata={"help": "Run the teacher once over the variations and train on cached logits (needs augment "
                          "off: cached logits belong to unaugmented images)."},
    )


@dataclass
class EvaluateArguments:
    """What evaluate.py measures and where it writes."""

    eval_model: str | None = field(
        default=None, metadata={"help": "Classifier to evaluate, a folder or Hub id (default RUN_DIR/student)."}
    )
    eval_attacks: list[str] | None = field(
        default=None,
        metadata={"help": "Attacks to measure, each a spec as for --attack (default: the config's attack). "
                          "In YAML a list of names, specs or mappings."},
    )
    metrics_file: str | None = field(
        default=None, metadata={"help": "Metrics JSON to write (default RUN_DIR/<model folder name>_metrics.json)."}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})

    def __post_init__(self):
        if self.eval_attacks is not None:
            for spec in self.eval_attacks:
                parse_attack_spec(spec)


def _training_arguments():
    from transformers import TrainingArguments

    return TrainingArguments


def _distillation_arguments():
    from .distillation import DistillationTrainingArguments

    return DistillationTrainingArguments


# script -> its argument dataclasses, in the order parse_recipe_args returns them
RECIPES: dict[str, tuple] = {
    "train_teacher": (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments,
                      ScheduleArguments, _training_arguments),
    "generate_variations": (RunArguments, DataArguments, PoisonArguments, VariationArguments),
    "train_student": (RunArguments, DataArguments, PoisonArguments, ModelArguments, AugmentArguments,
                      ScheduleArguments, StudentArguments, _distillation_arguments),
    "evaluate": (RunArguments, DataArguments, PoisonArguments, EvaluateArguments),
}

# Paths under run_dir each script uses unless they are given (config or command line); those
# marked True get the run_variant suffix (a variant shares the teacher, not the rest).
RUN_PATHS = {
    "train_teacher": {"output_dir": ("teacher", False)},
    "generate_variations": {"output_dir": ("variations", True)},
    "train_student": {"output_dir": ("student", True), "teacher_model_name_or_path": ("teacher", False),
                      "variations_dataset": ("variations", True)},
    "evaluate": {"eval_model": ("student", True)},
}


def run_path(run_dir: str, sub: str, variant: str | None = None, varies: bool = True) -> str:
    """``run_dir/sub`` or, for a variant, ``run_dir/sub_variant``."""
    return os.path.join(run_dir, f"{sub}_{variant}" if variant and varies else sub)


# Options that differ per recipe by nature: only allowed inside a script's section.
SECTION_ONLY = ("output_dir",)


def recipe_dataclasses(script: str) -> tuple:
    if script not in RECIPES:
        raise ValueError(f"Unknown recipe '{script}'; choose one of {SCRIPTS}.")
    return tuple(item if is_dataclass(item) else item() for item in RECIPES[script])


def recipe_fields(script: str) -> set[str]:
    return {f.name for cls in recipe_dataclasses(script) for f in fields(cls) if f.init}


# --------------------------------------------------------------------------------------
# Small value parsers (command-line strings or YAML values)
# --------------------------------------------------------------------------------------
def _scalar(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, anything else stays a string ('#ff0000' included)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_mapping(value: Any, option: str) -> dict[str, str] | None:
    """A ``{old: new}`` mapping from a dict, JSON, or ``'old=new,old2=new2'``."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{option}: {text!r} is not valid JSON ({error}).") from error
        else:
            pairs = {}
            for item in filter(None, (part.strip() for part in text.split(","))):
                key, sep, new = item.partition("=")
                if not sep or not key.strip() or not new.strip():
                    raise ValueError(f"{option}: expected 'old=new,...', got {text!r}.")
                pairs[key.strip()] = new.strip()
            value = pairs
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{option} must map column names to column names, got {value!r}.")
    return dict(value)


def parse_attack_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` from ``'badnets'``, ``'badnets:size=3,trigger=white'``, JSON or a mapping."""
    from .attacks import ATTACKS

    if isinstance(spec, str) and spec.strip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as error:
            raise ValueError(f"attack spec {spec!r} is not valid JSON ({error}).") from error
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"attack mapping {spec!r} needs a 'name' (one of {sorted(ATTACKS)}).")
    elif isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        options = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"attack spec {spec!r}: options must be 'key=value', got {item!r}.")
            options[key.strip()] = _scalar(value.strip())
    else:
        raise ValueError(f"attack must be a name, 'name:key=value,...' or a mapping, got {spec!r}.")
    name = name.strip().lower()
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack '{name}'; choose one of {sorted(ATTACKS)}.")
    return name, options


def attack_from_spec(spec: Any):
    """Build the ``Attack`` a spec names (see :func:`parse_attack_spec`)."""
    from .attacks import attack_from_name

    name, options = parse_attack_spec(spec)
    try:
        return attack_from_name(name, **options)
    except TypeError as error:  # an option the attack does not take
        raise ValueError(f"attack {name}: {error}") from error


def attack_label(spec: Any) -> str:
    """A short stable name for a spec, used as the key of metrics files: 'badnets' or 'badnets:size=9'."""
    name, options = parse_attack_spec(spec)
    if not options:
        return name
    return name + ":" + ",".join(f"{key}={options[key]}" for key in sorted(options))


def attack_keys(specs: list) -> list[str]:
    """Metrics-file keys for specs: the attack name, or the full label where two specs share a name."""
    names = [parse_attack_spec(spec)[0] for spec in specs]
    keys = [name if names.count(name) == 1 else attack_label(spec) for name, spec in zip(names, specs)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"The same attack is listed twice: {specs!r}.")
    return keys


# --------------------------------------------------------------------------------------
# YAML configs
# --------------------------------------------------------------------------------------
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that also reads '1e-3' as a float (YAML 1.1 wants '1.0e-3')."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_config(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a recipe config and everything it ``extends``, merged (the file itself wins)."""
    import yaml

    path = Path(path).expanduser()
    key = str(path.resolve())
    if key in _seen:
        chain = " -> ".join([*_seen, key])
        raise ValueError(f"Config files extend each other in a cycle: {chain}.")
    if not path.is_file():
        raise ValueError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Config file '{path}' is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"Config file '{path}' must hold a mapping of option: value, got {type(data).__name__}.")
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ValueError(f"'extends' in '{path}' must be a path or a list of paths, got {parents!r}.")
    merged: dict[str, Any] = {}
    for parent in parents:
        merge_config(merged, load_config(path.parent / parent, (*_seen, key)))
    return merge_config(merged, data)


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place: script sections key by key, any other key replaced whole."""
    for key, value in update.items():
        if key in SCRIPTS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError(f"Section '{key}' must be a mapping of option: value, got {value!r}.")
            base[key] = {**(base.get(key) or {}), **value}
        else:
            base[key] = value  # attack mappings etc. replace, never merge: options of two attacks must not mix
    return base


def config_for(config: dict[str, Any], script: str, source: str = "config") -> dict[str, Any]:
    """The options ``script`` takes from a merged config; unknown keys raise ``ValueError``."""
    own = recipe_fields(script)
    known = set().union(*(recipe_fields(name) for name in SCRIPTS))
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key in SCRIPTS:
            continue
        if key not in known:
            raise ValueError(f"Unknown option '{key}' in {source}: no recipe takes it (a typo?).")
        if key in SECTION_ONLY:
            raise ValueError(
                f"'{key}' at the top level of {source} would send every recipe's output to one folder; set it in "
                f"a section (e.g. train_teacher: {{{key}: ...}}) or leave it to run_dir."
            )
        if key in own:
            values[key] = value
    section = config.get(script) or {}
    for key, value in section.items():
        if key not in own:
            raise ValueError(f"Option '{key}' in section '{script}' of {source} is not an option of {script}.py.")
        values[key] = value
    return values


def parse_recipe_args(script: str, argv: list[str] | None = None, description: str | None = None) -> tuple:
    """Parse ``[CONFIG.yaml] [--option value ...]`` into the script's argument dataclasses.

    Precedence, lowest first: dataclass defaults, the run-dir paths of :data:`RUN_PATHS`,
    the config (shared keys, then the script's section), the command line.
    Returns the dataclass instances in the order of :data:`RECIPES` ``[script]``.
    """
    from transformers import HfArgumentParser

    types = recipe_dataclasses(script)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if argv and not argv[0].startswith("-"):
        config_path = argv.pop(0)
        if not config_path.endswith(CONFIG_SUFFIXES):
            raise ValueError(
                f"The first argument must be a YAML config ({'/'.join(CONFIG_SUFFIXES)}), got {config_path!r}; "
                "options are given as --name value."
            )
    parser = HfArgumentParser(
        types,
        prog=f"{script}.py",
        description=description,
        usage="%(prog)s [CONFIG.yaml] [--option value ...]",
    )
    values = config_for(load_config(config_path), script, f"'{config_path}'") if config_path else {}

    # run_dir / run_variant may come from the command line: read them first, the paths derive from them.
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--run_dir", "--run-dir", dest="run_dir")
    peek.add_argument("--run_variant", "--run-variant", dest="run_variant")
    peeked, _ = peek.parse_known_args(argv)
    run_dir = peeked.run_dir or values.get("run_dir") or RunArguments.run_dir
    variant = peeked.run_variant if peeked.run_variant is not None else values.get("run_variant")
    if isinstance(variant, str) and variant.lower() in ("", "none", "null"):
        variant = None
    defaults = {name: run_path(run_dir, sub, variant, varies) for name, (sub, varies) in RUN_PATHS[script].items()}
    defaults.update(values)
    for action in parser._actions:
        if action.dest in defaults:
            action.default = defaults[action.dest]
            action.required = False
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def save_resolved_config(output_dir: str | os.PathLike, script: str, *args: Any) -> Path:
    """Write the options a run actually used to ``output_dir/recipe_config.yaml`` (for reproducibility)."""
    import yaml

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {}
    for item in args:
        if hasattr(item, "to_dict"):  # TrainingArguments: enums become plain strings
            values.update(item.to_dict())
        else:
            values.update(asdict(item))
    values = json.loads(json.dumps(values, default=str))
    path = output_dir / RESOLVED_CONFIG_NAME
    header = f"# Options {script}.py ran with (defaults, config and command line resolved).\n"
    path.write_text(header + yaml.safe_dump(values, sort_keys=True), encoding="utf-8")
    return path


def process_state():
    """accelerate's ``PartialState`` for scripts without a Trainer.

    accelerate only forms a multi-process CPU group when asked for CPU, so a ``torchrun``
    launch on a machine without CUDA would otherwise give N independent processes.
    """
    import torch
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=launched and not torch.cuda.is_available())


def setup_logging(level: str = "info", main_process: bool = True) -> None:
    """Log the recipe and the package at ``level`` (warnings only on non-main processes)."""
    import datasets
    import transformers

    numeric = logging.getLevelName(level.upper()) if main_process else logging.WARNING
    if not isinstance(numeric, int):
        raise ValueError(f"log_level must be debug, info, warning or error, got {level!r}.")
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=numeric,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logging.getLogger("hf_backdoor_guard").setLevel(numeric)
    transformers.utils.logging.set_verbosity(max(numeric, logging.WARNING))
    datasets.utils.logging.set_verbosity(max(numeric, logging.WARNING))


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def _is_saved_dataset(path: Path) -> str | None:
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def load_split(name_or_path: str, split: str | None, *, config_name: str | None = None,
               data_dir: str | None = None, revision: str | None = None, option: str = "dataset_name"):
    """One split of a Hub dataset, a local dataset repo / imagefolder, or a ``save_to_disk`` folder.

    A saved single ``Dataset`` has no splits: it is returned whatever ``split`` says.
    """
    import datasets

    if not name_or_path:
        raise ValueError(f"{option} is required: a Hub dataset id, 'imagefolder' with data_dir, or a saved folder.")
    path = Path(name_or_path).expanduser()
    saved = _is_saved_dataset(path) if path.is_dir() else None
    if saved == "dict":
        loaded = datasets.load_from_disk(str(path))
        if split not in loaded:
            raise ValueError(f"{option}: '{path}' has splits {sorted(loaded)}, not '{split}'.")
        return loaded[split]
    if saved == "dataset":
        return datasets.load_from_disk(str(path))
    if name_or_path == "imagefolder" and not data_dir:
        raise ValueError(f"{option}=imagefolder needs data_dir (the folder with <split>/<class>/<image> files).")
    try:
        return datasets.load_dataset(name_or_path, config_name, data_dir=data_dir, split=split, revision=revision)
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"{option}: '{name_or_path}' has no split '{split}' ({error}).") from error
        raise


class ResizeImages:
    """``Dataset.map`` function: shortest edge to ``size``, centre crop to ``size x size``, RGB, lossless PNG."""

    def __init__(self, size: int, column: str = "image"):
        self.size = size
        self.column = column

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        from .images import encode_png, load_rgb

        out = []
        for image in batch[self.column]:
            image = load_rgb(image, column=self.column)
            scale = self.size / min(image.size)
            width, height = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
            image = image.resize((width, height), Image.BICUBIC)
            left, top = (width - self.size) // 2, (height - self.size) // 2
            out.append(encode_png(image.crop((left, top, left + self.size, top + self.size))))
        return {self.column: out}


def _resize(ds, size: int, what: str):
    logger.info("Resizing the %s images to %dx%d", what, size, size)
    return ds.map(ResizeImages(size), batched=True, batch_size=256, features=ds.features.copy(),
                  desc=f"Resizing {what} images to {size}px")


def _prepare_columns(ds, data_args: DataArguments, what: str):
    from .validation import check_dataset

    renames = data_args.rename_columns or {}
    missing = [old for old in renames if old not in ds.column_names]
    if missing:
        raise ValueError(
            f"rename_columns names {missing}, which the {what} split does not have (columns {ds.column_names})."
        )
    if renames:
        ds = ds.rename_columns(renames)
    try:
        check_dataset(ds, "image", "label")
    except ValueError as error:
        raise ValueError(f"{what} split: {error} Use rename_columns (e.g. 'img=image').") from error
    return ds


def _finish(ds, data_args: DataArguments, count: int | None, what: str):
    ds = _subset(ds, count, data_args.subset_seed)  # subset first: resize only the rows used
    if data_args.resize_images:
        ds = _resize(ds, data_args.resize_images, what)
    return ds


def _subset(ds, count: int | None, seed: int):
    if count is None or count >= len(ds):
        return ds
    import numpy as np

    rows = np.sort(np.random.default_rng(seed).permutation(len(ds))[:count])
    return ds.select(rows, keep_in_memory=True)


def _main_process_first(main_process_first=None):
    if main_process_first is not None:
        return main_process_first()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def load_train_dataset(data_args: DataArguments, poison_args: PoisonArguments | None = None,
                       main_process_first=None):
    """The training split, renamed, subsampled and (if an attack is set and the rate > 0) poisoned.

    The same arguments give the same rows every time (seeded), so the teacher, the
    variations and the student all see one poisoned set without storing it twice.
    ``main_process_first`` (a context-manager factory, e.g. ``training_args.main_process_first``)
    lets the main process fill the ``datasets`` cache before the others read it.
    """
    from .poisoning import poison_dataset

    ds = load_split(data_args.dataset_name, data_args.train_split, config_name=data_args.dataset_config_name,
                    data_dir=data_args.data_dir, revision=data_args.dataset_revision)
    ds = _prepare_columns(ds, data_args, f"train ('{data_args.train_split}')")
    with _main_process_first(main_process_first):
        ds = _finish(ds, data_args, data_args.max_train_samples, "train")
    if poison_args is not None and poison_args.attack is not None and poison_args.poison_rate > 0:
        attack = poison_args.build_attack()
        with _main_process_first(main_process_first):
            ds = poison_dataset(ds, attack, target_label=poison_args.target_label, rate=poison_args.poison_rate,
                                seed=poison_args.poison_seed, poison_target_class=poison_args.poison_target_class)
        logger.info("Poisoned %d of %d training rows with %r (target %d).", sum(ds["poisoned"]), len(ds), attack,
                    poison_args.target_label)
    return ds


def load_eval_dataset(data_args: DataArguments, main_process_first=None):
    """The clean test split (renamed, subsampled), or None when ``eval_split`` is unset."""
    if data_args.eval_split is None:
        return None
    ds = load_split(data_args.dataset_name, data_args.eval_split, config_name=data_args.dataset_config_name,
                    data_dir=data_args.data_dir, revision=data_args.dataset_revision)
    ds = _prepare_columns(ds, data_args, f"eval ('{data_args.eval_split}')")
    with _main_process_first(main_process_first):
        return _finish(ds, data_args, data_args.max_eval_samples, "eval")


def label_names(ds) -> list[str]:
    """Class names from a ``ClassLabel`` column, else '0', '1', ... up to the largest label."""
    from datasets import ClassLabel

    feature = ds.features["label"]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(max(ds["label"]) + 1)]


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def _resnet_processor(image_size: int, mean: list[float], std: list[float]):
    """Shortest-edge resize to ``image_size`` + centre crop + normalisation (microsoft/resnet style)."""
    try:
        import torchvision  # noqa: F401

        from transformers import ConvNextImageProcessor as Processor
    except ImportError:  # without torchvision transformers uses the PIL implementation anyway
        from transformers import ConvNextImageProcessorPil as Processor
    return Processor(size={"shortest_edge": image_size}, crop_pct=1.0, image_mean=list(mean), image_std=list(std))


def build_classifier(model_args: ModelArguments, names: list[str], seed: int = 42):
    """``(model, image_processor)``: a pretrained classifier with a head for ``names``, or a new ResNet."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    if model_args.model_name_or_path:
        source = model_args.model_name_or_path
        logger.info("Fine-tuning %s for %d classes", source, len(names))
        model, processor = load_image_classifier(
            source, "the classifier to fine-tune", num_labels=len(names), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True,
        )
        if processor is None:
            raise ValueError(f"model_name_or_path '{source}' has no image processor.")
        return model, processor
    layer_type, depths, hidden_sizes = ARCHITECTURES[model_args.architecture]
    config = ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=hidden_sizes, depths=depths, layer_type=layer_type,
        downsample_in_bottleneck=False, num_labels=len(names), id2label=id2label, label2id=label2id,
    )
    torch.manual_seed(seed)
    model = ResNetForImageClassification(config)
    logger.info("New %s (%.1fM parameters) for %d classes", model_args.architecture,
                sum(p.numel() for p in model.parameters()) / 1e6, len(names))
    processor = _resnet_processor(model_args.image_size, model_args.image_mean or IMAGENET_MEAN,
                                  model_args.image_std or IMAGENET_STD)
    return model, processor


def load_classifier(name_or_path: str, what: str = "model"):
    """``(model, image_processor)`` of a saved classifier (safetensors only, no remote code)."""
    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ValueError(f"{what} '{name_or_path}' is a folder without config.json: not a saved classifier.")
    model, processor = load_image_classifier(name_or_path, what)
    if processor is None:
        raise ValueError(f"{what} '{name_or_path}' has no image processor.")
    return model, processor


def train_transform(image_processor, augment_args: AugmentArguments, teacher_image_processor=None,
                    enabled: bool = True):
    """The training-time ``ImageClassificationTransform`` with this run's flip and crop (none if not ``enabled``)."""
    from .transforms import ImageClassificationTransform

    return ImageClassificationTransform(
        image_processor, augment=enabled and augment_args.active, teacher_image_processor=teacher_image_processor,
        flip_probability=augment_args.flip_probability, crop_padding=augment_args.crop_padding,
    )


def load_variation(options: VariationArguments, device=None):
    """The ``ImageVariation`` the options describe, on ``device``."""
    from .variations import ImageVariation

    return ImageVariation.from_pretrained(options.diffusion_model, device=device, **options.variation_options())


# --------------------------------------------------------------------------------------
# MultiStep learning-rate schedule
# --------------------------------------------------------------------------------------
class MultiStepFactor:
    """``gamma ** (number of milestones reached)`` at an optimizer step; a picklable LambdaLR function."""

    def __init__(self, milestone_steps: list[int], gamma: float):
        self.milestone_steps = list(milestone_steps)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestone_steps, step)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MultiStepLRCallback(_callback_base()):
    """Multiply the learning rate by ``gamma`` at each of ``milestones`` (in epochs).

    ``transformers`` has no MultiStep scheduler name, so this turns the trainer's
    ``constant`` schedule (a ``LambdaLR`` with factor 1) into step decay when training
    starts: the schedule's factor function is replaced, nothing else. Milestones become
    optimizer steps with the real number of update steps per epoch (after sharding
    across processes and gradient accumulation). Resumed runs keep the step count, so
    the decay continues where it stopped. Works with any ``Trainer``
    (``train_classifier``, ``DistillationTrainer``) through ``callbacks=``.
    """

    def __init__(self, milestones: list[float], gamma: float = 0.1):
        if not milestones or any(m <= 0 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {milestones!r}.")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}.")
        self.milestones = [float(m) for m in milestones]
        self.gamma = float(gamma)
        self.milestone_steps: list[int] | None = None

    @staticmethod
    def check_args(args) -> None:
        """The schedule it modifies must be the plain constant one."""
        kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if kind != "constant":
            raise ValueError(
                f"lr_milestones needs lr_scheduler_type=constant (got {kind!r}): the milestones replace the schedule."
            )
        if args.warmup_steps:
            raise ValueError("lr_milestones does not combine with warmup; set warmup_steps to 0.")

    def on_train_begin(self, args, state, control, lr_scheduler=None, train_dataloader=None, **kwargs):
        from torch.optim.lr_scheduler import LambdaLR

        self.check_args(args)
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
        if not isinstance(lr_scheduler, LambdaLR):
            raise ValueError(f"MultiStepLRCallback needs the trainer's LambdaLR schedule, got {type(lr_scheduler)}.")
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
        else:  # max_steps training on an iterable dataset: fall back to the trainer's estimate
            steps_per_epoch = max(1, round(state.max_steps / max(state.num_train_epochs, 1)))
        self.milestone_steps = [int(round(m * steps_per_epoch)) for m in self.milestones]
        factor = MultiStepFactor(self.milestone_steps, self.gamma)
        lr_scheduler.lr_lambdas = [factor] * len(lr_scheduler.optimizer.param_groups)
        logger.info("MultiStep learning rate: x%g at epochs %s (optimizer steps %s, %d per epoch)", self.gamma,
                    self.milestones, self.milestone_steps, steps_per_epoch)


def schedule_callbacks(schedule_args: ScheduleArguments, training_args) -> list:
    """The callbacks that implement ``schedule_args`` (empty when no milestones are set)."""
    if not schedule_args.lr_milestones:
        return []
    MultiStepLRCallback.check_args(training_args)
    return [MultiStepLRCallback(schedule_args.lr_milestones, schedule_args.lr_gamma)]


# --------------------------------------------------------------------------------------
# Small run helpers
# --------------------------------------------------------------------------------------
def metrics_path(run_args: RunArguments, model: str) -> str:
    """``RUN_DIR/<last path component of model>_metrics.json``."""
    name = Path(str(model).rstrip("/\\")).name or "model"
    return os.path.join(run_args.run_dir, f"{name}_metrics.json")


def last_checkpoint(training_args, run_args: RunArguments) -> str | None:
    """The checkpoint to resume from: the explicit one, else the newest in ``output_dir`` if ``resume``."""
    from transformers.trainer_utils import get_last_checkpoint

    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if run_args.resume and os.path.isdir(training_args.output_dir):
        found = get_last_checkpoint(training_args.output_dir)
        if found:
            logger.info("Resuming from %s (pass --no_resume to start over).", found)
        return found
    return None


def run_training(trainer, script: str, run_args: RunArguments, training_args, all_args: tuple) -> dict[str, float]:
    """Train (resuming if possible), save the model and processor, evaluate, save metrics; the same for
    the teacher and the student. Returns the final evaluation metrics (empty without eval data)."""
    result = trainer.train(resume_from_checkpoint=last_checkpoint(training_args, run_args))
    trainer.save_model()  # model + image processor, main process only
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        save_resolved_config(training_args.output_dir, script, *all_args)
    return metrics


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = [
    "SCRIPTS", "RECIPES", "RUN_PATHS", "ARCHITECTURES",
    "RunArguments", "DataArguments", "PoisonArguments", "ModelArguments", "AugmentArguments", "ScheduleArguments",
    "VariationArguments", "StudentArguments", "EvaluateArguments",
    "parse_recipe_args", "run_path", "load_config", "merge_config", "config_for", "save_resolved_config",
    "setup_logging", "process_state",
    "parse_attack_spec", "attack_from_spec", "attack_label", "attack_keys", "parse_mapping",
    "load_split", "load_train_dataset", "load_eval_dataset", "label_names",
    "build_classifier", "load_classifier", "train_transform", "load_variation",
    "MultiStepLRCallback", "MultiStepFactor", "schedule_callbacks", "metrics_path", "write_json",
    "last_checkpoint", "run_training",
]
