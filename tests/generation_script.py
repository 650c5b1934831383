"""``generate_variations`` in a process of its own, for tests that need a real second process.

    python generation_script.py DS_DIR OUT_DIR '{"batch_size": 2, ...}'

Loads the dataset with ``load_from_disk`` and the tiny DDIM pipeline saved by the test
(``pipeline`` key; ``variation`` holds ``ImageVariation`` options), then calls
``generate_variations(ds, variation, OUT_DIR, **call)``. The hooks below are this
script's own (nothing in the library knows about them); each is set by the test through
the JSON options:

- ``pause_file``: at the first denoising call, write ``pause_file + ".started"`` (with the
  pid) and wait until ``pause_file`` exists. The process holds the folder lock meanwhile.
- ``kill_at_call``: SIGKILL this process at the start of denoising call N (0-based),
  i.e. in the middle of a shard.
- ``kill_before_manifest``: SIGKILL this process when shard N's file has been renamed
  into place but before its manifest is written.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import datasets  # noqa: E402

import hf_backdoor_guard as hbg  # noqa: E402


def main() -> None:
    ds_dir, out_dir, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    datasets.disable_progress_bars()
    variation = hbg.ImageVariation.from_pretrained(options["pipeline"], **options.get("variation", {}))
    original = variation.adapter.generate
    calls = []

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
        from hf_backdoor_guard.variations import shards

        write_manifest = shards.write_shard_manifest

        def killing_write(path, manifest):
            if manifest["shard"] == options["kill_before_manifest"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return write_manifest(path, manifest)

        shards.write_shard_manifest = killing_write

    ds = datasets.load_from_disk(ds_dir)
    result = hbg.generate_variations(ds, variation, out_dir, progress=False, **options.get("call", {}))
    print(json.dumps({"pid": os.getpid(), "calls": calls, "rows": len(result)}))


if __name__ == "__main__":
    main()
