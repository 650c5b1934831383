"""Publish robust models and cleaned datasets to the Hub, and load published robust models.

Everything is staged in a local folder first (weights, config, processor or parquet
shards, plus a card rendered from ``model_cards/``) and only then uploaded with
``HfApi.upload_folder``. A failed upload therefore loses nothing: the folder stays
and the error names it, so the upload can be retried.

Metrics follow the shape ``evaluate_backdoor`` returns, keyed by attack name::

    {"badnets": {"clean_accuracy": 0.91, "attack_success_rate": 0.02, "robust_accuracy": 0.88}, ...}

They go into the card's ``model-index`` metadata (one result per attack, the attack
being the dataset config), which the Hub shows as evaluation results and which
``load_robust_model`` reads back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from .loading import load_image_classifier

logger = logging.getLogger(__name__)

METRIC_KEYS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")
_METRIC_NAMES = {
    "clean_accuracy": "Clean accuracy (C-Acc)",
    "attack_success_rate": "Attack success rate (ASR)",
    "robust_accuracy": "Robust accuracy (R-Acc)",
}
# Ground truth that only exists because the data was poisoned on purpose (research
# setting); publishing it would hand out the answer key of the attack.
POISONING_COLUMNS = ("poisoned", "original_label", "is_poisoned", "poison_index")
# Names the source image of a variation may carry; any other Image column is a source too.
SOURCE_IMAGE_COLUMNS = ("source_image", "original_image", "source")
# Marks a folder as staged by us, so a later publish may overwrite it; never uploaded.
STAGING_MARKER = ".hf-backdoor-guard-staging"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_CARD_INFO_KEYS = {
    "base_dataset": "the dataset the model was trained on (Hub id or name)",
    "eval_split": "the split the metrics were measured on (default 'test')",
    "teacher": "the teacher model (Hub id, path or architecture)",
    "diffusion_model": "the diffusion model that made the variations",
    "diffusion_settings": "dict of variation settings (steps, strength, guidance, ...)",
    "distillation_settings": "dict (alpha, temperature, epochs, ...)",
    "seed": "the seed of the run",
    "license": "license id for the card (default 'apache-2.0')",
    "target_label": "the backdoor target class used in the evaluation",
    "poison_rate": "share of poisoned training rows in the evaluation",
    "attack": "attack used on the source data (datasets only)",
    "model_name": "title of the model card",
    "pretty_name": "title of the dataset card",
    "tags": "extra tags",
}


class PublishError(RuntimeError):
    """The upload failed; ``staged_path`` still holds everything that was to be uploaded."""

    def __init__(self, message: str, staged_path: Path):
        super().__init__(message)
        self.staged_path = staged_path


class RobustModel(NamedTuple):
    """What ``load_robust_model`` returns; unpacks as ``model, image_processor, metrics``."""

    model: Any
    image_processor: Any
    metrics: dict[str, dict[str, float]]


# ----------------------------------------------------------------------------- checks


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string like 'user/name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except ValueError as err:  # HFValidationError is a ValueError with a terse message
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repository id: {err}") from err


def _check_metrics(metrics: Any, name: str = "metrics") -> dict[str, dict[str, float]]:
    """Validate the ``{attack: {clean_accuracy, attack_success_rate, robust_accuracy}}`` shape."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(
            f"{name} must be a non-empty dict keyed by attack name, e.g. "
            "{'badnets': {'clean_accuracy': 0.9, 'attack_success_rate': 0.05, 'robust_accuracy': 0.85}}; "
            f"got {metrics!r}."
        )
    clean: dict[str, dict[str, float]] = {}
    for attack, values in metrics.items():
        if not isinstance(attack, str) or not attack:
            raise ValueError(f"{name}: attack names must be non-empty strings, got {attack!r}.")
        if not isinstance(values, Mapping):
            raise ValueError(f"{name}['{attack}'] must be a dict of the metrics {METRIC_KEYS}, got {values!r}.")
        missing = [key for key in METRIC_KEYS if key not in values]
        if missing:
            raise ValueError(f"{name}['{attack}'] lacks {missing}; it needs all of {METRIC_KEYS}.")
        clean[attack] = {}
        for key in METRIC_KEYS:
            value = values[key]
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if isinstance(value, bool) or not math.isfinite(number) or not 0.0 <= number <= 1.0:
                raise ValueError(
                    f"{name}['{attack}']['{key}'] must be a fraction in [0, 1], got {value!r}."
                )
            clean[attack][key] = number
    return clean


