"""Shard files of ``generate_variations``: naming, manifests, verification and assembly.

A shard holds the variations of ``shard_size`` consecutive source rows in one Arrow
stream file, ``data-00003.arrow``. It is written as ``.data-00003.arrow.partial`` and
renamed once complete; only then is its manifest ``data-00003.json`` written
(atomically). The manifest records the shard's index, its source rows, its number of
rows, the file's size and xxh3-128 checksum, the digest of the settings that made it
and the digest of its input rows.

A shard is trusted only when its manifest matches the file and the run: a shard
truncated (even at a record-batch boundary), cut in the middle, copied over another or
left without a manifest by a kill is redone, with a warning naming the file. At
assembly every shard's ``source_index``/``variation_index`` columns are checked against
the rows it must hold, so the dataset returned has exactly ``num_variations`` rows per
input row, in order.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..runtime.outputs import write_json_atomic
from .core import SOURCE_INDEX, VARIATION_INDEX

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` holds the variations of source rows ``start`` to ``stop - 1``."""

    index: int
    start: int
    stop: int

    def rows(self, num_variations: int) -> int:
        return (self.stop - self.start) * num_variations


def shard_name(index: int) -> str:
    return f"data-{index:05d}.arrow"


def manifest_name(index: int) -> str:
    return f"data-{index:05d}.json"


def partial_name(index: int) -> str:
    return f".{shard_name(index)}.partial"


def shard_specs(num_rows: int, shard_size: int) -> list[ShardSpec]:
    return [ShardSpec(i, start, min(start + shard_size, num_rows))
            for i, start in enumerate(range(0, num_rows, shard_size))]


def file_digest(path: str | os.PathLike) -> str:
    import xxhash

    digest = xxhash.xxh3_128()
    with open(path, "rb") as file:
        while chunk := file.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class InputDigest:
    """Digest of a shard's input rows as stored (image bytes, labels...), fed batch by batch.

    Recorded in the manifest and compared when a run resumes, so a finished shard is
    never kept for input rows that changed since (another poisoning seed, another file).
    """

    def __init__(self):
        import xxhash

        self._digest = xxhash.xxh3_128()

    def update(self, table) -> None:
        """Feed a ``pyarrow.Table`` of input rows (undecoded); row by row, so batching does not matter."""
        for row in table.to_pylist():
            self._feed(row)

    def _feed(self, value) -> None:
        if isinstance(value, (bytes, bytearray)):
            self._digest.update(b"b%d:" % len(value))
            self._digest.update(value)
        elif isinstance(value, dict):
            self._digest.update(b"{")
            for key in sorted(value):
                self._digest.update(f"{key}=".encode())
                self._feed(value[key])
            self._digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            self._digest.update(b"[")
            for item in value:
                self._feed(item)
            self._digest.update(b"]")
        else:
            self._digest.update(f"{type(value).__name__}:{value!r};".encode())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def write_shard_manifest(path: Path, manifest: dict) -> None:
    """Written only after the shard file is in place (the fault-injection tests kill a run right here)."""
    write_json_atomic(path, manifest, sort_keys=True)


def make_manifest(folder: Path, spec: ShardSpec, num_variations: int, settings_digest: str, input_digest: str) -> dict:
    path = folder / shard_name(spec.index)
    return {"shard": spec.index, "source_rows": [spec.start, spec.stop], "rows": spec.rows(num_variations),
            "num_bytes": path.stat().st_size, "xxh3_128": file_digest(path), "settings": settings_digest,
            "input_digest": input_digest}


def read_manifest(folder: Path, index: int) -> dict | None:
    path = folder / manifest_name(index)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_shard(folder: Path, spec: ShardSpec, num_variations: int, settings_digest: str
                ) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` for a shard that can be trusted, ``(None, why)`` for one to redo.

    ``(None, None)``: the shard was never started (no file, no manifest).
    """
    path = folder / shard_name(spec.index)
    has_manifest = (folder / manifest_name(spec.index)).exists()
    if not path.exists():
        return None, "its manifest is there but the shard file is missing" if has_manifest else None
    manifest = read_manifest(folder, spec.index)
    if manifest is None:
        return None, ("its manifest is unreadable" if has_manifest else
                      "it has no manifest (a run was stopped between writing the shard and its manifest)")
    expected = {"shard": spec.index, "source_rows": [spec.start, spec.stop], "rows": spec.rows(num_variations),
                "settings": settings_digest}
    wrong = sorted(key for key, value in expected.items() if manifest.get(key) != value)
    if wrong:
        return None, f"its manifest does not match this shard ({', '.join(wrong)})"
    size = path.stat().st_size
    if size != manifest.get("num_bytes"):
        return None, f"it holds {size} bytes, its manifest says {manifest.get('num_bytes')}"
    if file_digest(path) != manifest.get("xxh3_128"):
        return None, "its checksum does not match its manifest"
    try:
        check_shard_rows(path, spec, num_variations)
    except ValueError as error:
        return None, str(error)
    return manifest, None


def check_shard_rows(path: Path, spec: ShardSpec, num_variations: int) -> None:
    """The shard holds exactly the rows of ``spec``: ``source_index``/``variation_index`` row by row."""
    import numpy as np
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all().select([SOURCE_INDEX, VARIATION_INDEX])
            sources = table.column(SOURCE_INDEX).to_numpy()
            variations = table.column(VARIATION_INDEX).to_numpy()
    except (OSError, KeyError, pa.ArrowException) as error:
        raise ValueError(f"{path} is not a readable shard ({type(error).__name__}: {error})") from error
    expected_sources = np.repeat(np.arange(spec.start, spec.stop), num_variations)
    expected_variations = np.tile(np.arange(num_variations), spec.stop - spec.start)
    if not (np.array_equal(sources, expected_sources) and np.array_equal(variations, expected_variations)):
        raise ValueError(
            f"{path} does not hold the variations of source rows {spec.start}-{spec.stop - 1} "
            f"({len(sources)} rows, source_index {_span(sources)}; expected {len(expected_sources)} rows)"
        )


def _span(values) -> str:
    return f"{int(values.min())}-{int(values.max())}" if len(values) else "none"


def load_shards(folder: Path, specs: list[ShardSpec], num_variations: int):
    """The shards of ``specs`` as one memory-mapped ``Dataset``, each checked row by row first."""
    from datasets import Dataset, concatenate_datasets

    parts = []
    for spec in specs:
        path = folder / shard_name(spec.index)
        if not path.is_file():
            raise RuntimeError(f"Shard {path} is missing after every process finished.")
        check_shard_rows(path, spec, num_variations)
        parts.append(Dataset.from_file(str(path)))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def write_load_from_disk_layout(folder: Path, specs: list[ShardSpec], features, fingerprint: str) -> None:
    """Make ``folder`` what ``Dataset.save_to_disk`` writes, so ``datasets.load_from_disk(folder)`` opens it.

    datasets has no public way to declare existing Arrow files a saved dataset: this
    writes its ``state.json`` layout by hand (``_data_files``, ``_fingerprint``, ...),
    here and nowhere else. ``tests/test_variations_generate.py`` compares these keys with
    what ``save_to_disk`` writes and fails, naming this function, if datasets changes them.
    """
    from datasets import DatasetInfo

    DatasetInfo(features=features).write_to_directory(str(folder))
    write_json_atomic(folder / "state.json", {
        "_data_files": [{"filename": shard_name(spec.index)} for spec in specs],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    })
