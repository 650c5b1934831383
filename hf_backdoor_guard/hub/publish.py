"""Publish robust models and cleaned datasets to the Hub, and load published robust models.

Everything is staged in a local folder first (weights, config, processor or parquet
shards, plus a card rendered by ``cards``) and only then uploaded with
``HfApi.upload_folder``. A failed upload therefore loses nothing: the folder stays and
the error names it, so the upload can be retried. Staging (``staging``) deletes or
replaces only what an earlier publish staged, and the upload sends only what this
publish staged, so files a user adds to the folder are neither deleted nor uploaded.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import validate_repo_id

from .cards import CardInfo, build_dataset_card, build_model_card, card_metrics, check_metrics
from ..loading import load_classifier, load_image_classifier, load_image_processor
from ..metrics import backdoor_metrics
from ..poisoning import POISON_COLUMNS  # ground truth of a research poisoning; never published by default
from ..runtime.outputs import check_output_dir
from .staging import OWNER, check_staging_dir, stage, staged_files
from ..validation import check_int

logger = logging.getLogger(__name__)

# Ground truth that only exists because the data was poisoned on purpose (research
# setting); publishing it would hand out the answer key of the attack. ``poison_dataset``
# marks such data with this column; without it, columns named like the ground truth
# (``cover``, ``original_label``) are the user's own and are published.
RESEARCH_MARKER = "poisoned"
# Names the source image of a variation may carry; any other Image column is a source too.
SOURCE_IMAGE_COLUMNS = ("source_image", "original_image", "source")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

__all__ = ["CardInfo", "PublishError", "RobustModel", "card_metrics", "build_model_card", "load_robust_model",
           "publish_dataset", "publish_model", "publish_path", "read_metrics_file", "staged_files"]


def __getattr__(name: str):
    # METRIC_KEYS: the backdoor metrics a card states, read live from the metric registry.
    if name == "METRIC_KEYS":
        return tuple(metric.name for metric in backdoor_metrics())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PublishError(RuntimeError):
    """The upload failed; ``staged_path`` still holds ``staged_files``, everything that was to be uploaded."""

    def __init__(self, message: str, staged_path: Path, staged_files: list[str] | None = None):
        super().__init__(message)
        self.staged_path = staged_path
        self.staged_files = list(staged_files or [])


class RobustModel(NamedTuple):
    """What ``load_robust_model`` returns; unpacks as ``model, image_processor, metrics``."""

    model: Any
    image_processor: Any
    metrics: dict[str, dict[str, float]]


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string like 'user/name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except ValueError as err:  # HFValidationError is a ValueError with a terse message
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repository id: {err}") from err


def _some(names: list[str], noun: str = "files", limit: int = 5) -> str:
    """A few of ``names`` for a message (a folder may hold thousands)."""
    if len(names) <= limit:
        return f"{len(names)} {noun}: {names}" if names else f"no {noun}"
    return f"{len(names)} {noun}, e.g. {names[:limit]}"


def _upload(staged: Path, repo_id: str, repo_type: str, private: bool | None, commit_message: str, token) -> None:
    files = staged_files(staged)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        # Exactly the staged files: anything else a user keeps in the folder stays local.
        api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type=repo_type,
                          commit_message=commit_message, allow_patterns=files)
    except Exception as err:
        patterns = repr(files) if len(files) <= 8 else "error.staged_files"
        raise PublishError(
            f"Uploading {repo_type} '{repo_id}' failed ({type(err).__name__}: {err}). The {len(files)} staged files "
            f"are still in '{staged}'; retry the upload alone with HfApi().upload_folder(repo_id='{repo_id}', "
            f"folder_path='{staged}', repo_type='{repo_type}', allow_patterns={patterns}), which leaves any other "
            "file in that folder out.",
            staged,
            files,
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
    card_info: CardInfo | None = None,
    **details: Any,
) -> Path:
    """Stage a robust model with its card and upload it to the Hub.

    Args:
        model: a ``transformers`` image-classification model (``save_pretrained`` is used).
        repo_id: target repository, ``"user/name"``.
        metrics: ``{attack: {"clean_accuracy", "attack_success_rate", "robust_accuracy"}}``
            as fractions in [0, 1] (what ``evaluate_backdoor`` returns, per attack).
        image_processor: saved next to the model so ``load_robust_model`` can rebuild it.
        output_dir: staging folder; a new temp folder if None. A non-empty folder is only
            used if an earlier publish staged it; only that publish's files are replaced.
        push: upload after staging; ``False`` only stages (review the card first).
        private: visibility of a newly created repo (None: the account default).
        teacher_metrics: optional teacher numbers in the same shape, shown for comparison.
        card_info: what the card states, as a :class:`~hf_backdoor_guard.hub.cards.CardInfo`; or
        **details: its fields as keywords (``base_dataset``, ``teacher``, ``diffusion_model``,
            ``diffusion_settings``, ``distillation_settings``, ``seed``, ``license``,
            ``target_label``, ``poison_rate``, ``eval_split``, ``model_name``, ``tags``);
            any other key is listed in the card's training table.

    Returns:
        The staged folder. Raises ``PublishError`` (with ``staged_path``) if the upload fails.
    """
    _check_repo_id(repo_id)
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise ValueError(f"model must be a transformers model with save_pretrained, got {type(model).__name__}.")
    if image_processor is not None and not hasattr(image_processor, "save_pretrained"):
        raise ValueError(
            f"image_processor must be a transformers image processor, got {type(image_processor).__name__}."
        )
    card = build_model_card(repo_id, metrics, architecture=type(model).__name__, teacher_metrics=teacher_metrics,
                            card_info=card_info, **details)
    expected = ["README.md", "config.json", "model.safetensors"]
    check_staging_dir(output_dir, expected + (["preprocessor_config.json"] if image_processor is not None else []))
    if image_processor is None:
        logger.warning(
            "No image_processor given: the published model will not say how to preprocess images, "
            "and load_robust_model will return image_processor=None."
        )

    def write(folder: Path) -> None:
        model.save_pretrained(folder)  # safetensors is the only format transformers 5 writes
        if not any((folder / name).is_file() for name in _SAFE_WEIGHTS):
            raise RuntimeError(f"save_pretrained wrote no safetensors weights into '{folder}'.")
        if image_processor is not None:
            image_processor.save_pretrained(folder)
        card.save(folder / "README.md")

    staged = stage(output_dir, "model", write)
    logger.info("Staged model for %s in %s", repo_id, staged)
    if push:
        _upload(staged, repo_id, "model", private, commit_message, token)
    return staged


def _top_level_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file())


def _check_model_files(repo_id: str, files: list[str]) -> None:
    """``files`` (directly in the repo or folder) make a safetensors transformers model with a card."""
    has_weights = any(name in files for name in _SAFE_WEIGHTS)
    pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
    if not has_weights and pickles:
        raise ValueError(
            f"'{repo_id}' holds only pickle weights ({', '.join(pickles[:5])}) and no model.safetensors. "
            "Pickle files can run arbitrary code when loaded, so they are refused; ask the publisher for "
            "safetensors weights (or convert a checkpoint you trust with save_pretrained)."
        )
    if not has_weights or "config.json" not in files:
        raise ValueError(
            f"'{repo_id}' is not a model folder or repo: it needs config.json and model.safetensors directly "
            f"inside (as save_pretrained writes them), and it holds {_some(files)}."
        )
    if "README.md" not in files:
        raise ValueError(f"'{repo_id}' has no model card (README.md), so it states no backdoor metrics.")


def _resolve_model_files(repo_id: str, revision: str | None, token: str | None, cache_dir) -> Path:
    """Check what a repo or folder holds, then download its safe files (never pickles); return the folder."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local = Path(repo_id).expanduser()
    if local.is_dir():
        # Only what is directly inside: a wrong path (say '../../etc') must not be walked.
        _check_model_files(repo_id, _top_level_files(local))
        return local
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
        _check_model_files(repo_id, _top_level_files(folder))
        return folder
    _check_model_files(repo_id, sorted(s.rfilename for s in info.siblings or [] if "/" not in s.rfilename))
    return Path(snapshot_download(repo_id, revision=info.sha, token=token, cache_dir=cache_dir,
                                  allow_patterns=safe_patterns))


