"""GPU cost of the recipes' heavy steps, with random-weight models of the real sizes (no download).

Prints, for recipes/README.md:
1. images/s of one training step (forward, backward, AdamW) of transformers' ResNet-101 at 224 px
   and ResNet-18 at 32 px, batch 128, fp32 vs bf16 autocast (ratio printed);
2. images/s of Versatile Diffusion image variation at 512 px, guidance 7.5, fp16, batch 16, with
   the paper's 50 DDIM steps vs 20 DPM-Solver++ steps (ratio printed; the fast configs now use the
   speed presets, which benchmarks/gpu_variations.py measures).
Weights are random, which does not change the arithmetic; data loading is not included.

``--table`` (no GPU needed) prints the cost table of recipes/README.md: hours of variation
generation for ImageNette, CIFAR-10 and ImageNet-1k on 1, 8 and 64 GPUs, computed from the
throughputs measured in BENCHMARKS.md (:data:`MEASURED`) and, for the fast path, from the
estimates of :func:`fast_path_estimates` (not measured on a GPU yet). tests/test_recipes.py
checks that the README holds exactly this table.

    python benchmarks/recipe_costs.py            # needs a CUDA GPU
    python benchmarks/recipe_costs.py --table    # the README's cost table
"""

from __future__ import annotations

import sys
import time

import torch

# Images/s of one H100 at 512 px, measured by benchmarks/gpu_variations.py (BENCHMARKS.md, "variations on GPU
# (512 px)", 2026-11-25): a full-size Stable Diffusion image-variation pipeline with random weights, batch 16.
MEASURED = {
    "paper_loop": 2.88,  # DataLoader loop, fp16, 50 PNDM steps: the paper's way
    "imagevariation_50": 2.59,  # ImageVariation + map, fp16, 50 steps, CPU work in series with the GPU
    "dpm_20": 4.97,  # ImageVariation + map, bf16, 20 DPM-Solver++ steps, CPU work in series with the GPU
}
DATASETS = {"ImageNette": 9_469, "CIFAR-10": 50_000, "ImageNet-1k": 1_281_167}  # training images
GPU_COUNTS = (1, 8, 64)
SHARD_ROWS = 64 * 16  # generate_variations' default shard: 64 batches of the configs' variation_batch_size 16


def fast_path_estimates() -> dict[str, float]:
    """Images/s of ``speed="fast"`` (15 DPM-Solver++ steps, 512 px) and ``"fast-small"`` (256 px): estimates.

    * The CPU work (color transfer, encoding, writing) that ImageVariation did in series cost
      1/2.59 - 1/2.88 s per image; with the overlap on it hides behind the denoising
      (benchmarks/overlap.py: 1.006x the denoising alone), so it is taken off the 20-step time.
    * Time per image is then a fixed part plus a part per step, fitted through 50 steps (the loop)
      and 20 steps; 15 steps follow. channels_last and torch.compile are not counted.
    * 256 px: a quarter of the pixels, so a quarter of the per-step work and half of the fixed part
      (the VAE decoder shrinks with the pixels, the 224 px image encoder does not).
    """
    loop = 1 / MEASURED["paper_loop"]
    cpu_in_series = 1 / MEASURED["imagevariation_50"] - loop
    twenty = 1 / MEASURED["dpm_20"] - cpu_in_series
    per_step = (loop - twenty) / (50 - 20)
    fixed = loop - 50 * per_step
    return {"fast": 1 / (fixed + 15 * per_step), "fast-small": 1 / (fixed / 2 + 15 * per_step / 4)}


