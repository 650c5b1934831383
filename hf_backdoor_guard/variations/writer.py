"""CPU work of generation in background threads, overlapped with the denoising.

While the accelerator denoises batch k+1, one writer thread post-processes batch k
(resize, color transfer), encodes it (PNG) and appends it to the shard's Arrow file,
and one reader thread decodes the inputs of batch k+2. PIL, numpy and Arrow release the
GIL in their heavy parts, so the threads run alongside the denoising loop.

Both queues are bounded (two batches), so memory stays flat whatever the dataset size.
An exception in a thread is raised in the caller with its own message and traceback;
on Ctrl-C or any error the writer finishes the batches already queued (completing a
shard whose last batch was queued), removes the ``.partial`` file of the shard it was
writing, and stops. The order of writes, and therefore every output byte, is the same
with or without the threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import shards
from .shards import ShardSpec

logger = logging.getLogger(__name__)

_DONE = object()
_POLL_SECONDS = 0.1


def prefetch(items: Iterable, depth: int = 2, enabled: bool = True) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the caller."""
    if not enabled:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=_POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer below
            failure.append(error)
        finally:
            while not stop.is_set():
                try:
                    buffer.put(_DONE, timeout=_POLL_SECONDS)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=produce, name="hbg-variation-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()


class ShardWriter:
    """Post-process, encode and write batches into shard files, in a thread when ``background``.

    Call :meth:`begin`, :meth:`add` per batch and :meth:`end` per shard, then
    :meth:`close` (always, e.g. in ``finally``). ``on_finished(spec, manifest)`` runs in
    the writer after a shard and its manifest are in place.
    """

    def __init__(self, folder: Path, variation, features, num_variations: int, settings_digest: str, bar,
                 background: bool = True, depth: int = 2, on_finished: Callable | None = None):
        self.folder, self.variation, self.features = folder, variation, features
        self.num_variations, self.settings_digest, self.bar = num_variations, settings_digest, bar
        self.on_finished = on_finished
        self._open: tuple[ShardSpec, object, float] | None = None  # shard being written, its ArrowWriter, start
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="hbg-variation-writer", daemon=True)
            self._thread.start()

    # --- called by the generation loop ---------------------------------------------------
    def begin(self, spec: ShardSpec) -> None:
        self._submit(("begin", spec))

    def add(self, indices: list[int], batch: dict, sources: list, arrays: list) -> None:
        self._submit(("add", indices, batch, sources, arrays))

    def end(self, spec: ShardSpec, input_digest: str) -> None:
        self._submit(("end", spec, input_digest))

    def close(self) -> None:
        """Finish what is queued, drop an unfinished shard, stop the thread; raise the writer's error if any."""
        if self._thread is not None:
            self._submit(_DONE, closing=True)
            self._thread.join()
        else:
            self._drop_open_shard()
        if self._error is not None:
            raise self._error

    # --- the work ------------------------------------------------------------------------
    def _submit(self, message, closing: bool = False) -> None:
        if self._thread is None:
            self._handle(message)
            return
        while True:
            if self._error is not None and not closing:
                raise self._error
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(message, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while (message := self._queue.get()) is not _DONE:
                self._handle(message)
        except BaseException as error:  # raised again in the caller's thread
            self._error = error
        finally:
            self._drop_open_shard()

    def _handle(self, message) -> None:
        kind = message[0]
        if kind == "begin":
            self._begin(message[1])
        elif kind == "add":
            self._add(*message[1:])
        else:
            self._end(*message[1:])

    def _begin(self, spec: ShardSpec) -> None:
        from datasets.arrow_writer import ArrowWriter

        writer = ArrowWriter(features=self.features, path=str(self.folder / shards.partial_name(spec.index)))
        self._open = (spec, writer, time.perf_counter())

    def _add(self, indices, batch, sources, arrays) -> None:
        out = self.variation.finish_batch(batch, indices, sources, arrays)
        self._open[1].write_batch(self.features.encode_batch(out))
        self.bar.update(len(indices) * self.num_variations)

    def _end(self, spec: ShardSpec, input_digest: str) -> None:
        _, writer, began = self._open
        try:
            writer.finalize()
        finally:
            writer.close()
        os.replace(self.folder / shards.partial_name(spec.index), self.folder / shards.shard_name(spec.index))
        self._open = None
        manifest = shards.make_manifest(self.folder, spec, self.num_variations, self.settings_digest, input_digest)
        shards.write_shard_manifest(self.folder / shards.manifest_name(spec.index), manifest)
        logger.info("Shard %d (rows %d-%d) written in %.1fs", spec.index, spec.start, spec.stop - 1,
                    time.perf_counter() - began)
        if self.on_finished is not None:
            self.on_finished(spec, manifest)

    def _drop_open_shard(self) -> None:
        """Remove the ``.partial`` file of an unfinished shard: ours, and worthless without its last batches."""
        if self._open is None:
            return
        spec, writer, _ = self._open
        self._open = None
        try:
            writer.close()
        except Exception:  # already failed; the file goes anyway
            pass
        partial = self.folder / shards.partial_name(spec.index)
        if partial.exists():
            partial.unlink()
            logger.info("Dropped the unfinished shard %d (%s).", spec.index, partial.name)
