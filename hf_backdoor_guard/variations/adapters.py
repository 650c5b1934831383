"""One small adapter per diffusers family, all behind one call.

``adapter.generate(images, generators, settings)`` takes RGB PIL images and one
``torch.Generator`` per image and returns one uint8 ``(H, W, 3)`` array per image.
Everything family-specific (which arguments the pipeline takes, its native size, what
``strength`` means, how the two stages of Kandinsky and Flux Redux are chained) lives
here; ``ImageVariation`` only deals with datasets, seeds and colour.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Resolved generation options, shared by every adapter."""

    height: int
    width: int
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    eta: float | None = None
    prompt: str = ""
    pipeline_kwargs: dict = field(default_factory=dict)
    prior_kwargs: dict = field(default_factory=dict)


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence diffusers' and transformers' loading bars for a block, then restore them."""
    import diffusers
    import transformers

    modules = (diffusers.utils.logging, transformers.utils.logging)
    enabled = [module.is_progress_bar_enabled() for module in modules]
    for module in modules:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was_enabled in zip(modules, enabled):
            if was_enabled:
                module.enable_progress_bar()


def clean_config(config) -> dict:
    """A config without the bookkeeping keys (``_class_name``, ``_diffusers_version``, ...)
    that differ between an object built in code and the same object reloaded."""
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Pipelines' ``output_type="np"`` gives floats in [0, 1]; keep 8-bit like the datasets we write."""
    return [np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8) for image in images]


def _resize(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.BICUBIC)


