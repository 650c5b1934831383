"""Gather the parts of a generation run written on machines that share no storage.

Each machine runs ``generate_variations(..., part_index=i, num_parts=n)`` into a folder
of its own; once the folders are on one machine, ``merge_variation_shards`` checks every
shard against its manifest, copies it into one folder and finishes that folder as one
complete run would have (``datasets.load_from_disk`` opens it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import shards
from .generate import MANIFEST, assemble, check_folder, claimed, read_folder_manifest, settings_digest
from ..runtime.processes import Processes
from .shards import ShardSpec


def merge_variation_shards(folders, output_dir: str | os.PathLike, *, wait: bool = False):
    """Gather the parts written by ``generate_variations(..., part_index=i, num_parts=n)`` into ``output_dir``.

    Every folder must hold a finished part made with the same settings. Each shard is
    checked against its manifest before it is copied, a shard found in two folders must
    be identical, and the merged dataset must cover every input row; ``output_dir`` may
    be one of ``folders``. Call it in one process. Returns the merged ``Dataset``
    (``output_dir`` then also opens with ``datasets.load_from_disk``).
    """
    folders = [Path(folder) for folder in folders]
    if not folders:
        raise ValueError("folders is empty: pass the output folders of the parts to merge.")
    output_dir = Path(output_dir)
    records = {}
    for folder in folders:
        record = read_folder_manifest(folder)
        if record is None:
            raise ValueError(f"{folder} is not a generate_variations output folder (no {MANIFEST}).")
        if not record.get("complete"):
            raise ValueError(f"{folder} holds an unfinished part; run its generate_variations call again to finish it.")
        records[folder] = record
    settings = records[folders[0]]["settings"]
    for folder, record in records.items():
        if record["settings"] != settings:
            changed = sorted(k for k in settings.keys() | record["settings"].keys()
                             if settings.get(k) != record["settings"].get(k))
            raise ValueError(f"{folder} was made with other settings than {folders[0]} (differing: {changed}); "
                             "only parts of one run can be merged.")
    num_rows = {record["complete"]["num_rows"] for record in records.values()}
    if len(num_rows) > 1:
        raise ValueError(f"The parts read inputs of different lengths ({sorted(num_rows)} rows); they cannot be "
                         "merged.")
    num_rows = num_rows.pop()
    num_variations = settings["variation_settings"]["num_variations"]
    digest = settings_digest(settings)
    specs = shards.shard_specs(num_rows, settings["shard_size"])
    check_folder(output_dir)
    processes = Processes()  # merging is file copying: one process
    with claimed(output_dir, processes, settings, wait):
        for spec in specs:
            _merge_shard(spec, folders, output_dir, num_variations, digest)
        return assemble(output_dir, processes, settings, digest, num_rows, 0, 1, {}, None, None)


def _merge_shard(spec: ShardSpec, folders: list[Path], output_dir: Path, num_variations: int, digest: str) -> None:
    manifest, _ = shards.check_shard(output_dir, spec, num_variations, digest)
    found = {}
    for folder in folders:
        if folder.resolve() == output_dir.resolve():
            continue
        candidate, problem = shards.check_shard(folder, spec, num_variations, digest)
        if problem is not None:
            raise ValueError(f"{folder / shards.shard_name(spec.index)} cannot be merged: {problem}. Run that part's "
                             "generate_variations call again to redo it.")
        if candidate is not None:
            found[folder] = candidate
    checksums = {candidate["xxh3_128"] for candidate in found.values()} | (
        {manifest["xxh3_128"]} if manifest is not None else set())
    if len(checksums) > 1:
        raise ValueError(f"Shard {spec.index} differs between {sorted(str(f) for f in found)}"
                         f"{' and ' + str(output_dir) if manifest is not None else ''}; they are not parts of one run.")
    if manifest is not None:
        return
    if not found:
        raise ValueError(f"Shard {spec.index} (rows {spec.start}-{spec.stop - 1}) is in none of the folders: was a "
                         "part left out?")
    source, candidate = next(iter(found.items()))
    partial = output_dir / shards.partial_name(spec.index)
    partial.unlink(missing_ok=True)  # ours: a merge stopped before renaming it
    shutil.copyfile(source / shards.shard_name(spec.index), partial)  # a copy, not a link: no file is shared
    os.replace(partial, output_dir / shards.shard_name(spec.index))
    candidate = {key: value for key, value in candidate.items() if key != "pushed"}
    shards.write_shard_manifest(output_dir / shards.manifest_name(spec.index), candidate)