def _check_card_info(card_info: Mapping[str, Any]) -> dict[str, Any]:
    info = dict(card_info)
    for key in ("diffusion_settings", "distillation_settings"):
        if info.get(key) is not None and not isinstance(info[key], Mapping):
            raise ValueError(f"{key} must be a dict of setting -> value, got {info[key]!r}.")
    seed = info.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    tags = info.get("tags")
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise ValueError(f"tags must be a list of strings, got {tags!r}.")
    license_id = info.get("license")
    if license_id is not None and (not isinstance(license_id, str) or not license_id):
        raise ValueError(f"license must be a license id string such as 'apache-2.0', got {license_id!r}.")
    for key in ("base_dataset", "teacher", "diffusion_model", "eval_split", "attack", "model_name", "pretty_name"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise ValueError(f"{key} must be a string, got {info[key]!r}.")
    return info


def _check_output_dir(output_dir: str | os.PathLike | None) -> None:
    """Refuse a staging folder that holds someone else's files (checked before any work)."""
    if output_dir is None:
        return
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir '{path}' exists and is a file, not a folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / STAGING_MARKER).is_file():
        raise ValueError(
            f"output_dir '{path}' is not empty and was not staged by hf-backdoor-guard; "
            "refusing to overwrite it. Pass an empty or new folder."
        )


def _prepare_output_dir(output_dir: str | os.PathLike | None, kind: str) -> Path:
    """Return an empty folder to stage into.

    Only a folder we staged before (it carries ``STAGING_MARKER``) is emptied and reused,
    so nothing the user had is ever deleted.
    """
    _check_output_dir(output_dir)
    if output_dir is None:
        path = Path(tempfile.mkdtemp(prefix=f"hbg-publish-{kind}-"))
    else:
        path = Path(output_dir)
        if path.is_dir() and any(path.iterdir()):
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)
    (path / STAGING_MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    return path


# ----------------------------------------------------------------------------- cards


def _template(name: str) -> str:
    """Read a template from ``model_cards/`` (inside the wheel, or the source checkout)."""
    try:
        from importlib.resources import files

        return files("hf_backdoor_guard.model_cards").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # Running from a source checkout without installing: model_cards/ sits next to the package.
        return (Path(__file__).resolve().parent.parent / "model_cards" / name).read_text(encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return "not stated"
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _rows(metrics: Mapping[str, Mapping[str, float]]) -> list[dict[str, str]]:
    return [
        {"attack": _fmt(attack), **{key: _percent(values[key]) for key in METRIC_KEYS}}
        for attack, values in metrics.items()
    ]


def _settings(value: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in (value or {}).items()]


def _other_details(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in info.items() if k not in _CARD_INFO_KEYS]


def _hub_dataset_ids(name: str | None) -> list[str] | None:
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
    **card_info: Any,
) -> ModelCard:
    """Render the model card: ``model-index`` with C-Acc / ASR / R-Acc for every attack."""
    metrics = _check_metrics(metrics)
    teacher_metrics = _check_metrics(teacher_metrics, "teacher_metrics") if teacher_metrics else None
    info = _check_card_info(card_info)
    base_dataset = info.get("base_dataset") or "unknown dataset"
    split = info.get("eval_split") or "test"
    model_name = info.get("model_name") or repo_id.split("/")[-1]
    # model-index wants an id-like dataset type; free-form names become a slug (the name stays readable).
    slug = re.sub(r"[^\w.-]+", "-", base_dataset).strip("-").lower() or "custom"
    dataset_type = (_hub_dataset_ids(base_dataset) or [slug])[0]
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=f"{base_dataset} ({attack} backdoor)",
            dataset_config=attack,
            dataset_split=split,
            metric_type=key,
            metric_name=_METRIC_NAMES[key],
            metric_config=attack,
            metric_value=round(values[key], 6),
        )
        for attack, values in metrics.items()
        for key in METRIC_KEYS
    ]
    tags = ["image-classification", "backdoor-defense", "hf-backdoor-guard", "knowledge-distillation"]
    tags += [t for t in info.get("tags") or [] if t not in tags]
    license_id = info.get("license") or "apache-2.0"
    card_data = ModelCardData(
        model_name=model_name,
        license=license_id,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=tags,
        datasets=_hub_dataset_ids(info.get("base_dataset")),
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template("model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        base_dataset=_fmt(base_dataset),
        eval_split=split,
        target_label=info.get("target_label"),
        poison_rate=info.get("poison_rate"),
        results=_rows(metrics),
        teacher_results=_rows(teacher_metrics) if teacher_metrics else None,
        teacher=_fmt(info.get("teacher")),
        architecture=architecture,
        diffusion_model=_fmt(info.get("diffusion_model")),
        diffusion_settings=_settings(info.get("diffusion_settings")),
        distillation_settings=_settings(info.get("distillation_settings")),
        seed=_fmt(info.get("seed")),
        license=license_id,
        other_details=_other_details(info),
        citation=_template("citation.md").strip(),
    )


def card_metrics(card: ModelCard) -> dict[str, dict[str, float]]:
    """Read ``{attack: {metric: value}}`` back from a card's ``model-index`` metadata."""
    metrics: dict[str, dict[str, float]] = {}
    for result in getattr(card.data, "eval_results", None) or []:
        if result.metric_type not in METRIC_KEYS:
            continue
        attack = result.dataset_config or result.metric_config or "default"
        metrics.setdefault(attack, {})[result.metric_type] = float(result.metric_value)
    return metrics


# ----------------------------------------------------------------------------- upload


def _upload(staged: Path, repo_id: str, repo_type: str, private: bool | None, commit_message: str, token) -> None:
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staged),
            repo_type=repo_type,
            commit_message=commit_message,
            ignore_patterns=[STAGING_MARKER],
        )
    except Exception as err:
        raise PublishError(
            f"Uploading {repo_type} '{repo_id}' failed ({type(err).__name__}: {err}). "
            f"Everything is still staged in '{staged}'; retry with "
            f"HfApi().upload_folder(repo_id='{repo_id}', folder_path='{staged}', repo_type='{repo_type}') "
            "or publish again with output_dir set to that folder.",
            staged,
        ) from err
    logger.info("Uploaded %s to %s", staged, url)


