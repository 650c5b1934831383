"""The built-in diffusers families: one small ``Adapter`` per family, each one registration.

Everything family-specific lives here: which arguments the pipeline takes, its native
size, what ``strength`` means, how the two stages of Kandinsky and Flux Redux are
chained. ``adapters.py`` holds the base class, the registry and the lookups.
"""

from __future__ import annotations

import numpy as np
import torch

from .adapters import FAMILIES, Adapter, rebuild_as, resize_to, to_uint8, clean_config


@FAMILIES.register
class SDImageVariationAdapter(Adapter):
    """lambdalabs/sd-image-variations-diffusers: CLIP image embedding -> SD UNet."""

    name = "sd-image-variation"
    pipeline_classes = ("StableDiffusionImageVariationPipeline",)
    uses_eta = True

    def generate(self, images, generators, settings):
        with torch.no_grad():
            out = self.pipeline(image=images, height=settings.height, width=settings.width, generator=generators,
                                output_type="np", **self._common_kwargs(settings))
        return to_uint8(out.images)


@FAMILIES.register
class VersatileDiffusionAdapter(SDImageVariationAdapter):
    """shi-labs/versatile-diffusion image variation (the paper's model)."""

    name = "versatile-diffusion"
    pipeline_classes = ("VersatileDiffusionImageVariationPipeline",)
    # shi-labs/versatile-diffusion is saved as the all-in-one pipeline; its image-variation
    # part loads from the same repo (diffusers skips the text components).
    converted_classes = ("VersatileDiffusionPipeline",)

    def denoiser(self):
        return self.pipeline.image_unet


@FAMILIES.register
class StableUnCLIPImg2ImgAdapter(Adapter):
    """Stable unCLIP: the CLIP image embedding (optionally noised, ``noise_level``) conditions SD."""

    name = "stable-unclip-img2img"
    pipeline_classes = ("StableUnCLIPImg2ImgPipeline",)
    uses_prompt = True
    uses_eta = True

    def generate(self, images, generators, settings):
        with torch.no_grad():
            out = self.pipeline(image=images, prompt=[settings.prompt] * len(images), height=settings.height,
                                width=settings.width, generator=generators, output_type="np",
                                **self._common_kwargs(settings))
        return to_uint8(out.images)


@FAMILIES.register
class Img2ImgAdapter(Adapter):
    """SDEdit with a text-to-image model: noise the source to ``strength``, denoise with a prompt."""

    name = "sd-img2img"
    pipeline_classes = ("StableDiffusionImg2ImgPipeline",)
    converted_classes = ("StableDiffusionPipeline",)  # text-to-image repos such as SD 1.5 / 2.1
    uses_strength = True
    uses_prompt = True
    uses_eta = True
    default_strength = 0.8  # the pipeline's own default

    def generate(self, images, generators, settings):
        # img2img keeps the input size, so the source is brought to the generation size here.
        resized = [resize_to(image, settings.height, settings.width) for image in images]
        kwargs = self._common_kwargs(settings)
        if settings.strength is not None:
            kwargs["strength"] = settings.strength
        with torch.no_grad():
            out = self.pipeline(prompt=[settings.prompt] * len(images), image=resized, generator=generators,
                                output_type="np", **kwargs)
        return to_uint8(out.images)


@FAMILIES.register
class Kandinsky22Adapter(Adapter):
    """Kandinsky 2.2: prior (image -> CLIP image embedding, emb2emb) then the MoVQ decoder.

    ``strength`` is the prior's: how far the image embedding is noised before the prior
    re-denoises it (with the empty ``prompt`` unless one is given). ``prior_kwargs``
    reach the prior call (e.g. ``num_inference_steps``, ``guidance_scale``).
    """

    name = "kandinsky-2.2"
    pipeline_classes = ("KandinskyV22Pipeline",)
    prior_classes = ("KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline")
    uses_strength = True
    uses_prompt = True
    default_steps = 100
    default_strength = 0.3  # KandinskyV22PriorEmb2EmbPipeline's default
    default_prior_steps = 25

    def _prepare_prior(self, prior):
        # The plain prior pipeline (what the kandinsky-2-2-prior repo holds) has the same
        # components; emb2emb adds the image input.
        if type(prior).__name__ == "KandinskyV22PriorPipeline":
            prior = rebuild_as("KandinskyV22PriorEmb2EmbPipeline", prior)
        return prior

    def native_size(self):
        size = self.pipeline.unet.config.sample_size * self.pipeline.movq_scale_factor
        return (size, size)

    def size_multiple(self):
        return 8

    def generate(self, images, generators, settings):
        prior_kwargs = dict(settings.prior_kwargs)
        if settings.strength is not None:
            prior_kwargs.setdefault("strength", settings.strength)
        with torch.no_grad():
            embeds = self.prior(prompt=[settings.prompt] * len(images), image=images, generator=generators,
                                **prior_kwargs)
            out = self.pipeline(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                                height=settings.height, width=settings.width, generator=generators,
                                output_type="np", **self._common_kwargs(settings))
        return to_uint8(out.images)


