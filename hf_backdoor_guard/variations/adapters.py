"""The adapter base class and ``FAMILIES``, the one registry of diffusers families.

``adapter.generate(images, generators, settings)`` takes RGB PIL images and one
``torch.Generator`` per image and returns one uint8 ``(H, W, 3)`` array per image.
Each family (``families.py``) is an ``Adapter`` subclass registered in ``FAMILIES``;
``SUPPORTED_CLASSES``, ``PRIOR_CLASSES``, ``supported_list()`` and ``adapter_for`` are
reads of that registry. ``ImageVariation`` only deals with datasets, seeds and color.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..registry import Registry

#: The diffusers families ImageVariation runs: adapter classes under a short family name.
#: A new family is one ``Adapter`` subclass decorated with ``@FAMILIES.register``.
FAMILIES = Registry("pipeline family")

#: Speed presets shared by the latent families (see ``Adapter.speed_presets``). DPM-Solver++ (2M) reaches in
#: ~15 steps what PNDM/DDIM reach in 50; channels_last suits the convolutions of the UNet and VAE on GPUs;
#: torch.compile applies on CUDA only. diffusers already runs attention through torch's
#: scaled_dot_product_attention (``AttnProcessor2_0``) on torch 2, so no attention option is needed.
FAST_PRESET = {"scheduler": "DPMSolverMultistepScheduler", "num_inference_steps": 15, "channels_last": True,
               "torch_compile": True}


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


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Pipelines' ``output_type="np"`` gives floats in [0, 1]; keep 8-bit like the datasets we write."""
    return [np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8) for image in images]


def resize_to(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.BICUBIC)


class Adapter:
    """Base class: what every family must say about itself.

    A new family subclasses it, sets the class attributes below, implements ``generate``
    and registers itself with ``@FAMILIES.register``.
    """

    #: the family's name in ``FAMILIES`` (what error messages and docs list)
    name: ClassVar[str] = ""
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
    #: named option sets for ``ImageVariation(speed=...)``: values used for the options the caller leaves
    #: unset. ``size_scale`` (not an option) generates at that fraction of the native size.
    speed_presets: ClassVar[dict[str, dict]] = {
        "fast": FAST_PRESET,
        # small sources (CIFAR's 32 px, Tiny-ImageNet's 64 px) need no 512 px variations: 256 px for SD
        "fast-small": {**FAST_PRESET, "size_scale": 0.5},
    }

    def __init__(self, pipeline, prior=None):
        self.check_prior(type(pipeline).__name__, None if prior is None else class_names(prior),
                         None if prior is None else type(prior).__name__)
        if type(pipeline).__name__ in self.converted_classes:
            pipeline = rebuild_as(self.pipeline_classes[0], pipeline)
        self.pipeline = pipeline
        self.prior = self._prepare_prior(prior) if prior is not None else None
        for pipe in self.pipelines:
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def check_prior(cls, pipeline_class: str, prior_classes: tuple[str, ...] | None, prior_label=None) -> None:
        """The prior rule of this family, on class names (so it can run before any weight loads).

        ``prior_classes`` are the class names of the prior given (its MRO for an object, its
        ``_class_name`` for a folder; empty when not looked up), ``None`` when none was given.
        """
        if cls.prior_classes and prior_classes is None:
            raise ValueError(
                f"{pipeline_class} needs its prior stage for image variations: pass "
                f"prior=<{' or '.join(cls.prior_classes)}> (a pipeline, or its repo or folder with from_pretrained)."
            )
        if not cls.prior_classes and prior_classes is not None:
            raise ValueError(f"{pipeline_class} takes no prior, got prior={prior_label}.")
        if prior_classes is not None and not set(prior_classes) & set(cls.prior_classes):
            raise ValueError(
                f"prior {prior_label} is a {prior_classes[0]}; {pipeline_class} needs one of "
                f"{', '.join(cls.prior_classes)}."
            )

    @classmethod
    def speed_preset(cls, speed: str | None) -> dict:
        """The option values of preset ``speed`` (``{}`` for ``None``)."""
        if speed is None:
            return {}
        if speed not in cls.speed_presets:
            raise ValueError(f"speed={speed!r} is not a preset of the {cls.name} family; choose one of "
                             f"{sorted(cls.speed_presets)} or leave it unset.")
        return dict(cls.speed_presets[speed])

    @property
    def pipelines(self) -> list:
        return [pipe for pipe in (self.prior, self.pipeline) if pipe is not None]

    def _prepare_prior(self, prior):
        return prior

    # --- sizes -------------------------------------------------------------------------
    def native_size(self) -> tuple[int, int]:
        """The size the model was trained at (what the pipeline itself would produce)."""
        size = self.denoiser().config.sample_size * self.pipeline.vae_scale_factor
        return (size, size) if isinstance(size, int) else tuple(size)

    def size_multiple(self) -> int:
        return max(8, int(getattr(self.pipeline, "vae_scale_factor", 1)))

    # --- models ------------------------------------------------------------------------
    def denoiser(self) -> torch.nn.Module:
        """The model run at every denoising step (the UNet, or Flux's transformer)."""
        return self.pipeline.unet

    def convolutional_models(self) -> list[torch.nn.Module]:
        """The models whose convolutions dominate (denoiser and image decoder): channels_last candidates."""
        decoders = [getattr(self.pipeline, name, None) for name in ("vae", "movq")]
        return [self.denoiser()] + [model for model in decoders if isinstance(model, torch.nn.Module)]

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
        """Where the denoiser's weights are (with accelerate's CPU offload its hooks move inputs there)."""
        return self.denoiser().device

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
    def load(cls, class_name: str, path, prior_path=None, dtype=None, revision=None, variant=None,
             trust_remote_code: bool = False) -> Adapter:
        """Load the pipeline (at ``revision``) and, for two-stage families, its prior (default branch).

        ``trust_remote_code=True`` lets diffusers import custom component code shipped in the repo.
        """
        variant_kwargs = {"variant": variant} if variant else {}
        revision_kwargs = {"revision": revision} if revision else {}
        if class_name in cls.converted_classes:
            class_name = cls.pipeline_classes[0]
        pipeline = _load(class_name, path, dtype, trust_remote_code, **cls.extra_load_kwargs(), **variant_kwargs,
                         **revision_kwargs)
        prior = None
        if cls.prior_classes and prior_path is not None:
            prior = _load(cls.prior_classes[0], prior_path, dtype, trust_remote_code, **variant_kwargs)
        return cls(pipeline, prior)

    @classmethod
    def extra_load_kwargs(cls) -> dict:
        return {}


