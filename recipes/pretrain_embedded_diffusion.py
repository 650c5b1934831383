"""Pretrain an embedded diffusion model: a small DDPM on the clean pretraining split of a benchmark world.

The model only ever sees the ``pretrain`` split (clean "public" data, disjoint from the
victim's ``train`` split), as the method asks: the diffusion model must not have learnt
any trigger. ``--benchmark`` picks the world:

* ``digits`` (default): ``load_digits_dataset``'s 600-image split at 16 px, the shipped model;
* ``fashion-mnist``: ``load_fashion_mnist``'s 10,000-image split at its native 28 px (the IDX
  files from ``--data_dir``, else the Debian package ``dataset-fashion-mnist``, else the Hub).

    python recipes/pretrain_embedded_diffusion.py --help
    python recipes/pretrain_embedded_diffusion.py --output_dir hf_backdoor_guard/embedded/digits_ddpm
    python recipes/pretrain_embedded_diffusion.py --benchmark fashion-mnist --output_dir /tmp/fmnist-ddpm

The result is a diffusers ``DDIMPipeline`` folder (``model_index.json``, ``unet/``
with fp16 safetensors, ``scheduler/``) that ``ImageVariation.embedded()`` loads.
The shipped weights were made with the defaults below and ``--device cuda`` (about
4 minutes on one GPU; on one CPU thread about 0.4 s per step, so ~45 minutes).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

logger = logging.getLogger("pretrain_embedded_diffusion")


@dataclass
class PretrainArguments:
    """Options of the pretraining run (every field is a command-line flag)."""

    benchmark: str = field(
        default="digits",
        metadata={"help": "Benchmark world whose pretrain split trains the model.",
                  "choices": ["digits", "fashion-mnist"]},
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={"help": "fashion-mnist only: folder of the four IDX files "
                          "(default: the Debian package's, else the Hub)."},
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Folder the DDIMPipeline is saved to (created; an existing model there is replaced). "
                          "Default: hf_backdoor_guard/embedded/digits_ddpm for digits, "
                          "hf_backdoor_guard/embedded/fashion_mnist_ddpm for fashion-mnist."},
    )
    max_steps: int = field(
        default=6000, metadata={"help": "Optimiser steps (the shipped model: 6000; 2000 already gives usable variations)."}
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Images per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the saved weights (0 = no EMA)."})
    shift: int = field(
        default=1, metadata={"help": "Random translation in pixels used as augmentation (0 = none)."}
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Side of the images. Default: 16 for digits (load_digits_dataset size); fashion-mnist "
                          "takes only its native 28."},
    )
    block_out_channels: str = field(
        default="32,64,128", metadata={"help": "Channels of the UNet levels, comma-separated."}
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per UNet level."})
    num_train_timesteps: int = field(default=1000, metadata={"help": "Diffusion timesteps."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, batches, noise and the data split."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the dataset's split (0 = the shipped one)."})
    fp16: bool = field(default=True, metadata={"help": "Save the weights in float16 (halves the size)."})
    device: str = field(default="cpu", metadata={"help": "Torch device to train on (cpu, cuda)."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest on shared 2-core boxes)."})
    log_every: int = field(default=100, metadata={"help": "Log the mean loss every N steps."})


# Per world: the output folder and image side used when the flags leave them out.
DATASET_DEFAULTS = {
    "digits": {"output_dir": "hf_backdoor_guard/embedded/digits_ddpm", "image_size": 16},
    "fashion-mnist": {"output_dir": "hf_backdoor_guard/embedded/fashion_mnist_ddpm", "image_size": 28},
}


def resolve_defaults(args: PretrainArguments) -> PretrainArguments:
    """Fill the per-world defaults in place and check the options that depend on the world."""
    if args.benchmark not in DATASET_DEFAULTS:
        raise ValueError(f"benchmark must be one of {sorted(DATASET_DEFAULTS)}, got {args.benchmark!r}.")
    defaults = DATASET_DEFAULTS[args.benchmark]
    if args.output_dir is None:
        args.output_dir = defaults["output_dir"]
    if args.image_size is None:
        args.image_size = defaults["image_size"]
    if args.benchmark == "fashion-mnist" and args.image_size != defaults["image_size"]:
        # Variations are made at the victim's size; a model trained at another size would not fit them.
        raise ValueError(f"fashion-mnist images are {defaults['image_size']} px; got image_size={args.image_size}.")
    if args.benchmark == "digits" and args.data_dir is not None:
        raise ValueError("data_dir is for fashion-mnist; the digits ship with scikit-learn.")
    levels = len(args.block_out_channels.split(","))
    if args.image_size % 2 ** (levels - 1):
        # The UNet halves the side at every level but the last and concatenates skips on the way up: an odd
        # side (28 -> 14 -> 7 -> 4) no longer matches when upsampled (4 -> 8).
        raise ValueError(f"image_size {args.image_size} is not divisible by 2**{levels - 1}, which a UNet with "
                         f"{levels} levels (block_out_channels={args.block_out_channels}) needs; use fewer levels.")
    return args


def pretrain_images(args: PretrainArguments):
    """The uint8 images [N, size, size, 3] of the world's pretrain split: the only data the model sees."""
    if args.benchmark == "fashion-mnist":
        from hf_backdoor_guard.data import fashion_mnist_split_arrays

        images, _ = fashion_mnist_split_arrays(args.data_dir, seed=args.split_seed)["pretrain"]
        return images
    from hf_backdoor_guard.data import digits_split_arrays

    images, _ = digits_split_arrays(size=args.image_size, seed=args.split_seed)["pretrain"]
    return images


