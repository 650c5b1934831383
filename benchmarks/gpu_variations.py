"""GPU throughput of image variations: the paper's loop vs ImageVariation, generate_variations and the fast path.

A full-size Stable Diffusion image-variation pipeline (lambdalabs/sd-image-variations-diffusers
shapes: SD 1.x UNet with 768-d cross attention, the SD VAE, a CLIP ViT-L/14 image encoder) is built
with random weights: the arithmetic is that of the real model, nothing is downloaded. All modes use
fp16, guidance 3.0 and 256 px sources varied at 512 px (the fast-small mode: 32 px sources, as
CIFAR's, at 256 px), on the same images; each runs one warm-up batch (untimed: it also holds
torch.compile's compilation) and then the timed images. One table, in this order:

1. paper loop: a torch DataLoader, 50 PNDM steps, one torch.Generator for the whole run (baseline);
2. ImageVariation + Dataset.map, 50 PNDM steps, one generator per image (CPU work in series);
3. generate_variations, 50 PNDM steps, overlap on (color transfer, PNG encoding and the Arrow write
   of batch k run while the GPU denoises batch k+1; target <= 1.03x the loop's time), and overlap off;
4. the fast path, speed="fast" (DPM-Solver++ 15 steps, channels_last, torch.compile) through
   generate_variations (target >= 3x the loop's images/s), and the same without torch.compile;
5. a batch-size sweep of the fast path (without torch.compile: each new batch shape would recompile);
6. speed="fast-small": 32 px sources at 256 px.
Every row also gives the peak GPU memory of its mode (torch.cuda.max_memory_allocated).

    python benchmarks/gpu_variations.py --quick     # ~5-8 min on one H100/H200 (32 timed images per mode)
    python benchmarks/gpu_variations.py             # 64 timed images per mode, a wider sweep
    python benchmarks/gpu_variations.py --dry-run   # CPU, tiny random pipeline: checks the script end to end
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build_pipeline(device: str, dtype, tiny: bool):
    """The lambdalabs SD image-variation architecture with random weights (``tiny``: the test-size one)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_pipelines import build_sd_image_variation

        pipe, _ = build_sd_image_variation()
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)  # float32 already
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
            patch_size=14, image_size=224, projection_dim=768,
        ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224), requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def make_images(count: int, size: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def paper_loop(pipe, pictures, batch_size, steps, size, device):
    """The paper's way: DataLoader batches, one generator shared by the whole run."""
    loader = torch.utils.data.DataLoader(pictures, batch_size=batch_size, collate_fn=list)
    generator = torch.Generator(device).manual_seed(42)
    out = []
    for batch in loader:
        out += pipe(batch, height=size, width=size, num_inference_steps=steps, guidance_scale=3.0,
                    generator=generator).images
    return out


class Runner:
    """Times modes on one device and prints one table row per mode."""

    def __init__(self, device: str, images: int):
        self.device, self.images, self.baseline = device, images, None
        self.cuda = device.startswith("cuda")
        print(f"{'mode':68s} {'batch':>5s} {'s':>7s} {'img/s':>7s} {'time/loop':>9s} {'img/s x loop':>12s} "
              f"{'peak GiB':>8s} {'warm-up s':>9s}", flush=True)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, name: str, batch: int, warm_up, timed):
        """``warm_up()`` once (compilation, cuDNN autotuning), then ``timed()`` over ``self.images`` outputs."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        start = time.perf_counter()
        warm_up()
        self.sync()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        timed()
        self.sync()
        seconds = time.perf_counter() - start
        rate = self.images / seconds
        if self.baseline is None:
            self.baseline = rate
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:8.1f}" if self.cuda else f"{'-':>8s}"
        print(f"{name:68s} {batch:5d} {seconds:7.2f} {rate:7.2f} {self.baseline / rate:9.3f} "
              f"{rate / self.baseline:12.2f} {peak} {warm:9.1f}", flush=True)
        return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 timed images per mode, sweep 8/32 (~5-8 min)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every mode on CPU with the tiny test pipeline at 32 px (checks the script)")
    parser.add_argument("--images", type=int, default=None, help="timed images per mode (default 64, quick 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sweep", type=str, default=None, help="batch sizes of the sweep (default 8,32,64; "
                                                                "quick 8,32)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --dry-run)")

    import datasets
    from datasets import Dataset, Features, Image

    import hf_backdoor_guard as hbg

    datasets.disable_progress_bars()
    images = args.images or (8 if args.dry_run else 32 if args.quick else 64)
    batch = 4 if args.dry_run and args.batch_size == 16 else args.batch_size
    sweep = [int(b) for b in (args.sweep or ("2,8" if args.dry_run else "8,32" if args.quick else "8,32,64"))
             .split(",")]
    device, dtype = ("cpu", torch.float32) if args.dry_run else ("cuda", torch.float16)
    size, source_size = (32, 32) if args.dry_run else (512, 256)
    pictures = make_images(images, source_size)
    warm_pictures = make_images(max([batch] + sweep), source_size, seed=1)
    features = Features({"image": Image()})
    ds = Dataset.from_dict({"image": pictures}, features=features)
    name = "CPU (dry run, tiny pipeline)" if args.dry_run else torch.cuda.get_device_name()
    print(f"device: {name} | torch {torch.__version__} | {images} timed images per mode, batch {batch}, "
          f"{size} px from {source_size} px sources, guidance 3.0, {str(dtype).replace('torch.', '')}", flush=True)

    pipe = build_pipeline(device, dtype, tiny=args.dry_run)
    runner = Runner(device, images)
    scratch = Path(tempfile.mkdtemp(prefix="hbg-gpu-bench-"))
    supports_overlap = "overlap" in inspect.signature(hbg.generate_variations).parameters
    folders = iter(range(1_000_000))  # a fresh output folder per call: nothing resumes

    def through_map(variation, rows):
        mapper = dict(batched=True, batch_size=rows, with_indices=True, keep_in_memory=True,
                      load_from_cache_file=False)
        warm = Dataset.from_dict({"image": warm_pictures[:rows]}, features=features)
        return lambda: warm.map(variation, **mapper), lambda: ds.map(variation, **mapper)

    def through_generate(variation, rows, data=None, warm_images=None, **options):
        if options and not supports_overlap:
            options = {}
        data = ds if data is None else data
        warm = Dataset.from_dict({"image": (warm_images or warm_pictures)[:rows]}, features=features)

        def call(dataset):
            return hbg.generate_variations(dataset, variation, scratch / f"run-{next(folders)}", batch_size=rows,
                                           progress=False, **options)
        return lambda: call(warm), lambda: call(data)

    options = dict(num_inference_steps=50, guidance_scale=3.0, size=size)
    runner.run("paper loop: DataLoader, 50 PNDM steps, one generator", batch,
               lambda: paper_loop(pipe, warm_pictures[:batch], batch, 50, size, device),
               lambda: paper_loop(pipe, pictures, batch, 50, size, device))
    paper = hbg.ImageVariation(pipe, **options)
    runner.run("ImageVariation + map, 50 PNDM steps", batch, *through_map(paper, batch))
    overlap = "on" if supports_overlap else "(this version has no overlap option)"
    runner.run(f"generate_variations, 50 PNDM steps, overlap {overlap}", batch,
               *through_generate(paper, batch, overlap=True))
    if supports_overlap:
        runner.run("generate_variations, 50 PNDM steps, overlap off", batch,
                   *through_generate(paper, batch, overlap=False))

    # The fast path. channels_last and torch.compile act in place on the shared UNet, so the uncompiled
    # rows come first, and the compiled ones last.
    fast_plain = hbg.ImageVariation(pipe, speed="fast", guidance_scale=3.0, size=size, torch_compile=False)
    steps = fast_plain.num_inference_steps
    runner.run(f"fast path without torch.compile ({steps} DPM-Solver++ steps)", batch,
               *through_generate(fast_plain, batch))
    for rows in sweep:
        if rows != batch:
            runner.run("  batch-size sweep: fast path without torch.compile", rows,
                       *through_generate(fast_plain, rows))
    fast = hbg.ImageVariation(pipe, speed="fast", guidance_scale=3.0, size=size)
    compiled = "torch.compile" if fast.torch_compile and runner.cuda else "no compile on CPU"
    runner.run(f"fast path: speed='fast' ({steps} DPM-Solver++, channels_last, {compiled})", batch,
               *through_generate(fast, batch))
    small_sources = make_images(images, 32, seed=2)
    small = hbg.ImageVariation(pipe, speed="fast-small", guidance_scale=3.0)
    small_ds = Dataset.from_dict({"image": small_sources}, features=features)
    runner.run(f"fast-small: speed='fast-small', 32 px sources at {small.size[0]} px", batch,
               *through_generate(small, batch, data=small_ds, warm_images=make_images(batch, 32, seed=3)))
    print("targets: generate_variations with overlap <= 1.03 time/loop; fast path >= 3 img/s x loop")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