def rebuild_as(class_name: str, pipeline):
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


def class_names(obj) -> tuple[str, ...]:
    """Names of the classes of ``obj``, most specific first (subclasses of supported pipelines count)."""
    return tuple(klass.__name__ for klass in type(obj).__mro__)


def _load(class_name: str, path, dtype, trust_remote_code: bool, **kwargs):
    import diffusers

    pipeline_cls = getattr(diffusers, class_name)
    if dtype is not None:
        kwargs["dtype"] = dtype
    with quiet_progress_bars():
        # Unless the caller opted in, only diffusers/transformers classes load: no code from the folder runs.
        return pipeline_cls.from_pretrained(str(path), use_safetensors=True, trust_remote_code=trust_remote_code,
                                            **kwargs)


class _ClassView(Mapping):
    """A read-only ``{pipeline class name: adapter class}`` view of ``FAMILIES``, always current."""

    def __init__(self, role: str):
        self._role = role  # "pipeline" or "prior"

    def _mapping(self) -> dict[str, type[Adapter]]:
        mapping: dict[str, type[Adapter]] = {}
        for family, adapter in FAMILIES.items():
            names = adapter.pipeline_classes + adapter.converted_classes if self._role == "pipeline" \
                else adapter.prior_classes
            for name in names:
                if mapping.setdefault(name, adapter) is not adapter:
                    raise ValueError(f"Pipeline class {name} is claimed by two families, "
                                     f"{mapping[name].name} and {family}; unregister one.")
        return mapping

    def __getitem__(self, name: str) -> type[Adapter]:
        return self._mapping()[name]

    def __iter__(self):
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{name!r}: {adapter.__name__}' for name, adapter in self._mapping().items())}}}"


#: diffusers pipeline class name -> adapter class, read from FAMILIES (main stage of two-stage families)
SUPPORTED_CLASSES: Mapping[str, type[Adapter]] = _ClassView("pipeline")
#: prior pipeline class name -> adapter class of the family it feeds
PRIOR_CLASSES: Mapping[str, type[Adapter]] = _ClassView("prior")


def supported_list() -> str:
    """The registered families and the pipeline classes each runs, for error messages and docs."""
    described = []
    for family, adapter in FAMILIES.items():
        text = f"{family} ({', '.join(adapter.pipeline_classes + adapter.converted_classes)}"
        if adapter.prior_classes:
            text += f"; prior: {' or '.join(adapter.prior_classes)}"
        described.append(text + ")")
    return "; ".join(described)


def adapter_for(names: tuple[str, ...], source: str | None = None) -> type[Adapter]:
    """The adapter class for a pipeline class (``names``: its MRO names, most specific first).

    ``source`` says where the name was read (a ``model_index.json``) for the messages; a
    prior stage given as the main pipeline, or an unknown class, is a ``ValueError``
    naming the supported families.
    """
    supported, priors = dict(SUPPORTED_CLASSES), dict(PRIOR_CLASSES)
    for name in names:
        if name in supported:
            return supported[name]
    where = f" in {source}" if source else ""
    for name in names:
        if name in priors:
            raise ValueError(
                f"{name}{where} is the prior stage: pass the {priors[name].pipeline_classes[0]} (pipeline, repo or "
                f"folder) as the pipeline and this one as prior=..."
            )
    raise ValueError(
        f"Unsupported pipeline class {names[0]}{where}; supported families: {supported_list()}. "
        "(A new family is an Adapter subclass registered in hf_backdoor_guard.variations.adapters.FAMILIES.)"
    )


def adapter_for_pipeline(pipeline) -> type[Adapter]:
    """The adapter class for a pipeline object (subclasses of supported pipelines included)."""
    return adapter_for(class_names(pipeline))


# The built-in families register themselves on import; they subclass Adapter, hence the import at the end.
from . import families  # noqa: E402,F401
