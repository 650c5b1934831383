"""``DefendConfig``: every option of ``backdoor-guard defend`` (and of the demo built on it), checked before work.

The fields are the command's flags (``--num_train_epochs`` or ``--num-train-epochs`` is
``num_train_epochs``; transformers' ``HfArgumentParser`` builds them) and the keys of its
``--config FILE.yaml``; flags override the file. The data, model and attack fields come
from the option groups every front end shares (:mod:`hf_backdoor_guard.arguments`). :data:`STAGE_OPTIONS`
says which options decide which stage's cached output, so a rerun with another value
is refused naming that option.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arguments import (
    DataArguments,
    ModelArguments,
    PoisonArguments,
    check_option_names,
    option,
    option_names,
    parse_json_mapping,
    read_config_file,
)
from ..validation import check_choice, check_fraction, check_int, check_number, check_seed

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
# The students fit less sharply than the teacher: 3/4 of its epochs at half its learning rate (9 of 12 at 1e-3
# of 2e-3), the setting measured over 145 students on the digits (BENCHMARKS.md, "student seeds") and frozen
# for Fashion-MNIST; a student fitted as sharply as the teacher takes its backdoor bias along (ASR up to 0.35).
STUDENT_EPOCH_SHARE = 0.75
STUDENT_LEARNING_RATE_SHARE = 0.5
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


@dataclass
class DefendConfig(DataArguments, ModelArguments, PoisonArguments):
    """The options of one ``defend`` run; see each field's ``help``.

    The data, model and poisoning options are the shared groups of
    :mod:`hf_backdoor_guard.arguments` (the recipes take the same ones); the fields below
    are defend's own: how its teacher and students train, the variations, detection, outputs.
    """

    # training (TrainingArguments' names)
    num_train_epochs: float = option("Teacher epochs.", 12.0)
    student_epochs: float | None = option("Student epochs, counted in passes over the source rows "
                                          "(default: 3/4 of --num_train_epochs, the measured 9 of 12).")
    per_device_train_batch_size: int = option("Training batch size per process.", 32)
    learning_rate: float = option("AdamW learning rate (cosine schedule).", 2e-3)
    student_learning_rate: float | None = option("The students' learning rate (default: half of --learning_rate).")
    weight_decay: float = option("AdamW weight decay.", 1e-4)
    augment: bool = option("Random flip and crop for the teacher (the student never: its logits are cached).", False)
    seed: int = option("Seeds subsets, poisoning, initial weights, data order and variation noise.", 0)
    device: str | None = option("'cuda' or 'cpu' (default: cuda when available).")
    # variations
    diffusion_model: str = option("Diffusers image-variation pipeline (Hub id or folder), or a model shipped with "
                                  "the package: 'embedded' (digits) or 'embedded-fashion-mnist'.",
                                  DEFAULT_DIFFUSION_MODEL)
    diffusion_prior: str | None = option("Two-stage families (Kandinsky, Flux Redux): the prior pipeline.")
    variation_options: dict | str | None = option(
        "ImageVariation options (num_variations, strength, num_inference_steps, ...): a mapping in the config "
        "file, JSON text on the command line.", default_factory=dict)
    variation_batch_size: int = option("Images per diffusion call.", 64)
    variation_shard_size: int | None = option("Source rows per resumable shard (default 64 batches).")
    reuse_variations: list[str] | None = option(
        "Output folders of earlier runs with the same variation options: a row whose image is byte-identical there "
        "takes their variations instead of being varied again (on the CPU the same images; on a GPU the rows varied "
        "again may differ in the lowest bits). The attacks of a benchmark at one seed share their clean rows.")
    # distillation and detection
    alpha: float = option("Weight of the distillation term (1: soft labels only; the paper's 0.5 keeps the poisoned "
                          "rows' hard labels, which can carry a backdoor back).", 1.0)
    temperature: float = option("Distillation temperature (at 4 the teacher's small target-class logits on every "
                                "variation become probability mass the student learns).", 1.0)
    teacher_logits: str = option("'mean': distil every variation towards the teacher's mean logits over its source "
                                 "image's variations; 'own': towards its own.", "mean")
    detection_score: str = option(f"Suspicion score: one of {', '.join(DETECTION_SCORES)}.", "combined")
    detection_threshold: float | None = option("Flag rows at this score (default: Otsu's split).")
    detection_budget: float | None = option("Flag this share of rows instead of a threshold.")
    retrain_teacher: bool = option(
        "Train a second teacher on the rows detection kept and distil model/ from it (student_retaught). The first "
        "teacher's soft labels carry a trigger the variations keep (a border, a tint) even when detection flags "
        "every poisoned row; the second teacher never saw those rows (BENCHMARKS.md: red team). False: model/ is "
        "the student distilled from the first teacher, as in the paper.", True)
    gallery_size: int = option("Most suspicious images shown in the report's gallery.", 16)
    baselines: bool = option("Research: also train 'variations_ce' (plain cross-entropy on the variations).", False)
    # outputs
    output_dir: str = option("Folder for model/, cleaned/, detection.json, report.md and the stage caches.",
                             "backdoor-guard-defend")
    push_to_hub: str | None = option("Publish the robust model to this Hub repo with its card.")
    overwrite: bool = option("Start over in an output folder of an earlier run (removes only what it wrote).", False)

    def __post_init__(self):
        DataArguments.__post_init__(self)
        ModelArguments.__post_init__(self)
        PoisonArguments.__post_init__(self)
        for name in ("diffusion_model", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
        self.num_train_epochs = check_number("num_train_epochs", self.num_train_epochs, 0, None, low_inclusive=False)
        if self.student_epochs is not None:
            self.student_epochs = check_number("student_epochs", self.student_epochs, 0, None, low_inclusive=False)
        check_int("per_device_train_batch_size", self.per_device_train_batch_size)
        check_number("learning_rate", self.learning_rate, 0, None, low_inclusive=False)
        if self.student_learning_rate is not None:
            check_number("student_learning_rate", self.student_learning_rate, 0, None, low_inclusive=False)
        check_number("weight_decay", self.weight_decay, 0, None)
        check_seed("seed", self.seed)
        if self.device is not None:
            check_choice("device", self.device, ("cuda", "cpu"))
        self.variation_options = parse_json_mapping("variation_options", self.variation_options or {})
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
        for name in ("augment", "baselines", "overwrite", "retrain_teacher"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.push_to_hub is not None:
            from ..hub.publish import _check_repo_id

            _check_repo_id(self.push_to_hub)
        self.reuse_variations = check_reuse_runs(self)  # last: it compares the variation options checked above

    # --- sources ---------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, config_file: str | os.PathLike | None = None, **overrides: Any) -> DefendConfig:
        """Defaults, then ``config_file`` (YAML/JSON mapping of field names), then ``overrides``."""
        values: dict[str, Any] = {}
        names = option_names((cls,))
        if config_file is not None:
            values.update(read_config_file(config_file, (cls,)))
            check_option_names(values, names, f"config file {config_file}")
        check_option_names(overrides, names, "DefendConfig")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- derived ---------------------------------------------------------------------------
    @property
    def research(self) -> bool:
        return self.attack is not None

    @property
    def resolved_student_epochs(self) -> float:
        return self.student_epochs or STUDENT_EPOCH_SHARE * self.num_train_epochs

    @property
    def resolved_student_learning_rate(self) -> float:
        return self.student_learning_rate or STUDENT_LEARNING_RATE_SHARE * self.learning_rate

    @property
    def shipped_model(self) -> str:
        """Which of the run's models ``model/`` holds (and its card and ``push_to_hub`` publish)."""
        return "student_retaught" if self.retrain_teacher else "student"

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
    for flag, source in (("--diffusion-model", config.diffusion_model), ("--diffusion-prior", config.diffusion_prior)):
        if source is not None and Path(source).is_dir():  # a Hub id's weights arrive only when it loads
            check_pipeline_weights(Path(source), flag)
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