def load_robust_model(
    repo_id: str, revision: str | None = None, token: str | None = None, *, cache_dir: str | None = None
) -> RobustModel:
    """Load a published robust model, its image processor and the metrics stated in its card.

    Only safetensors weights are read (``use_safetensors=True``) and no code from the repo
    runs (``trust_remote_code=False``). ``repo_id`` may also be a local folder, such as one
    staged by ``publish_model(push=False)``; only the files directly inside it are looked at.

    Returns:
        ``RobustModel(model, image_processor, metrics)``; ``metrics`` is
        ``{attack: {"clean_accuracy", "attack_success_rate", "robust_accuracy"}}``.
        ``image_processor`` is None if the repo has none, or one that would need its own code
        (a warning says which).

    Raises:
        FileNotFoundError: the repo or revision does not exist (or is not accessible).
        ValueError: not a model, only pickle weights, no card, a card without backdoor
            metrics, or one whose metrics are not fractions in [0, 1].
    """
    folder = _resolve_model_files(repo_id, revision, token, cache_dir)
    metrics = card_metrics(ModelCard.load(folder / "README.md"), repo_id)
    if not metrics:
        keys = tuple(metric.name for metric in backdoor_metrics())
        raise ValueError(
            f"The model card of '{repo_id}' has no model-index metrics of type {keys}; it was not published "
            "by hf-backdoor-guard (or its metadata was edited), so there is nothing to say how robust it is."
        )
    model = load_classifier(folder, repo_id)
    image_processor, why_not = load_image_processor(folder)
    if image_processor is None:
        logger.warning("'%s': image processor %s; image_processor is None.", repo_id, why_not)
    return RobustModel(model, image_processor, metrics)


