"""Fingerprints for ``Dataset.map(new_fingerprint=...)``: what a cached map result depends on.

A map whose function holds a model (a teacher, an attack's surrogate) cannot let
``datasets`` fingerprint it by pickling: that pickles every weight, slowly, and the
result changes between two identical builds, so the cache never hits. Such maps
name their own fingerprint from the input dataset's and from what the function
depends on (weight digests, options).
"""

from __future__ import annotations

from typing import Any


def dataset_fingerprint(ds) -> str:
    """The fingerprint ``datasets`` keeps for ``ds``.

    datasets has no public accessor for it (only the private ``Dataset._fingerprint``),
    and a derived fingerprint must start from it to stay correct when the input changes.
    This is the one place that reads it; tests/test_caching.py fails, naming this
    function, if a datasets upgrade removes the attribute.
    """
    fingerprint = getattr(ds, "_fingerprint", None)
    if not isinstance(fingerprint, str):
        raise RuntimeError(
            "hf_backdoor_guard.runtime.caching.dataset_fingerprint: this datasets version keeps no Dataset._fingerprint; "
            "update the helper to its new way of naming a dataset's fingerprint."
        )
    return fingerprint


def derived_fingerprint(ds, *parts: Any) -> str:
    """A ``new_fingerprint`` for a map of ``ds`` whose output depends on ``parts`` too."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([dataset_fingerprint(ds), *parts])
