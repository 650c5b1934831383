"""``DefendConfig``: every option of ``backdoor-guard defend`` (and of the demo built on it), checked before work.

The fields are the command's flags (``--num-train-epochs`` is ``num_train_epochs``) and
the keys of its ``--config FILE.yaml``; flags override the file. :data:`STAGE_OPTIONS`
says which options decide which stage's cached output, so a rerun with another value
is refused naming that option.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..validation import check_choice, check_fraction, check_int, check_number, check_seed

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
DEFAULT_DIFFUSION_MODEL = "lambdalabs/sd-image-variations-diffusers"
DETECTION_SCORES = ("kl", "disagreement", "label_drop", "combined")

# What the default diffusion model asks for, said when it cannot run (see check_diffusion_model).
_DEFAULT_MODEL_NEEDS = (
    f"The default --diffusion-model {DEFAULT_DIFFUSION_MODEL} (Stable Diffusion image variations, "
    "about 5 GB of weights downloaded from the Hub once) needs a CUDA GPU: at 512 px it makes roughly 3-5 "
    "images/s on an H100 (BENCHMARKS.md), so 50,000 images take 3-5 hours there and weeks on a CPU. "
    "Without a GPU or Hub access pass --diffusion-model embedded (the small model shipped with the package, "
    "for digit-like 16x16 images), or a local folder holding a saved diffusers pipeline."
)


def _help(text: str, **kwargs: Any):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class DefendConfig:
    """The options of one ``defend`` run; see each field's ``help``."""

    # data
    dataset: str | None = _help("Hub dataset id, 'imagefolder' (with --data-dir) or a save_to_disk folder.",
                                default=None)
    data_dir: str | None = _help("imagefolder: the folder holding <split>/<class>/<image> files.", default=None)
    dataset_config: str | None = _help("Hub dataset configuration name.", default=None)
    split: str = _help("The (possibly poisoned) training split.", default="train")
    eval_split: str | None = _help("The clean evaluation split (default: 'test' or 'validation' if present).",
                                   default=None)
    train_val_split: float = _help("When the dataset has no evaluation split (no test/validation and no "
                                   "--eval-split): the share of the training split held out, stratified and "
                                   "seeded, for evaluation, as transformers' image-classification example does "
                                   "(its train_val_split).", default=0.15)
    image_column: str = _help("Column holding the images.", default="image")
    label_column: str = _help("Column holding the integer / ClassLabel labels.", default="label")
    max_train_rows: int | None = _help("Use a class-stratified subset of this many training rows.", default=None)
    max_eval_rows: int | None = _help("Use a class-stratified subset of this many evaluation rows.", default=None)
    # models
    model: str = _help("Classifier: an architecture (small-resnet, resnet-18 ... resnet-152), a local model "
                       "folder or a Hub id; a saved model is the starting point of teacher and student.",
                       default="resnet-18")
    image_size: int | None = _help("New architectures: the side images are resized to.", default=None)
    width: int | None = _help("small-resnet: its channel width.", default=None)
    num_train_epochs: float = _help("Teacher epochs.", default=12.0)
    student_epochs: float | None = _help("Student epochs, counted in passes over the source rows "
                                         "(default: --num-train-epochs).", default=None)
    batch_size: int = _help("Training batch size per process.", default=32)
    learning_rate: float = _help("AdamW learning rate (cosine schedule).", default=2e-3)
    student_learning_rate: float | None = _help("The students' learning rate (default: --learning-rate).",
                                                default=None)
    weight_decay: float = _help("AdamW weight decay.", default=1e-4)
    augment: bool = _help("Random flip and crop for the teacher (the student never: its logits are cached).",
                          default=False)
    seed: int = _help("Seeds subsets, poisoning, initial weights, data order and variation noise.", default=0)
    device: str | None = _help("'cuda' or 'cpu' (default: cuda when available).", default=None)
    # variations
    diffusion_model: str = _help("Diffusers image-variation pipeline (Hub id or folder), or a model shipped with "
                                 "the package: 'embedded' (digits) or 'embedded-fashion-mnist'.",
                                 default=DEFAULT_DIFFUSION_MODEL)
    diffusion_prior: str | None = _help("Two-stage families (Kandinsky, Flux Redux): the prior pipeline.",
                                        default=None)
    variation_options: dict = _help("ImageVariation options (num_variations, strength, num_inference_steps, ...).",
                                    default_factory=dict)
    variation_batch_size: int = _help("Images per diffusion call.", default=64)
    variation_shard_size: int | None = _help("Source rows per resumable shard (default 64 batches).", default=None)
    # distillation and detection
    alpha: float = _help("Weight of the distillation term (1: soft labels only; the paper's 0.5 keeps the poisoned "
                         "rows' hard labels, which can carry a backdoor back).", default=1.0)
    temperature: float = _help("Distillation temperature.", default=4.0)
    teacher_logits: str = _help("'mean': distil every variation towards the teacher's mean logits over its "
                                "source image's variations; 'own': towards its own.", default="mean")
    detection_score: str = _help(f"Suspicion score: one of {', '.join(DETECTION_SCORES)}.", default="combined")
    detection_threshold: float | None = _help("Flag rows at this score (default: Otsu's split).", default=None)
    detection_budget: float | None = _help("Flag this share of rows instead of a threshold.", default=None)
    gallery_size: int = _help("Most suspicious images shown in the report's gallery.", default=16)
    # research mode
    attack: str | None = _help("Research: poison the training split with this attack first, report ASR and R-Acc.",
                               default=None)
    attack_options: dict = _help("Research: options of the attack.", default_factory=dict)
    target_label: int = _help("Research: the backdoor's target class.", default=0)
    poison_rate: float = _help("Research: share of eligible rows poisoned.", default=0.1)
    poison_options: dict = _help("Research: other poison_dataset options.", default_factory=dict)
    baselines: bool = _help("Also train 'variations_ce' (plain cross-entropy on the variations).", default=False)
    # outputs
    output_dir: str = _help("Folder for model/, cleaned/, detection.json, report.md and the stage caches.",
                            default="backdoor-guard-defend")
    push_to_hub: str | None = _help("Publish the robust model to this Hub repo with its card.", default=None)
    overwrite: bool = _help("Start over in an output folder of an earlier run (removes only what it wrote).",
                            default=False)

    def __post_init__(self):
        for name in ("split", "image_column", "label_column", "model", "diffusion_model", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
        self.train_val_split = check_number("train_val_split", self.train_val_split, 0, 1, low_inclusive=False,
                                            high_inclusive=False)
        for name in ("max_train_rows", "max_eval_rows"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=20)
        for name in ("image_size", "width"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=2)
        self.num_train_epochs = check_number("num_train_epochs", self.num_train_epochs, 0, None, low_inclusive=False)
        if self.student_epochs is not None:
            self.student_epochs = check_number("student_epochs", self.student_epochs, 0, None, low_inclusive=False)
        check_int("batch_size", self.batch_size)
        check_number("learning_rate", self.learning_rate, 0, None, low_inclusive=False)
        if self.student_learning_rate is not None:
            check_number("student_learning_rate", self.student_learning_rate, 0, None, low_inclusive=False)
        check_number("weight_decay", self.weight_decay, 0, None)
        check_seed("seed", self.seed)
        if self.device is not None:
            check_choice("device", self.device, ("cuda", "cpu"))
        for name in ("variation_options", "attack_options", "poison_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping of option -> value, got {getattr(self, name)!r}.")
        check_variation_options(self.variation_options, self.embedded)
        check_int("variation_batch_size", self.variation_batch_size)
        if self.variation_shard_size is not None:
            check_int("variation_shard_size", self.variation_shard_size)
        check_fraction("alpha", self.alpha)
        check_number("temperature", self.temperature, 0, None, low_inclusive=False)
        check_choice("teacher_logits", self.teacher_logits, ("mean", "own"))
        check_choice("detection_score", self.detection_score, DETECTION_SCORES)
        if self.detection_threshold is not None and self.detection_budget is not None:
            raise ValueError("Pass detection_threshold or detection_budget, not both.")
        if self.detection_threshold is not None:
            check_number("detection_threshold", self.detection_threshold)
        if self.detection_budget is not None:
            budget = check_number("detection_budget", self.detection_budget)
            if not 0 < budget < 1:  # 1 flags every row and leaves nothing to train on; 0 flags none
                raise ValueError(f"detection_budget must lie in (0, 1), the share of training rows flagged: a budget "
                                 f"of 1 flags every row, leaving none to train on (and 0 flags none); got "
                                 f"{self.detection_budget!r}.")
        check_int("gallery_size", self.gallery_size)
        check_int("target_label", self.target_label, minimum=0)
        check_fraction("poison_rate", self.poison_rate)
        for name in ("augment", "baselines", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.attack is not None:
            from ..attacks import ATTACKS

            ATTACKS[self.attack]  # ValueError listing the registered attacks
        elif self.attack_options or self.poison_options:
            raise ValueError("attack_options / poison_options need --attack (research mode).")
        if self.push_to_hub is not None:
            from ..hub import _check_repo_id

            _check_repo_id(self.push_to_hub)

    # --- sources ---------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, config_file: str | os.PathLike | None = None, **overrides: Any) -> DefendConfig:
        """Defaults, then ``config_file`` (YAML/JSON mapping of field names), then ``overrides``."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(read_config_file(config_file))
        values.update(overrides)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown}; the options are {names}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- derived ---------------------------------------------------------------------------
    @property
    def research(self) -> bool:
        return self.attack is not None

    @property
    def embedded(self) -> bool:
        """Whether the diffusion model is one shipped with the package (see :attr:`embedded_model`)."""
        from ..embedded import EMBEDDED_MODEL_OPTIONS

        return self.diffusion_model in EMBEDDED_MODEL_OPTIONS

    @property
    def embedded_model(self) -> str | None:
        """The shipped model ``--diffusion-model`` names (``"digits"``, ``"fashion-mnist"``), or None."""
        from ..embedded import EMBEDDED_MODEL_OPTIONS

        return EMBEDDED_MODEL_OPTIONS.get(self.diffusion_model)

    def resolved_device(self) -> str:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; pass --device cpu.")
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


# ImageVariation options that defend already passes from its own flags (variation_factory in defend.py):
# a second value in variation_options would clash with them or be silently dropped, so the flag is named.
_SET_BY_DEFEND = {"seed": "--seed", "device": "--device", "prior": "--diffusion-prior",
                  "image_column": "--image-column (defend renames it to 'image' first)"}
_FLAGS = ("resize_to_source", "color_transfer", "channels_last", "torch_compile", "stochastic")


def check_variation_options(options: dict, embedded: bool) -> None:
    """``variation_options`` hold options ``ImageVariation`` takes, with valid values.

    Checked when the config is built, so that a typo or a zero fails before the data and
    teacher stages instead of inside the variations stage. The names are those of
    ``ImageVariation.embedded`` or ``ImageVariation.from_pretrained`` (which defend calls).
    """
    if not options:
        return  # nothing to check, and no need to import the variations package (torch, diffusers)
    from ..variations.options import (EMBEDDED_OPTIONS, GENERIC_OPTIONS, INIT_OPTIONS, PRETRAINED_OPTIONS,
                                      check_generic_options, resolve_dtype)

    extra = EMBEDDED_OPTIONS if embedded else PRETRAINED_OPTIONS
    known = [name for name in INIT_OPTIONS + extra if name not in _SET_BY_DEFEND and name != "trust_remote_code"]
    for name, value in options.items():
        if name in _SET_BY_DEFEND:
            raise ValueError(f"variation_options[{name!r}] is set by {_SET_BY_DEFEND[name]}; remove it from "
                             "variation_options.")
        if name == "trust_remote_code":
            raise ValueError("variation_options['trust_remote_code'] is refused: hf-backdoor-guard never runs code "
                             "from a model repo or folder.")
        if name in EMBEDDED_OPTIONS + PRETRAINED_OPTIONS and name not in known:
            other = "--diffusion-model embedded" if name in EMBEDDED_OPTIONS else "a pipeline folder or Hub id"
            raise ValueError(f"variation option {name!r} applies with {other} only; the options here are "
                             f"{sorted(known)}.")
        if name not in known:
            raise ValueError(f"unknown variation option {name!r}; the options are {sorted(known)}.")
        try:
            if name in GENERIC_OPTIONS:
                check_generic_options(**{name: value})  # one at a time: each message names its option
            elif name == "dtype":
                resolve_dtype(value)
        except ValueError as error:
            text = str(error)
            detail = text[len(name):] if text.startswith(name) else f": {text}"
            raise ValueError(f"variation_options[{name!r}]{detail}") from None
        if name in _FLAGS and not isinstance(value, bool):
            raise ValueError(f"variation_options[{name!r}] must be true or false, got {value!r}.")
    if embedded and options.get("speed") is not None:
        from ..embedded import EMBEDDED_SPEED_PRESETS

        if options["speed"] not in EMBEDDED_SPEED_PRESETS:
            raise ValueError(f"variation_options['speed'] must be one of {sorted(EMBEDDED_SPEED_PRESETS)} for the "
                             f"embedded model, got {options['speed']!r}.")


def _config_loader():
    """PyYAML's safe loader, reading numbers as YAML 1.2 does and refusing a key given twice.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3`` and
    ``2E-4`` would be strings, and learning rates are written that way.
    """
    import re

    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # A YAML mapping silently keeps the last of two equal keys; a config file's user meant one of them.
            if isinstance(node, yaml.MappingNode):
                lines: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may override: that is their use
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in lines:
                            raise _DuplicateKey(key, lines[key], key_node.start_mark.line + 1)
                        lines[key] = key_node.start_mark.line + 1
                    except TypeError:  # unhashable: the base class says so
                        continue
            return super().construct_mapping(node, deep)

    # Added after PyYAML's own resolvers, so an integer stays an int. Digits, then a dot or not, then an
    # exponent whose sign is optional: what YAML 1.1 misses.
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    return ConfigLoader


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


def _expects_number(annotation) -> bool:
    parts = {part.strip() for part in str(annotation).split("|")}
    return bool(parts & {"int", "float"})


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or JSON) file holding one mapping of option names (dashes or underscores) to values.

    Floats are read as YAML 1.2 reads them (``1e-3`` is a number); a key given twice is refused.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_config_loader())
    except _DuplicateKey as error:
        lines = f"line {error.first}" if error.first == error.second else f"lines {error.first} and {error.second}"
        raise ValueError(f"config file {path}: key {error.key!r} is given twice ({lines}); YAML would keep only the "
                         "last value. Remove one.") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}.")
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    annotations = {item.name: item.type for item in dataclasses.fields(DefendConfig)}
    for name, value in values.items():
        if isinstance(value, str) and _expects_number(annotations.get(name, "")):
            raise ValueError(f"config file {path}: {name} must be a number, but the file gives the string {value!r} "
                             "(YAML reads a quoted value as text; write the number without quotes).")
    return values


def check_diffusion_model(config: DefendConfig) -> None:
    """Check ``--diffusion-model`` before any work: a supported pipeline that can be reached and run.

    Reads only ``model_index.json`` (local folder, or the Hub / its cache). The default
    model without a GPU, or out of reach, is refused with what it needs.
    """
    if config.embedded:
        if config.diffusion_prior is not None:
            raise ValueError("The embedded diffusion model takes no diffusion_prior.")
        from ..embedded import embedded_model_dir

        embedded_model_dir(config.embedded_model)  # shipped in this copy of the package
        return
    import torch

    from ..variations.adapters import adapter_for
    from ..variations.core import pipeline_class_name  # reads model_index.json only; no weights load

    is_default = config.diffusion_model == DEFAULT_DIFFUSION_MODEL
    if is_default and not torch.cuda.is_available():
        raise ValueError(f"No CUDA GPU is available. {_DEFAULT_MODEL_NEEDS}")
    try:
        class_name = pipeline_class_name(config.diffusion_model, None)
    except ValueError as error:
        hint = f" {_DEFAULT_MODEL_NEEDS}" if is_default else ""
        raise ValueError(f"--diffusion-model {config.diffusion_model}: {error}{hint}") from error
    adapter = adapter_for((class_name,), source=f"{config.diffusion_model}/model_index.json")
    if adapter.prior_classes and config.diffusion_prior is None:
        raise ValueError(f"--diffusion-model {config.diffusion_model} holds a {class_name}, which needs its prior "
                         f"stage: pass --diffusion-prior (a {' or '.join(adapter.prior_classes)}).")
    try:
        adapter.speed_preset(config.variation_options.get("speed"))
    except ValueError as error:
        raise ValueError(f"variation_options['speed']: {error}") from None
    for option, source in (("--diffusion-model", config.diffusion_model),
                           ("--diffusion-prior", config.diffusion_prior)):
        if source is not None and Path(source).is_dir():  # a Hub id's weights arrive only when it loads
            check_pipeline_weights(Path(source), option)
    if not torch.cuda.is_available():
        logger.warning("No CUDA GPU: %s will generate the variations on the CPU, which is slow for full-size "
                       "diffusion models.", config.diffusion_model)


def check_pipeline_weights(folder: Path, option: str = "--diffusion-model") -> None:
    """Each component of a saved diffusers pipeline that is a model holds safetensors with readable headers.

    The pipeline loads with ``use_safetensors=True`` (variations/adapters.py), so pickle-only
    weights or a corrupt file would fail only when the variations stage starts. Components
    are those ``model_index.json`` lists; a model's sub-folder is the one with a ``config.json``
    (schedulers, tokenizers and feature extractors have other config files and no weights).
    """
    from ..loading import PICKLE_SUFFIXES, check_safetensors_weights

    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{option} {folder}: cannot read {index_file} ({error}).") from error
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or not any(entry):
            continue  # bookkeeping, a setting, or an optional component left out ([null, null])
        sub = folder / name
        if not sub.is_dir():
            raise ValueError(f"{option} {folder}: model_index.json lists the component '{name}', but there is no "
                             f"{sub} folder.")
        holds_weights = (sub / "config.json").is_file() or any(
            path.suffix in PICKLE_SUFFIXES + (".safetensors",) for path in sub.iterdir())
        if holds_weights:
            check_safetensors_weights(sub, f"{option} {folder}, component '{name}'",
                                      "pipeline.save_pretrained(folder, safe_serialization=True)")


# Which options decide which stage's output (a rerun with another value is refused, naming it).
STAGE_OPTIONS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "dataset_config", "split", "eval_split", "train_val_split", "image_column",
             "label_column", "max_train_rows", "max_eval_rows", "seed", "attack", "attack_options", "target_label",
             "poison_rate", "poison_options"),
    "teacher": ("model", "image_size", "width", "num_train_epochs", "batch_size", "learning_rate",
                "weight_decay", "augment", "seed"),
    "variations": ("diffusion_model", "diffusion_prior", "variation_options", "variation_batch_size",
                   "variation_shard_size", "seed"),
    "detection": ("detection_score", "detection_threshold", "detection_budget"),
    "student": ("model", "image_size", "width", "student_epochs", "num_train_epochs", "batch_size",
                "learning_rate", "student_learning_rate", "weight_decay", "alpha", "temperature", "teacher_logits",
                "seed"),
    "evaluation": (),
}
STAGE_OPTIONS["student_cleaned"] = STAGE_OPTIONS["student"]
STAGE_OPTIONS["variations_ce"] = STAGE_OPTIONS["student"]


def stage_settings(config: DefendConfig, stage: str, **extra: Any) -> dict[str, Any]:
    """The options of ``config`` that decide ``stage`` (see :data:`STAGE_OPTIONS`), plus ``extra``."""
    values = config.to_dict()
    return {**{name: values[name] for name in STAGE_OPTIONS[stage]}, **extra}


__all__ = ["DefendConfig", "DEFAULT_DIFFUSION_MODEL", "EMBEDDED", "STAGE_OPTIONS", "check_diffusion_model",
           "check_pipeline_weights", "check_variation_options", "read_config_file", "stage_settings"]
