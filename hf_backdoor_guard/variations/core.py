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
from .adapters import (PRIOR_CLASSES, SUPPORTED_CLASSES, Adapter, Settings, adapter_for_pipeline, clean_config,
                       quiet_progress_bars, supported_list)
from .color import lab_stats, match_lab_stats

logger = logging.getLogger(__name__)

#: bump when the generation algorithm changes, so old shards are not mixed with new ones
ALGORITHM_VERSION = "variations-1"
SOURCE_INDEX = "source_index"
VARIATION_INDEX = "variation_index"


def variation_seed(seed: int, row: int, variation: int) -> int:
    """Seed of one output image: a hash of (seed, row, variation), stable across platforms and runs."""
    digest = hashlib.blake2b(f"{seed}/{row}/{variation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


_GENERIC_OPTIONS = ("num_variations", "num_inference_steps", "strength", "seed")


def _check_generic_options(num_variations=1, num_inference_steps=None, strength=None, seed=42) -> None:
    """The checks that need no pipeline, so from_pretrained can run them before loading weights."""
    check_int("num_variations", num_variations)
    if num_inference_steps is not None:
        check_int("num_inference_steps", num_inference_steps)
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                 or not 0 < strength <= 1):
        raise ValueError(f"strength must lie in (0, 1], got {strength!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}.")


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.replace("torch.", ""), None), torch.dtype):
        return getattr(torch, dtype.replace("torch.", ""))
    raise ValueError(f"dtype must be a torch.dtype or its name (e.g. 'float16'), got {dtype!r}.")


def _resolve_scheduler(scheduler):
    import diffusers

    if scheduler is None or isinstance(scheduler, type):
        return scheduler
    if isinstance(scheduler, str):
        found = getattr(diffusers, scheduler, None)
        if isinstance(found, type) and hasattr(found, "from_config"):
            return found
        raise ValueError(f"scheduler={scheduler!r} is not a diffusers scheduler class name.")
    if hasattr(scheduler, "config") and hasattr(type(scheduler), "from_config"):
        return type(scheduler)
    raise ValueError(f"scheduler must be a diffusers scheduler class, instance or class name, got {scheduler!r}.")


