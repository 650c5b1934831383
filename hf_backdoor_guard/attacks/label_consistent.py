"""Label-Consistent backdoor (Turner, Tsipras & Madry, 2019): hard-to-learn target images plus a patch.

torch is imported only when a surrogate model is used, so the registry stays cheap to read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from ..validation import check_choice, check_fraction, check_int, check_number
from .base import ATTACKS, Attack, seed_for, to_uint8

logger = logging.getLogger(__name__)

#: the paper's 3x3 pattern for the bottom-right corner (+1 white, -1 black); left corners mirror it,
#: so the four-corner trigger survives horizontal flips
_BOTTOM_RIGHT = np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]], dtype=np.float64)
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL filter id -> torch interpolate mode


def _logits(model, pixel_values):
    output = model(pixel_values=pixel_values)
    return output.logits if hasattr(output, "logits") else output


def pgd_linf(logits_fn, clean, labels, epsilon: float, steps: int, step_size: float, generator=None):
    """Untargeted L-inf PGD (Madry et al., 2018) from a uniform random start in the ``epsilon`` ball.

    ``clean``: ``N x 3 x H x W`` in [0, 1]; ``logits_fn`` maps such a batch to logits. Each
    step moves ``step_size`` along the sign of the loss gradient, then projects back onto the
    ball and [0, 1]. Returns the perturbed batch (detached). ``generator`` draws the start.
    """
    import torch

    start = torch.rand(clean.shape, generator=generator) * 2 - 1
    delta = (clean + start.to(clean.device) * epsilon).clamp(0, 1) - clean
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(logits_fn(clean + delta), labels)
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step_size * gradient.sign()).clamp(-epsilon, epsilon)
            delta = (clean + delta).clamp(0, 1) - clean
    return (clean + delta).detach()


def differentiable_processor(processor, width: int, height: int):
    """``(prepare, size)``: a torch copy of ``processor``'s resize and normalisation for ``width x height`` images.

    ``prepare`` maps an ``N x 3 x H x W`` batch in [0, 1] to the processor's ``pixel_values``
    (resampled with torch's kernel of the processor's filter family; crops are ignored).
    """
    import torch
    from PIL import Image

    probe = Image.new("RGB", (width, height), (128, 128, 128))
    size = tuple(processor(images=probe, return_tensors="pt")["pixel_values"].shape[-2:])
    scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255)) \
        if getattr(processor, "do_rescale", True) else 255.0
    normalise = getattr(processor, "do_normalize", False)
    mean = torch.tensor(getattr(processor, "image_mean", [0.0] * 3), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(getattr(processor, "image_std", [1.0] * 3), dtype=torch.float32).view(1, -1, 1, 1)
    mode = _RESAMPLE_MODES.get(int(getattr(processor, "resample", 2) or 2), "bilinear")

    def prepare(batch):
        if tuple(batch.shape[-2:]) != size:
            batch = torch.nn.functional.interpolate(batch, size=size, mode=mode,
                                                    align_corners=None if mode == "nearest" else False)
        batch = batch * scale
        return (batch - mean.to(batch.device)) / std.to(batch.device) if normalise else batch

    return prepare, size


@ATTACKS.register
class LabelConsistent(Attack):
    """Label-Consistent backdoor (Turner et al., 2019): a clean-label attack.

    Poisoned rows are target-class images (labels kept) made hard to classify by an
    untargeted L-inf PGD perturbation against a ``surrogate`` classifier (``steps``
    steps of ``step_size``, default ``2.5 * epsilon / steps`` as in Madry et al., from a
    random start drawn from ``seed`` and the row index), so the model must lean on the
    trigger to fit them. The trigger is the paper's 3x3 black-and-white pattern in the
    bottom-right corner, or in all four corners (``corners="all"``, mirrored on the
    left, so it survives flips), added with ``amplitude`` (1 sets the pixels to black and
    white; less adds ``+-255 * amplitude``). At test time the trigger has full amplitude.

    ``surrogate``: a transformers image classifier (or a folder / Hub id, loaded with
    safetensors and no remote code) with its ``processor``. The perturbation is taken
    through a differentiable copy of the processor's resize and normalisation (crops
    are ignored). ``surrogate=None`` skips the perturbation: the paper's trigger-only
    baseline, which rarely plants a backdoor.

    Defaults: epsilon 16/255 (the paper's stronger L-inf budget), 10 PGD steps, four
    corners at full amplitude.
    """

    name = "label_consistent"
    clean_label = True
    CORNERS = ("all", "bottom_right")

    def __init__(self, surrogate=None, processor=None, epsilon: float = 16 / 255, steps: int = 10,
                 step_size: float | None = None, amplitude: float = 1.0, corners: str = "all", seed: int = 42):
        self.epsilon = check_fraction("LabelConsistent epsilon", epsilon)
        self.steps = check_int("LabelConsistent steps", steps, minimum=0)
        default_step = 2.5 * self.epsilon / max(self.steps, 1)
        self.step_size = default_step if step_size is None else check_number(
            "LabelConsistent step_size", step_size, 0.0, low_inclusive=False)
        self.amplitude = check_fraction("LabelConsistent amplitude", amplitude, low_inclusive=False)
        check_choice("LabelConsistent corners", corners, self.CORNERS)
        self.corners, self.seed = corners, self._check_seed(seed)
        self.surrogate_name = None
        if isinstance(surrogate, (str, os.PathLike)):
            from ..loading import load_image_classifier

            self.surrogate_name = str(surrogate)
            surrogate, saved_processor = load_image_classifier(surrogate, what="Label-Consistent surrogate")
            processor = processor if processor is not None else saved_processor
        if surrogate is not None:
            if not callable(surrogate) or not hasattr(surrogate, "parameters"):
                raise ValueError(f"LabelConsistent surrogate must be a torch image classifier (e.g. a transformers "
                                 f"model), a folder or a Hub id, got {type(surrogate).__name__}.")
            if processor is None or not callable(processor):
                raise ValueError("LabelConsistent needs the surrogate's image processor (processor=...): the "
                                 "perturbation is computed through its resize and normalisation.")
            surrogate.eval()
        self.surrogate, self.processor = surrogate, processor

    # --- the trigger ----------------------------------------------------------------------
    def check_size(self, width: int, height: int, where: str = "") -> None:
        if min(width, height) < 3:
            raise ValueError(f"LabelConsistent's 3x3 trigger does not fit an image of {width}x{height}{where}.")

    def stamp(self, pixels: np.ndarray, amplitude: float) -> np.ndarray:
        """Add the corner pattern(s) with ``amplitude`` (values rounded and clipped to 0..255)."""
        out = pixels.astype(np.float64)
        mirrored = _BOTTOM_RIGHT[:, ::-1]
        corners = [(slice(-3, None), slice(-3, None), _BOTTOM_RIGHT)]
        if self.corners == "all":
            corners += [(slice(0, 3), slice(-3, None), _BOTTOM_RIGHT), (slice(0, 3), slice(0, 3), mirrored),
                        (slice(-3, None), slice(0, 3), mirrored)]
        for rows, cols, pattern in corners:
            out[rows, cols] = out[rows, cols] + 255.0 * amplitude * pattern[..., None]
            out[rows, cols] = np.clip(out[rows, cols], 0, 255)
        return to_uint8(out)

    def apply(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return self.stamp(pixels, 1.0)

    def apply_poison(self, pixels: np.ndarray, index: int, label: int | None) -> np.ndarray:
        if self.surrogate is not None and self.steps > 0 and self.epsilon > 0:
            if label is None:
                raise ValueError("LabelConsistent needs the row's label to perturb it (poison_image(..., label=...)).")
            pixels = self.perturb(pixels, int(label), index)
        return self.stamp(pixels, self.amplitude)

    # --- the adversarial perturbation -------------------------------------------------------
    def _make_inputs(self, width: int, height: int):
        return differentiable_processor(self.processor, width, height)

    def perturb(self, pixels: np.ndarray, label: int, index: int) -> np.ndarray:
        """PGD (L-inf ``epsilon``) that raises the surrogate's loss on ``label``; returns a uint8 image."""
        import torch

        height, width = pixels.shape[:2]
        prepare, _ = self._cached(self._make_inputs, width, height)
        device = next(self.surrogate.parameters()).device
        clean = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
        generator = torch.Generator().manual_seed(seed_for(self.seed, index) % 2**63)
        adversarial = pgd_linf(lambda batch: _logits(self.surrogate, prepare(batch)), clean,
                               torch.tensor([label], device=device), self.epsilon, self.steps, self.step_size,
                               generator)
        return to_uint8(adversarial[0].permute(1, 2, 0).cpu().numpy() * 255.0)

    # --- caching and reports ----------------------------------------------------------------
    def fingerprint(self) -> str | None:
        if self.surrogate is None:
            return None
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode())
        digest.update(type(self.surrogate).__qualname__.encode())
        for name, tensor in sorted(self.surrogate.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        to_json = getattr(self.processor, "to_json_string", None)
        digest.update((to_json() if to_json else repr(self.processor)).encode())
        return digest.hexdigest()

    def config(self) -> dict:
        if self.surrogate is None:
            surrogate = None
        else:
            surrogate = self.surrogate_name or f"<{type(self.surrogate).__name__}>"
        return {"surrogate": surrogate, "epsilon": self.epsilon, "steps": self.steps, "step_size": self.step_size,
                "amplitude": self.amplitude, "corners": self.corners, "seed": self.seed}
