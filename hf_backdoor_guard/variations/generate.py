"""``generate_variations``: resumable, sharded, multi-process (and multi-node) variation of a dataset.

Rows are cut into shards of ``shard_size`` source rows, each written as one Arrow file
with a manifest (``shards.py``): a rerun keeps the shards whose manifest matches and
redoes the others, a rerun with other settings refuses to mix the two. While the
accelerator denoises one batch, threads decode the next inputs and post-process, encode
and write the previous outputs (``writer.py``).

Under ``accelerate launch`` / ``torchrun`` each process takes every W-th shard; batches
never cross a shard boundary, so every image is computed in the same batch whatever
the number of processes, and the output is bit-identical to one process. The main
process holds an advisory lock on the folder for the run, so a second run on the same
folder fails with a message naming the first (or waits, with ``wait=True``).

Several machines without shared storage each run one *part* (``part_index`` of
``num_parts``: the shards ``i`` with ``i % num_parts == part_index``) into a folder of
their own; :func:`merge_variation_shards` then gathers the parts, checking every shard
against its manifest. The input may be a ``datasets.IterableDataset``
(``load_dataset(..., streaming=True)``): it is read once, in order, and a rerun skips
the finished shards by row count. Finished shards can be pushed to a Hub dataset repo
as parquet as they finish (``push_to_hub``, ``hub_push.py``).

When every shard is done, the folder is also a regular ``save_to_disk`` folder:
``datasets.load_from_disk(output_dir)`` opens it later without the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from ..runtime.outputs import check_output_dir, claim_output_dir, locked, record_outputs, write_json_atomic
from ..validation import check_int
from . import hub_push, shards
from .core import ImageVariation
from .reuse import ReusedVariations
from .inputs import check_inputs, dataset_items, stream_items
from ..runtime.processes import Processes, current_processes, host
from .shards import ShardSpec
from .writer import ShardWriter, prefetch

logger = logging.getLogger(__name__)

OWNER = "generate_variations"
MANIFEST = "variations_manifest.json"
MANIFEST_VERSION = 2


def generate_variations(ds, variation: ImageVariation, output_dir: str | os.PathLike, batch_size: int = 8,
                        shard_size: int | None = None, *, progress: bool = True, overlap: bool = True,
                        wait: bool = False, part_index: int = 0, num_parts: int = 1, push_to_hub: str | None = None,
                        hub_token: str | None = None, hub_private: bool | None = None, reuse: Sequence = ()):
    """Vary every row of ``ds`` with ``variation`` and return the finished ``Dataset``.

    Args:
        ds: the input ``datasets.Dataset``, or an ``IterableDataset`` (streaming; read in
            order, once per process). Not modified.
        variation: an ``ImageVariation``.
        output_dir: where shards, manifests and finally the dataset files go. It must be
            new, empty, or a folder from an earlier call with the same settings (resumed).
        batch_size: source rows per pipeline call (each gives ``num_variations`` images).
        shard_size: source rows per shard file (default ``64 * batch_size``). Smaller shards
            lose less work on a crash; shard and batch sizes are part of the settings.
        progress: show a progress bar (main process only) with images/s.
        overlap: run decoding, post-processing, encoding and writing in threads, alongside
            the denoising (same output bytes; ``False`` runs them in turn).
        wait: when another run holds ``output_dir``, wait for it instead of failing.
        part_index, num_parts: run only part ``part_index`` of ``num_parts`` (shards ``i``
            with ``i % num_parts == part_index``), e.g. one part per machine when the
            machines share no storage; gather the parts with ``merge_variation_shards``.
        push_to_hub: a Hub dataset repo id: push each finished shard there as
            ``data/train-0000i.parquet`` (and a short card at the end).
        hub_token, hub_private: token and visibility for ``push_to_hub``.
        reuse: pairs ``(inputs, folder)``: finished folders of earlier calls with the same
            settings, and the rows each was made from. A row whose image bytes are the
            same at the same index there takes its stored variations instead of being
            generated again (the same images on the CPU: see ``reuse.py``); the first pair that
            holds a row wins. Each pair is checked (settings, per-shard input digests)
            before any work.

    Returns:
        The varied dataset, memory-mapped from ``output_dir`` (``num_variations`` rows per
        input row, in input order, with ``source_index`` and ``variation_index``); with
        ``num_parts > 1``, the rows of this part only.
    """
    from datasets import Dataset, IterableDataset
    from tqdm.auto import tqdm

    # --- every check before any work -------------------------------------------------
    if not isinstance(variation, ImageVariation):
        raise ValueError(f"variation must be an ImageVariation, got {type(variation).__name__}.")
    streaming = isinstance(ds, IterableDataset)
    if streaming:
        _check_stream(ds, variation)
    elif isinstance(ds, Dataset):
        variation.check_dataset(ds)
    else:
        raise ValueError(f"Expected a datasets.Dataset or IterableDataset, got {type(ds).__name__}.")
    check_int("batch_size", batch_size)
    shard_size = 64 * batch_size if shard_size is None else shard_size
    check_int("shard_size", shard_size)
    check_int("num_parts", num_parts)
    check_int("part_index", part_index, minimum=0, maximum=num_parts - 1)
    if not streaming:
        _check_part_has_shards(len(ds), shard_size, part_index, num_parts)
    if push_to_hub is not None:
        _check_repo_id(push_to_hub)
    output_dir = Path(output_dir)
    check_folder(output_dir)

    processes = current_processes()
    num_variations = variation.num_variations
    settings = {
        "version": MANIFEST_VERSION,
        "variation": variation.fingerprint,
        "variation_settings": json.loads(json.dumps(variation.settings(), default=str)),
        "input_features": ds.features.to_dict(),
        "num_rows": None if streaming else len(ds),
        "shard_size": shard_size,
        "batch_size": batch_size,
    }
    digest = settings_digest(settings)
    reused = ReusedVariations(ds, settings, digest, reuse, variation.image_column) if reuse else None

    with claimed(output_dir, processes, settings, wait):
        if push_to_hub is not None and processes.is_main:
            hub_push.create_dataset_repo(push_to_hub, hub_token, hub_private)
        processes.barrier()

        def is_mine(index: int) -> bool:
            return index % num_parts == part_index and (index // num_parts) % processes.world == processes.rank

        if streaming:
            todo_rows, items = None, stream_items(ds, variation, output_dir, shard_size, batch_size, is_mine, digest)
        else:
            mine = [spec for spec in shards.shard_specs(len(ds), shard_size) if is_mine(spec.index)]
            done, todo = _sort_out(output_dir, mine, num_variations, digest)
            check_inputs(ds, output_dir, done, batch_size)
            if done:
                logger.info("Process %d: %d of its %d shards already done in %s; resuming.", processes.rank,
                            len(done), len(mine), output_dir)
            todo_rows = sum(spec.stop - spec.start for spec in todo)
            items = dataset_items(ds, variation, todo, batch_size)

        pusher = hub_push.ShardPusher(output_dir, push_to_hub, hub_token) if push_to_hub else None
        if pusher is not None and not streaming:  # shards finished earlier but not pushed yet
            for spec in done:
                if not hub_push.is_pushed(shards.read_manifest(output_dir, spec.index), push_to_hub):
                    pusher.submit(spec.index)
        bar = tqdm(total=None if todo_rows is None else todo_rows * num_variations, unit="img",
                   desc="Image variations", disable=not (progress and processes.is_main))
        writer = ShardWriter(output_dir, variation, variation.output_features(ds.features), num_variations, digest,
                             bar, background=overlap,
                             on_finished=None if pusher is None else lambda spec, _: pusher.submit(spec.index))
        num_rows = None if streaming else len(ds)
        try:
            with contextlib.closing(prefetch(items, enabled=overlap)) as reader:
                for item in reader:
                    kind = item[0]
                    if kind == "batch":
                        _, indices, batch, sources = item
                        arrays = (reused.denoise(variation, sources, indices) if reused is not None
                                  else variation.denoise(sources, indices))
                        writer.add(indices, batch, sources, arrays)
                    elif kind == "begin":
                        writer.begin(item[1])
                    elif kind == "end":
                        writer.end(item[1], item[2])
                    elif kind == "finished":  # a shard of the stream finished by an earlier run
                        if pusher is not None and not hub_push.is_pushed(item[1], push_to_hub):
                            pusher.submit(item[1]["shard"])
                    else:  # "rows": the stream's length
                        num_rows = item[1]
        finally:
            try:
                writer.close()
            finally:
                bar.close()
                failed = pusher.close() if pusher is not None else {}
        processes.barrier()
        return assemble(output_dir, processes, settings, digest, num_rows, part_index, num_parts, failed,
                        push_to_hub, hub_token)


# ----------------------------------------------------------------------------- checks


def _check_stream(ds, variation: ImageVariation) -> None:
    from datasets import Image

    if ds.features is None:
        raise ValueError("The streaming dataset does not know its features; give them, e.g. "
                         "ds = ds.cast(datasets.Features({...})), so the image column can be checked.")
    column = variation.image_column
    if column not in ds.features:
        raise ValueError(f"Image column '{column}' not found; the dataset has columns {list(ds.features)}. "
                         "Pass image_column=... to name it.")
    if not isinstance(ds.features[column], Image):
        raise ValueError(f"Column '{column}' has feature {ds.features[column]!r}; expected datasets.Image().")
    variation._check_columns(ds.features)


def _check_repo_id(repo_id) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise HFValidationError("expected 'namespace/name'")
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"push_to_hub must be a Hub dataset repo id 'namespace/name', got {repo_id!r} ({error}).")


def check_folder(output_dir: Path) -> None:
    """The folder guard, before any work: new, empty, or ours; folders of older versions are named as such."""
    from ..runtime.outputs import read_marker

    if output_dir.is_dir() and read_marker(output_dir) is None and (output_dir / MANIFEST).is_file():
        raise ValueError(
            f"output_dir {output_dir} was written by an older version of generate_variations, whose shards carry "
            "no checksums and cannot be verified; use a new output_dir (nothing there was touched)."
        )
    check_output_dir(output_dir, OWNER)


def settings_digest(settings: dict) -> str:
    import xxhash

    return xxhash.xxh3_128(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def changed_settings(settings: dict, recorded: dict) -> list[str]:
    """The keys whose values differ between two folders' settings."""
    return sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))


