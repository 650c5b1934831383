"""The input of ``generate_variations``, read in order: batches of a ``Dataset`` or a stream.

Rows are read as Arrow tables (undecoded), fed to the shard's input digest, then
decoded exactly as ``Dataset.__getitem__`` decodes them (``Features.decode_batch``),
so a ``Dataset`` and a stream of the same rows give the same bytes. The generation
loop receives, per shard, ``("begin", spec)``, one ``("batch", indices, batch,
sources)`` per batch and ``("end", spec, input_digest)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import shards
from .core import ImageVariation
from .shards import InputDigest, ShardSpec

logger = logging.getLogger(__name__)


def check_inputs(ds, folder: Path, done: list[ShardSpec], batch_size: int) -> None:
    """Finished shards are kept only for the input rows they were made from."""
    table = ds.with_format("arrow")
    for spec in done:
        _compare_input(folder, spec, shard_input_digest(table, spec, batch_size))


def shard_input_digest(table, spec: ShardSpec, batch_size: int = 64) -> str:
    """The input digest of ``spec``'s rows of ``table`` (a ``Dataset`` in arrow format; any batch size gives the
    same digest)."""
    digest = InputDigest()
    for low in range(spec.start, spec.stop, batch_size):
        digest.update(table[low:min(low + batch_size, spec.stop)])
    return digest.hexdigest()


def _compare_input(folder: Path, spec: ShardSpec, found: str) -> None:
    if shards.read_manifest(folder, spec.index).get("input_digest") != found:
        raise ValueError(
            f"The input rows {spec.start}-{spec.stop - 1} differ from those {folder / shards.shard_name(spec.index)} "
            "was made from (another dataset, poisoning seed or order?); refusing to mix them. Use a new output_dir."
        )


def dataset_items(ds, variation: ImageVariation, todo: list[ShardSpec], batch_size: int):
    """``("begin", spec)``, ``("batch", ...)`` per batch and ``("end", spec, input digest)`` for each shard."""
    table, features = ds.with_format("arrow"), ds.features
    for spec in todo:
        yield "begin", spec
        digest = InputDigest()
        for low in range(spec.start, spec.stop, batch_size):
            high = min(low + batch_size, spec.stop)
            yield _batch_item(table[low:high], features, variation, list(range(low, high)), digest)
        yield "end", spec, digest.hexdigest()


def _batch_item(table, features, variation: ImageVariation, indices: list[int], digest: InputDigest):
    # Decoded as Dataset.__getitem__ decodes (features.decode_batch), so the output does not depend on the path.
    digest.update(table)
    raw = table.to_pydict()
    try:
        batch = features.decode_batch(raw)
    except Exception as error:  # PIL raises several unrelated types; find and name the cell
        raise ValueError(_undecodable(features, raw, indices, error)) from error
    return "batch", indices, batch, variation.load_sources(batch, indices)


def _undecodable(features, raw: dict, indices: list[int], error: Exception) -> str:
    for name, values in raw.items():
        decode = getattr(features[name], "decode_example", None)  # Image, Audio...; plain values need none
        for row, value in zip(indices, values if decode is not None else []):
            try:
                decode(value)
            except Exception as cell_error:
                return f"Unreadable value in column '{name}', row {row}: {type(cell_error).__name__}: {cell_error}"
    return f"Rows {indices[0]}-{indices[-1]} could not be decoded: {type(error).__name__}: {error}"


def stream_items(ds, variation: ImageVariation, folder: Path, shard_size: int, batch_size: int, is_mine, digest: str):
    """The items of ``dataset_items`` for a stream, read once in order; finished shards are checked and skipped.

    The stream's length is only known at its end: the last item is ``("rows", number)``.
    Shards finished by an earlier run give ``("finished", manifest)`` (the caller pushes those not pushed yet).
    """
    features, num_variations = ds.features, variation.num_variations
    rows = _RowReader(ds.with_format("arrow").iter(batch_size=batch_size))
    index = 0
    while True:
        start = index * shard_size
        if not is_mine(index):
            if rows.skip(shard_size) < shard_size:
                break
            index += 1
            continue
        spec = _recorded_spec(folder, index, start, shard_size)
        manifest, problem = shards.check_shard(folder, spec, num_variations, digest)
        if problem is not None:
            logger.warning("Shard %s is not trusted, redoing it: %s.", folder / shards.shard_name(index), problem)
        input_digest, position = InputDigest(), start
        if manifest is not None:  # done: check that the stream still holds the rows it was made from
            while position < spec.stop:
                table = rows.take(min(batch_size, spec.stop - position))
                if table.num_rows == 0:
                    break
                input_digest.update(table)
                position += table.num_rows
            at_end = spec.stop - spec.start < shard_size and rows.take(1).num_rows == 0
            if position != spec.stop or not (spec.stop - spec.start == shard_size or at_end):
                raise ValueError(f"The stream's rows differ from those {folder / shards.shard_name(index)} was made "
                                 "from (it has another length); refusing to mix them. Use a new output_dir.")
            _compare_input(folder, spec, input_digest.hexdigest())
            yield "finished", manifest
            if at_end:
                break
            index += 1
            continue
        while position < start + shard_size:
            table = rows.take(min(batch_size, start + shard_size - position))
            if table.num_rows == 0:
                break
            if position == start:
                yield "begin", ShardSpec(index, start, start + shard_size)
            indices = list(range(position, position + table.num_rows))
            position += table.num_rows
            yield _batch_item(table, features, variation, indices, input_digest)
        if position == start:  # the stream ended at a shard boundary
            break
        yield "end", ShardSpec(index, start, position), input_digest.hexdigest()
        if position < start + shard_size:
            break
        index += 1
    yield "rows", rows.position


def _recorded_spec(folder: Path, index: int, start: int, shard_size: int) -> ShardSpec:
    """The rows a finished stream shard says it holds (the last one may be short), if plausible."""
    manifest = shards.read_manifest(folder, index) or {}
    recorded = manifest.get("source_rows")
    if isinstance(recorded, list) and len(recorded) == 2 and recorded[0] == start and \
            0 < recorded[1] - start <= shard_size:
        return ShardSpec(index, start, recorded[1])
    return ShardSpec(index, start, start + shard_size)


class _RowReader:
    """Cut a stream of Arrow tables into tables of exactly the sizes asked (fewer at the end)."""

    def __init__(self, tables):
        self._tables, self._carry, self.position = iter(tables), None, 0

    def take(self, count: int):
        import pyarrow as pa

        pieces, have = [], 0
        while have < count:
            if self._carry is None:
                self._carry = next(self._tables, None)
                if self._carry is None:
                    break
            piece = self._carry.slice(0, count - have)
            self._carry = self._carry.slice(piece.num_rows) if piece.num_rows < self._carry.num_rows else None
            pieces.append(piece)
            have += piece.num_rows
        self.position += have
        if not pieces:
            return pa.table({})
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    def skip(self, count: int) -> int:
        return self.take(count).num_rows
