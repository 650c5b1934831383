"""The offline default diffusion model shipped inside the package.

``digits_ddpm/`` is a diffusers ``DDIMPipeline`` folder: a 2.7M-parameter
``UNet2DModel`` (channels 32/64/128, attention only at 4x4, fp16 safetensors) trained
as a DDPM (cosine schedule) on the clean ``pretrain`` split of
:func:`hf_backdoor_guard.data.load_digits_dataset` by
``recipes/pretrain_embedded_diffusion.py``. ``ImageVariation.embedded()`` loads it
with :data:`EMBEDDED_VARIATION_DEFAULTS`; ``training_args.json`` in the folder records
how it was trained.

The defaults below are the measured best for the demo (see BENCHMARKS.md,
"embedded default / demo" and "attack zoo: removal").
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIFFUSION_DIR = Path(__file__).resolve().parent / "digits_ddpm"

#: The diffusion models shipped in the package, by the world they were pretrained on (its clean pretraining
#: split only); ``ImageVariation.embedded(model=...)`` loads one, ``--diffusion-model`` names it as in
#: :data:`EMBEDDED_MODEL_OPTIONS`. Each is trained by ``recipes/pretrain_embedded_diffusion.py --benchmark NAME``.
EMBEDDED_MODELS: dict[str, Path] = {
    "digits": EMBEDDED_DIFFUSION_DIR,
    "fashion-mnist": Path(__file__).resolve().parent / "fashion_mnist_ddpm",
}
#: ``--diffusion-model`` value -> shipped model: "embedded" stays the digits model, as it always was.
EMBEDDED_MODEL_OPTIONS: dict[str, str] = {"embedded": "digits", "embedded-fashion-mnist": "fashion-mnist"}


def embedded_model_dir(model: str = "digits") -> Path:
    """The folder of shipped model ``model``; a clear error when this copy of the package lacks it."""
    if model not in EMBEDDED_MODELS:
        raise ValueError(f"model={model!r} is not a shipped diffusion model; choose one of {sorted(EMBEDDED_MODELS)}.")
    folder = EMBEDDED_MODELS[model]
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"The shipped diffusion model '{model}' is not in this copy of the package ({folder}); "
                         f"train it with recipes/pretrain_embedded_diffusion.py --benchmark {model} "
                         f"--output_dir {folder}.")
    return folder

EMBEDDED_VARIATION_DEFAULTS: dict = {
    # SDEdit noise level: below 0.5 part of a 3x3 patch survives and the student relearns it;
    # 0.7 removes more of a Blended trigger but costs clean accuracy (WaNet 0.961, SIG 0.979).
    "strength": 0.6,
    # DDIM steps over the whole schedule; int(steps * strength) of them run. 10 (6 run) instead of 20 pays
    # for twice the variations at the same cost; as good as 20 with 6 variations (BENCHMARKS.md,
    # "attack zoo: removal").
    "num_inference_steps": 10,
    # Fresh noise at every step (DDIM eta = 1): better trigger removal than deterministic DDIM.
    "stochastic": True,
    # Matching the source's color statistics copies a Blended trigger back (student ASR 1.0).
    "color_transfer": False,
    # More variations average the teacher's logits over more draws, so a variation that kept part of a
    # trigger gets its source's clean label. With temperature 1 and 6 student epochs (the demo's), 20 steps,
    # seed 0, student ASR at 3 / 6 variations: Adaptive-Patch 0.087 / 0.017, WaNet 0.048 / 0.025.
    "num_variations": 6,
}

#: ``ImageVariation.embedded(speed=...)``: option values applied on top of the defaults (explicit options win);
#: the unconditional family's preset adds channels_last and torch_compile (CUDA only).
EMBEDDED_SPEED_PRESETS: dict[str, dict] = {
    # Same stochastic DDIM, fewer steps: int(7 * 0.6) = 4 run instead of 6 (1.5x the images/s).
    # (Until 2026-11-29 the defaults ran 20 steps and this preset 10: BENCHMARKS.md, "fast path".)
    "fast": {"num_inference_steps": 7},
}

__all__ = ["EMBEDDED_DIFFUSION_DIR", "EMBEDDED_MODELS", "EMBEDDED_MODEL_OPTIONS", "EMBEDDED_SPEED_PRESETS",
           "EMBEDDED_VARIATION_DEFAULTS", "embedded_model_dir"]