def read_folder_manifest(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


@contextlib.contextmanager
def claimed(output_dir: Path, processes: Processes, settings: dict, wait: bool):
    """Claim and lock ``output_dir`` (main process) for the run, and agree on its settings manifest."""
    with contextlib.ExitStack() as stack:
        error = None
        if processes.is_main:
            try:
                claim_output_dir(output_dir, OWNER)
                stack.enter_context(locked(output_dir, OWNER, wait=wait))
                _check_or_write_settings(output_dir, settings)
            except (RuntimeError, ValueError) as caught:
                error = caught
        processes.raise_together(error)
        # Every process must see the manifest the main process wrote; if not, the folder is not shared.
        seen = processes.gather((host(), (output_dir / MANIFEST).is_file()))
        blind = sorted({name for name, visible in seen if not visible})
        if blind:
            raise ValueError(
                f"output_dir {output_dir} is not on storage shared by all processes (not visible on {blind}). Put it "
                "on shared storage, or run one job per machine with part_index=i, num_parts=n into a folder of its "
                "own and gather them with merge_variation_shards."
            )
        yield


def _check_or_write_settings(output_dir: Path, settings: dict) -> None:
    recorded = read_folder_manifest(output_dir)
    if recorded is None:
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(output_dir / MANIFEST, {"settings": settings, "created": created}, sort_keys=True)
        record_outputs(output_dir, [MANIFEST])
        return
    changed = changed_settings(settings, recorded["settings"])
    if changed:
        raise ValueError(
            f"output_dir {output_dir} holds variations made with other settings (differing: {changed}); refusing to "
            "mix them. Use a new output_dir, or delete this one to start over."
        )


# ----------------------------------------------------------------------------- shards to do


def _sort_out(folder: Path, specs: list[ShardSpec], num_variations: int, digest: str):
    """Split ``specs`` into shards done (verified) and to do; damaged shards are logged and redone."""
    done, todo = [], []
    for spec in specs:
        manifest, problem = shards.check_shard(folder, spec, num_variations, digest)
        if manifest is not None:
            done.append(spec)
            continue
        if problem is not None:
            logger.warning("Shard %s is not trusted, redoing it: %s.", folder / shards.shard_name(spec.index), problem)
        todo.append(spec)
    return done, todo


# ----------------------------------------------------------------------------- the end


def assemble(folder: Path, processes: Processes, settings: dict, digest: str, num_rows: int | None, part_index: int,
             num_parts: int, failed: dict, push_to_hub: str | None, hub_token: str | None):
    """Check the part's shards row by row, finish the folder (main process) and return the dataset."""
    lengths = set(processes.gather(num_rows))
    specs = [spec for spec in shards.shard_specs(num_rows or 0, settings["shard_size"])
             if spec.index % num_parts == part_index]
    error, failures, dataset = None, processes.gather(failed), None
    if processes.is_main:
        try:
            if len(lengths) > 1:
                raise RuntimeError(f"The processes read inputs of different lengths ({sorted(lengths)} rows).")
            _check_part_has_shards(num_rows, settings["shard_size"], part_index, num_parts)
            dataset = shards.load_shards(folder, specs, settings["variation_settings"]["num_variations"])
            _finish_folder(folder, specs, settings, digest, num_rows, part_index, num_parts)
            unpushed = sorted(index for found in failures for index in found)
            if push_to_hub and not unpushed:
                hub_push.push_card(push_to_hub, hub_token, num_rows, settings["variation_settings"])
        except (RuntimeError, ValueError) as caught:
            error = caught
    processes.raise_together(error)
    if dataset is None:
        dataset = shards.load_shards(folder, specs, settings["variation_settings"]["num_variations"])
    unpushed = {index: why for found in failures for index, why in found.items()}
    if unpushed:
        raise RuntimeError(
            f"Generation is complete in {folder}, but shards {sorted(unpushed)} could not be pushed to {push_to_hub} "
            f"(first error: {next(iter(unpushed.values()))}). Run the same call again to push them; nothing is "
            "generated again."
        )
    return dataset


def _check_part_has_shards(num_rows: int | None, shard_size: int, part_index: int, num_parts: int) -> None:
    if not num_rows:
        raise ValueError("The dataset is empty: there is nothing to process.")
    num_shards = len(shards.shard_specs(num_rows, shard_size))
    if part_index >= num_shards:
        raise ValueError(f"Part {part_index} of {num_parts} has no shards: the input's {num_rows} rows make "
                         f"{num_shards} shards of {shard_size} rows. Use fewer parts or a smaller shard_size.")


def _finish_folder(folder: Path, specs: list[ShardSpec], settings: dict, digest: str, num_rows: int, part_index: int,
                   num_parts: int) -> None:
    """Make the checked shards a finished folder: manifests present, ``load_from_disk`` layout, outputs recorded."""
    from datasets import Dataset

    for spec in specs:
        manifest = shards.read_manifest(folder, spec.index)
        path = folder / shards.shard_name(spec.index)
        if manifest is None or manifest.get("num_bytes") != path.stat().st_size:
            raise RuntimeError(f"The manifest of {path} is missing or does not match the file after every process "
                               "finished; run the same call again to redo the shard.")
    names = [name for spec in specs for name in (shards.shard_name(spec.index), shards.manifest_name(spec.index))]
    if num_parts == 1:
        features = Dataset.from_file(str(folder / shards.shard_name(specs[0].index))).features  # as stored
        shards.write_load_from_disk_layout(folder, specs, features, digest[:16])
        names += ["dataset_info.json", "state.json"]
    else:
        logger.info("Part %d of %d is complete in %s; gather the parts with merge_variation_shards.", part_index,
                    num_parts, folder)
    record_outputs(folder, names)
    record = read_folder_manifest(folder)
    record["complete"] = {"num_rows": num_rows, "num_shards": len(shards.shard_specs(num_rows, settings["shard_size"])),
                          "part_index": part_index, "num_parts": num_parts}
    write_json_atomic(folder / MANIFEST, record, sort_keys=True)