def _digest_components(pipelines: list, digest) -> None:
    """Feed every weight, config and processor of the pipelines to ``digest``.

    Tensors are hashed byte for byte (straight from memory, no pickling), so the digest
    changes whenever a weight or its dtype does, and costs one read of the weights.
    """
    from datasets.fingerprint import Hasher

    for pipe in pipelines:
        digest.update(type(pipe).__name__.encode())
        for name, component in sorted(pipe.components.items()):
            digest.update(f"|{name}:{type(component).__name__}|".encode())
            if isinstance(component, torch.nn.Module):
                for key, tensor in component.state_dict().items():
                    flat = tensor.detach().reshape(-1).contiguous().cpu()
                    digest.update(f"{key}{flat.dtype}{tuple(tensor.shape)}".encode())
                    digest.update(flat.view(torch.uint8).numpy().data)
            elif component is not None and hasattr(component, "config"):
                digest.update(json.dumps(clean_config(component.config), sort_keys=True, default=str).encode())
            elif hasattr(component, "get_vocab"):  # tokenizer: what it maps text to
                described = {"vocab": component.get_vocab(), "special": component.all_special_tokens,
                             "max_length": component.model_max_length}
                digest.update(json.dumps(described, sort_keys=True).encode())
            elif hasattr(component, "to_dict"):  # image processor
                described = {k: v for k, v in component.to_dict().items()
                             if not k.startswith("_") and k not in ("processor_class", "name_or_path")}
                digest.update(json.dumps(described, sort_keys=True, default=str).encode())
            elif component is not None:
                digest.update(Hasher.hash(component).encode())


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
    """

    def __init__(self, pipeline, *, prior=None, num_variations: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, strength: float | None = None, eta: float | None = None,
                 scheduler=None, size: int | tuple[int, int] | None = None, resize_to_source: bool = True,
                 color_transfer: bool = True, keep_source: bool | str = False, prompt: str = "", seed: int = 42,
                 dtype=None, device=None, image_column: str = "image", pipeline_kwargs: dict | None = None,
                 prior_kwargs: dict | None = None):
        adapter_cls = adapter_for_pipeline(pipeline)
        self.adapter: Adapter = adapter_cls(pipeline, prior)
        self.num_variations = num_variations
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.strength = strength
        self.eta = eta
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
        self.dtype = _resolve_dtype(dtype)
        self.size = None
        self._fingerprint: str | None = None
        scheduler_cls = _resolve_scheduler(scheduler)
        if scheduler_cls is not None:  # first: whether eta applies depends on it
            self.adapter.set_scheduler(scheduler_cls)
        self._validate(size)
        self.size = self._resolve_size(size)
        if device is not None or self.dtype is not None:
            self.to(device=device, dtype=self.dtype)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, repo_or_path: str | os.PathLike, dtype=None, device=None, *, prior=None,
                        revision: str | None = None, variant: str | None = None, **options) -> ImageVariation:
        """Build the right pipeline from a Hub repo id or a local folder's ``model_index.json``.

        Weights load as safetensors only. Two-stage families take the prior's repo or
        folder as ``prior=``. ``options`` are ``ImageVariation``'s keyword arguments.
        """
        dtype = _resolve_dtype(dtype)
        _check_generic_options(**{key: options[key] for key in _GENERIC_OPTIONS if key in options})  # before loading
        class_name = _pipeline_class_name(repo_or_path, revision)
        if class_name in PRIOR_CLASSES:
            adapter_cls = PRIOR_CLASSES[class_name]
            raise ValueError(
                f"{repo_or_path} holds a {class_name}, the prior stage: pass the {adapter_cls.pipeline_classes[0]} "
                f"repo or folder as the path and this one as prior=..."
            )
        if class_name not in SUPPORTED_CLASSES:
            raise ValueError(
                f"Unsupported pipeline class {class_name} in {repo_or_path}/model_index.json; supported: "
                f"{supported_list()}."
            )
        adapter_cls = SUPPORTED_CLASSES[class_name]
        if adapter_cls.prior_classes and prior is None:
            raise ValueError(
                f"{class_name} needs its prior stage for image variations: pass prior=<repo or folder of a "
                f"{' or '.join(adapter_cls.prior_classes)}>."
            )
        if prior is not None and not adapter_cls.prior_classes:
            raise ValueError(f"{class_name} takes no prior, got prior={prior!r}.")
        if prior is not None:
            prior_class = _pipeline_class_name(prior, revision=None)
            if prior_class not in adapter_cls.prior_classes:
                raise ValueError(
                    f"prior {prior} holds a {prior_class}; {class_name} needs one of "
                    f"{', '.join(adapter_cls.prior_classes)}."
                )
        logger.info("Loading %s from %s", class_name, repo_or_path)
        adapter = adapter_cls.load(class_name, repo_or_path, prior_path=prior, dtype=dtype, revision=revision,
                                   variant=variant)
        return cls(adapter.pipeline, prior=adapter.prior, dtype=dtype, device=device, **options)

    @classmethod
    def embedded(cls, **options) -> ImageVariation:
        """The offline default shipped with the package (a small unconditional DDIM model).

        Its recommended options (``EMBEDDED_VARIATION_DEFAULTS``) apply unless overridden.
        Weights are stored in fp16; they run in float32 unless ``dtype`` says otherwise.
        """
        from hf_backdoor_guard.embedded import EMBEDDED_DIFFUSION_DIR, EMBEDDED_VARIATION_DEFAULTS

        merged = {**EMBEDDED_VARIATION_DEFAULTS, **options}
        if "stochastic" in merged:  # the defaults may name DDIM's eta by its effect
            stochastic = merged.pop("stochastic")
            if "eta" not in options:
                merged.setdefault("eta", 1.0 if stochastic else 0.0)
        merged.setdefault("dtype", torch.float32)
        return cls.from_pretrained(EMBEDDED_DIFFUSION_DIR, **merged)

    # --- validation --------------------------------------------------------------------
    def _validate(self, size) -> None:
        adapter = self.adapter
        family = type(adapter.pipeline).__name__
        _check_generic_options(num_variations=self.num_variations, num_inference_steps=self.num_inference_steps,
                               strength=self.strength, seed=self.seed)
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
        if self.eta is not None:
            if not adapter.uses_eta:
                raise ValueError(f"eta is not used by {family} with its scheduler; leave it unset.")
            if not isinstance(self.eta, (int, float)) or self.eta < 0:
                raise ValueError(f"eta must be a number >= 0, got {self.eta!r}.")
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

    def _resolve_size(self, size) -> tuple[int, int]:
        if size is None:
            return tuple(int(v) for v in self.adapter.native_size())
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and
                all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        multiple = self.adapter.size_multiple()
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
        dtype = _resolve_dtype(dtype)
        for pipe in self.adapter.pipelines:
            models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
            # Casting models that already have the dtype only earns diffusers' "cast with to()" warning
            # (from_pretrained(dtype=...) loads them that way).
            same = dtype is None or all(m.dtype == dtype for m in models)
            pipe.to(device=device, dtype=None if same else dtype)
        if dtype is not None:
            self.dtype = dtype
        self._fingerprint = None
        return self

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
            _digest_components(self.adapter.pipelines, digest)
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
        sources = [load_rgb(value, row=row, column=column) for value, row in zip(batch[column], indices)]
        variations = self.generate(sources, indices)

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
        n = self.num_variations
        expanded = [image for image in images for _ in range(n)]
        generators = [torch.Generator("cpu").manual_seed(variation_seed(self.seed, int(row), v))
                      for row in indices for v in range(n)]
        settings = Settings(height=self.size[0], width=self.size[1], num_inference_steps=self.num_inference_steps,
                            guidance_scale=self.guidance_scale, strength=self.strength, eta=self.eta,
                            prompt=self.prompt, pipeline_kwargs=self.pipeline_kwargs, prior_kwargs=self.prior_kwargs)
        logger.debug("Generating %d variations of rows %s..%s", len(expanded), indices[0], indices[-1])
        arrays = self.adapter.generate(expanded, generators, settings)
        # the source's colour statistics, once per source rather than once per variation
        stats = [lab_stats(np.asarray(image)) for image in images] if self.color_transfer else None
        results = []
        for position, array in enumerate(arrays):
            source = images[position // n]
            height, width = (source.height, source.width) if self.resize_to_source else self.size
            if array.shape[:2] != (height, width):
                array = np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))
            if stats is not None:
                array = match_lab_stats(array, *stats[position // n])
            results.append(Image.fromarray(array))
        return results


def _pipeline_class_name(repo_or_path, revision: str | None) -> str:
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


def _register_for_hashing(cls) -> None:
    """Make ``datasets``' hasher see an ImageVariation as its fingerprint string."""
    try:
        from datasets.utils._dill import pklregister
    except ImportError:  # another datasets layout: fall back to its default (slow) hashing
        return

    @pklregister(cls)
    def _save(pickler, obj):
        pickler.save_reduce(_FingerprintToken, (obj.fingerprint,), obj=obj)


class _FingerprintToken(str):
    """Stands for an ImageVariation in datasets' fingerprint pickles (never unpickled into one)."""


_register_for_hashing(ImageVariation)
