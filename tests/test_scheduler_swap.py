"""Swapping the scheduler must not touch the models' dtypes or the caller's pipeline.

Regression: DiffusionPipeline.from_pipe casts every shared model to float32 in place,
which silently made bf16 generation 4x slower per step on an H100.
"""

import torch
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

import hf_backdoor_guard as hbg
from tiny_pipelines import build_sd_image_variation


def test_scheduler_swap_keeps_dtypes_and_leaves_the_callers_pipeline_alone():
    pipe, _ = build_sd_image_variation()
    pipe.unet.to(torch.bfloat16)  # mixed dtypes on purpose: UNet bf16, VAE and encoder float32
    variation = hbg.ImageVariation(pipe, num_inference_steps=2, scheduler="DPMSolverMultistepScheduler", size=32)
    assert type(pipe.scheduler).__name__ != "DPMSolverMultistepScheduler"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert variation.adapter.pipeline.unet is pipe.unet
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_generation_with_a_swapped_scheduler_stays_in_bf16():
    pipe, _ = build_sd_image_variation()
    pipe.to(dtype=torch.bfloat16)
    variation = hbg.ImageVariation(pipe, num_inference_steps=2, scheduler="DPMSolverMultistepScheduler", size=32)
    ds = Dataset.from_dict({"image": [PILImage.new("RGB", (32, 32), (90, 30, 10))] * 2},
                           features=Features({"image": Image()}))
    out = ds.map(variation, batched=True, with_indices=True)
    assert len(out) == 2 and out[0]["image"].size == (32, 32)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
