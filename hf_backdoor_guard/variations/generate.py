"""``generate_variations``: resumable, sharded, multi-process variation of a whole dataset.

Rows are cut into shards of ``shard_size`` source rows. Each shard is written to
``output_dir`` as one Arrow file, first under a temporary name and renamed only once
complete, so a crash or Ctrl-C never leaves a half shard that looks finished. A
manifest records the fingerprint of everything that decides the output (the variation's
settings and weights, the input dataset, the shard size); a rerun with the same
fingerprint skips finished shards, a rerun with another refuses to mix the two.

Under ``accelerate launch`` / ``torchrun`` each process takes shards ``rank, rank + W,
...``; batches never cross a shard boundary, so every image is computed in the same
batch whatever the number of processes, and the result is bit-identical to one process.
When all shards are done the main process writes ``state.json`` and
``dataset_info.json``, which makes ``output_dir`` a regular ``save_to_disk`` folder:
``datasets.load_from_disk(output_dir)`` opens it later without the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..validation import check_int
from .core import ImageVariation

logger = logging.getLogger(__name__)

MANIFEST = "variations_manifest.json"
MANIFEST_VERSION = 1


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


class _SingleProcess:
    """Stands in for accelerate's PartialState when nothing was launched in parallel."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


class _TorchDistributed:
    """A process group someone already started (torchrun, accelerate, a debug launcher)."""

    def __init__(self):
        import torch.distributed as dist

        self._dist = dist
        self.process_index, self.num_processes = dist.get_rank(), dist.get_world_size()
        self.is_main_process = self.process_index == 0

    def wait_for_everyone(self) -> None:
        self._dist.barrier()


def _process_state():
    """Rank, world size and barrier of the current launch; one process when nothing was launched.

    Under ``accelerate launch`` / ``torchrun`` accelerate's PartialState sets up the
    process group; an initialised ``torch.distributed`` group is used as is. A plain
    single-process call does not create accelerate's global state as a side effect.
    """
    import torch.distributed as dist
    from accelerate import PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or PartialState._shared_state:
        state = PartialState()
        if state.num_processes > 1:
            return state
    # torchrun on a machine without GPUs: PartialState starts the process group but reports one
    # process; accelerate's debug_launcher starts the group without the environment variables.
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _TorchDistributed()
    return _SingleProcess()