class Adapter:
    """Base class: what every family must say about itself."""

    #: ``_class_name`` values in model_index.json that this adapter runs (main pipeline).
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: other pipeline classes with the same components, run as ``pipeline_classes[0]``
    #: (e.g. a text-to-image Stable Diffusion repo used for SDEdit)
    converted_classes: ClassVar[tuple[str, ...]] = ()
    #: for two-stage families: the prior pipeline classes accepted (and the one to load it as).
    prior_classes: ClassVar[tuple[str, ...]] = ()
    #: works in a VAE latent space, so sizes must be multiples of 8
    latent: ClassVar[bool] = True
    uses_strength: ClassVar[bool] = False
    uses_guidance: ClassVar[bool] = True
    uses_prompt: ClassVar[bool] = False
    uses_eta: ClassVar[bool] = False
    #: steps the pipeline runs when num_inference_steps is not given (used for checks)
    default_steps: ClassVar[int] = 50
    default_strength: ClassVar[float | None] = None
    #: steps of the prior stage when prior_kwargs does not set them (two-stage families)
    default_prior_steps: ClassVar[int | None] = None

    def __init__(self, pipeline, prior=None):
        needs_prior = bool(self.prior_classes)
        if needs_prior and prior is None:
            raise ValueError(
                f"{type(pipeline).__name__} needs a prior pipeline for image variations: pass "
                f"prior=<{' or '.join(self.prior_classes)}> (from_pretrained(path, prior=<prior repo or folder>))."
            )
        if not needs_prior and prior is not None:
            raise ValueError(f"{type(pipeline).__name__} takes no prior pipeline, got prior={type(prior).__name__}.")
        if prior is not None and not _is_instance_of(prior, self.prior_classes):
            raise ValueError(
                f"prior must be one of {', '.join(self.prior_classes)} for {type(pipeline).__name__}, "
                f"got {type(prior).__name__}."
            )
        if type(pipeline).__name__ in self.converted_classes:
            pipeline = _rebuild_as(self.pipeline_classes[0], pipeline)
        self.pipeline = pipeline
        self.prior = self._prepare_prior(prior) if prior is not None else None
        for pipe in self.pipelines:
            pipe.set_progress_bar_config(disable=True)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def pipelines(self) -> list:
        return [pipe for pipe in (self.prior, self.pipeline) if pipe is not None]

    def _prepare_prior(self, prior):
        return prior

    # --- sizes -------------------------------------------------------------------------
    def native_size(self) -> tuple[int, int]:
        """The size the model was trained at (what the pipeline itself would produce)."""
        size = self._unet().config.sample_size * self.pipeline.vae_scale_factor
        return (size, size) if isinstance(size, int) else tuple(size)

    def size_multiple(self) -> int:
        return max(8, int(getattr(self.pipeline, "vae_scale_factor", 1)))

    def _unet(self):
        return self.pipeline.unet

    # --- scheduler ---------------------------------------------------------------------
    def set_scheduler(self, scheduler_cls) -> None:
        """Swap the denoising scheduler, keeping the trained noise schedule (its config)."""
        new = scheduler_cls.from_config(self.pipeline.scheduler.config)
        # A shallow copy shares the models but not the scheduler slot, so the caller's
        # pipeline keeps its own. (DiffusionPipeline.from_pipe would cast every shared
        # model to float32 in place: measured 4x slower per step on an H100 in bf16.)
        self.pipeline = copy.copy(self.pipeline)
        self.pipeline.register_modules(scheduler=new)
        self.pipeline.set_progress_bar_config(disable=True)

    def scheduler_description(self) -> dict:
        scheduler = self.pipeline.scheduler
        return {"class": type(scheduler).__name__, "config": clean_config(scheduler.config)}

    # --- generation --------------------------------------------------------------------
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    def _common_kwargs(self, settings: Settings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if settings.num_inference_steps is not None:
            kwargs["num_inference_steps"] = settings.num_inference_steps
        if settings.guidance_scale is not None:
            kwargs["guidance_scale"] = settings.guidance_scale
        if settings.eta is not None:
            kwargs["eta"] = settings.eta
        kwargs.update(settings.pipeline_kwargs)
        return kwargs

    def generate(self, images: list[Image.Image], generators: list[torch.Generator],
                 settings: Settings) -> list[np.ndarray]:
        raise NotImplementedError

    # --- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, class_name: str, path, prior_path=None, dtype=None, revision=None, variant=None) -> Adapter:
        """Load the pipeline (at ``revision``) and, for two-stage families, its prior (default branch)."""
        variant_kwargs = {"variant": variant} if variant else {}
        revision_kwargs = {"revision": revision} if revision else {}
        if class_name in cls.converted_classes:
            class_name = cls.pipeline_classes[0]
        pipeline = _load(class_name, path, dtype, **cls.extra_load_kwargs(), **variant_kwargs, **revision_kwargs)
        prior = None
        if cls.prior_classes and prior_path is not None:
            prior = _load(cls.prior_classes[0], prior_path, dtype, **variant_kwargs)
        return cls(pipeline, prior)

    @classmethod
    def extra_load_kwargs(cls) -> dict:
        return {}


def _rebuild_as(class_name: str, pipeline):
    """The same models and settings as another pipeline class (e.g. text-to-image -> img2img).

    Built directly rather than with ``from_pipe``, which casts every shared model to
    float32 in place (see ``set_scheduler``).
    """
    import inspect

    import diffusers

    target = getattr(diffusers, class_name)
    accepted = inspect.signature(target.__init__).parameters
    kwargs = {name: value for name, value in pipeline.components.items() if name in accepted}
    kwargs.update({name: value for name, value in pipeline.config.items()
                   if name in accepted and name not in kwargs and not name.startswith("_")})
    return target(**kwargs)


def _is_instance_of(obj, class_names: tuple[str, ...]) -> bool:
    return any(klass.__name__ in class_names for klass in type(obj).__mro__)


def _load(class_name: str, path, dtype, **kwargs):
    import diffusers

    pipeline_cls = getattr(diffusers, class_name)
    if dtype is not None:
        kwargs["dtype"] = dtype
    with quiet_progress_bars():
        return pipeline_cls.from_pretrained(str(path), use_safetensors=True, **kwargs)


class SDImageVariationAdapter(Adapter):
    """lambdalabs/sd-image-variations-diffusers: CLIP image embedding -> SD UNet."""

    pipeline_classes = ("StableDiffusionImageVariationPipeline",)
    uses_eta = True

    def generate(self, images, generators, settings):
        with torch.no_grad():
            out = self.pipeline(image=images, height=settings.height, width=settings.width, generator=generators,
                                output_type="np", **self._common_kwargs(settings))
        return _to_uint8(out.images)


class VersatileDiffusionAdapter(SDImageVariationAdapter):
    """shi-labs/versatile-diffusion image variation (the paper's model)."""

    pipeline_classes = ("VersatileDiffusionImageVariationPipeline",)
    # shi-labs/versatile-diffusion is saved as the all-in-one pipeline; its image-variation
    # part loads from the same repo (diffusers skips the text components).
    converted_classes = ("VersatileDiffusionPipeline",)

    def _unet(self):
        return self.pipeline.image_unet


class StableUnCLIPImg2ImgAdapter(Adapter):
    """Stable unCLIP: the CLIP image embedding (optionally noised, ``noise_level``) conditions SD."""

    pipeline_classes = ("StableUnCLIPImg2ImgPipeline",)
    uses_prompt = True
    uses_eta = True

    def generate(self, images, generators, settings):
        with torch.no_grad():
            out = self.pipeline(image=images, prompt=[settings.prompt] * len(images), height=settings.height,
                                width=settings.width, generator=generators, output_type="np",
                                **self._common_kwargs(settings))
        return _to_uint8(out.images)


class Img2ImgAdapter(Adapter):
    """SDEdit with a text-to-image model: noise the source to ``strength``, denoise with a prompt."""

    pipeline_classes = ("StableDiffusionImg2ImgPipeline",)
    converted_classes = ("StableDiffusionPipeline",)  # text-to-image repos such as SD 1.5 / 2.1
    uses_strength = True
    uses_prompt = True
    uses_eta = True
    default_strength = 0.8  # the pipeline's own default

    def generate(self, images, generators, settings):
        # img2img keeps the input size, so the source is brought to the generation size here.
        resized = [_resize(image, settings.height, settings.width) for image in images]
        kwargs = self._common_kwargs(settings)
        if settings.strength is not None:
            kwargs["strength"] = settings.strength
        with torch.no_grad():
            out = self.pipeline(prompt=[settings.prompt] * len(images), image=resized, generator=generators,
                                output_type="np", **kwargs)
        return _to_uint8(out.images)


class Kandinsky22Adapter(Adapter):
    """Kandinsky 2.2: prior (image -> CLIP image embedding, emb2emb) then the MoVQ decoder.

    ``strength`` is the prior's: how far the image embedding is noised before the prior
    re-denoises it (with the empty ``prompt`` unless one is given). ``prior_kwargs``
    reach the prior call (e.g. ``num_inference_steps``, ``guidance_scale``).
    """

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
            prior = _rebuild_as("KandinskyV22PriorEmb2EmbPipeline", prior)
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
        return _to_uint8(out.images)


class FluxReduxAdapter(Adapter):
    """FLUX.1 Redux: SigLIP image tokens -> Redux projection -> FLUX as its text conditioning.

    ``FluxPriorReduxPipeline.__call__`` sums a batch into ONE embedding (it is meant to
    mix several reference images), so its two steps are run here per image instead, with
    the same zero text tokens it uses when no text encoder is loaded.
    """

    pipeline_classes = ("FluxPipeline",)
    prior_classes = ("FluxPriorReduxPipeline",)
    default_steps = 28
    text_tokens = 512  # Redux's max_sequence_length for the (zero) T5 part

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
            tokens = self.prior.encode_image(images, self.prior._execution_device, 1)
            image_embeds = self.prior.image_embedder(tokens).image_embeds.to(device=device, dtype=dtype)
            text = torch.zeros(len(images), self.text_tokens, config.joint_attention_dim, device=device, dtype=dtype)
            pooled = torch.zeros(len(images), config.pooled_projection_dim, device=device, dtype=dtype)
            out = self.pipeline(prompt_embeds=torch.cat([text, image_embeds], dim=1), pooled_prompt_embeds=pooled,
                                height=settings.height, width=settings.width, generator=generators,
                                output_type="np", **self._common_kwargs(settings))
        return _to_uint8(out.images)


class UnconditionalSDEditAdapter(Adapter):
    """SDEdit with an unconditional pixel-space ``UNet2DModel`` (DDIMPipeline / DDPMPipeline folders).

    The source is noised to ``t = strength * T`` and denoised over the last
    ``int(num_inference_steps * strength)`` steps of the schedule (img2img's convention).
    Timesteps are spaced "trailing" whatever the saved config says, so that ``strength``
    means the same noise level at any step count ("leading" spacing starts far lower with
    few steps). With DDIM, ``eta=1`` draws fresh noise every step (DDPM-like, stochastic);
    ``eta=0`` is deterministic after the initial noise.
    """

    pipeline_classes = ("DDIMPipeline", "DDPMPipeline")
    latent = False
    uses_strength = True
    uses_guidance = False
    default_strength = 0.5

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

    def device(self):
        return self.pipeline.unet.device

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

        pixels = np.stack([np.asarray(_resize(image, settings.height, settings.width), dtype=np.float32)
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
        return _to_uint8(images_out)


ADAPTERS: tuple[type[Adapter], ...] = (
    SDImageVariationAdapter,
    VersatileDiffusionAdapter,
    StableUnCLIPImg2ImgAdapter,
    Kandinsky22Adapter,
    Img2ImgAdapter,
    FluxReduxAdapter,
    UnconditionalSDEditAdapter,
)

SUPPORTED_CLASSES = {name: adapter for adapter in ADAPTERS
                     for name in adapter.pipeline_classes + adapter.converted_classes}
PRIOR_CLASSES = {name: adapter for adapter in ADAPTERS for name in adapter.prior_classes}


def supported_list() -> str:
    names = [f"{name} (with {' or '.join(a.prior_classes)} as prior)" if a.prior_classes else name
             for name, a in SUPPORTED_CLASSES.items()]
    return ", ".join(names)


def adapter_for_pipeline(pipeline) -> type[Adapter]:
    """The adapter class for a pipeline object (subclasses of supported pipelines included)."""
    for klass in type(pipeline).__mro__:
        if klass.__name__ in SUPPORTED_CLASSES:
            return SUPPORTED_CLASSES[klass.__name__]
    for klass in type(pipeline).__mro__:
        if klass.__name__ not in PRIOR_CLASSES:
            continue
        adapter = PRIOR_CLASSES[klass.__name__]
        raise ValueError(
            f"{type(pipeline).__name__} is the prior stage: pass the {adapter.pipeline_classes[0]} as the "
            f"pipeline and this one as prior=..."
        )
    raise ValueError(f"Unsupported pipeline class {type(pipeline).__name__}; supported: {supported_list()}.")
