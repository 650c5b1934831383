"""Benchmark: ImageVariation + Dataset.map against a plain loop over the same pipeline.

1. Time ratio (target <= 1.05): the same tiny SD image-variation pipeline and batch size,
   (a) a plain loop that slices the dataset, calls the pipeline directly with one
   generator and keeps PIL outputs, versus (b) ``ds.map(ImageVariation(...))`` with per-image
   generators, Lab color transfer and resizing back (the library's defaults).
2. Cost of datasets' fingerprint of the callable: our stable fingerprint versus datasets'
   default of pickling the whole pipeline.
3. Peak RSS of ``generate_variations`` for N and 10 x N rows, each in its own subprocess
   so the peaks are separate.

Run: ``python benchmarks/variations.py`` (about three minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import datasets  # noqa: E402
from PIL import Image  # noqa: E402

import hf_backdoor_guard as hbg  # noqa: E402
from tiny_pipelines import FAMILIES, save_family  # noqa: E402

datasets.disable_progress_bars()


def make_ds(n: int, size: int = 32) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 10 for i in range(n)]})


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def bench_map(n: int, batch_size: int, steps: int, repeats: int) -> None:
    pipe, _ = FAMILIES["sd-image-variation"]()
    pipe.set_progress_bar_config(disable=True)
    ds = make_ds(n)
    variation = hbg.ImageVariation(pipe, size=32, num_inference_steps=steps)

    def plain_loop():
        generator = torch.Generator().manual_seed(0)
        outputs = []
        for start in range(0, n, batch_size):
            images = ds[start:start + batch_size]["image"]
            outputs += pipe(image=images, height=32, width=32, num_inference_steps=steps,
                            generator=generator).images
        return outputs

    def with_map():
        return ds.map(variation, batched=True, batch_size=batch_size, with_indices=True)

    def with_map_no_color():
        variation.color_transfer = False
        try:
            return ds.map(variation, batched=True, batch_size=batch_size, with_indices=True,
                          new_fingerprint="no-color")
        finally:
            variation.color_transfer = True

    plain_loop(), with_map()  # warm up (first calls allocate)
    names = ("plain loop", "ImageVariation + map", "  color transfer off")
    cpu = {name: [] for name in names}
    wall = {name: [] for name in names}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits every mode alike
        for name, fn in zip(names, (plain_loop, with_map, with_map_no_color)):
            cpu_began, wall_began = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - cpu_began)
            wall[name].append(time.perf_counter() - wall_began)
    print(f"[map vs plain loop: tiny SD image-variation pipeline, {n} images 32x32, batch {batch_size}, "
          f"{steps} steps, best of {repeats}]")
    print("CPU time of this single-threaded process (steady on a shared machine), wall time beside it")
    print(f"{'mode':26s} {'CPU s':>7s} {'ratio':>6s} {'wall s':>7s} {'ratio':>6s} {'img/s (CPU)':>11s}")
    base_cpu, base_wall = min(cpu[names[0]]), min(wall[names[0]])
    for name in names:
        c, w = min(cpu[name]), min(wall[name])
        print(f"{name:26s} {c:7.3f} {c / base_cpu:6.3f} {w:7.3f} {w / base_wall:6.3f} {n / c:11.1f}")
    ratio = min(cpu[names[1]]) / base_cpu
    print(f"ratio ImageVariation + map / plain loop (CPU): {ratio:.3f} "
          f"({'meets' if ratio <= 1.05 else 'misses'} the <= 1.05 target)")

    from datasets.fingerprint import Hasher

    fresh = hbg.ImageVariation(FAMILIES["sd-image-variation"]()[0], size=32, num_inference_steps=steps)
    began = time.perf_counter()
    ours = Hasher.hash(fresh)
    ours_s = time.perf_counter() - began
    began = time.perf_counter()
    default = Hasher.hash(pipe)
    default_s = time.perf_counter() - began
    print(f"datasets' hash of the callable: ImageVariation {ours_s * 1000:.1f} ms (first call: one pass over the "
          f"weights, then cached); equal for two identical builds: {Hasher.hash(variation) == ours}")
    print(f"  datasets' default (pickling the pipeline): {default_s * 1000:.1f} ms; equal for two identical "
          f"builds: {Hasher.hash(fresh.adapter.pipeline) == default}")


class AnonPeak:
    """Samples RssAnon (heap and other private memory, not page cache of memory-mapped files)."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.peak, self.interval = 0.0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now_mb())


def rss_child(n: int, pipeline_dir: str, out_dir: str) -> None:
    # written by the parent, so building it does not count here; memory-mapped, as real datasets are
    ds = datasets.load_from_disk(str(Path(out_dir) / "input"))
    variation = hbg.ImageVariation.from_pretrained(pipeline_dir, size=32, num_inference_steps=2, strength=0.5)
    before, anon_before = max_rss_mb(), AnonPeak.now_mb()
    began = time.perf_counter()
    with AnonPeak() as anon:
        result = hbg.generate_variations(ds, variation, Path(out_dir) / "variations", batch_size=16,
                                         shard_size=128, progress=False)
    seconds = time.perf_counter() - began
    print(f"{n} {len(result)} {before:.1f} {max_rss_mb():.1f} {anon_before:.1f} {anon.peak:.1f} {seconds:.1f}")


def bench_rss(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pipeline_dir, _ = save_family("ddim", Path(tmp) / "ddim")
        print("[generate_variations peak memory: tiny DDIM SDEdit, 32x32, batch 16, shards of 128 rows]")
        print("peak RSS counts resident pages of the memory-mapped input and output files too; "
              "RssAnon is private memory (heap)")
        header = ("rows", "out rows", "RSS before MB", "peak RSS MB", "RssAnon before MB", "peak RssAnon MB", "seconds")
        print(" ".join(f"{h:>{len(h)}s}" for h in header))
        for rows in (n, 10 * n):
            with tempfile.TemporaryDirectory() as work:
                make_ds(rows).save_to_disk(str(Path(work) / "input"))
                out = subprocess.run([sys.executable, __file__, "--rss-child", str(rows), str(pipeline_dir), work],
                                     check=True, capture_output=True, text=True).stdout.split()
            print(" ".join(f"{value:>{len(h)}s}" for value, h in zip(out, header)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-rows", type=int, default=256)
    parser.add_argument("--rss-child", nargs=3, metavar=("ROWS", "PIPELINE_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(int(args.rss_child[0]), args.rss_child[1], args.rss_child[2])
        return
    import platform

    import diffusers
    import transformers

    print(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}, datasets {datasets.__version__}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}")
    bench_map(args.images, args.batch_size, args.steps, args.repeats)
    bench_rss(args.rss_rows)


if __name__ == "__main__":
    main()
