"""The options every front end shares, one name each, and the one parser that reads them.

``backdoor-guard defend`` (:class:`~hf_backdoor_guard.pipeline.DefendConfig`), the demo
(a preset of ``DefendConfig``) and the ``recipes/`` scripts all take their data, model
and poisoning options from the dataclasses here, so ``--dataset_name``,
``--max_train_samples`` or ``--model_name_or_path`` mean the same thing everywhere (the
names are those of transformers' examples). :func:`parse_arguments` is the front end, as
in trl's scripts: ``HfArgumentParser`` over the dataclasses, plus ``--config FILE.yaml``
whose values flags override. Every flag is spelled with underscores or dashes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validation import check_fraction, check_int, check_number, check_seed

# Names an option had before there was one name per option: a config file or call using one is told the new name.
RENAMED = {"dataset": "dataset_name", "dataset_config": "dataset_config_name", "split": "train_split",
           "image_column": "image_column_name", "label_column": "label_column_name",
           "max_train_rows": "max_train_samples", "max_eval_rows": "max_eval_samples", "train_rows": "max_train_samples",
           "test_rows": "max_eval_samples", "model": "model_name_or_path", "teacher_epochs": "num_train_epochs",
           "batch_size": "per_device_train_batch_size", "shard_size": "variation_shard_size",
           "attack_options": "attack (a spec: 'name:key=value,...' or a mapping with 'name')",
           "poison_options": "poison_seed / poison_target_class"}


def option(text: str, default: Any = None, **kwargs: Any):
    """A dataclass field with its ``--help`` text (``HfArgumentParser`` reads ``metadata["help"]``)."""
    if "default_factory" in kwargs:
        return field(metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


def none_if_blank(value):
    """'none' / 'null' / '' typed on a command line mean None."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value


