"""GPU throughput of image variations at 512 px: ImageVariation + Dataset.map vs the paper-style loop.

A full-size Stable Diffusion image-variation pipeline (lambdalabs/sd-image-variations-diffusers
shapes: SD 1.x UNet with 768-d cross attention, the SD VAE, a CLIP ViT-L/14 image encoder) is built
with random weights: the arithmetic is the same as with the real ones, nothing is downloaded.

Compared, on the same images, batch 16, guidance 3.0:
1. paper-style loop: a torch DataLoader, fp16, 50 PNDM steps, one torch.Generator for the whole run;
2. ImageVariation + Dataset.map(batched=True, batch_size=16), bf16, 50 steps, one generator per image;
3. the same in fp16, with and without colour transfer (separates the dtype from our own overhead);
4. ImageVariation + Dataset.map, bf16, DPMSolverMultistepScheduler with 20 steps (a faster scheduler).
Each mode runs one warm-up batch, then the timed images. Prints images/s and ratios.

    python benchmarks/gpu_variations.py --images 48     # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build_pipeline(dtype):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with torch.device("cuda"):
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
    return pipe.to("cuda", dtype)


def images(count: int, size: int = 256):
    rng = np.random.default_rng(0)
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def paper_loop(pipe, pictures, batch_size, steps):
    """The paper's way: DataLoader batches, one generator shared by the whole run."""
    loader = torch.utils.data.DataLoader(pictures, batch_size=batch_size, collate_fn=list)
    generator = torch.Generator("cuda").manual_seed(42)
    out = []
    for batch in loader:
        out += pipe(batch, height=512, width=512, num_inference_steps=steps, guidance_scale=3.0,
                    generator=generator).images
    return out


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="timed images per mode (after one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from datasets import Dataset, Features, Image

    import hf_backdoor_guard as hbg

    pictures = images(args.images + args.batch_size)
    warm, timed_pictures = pictures[: args.batch_size], pictures[args.batch_size :]
    ds = Dataset.from_dict({"image": timed_pictures}, features=Features({"image": Image()}))
    warm_ds = Dataset.from_dict({"image": warm}, features=Features({"image": Image()}))
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | images {args.images}, "
          f"batch {args.batch_size}, 512 px, guidance 3.0")

    rows = []

    def record(name, seconds):
        rows.append((name, seconds))
        ratio = seconds / rows[0][1]
        print(f"{name:60s} {seconds:7.2f} {args.images / seconds:7.2f} {ratio:18.3f}", flush=True)

    print(f"{'mode':60s} {'s':>7s} {'img/s':>7s} {'time / paper loop':>18s}")
    fp16 = build_pipeline(torch.float16)
    paper_loop(fp16, warm, args.batch_size, 50)
    seconds, _ = timed(lambda: paper_loop(fp16, timed_pictures, args.batch_size, 50))
    record("paper loop: DataLoader, fp16, 50 PNDM steps, one generator", seconds)

    def through_map(variation):
        mapper = dict(batched=True, batch_size=args.batch_size, with_indices=True, keep_in_memory=True,
                      load_from_cache_file=False)
        warm_ds.map(variation, **mapper)
        return timed(lambda: ds.map(variation, **mapper))

    variation = hbg.ImageVariation(fp16, num_inference_steps=50, guidance_scale=3.0, size=512)
    record("ImageVariation + map, fp16, 50 PNDM steps", through_map(variation)[0])
    bf16 = build_pipeline(torch.bfloat16)
    fast = hbg.ImageVariation(bf16, num_inference_steps=20, guidance_scale=3.0, size=512,
                              scheduler="DPMSolverMultistepScheduler")
    record("ImageVariation + map, bf16, 20 DPM-Solver++ steps", through_map(fast)[0])
    variation = hbg.ImageVariation(bf16, num_inference_steps=50, guidance_scale=3.0, size=512)
    record("ImageVariation + map, bf16, 50 PNDM steps", through_map(variation)[0])
    plain = hbg.ImageVariation(fp16, num_inference_steps=50, guidance_scale=3.0, size=512, color_transfer=False)
    record("ImageVariation + map, fp16, 50 PNDM steps, colour transfer off", through_map(plain)[0])

    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
