"""Checks and conversions of ``ImageVariation``'s options that need no pipeline.

``from_pretrained`` runs them before any weight loads, so a bad option or an absent
device fails in a second, not after gigabytes of weights.
"""

from __future__ import annotations

import numbers

import torch

from ..validation import check_int, check_number, check_seed

GENERIC_OPTIONS = ("num_variations", "num_inference_steps", "guidance_scale", "strength", "eta", "seed",
                    "pipeline_kwargs", "prior_kwargs", "channels_last", "torch_compile")

# The keyword arguments ImageVariation's constructors accept, so that callers holding options for later
# (a config file) can refuse an unknown one before any work. tests/test_defend_checks.py keeps them in step
# with the signatures in core.py.
#: ``ImageVariation.__init__`` (``from_pretrained`` and ``embedded`` pass their ``**options`` on to it)
INIT_OPTIONS = GENERIC_OPTIONS + ("prior", "scheduler", "size", "resize_to_source", "color_transfer", "keep_source",
                                  "prompt", "dtype", "device", "image_column", "speed")
#: ``ImageVariation.from_pretrained`` only: where the weights come from
PRETRAINED_OPTIONS = ("revision", "variant", "trust_remote_code")
#: ``ImageVariation.embedded`` only: DDIM's eta named by its effect (see EMBEDDED_VARIATION_DEFAULTS)
EMBEDDED_OPTIONS = ("stochastic",)


def check_generic_options(num_variations=1, num_inference_steps=None, guidance_scale=None, strength=None, eta=None,
                           seed=42, pipeline_kwargs=None, prior_kwargs=None, channels_last=None,
                           torch_compile=None) -> None:
    """The checks that need no pipeline, so from_pretrained can run them before loading weights.

    Every float must be finite: a NaN compares False with every bound and would reach the
    scheduler silently (all-NaN images).
    """
    check_int("num_variations", num_variations)
    if num_inference_steps is not None:
        check_int("num_inference_steps", num_inference_steps)
    if guidance_scale is not None:
        check_number("guidance_scale", guidance_scale, 0.0, None)
    if strength is not None:
        check_number("strength", strength, 0.0, 1.0, low_inclusive=False)
    if eta is not None:
        check_number("eta", eta, 0.0, None)
    check_seed("seed", seed)
    for name, kwargs in (("pipeline_kwargs", pipeline_kwargs), ("prior_kwargs", prior_kwargs)):
        if kwargs is None:
            continue
        if not isinstance(kwargs, dict):
            raise ValueError(f"{name} must be a dict of keyword arguments, got {kwargs!r}.")
        for key, value in kwargs.items():
            if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
                check_number(f"{name}[{key!r}]", value)
    prior_kwargs = prior_kwargs or {}
    if "strength" in prior_kwargs:
        check_number("prior_kwargs['strength']", prior_kwargs["strength"], 0.0, 1.0, low_inclusive=False)
    if "num_inference_steps" in prior_kwargs:
        check_int("prior_kwargs['num_inference_steps']", prior_kwargs["num_inference_steps"])
    for name, flag in (("channels_last", channels_last), ("torch_compile", torch_compile)):
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}.")


def available_devices() -> list[str]:
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    count = torch.accelerator.device_count() if accelerator is not None else 0
    return ["cpu"] + [f"{accelerator.type}:{index}" for index in range(count)]


def check_device(device) -> torch.device | None:
    """``device`` parsed, and present on this machine: fails before any weight is loaded."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"device={device!r} is not a torch device ({error}); available: {available_devices()}.") \
            from None
    available = available_devices()
    if parsed.type != "cpu" and str(parsed if parsed.index is not None else f"{parsed.type}:0") not in available:
        raise ValueError(f"device={device!r} is not available on this machine; available: {available}.")
    return parsed


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.replace("torch.", ""), None), torch.dtype):
        return getattr(torch, dtype.replace("torch.", ""))
    raise ValueError(f"dtype must be a torch.dtype or its name (e.g. 'float16'), got {dtype!r}.")


def resolve_scheduler(scheduler):
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
