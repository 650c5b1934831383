"""Model and dataset cards: what they state (``CardInfo``), rendering from ``model_cards/``, and reading back.

Metrics follow the shape ``evaluate_backdoor`` returns, keyed by attack name::

    {"badnets": {"clean_accuracy": 0.91, "attack_success_rate": 0.02, "robust_accuracy": 0.88}, ...}

They go into the model card's ``model-index`` metadata (one result per attack, the
attack being the dataset config), which the Hub shows as evaluation results and which
:func:`card_metrics` reads back. The metrics, their names and the table columns come
from the metric registry (``metrics.backdoor_metrics()``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from ..metrics import backdoor_metrics
from ..validation import check_fraction, check_int, check_seed


@dataclasses.dataclass
class CardInfo:
    """What a card states about how a model or dataset was made; every field is optional.

    Validated when built, so a bad value fails before anything is staged. Keyword
    arguments that are not fields go to ``details`` (listed in the card's table).
    """

    base_dataset: str | None = None  # the dataset the model was trained on (Hub id or name)
    eval_split: str | None = None  # the split the metrics were measured on (card default: 'test')
    teacher: str | None = None  # the teacher model (Hub id, path or architecture)
    diffusion_model: str | None = None  # the diffusion model that made the variations
    diffusion_settings: Mapping[str, Any] | None = None  # steps, strength, guidance, ...
    distillation_settings: Mapping[str, Any] | None = None  # alpha, temperature, epochs, ...
    seed: int | None = None  # the seed of the run
    license: str | None = None  # license id (card default: 'apache-2.0')
    target_label: int | None = None  # the backdoor target class used in the evaluation
    poison_rate: float | None = None  # share of poisoned training rows in the evaluation
    attack: str | None = None  # attack used on the source data (datasets only)
    model_name: str | None = None  # title of the model card
    pretty_name: str | None = None  # title of the dataset card
    tags: list[str] | None = None  # extra tags
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # anything else, listed as is

    def __post_init__(self):
        for key in ("base_dataset", "eval_split", "teacher", "diffusion_model", "attack", "model_name",
                    "pretty_name"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string, got {getattr(self, key)!r}.")
        for key in ("diffusion_settings", "distillation_settings", "details"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key} must be a dict of setting -> value, got {getattr(self, key)!r}.")
        if self.seed is not None:
            check_seed("seed", self.seed)
        if self.target_label is not None:
            check_int("target_label", self.target_label, minimum=0)
        if self.poison_rate is not None:
            check_fraction("poison_rate", self.poison_rate)
        if self.license is not None and (not isinstance(self.license, str) or not self.license):
            raise ValueError(f"license must be a license id string such as 'apache-2.0', got {self.license!r}.")
        if self.tags is not None:
            if isinstance(self.tags, str) or not all(isinstance(tag, str) for tag in self.tags):
                raise ValueError(f"tags must be a list of strings, got {self.tags!r}.")
            self.tags = list(self.tags)

    @classmethod
    def from_kwargs(cls, card_info: CardInfo | None = None, **kwargs: Any) -> CardInfo:
        """A ``CardInfo`` from keyword arguments (what ``publish_model(**card_info)`` and the CLI pass)."""
        if card_info is not None:
            if not isinstance(card_info, CardInfo):
                raise ValueError(f"card_info must be a CardInfo, got {type(card_info).__name__}.")
            if kwargs:
                raise ValueError(f"Pass card details either as card_info=CardInfo(...) or as keywords, not both "
                                 f"(got both and {sorted(kwargs)}).")
            return card_info
        names = {field.name for field in dataclasses.fields(cls)} - {"details"}
        given = kwargs.pop("details", {})
        if not isinstance(given, Mapping):
            raise ValueError(f"details must be a dict of setting -> value, got {given!r}.")
        known = {key: value for key, value in kwargs.items() if key in names}
        details = {key: value for key, value in kwargs.items() if key not in names}
        return cls(**known, details={**given, **details})


#: the attack key of results measured without any attack (a model trained on a user's own data)
NO_ATTACK = "none"


def check_metrics(metrics: Any, name: str = "metrics") -> dict[str, dict[str, float]]:
    """Validate the ``{attack: {metric: fraction}}`` shape against the registered backdoor metrics.

    Metrics that need no trigger (clean accuracy) are required in every row; those that
    need one (ASR, R-Acc) come all together, or not at all when no attack was measured
    (the row of attack ``"none"``).
    """
    registered = backdoor_metrics()
    keys = tuple(metric.name for metric in registered)
    triggered = tuple(metric.name for metric in registered if metric.needs_trigger)
    if not isinstance(metrics, Mapping) or not metrics:
        example = ", ".join(f"'{key}': 0.9" for key in keys)
        raise ValueError(f"{name} must be a non-empty dict keyed by attack name, e.g. {{'badnets': {{{example}}}}}; "
                         f"got {metrics!r}.")
    clean: dict[str, dict[str, float]] = {}
    for attack, values in metrics.items():
        if not isinstance(attack, str) or not attack:
            raise ValueError(f"{name}: attack names must be non-empty strings, got {attack!r}.")
        if not isinstance(values, Mapping):
            raise ValueError(f"{name}['{attack}'] must be a dict of the metrics {keys}, got {values!r}.")
        required = keys if attack != NO_ATTACK or any(key in values for key in triggered) else tuple(
            key for key in keys if key not in triggered)
        missing = [key for key in required if key not in values]
        if missing:
            raise ValueError(f"{name}['{attack}'] lacks {missing}; it needs all of {required}"
                             + (f" (only attack '{NO_ATTACK}', measured without triggers, may leave out {triggered})"
                                if attack != NO_ATTACK else "") + ".")
        clean[attack] = {key: check_fraction(f"{name}['{attack}']['{key}']", values[key])
                         for key in keys if key in values}
    return clean


def card_metrics(card: ModelCard, source: str | None = None) -> dict[str, dict[str, float]]:
    """Read ``{attack: {metric: value}}`` back from a card's ``model-index`` metadata.

    A value outside [0, 1] (or NaN) is a ``ValueError`` naming ``source``, the attack and
    the metric: such a card was edited or not written by hf-backdoor-guard, and its
    numbers must not be reported as if they were measured.
    """
    keys = {metric.name for metric in backdoor_metrics()}
    source = source or getattr(card.data, "model_name", None) or "this model"
    metrics: dict[str, dict[str, float]] = {}
    for result in getattr(card.data, "eval_results", None) or []:
        if result.metric_type not in keys:
            continue
        attack = result.dataset_config or result.metric_config or "default"
        try:
            value = check_fraction(f"{result.metric_type} of attack '{attack}'", result.metric_value)
        except ValueError as err:
            raise ValueError(
                f"The model card of '{source}' states {err} A card of hf-backdoor-guard only holds fractions, so "
                "this one was edited or not written by it; its numbers are not reported."
            ) from None
        metrics.setdefault(attack, {})[result.metric_type] = value
    return metrics


# ----------------------------------------------------------------------------- rendering


def template(name: str) -> str:
    """Read a template from ``model_cards/`` (inside the wheel, or the source checkout)."""
    try:
        from importlib.resources import files

        return files("hf_backdoor_guard.model_cards").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # Running from a source checkout without installing: model_cards/ sits next to the package.
        return (Path(__file__).resolve().parent.parent.parent / "model_cards" / name).read_text(encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return "not stated"
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(metrics: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    keys = [metric.name for metric in backdoor_metrics()]
    return [{"attack": "none (clean data only)" if attack == NO_ATTACK else _fmt(attack),
             "values": [f"{100 * values[key]:.2f}%" if key in values else "not measured" for key in keys]}
            for attack, values in metrics.items()]


def _columns() -> list[dict[str, Any]]:
    return [{"label": metric.label, "description": metric.description, "higher_is_better": metric.higher_is_better}
            for metric in backdoor_metrics()]


def _settings(value: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in (value or {}).items()]


def hub_dataset_ids(name: str | None) -> list[str] | None:
    """The card's ``datasets`` field only takes Hub ids; free-form names stay in the text."""
    if name and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return [name]
    return None


def build_model_card(
    repo_id: str,
    metrics: Mapping[str, Mapping[str, float]],
    *,
    architecture: str = "not stated",
    teacher_metrics: Mapping[str, Mapping[str, float]] | None = None,
    card_info: CardInfo | None = None,
    **details: Any,
) -> ModelCard:
    """Render the model card: ``model-index`` with every registered backdoor metric for every attack."""
    metrics = check_metrics(metrics)
    teacher_metrics = check_metrics(teacher_metrics, "teacher_metrics") if teacher_metrics else None
    info = CardInfo.from_kwargs(card_info, **details)
    base_dataset = info.base_dataset or "unknown dataset"
    split = info.eval_split or "test"
    model_name = info.model_name or repo_id.split("/")[-1]
    # model-index wants an id-like dataset type; free-form names become a slug (the name stays readable).
    slug = re.sub(r"[^\w.-]+", "-", base_dataset).strip("-").lower() or "custom"
    dataset_type = (hub_dataset_ids(base_dataset) or [slug])[0]
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=base_dataset if attack == NO_ATTACK else f"{base_dataset} ({attack} backdoor)",
            dataset_config=attack,
            dataset_split=split,
            metric_type=metric.name,
            metric_name=metric.display_name,
            metric_config=attack,
            metric_value=round(values[metric.name], 6),
        )
        for attack, values in metrics.items()
        for metric in backdoor_metrics()
        if metric.name in values
    ]
    tags = ["image-classification", "backdoor-defense", "hf-backdoor-guard", "knowledge-distillation"]
    tags += [t for t in info.tags or [] if t not in tags]
    license_id = info.license or "apache-2.0"
    card_data = ModelCardData(
        model_name=model_name,
        license=license_id,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=tags,
        datasets=hub_dataset_ids(info.base_dataset),
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_str=template("model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        base_dataset=_fmt(base_dataset),
        eval_split=split,
        target_label=info.target_label,
        poison_rate=info.poison_rate,
        metric_columns=_columns(),
        results=_rows(metrics),
        teacher_results=_rows(teacher_metrics) if teacher_metrics else None,
        teacher=_fmt(info.teacher),
        architecture=architecture,
        diffusion_model=_fmt(info.diffusion_model),
        diffusion_settings=_settings(info.diffusion_settings),
        distillation_settings=_settings(info.distillation_settings),
        seed=_fmt(info.seed),
        license=license_id,
        other_details=_settings(info.details),
        citation=template("citation.md").strip(),
    )


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` tag for ``rows`` examples."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1_000:
        return "n<1K"
    for exponent, (low, high) in enumerate(zip(bounds, bounds[1:]), start=3):
        if rows < 10 ** (exponent + 1):
            return f"{low}<n<{high}"
    return "n>1T"


def build_dataset_card(
    repo_id: str,
    info: CardInfo,
    split_sizes: Mapping[str, int],
    columns: tuple[str, ...],
    *,
    image_column: str,
    label_column: str,
    dropped_columns: list[str],
    kept_sensitive: list[str],
) -> DatasetCard:
    """Render the dataset card, with a ``configs`` section pointing at ``data/<split>-*``."""
    license_id = info.license or "apache-2.0"
    base_dataset = info.base_dataset or "unknown dataset"
    pretty_name = info.pretty_name or repo_id.split("/")[-1]
    tags = ["hf-backdoor-guard", "backdoor-defense", "image-variations", "synthetic"]
    tags += [t for t in info.tags or [] if t not in tags]
    card_data = DatasetCardData(
        license=license_id,
        task_categories=["image-classification"],
        tags=tags,
        size_categories=[size_category(sum(split_sizes.values()))],
        # "extended|<id>": the Hub's convention for data derived from another dataset.
        source_datasets=[f"extended|{name}" for name in hub_dataset_ids(info.base_dataset) or []] or None,
        pretty_name=pretty_name,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in split_sizes],
            }
        ],
    )
    return DatasetCard.from_template(
        card_data,
        template_str=template("dataset_card.md"),
        pretty_name=pretty_name,
        repo_id=repo_id,
        base_dataset=_fmt(base_dataset),
        attack=info.attack,
        poison_rate=info.poison_rate,
        target_label=info.target_label,
        diffusion_model=_fmt(info.diffusion_model),
        diffusion_settings=_settings(info.diffusion_settings),
        seed=_fmt(info.seed),
        license=license_id,
        other_details=_settings(info.details),
        split_sizes=list(split_sizes.items()),
        columns=columns,
        image_column=image_column,
        label_column=label_column,
        dropped_columns=dropped_columns,
        kept_sensitive=kept_sensitive,
        citation=template("citation.md").strip(),
    )