def _shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def generate_variations(ds, variation: ImageVariation, output_dir: str | os.PathLike, batch_size: int = 8,
                        shard_size: int | None = None, *, progress: bool = True):
    """Vary every row of ``ds`` with ``variation`` and return the finished ``Dataset``.

    Args:
        ds: the input ``datasets.Dataset`` (not modified).
        variation: an ``ImageVariation``.
        output_dir: where shards, the manifest and finally the dataset files go. It must be
            new, empty, or a folder from an earlier call with the same settings (resumed).
        batch_size: source rows per pipeline call (each gives ``num_variations`` images).
        shard_size: source rows per shard file (default ``64 * batch_size``). Smaller shards
            lose less work on a crash; the shard layout is part of the fingerprint.
        progress: show a progress bar (main process only) with images/s.

    Returns:
        The varied dataset, memory-mapped from ``output_dir`` (``num_variations`` rows per
        input row, in input order, with ``source_index`` and ``variation_index``).
    """
    from datasets import Dataset, DatasetInfo, load_from_disk
    from datasets.utils.py_utils import asdict  # datasets' own: JSON-ready features (ClassLabel names...)
    from tqdm.auto import tqdm

    # --- every check before any work -------------------------------------------------
    if not isinstance(variation, ImageVariation):
        raise ValueError(f"variation must be an ImageVariation, got {type(variation).__name__}.")
    if not isinstance(ds, Dataset):
        raise ValueError(f"Expected a datasets.Dataset, got {type(ds).__name__}.")
    variation.check_dataset(ds)
    check_int("batch_size", batch_size)
    if shard_size is None:
        shard_size = 64 * batch_size
    check_int("shard_size", shard_size)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} exists and is not a folder.")

    state = _process_state()
    rank, world = state.process_index, state.num_processes
    source = ds.with_format(None)  # plain python values whatever format/transform the user set
    features = variation.output_features(ds.features)
    num_rows = len(ds)
    num_shards = (num_rows + shard_size - 1) // shard_size
    settings = {
        "version": MANIFEST_VERSION,
        "variation": variation.fingerprint,
        "variation_settings": json.loads(json.dumps(variation.settings(), default=str)),
        "dataset_fingerprint": ds._fingerprint,
        "num_rows": num_rows,
        "shard_size": shard_size,
        "num_shards": num_shards,
    }
    manifest_path = output_dir / MANIFEST

    def check_manifest() -> bool:
        if not manifest_path.is_file():
            return False
        recorded = json.loads(manifest_path.read_text())
        recorded_settings = {key: recorded.get(key) for key in settings}
        if recorded_settings != settings:
            changed = sorted(key for key in settings if recorded_settings[key] != settings[key])
            raise ValueError(
                f"output_dir {output_dir} holds variations made with other settings (differing: {changed}); "
                "refusing to mix them. Use a new output_dir, or delete this one to start over."
            )
        return True

    has_manifest = check_manifest()
    if not has_manifest and output_dir.is_dir() and any(output_dir.iterdir()):
        found = sorted(path.name for path in output_dir.iterdir())[:3]
        raise ValueError(f"output_dir {output_dir} is not empty (holds {found}...) and was not written by "
                         "generate_variations; choose a new or empty folder (nothing there was touched).")
    if state.is_main_process and not has_manifest:
        output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(manifest_path, {**settings, "batch_size": batch_size,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    state.wait_for_everyone()
    check_manifest()

    # --- this process's shards --------------------------------------------------------
    mine = [i for i in range(rank, num_shards, world)]
    pending = [i for i in mine if not (output_dir / _shard_name(i, num_shards)).is_file()]
    skipped = len(mine) - len(pending)
    if skipped:
        logger.info("Process %d: %d of its %d shards already done in %s; resuming.", rank, skipped, len(mine),
                    output_dir)
    todo_rows = sum(min(shard_size, num_rows - i * shard_size) for i in pending)
    bar = tqdm(total=todo_rows * variation.num_variations, unit="img", desc="Image variations",
               disable=not (progress and state.is_main_process))
    try:
        for index in pending:
            _write_shard(source, variation, features, output_dir, index, num_shards, shard_size, batch_size, bar)
    finally:
        bar.close()
    state.wait_for_everyone()

    # --- assembly -----------------------------------------------------------------------
    files = [_shard_name(i, num_shards) for i in range(num_shards)]
    if state.is_main_process:
        missing = [name for name in files if not (output_dir / name).is_file()]
        if missing:
            raise RuntimeError(f"Shards {missing} are missing from {output_dir} after every process finished.")
        info = asdict(DatasetInfo(features=features))
        (output_dir / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        _atomic_write_json(output_dir / "state.json", {
            "_data_files": [{"filename": name} for name in files],
            "_fingerprint": variation.fingerprint[:16] + settings["dataset_fingerprint"][:16],
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
            "_output_all_columns": False, "_split": None,
        })
    state.wait_for_everyone()
    return load_from_disk(str(output_dir))


def _write_shard(source, variation, features, output_dir: Path, index: int, num_shards: int, shard_size: int,
                 batch_size: int, bar) -> None:
    """Vary the rows of shard ``index`` batch by batch, streaming them to one Arrow file."""
    from datasets.arrow_writer import ArrowWriter

    start = index * shard_size
    stop = min(start + shard_size, len(source))
    final = output_dir / _shard_name(index, num_shards)
    partial = output_dir / f".{final.name}.partial"
    began = time.perf_counter()
    writer = ArrowWriter(features=features, path=str(partial))
    try:
        for low in range(start, stop, batch_size):
            high = min(low + batch_size, stop)
            out = variation(source[low:high], list(range(low, high)))
            writer.write_batch(features.encode_batch(out))
            bar.update(len(out[variation.image_column]))
        writer.finalize()
    finally:
        writer.close()
    os.replace(partial, final)
    logger.info("Shard %d/%d (rows %d-%d) written in %.1fs", index + 1, num_shards, start, stop - 1,
                time.perf_counter() - began)