# ----------------------------------------------------------------------------- models


def publish_model(
    model,
    repo_id: str,
    metrics: Mapping[str, Mapping[str, float]],
    image_processor=None,
    output_dir: str | os.PathLike | None = None,
    push: bool = True,
    private: bool | None = None,
    commit_message: str = "Upload robust model trained with hf-backdoor-guard",
    token: str | None = None,
    *,
    teacher_metrics: Mapping[str, Mapping[str, float]] | None = None,
    **card_info: Any,
) -> Path:
    """Stage a robust model with its card and upload it to the Hub.

    Args:
        model: a ``transformers`` image-classification model (``save_pretrained`` is used).
        repo_id: target repository, ``"user/name"``.
        metrics: ``{attack: {"clean_accuracy", "attack_success_rate", "robust_accuracy"}}``
            as fractions in [0, 1] (what ``evaluate_backdoor`` returns, per attack).
        image_processor: saved next to the model so ``load_robust_model`` can rebuild it.
        output_dir: staging folder; a new temp folder if None. An existing non-empty folder
            is only reused if an earlier publish staged it.
        push: upload after staging; ``False`` only stages (review the card first).
        private: visibility of a newly created repo (None: the account default).
        teacher_metrics: optional teacher numbers in the same shape, shown for comparison.
        **card_info: what the card states: ``base_dataset``, ``teacher``, ``diffusion_model``,
            ``diffusion_settings`` (dict), ``distillation_settings`` (dict), ``seed``,
            ``license``, ``target_label``, ``poison_rate``, ``eval_split``, ``model_name``,
            ``tags``; any other key is listed in the card's training table.

    Returns:
        The staged folder. Raises ``PublishError`` (with ``staged_path``) if the upload fails.
    """
    _check_repo_id(repo_id)
    _check_output_dir(output_dir)
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise ValueError(f"model must be a transformers model with save_pretrained, got {type(model).__name__}.")
    if image_processor is not None and not hasattr(image_processor, "save_pretrained"):
        raise ValueError(
            f"image_processor must be a transformers image processor, got {type(image_processor).__name__}."
        )
    architecture = type(model).__name__
    card = build_model_card(repo_id, metrics, architecture=architecture, teacher_metrics=teacher_metrics, **card_info)
    if image_processor is None:
        logger.warning(
            "No image_processor given: the published model will not say how to preprocess images, "
            "and load_robust_model will return image_processor=None."
        )
    staged = _prepare_output_dir(output_dir, "model")
    model.save_pretrained(staged)  # safetensors is the only format transformers 5 writes
    if not any((staged / name).is_file() for name in _SAFE_WEIGHTS):
        raise RuntimeError(f"save_pretrained wrote no safetensors weights into '{staged}'.")
    if image_processor is not None:
        image_processor.save_pretrained(staged)
    card.save(staged / "README.md")
    logger.info("Staged model for %s in %s", repo_id, staged)
    if push:
        _upload(staged, repo_id, "model", private, commit_message, token)
    return staged