# ----------------------------------------------------------------------------- datasets


def _columns_to_drop(ds, image_column: str, keep_source_images: bool, keep_poisoning_columns: bool,
                     research: bool) -> list[str]:
    from datasets import Image, Sequence

    drop = []
    for column, feature in ds.features.items():
        if column == image_column:
            continue
        is_image = isinstance(feature, Image) or (isinstance(feature, Sequence) and isinstance(feature.feature, Image))
        if not keep_source_images and (is_image or column in SOURCE_IMAGE_COLUMNS):
            drop.append(column)
        elif research and not keep_poisoning_columns and column in POISON_COLUMNS:
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
    card_info: CardInfo | None = None,
    **details: Any,
) -> Path:
    """Stage a cleaned dataset (variations + labels) as parquet with a card, and upload it.

    Args:
        ds: a ``Dataset`` (published as split ``train``) or a ``DatasetDict``, whose
            ``image_column`` holds the variations.
        keep_source_images: keep other image columns (the poisoned source images); off by default.
        keep_poisoning_columns: keep the ground-truth columns ``poisoned``, ``cover`` and
            ``original_label`` of a research dataset (one with the ``poisoned`` column that
            ``poison_dataset`` adds); off by default. Without that column they are the
            user's own columns and are always kept.
        output_dir, push, private, commit_message, token: as in ``publish_model``.
        max_shard_size: bytes per parquet shard (roughly, before compression).
        card_info, **details: what the card states, as in ``publish_model``: ``base_dataset``,
            ``diffusion_model``, ``diffusion_settings`` (dict), ``seed``, ``license``, ``attack``,
            ``poison_rate``, ``target_label``, ``pretty_name``, ``tags``; other keys are listed.

    The staged folder (``data/<split>-0000i-of-0000n.parquet`` + ``README.md`` with a
    ``configs`` section) is what ``datasets.load_dataset(repo_id)`` reads.
    Returns the staged folder; raises ``PublishError`` if the upload fails.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import embed_table_storage
    from datasets.utils import logging as datasets_logging
    from tqdm.auto import tqdm

    from ..validation import check_dataset

    _check_repo_id(repo_id)
    if isinstance(ds, Dataset):
        splits = {"train": ds}
    elif isinstance(ds, DatasetDict):
        splits = dict(ds)
        if not splits:
            raise ValueError("The DatasetDict has no splits: there is nothing to publish.")
    else:
        raise ValueError(f"Expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}.")
    check_int("max_shard_size (bytes)", max_shard_size)
    info = CardInfo.from_kwargs(card_info, **details)
    # Research data in any split makes the ground-truth names mean ground truth in all of them.
    research = any(RESEARCH_MARKER in part.column_names for part in splits.values())
    prepared = {}
    sensitive: set[str] = set()  # what the defaults would leave out
    for split, part in splits.items():
        if not re.fullmatch(r"\w+(\.\w+)*", split):
            raise ValueError(f"Split name '{split}' is not valid on the Hub (use letters, digits, '_' and '.').")
        try:
            check_dataset(part, image_column, label_column)
        except ValueError as err:
            raise ValueError(f"Split '{split}': {err}") from err
        drop = _columns_to_drop(part, image_column, keep_source_images, keep_poisoning_columns, research)
        sensitive.update(_columns_to_drop(part, image_column, False, False, research))
        prepared[split] = (part.remove_columns(drop) if drop else part, drop)
    columns = {tuple(part.column_names) for part, _ in prepared.values()}
    if len(columns) > 1:
        raise ValueError(f"All splits must have the same columns to share one config; got {sorted(columns)}.")
    dropped = sorted({c for _, drop in prepared.values() for c in drop})
    ground_truth = [c for c in dropped if c in POISON_COLUMNS]
    if ground_truth:  # a warning: these are whole columns of the user's data that will not be on the Hub
        logger.warning("Leaving out columns %s: the poisoning ground truth of this research dataset (it has the "
                       "'%s' column). Pass keep_poisoning_columns=True (--keep-poisoning-columns) to publish them.",
                       ground_truth, RESEARCH_MARKER)
    if len(ground_truth) < len(dropped):
        logger.info("Leaving out source image columns %s; keep_source_images=True (--keep-source-images) keeps them.",
                    [c for c in dropped if c not in ground_truth])
    card = build_dataset_card(
        repo_id, info, {split: len(part) for split, (part, _) in prepared.items()}, next(iter(columns)),
        image_column=image_column, label_column=label_column, dropped_columns=dropped,
        kept_sensitive=sorted(sensitive - set(dropped)),
    )

    jobs = []
    for split, (part, _) in prepared.items():
        num_shards = max(1, math.ceil(part.data.nbytes / max_shard_size)) if len(part) else 1
        num_shards = min(num_shards, max(1, len(part)))
        jobs += [(split, part, index, num_shards) for index in range(num_shards)]

    def shard_file(split: str, index: int, num_shards: int) -> str:
        return f"data/{split}-{index:05d}-of-{num_shards:05d}.parquet"

    # Every file this publish writes is known now: refuse a user's file in the way before any work.
    check_staging_dir(output_dir, ["README.md"] + [shard_file(s, i, n) for s, _, i, n in jobs])

    def write(folder: Path) -> None:
        (folder / "data").mkdir()
        # One bar for the whole job instead of two datasets bars per shard.
        inner_bars = datasets_logging.is_progress_bar_enabled()
        datasets_logging.disable_progress_bar()
        try:
            for split, part, index, num_shards in tqdm(jobs, desc="Writing parquet shards", unit="shard"):
                shard = part.shard(num_shards=num_shards, index=index, contiguous=True)
                # Images stored as local paths must travel as bytes, as push_to_hub does.
                shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
                shard.to_parquet(str(folder / shard_file(split, index, num_shards)))
        finally:
            if inner_bars:
                datasets_logging.enable_progress_bar()
        card.save(folder / "README.md")

    staged = stage(output_dir, "dataset", write)
    logger.info("Staged dataset for %s in %s (%d rows)", repo_id, staged, sum(len(p) for p, _ in prepared.values()))
    if push:
        _upload(staged, repo_id, "dataset", private, commit_message, token)
    return staged


# ----------------------------------------------------------------------------- command line


def read_metrics_file(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read metrics JSON: ``{attack: {...}}`` itself, or an object with such a ``"metrics"`` entry."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"Metrics file '{path}' does not exist.") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"Metrics file '{path}' is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    return check_metrics(data, f"metrics in '{path}'")


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
    if kwargs.get("output_dir") is not None:
        check_output_dir(kwargs["output_dir"], OWNER)
    kind = _path_kind(path)
    if kind == "model":
        if metrics is None:
            raise ValueError(
                "Publishing a model needs its metrics (--metrics metrics.json), so the card can state them."
            )
        metrics = check_metrics(metrics)
        _check_model_files(str(path), _top_level_files(path) + ["README.md"])  # the card is written by us
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
