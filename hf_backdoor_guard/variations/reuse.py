"""Variations made by an earlier run, taken again for the rows whose image has not changed.

An output image depends only on its source image, its row index and the settings: each
has its own generator seeded from (seed, row, variation) (``core.variation_seed``). So a
finished ``generate_variations`` folder made with the same settings already holds the
variations of every row whose image is byte-identical at the same index, and only the
other rows need the diffusion model. A benchmark zoo poisons about a tenth of one shared
victim set per attack: a run takes the other nine tenths from earlier attacks at the same
seed. The rows left are denoised as a smaller batch: on the CPU that gives the same bytes
as the full batch (BENCHMARKS.md, "variations reused across attacks"); on a GPU another
batch size may pick other kernels, and the reused run may differ from a fresh one in the
lowest bits of the rows varied again.

A donor is a pair ``(inputs, folder)``: the rows the folder was made from, checked against
the folder's per-shard input digests before anything is taken from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from . import shards

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 1024  # image cells compared per step: memory stays flat on large datasets


class ReusedVariations:
    """Which rows of ``ds`` an earlier folder already varied, and their stored output images.

    Built (and every donor checked) before any work; ``denoise`` stands in for
    ``ImageVariation.denoise``: it runs the model on the other rows only.
    """

    def __init__(self, ds, settings: dict, digest: str, donors: Sequence[tuple], image_column: str):
        from datasets import Dataset

        self.num_variations = settings["variation_settings"]["num_variations"]
        self._donors = []  # the donors' image columns (pyarrow), as stored
        self._rows: dict[int, int] = {}  # row -> position in self._donors
        if not isinstance(ds, Dataset):
            raise ValueError("reuse needs a datasets.Dataset input (rows are matched by index); a stream cannot be "
                             "matched.")
        for number, donor in enumerate(donors):
            if not (isinstance(donor, (tuple, list)) and len(donor) == 2):
                raise ValueError(f"reuse[{number}] must be a pair (inputs Dataset, finished variations folder), "
                                 f"got {donor!r}.")
            inputs, folder = donor
            outputs = _checked_donor(inputs, Path(folder), ds, settings, digest, self.num_variations)
            found = [row for row in _same_images(ds, inputs, image_column) if row not in self._rows]
            self._rows.update((row, len(self._donors)) for row in found)
            self._donors.append(outputs.data.column(image_column))
            logger.info("Reusing the variations of %d of %d rows from %s.", len(found), len(ds), folder)

    def denoise(self, variation, sources: list, indices: list[int]) -> list:
        """``variation.denoise`` on the rows no donor holds; a donor's rows get its stored (final) images."""
        fresh = [position for position, row in enumerate(indices) if row not in self._rows]
        made = iter(variation.denoise([sources[p] for p in fresh], [indices[p] for p in fresh]) if fresh else [])
        n, fresh_positions, out = self.num_variations, set(fresh), []
        for position, row in enumerate(indices):
            if position in fresh_positions:
                out.extend(next(made) for _ in range(n))
            else:
                out.extend(self._stored(row))
        return out

    def _stored(self, row: int) -> list[dict]:
        # The encoded cells as stored ({"bytes", "path"}): written again as they are, never decoded.
        n = self.num_variations
        return self._donors[self._rows[row]].slice(row * n, n).to_pylist()


def _checked_donor(inputs, folder: Path, ds, settings: dict, digest: str, num_variations: int):
    """The donor's outputs, once it is shown to be a finished folder made with ``settings`` from ``inputs``."""
    from datasets import Dataset

    from .generate import read_folder_manifest, changed_settings
    from .inputs import shard_input_digest

    if not isinstance(inputs, Dataset):
        raise ValueError(f"reuse: the inputs given with {folder} must be the datasets.Dataset it was made from, got "
                         f"{type(inputs).__name__}.")
    record = read_folder_manifest(folder) if folder.is_dir() else None
    complete = (record or {}).get("complete") or {}
    if record is None or not complete:
        raise ValueError(f"reuse: {folder} is not a finished generate_variations folder (no complete manifest).")
    if complete.get("num_parts") != 1:
        raise ValueError(f"reuse: {folder} is one part of a split run; gather the parts with merge_variation_shards "
                         "and reuse the merged folder.")
    changed = changed_settings(settings, record["settings"])
    if changed:
        raise ValueError(f"reuse: {folder} was made with other settings (differing: {changed}); its variations are "
                         "not those this run would make.")
    if inputs.features != ds.features or len(inputs) != len(ds):
        raise ValueError(f"reuse: the inputs given with {folder} have other columns or another number of rows than "
                         f"this run's ({len(inputs)} rows, {list(inputs.features)}).")
    table = inputs.with_format("arrow")
    specs = shards.shard_specs(len(inputs), settings["shard_size"])
    for spec in specs:
        manifest, problem = shards.check_shard(folder, spec, num_variations, digest)  # its bytes, as when resuming
        if manifest is None:
            raise ValueError(f"reuse: {folder / shards.shard_name(spec.index)} cannot be trusted "
                             f"({problem or 'it is missing'}); run the call that made {folder} again to redo it.")
        if shard_input_digest(table, spec) != manifest.get("input_digest"):
            raise ValueError(f"reuse: the inputs given with {folder} are not the rows it was made from (rows "
                             f"{spec.start}-{spec.stop - 1} differ from its shard {spec.index}).")
    return shards.load_shards(folder, specs, num_variations)


def _same_images(ds, inputs, column: str) -> list[int]:
    """Rows whose stored image bytes are identical in ``ds`` and ``inputs`` (path-only cells never match: the
    file behind a path may have changed)."""
    ours, theirs = ds.with_format("arrow"), inputs.with_format("arrow")
    same = []
    for low in range(0, len(ds), _CHUNK_ROWS):
        high = min(low + _CHUNK_ROWS, len(ds))
        a = ours[low:high][column].to_pylist()
        b = theirs[low:high][column].to_pylist()
        same.extend(low + k for k, (x, y) in enumerate(zip(a, b))
                    if x is not None and y is not None and x.get("bytes") is not None and x["bytes"] == y["bytes"])
    return same