def build_unet(args: PretrainArguments):
    """The UNet2DModel: attention only at the coarsest level, where it is cheap."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in args.block_out_channels.split(","))
    down = ["DownBlock2D"] * (len(channels) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(channels) - 1)
    return UNet2DModel(
        sample_size=args.image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=args.layers_per_block,
        block_out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=8,
        attention_head_dim=32,
    )


def build_scheduler(args: PretrainArguments):
    """Cosine schedule; "trailing" spacing so SDEdit at strength s starts at t = s*T - 1."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )


def pretrain(args: PretrainArguments) -> Path:
    """Train the DDPM and save the pipeline; returns the output folder."""
    import numpy as np
    import torch
    from diffusers import DDIMPipeline
    from tqdm.auto import tqdm

    resolve_defaults(args)
    if args.max_steps < 1 or args.per_device_train_batch_size < 1:
        raise ValueError("max_steps and per_device_train_batch_size must be >= 1.")
    if not 0 <= args.ema_decay < 1:
        raise ValueError(f"ema_decay must lie in [0, 1), got {args.ema_decay}.")
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    images = pretrain_images(args)
    x_all = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).div(127.5).sub(1.0).to(device)  # [-1, 1]
    logger.info("Pretraining on %d clean %s images of %dx%d", len(x_all), args.benchmark, args.image_size,
                args.image_size)

    unet = build_unet(args).to(device)
    scheduler = build_scheduler(args)
    ema = copy.deepcopy(unet).eval().requires_grad_(False) if args.ema_decay > 0 else None
    logger.info("UNet2DModel with %.2fM parameters", sum(p.numel() for p in unet.parameters()) / 1e6)

    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=1e-4)

    def lr_factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    alphas = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    pad = args.shift

    started, running = time.time(), []
    progress = tqdm(range(args.max_steps), desc="pretrain DDPM", mininterval=5)
    for step in progress:
        rows = torch.randint(0, len(x_all), (args.per_device_train_batch_size,), generator=generator)
        x0 = x_all[rows.to(device)]
        if pad:
            # Small random translations: the 600 digits are few and not always centred (Fashion-MNIST's
            # items are centred, but a 1-pixel shift still adds variety at no cost).
            padded = torch.nn.functional.pad(x0, (pad, pad, pad, pad), value=-1.0)
            dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
            x0 = padded[:, :, dy : dy + args.image_size, dx : dx + args.image_size]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, args.num_train_timesteps, (args.per_device_train_batch_size,), generator=generator).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            decay = min(args.ema_decay, (1 + step) / (10 + step))  # warm-up: early EMA follows the model
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        running.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.max_steps:
            elapsed = time.time() - started
            logger.info("step %d/%d  loss %.4f  (%.0f s, %.2f s/step)", step + 1, args.max_steps,
                        float(np.mean(running)), elapsed, elapsed / (step + 1))
            running = []

    final = (ema if ema is not None else unet).to("cpu")
    if args.fp16:
        final = final.to(torch.float16)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    DDIMPipeline(unet=final, scheduler=scheduler).save_pretrained(output_dir, safe_serialization=True)
    with open(output_dir / "training_args.json", "w") as handle:
        record = asdict(args) | {"seconds": round(time.time() - started, 1), "final_loss": loss.item()}
        json.dump(record, handle, indent=2)
    logger.info("Saved the pipeline to %s in %.0f s", output_dir, time.time() - started)
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    from transformers import HfArgumentParser

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=argv)
    return pretrain(args)


if __name__ == "__main__":
    main()