@FAMILIES.register
class FluxReduxAdapter(Adapter):
    """FLUX.1 Redux: SigLIP image tokens -> Redux projection -> FLUX as its text conditioning.

    ``FluxPriorReduxPipeline.__call__`` sums a batch into ONE embedding (it is meant to
    mix several reference images), so its two steps are run here per image instead, with
    the same zero text tokens it uses when no text encoder is loaded.
    """

    name = "flux-redux"
    pipeline_classes = ("FluxPipeline",)
    prior_classes = ("FluxPriorReduxPipeline",)
    default_steps = 28
    text_tokens = 512  # Redux's max_sequence_length for the (zero) T5 part
    # Flow matching: DPM-Solver++ does not apply, so the fast presets keep FLUX's Euler scheduler, fewer steps.
    speed_presets = {
        "fast": {"num_inference_steps": 20, "channels_last": True, "torch_compile": True},
        "fast-small": {"num_inference_steps": 20, "channels_last": True, "torch_compile": True, "size_scale": 0.5},
    }

    def denoiser(self):
        return self.pipeline.transformer

    def native_size(self):
        size = self.pipeline.default_sample_size * self.pipeline.vae_scale_factor
        return (size, size)

    def size_multiple(self):
        return max(8, 2 * int(self.pipeline.vae_scale_factor))

    @classmethod
    def extra_load_kwargs(cls):
        # Redux replaces the text encoders; not loading them saves ~10 GB for FLUX.1-dev.
        return {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None}

    def generate(self, images, generators, settings):
        config = self.pipeline.transformer.config
        dtype = self.pipeline.transformer.dtype
        device = self.device()
        with torch.no_grad():
            tokens = self.prior.encode_image(images, self.prior.image_encoder.device, 1)
            image_embeds = self.prior.image_embedder(tokens).image_embeds.to(device=device, dtype=dtype)
            text = torch.zeros(len(images), self.text_tokens, config.joint_attention_dim, device=device, dtype=dtype)
            pooled = torch.zeros(len(images), config.pooled_projection_dim, device=device, dtype=dtype)
            out = self.pipeline(prompt_embeds=torch.cat([text, image_embeds], dim=1), pooled_prompt_embeds=pooled,
                                height=settings.height, width=settings.width, generator=generators,
                                output_type="np", **self._common_kwargs(settings))
        return to_uint8(out.images)


@FAMILIES.register
class UnconditionalSDEditAdapter(Adapter):
    """SDEdit with an unconditional pixel-space ``UNet2DModel`` (DDIMPipeline / DDPMPipeline folders).

    The source is noised to ``t = strength * T`` and denoised over the last
    ``int(num_inference_steps * strength)`` steps of the schedule (img2img's convention).
    Timesteps are spaced "trailing" whatever the saved config says, so that ``strength``
    means the same noise level at any step count ("leading" spacing starts far lower with
    few steps). With DDIM, ``eta=1`` draws fresh noise every step (DDPM-like, stochastic);
    ``eta=0`` is deterministic after the initial noise.
    """

    name = "unconditional-sdedit"
    pipeline_classes = ("DDIMPipeline", "DDPMPipeline")
    latent = False
    uses_strength = True
    uses_guidance = False
    default_strength = 0.5
    # Pixel-space models are small and native size is already low: fewer steps of the model's own scheduler
    # (whose eta decides stochastic vs deterministic denoising), no lower size.
    speed_presets = {"fast": {"num_inference_steps": 20, "channels_last": True, "torch_compile": True}}

    def __init__(self, pipeline, prior=None):
        super().__init__(pipeline, prior)
        self.scheduler = pipeline.scheduler

    @property
    def uses_eta(self):  # only DDIM-style schedulers take eta
        import inspect

        return "eta" in inspect.signature(self.scheduler.step).parameters

    def native_size(self):
        size = self.pipeline.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def size_multiple(self):
        return 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1)

    def set_scheduler(self, scheduler_cls):
        self.scheduler = scheduler_cls.from_config(self.scheduler.config)

    def scheduler_description(self):
        return {"class": type(self.scheduler).__name__, "config": clean_config(self.scheduler.config)}

    def generate(self, images, generators, settings):
        from diffusers.utils.torch_utils import randn_tensor

        unet = self.pipeline.unet
        steps = settings.num_inference_steps or self.default_steps
        strength = settings.strength if settings.strength is not None else self.default_strength
        scheduler = type(self.scheduler).from_config(self.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        start = steps - min(int(steps * strength), steps)
        timesteps = scheduler.timesteps[start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        step_kwargs = dict(settings.pipeline_kwargs)
        if settings.eta is not None:
            step_kwargs["eta"] = settings.eta

        pixels = np.stack([np.asarray(resize_to(image, settings.height, settings.width), dtype=np.float32)
                           for image in images])
        clean = torch.from_numpy(pixels).permute(0, 3, 1, 2).div(127.5).sub(1.0)
        clean = clean.to(device=unet.device, dtype=unet.dtype)
        with torch.no_grad():
            noise = randn_tensor(clean.shape, generator=generators, device=unet.device, dtype=unet.dtype)
            sample = scheduler.add_noise(clean, noise, timesteps[:1].repeat(len(images)))
            for t in timesteps:
                model_input = scheduler.scale_model_input(sample, t)
                predicted = unet(model_input, t).sample
                sample = scheduler.step(predicted, t, sample, generator=generators, **step_kwargs).prev_sample
        images_out = sample.float().clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1).cpu().numpy()
        return to_uint8(images_out)