def _resolve_model_files(repo_id: str, revision: str | None, token: str | None, cache_dir) -> tuple[Path, list[str]]:
    """Download the safe files of a repo (never pickles); return the folder and the repo's file list."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local = Path(repo_id).expanduser()
    if local.is_dir():
        return local, sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    _check_repo_id(repo_id)
    safe_patterns = ["*.json", "*.safetensors", "README.md"]
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision or "main")
    except RevisionNotFoundError as err:
        raise FileNotFoundError(
            f"Revision '{revision}' of model '{repo_id}' does not exist on {constants.ENDPOINT}."
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"Model repository '{repo_id}' was not found on {constants.ENDPOINT} "
            "(or it is private or gated and no token with access was given)."
        ) from err
    except OfflineModeIsEnabled:
        # Offline: use what an earlier download left in the cache.
        try:
            folder = Path(
                snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                  local_files_only=True, allow_patterns=safe_patterns)
            )
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"Hub access is switched off (HF_HUB_OFFLINE) and '{repo_id}' is not in the local cache."
            ) from err
        return folder, sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = sorted(s.rfilename for s in info.siblings or [])
    _check_model_files(repo_id, files)
    folder = snapshot_download(
        repo_id, revision=info.sha, token=token, cache_dir=cache_dir, allow_patterns=safe_patterns
    )
    return Path(folder), files


def _check_model_files(repo_id: str, files: list[str]) -> None:
    if not any(name in files for name in _SAFE_WEIGHTS):
        pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
        if pickles:
            raise ValueError(
                f"'{repo_id}' holds only pickle weights ({', '.join(pickles)}) and no model.safetensors. "
                "Pickle files can run arbitrary code when loaded, so they are refused; ask the publisher for "
                "safetensors weights (or convert a checkpoint you trust with save_pretrained)."
            )
        raise ValueError(f"'{repo_id}' has no model weights (model.safetensors); its files are {files}.")
    if "config.json" not in files:
        raise ValueError(f"'{repo_id}' has no config.json, so it is not a transformers model; files: {files}.")
    if "README.md" not in files:
        raise ValueError(f"'{repo_id}' has no model card (README.md), so it has no C-Acc / ASR / R-Acc metrics.")


def load_robust_model(
    repo_id: str, revision: str | None = None, token: str | None = None, *, cache_dir: str | None = None
) -> RobustModel:
    """Load a published robust model, its image processor and the metrics stated in its card.

    Only safetensors weights are read (``use_safetensors=True``) and no code from the repo
    runs (``trust_remote_code=False``). ``repo_id`` may also be a local folder, such as one
    staged by ``publish_model(push=False)``.

    Returns:
        ``RobustModel(model, image_processor, metrics)``; ``metrics`` is
        ``{attack: {"clean_accuracy", "attack_success_rate", "robust_accuracy"}}``.
        ``image_processor`` is None if the repo has no ``preprocessor_config.json``.

    Raises:
        FileNotFoundError: the repo or revision does not exist (or is not accessible).
        ValueError: only pickle weights, no card, or a card without backdoor metrics.
    """
    folder, files = _resolve_model_files(repo_id, revision, token, cache_dir)
    _check_model_files(repo_id, files)
    card = ModelCard.load(folder / "README.md")
    metrics = card_metrics(card)
    if not metrics:
        raise ValueError(
            f"The model card of '{repo_id}' has no model-index metrics of type {METRIC_KEYS}; it was not published "
            "by hf-backdoor-guard (or its metadata was edited), so there is nothing to say how robust it is."
        )
    model, image_processor = load_image_classifier(folder, repo_id)
    if image_processor is None:
        logger.warning("'%s' has no preprocessor_config.json; image_processor is None.", repo_id)
    return RobustModel(model, image_processor, metrics)


# ----------------------------------------------------------------------------- datasets


def _size_category(rows: int) -> str:
    """The Hub's ``size_categories`` tag for ``rows`` examples."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1_000:
        return "n<1K"
    for exponent, (low, high) in enumerate(zip(bounds, bounds[1:]), start=3):
        if rows < 10 ** (exponent + 1):
            return f"{low}<n<{high}"
    return "n>1T"


