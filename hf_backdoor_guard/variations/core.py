"""``ImageVariation``: a diffusers pipeline as a ``Dataset.map`` transform.

    variation = hbg.ImageVariation.from_pretrained("lambdalabs/sd-image-variations-diffusers",
                                                   dtype=torch.float16, device="cuda")
    varied = ds.map(variation, batched=True, batch_size=16, with_indices=True)

Every output image has its own ``torch.Generator`` seeded from (seed, row index,
variation index), so a row's variations do not depend on the batch it lands in, the
row order or the number of processes (up to float rounding of batched kernels, at most
one 8-bit level; with a fixed batch layout, as in ``generate_variations``, bit-exact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import load_rgb
from ..validation import check_image_column, check_int
from .adapters import Adapter, Settings, adapter_for, adapter_for_pipeline, quiet_progress_bars
from .color import lab_stats, match_lab_stats
from .fingerprint import _register_for_hashing, digest_components
from .options import GENERIC_OPTIONS, check_device, check_generic_options, resolve_dtype, resolve_scheduler

logger = logging.getLogger(__name__)

#: bump when the generation algorithm changes, so old shards are not mixed with new ones
ALGORITHM_VERSION = "variations-1"
SOURCE_INDEX = "source_index"
VARIATION_INDEX = "variation_index"


def variation_seed(seed: int, row: int, variation: int) -> int:
    """Seed of one output image: a hash of (seed, row, variation), stable across platforms and runs."""
    digest = hashlib.blake2b(f"{seed}/{row}/{variation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class ImageVariation:
    """Replace each image of a batch by ``num_variations`` diffusion variations.

    Args:
        pipeline: a supported diffusers pipeline (see ``SUPPORTED_CLASSES``); it is moved
            to ``device``/``dtype`` in place when those are given.
        prior: the prior stage for two-stage families (a ``KandinskyV22Prior[Emb2Emb]Pipeline``
            for ``KandinskyV22Pipeline``, a ``FluxPriorReduxPipeline`` for ``FluxPipeline``).
        num_variations: output rows per input row (>= 1).
        num_inference_steps, guidance_scale: as in diffusers; ``None`` keeps the pipeline's default.
        strength: noise level in (0, 1] for SDEdit families (img2img, unconditional UNet) and
            the Kandinsky prior; ``None`` keeps the family default.
        eta: DDIM's eta (1.0 = fresh noise each step) for families whose scheduler takes it.
        scheduler: a diffusers scheduler class, instance or class name to use instead of the
            pipeline's (built from the pipeline's scheduler config).
        size: generation size, an int or ``(height, width)``; default: the model's native size.
            Multiple of 8 for latent pipelines.
        resize_to_source: resize each variation back to its source's size (default True).
        color_transfer: match the source's Lab mean/std per channel (default True, as the paper).
        keep_source: ``False`` drops the original image, ``True`` keeps it in ``"source_image"``,
            a string keeps it in that column.
        prompt: text for the families that take one (img2img, unCLIP, Kandinsky prior).
        seed: base seed; output (row, variation) uses ``variation_seed(seed, row, variation)``.
        image_column: the column holding the images.
        pipeline_kwargs / prior_kwargs: extra keyword arguments for the pipeline / prior call
            (for the unconditional family, for ``scheduler.step``).
        speed: a preset of the family (``Adapter.speed_presets``) that fills in the options left
            unset: ``"fast"`` is DPM-Solver++ with 15 steps (latent families), channels_last and
            torch.compile; ``"fast-small"`` also generates at half the native size (256 px for
            SD), for small sources such as CIFAR's 32 px images. Explicit options win.
        channels_last: store the denoiser's and image decoder's weights channels_last (in place;
            faster convolutions on GPUs).
        torch_compile: ``torch.compile`` the denoiser (in place) when it is on a CUDA device;
            on other devices it is skipped (compiling costs more than it saves there).
    """

    def __init__(self, pipeline, *, prior=None, num_variations: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, strength: float | None = None, eta: float | None = None,
                 scheduler=None, size: int | tuple[int, int] | None = None, resize_to_source: bool = True,
                 color_transfer: bool = True, keep_source: bool | str = False, prompt: str = "", seed: int = 42,
                 dtype=None, device=None, image_column: str = "image", pipeline_kwargs: dict | None = None,
                 prior_kwargs: dict | None = None, speed: str | None = None, channels_last: bool | None = None,
                 torch_compile: bool | None = None):
        device = check_device(device)
        adapter_cls = adapter_for_pipeline(pipeline)
        preset = adapter_cls.speed_preset(speed)
        size_scale = preset.pop("size_scale", None)
        given = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength,
                     eta=eta, scheduler=scheduler, size=size, channels_last=channels_last, torch_compile=torch_compile)
        chosen = {**given, **{key: value for key, value in preset.items() if given[key] is None}}  # explicit wins
        check_generic_options(num_variations=num_variations, seed=seed, pipeline_kwargs=pipeline_kwargs,
                               prior_kwargs=prior_kwargs, **{key: chosen[key] for key in GENERIC_OPTIONS
                                                             if key in chosen})
        self.adapter: Adapter = adapter_cls(pipeline, prior)
        self.speed = speed
        self.num_variations = num_variations
        self.num_inference_steps = chosen["num_inference_steps"]
        self.guidance_scale = chosen["guidance_scale"]
        self.strength = chosen["strength"]
        self.eta = chosen["eta"]
        self.channels_last = bool(chosen["channels_last"])
        self.torch_compile = bool(chosen["torch_compile"])
        self._compiled = False
        self.resize_to_source = resize_to_source
        self.color_transfer = color_transfer
        self.prompt = prompt
        self.seed = seed
        self.image_column = image_column
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        self.prior_kwargs = dict(prior_kwargs or {})
        if keep_source is True:
            keep_source = "source_image"
        self.source_column: str | None = keep_source or None
        self.dtype = resolve_dtype(dtype)
        self.size = None
        self._fingerprint: str | None = None
        scheduler_cls = resolve_scheduler(chosen["scheduler"])
        if scheduler_cls is not None:  # first: whether eta applies depends on it
            self.adapter.set_scheduler(scheduler_cls)
        self._validate()
        self.size = self._resolve_size(chosen["size"], size_scale)
        if device is not None or self.dtype is not None:
            self.to(device=device, dtype=self.dtype)
        else:
            self._apply_speed_options()

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, repo_or_path: str | os.PathLike, dtype=None, device=None, *, prior=None,
                        revision: str | None = None, variant: str | None = None, trust_remote_code: bool = False,
                        **options) -> ImageVariation:
        """Build the right pipeline from a Hub repo id or a local folder's ``model_index.json``.

        Weights load as safetensors only, and no code from the repo runs unless
        ``trust_remote_code=True`` (custom component classes shipped in the repo).
        Two-stage families take the prior's repo or folder as ``prior=``. ``options`` are
        ``ImageVariation``'s keyword arguments. Everything that can be checked without the
        weights (options, device, family, prior, speed preset) is checked before they load.
        """
        dtype = resolve_dtype(dtype)
        device = check_device(device)
        if not isinstance(trust_remote_code, bool):
            raise ValueError(f"trust_remote_code must be True or False, got {trust_remote_code!r}.")
        check_generic_options(**{key: options[key] for key in GENERIC_OPTIONS if key in options})
        class_name = pipeline_class_name(repo_or_path, revision)
        adapter_cls = adapter_for((class_name,), source=f"{repo_or_path}/model_index.json")
        adapter_cls.speed_preset(options.get("speed"))
        prior_classes = None
        if prior is not None:  # the prior's model_index.json is read only for families that take one
            prior_classes = (pipeline_class_name(prior, revision=None),) if adapter_cls.prior_classes else ()
        adapter_cls.check_prior(class_name, prior_classes, prior)
        logger.debug("Loading %s from %s", class_name, repo_or_path)
        adapter = adapter_cls.load(class_name, repo_or_path, prior_path=prior, dtype=dtype, revision=revision,
                                   variant=variant, trust_remote_code=trust_remote_code)
        return cls(adapter.pipeline, prior=adapter.prior, dtype=dtype, device=device, **options)

    @classmethod
    def embedded(cls, speed: str | None = None, *, model: str = "digits", **options) -> ImageVariation:
        """The offline default shipped with the package (a small unconditional DDIM model).

        ``model`` picks one of the shipped models (``EMBEDDED_MODELS``: ``"digits"``, the
        default, or ``"fashion-mnist"``); every one takes the same recommended options
        (``EMBEDDED_VARIATION_DEFAULTS``) unless overridden; ``speed`` picks one of
        ``EMBEDDED_SPEED_PRESETS`` on top of them (explicit options still win). Weights are
        stored in fp16; they run in float32 unless ``dtype`` says otherwise.
        """
        from hf_backdoor_guard.embedded import EMBEDDED_SPEED_PRESETS, EMBEDDED_VARIATION_DEFAULTS, embedded_model_dir

        if speed is not None and speed not in EMBEDDED_SPEED_PRESETS:
            raise ValueError(f"speed={speed!r} is not a preset of the embedded model; choose one of "
                             f"{sorted(EMBEDDED_SPEED_PRESETS)} or leave it unset.")
        merged = {**EMBEDDED_VARIATION_DEFAULTS, **EMBEDDED_SPEED_PRESETS.get(speed, {}), **options, "speed": speed}
        if "stochastic" in merged:  # the defaults may name DDIM's eta by its effect
            stochastic = merged.pop("stochastic")
            if "eta" not in options:
                merged.setdefault("eta", 1.0 if stochastic else 0.0)
        merged.setdefault("dtype", torch.float32)
        return cls.from_pretrained(embedded_model_dir(model), trust_remote_code=False, **merged)

    # --- validation --------------------------------------------------------------------
    def _validate(self) -> None:
        """The checks that need the pipeline (the generic ones ran in ``__init__``)."""
        adapter = self.adapter
        family = type(adapter.pipeline).__name__
        steps = self.num_inference_steps
        if self.strength is not None and not adapter.uses_strength:
            raise ValueError(f"strength is not used by {family}; leave it unset.")
        if adapter.uses_strength:  # img2img's convention: int(steps * strength) steps run; 0 crashes diffusers
            strength = self.strength if self.strength is not None else adapter.default_strength
            if adapter.prior is None:
                total, name = steps or adapter.default_steps, "num_inference_steps"
            else:  # Kandinsky: strength acts on the prior
                strength = self.prior_kwargs.get("strength", strength)
                total = self.prior_kwargs.get("num_inference_steps", adapter.default_prior_steps)
                name = "prior_kwargs['num_inference_steps']"
            if int(total * strength) < 1:
                raise ValueError(
                    f"{name}={total} with strength={strength} runs int({total} * {strength}) = 0 denoising steps; "
                    f"raise {name} or strength."
                )
        if self.guidance_scale is not None and not adapter.uses_guidance:
            raise ValueError(f"guidance_scale is not used by the unconditional {family}; leave it unset.")
        if self.eta is not None and not adapter.uses_eta:
            raise ValueError(f"eta is not used by {family} with its scheduler; leave it unset.")
        if self.prompt and not adapter.uses_prompt:
            raise ValueError(f"{family} takes no text prompt; leave prompt empty.")
        if not isinstance(self.image_column, str) or not self.image_column:
            raise ValueError(f"image_column must be a column name, got {self.image_column!r}.")
        reserved = {self.image_column, SOURCE_INDEX, VARIATION_INDEX}
        if self.source_column is not None and (not isinstance(self.source_column, str) or self.source_column in reserved):
            raise ValueError(
                f"keep_source must be True, False or a new column name (not one of {sorted(reserved)}), "
                f"got {self.source_column!r}."
            )

    def _resolve_size(self, size, scale: float | None = None) -> tuple[int, int]:
        """``size`` as (height, width); unset: the native size, times ``scale`` (a speed preset's) if given."""
        multiple = self.adapter.size_multiple()
        if size is None:
            native = [int(v) for v in self.adapter.native_size()]
            if scale is None:
                return tuple(native)
            return tuple(max(multiple, int(v * scale) // multiple * multiple) for v in native)
        pair = size if isinstance(size, (tuple, list)) else (size, size)
        if len(pair) != 2:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        size = tuple(check_int("size", value) for value in pair)
        if any(v % multiple for v in size):
            kind = "latent" if self.adapter.latent else "pixel-space UNet"
            raise ValueError(
                f"size={tuple(size)} must be a multiple of {multiple} for the {kind} pipeline "
                f"{type(self.adapter.pipeline).__name__}."
            )
        return (int(size[0]), int(size[1]))

    def check_dataset(self, ds) -> None:
        """Fail before any generation if ``ds`` cannot be processed (missing image column, name clash)."""
        check_image_column(ds, self.image_column)
        self._check_columns(ds.column_names)

    def _check_columns(self, columns) -> None:
        clashes = [name for name in (SOURCE_INDEX, VARIATION_INDEX, self.source_column)
                   if name is not None and name in columns]
        if clashes:
            raise ValueError(
                f"The dataset already has column(s) {clashes}, which ImageVariation writes; rename them "
                "(ds.rename_column) or pass keep_source=<another name>."
            )

    # --- state -------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> ImageVariation:
        """Move the pipeline(s) in place; the fingerprint follows the new dtype."""
        dtype = resolve_dtype(dtype)
        device = check_device(device)
        for pipe in self.adapter.pipelines:
            models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
            # Casting models that already have the dtype only earns diffusers' "cast with to()" warning
            # (from_pretrained(dtype=...) loads them that way).
            same = dtype is None or all(m.dtype == dtype for m in models)
            pipe.to(device=device, dtype=None if same else dtype)
        if dtype is not None:
            self.dtype = dtype
        self._fingerprint = None
        self._apply_speed_options()
        return self

    def _apply_speed_options(self) -> None:
        """channels_last and torch.compile, in place on the models; outputs stay the same up to float rounding."""
        if self.channels_last:
            for model in self.adapter.convolutional_models():
                model.to(memory_format=torch.channels_last)
        if self.torch_compile and not self._compiled:
            denoiser = self.adapter.denoiser()
            if denoiser.device.type == "cuda":
                denoiser.compile()  # in place (nn.Module.compile): state_dict and fingerprint unchanged
                self._compiled = True
            else:
                logger.info("torch_compile: the denoiser is on %s, not CUDA; not compiled (it would cost more "
                            "than it saves there).", denoiser.device)

    def settings(self) -> dict[str, Any]:
        """Everything that decides the output, except the weights (JSON-friendly)."""
        return {
            "algorithm": ALGORITHM_VERSION,
            "family": self.adapter.name,
            "num_variations": self.num_variations,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "strength": self.strength,
            "eta": self.eta,
            "scheduler": self.adapter.scheduler_description(),
            "size": list(self.size),
            "resize_to_source": self.resize_to_source,
            "color_transfer": self.color_transfer,
            "source_column": self.source_column,
            "prompt": self.prompt,
            "seed": self.seed,
            "image_column": self.image_column,
            "pipeline_kwargs": self.pipeline_kwargs,
            "prior_kwargs": self.prior_kwargs,
            "speed": self.speed,
            "channels_last": self.channels_last,
            "torch_compile": self.torch_compile,
        }

    @property
    def fingerprint(self) -> str:
        """Hash of the settings and every weight: what ``datasets`` caches ``map`` under.

        Computed once (one pass over the weights) and reused; ``datasets`` hashes this
        string instead of pickling the whole pipeline (slow, and not reproducible).
        """
        if self._fingerprint is None:
            import xxhash

            digest = xxhash.xxh3_128()
            digest.update(json.dumps(self.settings(), sort_keys=True, default=str).encode())
            digest_components(self.adapter.pipelines, digest)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _register_for_hashing(cls)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k not in ("algorithm", "scheduler"))
        return f"{type(self).__name__}({type(self.adapter.pipeline).__name__}, {options})"

    # --- the map function --------------------------------------------------------------
    def output_features(self, features):
        """Features of the mapped dataset, given the input's (pass to ``map(features=...)``)."""
        from datasets import Features, Image as ImageFeature, Value

        out = {}
        for name, feature in features.items():
            out[name] = ImageFeature() if name == self.image_column else feature
        if self.source_column is not None:
            out[self.source_column] = features[self.image_column]
        out[SOURCE_INDEX] = Value("int64")
        out[VARIATION_INDEX] = Value("int64")
        return Features(out)

    def __call__(self, batch: dict[str, list], indices: list[int] | None = None) -> dict[str, list]:
        sources = self.load_sources(batch, indices)
        return self.finish_batch(batch, indices, sources, self.denoise(sources, indices))

    # ``__call__`` and ``generate`` in three steps, so that generate_variations can run the CPU steps
    # (decoding before, post-processing and encoding after) in threads while the GPU denoises the next batch.
    def load_sources(self, batch: dict[str, list], indices: list[int] | None) -> list[Image.Image]:
        """Check a ``map`` batch and decode its images as RGB: the CPU work before :meth:`denoise`."""
        column = self.image_column
        if column not in batch:
            raise ValueError(f"Image column '{column}' not found in the batch; columns: {list(batch)}. "
                             "Pass image_column=... to ImageVariation.")
        if indices is None:
            raise ValueError("ImageVariation needs row indices for its seeds: call ds.map(variation, batched=True, "
                             "with_indices=True).")
        if not isinstance(batch[column], list) or isinstance(indices, int):
            raise ValueError("ImageVariation works on batches: call ds.map(variation, batched=True, with_indices=True).")
        self._check_columns(batch.keys())
        return [load_rgb(value, row=row, column=column) for value, row in zip(batch[column], indices)]

    def finish_batch(self, batch: dict[str, list], indices: list[int], sources: list[Image.Image],
                     arrays: list[np.ndarray]) -> dict[str, list]:
        """The ``map`` output of a batch, given its raw variations from :meth:`denoise` (CPU only)."""
        column = self.image_column
        variations = self.postprocess(sources, arrays)
        n = self.num_variations
        out: dict[str, list] = {}
        for name, values in batch.items():
            out[name] = variations if name == column else [value for value in values for _ in range(n)]
        if self.source_column is not None:
            out[self.source_column] = [value for value in batch[column] for _ in range(n)]
        out[SOURCE_INDEX] = [int(row) for row in indices for _ in range(n)]
        out[VARIATION_INDEX] = [v for _ in indices for v in range(n)]
        return out

    def generate(self, images: list[Image.Image], indices: list[int]) -> list[Image.Image]:
        """Variations of RGB ``images`` (rows ``indices``): ``num_variations`` per image, row-major."""
        return self.postprocess(images, self.denoise(images, indices))

    def denoise(self, images: list[Image.Image], indices: list[int]) -> list[np.ndarray]:
        """The diffusion step of :meth:`generate`: raw ``uint8`` HxWx3 arrays at the generation size, row-major."""
        n = self.num_variations
        expanded = [image for image in images for _ in range(n)]
        generators = [torch.Generator("cpu").manual_seed(variation_seed(self.seed, int(row), v))
                      for row in indices for v in range(n)]
        settings = Settings(height=self.size[0], width=self.size[1], num_inference_steps=self.num_inference_steps,
                            guidance_scale=self.guidance_scale, strength=self.strength, eta=self.eta,
                            prompt=self.prompt, pipeline_kwargs=self.pipeline_kwargs, prior_kwargs=self.prior_kwargs)
        logger.debug("Generating %d variations of rows %s..%s", len(expanded), indices[0], indices[-1])
        return self.adapter.generate(expanded, generators, settings)

    def postprocess(self, images: list[Image.Image], arrays: list[np.ndarray]) -> list[Image.Image]:
        """The CPU step of :meth:`generate`: resize each raw variation to its source and match its colors."""
        n = self.num_variations
        stats: dict[int, tuple] = {}  # the source's color statistics, once per source rather than per variation
        results = []
        for position, array in enumerate(arrays):
            if isinstance(array, dict):  # an encoded image stored by an earlier run (reuse.py): already final
                results.append(array)
                continue
            source = images[position // n]
            height, width = (source.height, source.width) if self.resize_to_source else self.size
            if array.shape[:2] != (height, width):
                array = np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))
            if self.color_transfer:
                if position // n not in stats:
                    stats[position // n] = lab_stats(np.asarray(source))
                array = match_lab_stats(array, *stats[position // n])
            results.append(Image.fromarray(array))
        return results


def pipeline_class_name(repo_or_path, revision: str | None) -> str:
    """``_class_name`` from model_index.json of a local folder or a Hub repo."""
    path = Path(repo_or_path)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"Folder {path} has no model_index.json: it is not a saved diffusers pipeline "
                             "(save one with pipeline.save_pretrained(folder)).")
    elif path.exists() or str(repo_or_path).startswith((".", "/", "~")) or str(repo_or_path).count("/") > 1:
        raise ValueError(f"{repo_or_path} is neither a folder with a model_index.json nor a Hub repo id.")
    else:
        from huggingface_hub import hf_hub_download

        try:
            with quiet_progress_bars():
                index = Path(hf_hub_download(str(repo_or_path), "model_index.json", revision=revision))
        except Exception as error:  # offline, missing repo, missing file: say which
            raise ValueError(f"Could not fetch model_index.json of {repo_or_path!r} from the Hub: "
                             f"{type(error).__name__}: {error}") from error
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as error:
        raise ValueError(f"{index} is not a valid model_index.json (no _class_name).") from error
    return class_name


_register_for_hashing(ImageVariation)
