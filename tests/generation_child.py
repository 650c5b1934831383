"""``generate_variations`` in a forked child process, for tests that need a real second process.

Forking (as accelerate's debug_launcher does) skips the seconds a fresh interpreter
spends importing torch, diffusers and datasets. The child loads the dataset with
``load_from_disk`` and the tiny DDIM pipeline saved by the test (``options["pipeline"]``,
``options["variation"]`` for the ``ImageVariation`` options), calls
``generate_variations(ds, variation, out_dir, **options["call"])`` and writes
``{"pid", "calls", "rows"}`` to ``out_dir + ".json"``. The hooks below are the test's
own (nothing in the library knows about them):

- ``pause_file``: at the first denoising call, write ``pause_file + ".started"`` and wait
  until ``pause_file`` exists. The child holds the folder lock meanwhile.
- ``kill_at_call``: SIGKILL the child at the start of denoising call N (0-based), i.e.
  in the middle of a shard, with the writer thread possibly busy on earlier batches.
- ``kill_before_manifest``: SIGKILL the child when shard N's file has been renamed into
  place but before its manifest is written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path


def start(ds_dir, out_dir, options: dict) -> multiprocessing.Process:
    child = multiprocessing.get_context("fork").Process(target=_main, args=(str(ds_dir), str(out_dir), options))
    child.start()
    return child


def result(out_dir) -> dict:
    return json.loads(Path(str(out_dir) + ".json").read_text())


def _main(ds_dir: str, out_dir: str, options: dict) -> None:
    import datasets

    import hf_backdoor_guard as hbg
    from hf_backdoor_guard.variations import shards

    variation = hbg.ImageVariation.from_pretrained(options["pipeline"], **options.get("variation", {}))
    original = variation.adapter.generate
    calls: list[int] = []

    def generate(images, generators, settings):
        if options.get("pause_file") and not calls:
            Path(options["pause_file"] + ".started").write_text(str(os.getpid()))
            while not Path(options["pause_file"]).exists():
                time.sleep(0.05)
        if options.get("kill_at_call") == len(calls):
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(len(images))
        return original(images, generators, settings)

    variation.adapter.generate = generate
    if "kill_before_manifest" in options:
        write_manifest = shards.write_shard_manifest

        def killing_write(path, manifest):
            if manifest["shard"] == options["kill_before_manifest"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return write_manifest(path, manifest)

        shards.write_shard_manifest = killing_write

    ds = datasets.load_from_disk(ds_dir)
    done = hbg.generate_variations(ds, variation, out_dir, progress=False, **options.get("call", {}))
    Path(out_dir + ".json").write_text(json.dumps({"pid": os.getpid(), "calls": calls, "rows": len(done)}))