def _columns_to_drop(ds, image_column: str, keep_source_images: bool, keep_poisoning_columns: bool) -> list[str]:
    from datasets import Image, Sequence

    drop = []
    for column, feature in ds.features.items():
        if column == image_column:
            continue
        is_image = isinstance(feature, Image) or (isinstance(feature, Sequence) and isinstance(feature.feature, Image))
        if not keep_source_images and (is_image or column in SOURCE_IMAGE_COLUMNS):
            drop.append(column)
        elif not keep_poisoning_columns and column in POISONING_COLUMNS:
            drop.append(column)
    return drop


def publish_dataset(
    ds,
    repo_id: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    keep_source_images: bool = False,
    keep_poisoning_columns: bool = False,
    output_dir: str | os.PathLike | None = None,
    push: bool = True,
    private: bool | None = None,
    commit_message: str = "Upload cleaned dataset made with hf-backdoor-guard",
    token: str | None = None,
    max_shard_size: int = 500 * 2**20,
    **card_info: Any,
) -> Path:
    """Stage a cleaned dataset (variations + labels) as parquet with a card, and upload it.

    Args:
        ds: a ``Dataset`` (published as split ``train``) or a ``DatasetDict``, whose
            ``image_column`` holds the variations.
        keep_source_images: keep other image columns (the poisoned source images); off by default.
        keep_poisoning_columns: keep ground-truth columns such as ``poisoned`` and
            ``original_label``; off by default.
        output_dir, push, private, commit_message, token: as in ``publish_model``.
        max_shard_size: bytes per parquet shard (roughly, before compression).
        **card_info: ``base_dataset``, ``diffusion_model``, ``diffusion_settings`` (dict),
            ``seed``, ``license``, ``attack``, ``poison_rate``, ``target_label``,
            ``pretty_name``, ``tags``; other keys are listed in the card.

    The staged folder (``data/<split>-0000i-of-0000n.parquet`` + ``README.md`` with a
    ``configs`` section) is what ``datasets.load_dataset(repo_id)`` reads.
    Returns the staged folder; raises ``PublishError`` if the upload fails.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import embed_table_storage
    from datasets.utils import logging as datasets_logging
    from tqdm.auto import tqdm

    from .validation import check_dataset

    _check_repo_id(repo_id)
    _check_output_dir(output_dir)
    if isinstance(ds, Dataset):
        splits = {"train": ds}
    elif isinstance(ds, DatasetDict):
        splits = dict(ds)
        if not splits:
            raise ValueError("The DatasetDict has no splits: there is nothing to publish.")
    else:
        raise ValueError(f"Expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}.")
    if not isinstance(max_shard_size, int) or max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be a positive number of bytes, got {max_shard_size!r}.")
    info = _check_card_info(card_info)
    prepared = {}
    sensitive: set[str] = set()  # what the defaults would leave out
    for split, part in splits.items():
        if not re.fullmatch(r"\w+(\.\w+)*", split):
            raise ValueError(f"Split name '{split}' is not valid on the Hub (use letters, digits, '_' and '.').")
        try:
            check_dataset(part, image_column, label_column)
        except ValueError as err:
            raise ValueError(f"Split '{split}': {err}") from err
        drop = _columns_to_drop(part, image_column, keep_source_images, keep_poisoning_columns)
        sensitive.update(_columns_to_drop(part, image_column, False, False))
        prepared[split] = (part.remove_columns(drop) if drop else part, drop)
    columns = {tuple(part.column_names) for part, _ in prepared.values()}
    if len(columns) > 1:
        raise ValueError(f"All splits must have the same columns to share one config; got {sorted(columns)}.")
    dropped = sorted({c for _, drop in prepared.values() for c in drop})
    if dropped:
        logger.info("Leaving out columns %s (source images / poisoning ground truth).", dropped)

    license_id = info.get("license") or "apache-2.0"
    base_dataset = info.get("base_dataset") or "unknown dataset"
    pretty_name = info.get("pretty_name") or repo_id.split("/")[-1]
    tags = ["hf-backdoor-guard", "backdoor-defense", "image-variations", "synthetic"]
    tags += [t for t in info.get("tags") or [] if t not in tags]
    rows = sum(len(part) for part, _ in prepared.values())
    card_data = DatasetCardData(
        license=license_id,
        task_categories=["image-classification"],
        tags=tags,
        size_categories=[_size_category(rows)],
        # "extended|<id>": the Hub's convention for data derived from another dataset.
        source_datasets=[f"extended|{name}" for name in _hub_dataset_ids(info.get("base_dataset")) or []] or None,
        pretty_name=pretty_name,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in prepared],
            }
        ],
    )
    card = DatasetCard.from_template(
        card_data,
        template_str=_template("dataset_card.md"),
        pretty_name=pretty_name,
        repo_id=repo_id,
        base_dataset=_fmt(base_dataset),
        attack=info.get("attack"),
        poison_rate=info.get("poison_rate"),
        target_label=info.get("target_label"),
        diffusion_model=_fmt(info.get("diffusion_model")),
        diffusion_settings=_settings(info.get("diffusion_settings")),
        seed=_fmt(info.get("seed")),
        license=license_id,
        other_details=_other_details(info),
        split_sizes=[(split, len(part)) for split, (part, _) in prepared.items()],
        columns=next(iter(columns)),
        image_column=image_column,
        label_column=label_column,
        dropped_columns=dropped,
        kept_sensitive=sorted(sensitive - set(dropped)),
        citation=_template("citation.md").strip(),
    )

    staged = _prepare_output_dir(output_dir, "dataset")
    data_dir = staged / "data"
    data_dir.mkdir()
    jobs = []
    for split, (part, _) in prepared.items():
        num_shards = max(1, math.ceil(part.data.nbytes / max_shard_size)) if len(part) else 1
        num_shards = min(num_shards, max(1, len(part)))
        jobs += [(split, part, index, num_shards) for index in range(num_shards)]
    # One bar for the whole job instead of two datasets bars per shard.
    inner_bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        for split, part, index, num_shards in tqdm(jobs, desc="Writing parquet shards", unit="shard"):
            shard = part.shard(num_shards=num_shards, index=index, contiguous=True)
            # Images stored as local paths must travel as bytes, as push_to_hub does.
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
            shard.to_parquet(str(data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
    finally:
        if inner_bars:
            datasets_logging.enable_progress_bar()
    card.save(staged / "README.md")
    logger.info("Staged dataset for %s in %s (%d rows)", repo_id, staged, rows)
    if push:
        _upload(staged, repo_id, "dataset", private, commit_message, token)
    return staged


# ----------------------------------------------------------------------------- command line


def read_metrics_file(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read metrics JSON: ``{attack: {...}}`` itself, or an object with such a ``"metrics"`` entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"Metrics file '{path}' does not exist.") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"Metrics file '{path}' is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    return _check_metrics(data, f"metrics in '{path}'")


def _path_kind(path: Path) -> str:
    if (path / "config.json").is_file():
        return "model"
    saved_split = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    if saved_split or (path / "dataset_dict.json").is_file():
        return "dataset"
    raise ValueError(
        f"'{path}' is neither a saved model folder (config.json + model.safetensors, from save_pretrained) "
        "nor a saved dataset (from Dataset.save_to_disk)."
    )


def publish_path(
    path: str | os.PathLike,
    repo_id: str,
    *,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    teacher_metrics: Mapping[str, Mapping[str, float]] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    keep_source_images: bool = False,
    keep_poisoning_columns: bool = False,
    **kwargs: Any,
) -> Path:
    """Publish a model folder (``save_pretrained``) or a saved dataset (``save_to_disk``).

    What ``backdoor-guard publish`` runs. A model needs ``metrics``; the model is read with
    ``use_safetensors=True`` and ``trust_remote_code=False``. ``kwargs`` go to
    ``publish_model`` / ``publish_dataset``.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"'{path}' is not a folder: give a saved model folder or a saved dataset.")
    _check_repo_id(repo_id)
    _check_output_dir(kwargs.get("output_dir"))
    kind = _path_kind(path)
    if kind == "model":
        if metrics is None:
            raise ValueError(
                "Publishing a model needs its metrics (--metrics metrics.json), so the card can state them."
            )
        metrics = _check_metrics(metrics)
        files = sorted(p.name for p in path.iterdir() if p.is_file())
        _check_model_files(str(path), files + ["README.md"])  # the card is written by us
        model, image_processor = load_image_classifier(path, str(path))
        return publish_model(model, repo_id, metrics, image_processor, teacher_metrics=teacher_metrics, **kwargs)

    if metrics is not None or teacher_metrics is not None:
        logger.warning("Metrics are ignored when publishing a dataset.")
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    return publish_dataset(
        ds,
        repo_id,
        image_column=image_column,
        label_column=label_column,
        keep_source_images=keep_source_images,
        keep_poisoning_columns=keep_poisoning_columns,
        **kwargs,
    )
