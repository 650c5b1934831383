"""The offline default diffusion model shipped inside the package.

``digits_ddpm/`` is a diffusers ``DDIMPipeline`` folder: a 2.7M-parameter
``UNet2DModel`` (channels 32/64/128, attention only at 4x4, fp16 safetensors) trained
as a DDPM (cosine schedule) on the clean ``pretrain`` split of
:func:`hf_backdoor_guard.data.load_digits_dataset` by
``recipes/pretrain_embedded_diffusion.py``. ``ImageVariation.embedded()`` loads it
with :data:`EMBEDDED_VARIATION_DEFAULTS`; ``training_args.json`` in the folder records
how it was trained.

The defaults below are the measured best for the demo (see BENCHMARKS.md,
"embedded default / demo").
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIFFUSION_DIR = Path(__file__).resolve().parent / "digits_ddpm"

EMBEDDED_VARIATION_DEFAULTS: dict = {
    # SDEdit noise level: below 0.5 part of a 3x3 patch survives and the student relearns it;
    # 0.7 removes more of a Blended trigger but costs clean accuracy (WaNet 0.961, SIG 0.979).
    "strength": 0.6,
    # DDIM steps over the whole schedule; int(steps * strength) of them run.
    "num_inference_steps": 20,
    # Fresh noise at every step (DDIM eta = 1): better trigger removal than deterministic DDIM.
    "stochastic": True,
    # Matching the source's color statistics copies a Blended trigger back (student ASR 1.0).
    "color_transfer": False,
    # Blended seed 0 / 4, student ASR: 1 variation 0.188 / -, 2: 0.090 / 0.112, 3: 0.025 / 0.084.
    "num_variations": 3,
}

#: ``ImageVariation.embedded(speed=...)``: option values applied on top of the defaults (explicit options win);
#: the unconditional family's preset adds channels_last and torch_compile (CUDA only).
EMBEDDED_SPEED_PRESETS: dict[str, dict] = {
    # Same stochastic DDIM, half the steps: int(10 * 0.6) = 6 run instead of 12, 2.0x the images/s on CPU.
    # Demo quality at 3 seeds: BENCHMARKS.md, "fast path".
    "fast": {"num_inference_steps": 10},
}

__all__ = ["EMBEDDED_DIFFUSION_DIR", "EMBEDDED_VARIATION_DEFAULTS", "EMBEDDED_SPEED_PRESETS"]
