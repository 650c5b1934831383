"""How ``datasets`` fingerprints an ``ImageVariation``: by its settings and weights, not by pickling it."""

from __future__ import annotations

import json
import logging

import torch

from .adapters import clean_config

logger = logging.getLogger(__name__)


def digest_components(pipelines: list, digest) -> None:
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


def _register_for_hashing(cls) -> None:
    """Make ``datasets``' hasher see an ImageVariation as its fingerprint string.

    The one private datasets call of the package, kept on purpose. ``Dataset.map`` hashes its
    function by pickling it with datasets' own pickler; for an ImageVariation that means the
    whole pipeline (gigabytes for Stable Diffusion, 0.5 s for a tiny one) on every ``map``
    call, and a hash that differs between two identical builds, so the map cache never hits.
    datasets has no public hook for this: ``__reduce__``/``__getstate__`` would also change
    what ``num_proc`` workers receive, and ``map(new_fingerprint=...)`` relies on every
    caller passing it. Only datasets' hashing pickler is affected (not ``pickle``, not
    ``multiprocess``). tests/test_variations.py fails, naming this function, if an upgrade
    removes ``pklregister``; until then a warning says hashing fell back to the slow default.
    """
    try:
        from datasets.utils._dill import pklregister
    except ImportError as error:
        logger.warning("variations.fingerprint._register_for_hashing: datasets has no utils._dill.pklregister (%s); "
                       "Dataset.map will hash ImageVariation by pickling its whole pipeline (slow, uncached). "
                       "Pass map(new_fingerprint=variation.fingerprint) to avoid it.", error)
        return

    @pklregister(cls)
    def _save(pickler, obj):
        pickler.save_reduce(_FingerprintToken, (obj.fingerprint,), obj=obj)


class _FingerprintToken(str):
    """Stands for an ImageVariation in datasets' fingerprint pickles (never unpickled into one)."""