def _duration(images: int, per_second: float, gpus: int) -> str:
    """Wall-clock time of the busiest GPU: shards are dealt out whole, so it does ceil(shards / GPUs) of them."""
    shards = -(-images // SHARD_ROWS)
    rows = images if gpus == 1 else min(images, -(-shards // gpus) * SHARD_ROWS)
    minutes = rows / per_second / 60
    if minutes >= 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes:.0f} min" if minutes >= 1 else "<1 min"


def cost_table() -> str:
    """The markdown cost table of variation generation: wall-clock time with 1, 8 and 64 GPUs."""
    fast = fast_path_estimates()
    columns = [("paper loop, 50 steps: measured", MEASURED["paper_loop"]),
               ("DPM-Solver++ 20 steps, bf16: measured", MEASURED["dpm_20"]),
               ('speed="fast", 15 steps: estimate', fast["fast"]),
               ('speed="fast-small", 256 px: estimate', fast["fast-small"])]
    lines = ["| dataset | training images | GPUs | " + " | ".join(f"{name}, {rate:.2f} img/s per GPU"
                                                             for name, rate in columns) + " |",
             "| --- | ---: | ---: |" + " ---: |" * len(columns)]
    for dataset, images in DATASETS.items():
        for gpus in GPU_COUNTS:
            cells = [_duration(images, rate, gpus) for _, rate in columns]
            lines.append(f"| {dataset} | {images:,} | {gpus} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def classifier_throughput(depths, hidden_sizes, layer_type, size, batch=128, repeats=10):
    from transformers import ResNetConfig, ResNetForImageClassification

    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = ResNetForImageClassification(ResNetConfig(
            depths=depths, hidden_sizes=hidden_sizes, layer_type=layer_type, num_labels=10)).cuda().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        pixels = torch.randn(batch, 3, size, size, device="cuda")
        labels = torch.randint(0, 10, (batch,), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(pixel_values=pixels, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results[precision] = batch / timed(step, repeats)
    return results


def versatile_pipeline():
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        UNet2DConditionModel,
        VersatileDiffusionImageVariationPipeline,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    with torch.device("cuda"):
        unet = UNet2DConditionModel(  # Stable Diffusion 1.x shape, as VD's image_unet
            sample_size=64, cross_attention_dim=768, attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(  # ViT-L/14
            hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
            patch_size=14, image_size=224, projection_dim=768))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = VersatileDiffusionImageVariationPipeline(
        image_feature_extractor=CLIPImageProcessor(), image_encoder=encoder, image_unet=unet, vae=vae,
        scheduler=scheduler).to("cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def variation_throughput(batch=16):
    import numpy as np
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    from PIL import Image

    pipe = versatile_pipeline()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(batch)]
    results = {}
    for name, scheduler_cls, steps in (("ddim50", DDIMScheduler, 50), ("dpm20", DPMSolverMultistepScheduler, 20)):
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]

        def call():
            pipe(image=images, height=512, width=512, num_inference_steps=steps, guidance_scale=7.5,
                 generator=generators, output_type="np")

        results[name] = batch / timed(call, repeats=2, warmup=1)
    return results


def main():
    print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
    r101 = classifier_throughput([3, 4, 23, 3], [256, 512, 1024, 2048], "bottleneck", 224)
    print(f"ResNet-101 224px train step, batch 128: fp32 {r101['fp32']:.0f} img/s, bf16 {r101['bf16']:.0f} img/s, "
          f"ratio {r101['bf16'] / r101['fp32']:.2f}", flush=True)
    r18 = classifier_throughput([2, 2, 2, 2], [64, 128, 256, 512], "basic", 32)
    print(f"ResNet-18 32px train step, batch 128: fp32 {r18['fp32']:.0f} img/s, bf16 {r18['bf16']:.0f} img/s, "
          f"ratio {r18['bf16'] / r18['fp32']:.2f}", flush=True)
    vd = variation_throughput()
    print(f"Versatile Diffusion variation 512px fp16 batch 16, guidance 7.5: DDIM 50 steps {vd['ddim50']:.2f} img/s, "
          f"DPM-Solver++ 20 steps {vd['dpm20']:.2f} img/s, ratio {vd['dpm20'] / vd['ddim50']:.2f}", flush=True)


if __name__ == "__main__":
    if "--table" in sys.argv[1:]:
        print(cost_table(), end="")
    else:
        main()