def check_reuse_runs(config: DefendConfig) -> list[str]:
    """``--reuse_variations``: earlier runs' output folders, each with finished variations made with this run's
    variation options (compared as a rerun compares them, naming the option)."""
    folders = config.reuse_variations
    if folders is None:
        return []
    from ..variations.generate import read_folder_manifest
    from .defend import STAGES_DIR
    from .run_folder import read_records, settings_differences

    if isinstance(folders, (str, os.PathLike)) or not all(isinstance(f, (str, os.PathLike)) for f in folders):
        raise ValueError(f"reuse_variations must be a list of folders, got {folders!r}.")
    planned = stage_settings(config, "variations")
    for folder in folders:
        stages = Path(folder) / STAGES_DIR
        if Path(folder).resolve() == Path(config.output_dir).resolve():
            raise ValueError(f"reuse_variations: {folder} is this run's own --output_dir.")
        try:
            record = read_records(stages).get("variations")
        except (OSError, ValueError):
            record = None
        record = record if isinstance(record, dict) else {}
        manifest = read_folder_manifest(stages / "variations") or {}
        if not (record.get("complete") and manifest.get("complete")):
            raise ValueError(f"reuse_variations: {folder} is not the output folder of an earlier run with finished "
                             f"variations (no finished {stages / 'variations'}).")
        changed = settings_differences(record.get("settings", {}), planned)
        if changed:
            raise ValueError(f"reuse_variations: {folder} made its variations with other options "
                             f"({'; '.join(changed)}); only a run with the same ones can be reused.")
    return [str(folder) for folder in folders]


