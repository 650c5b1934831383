"""Push finished shards of ``generate_variations`` to a Hub dataset repo as parquet, as they finish.

Each finished shard is converted to ``data/train-00003.parquet`` (staged as a hidden
file in the output folder, removed after the upload) and uploaded with
``HfApi.upload_file`` in a thread of its own, so uploads never hold up the denoising.
A successful upload is recorded in the shard's manifest; a resumed run pushes the
shards that were finished but not yet pushed, so nodes without shared storage can
also meet in one repo. Upload errors do not stop the generation: they are logged, and
the run raises at the end, naming the shards still to push (running it again pushes
them without generating anything).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from ..runtime.outputs import write_json_atomic
from . import shards

logger = logging.getLogger(__name__)


def path_in_repo(index: int) -> str:
    return f"data/train-{index:05d}.parquet"


def create_dataset_repo(repo_id: str, token: str | None, private: bool | None) -> None:
    HfApi(token=token).create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)


def stage_parquet(folder: Path, index: int) -> Path:
    """Shard ``index`` of ``folder`` as a parquet file next to it (hidden name), for the upload."""
    from datasets import Dataset
    from datasets.utils import logging as datasets_logging

    staged = folder / f".{Path(path_in_repo(index)).name}.staging"
    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        Dataset.from_file(str(folder / shards.shard_name(index))).to_parquet(str(staged))
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
    return staged


def is_pushed(manifest: dict, repo_id: str) -> bool:
    pushed = manifest.get("pushed") or {}
    return pushed.get("repo_id") == repo_id and pushed.get("xxh3_128") == manifest.get("xxh3_128")


class ShardPusher:
    """Uploads shards in order of arrival, in a background thread; :meth:`close` returns the failures."""

    def __init__(self, folder: Path, repo_id: str, token: str | None = None):
        self.folder, self.repo_id, self.token = folder, repo_id, token
        self.failed: dict[int, str] = {}
        self._queue: queue.Queue = queue.Queue()  # shard indices only: small, needs no bound
        self._thread = threading.Thread(target=self._run, name="hbg-shard-pusher", daemon=True)
        self._thread.start()

    def submit(self, index: int) -> None:
        self._queue.put(index)

    def close(self) -> dict[int, str]:
        self._queue.put(None)
        self._thread.join()
        return dict(self.failed)

    def _run(self) -> None:
        while (index := self._queue.get()) is not None:
            try:
                self._push(index)
            except Exception as error:  # reported at the end of the run; the shard stays unpushed
                self.failed[index] = f"{type(error).__name__}: {error}"
                logger.warning("Pushing shard %d to %s failed (%s); a rerun pushes it again.", index, self.repo_id,
                               self.failed[index])

    def _push(self, index: int) -> None:
        manifest = shards.read_manifest(self.folder, index)
        staged = stage_parquet(self.folder, index)
        try:
            HfApi(token=self.token).upload_file(
                path_or_fileobj=str(staged), path_in_repo=path_in_repo(index), repo_id=self.repo_id,
                repo_type="dataset", commit_message=f"Add variations shard {index} (hf-backdoor-guard)")
        finally:
            staged.unlink(missing_ok=True)
        manifest["pushed"] = {"repo_id": self.repo_id, "path": path_in_repo(index), "xxh3_128": manifest["xxh3_128"]}
        write_json_atomic(self.folder / shards.manifest_name(index), manifest, sort_keys=True)
        logger.info("Pushed shard %d to %s as %s", index, self.repo_id, path_in_repo(index))


def push_card(repo_id: str, token: str | None, num_rows: int | None, settings: dict) -> None:
    """A short dataset card saying what the parquet files are; publish_dataset writes the full one."""
    data = DatasetCardData(
        tags=["hf-backdoor-guard", "image-variations", "synthetic"], task_categories=["image-classification"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    rows = f"{num_rows} rows" if num_rows is not None else "rows"
    card = DatasetCard(
        f"---\n{data.to_yaml()}\n---\n\n# Image variations\n\nDiffusion variations ({rows}) written shard by shard "
        "by `hf_backdoor_guard.generate_variations`; `source_index` and `variation_index` link each row to its source "
        "row. Generation settings:\n\n```json\n" + json.dumps(settings, indent=2, sort_keys=True, default=str)
        + "\n```\n"
    )
    HfApi(token=token).upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id,
                                   repo_type="dataset", commit_message="Dataset card (hf-backdoor-guard)")