# --------------------------------------------------------------------------------------
# The shared option groups
# --------------------------------------------------------------------------------------
@dataclass
class DataArguments:
    """Which images and labels: a Hub id, 'imagefolder' with data_dir, or a save_to_disk folder."""

    dataset_name: str | None = option("A Hub dataset id (e.g. uoft-cs/cifar10), 'imagefolder' (with --data_dir), or a "
                                      "folder written by save_to_disk.")
    dataset_config_name: str | None = option("The dataset's configuration (e.g. '320px' for frgfm/imagenette).")
    data_dir: str | None = option("imagefolder: the folder holding <split>/<class>/<image> files.")
    dataset_revision: str | None = option("Hub revision (branch, tag or commit) of the dataset.")
    train_split: str = option("The (possibly poisoned) split the models are trained on.", "train")
    eval_split: str | None = option("The clean split for C-Acc, ASR and R-Acc (default: 'test' or 'validation' if "
                                    "present).")
    train_val_split: float = option("When the dataset has no evaluation split (no test/validation and no "
                                    "--eval_split): the share of the training split held out, stratified and seeded, "
                                    "for evaluation, as transformers' image-classification example does.", 0.15)
    image_column_name: str = option("Column holding the images (renamed to 'image' after loading; CIFAR-10: img).",
                                    "image")
    label_column_name: str = option("Column holding the integer / ClassLabel labels (renamed to 'label').", "label")
    resize_images: int | None = option("Resize every image (shortest edge, then centre crop) to SIZE x SIZE before "
                                       "poisoning, so a trigger has the same pixel size in every image and at the "
                                       "model's input (GTSRB: 32, ImageNette: 224). Unset: images stay as stored.")
    max_train_samples: int | None = option("Use a class-stratified subset of this many training rows.")
    max_eval_samples: int | None = option("Use a class-stratified subset of this many evaluation rows.")
    subset_seed: int | None = option("Seed of the max_*_samples subsets and of the held-out evaluation rows "
                                     "(default: defend's --seed; the recipes' 42).")

    def __post_init__(self):
        self.eval_split = none_if_blank(self.eval_split)
        for name in ("train_split", "image_column_name", "label_column_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
        self.train_val_split = check_number("train_val_split", self.train_val_split, 0, 1, low_inclusive=False,
                                            high_inclusive=False)
        if self.resize_images is not None:
            check_int("resize_images", self.resize_images, minimum=8)
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.subset_seed is not None:
            check_seed("subset_seed", self.subset_seed)


@dataclass
class ModelArguments:
    """The classifier: an architecture trained from scratch, or a saved model that teacher and student start from."""

    model_name_or_path: str = option("An architecture trained from scratch (small-resnet, resnet-18 ... resnet-152), a "
                                     "save_pretrained folder or a Hub id (safetensors only; a head of another size is "
                                     "replaced, with a warning).", "resnet-18")
    image_size: int | None = option("New architectures: images are resized (shortest edge) and centre-cropped to "
                                    "this size (default 224).")
    image_mean: list[float] | None = option("New architectures: normalisation mean per channel (default ImageNet's).")
    image_std: list[float] | None = option("New architectures: normalisation std per channel (default ImageNet's).")
    width: int | None = option("small-resnet: its channel width.")

    def __post_init__(self):
        from .pipeline.models import model_source

        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path:
            raise ValueError(f"model_name_or_path must be a non-empty string, got {self.model_name_or_path!r}.")
        model_source(self.model_name_or_path)  # an architecture, a folder or a Hub id, or a ValueError
        for name in ("image_size", "width"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=2)

    def classifier(self) -> dict:
        """``model`` and the options of ``build_classifier`` (the one builder of demo, defend and recipes)."""
        options = {name: getattr(self, name) for name in ("image_size", "image_mean", "image_std", "width")
                   if getattr(self, name) is not None}
        return {"model": self.model_name_or_path, **options}


@dataclass
class PoisonArguments:
    """Research: the backdoor planted in the training split and measured at evaluation (ASR, R-Acc)."""

    attack: dict | str | None = option(
        "Attack that poisons the training split and that ASR/R-Acc measure: a name (badnets, blended, wanet, sig, "
        "...), 'name:key=value,...' (e.g. 'badnets:trigger=checkerboard,size=9') or, in YAML, a mapping "
        "{name: badnets, size: 9}. Unset or 'none': no poisoning, no backdoor metrics.")
    target_label: int = option("The backdoor's target class.", 0)
    poison_rate: float = option("Share of eligible training rows poisoned (0 keeps the data as it is: data that is "
                                "already poisoned, or clean).", 0.1)
    poison_seed: int | None = option("Seed choosing the poisoned rows (default: defend's --seed; the recipes' 42).")
    poison_target_class: bool = option("Also poison rows that already have the target label.", False)

    def __post_init__(self):
        self.attack = none_if_blank(self.attack)
        if self.attack is not None:
            self.build_attack()  # a bad spec or option value fails here, before any work (attacks build cheaply)
        check_int("target_label", self.target_label, minimum=0)
        check_fraction("poison_rate", self.poison_rate)
        if self.poison_seed is not None:
            check_seed("poison_seed", self.poison_seed)
        if not isinstance(self.poison_target_class, bool):
            raise ValueError(f"poison_target_class must be true or false, got {self.poison_target_class!r}.")

    @property
    def attack_name(self) -> str | None:
        """The registered name of the configured attack (``badnets`` for ``badnets:size=5``), or None."""
        from .attacks.specs import parse_attack_spec

        return None if self.attack is None else parse_attack_spec(self.attack)[0]

    def build_attack(self):
        """The configured ``Attack``, or None."""
        from .attacks.specs import attack_from_spec

        return None if self.attack is None else attack_from_spec(self.attack)


# --------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------
def _config_loader():
    """PyYAML's safe loader, reading numbers as YAML 1.2 does and refusing a key given twice.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3`` and
    ``2E-4`` would be strings, and learning rates are written that way.
    """
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
    """``int | None``, ``float``, ``<class 'float'>``, ``Optional[int]``: a field that takes a number."""
    return re.search(r"\b(int|float)\b", str(annotation)) is not None


def check_option_names(names, known, where: str) -> None:
    """Every name in ``names`` is one of ``known``; an old name is told its new one, a typo the options."""
    renamed = {name: RENAMED[name] for name in names if name in RENAMED and name not in known}
    if renamed:
        raise ValueError(f"{where}: options renamed (one name per option in defend, demo and the recipes): "
                         + ", ".join(f"{old} -> {new}" for old, new in sorted(renamed.items())) + ".")
    unknown = sorted(set(names) - set(known))
    if unknown:
        import difflib

        close = sorted({match for name in unknown for match in difflib.get_close_matches(name, known, n=2)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        listing = f"; the options are {sorted(known)}" if len(known) <= 60 else ""  # a recipe's few hundred: no
        raise ValueError(f"{where}: unknown option(s) {unknown}{hint}{listing}.")


def read_config_file(path: str | os.PathLike, types: tuple = ()) -> dict[str, Any]:
    """A YAML (or JSON) file holding one mapping of option names (dashes or underscores) to values.

    Floats are read as YAML 1.2 reads them (``1e-3`` is a number); a key given twice is refused;
    with ``types`` (dataclasses), a quoted number for a numeric field is refused.
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
    annotations = {f.name: f.type for cls in types for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if isinstance(value, str) and _expects_number(annotations.get(name, "")):
            raise ValueError(f"config file {path}: {name} must be a number, but the file gives the string {value!r} "
                             "(YAML reads a quoted value as text; write the number without quotes).")
    return values


def option_names(types: tuple) -> set[str]:
    return {f.name for cls in types for f in dataclasses.fields(cls) if f.init}


# --------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------
def argument_parser(types: tuple, **kwargs: Any):
    """``HfArgumentParser`` over ``types`` with ``--config FILE.yaml``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(types, **kwargs)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML or JSON file of options (the flag names, with "
                        "underscores or dashes); flags override it.")
    return parser


def apply_config_file(parser, argv: list[str], types: tuple, *, known: set[str] | None = None,
                      check=None) -> dict[str, Any]:
    """Read ``--config`` from ``argv`` and make its values ``parser``'s defaults (flags still override them).

    ``known``: the options a file may hold (default: those of ``types``); ``check(values, path)``
    refuses values this front end does not allow. Returns the file's values.
    """
    config_file = parser.parse_known_args(argv)[0].config  # --help prints every option and exits here
    if not config_file:
        return {}
    values = read_config_file(config_file, types)
    check_option_names(values, known if known is not None else option_names(types), f"config file {config_file}")
    if check is not None:
        check(values, config_file)
    own = option_names(types)
    parser.set_defaults(**{key: value for key, value in values.items() if key in own})
    return values


def dataclasses_from_namespace(types: tuple, namespace) -> tuple:
    """One instance per dataclass of ``types`` from a parsed namespace (each takes the fields it declares)."""
    values = vars(namespace)
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
                 for cls in types)


def parse_arguments(types: tuple, argv: list[str] | None = None, *, description: str | None = None,
                    known: set[str] | None = None, check=None, defaults=None) -> tuple:
    """Parse ``[--config FILE] [--option value ...]`` into instances of ``types`` (dataclasses, in order).

    Precedence, lowest first: the dataclass defaults, ``defaults(namespace, config_values)``
    (a dict of defaults derived from what was given, e.g. paths under a run folder), the config
    file, the command line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argument_parser(types, description=description)
    values = apply_config_file(parser, argv, types, known=known, check=check)
    if defaults is not None:
        derived = defaults(parser.parse_known_args(argv)[0], values)
        parser.set_defaults(**{key: value for key, value in derived.items() if key not in values})
    namespace = parser.parse_args(argv)
    return dataclasses_from_namespace(types, namespace)


def parse_json_mapping(name: str, value) -> dict:
    """A mapping option given as a mapping (Python, YAML) or as JSON text (a command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} must be a mapping, or JSON text of one such as '{{\"num_variations\": 2}}'; "
                             f"got {value!r} ({error}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of option -> value, got {value!r}.")
    return value


__all__ = ["DataArguments", "ModelArguments", "PoisonArguments", "RENAMED", "apply_config_file", "argument_parser",
           "check_option_names", "dataclasses_from_namespace", "option", "parse_arguments", "parse_json_mapping",
           "read_config_file"]