# Which options decide which stage's output (a rerun with another value is refused, naming it).
STAGE_OPTIONS: dict[str, tuple[str, ...]] = {
    "data": ("dataset_name", "data_dir", "dataset_config_name", "dataset_revision", "train_split", "eval_split",
             "train_val_split", "image_column_name", "label_column_name", "resize_images", "max_train_samples",
             "max_eval_samples", "subset_seed", "seed", "attack", "target_label", "poison_rate", "poison_seed",
             "poison_target_class"),
    "teacher": ("model_name_or_path", "image_size", "image_mean", "image_std", "width", "num_train_epochs",
                "per_device_train_batch_size", "learning_rate", "weight_decay", "augment", "seed"),
    "variations": ("diffusion_model", "diffusion_prior", "variation_options", "variation_batch_size",
                   "variation_shard_size", "seed"),
    "detection": ("detection_score", "detection_threshold", "detection_budget"),
    "student": ("model_name_or_path", "image_size", "image_mean", "image_std", "width", "student_epochs",
                "num_train_epochs", "per_device_train_batch_size",
                "learning_rate", "student_learning_rate", "weight_decay", "alpha", "temperature", "teacher_logits",
                "seed"),
    "evaluation": (),
}
STAGE_OPTIONS["student_cleaned"] = STAGE_OPTIONS["student"]
STAGE_OPTIONS["variations_ce"] = STAGE_OPTIONS["student"]
STAGE_OPTIONS["student_retaught"] = STAGE_OPTIONS["student"]
STAGE_OPTIONS["teacher_kept"] = STAGE_OPTIONS["teacher"]  # on the rows the detection stage kept
STAGE_OPTIONS["teacher_kept_logits"] = ()


def stage_settings(config: DefendConfig, stage: str, **extra: Any) -> dict[str, Any]:
    """The options of ``config`` that decide ``stage`` (see :data:`STAGE_OPTIONS`), plus ``extra``.

    A model trained on the variations also records the epochs and learning rate an unset
    option stood for, so a folder made when unset meant another value is refused, not reused.
    """
    values = config.to_dict()
    if "student_epochs" in STAGE_OPTIONS[stage]:
        resolved = {"student_epochs": ("epochs_used", config.resolved_student_epochs),
                    "student_learning_rate": ("learning_rate_used", config.resolved_student_learning_rate)}
        extra = {**{key: value for name, (key, value) in resolved.items() if values[name] is None}, **extra}
    return {**{name: values[name] for name in STAGE_OPTIONS[stage]}, **extra}


__all__ = ["DefendConfig", "DEFAULT_DIFFUSION_MODEL", "EMBEDDED", "STAGE_OPTIONS", "STUDENT_EPOCH_SHARE",
           "STUDENT_LEARNING_RATE_SHARE", "check_diffusion_model",
           "check_pipeline_weights", "check_variation_options", "read_config_file", "stage_settings"]
